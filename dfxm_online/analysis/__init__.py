"""Scan-end analyses: pure functions (numpy / numba cores, no I/O) over what a scan recorded.

Modules: `fits` (per-pixel Gaussian fits, vectorised across pixels; its compiled
Levenberg-Marquardt kernel in `gaussian_lm`), `rocking_curves` (the recorded frames in bands
of detector rows, through the pipeline's preprocessing, for the fits).
"""
