"""Timings of the scan-end analyses at a 2048^2 detector (not in make bench: run
`python bench/analyses.py`). Prints a Markdown table; figures depend on the machine's load."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dfxm_online.analysis import bss, domains, drift, masks  # noqa: E402


def timed(label: str, work) -> tuple[str, float]:
    start = time.perf_counter()
    work()
    return label, time.perf_counter() - start


def main() -> None:
    rng = np.random.default_rng(0)
    n = 2048
    truth = np.add.outer(np.arange(n) // 700, np.arange(n) // 900) % 4
    com_a = np.array([0, 0.01, 0.02, -0.01])[truth] + 0.002 * rng.standard_normal((n, n))
    com_b = np.array([0, 0.3, -0.2, 0.1])[truth] + 0.02 * rng.standard_normal((n, n))
    image = rng.random((n, n))
    image[500:1500, 400:1600] += 10
    frames = rng.random((64, 256, 256))
    n_frames = 962

    def batches():
        for s in range(0, n_frames, 64):
            yield np.arange(s, min(s + 64, n_frames)), frames[: min(64, n_frames - s)]

    first = frames.sum(axis=0)
    second = np.roll(first, (3, 2), axis=(0, 1))
    p = 512 * 512
    sources = rng.exponential(1.0, (3, p)) * (rng.random((3, p)) < 0.3)
    x = np.arange(n_frames)
    mixing = np.stack([np.exp(-0.5 * ((x - c) / 80.0) ** 2) for c in (250, 480, 700)], 1) + 0.02
    stack = mixing @ sources
    mean = stack.mean(0)
    u, s, vt = np.linalg.svd(stack - mean, full_matrices=False)
    sketch = bss.DataMatrix.from_sketch(mean, u[:, :8] * s[:8], vt[:8])
    rows = [
        timed("drift scale search, 962 frames of 256^2, 75 candidates", lambda: drift.scale_scores(batches(), np.array([0.6, 0.8]), 0.01, 75)),
        timed("drift estimate (default: 256 of the 962 frames)", lambda: drift.estimate_drift(first, second, n_frames, batches())),
        timed("Recon3D mask, 2048^2", lambda: masks.recon3d_mask(image, 5.0, 100)),
        timed("double-threshold mask, 2048^2", lambda: masks.double_threshold_mask(image, 5.0, 0.5)),
        timed("sub-domains, 2048^2, 4 clusters", lambda: domains.cluster_domains(com_a, com_b, 4)),
        timed("PCA spectrum, rank-8 sketch of 962 x 512^2", lambda: bss.pca(sketch, 5)),
        timed("NMF, same sketch", lambda: bss.nmf(sketch, 3)),
        timed("NICA, same sketch (500 iterations)", lambda: bss.nica(sketch, 3)),
    ]
    print("| scan-end analysis | s |\n|---|---|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
