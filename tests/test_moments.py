"""Accumulators against brute force over the whole stack; merge == whole; state round trip."""

from __future__ import annotations

import numpy as np
import pytest

from dfxm_online.acquisition.geometry import MotorAxis, ScanGeometry
from dfxm_online.acquisition.model import CrystalModel, scan_positions
from dfxm_online.config import AnalysisConfig
from dfxm_online.gaussian import FWHM_PER_SIGMA
from dfxm_online.online.accumulators.background import EdgeBaseline, RunningMean
from dfxm_online.online.accumulators.moments import PowerSums, monomial_exponents
from dfxm_online.online.pipeline import ScanPipeline

from . import brute

AXES = {
    1: [MotorAxis("mu", -0.4, 0.4, 21)],
    2: [MotorAxis("mu", -0.4, 0.4, 9), MotorAxis("chi", 1.0, -1.0, 7)],
    3: [MotorAxis("mu", -0.4, 0.4, 5), MotorAxis("chi", -1.0, 1.0, 4), MotorAxis("ffz", 0, 2, 3)],
}


def make_stack(n_motors: int, shape=(24, 20), zigzag=False, seed=1):
    axes = AXES[n_motors]
    model = CrystalModel.make(shape, axes, seed=seed)
    pos = scan_positions(axes, zigzag=zigzag)
    rng = np.random.default_rng(seed)
    stack = np.stack([model.frame(p, rng) for p in pos])
    return axes, model, pos, stack


def as_dict(axes, pos):
    return {a.name: pos[:, i] for i, a in enumerate(axes)}


def test_monomials_count():
    assert [len(monomial_exponents(m, 4)) for m in (1, 2, 3)] == [5, 15, 35]
    assert tuple(monomial_exponents(2, 4)[0]) == (0, 0)


@pytest.mark.parametrize("n_motors", [1, 2, 3])
@pytest.mark.parametrize("zigzag", [False, True])
def test_power_sums_equal_brute_force(n_motors, zigzag):
    axes, _, pos, stack = make_stack(n_motors, zigzag=zigzag)
    acc = PowerSums(axes, stack[0].size)
    for start in range(0, len(pos), 7):  # uneven batches
        acc.update(stack[start : start + 7], as_dict(axes, pos[start : start + 7]))
    offset = brute.edge_baseline(stack, pos, axes, 0.2)
    snap = acc.snapshot(offset.reshape(-1))
    ref = brute.moments(stack, pos, offset)
    shape = stack.shape[1:]
    good = ref["intensity"] > 0.05 * ref["intensity"].max()
    assert good.sum() > 50

    def check(ours, theirs):
        np.testing.assert_allclose(ours.reshape(shape)[good], theirs[good], rtol=1e-9, atol=1e-12)

    check(snap.intensity, ref["intensity"])
    for a in range(n_motors):
        var = snap.cov[a, a]
        check(snap.mean[a], ref[f"mean{a}"])
        check(var, ref[f"var{a}"])
        check(snap.m3[a] / var**1.5, ref[f"skew{a}"])
        check(snap.m4[a] / var**2 - 3, ref[f"kurt{a}"])
        for b in range(a + 1, n_motors):
            check(snap.cov[a, b], ref[f"cov{a}{b}"])


def test_unsorted_positions_give_the_same_sums():
    axes, _, pos, stack = make_stack(2)
    order = np.random.default_rng(5).permutation(len(pos))
    a, b = PowerSums(axes, stack[0].size), PowerSums(axes, stack[0].size)
    a.update(stack, as_dict(axes, pos))
    b.update(stack[order], as_dict(axes, pos[order]))
    np.testing.assert_allclose(a.sums, b.sums, rtol=1e-12, atol=1e-9 * np.abs(a.sums).max())


