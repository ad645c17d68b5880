"""Scan-end analyses: pure functions (numpy / numba cores, no I/O) over the maps,
accumulators and frames of a scan.

Modules: `fits` (per-pixel Gaussian fits, vectorised across pixels; its compiled
Levenberg-Marquardt kernel in `gaussian_lm`), `rocking_curves` (the recorded frames in bands
of detector rows, through the pipeline's preprocessing, for the fits), and darfix's other
analyses, gathered by `scan_end.scan_end_groups`: `drift` (shift correction), `masks`,
`domains`, `orientation_distribution`, `strain`, `sample_axes`, `rsm`, `weak_beam` (and
z-sum), `bss` (PCA spectrum, NMF, NICA, NICA-NMF). docs/analyses.md describes each.
"""
