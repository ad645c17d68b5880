"""Exact order statistics read off a map in place, against numpy on the filtered copy."""

import numpy as np
import pytest

from dfxm_online.online import selection
from dfxm_online.online.kernels.order_statistics import MAX_FRACTIONS, order_statistics


def kept_values(v, finite_with, positive, distance_to):
    keep = np.isfinite(v)
    if finite_with is not None:
        keep &= np.isfinite(finite_with)
    if positive:
        keep &= v > 0
    kept = v[keep]
    return kept if distance_to is None else np.abs(kept - distance_to)


def maps(rng):
    """Small maps of every awkward kind: ties, NaN/inf holes, constant, tiny, wide range."""
    for trial in range(400):
        n = int(rng.integers(1, 6)) if trial % 4 == 0 else int(rng.integers(0, 400))
        v = rng.normal(size=n) * 10 ** rng.uniform(-3, 3)
        kind = trial % 6
        if kind == 1:
            v = np.round(v)  # many ties
        elif kind == 2:
            v[rng.random(n) < 0.3] = np.nan
        elif kind == 3:
            v[rng.random(n) < 0.2] = np.inf
            v[rng.random(n) < 0.1] = -np.inf
        elif kind == 4:
            v = np.full(n, 1.5)
        elif kind == 5 and n:
            v[0], v[-1] = -1e300, 1e300  # a range too wide for one double: one bin
        other = rng.normal(size=n)
        other[rng.random(n) < 0.1] = np.nan
        yield v, other


def same(a, b):
    return a == b or (np.isnan(a) and np.isnan(b))


def test_percentile_and_median_equal_numpy_bit_for_bit():
    rng = np.random.default_rng(0)
    checked = 0
    for v, other in maps(rng):
        for finite_with in (None, other):
            for positive in (False, True):
                for distance_to in (None, 0.3):
                    kept = kept_values(v, finite_with, positive, distance_to)
                    opts = dict(finite_with=finite_with, positive=positive, distance_to=distance_to)
                    for q in (0, 0.5, 25, 50, 99, 99.5, 100, float(rng.uniform(0, 100))):
                        ref = np.percentile(kept, q) if kept.size else np.nan
                        assert same(selection.percentile(v, q, **opts), ref), (v, q, opts)
                    ref = np.median(kept) if kept.size else np.nan
                    assert same(selection.median(v, **opts), ref), (v, opts)
                    checked += kept.size > 0
    assert checked > 2000


def test_float32_maps_are_read_as_their_float64_values():
    """The live snapshot's float32 COM maps are read where they are, with the statistics of
    the same values widened to float64 (a float32 and a float64 map may be mixed)."""
    rng = np.random.default_rng(3)
    checked = 0
    for v64, other64 in maps(rng):
        with np.errstate(over="ignore"):  # +-1e300 become +-inf in float32
            v, other = v64.astype(np.float32), other64.astype(np.float32)
        wide = v.astype(np.float64)
        for finite_with in (None, other, other64):
            for distance_to in (None, 0.3):
                kept = kept_values(wide, finite_with, True, distance_to)
                opts = dict(finite_with=finite_with, positive=True, distance_to=distance_to)
                ref = np.percentile(kept, 99.5) if kept.size else np.nan
                assert same(selection.percentile(v, 99.5, **opts), ref), (v, opts)
                ref = np.median(kept) if kept.size else np.nan
                assert same(selection.median(v, **opts), ref), (v, opts)
                checked += kept.size > 0
    assert checked > 1000


def test_full_size_map_with_a_hole_and_a_peaked_distribution():
    # a 1024^2 COM-like map: most values in a narrow peak (thousands in a histogram bin),
    # a block of NaN (no signal) and a few far outliers
    rng = np.random.default_rng(1)
    a = rng.normal(0.01, 1e-4, 1 << 20)
    a[: 1 << 18] = np.nan
    a[rng.integers(0, a.size, 50)] = 5.0
    b = a + 1.0
    kept = a[np.isfinite(a)]
    centre = selection.median(a, finite_with=b)
    assert centre == np.median(kept)
    assert selection.percentile(a, 99, finite_with=b, distance_to=centre) == np.percentile(
        np.abs(kept - centre), 99)
    assert selection.percentile(a, 99.5, positive=True) == np.percentile(kept[kept > 0], 99.5)


