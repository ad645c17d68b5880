"""Median, minimum, quantile and projection accumulators against brute force over the stack.

Every accumulator is fed in uneven batches (1, 3, 7, ...), compared with the textbook
computation over the whole stack in memory, merged from two halves, and checkpointed /
restored mid-scan.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dfxm_online.acquisition.geometry import MotorAxis
from dfxm_online.online.accumulators.median import (
    LowQuantile,
    MedianByStep,
    RollingMedian,
    RunningMinimum,
    median_network,
    merge_network,
    sort_network,
)
from dfxm_online.online.accumulators.projections import Projections, SumsAlongMotor

SHAPE = (16, 12)
P = SHAPE[0] * SHAPE[1]
N = 41


def make_stack(n: int = N, kind: str = "uint16", seed: int = 0) -> np.ndarray:
    """(n, 16, 12) frames: small integers (many ties) or floats."""
    rng = np.random.default_rng(seed)
    if kind == "uint16":
        return rng.integers(0, 12, size=(n, *SHAPE)).astype(np.uint16)
    if kind == "wide":  # the full uint16 range
        return rng.integers(0, 65536, size=(n, *SHAPE)).astype(np.uint16)
    return rng.normal(100.0, 10.0, size=(n, *SHAPE)).astype(np.float32)


def batches(stop: int, start: int = 0, sizes=(1, 3, 7)) -> list[slice]:
    """Slices of uneven sizes covering [start, stop)."""
    out, s = [], start
    for size in itertools.cycle(sizes):
        if s >= stop:
            return out
        out.append(slice(s, min(s + size, stop)))
        s += size


def feed(acc, stack, positions=None, start=0, stop=None):
    for sl in batches(len(stack) if stop is None else stop, start):
        acc.update(
            stack[sl], None if positions is None else {k: v[sl] for k, v in positions.items()}
        )
    return acc


def assert_states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def zigzag_mesh(n_fast: int = 5, n_slow: int = 8) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Positions of a zigzag mesh: mu fast (0.4 -> -0.4, reversed every line), chi slow.

    Returns the positions (with 1e-13 jitter) and each point's nominal mu index."""
    mu = np.linspace(0.4, -0.4, n_fast)
    rows, index = [], []
    for line in range(n_slow):
        order = np.arange(n_fast) if line % 2 == 0 else np.arange(n_fast)[::-1]
        index.append(order)
        rows.append(np.column_stack([mu[order], np.full(n_fast, -1.0 + 0.25 * line)]))
    pos = np.vstack(rows)
    jitter = np.random.default_rng(3).uniform(-1e-13, 1e-13, size=pos.shape)
    pos = pos + jitter
    return {"mu": pos[:, 0], "chi": pos[:, 1]}, np.concatenate(index)


# --------------------------------------------------------------------------------- networks


