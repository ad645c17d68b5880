"""Scan-end analyses: pure functions over the maps, accumulators and frames of a scan (no I/O)."""