def test_the_inputs_are_left_untouched_and_bad_arguments_refused():
    rng = np.random.default_rng(2)
    a = rng.normal(size=1000)
    before = a.copy()
    selection.median(a, distance_to=0.1)
    selection.percentile(a, 10, positive=True)
    np.testing.assert_array_equal(a, before)
    with pytest.raises(ValueError, match="percentile"):
        selection.percentile(a, 101)
    with pytest.raises(ValueError, match="finite_with"):
        selection.median(a, finite_with=a[:10])
    lo, hi = np.empty(1), np.empty(1)
    half = np.array([0.5])
    with pytest.raises(ValueError, match="fractions"):
        order_statistics(a, None, False, np.nan, np.array([1.5]), lo, hi)
    with pytest.raises(ValueError, match="fractions"):
        order_statistics(a, None, False, np.nan, np.array([np.nan]), lo, hi)
    with pytest.raises(ValueError, match="ranks_of"):
        order_statistics(a, None, False, np.nan, half, np.empty(2), hi)
    with pytest.raises(ValueError, match="at most 8"):
        many = np.full(MAX_FRACTIONS + 1, 0.5)
        order_statistics(a, None, False, np.nan, many, np.empty(many.size), np.empty(many.size))
    with pytest.raises(ValueError, match="other must match"):
        order_statistics(a, a[:10], False, np.nan, half, lo, hi)
    with pytest.raises(TypeError, match="float64 or float32"):
        order_statistics(a.astype(np.float16), None, False, np.nan, half, lo, hi)
    with pytest.raises(TypeError, match="float64 or float32"):
        order_statistics(a, a.astype(np.int32), False, np.nan, half, lo, hi)


def test_order_statistics_are_the_ranks_of_the_sorted_kept_values():
    """The compiled function itself, several fractions at once, on float32 and float64 maps
    and `other` maps of either dtype: lo/hi are the values of ranks floor((n - 1) * f) and
    the next one of numpy's sorted kept values, and np.percentile / np.median interpolated
    from them (as selection does) are numpy's own, bit for bit."""
    rng = np.random.default_rng(4)
    fractions = np.array([0.0, 0.005, 0.5, 0.99, 0.995, 1.0, float(rng.uniform()), 0.25])
    checked = 0
    for trial, (v64, other64) in enumerate(maps(rng)):
        if trial % 3:
            continue
        with np.errstate(over="ignore"):
            v32, other32 = v64.astype(np.float32), other64.astype(np.float32)
        for v in (v64, v32):
            wide = v.astype(np.float64)
            for finite_with in (None, other64, other32):
                for positive in (False, True):
                    for distance_to in (None, 0.3):
                        kept = np.sort(kept_values(wide, finite_with, positive, distance_to))
                        lo, hi = np.empty(fractions.size), np.empty(fractions.size)
                        centre = np.nan if distance_to is None else distance_to
                        n = order_statistics(v, finite_with, positive, centre, fractions, lo, hi)
                        assert n == kept.size
                        if n == 0:
                            assert np.isnan(lo).all() and np.isnan(hi).all()
                            continue
                        r = np.floor((n - 1) * fractions).astype(np.int64)
                        np.testing.assert_array_equal(lo, kept[r])
                        np.testing.assert_array_equal(hi, kept[np.minimum(r + 1, n - 1)])
                        opts = dict(finite_with=finite_with, positive=positive, distance_to=distance_to)
                        assert selection.percentile(v, 99.5, **opts) == np.percentile(kept, 99.5)
                        assert selection.median(v, **opts) == np.median(kept)
                        checked += 1
    assert checked > 1500
