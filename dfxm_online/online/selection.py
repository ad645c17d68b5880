"""Exact percentiles and medians of the pixels of a map that pass a filter, without copies.

Every snapshot takes a few order statistics of full-size maps: the signal mask's reference
level (99.5th percentile of the positive intensities) and the mosaicity colour key's centre
and robust half-range (median of each COM map, then 99th percentile of the distances to
it). numpy needs a filtered copy of the map and a partition of it for each.
`kernels.order_statistics` reads the map where it is (three passes: bounds, a histogram,
the values of the bins that hold the wanted ranks) and selects within those bins.

Measured with the C version it was ported from (`_pixelmaps.order_statistics`, the same
passes; numba gives the same values bit for bit): at 2048^2, the signal mask 0.044 ->
0.020 s; a median and a percentile of one COM map 0.068 -> 0.049 s (one thread; the key's
two axes run on two), ~0.01 s less for the mosaicity map, whose valid-pixel mask and
filtered copies are gone too. With passes that vectorize and float32 maps read as they are
(best of 25, one thread): a median or percentile of a float32 COM map (with the other
map's finiteness) 0.034 -> 0.0083 s (the float64 copies included), the signal mask's
percentile of a float64 intensity map 0.017 -> 0.013 s.

The numba port against that C (its AVX2 clone unless said), same process, alternating,
median of 15, one thread, 2048^2, an AMD EPYC (Zen 3, AVX2) under load, 2026-12-07, numba /
C: the median of a float32 COM map with a float32 other map 0.0154-0.0157 / 0.0144-0.0147 s,
the signal mask's percentile of a float64 intensity map 0.0159-0.0160 / 0.0175-0.0176 s;
numba's `haswell` target 0.0151-0.0156 / 0.0142-0.0145 and 0.0156-0.0157 / 0.0170; its
generic (SSE2) target 0.027-0.028 and 0.022-0.024 s, against 0.038-0.039 s for either with
the C built for plain x86-64.

The results equal `np.percentile(kept, q)` (the default "linear" method) and
`np.median(kept)` bit for bit, `kept` being the values that pass the filter as float64:
the compiled pass returns the two order statistics numpy interpolates between, and the
interpolation below is numpy's own (`numpy.lib._function_base_impl._lerp`); tests hold the
two together.
"""

from __future__ import annotations

import numpy as np

from .kernels.order_statistics import order_statistics


def _flat(values: np.ndarray) -> np.ndarray:
    """`values` as the compiled passes read them: float32 maps as they are (the live
    snapshot's; each value is exact as a float64, so no converted copy is needed), anything
    else as float64."""
    values = np.asarray(values)
    dtype = np.float32 if values.dtype == np.float32 else np.float64
    return np.ascontiguousarray(values, dtype=dtype).reshape(-1)


def _order_statistics(
    values: np.ndarray,
    fractions: list[float],
    finite_with: np.ndarray | None,
    positive: bool,
    distance_to: float | None,
) -> tuple[int, np.ndarray, np.ndarray]:
    flat = _flat(values)
    other = None
    if finite_with is not None:
        other = _flat(finite_with)
        if other.shape != flat.shape:
            raise ValueError(f"finite_with has {other.size} values, values has {flat.size}")
    ranks_of = np.asarray(fractions, dtype=np.float64)
    lo, hi = np.empty(len(ranks_of)), np.empty(len(ranks_of))
    centre = np.nan if distance_to is None else float(distance_to)
    n = order_statistics(flat, other, positive, centre, ranks_of, lo, hi)
    return n, lo, hi


def percentile(
    values: np.ndarray,
    q: float,
    *,
    finite_with: np.ndarray | None = None,
    positive: bool = False,
    distance_to: float | None = None,
) -> float:
    """`np.percentile(kept, q)` of the kept values; NaN when none is kept.

    Kept: the finite values, where `finite_with` (same size) is finite too, and > 0 when
    `positive`; each taken as |value - distance_to| when that is given.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    fraction = np.true_divide(q, 100)  # as np.percentile does
    n, lo, hi = _order_statistics(values, [float(fraction)], finite_with, positive, distance_to)
    if n == 0:
        return float("nan")
    # numpy's linear method: virtual index (n - 1) * q, gamma its fractional part, then
    # _lerp (from b downwards when gamma >= 0.5, for symmetry)
    virtual = (n - 1) * fraction
    gamma = virtual - np.floor(virtual)
    a, b = lo[0], hi[0]
    diff = b - a
    return float(b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma)


def median(
    values: np.ndarray,
    *,
    finite_with: np.ndarray | None = None,
    positive: bool = False,
    distance_to: float | None = None,
) -> float:
    """`np.median(kept)` of the kept values (as `percentile`); NaN when none is kept."""
    n, lo, hi = _order_statistics(values, [0.5], finite_with, positive, distance_to)
    if n == 0:
        return float("nan")
    # np.median: the middle value, or the mean of the two middle ones
    return float(lo[0]) if n % 2 else float(np.mean(np.array([lo[0], hi[0]])))