def test_merge_halves_equals_whole_and_state_round_trip():
    axes, _, pos, stack = make_stack(2)
    n = stack[0].size
    whole = ScanPipeline(ScanGeometry(tuple(axes), len(pos), "det"), stack.shape[1:])
    whole.update(stack, as_dict(axes, pos))
    h = len(pos) // 2
    first = ScanPipeline(ScanGeometry(tuple(axes), len(pos), "det"), stack.shape[1:])
    second = ScanPipeline(ScanGeometry(tuple(axes), len(pos), "det"), stack.shape[1:], first_index=h)
    first.update(stack[:h], as_dict(axes, pos[:h]))
    second.update(stack[h:], as_dict(axes, pos[h:]))
    # checkpoint the first half, restore it into a fresh pipeline, then merge
    restored = ScanPipeline(ScanGeometry(tuple(axes), len(pos), "det"), stack.shape[1:])
    restored.load_state(first.state())
    restored.merge(second)
    scale = np.abs(whole.moments.sums).max(axis=1, keepdims=True)
    np.testing.assert_allclose(restored.moments.sums, whole.moments.sums, rtol=1e-12, atol=1e-12 * scale.max())
    assert restored.frames_processed == whole.frames_processed == len(pos)
    for name, value in whole.snapshot().items():
        np.testing.assert_allclose(restored.snapshot()[name], value, rtol=1e-9, equal_nan=True)
    assert n == stack.shape[1] * stack.shape[2]


def test_running_mean_and_edge_baseline_against_numpy():
    axes, _, pos, stack = make_stack(2)
    mean = RunningMean(stack[0].size)
    edges = EdgeBaseline(axes, stack[0].size, 0.2)
    for start in range(0, len(pos), 5):
        mean.update(stack[start : start + 5])
        edges.update(stack[start : start + 5], as_dict(axes, pos[start : start + 5]))
    np.testing.assert_allclose(mean.snapshot(), stack.mean(axis=0).reshape(-1), rtol=1e-12)
    np.testing.assert_allclose(
        edges.snapshot(), brute.edge_baseline(stack, pos, axes, 0.2).reshape(-1), rtol=1e-12
    )


def test_edge_baseline_snapshot_is_reused_only_while_no_band_frame_arrives():
    # a live publish takes the baseline again only when a frame fell in a band: the reused
    # one is the baseline of the frames so far, read-only
    axes, _, pos, stack = make_stack(2)
    edges = EdgeBaseline(axes, stack[0].size, 0.2)
    remade = reused = False
    previous = None
    for i in range(len(pos)):
        edges.update(stack[i : i + 1], as_dict(axes, pos[i : i + 1]))
        in_band = edges.counts.sum() != (0 if previous is None else previous[0])
        got = edges.snapshot()
        if got is None:
            continue
        expected = brute.edge_baseline(stack[: i + 1], pos[: i + 1], axes, 0.2).reshape(-1)
        np.testing.assert_allclose(got, expected, rtol=1e-12)
        assert not got.flags.writeable
        if previous is not None:
            assert (got is previous[1]) == (not in_band)
            remade = remade or in_band
            reused = reused or not in_band
        fresh = EdgeBaseline.from_state(axes, edges.state(), 0.2)
        np.testing.assert_array_equal(got, fresh.snapshot())
        previous = (edges.counts.sum(), got)
    assert remade and reused  # both cases were met
    before = edges.snapshot()
    other = EdgeBaseline(axes, stack[0].size, 0.2)
    other.update(stack[:1], as_dict(axes, pos[:1]))
    edges.merge(other)
    merged = edges.snapshot()
    assert merged is not before and not np.array_equal(merged, before)


