"""Scan-end ewoks workflows: their stages (file in, file out), graphs, and how the daemon
starts them (a local pool of processes, or ewoksjob workers)."""
