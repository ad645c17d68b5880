"""Brute-force references: the whole stack in memory, the textbook two-pass formulas."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dfxm_online.acquisition.geometry import MotorAxis


def edge_baseline(
    stack: np.ndarray, positions: np.ndarray, axes: Sequence[MotorAxis], fraction: float = 0.2,
) -> np.ndarray:
    """Pooled mean of the edge-band frame groups that agree with the lowest one (3 sigma)."""
    groups = []
    for m, ax in enumerate(axes):
        t = (positions[:, m] - ax.low) / (ax.high - ax.low)
        for sel in (t <= fraction + 1e-9, t >= 1 - fraction - 1e-9):
            if sel.any():
                groups.append(stack[sel].astype(np.float64))
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


def windowed_moments(
    stack: np.ndarray, positions: np.ndarray, offset: np.ndarray | float, rho: float, passes: int,
    mask: np.ndarray, axes: Sequence[MotorAxis],
) -> dict:
    """`moments` within each pixel's window (online/moment_window.py), the textbook way: per
    pixel, the points within Mahalanobis distance `rho` of the current (mean, covariance,
    each variance at least its motor's step squared, the squared range where it is not
    positive), `passes` times from the whole-scan
    moments, each pass's variance, covariance and kurtosis corrected by a truncated
    Gaussian's factors (scipy's chi2, not gammainc). Pixels outside `mask` (H, W) or
    without a positive definite covariance get NaN."""
    from scipy.stats import chi2

    m = positions.shape[1]
    c2 = chi2.cdf(rho**2, m + 2) / chi2.cdf(rho**2, m)
    c4 = chi2.cdf(rho**2, m + 4) / chi2.cdf(rho**2, m)
    w = stack.astype(np.float64) - offset
    ref = moments(stack, positions, offset)
    for _ in range(passes):
        mean = np.stack([ref[f"mean{a}"] for a in range(m)], -1)  # (H, W, M)
        cov = np.empty(mean.shape + (m,))
        for a in range(m):
            var, ax = ref[f"var{a}"], axes[a]
            with np.errstate(invalid="ignore"):
                cov[..., a, a] = np.where(var > 0, np.fmax(var, ax.scale**2), (ax.high - ax.low) ** 2)
        for a in range(m):
            for b in range(a + 1, m):
                bound = 0.9 * np.sqrt(cov[..., a, a] * cov[..., b, b])
                cov[..., a, b] = cov[..., b, a] = np.clip(ref[f"cov{a}{b}"], -bound, bound)
        ok = mask & np.isfinite(mean).all(-1) & np.isfinite(cov).all((-1, -2))
        cov = np.where(ok[..., None, None], cov, np.eye(m))
        if m == 3:  # not positive definite: no correlations
            cov = np.where((np.linalg.det(cov) > 0)[..., None, None], cov, cov * np.eye(m))
        inv = np.linalg.inv(cov)
        d = positions[:, None, None, :] - mean[None]  # (N, H, W, M)
        q = np.einsum("nhwi,hwij,nhwj->nhw", d, inv, d)
        inside = (q <= rho**2) & ok[None]
        ref = moments(np.where(inside, w, 0.0), positions, 0.0)
        empty = ~(ref["intensity"] > 0)  # no signal in the window: no moments
        ref = {k: (v if k == "intensity" else np.where(empty, np.nan, v)) for k, v in ref.items()}
        for a in range(m):
            ref[f"var{a}"] = ref[f"var{a}"] / c2
            ref[f"kurt{a}"] = (ref[f"kurt{a}"] + 3) * c2**2 / c4 - 3
            for b in range(a + 1, m):
                ref[f"cov{a}{b}"] = ref[f"cov{a}{b}"] / c2
    return ref


def pooled_edge_mean(sums: np.ndarray, sumsq: np.ndarray, counts: np.ndarray, k: float) -> np.ndarray:
    """The pooled edge baseline as plain per-group numpy, the same expressions as the
    compiled pass (so the same values bit for bit): each pixel's lowest group mean (the first
    one on ties) and its variance, the groups within k standard errors of it, their pooled
    mean. `sums`, `sumsq` (G, P), `counts` (G,)."""
    means = sums / counts[:, None]
    low = np.argmin(means, axis=0)
    cols = np.arange(sums.shape[1])
    m_low = means[low, cols]
    var_low = np.maximum(sumsq[low, cols] / counts[low] - m_low * m_low, 0.0)
    inside = means <= m_low + k * np.sqrt(var_low * (1.0 / counts[low] + 1.0 / counts[:, None]))
    return np.where(inside, sums, 0.0).sum(axis=0) / np.where(inside, counts[:, None], 0.0).sum(axis=0)