def test_edge_baseline_gives_unbiased_com_and_fwhm_where_raw_moments_do_not():
    """The default background recovers the model's truth; raw and clipped moments do not."""
    axes = [MotorAxis("mu", -0.4, 0.4, 31), MotorAxis("chi", -1.0, 1.0, 25)]
    model = CrystalModel.make((32, 32), axes, seed=3, dark_offset=100.0, peak_counts=5000.0)
    pos = scan_positions(axes)
    rng = np.random.default_rng(3)
    stack = np.stack([model.frame(p, rng) for p in pos])
    geom = ScanGeometry(tuple(axes), len(pos), "det")
    pipe = ScanPipeline(geom, (32, 32), AnalysisConfig())
    pipe.update(stack, as_dict(axes, pos))
    maps = pipe.snapshot()
    inside = (model.amplitude > 400) & np.isfinite(maps["com_mu"])
    assert inside.sum() > 200
    for i, ax in enumerate(axes):
        step = ax.scale
        com_err = ((maps[f"com_{ax.name}"] - model.centre[i]) / step)[inside]
        fwhm_rel = (maps[f"fwhm_{ax.name}"] / model.fwhm[i] - 1)[inside]
        # unbiased: the median signed error is far below the per-pixel noise
        assert abs(np.median(com_err)) < 0.01 and np.abs(com_err).max() < 0.25
        assert abs(np.median(fwhm_rel)) < 0.01 and np.percentile(np.abs(fwhm_rel), 90) < 0.1
    # the naive choices are measurably wrong on the same data
    raw = ScanPipeline(geom, (32, 32), AnalysisConfig(background="none"))
    raw.update(stack, as_dict(axes, pos))
    raw_maps = raw.snapshot()
    assert np.median(raw_maps["fwhm_mu"] / model.fwhm[0] - 1) > 0.5
    centred = np.abs(model.centre[0] - axes[0].centre) > 2 * axes[0].scale
    shrink = (raw_maps["com_mu"] - axes[0].centre) / (model.centre[0] - axes[0].centre)
    assert np.median(shrink[inside & centred]) < 0.8  # every tilt pulled toward the centre
    clipped = np.clip(stack.astype(float) - model.dark_offset, 0, None)
    ref = brute.moments(clipped, pos)
    assert np.median((FWHM_PER_SIGMA * np.sqrt(ref["var0"]) / model.fwhm[0] - 1)[inside]) > 0.03


def test_float32_precision_within_its_stated_tolerance():
    axes, _, pos, stack = make_stack(2)
    exact = PowerSums(axes, stack[0].size)
    fast = PowerSums(axes, stack[0].size, precision="float32")
    for start in range(0, len(pos), 16):
        for acc in (exact, fast):
            acc.update(stack[start : start + 16], as_dict(axes, pos[start : start + 16]))
    offset = brute.edge_baseline(stack, pos, axes, 0.2).reshape(-1)
    a, b = exact.snapshot(offset), fast.snapshot(offset)
    good = a.intensity > 0.05 * a.intensity.max()
    np.testing.assert_allclose(b.mean[:, good], a.mean[:, good], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.cov[0, 0, good], a.cov[0, 0, good], rtol=1e-4)
    assert not np.array_equal(fast.sums, exact.sums)  # really a different computation


def test_pooled_edge_mean_equals_its_numpy_expression_bit_for_bit():
    # the compiled pass works a block of pixels and a group at a time (vectorized): the
    # same expressions as the plain per-group numpy below, so the same values exactly,
    # ties between group means (first lowest wins) and a last partial block included
    from dfxm_online.online.accumulators.background import pooled_edge_mean

    rng = np.random.default_rng(5)
    for trial in range(30):
        groups, pixels = int(rng.integers(1, 9)), int(rng.integers(1, 1500))
        n = rng.integers(1, 20, groups).astype(np.float64)
        frames = [rng.poisson(rng.uniform(5, 50), (int(c), pixels)).astype(np.float64) for c in n]
        if trial % 3 == 0:
            frames = [np.round(f / 10) for f in frames]  # equal group means
        s = np.array([f.sum(axis=0) for f in frames])
        q = np.array([(f * f).sum(axis=0) for f in frames])
        expected = brute.pooled_edge_mean(s, q, n, 3.0)
        got = pooled_edge_mean(list(s), list(q), n, 3.0)
        np.testing.assert_array_equal(got, expected)