@pytest.mark.parametrize("m", range(1, 17))
def test_median_network_is_correct_for_every_01_input(m):
    """0-1 principle: a comparator network that selects the median of every 0/1 input
    selects the median of every input."""
    bits = ((np.arange(2**m)[None, :] >> np.arange(m)[:, None]) & 1).astype(np.uint8)
    rows = list(bits)
    for a, b in median_network(m):
        rows[a], rows[b] = np.minimum(rows[a], rows[b]), np.maximum(rows[a], rows[b])
    ranks = [m // 2] if m % 2 else [m // 2 - 1, m // 2]
    expected = np.sort(bits, axis=0)
    for r in ranks:
        np.testing.assert_array_equal(rows[r], expected[r])
    if m == 11:
        assert len(median_network(m)) == 32  # pruned from Batcher's 38


def run_pairs(pairs, values: np.ndarray) -> list[np.ndarray]:
    rows = list(values)
    for a, b in pairs:
        rows[a], rows[b] = np.minimum(rows[a], rows[b]), np.maximum(rows[a], rows[b])
    return rows


@pytest.mark.parametrize("m", range(1, 13))
def test_sort_and_merge_networks_are_correct_for_every_01_input(m):
    bits = ((np.arange(2**m)[None, :] >> np.arange(m)[:, None]) & 1).astype(np.uint8)
    np.testing.assert_array_equal(run_pairs(sort_network(m), bits), np.sort(bits, axis=0))
    # merging: every split of m wires into two sorted 0-1 sequences, every number kept
    for first in range(m + 1):
        a = np.sort(bits[:first], axis=0)
        b = np.sort(bits[first:], axis=0)
        expected = np.sort(bits, axis=0)
        for keep in {1, first, m}:
            if keep == 0:
                continue
            pairs, order = merge_network(first, m - first, keep)
            rows = run_pairs(pairs, np.concatenate([a, b]))
            np.testing.assert_array_equal([rows[w] for w in order], expected[:keep])


# ---------------------------------------------------------------------------- MedianByStep


@pytest.mark.parametrize("step,offset", [(1, 0), (3, 0), (3, 2), (4, 1)])
@pytest.mark.parametrize("max_frames", [None, N])
@pytest.mark.parametrize("kind", ["uint16", "float"])
def test_median_by_step_equals_median_of_selected_frames(step, offset, max_frames, kind):
    stack = make_stack(kind=kind)
    acc = feed(MedianByStep(P, step, max_frames, offset=offset), stack)
    selected = stack[offset::step]
    # in float64: np.median of float32 rounds the mean of the two middle values to float32
    expected = np.median(selected.astype(np.float64), axis=0).reshape(-1)
    np.testing.assert_array_equal(acc.snapshot(), expected)
    assert acc.count == len(selected)
    np.testing.assert_array_equal(acc.indices, np.arange(offset, N, step))
    assert acc.frames.dtype == (np.uint16 if kind == "uint16" else np.float32)
    if max_frames is not None:
        assert acc._frames.shape[0] == len(selected)  # allocated once, exactly


def test_median_by_step_merge_of_halves_equals_whole():
    stack = make_stack(kind="wide")
    whole = feed(MedianByStep(P, 3, offset=1), stack)
    first = feed(MedianByStep(P, 3, offset=1), stack, stop=17)
    second = MedianByStep(P, 3, offset=1, start=17)
    feed(second, stack, start=17)
    late_first = MedianByStep.from_state(second.state())
    first.merge(second)
    np.testing.assert_array_equal(first.snapshot(), whole.snapshot())
    np.testing.assert_array_equal(first.ranges, [[0, N]])
    # the other order gives the same median
    late_first.merge(feed(MedianByStep(P, 3, offset=1), stack, stop=17))
    np.testing.assert_array_equal(late_first.snapshot(), whole.snapshot())
    # the same frames twice, or another subsample, cannot be merged
    with pytest.raises(ValueError, match="same frame indices"):
        first.merge(feed(MedianByStep(P, 3, offset=1, start=40), stack[:2]))
    with pytest.raises(ValueError, match="steps, offsets"):
        whole.merge(MedianByStep(P, 3, offset=2, start=100))
    with pytest.raises(ValueError, match="steps, offsets"):
        whole.merge(MedianByStep(P, 2, offset=1, start=100))


@pytest.mark.parametrize("max_frames", [None, N])
def test_median_by_step_state_round_trip(max_frames):
    stack = make_stack()
    acc = feed(MedianByStep(P, 4, max_frames, offset=3), stack, stop=20)
    restored = MedianByStep.from_state(acc.state())
    for a in (acc, restored):
        feed(a, stack, start=20)
    np.testing.assert_array_equal(restored.snapshot(), acc.snapshot())
    np.testing.assert_array_equal(restored.snapshot(), np.median(stack[3::4], axis=0).reshape(-1))
    assert_states_equal(restored.state(), acc.state())
    assert MedianByStep(P, 2).snapshot() is None


def test_median_by_step_refuses_what_it_cannot_hold_exactly():
    stack = make_stack()
    acc = feed(MedianByStep(P, 2, max_frames=10), stack, stop=10)
    with pytest.raises(ValueError, match="max_frames"):
        acc.update(stack[10:11])
    assert acc.count == 5 and acc.next_index == 10  # the refused frame left no trace
    # uint16 frames are stored as uint16; a later float frame would not fit exactly
    acc = MedianByStep(P, 1)
    acc.update(stack[:1])
    with pytest.raises(ValueError, match="uint16"):
        acc.update(stack[1:2].astype(np.float64))


# ---------------------------------------------------------------------------- RollingMedian


def rolling_reference(stack: np.ndarray, window: int) -> np.ndarray:
    """np.median over each frame's window, truncated at the ends, in a plain loop."""
    h = window // 2
    return np.stack(
        [np.median(stack[max(0, i - h) : i + h + 1], axis=0) for i in range(len(stack))]
    )


def run_rolling(acc: RollingMedian, stack: np.ndarray, start: int = 0, sizes=(1, 3, 7)):
    indices, images = [], []
    for sl in batches(len(stack), start, sizes):
        acc.update(stack[sl])
        i, img = acc.pop_ready()
        indices.append(i)
        images.append(img)
    i, img = acc.finish()
    return np.concatenate(indices + [i]), np.concatenate(images + [img])


@pytest.mark.parametrize("window", [1, 3, 5, 11])
@pytest.mark.parametrize("n", [N, 3])
@pytest.mark.parametrize("kind", ["uint16", "wide", "float"])
@pytest.mark.parametrize("sizes", [(1, 3, 7), (N,)])
def test_rolling_median_equals_windowed_median(window, n, kind, sizes):
    stack = make_stack(n, kind)
    indices, images = run_rolling(RollingMedian(P, window), stack, sizes=sizes)
    np.testing.assert_array_equal(indices, np.arange(n))
    assert images.shape == (n, *SHAPE) and images.dtype == np.float32
    # exactly np.median's values (for float32 frames, np.median's float32 results)
    np.testing.assert_array_equal(images, rolling_reference(stack, window))


@pytest.mark.parametrize("sizes", [(1,), (1, 3, 7)])
def test_rolling_median_delay(sizes):
    """After frame j arrives, exactly the frames <= j - window // 2 are final."""
    window, stack = 5, make_stack()
    h = window // 2
    reference = rolling_reference(stack, window).reshape(N, -1)
    acc = RollingMedian(P, window)
    popped: list[int] = []
    for sl in batches(N, sizes=sizes):
        acc.update(stack[sl])
        j = sl.stop - 1
        indices, images = acc.pop_ready()
        popped += indices.tolist()
        assert popped == list(range(max(0, j - h + 1)))
        np.testing.assert_array_equal(images.reshape(len(indices), P), reference[indices])
        if j < h:
            assert acc.snapshot() is None
        else:
            np.testing.assert_array_equal(acc.snapshot(), reference[j - h])
    assert acc._ring.shape == (window, P)  # only the last `window` frames are kept
    indices, _ = acc.finish()
    np.testing.assert_array_equal(indices, np.arange(N - h, N))
    np.testing.assert_array_equal(acc.snapshot(), reference[-1])
    with pytest.raises(ValueError, match="finished"):
        acc.update(stack[:1])
    assert acc.finish()[0].size == 0


def test_rolling_median_state_round_trip_and_no_merge():
    window, stack = 7, make_stack(kind="wide")
    reference = rolling_reference(stack, window)
    acc = RollingMedian(P, window)
    for sl in batches(13):
        acc.update(stack[sl])
    early, _ = acc.pop_ready()  # some popped, then more made final but left pending
    acc.update(stack[13:16])
    restored = RollingMedian.from_state(acc.state())
    np.testing.assert_array_equal(restored.snapshot(), acc.snapshot())
    results = [run_rolling(a, stack, start=16) for a in (acc, restored)]
    for indices, images in results:
        np.testing.assert_array_equal(np.concatenate([early, indices]), np.arange(N))
        np.testing.assert_array_equal(images, reference[len(early) :])
    with pytest.raises(ValueError, match="cannot be merged"):
        acc.merge(restored)
    with pytest.raises(ValueError, match="odd"):
        RollingMedian(P, 4)


# --------------------------------------------------------------------------- RunningMinimum


def test_running_minimum_merge_and_round_trip():
    stack = make_stack(kind="wide")
    whole = feed(RunningMinimum(P), stack)
    expected = np.minimum.reduce(stack.reshape(N, -1), axis=0)
    np.testing.assert_array_equal(whole.snapshot(), expected)
    first, second = feed(RunningMinimum(P), stack, stop=20), RunningMinimum(P)
    feed(second, stack, start=20)
    first.merge(second)
    np.testing.assert_array_equal(first.snapshot(), expected)
    assert first.count == N
    part = feed(RunningMinimum(P), stack, stop=9)
    restored = RunningMinimum.from_state(part.state())
    for a in (part, restored):
        feed(a, stack, start=9)
    np.testing.assert_array_equal(restored.snapshot(), expected)
    assert RunningMinimum(P).snapshot() is None


# ------------------------------------------------------------------------------ LowQuantile


@pytest.mark.parametrize("q", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("kind", ["uint16", "float"])
@pytest.mark.parametrize("sizes", [(1, 3, 7), (N,)])  # N > QUANTILE_CHUNK: merged in chunks
def test_low_quantile_is_exact_at_every_batch(q, kind, sizes):
    stack = make_stack(kind=kind)
    acc = LowQuantile(P, q, max_frames=N)
    assert acc.capacity == int(np.floor(q * (N - 1))) + 1
    for sl in batches(N, sizes=sizes):
        acc.update(stack[sl])
        expected = np.quantile(stack[: sl.stop], q, axis=0, method="lower").reshape(-1)
        np.testing.assert_array_equal(acc.snapshot(), expected)
    # the buffer is exactly each pixel's K smallest values, sorted: K frames, not N
    low = acc.state()["low"]
    assert low.shape == (acc.capacity, P)
    np.testing.assert_array_equal(low, np.sort(stack.reshape(N, P), axis=0)[: acc.capacity])


def test_low_quantile_merge_and_round_trip():
    q, stack = 0.2, make_stack(kind="wide")
    expected = np.quantile(stack, q, axis=0, method="lower").reshape(-1)
    for cut in (3, 25):  # one part below the buffer size, one above
        first = feed(LowQuantile(P, q, N), stack, stop=cut)
        second = LowQuantile(P, q, N)
        feed(second, stack, start=cut)
        first.merge(second)
        np.testing.assert_array_equal(first.snapshot(), expected)
        second.merge(feed(LowQuantile(P, q, N), stack, stop=cut))
        np.testing.assert_array_equal(second.snapshot(), expected)
    with pytest.raises(ValueError, match="max_frames"):
        first.merge(feed(LowQuantile(P, q, N), stack, stop=1))
    with pytest.raises(ValueError, match="different q"):
        LowQuantile(P, q, N).merge(LowQuantile(P, 0.3, N))
    for cut in (4, 30):
        part = feed(LowQuantile(P, q, N), stack, stop=cut)
        restored = LowQuantile.from_state(part.state())
        for a in (part, restored):
            feed(a, stack, start=cut)
        np.testing.assert_array_equal(restored.snapshot(), expected)
        assert_states_equal(restored.state(), part.state())
    with pytest.raises(ValueError, match="max_frames"):
        feed(LowQuantile(P, q, N - 1), stack)
    assert LowQuantile(P, q, N).snapshot() is None


# ------------------------------------------------------------------------------ Projections


def check_projections(snap: dict, stack: np.ndarray, first: np.ndarray) -> None:
    flat = stack.reshape(len(stack), -1).astype(np.float64)
    np.testing.assert_array_equal(snap["sum"], flat.sum(axis=0))
    np.testing.assert_array_equal(snap["max"], flat.max(axis=0))
    np.testing.assert_array_equal(snap["sum_first_half"], flat[first].sum(axis=0))
    np.testing.assert_array_equal(snap["sum_second_half"], flat[~first].sum(axis=0))


@pytest.mark.parametrize("n", [N, 40])
def test_projections_split_by_index(n):
    stack = make_stack(n, kind="wide")
    acc = feed(Projections(P, n_frames_expected=n), stack)
    first = np.arange(n) < n // 2
    check_projections(acc.snapshot(), stack, first)
    assert tuple(acc.counts) == (n // 2, n - n // 2)
    # halves processed elsewhere (each with its start index) add up to the whole
    a = feed(Projections(P, n_frames_expected=n), stack, stop=n // 2 + 3)
    b = Projections(P, n_frames_expected=n, start=n // 2 + 3)
    feed(b, stack, start=n // 2 + 3)
    b.merge(a)
    check_projections(b.snapshot(), stack, first)
    part = feed(Projections(P, n_frames_expected=n), stack, stop=7)
    restored = Projections.from_state(part.state())
    for p in (part, restored):
        feed(p, stack, start=7)
    check_projections(restored.snapshot(), stack, first)
    assert_states_equal(restored.state(), part.state())


def test_projections_in_float32_are_the_float64_images_rounded_once():
    """The live snapshot's float32 images: the sum is added in float64, then rounded (a
    float32 addition of the rounded halves differs in the last bit for most pixels)."""
    stack = make_stack(N, kind="float")
    acc = feed(Projections(P, n_frames_expected=N), stack)
    wide, narrow = acc.snapshot(), acc.snapshot(np.float32)
    assert wide.keys() == narrow.keys()
    for name, image in narrow.items():
        assert image.dtype == np.float32, name
        np.testing.assert_array_equal(image, wide[name].astype(np.float32), err_msg=name)
    rounded_halves = narrow["sum_first_half"] + narrow["sum_second_half"]
    assert (rounded_halves != narrow["sum"]).any()


@pytest.mark.parametrize("shuffle", [False, True])
def test_projections_split_by_first_motor_position(shuffle):
    positions, mu_index = zigzag_mesh()
    n = len(mu_index)
    stack = make_stack(n, kind="float")
    if shuffle:
        order = np.random.default_rng(7).permutation(n)
        stack, mu_index = stack[order], mu_index[order]
        positions = {k: v[order] for k, v in positions.items()}
    # mu runs 0.4 -> -0.4: its start side is mu > 0; the middle point (mu = 0) is second half
    axis = MotorAxis("mu", 0.4, -0.4, 5)
    first = mu_index < 2
    acc = feed(Projections(P, split_axis=axis), stack, positions)
    snap = acc.snapshot()
    flat = stack.reshape(n, -1).astype(np.float64)
    np.testing.assert_allclose(snap["sum"], flat.sum(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(snap["max"], flat.max(axis=0))
    np.testing.assert_allclose(snap["sum_first_half"], flat[first].sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(snap["sum_second_half"], flat[~first].sum(axis=0), rtol=1e-12)
    assert tuple(acc.counts) == (16, 24)
    restored = Projections.from_state(
        feed(Projections(P, split_axis=axis), stack, positions, stop=11).state()
    )
    assert restored.split_axis == axis
    feed(restored, stack, positions, start=11)
    for key, image in restored.snapshot().items():
        np.testing.assert_allclose(image, snap[key], rtol=1e-12, err_msg=key)
    with pytest.raises(ValueError, match="different rules"):
        acc.merge(Projections(P, n_frames_expected=n))
    with pytest.raises(ValueError, match="no positions"):
        acc.update(stack[:1], {"chi": positions["chi"][:1]})
    with pytest.raises(ValueError, match="n_frames_expected"):
        Projections(P)
    assert Projections(P, 10).snapshot() is None


# --------------------------------------------------------------------------- SumsAlongMotor


def omega_scan(n_values: int = 6, repeats: int = 7, seed: int = 0):
    """Frames at repeated omega values, shuffled, with encoder jitter below the rounding."""
    rng = np.random.default_rng(seed)
    nominal = np.repeat(np.linspace(-30.0, 20.0, n_values), repeats)
    order = rng.permutation(len(nominal))
    nominal = nominal[order]
    omega = nominal + rng.uniform(-2e-8, 2e-8, size=nominal.shape)
    stack = make_stack(len(nominal), kind="wide", seed=seed)
    # a different beam intensity per value, which the normalisation removes
    gain = 1.0 + (nominal + 30.0) / 10.0
    return stack.astype(np.float64) * gain[:, None, None], omega, nominal


def test_sums_along_motor_raw_and_normalised():
    stack, omega, nominal = omega_scan()
    values = np.unique(nominal)
    flat = stack.reshape(len(stack), -1)
    raw = np.stack([flat[nominal == v].sum(axis=0) for v in values])
    acc = feed(SumsAlongMotor(P, "omega", normalise=False), stack, {"omega": omega})
    got_values, images = acc.snapshot()
    np.testing.assert_array_equal(got_values, values)
    np.testing.assert_allclose(images, raw, rtol=1e-12)
    assert images.shape == (len(values), P)

    norm = feed(SumsAlongMotor(P, "omega"), stack, {"omega": omega})
    _, images = norm.snapshot()
    integrated = raw.sum(axis=1)
    np.testing.assert_allclose(images.sum(axis=1), integrated.mean(), rtol=1e-12)
    np.testing.assert_allclose(images, raw * (integrated.mean() / integrated)[:, None], rtol=1e-12)
    assert integrated.std() > 0.1 * integrated.mean()  # the normalisation did something


def test_sums_along_motor_leaves_empty_projections_unscaled():
    stack = np.ones((4, *SHAPE))
    stack[1] = 0.0
    acc = feed(SumsAlongMotor(P, "omega"), stack, {"omega": np.array([0.0, 1.0, 2.0, -0.0])})
    values, images = acc.snapshot()
    np.testing.assert_array_equal(values, [0.0, 1.0, 2.0])  # -0.0 and 0.0 are one value
    np.testing.assert_array_equal(images[1], 0.0)
    mean = (2 * P + 0 + P) / 3
    np.testing.assert_allclose(images[[0, 2]].sum(axis=1), mean, rtol=1e-12)


def test_sums_along_motor_merge_and_round_trip():
    stack, omega, _ = omega_scan()
    n = len(stack)
    positions = {"omega": omega}
    whole = feed(SumsAlongMotor(P, "omega"), stack, positions)
    values, images = whole.snapshot()
    first = feed(SumsAlongMotor(P, "omega"), stack, positions, stop=10)
    second = SumsAlongMotor(P, "omega")
    feed(second, stack, positions, start=10)
    first.merge(second)
    merged_values, merged = first.snapshot()
    np.testing.assert_array_equal(merged_values, values)
    np.testing.assert_allclose(merged, images, rtol=1e-12)
    np.testing.assert_array_equal(np.sort(first.counts), np.sort(whole.counts))
    part = feed(SumsAlongMotor(P, "omega"), stack, positions, stop=17)
    restored = SumsAlongMotor.from_state(part.state())
    for a in (part, restored):
        feed(a, stack, positions, start=17)
    restored_values, restored_images = restored.snapshot()
    np.testing.assert_array_equal(restored_values, values)
    np.testing.assert_allclose(restored_images, images, rtol=1e-12)
    assert restored.counts.sum() == n
    with pytest.raises(ValueError, match="different motors"):
        whole.merge(SumsAlongMotor(P, "phi"))
    with pytest.raises(ValueError, match="no positions"):
        whole.update(stack[:1], {"phi": omega[:1]})
