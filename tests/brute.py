"""Brute-force references: the whole stack in memory, the textbook two-pass formulas."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dfxm_online.acquisition.geometry import MotorAxis


def edge_baseline(
    stack: np.ndarray, positions: np.ndarray, axes: Sequence[MotorAxis], fraction: float = 0.2,
    dark_stack: np.ndarray | None = None,
) -> np.ndarray:
    """Pooled mean of the edge-band frame groups that agree with the lowest one (3 sigma)."""
    groups = []
    for m, ax in enumerate(axes):
        t = (positions[:, m] - ax.low) / (ax.high - ax.low)
        for sel in (t <= fraction + 1e-9, t >= 1 - fraction - 1e-9):
            if sel.any():
                groups.append(stack[sel].astype(np.float64))
    if dark_stack is not None:
        groups.append(dark_stack.astype(np.float64))
    means = np.array([g.mean(axis=0) for g in groups])
    stds = np.array([g.std(axis=0) for g in groups])
    counts = np.array([len(g) for g in groups], dtype=float).reshape(-1, 1, 1)
    low = np.argmin(means, axis=0)[None]
    m_low = np.take_along_axis(means, low, 0)
    s_low = np.take_along_axis(stds, low, 0)
    n_low = np.take_along_axis(np.broadcast_to(counts, means.shape), low, 0)
    keep = means <= m_low + 3.0 * s_low * np.sqrt(1 / n_low + 1 / counts)
    return (means * counts * keep).sum(axis=0) / (counts * keep).sum(axis=0)


def moments(stack: np.ndarray, positions: np.ndarray, offset: np.ndarray | float = 0.0) -> dict:
    """Two-pass weighted moments of each pixel over the motors (stack (N,H,W), positions (N,M))."""
    w = stack.astype(np.float64) - offset
    m0 = w.sum(axis=0)
    out = {"intensity": m0}
    means = []
    for a in range(positions.shape[1]):
        x = positions[:, a][:, None, None]
        mu = (w * x).sum(axis=0) / m0
        means.append(mu)
        d = x - mu
        var = (w * d**2).sum(axis=0) / m0
        out[f"mean{a}"] = mu
        out[f"var{a}"] = var
        out[f"skew{a}"] = (w * d**3).sum(axis=0) / m0 / var**1.5
        out[f"kurt{a}"] = (w * d**4).sum(axis=0) / m0 / var**2 - 3
    for a in range(positions.shape[1]):
        for b in range(a + 1, positions.shape[1]):
            da = positions[:, a][:, None, None] - means[a]
            db = positions[:, b][:, None, None] - means[b]
            out[f"cov{a}{b}"] = (w * da * db).sum(axis=0) / m0
    return out
