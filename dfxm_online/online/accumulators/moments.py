"""Per-pixel power sums of the scan motors: one-pass, mergeable intensity moments.

For every pixel p and every monomial u^e = prod_m u_m^e_m with |e| <= order, we keep

    S_e[p] = sum_k I_k[p] * u_k^e,      and for the frames alone   W_e = sum_k u_k^e

where u_k = (x_k - centre) / step are the recorded motor positions of point k relative to
the scan centre in units of the step (numerical stability, Pebay 2008). Everything the maps
need (integrated intensity, centre of mass, variance/covariance, skewness, kurtosis) is a
function of these sums, computed only at snapshot time.

Why the W_e: any per-pixel constant c subtracted from every frame (a dark image, an
estimated baseline) changes the sums exactly by -c * W_e. So the background can be chosen
and re-estimated at snapshot time, on the raw sums, without a second pass over the frames.

The update is one matrix product per batch, (monomials x frames) @ (frames x pixels), tiled
over pixel chunks so that a tile of the converted frames stays in cache.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numexpr as ne
import numpy as np

from ...acquisition.geometry import MotorAxis
from ..tiles import for_each_tile


def monomial_exponents(n_motors: int, order: int) -> np.ndarray:
    """All exponent vectors e with sum(e) <= order, constant term first, by total degree."""
    exps = [
        e for e in itertools.product(range(order + 1), repeat=n_motors) if sum(e) <= order
    ]
    exps.sort(key=lambda e: (sum(e), tuple(-x for x in e)))
    return np.array(exps, dtype=np.int64).reshape(len(exps), n_motors)


def reduced_coordinates(
    axes: Sequence[MotorAxis], positions: Mapping[str, np.ndarray]
) -> np.ndarray:
    """(B, M) dimensionless coordinates u = (x - centre) / step of a batch of points."""
    try:
        cols = [
            (np.asarray(positions[a.name], dtype=np.float64) - a.centre) / a.scale for a in axes
        ]
    except KeyError as exc:
        raise KeyError(f"no positions for motor {exc.args[0]!r}") from None
    return np.stack(cols, axis=1)


@dataclass
class MomentSnapshot:
    """Central moments of each pixel's intensity distribution over the motors, motor units.

    Arrays are flat over pixels: `intensity` (P,), `mean` (M, P), `cov` (M, M, P),
    `m3` and `m4` (M, P) the 3rd and 4th central moments of each motor's marginal.
    """

    intensity: np.ndarray
    mean: np.ndarray
    cov: np.ndarray
    m3: np.ndarray
    m4: np.ndarray


class PowerSums:
    """Mergeable per-pixel power sums of 1-3 motors up to 4th order (accumulator contract).

    `update(frames, positions)`, `merge(other)`, `state()` / `from_state()`, and
    `snapshot(offset)` which converts to central moments after subtracting a per-pixel
    `offset` image from every frame (exactly, through the W_e sums).
    """

    def __init__(
        self, axes: Sequence[MotorAxis], n_pixels: int, order: int = 4, precision: str = "float64"
    ) -> None:
        """`precision` "float64" is exact to ~1e-12 against brute force; "float32" computes
        each batch's product in float32 (2-3x faster, ~1e-7 relative error per batch, sums
        still accumulated in float64)."""
        if not 1 <= len(axes) <= 3:
            raise ValueError("PowerSums supports 1 to 3 motors")
        if order < 2:
            raise ValueError("order must be >= 2 (variance)")
        self.axes = tuple(axes)
        self.order = order
        if precision not in ("float64", "float32"):
            raise ValueError("precision must be 'float64' or 'float32'")
        self.compute_dtype = np.dtype(precision)
        self.exponents = monomial_exponents(len(axes), order)
        self.sums = np.zeros((len(self.exponents), n_pixels), dtype=np.float64)
        self.weights = np.zeros(len(self.exponents), dtype=np.float64)
        self.count = 0

    @property
    def n_pixels(self) -> int:
        return self.sums.shape[1]

    def monomials(self, u: np.ndarray) -> np.ndarray:
        """(B, n_monomials) matrix of u^e for a batch of reduced coordinates."""
        return np.prod(u[:, None, :] ** self.exponents[None, :, :], axis=2)

    def update(self, frames: np.ndarray, positions: Mapping[str, np.ndarray]) -> None:
        """Add a batch of frames (B, H, W) or (B, P) at their recorded positions."""
        flat = frames.reshape(frames.shape[0], -1)
        if flat.shape[1] != self.n_pixels:
            raise ValueError(f"frames have {flat.shape[1]} pixels, expected {self.n_pixels}")
        mono = self.monomials(reduced_coordinates(self.axes, positions))
        dtype = self.compute_dtype
        mono_t = np.ascontiguousarray(mono.T, dtype=dtype)

        def work(start: int, stop: int) -> None:
            # the product in compute_dtype, the running sums always in float64
            self.sums[:, start:stop] += mono_t @ flat[:, start:stop].astype(dtype)

        for_each_tile(self.n_pixels, work)
        self.weights += mono.sum(axis=0)
        self.count += flat.shape[0]

    def merge(self, other: PowerSums) -> None:
        """Add another accumulator over the same axes (other frames of the same scan)."""
        if other.axes != self.axes or other.order != self.order:
            raise ValueError("cannot merge power sums over different axes or orders")
        self.sums += other.sums
        self.weights += other.weights
        self.count += other.count

    def state(self) -> dict[str, np.ndarray]:
        return {"sums": self.sums.copy(), "weights": self.weights.copy(), "count": np.array(self.count)}

    @classmethod
    def from_state(
        cls, axes: Sequence[MotorAxis], state: Mapping[str, np.ndarray], order: int = 4,
        precision: str = "float64",
    ) -> PowerSums:
        obj = cls(axes, state["sums"].shape[1], order, precision)
        obj.sums[...] = state["sums"]
        obj.weights[...] = state["weights"]
        obj.count = int(state["count"])
        return obj

    def _index(self, exponent: Sequence[int]) -> int:
        return int(np.flatnonzero((self.exponents == np.asarray(exponent)).all(axis=1))[0])

    def snapshot(self, offset: np.ndarray | None = None) -> MomentSnapshot:
        """Central moments with `offset` (P,) subtracted from every frame first.

        Pixels with no positive integrated intensity get NaN moments.
        """
        m = len(self.axes)
        off = 0.0 if offset is None else np.asarray(offset, dtype=np.float64).reshape(-1)
        unit = np.eye(m, dtype=np.int64)
        centre = [ax.centre for ax in self.axes]
        scale = [ax.scale for ax in self.axes]

        def row(exp: Sequence[int]) -> dict[str, object]:
            i = self._index(exp)
            return {"s": self.sums[i], "w": self.weights[i]}

        # numexpr evaluates each expression in one multi-threaded pass over the pixels with
        # the offset subtracted on the fly (no 500 MB corrected copy of the sums at 2048^2):
        # measured 1.2 s -> 0.25 s for this function at 2048^2, two motors, on 2 cores.
        s0 = ne.evaluate("s - w * off", {**row([0] * m), "off": off})
        inv = ne.evaluate("where(s0 > 0, 1 / s0, nan)", {"s0": s0, "nan": np.nan})
        mu = np.empty((m, self.n_pixels))
        for k in range(m):
            ne.evaluate("(s - w * off) * inv", {**row(unit[k]), "off": off, "inv": inv}, out=mu[k])
        cov = np.empty((m, m, self.n_pixels))
        m3 = np.full((m, self.n_pixels), np.nan)
        m4 = np.full((m, self.n_pixels), np.nan)
        for k in range(m):
            for j in range(k, m):
                r = row(unit[k] + unit[j])
                ne.evaluate(
                    "((s - w * off) * inv - a * b) * sab",
                    {**r, "off": off, "inv": inv, "a": mu[k], "b": mu[j], "sab": scale[k] * scale[j]},
                    out=cov[k, j],
                )
                if j != k:
                    cov[j, k] = cov[k, j]
            # Horner forms of the raw -> central conversion, in units of the step, then scaled
            e = {f"s{p}": row(p * unit[k])["s"] for p in (2, 3, 4) if p <= self.order}
            w = {f"w{p}": row(p * unit[k])["w"] for p in (2, 3, 4) if p <= self.order}
            env = {**e, **w, "off": off, "inv": inv, "x": mu[k]}
            e2 = "((s2 - w2 * off) * inv)"
            if self.order >= 3:
                e3 = "((s3 - w3 * off) * inv)"
                ne.evaluate(f"({e3} - x * (3 * {e2} - 2 * x * x)) * sc3",
                            {**env, "sc3": scale[k] ** 3}, out=m3[k])
            if self.order >= 4:
                e4 = "((s4 - w4 * off) * inv)"
                ne.evaluate(f"({e4} - x * (4 * {e3} - x * (6 * {e2} - 3 * x * x))) * sc4",
                            {**env, "sc4": scale[k] ** 4}, out=m4[k])
            ne.evaluate("c + sc * x", {"c": centre[k], "sc": scale[k], "x": mu[k]}, out=mu[k])
        return MomentSnapshot(intensity=s0, mean=mu, cov=cov, m3=m3, m4=m4)
