"""The pass over a batch of frames (numba, and its numpy floor) against direct numpy sums.

Dense sums are checked within the summation-order bound `sum_order_bound` relative to
|sums before| + sum_f |w x| (no plain rtol: sums that cancel would fail on a CPU whose
rounding differs); integer group sums, squares up to 16 bits and maxima exactly. The
other numba targets (AVX2, generic) run the same checks in test_kernel_paths.py."""

from __future__ import annotations

import numpy as np
import pytest

from dfxm_online.online import kernels
from dfxm_online.online.framesums import (
    MAX_PASS_FRAMES,
    PASS_PIXELS,
    SumsPlan,
    accumulate,
    frame_pass,
    sum_order_bound,
)

BACKENDS = ["numba", "numpy"]

FRAME_TYPES = [np.uint8, np.uint16, np.int16, np.uint32, np.int32, np.float32, np.float64]


def _batch(dtype, n_frames: int, n_pixels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.uniform(-50 if np.dtype(dtype).kind in "if" else 0, 250, size=(n_frames, n_pixels))
    return values.astype(dtype)


def assert_within_order_bound(got, before, weights, frames, n_frames, single=False):
    """|got - (before + w.T @ x)| <= bound * (|before| + |w|.T @ |x|), elementwise."""
    xf = np.asarray(frames, dtype=np.float64)
    exact = before + weights.T @ xf
    scale = np.abs(before) + np.abs(weights).T @ np.abs(xf)
    excess = np.abs(got - exact) - sum_order_bound(n_frames, single) * scale
    assert excess.max() <= 0, f"sums off by {np.abs(got - exact).max()} beyond the summation-order bound"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FRAME_TYPES)
def test_every_frame_type_against_numpy(dtype, backend):
    # pixel counts that are not multiples of the C tile or vector sizes, a sub-range
    n, p, r = 13, 5003, 15
    x = _batch(dtype, n, p)
    xf = x.astype(np.float64)
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(n, r))
    sums = rng.normal(size=(r, p))
    members = rng.random((3, n)) > 0.5
    gsums = rng.normal(size=(3, p))
    gsumsq = rng.normal(size=(3, p))
    maximum = np.full(p, -np.inf)
    expect_sums, expect_g, expect_q = sums.copy(), gsums.copy(), gsumsq.copy()
    lo, hi = 7, 4999
    frame_pass(x, lo, hi, weights, sums, members.astype(np.uint8),
               list(gsums), [gsumsq[0], None, gsumsq[2]], maximum, False, backend=backend)
    part = xf[:, lo:hi]
    assert_within_order_bound(sums[:, lo:hi], expect_sums[:, lo:hi], weights, part, n)
    np.testing.assert_array_equal(sums[:, :lo], expect_sums[:, :lo])  # outside the range: untouched
    np.testing.assert_array_equal(sums[:, hi:], expect_sums[:, hi:])
    # group sums: one add per member frame (0/1 weights), squares likewise
    assert_within_order_bound(gsums[:, lo:hi], expect_g[:, lo:hi], members.T.astype(float), part, n)
    assert_within_order_bound(gsumsq[[0, 2], lo:hi], expect_q[[0, 2], lo:hi], members[[0, 2]].T.astype(float),
                              part * part, n)
    np.testing.assert_array_equal(gsumsq[1], expect_q[1])
    expect_max = np.full(p, -np.inf)
    expect_max[lo:hi] = part.max(axis=0)
    np.testing.assert_array_equal(maximum, expect_max)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_precision_products_within_float32_rounding(backend):
    x = _batch(np.uint16, 32, 4100)
    weights = np.random.default_rng(2).normal(size=(32, 15))
    sums = np.zeros((15, 4100))
    frame_pass(x, 0, 4100, weights, sums, None, [], [], None, True, backend=backend)
    assert_within_order_bound(sums, np.zeros_like(sums), weights, x, 32, single=True)
    assert not np.array_equal(sums, weights.T @ x.astype(np.float64))  # it did round: the float32 path ran


@pytest.mark.parametrize("backend", BACKENDS)
def test_maximum_propagates_nan_like_numpy(backend):
    x = np.ones((3, 40))
    x[1, 5] = np.nan
    maximum = np.zeros(40)
    maximum[9] = np.nan
    frame_pass(x, 0, 40, None, None, None, [], [], maximum, False, backend=backend)
    expect = np.maximum(np.array([0.0] * 9 + [np.nan] + [0.0] * 30), x.max(axis=0))
    np.testing.assert_array_equal(maximum, expect)


def test_bad_arguments_raise_clear_errors():
    x = np.zeros((4, 100), dtype=np.uint16)
    sums = np.zeros((2, 100))
    with pytest.raises(ValueError, match="pixel range"):
        frame_pass(x, 0, 101, np.zeros((4, 2)), sums, None, [], [], None, False)
    with pytest.raises(ValueError, match="shapes"):
        frame_pass(x, 0, 100, np.zeros((3, 2)), sums, None, [], [], None, False)
    with pytest.raises(TypeError, match="format"):
        frame_pass(x.astype(np.int64), 0, 100, None, None, None, [], [], np.zeros(100), False)
    with pytest.raises(TypeError, match="format"):
        frame_pass(x, 0, 100, np.zeros((4, 2), np.float32), sums, None, [], [], None, False)
    with pytest.raises(ValueError, match="one entry per group"):
        frame_pass(x, 0, 100, None, None, np.ones((2, 4), np.uint8), [np.zeros(100)], [None], None, False)
    with pytest.raises(ValueError):  # not C-contiguous
        frame_pass(x[:, ::2], 0, 50, None, None, None, [], [], np.zeros(50), False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_accumulate_runs_several_plans_over_threads_and_tiles(backend):
    # more pixels than one tile per thread; two dense plans (two passes), groups of both
    # plans and a maximum; unsupported frame types are converted
    p = 2 * PASS_PIXELS + 1234
    x = _batch(np.int64, 6, p, seed=3)
    xf = x.astype(np.float64)
    rng = np.random.default_rng(4)
    w1, w2 = rng.normal(size=(6, 4)), rng.normal(size=(6, 2))
    s1, s2 = np.zeros((4, p)), np.zeros((2, p))
    g = np.zeros((2, p))
    q = np.zeros(p)
    m = np.full(p, -np.inf)
    done = []
    first = SumsPlan(weights=w1, sums=s1, after=lambda: done.append(1))
    first.add_group(np.array([1, 0, 1, 0, 0, 1], bool), g[0], q)
    second = SumsPlan(weights=w2, sums=s2, maximum=m, after=lambda: done.append(2))
    second.add_group(np.array([0, 1, 1, 1, 0, 0], bool), g[1])
    with kernels.use_backend(backend):
        accumulate(x.reshape(6, 1, p), [first, second])
    # the weighted sums cancel (normal weights): within the summation-order bound, not an rtol
    assert_within_order_bound(s1, np.zeros_like(s1), w1, xf, 6)
    assert_within_order_bound(s2, np.zeros_like(s2), w2, xf, 6)
    # whole numbers summed in float64 (int64 frames are converted): exact in any order
    np.testing.assert_array_equal(g[0], xf[[0, 2, 5]].sum(axis=0))
    np.testing.assert_array_equal(g[1], xf[[1, 2, 3]].sum(axis=0))
    np.testing.assert_array_equal(q, (xf[[0, 2, 5]] ** 2).sum(axis=0))
    np.testing.assert_array_equal(m, xf.max(axis=0))
    assert done == [1, 2]


def test_accumulate_rejects_plans_of_different_sizes():
    with pytest.raises(ValueError, match="different numbers of pixels"):
        accumulate(np.zeros((2, 10)), [SumsPlan(maximum=np.zeros(10)), SumsPlan(maximum=np.zeros(11))])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.uint32, np.int32])
def test_integer_group_sums_and_maximum_exact_at_the_type_limits(dtype, dense, backend):
    # integer frames are summed and compared in integers within a tile: the largest batch
    # a pass takes, of the type's extreme values, must not overflow, and a NaN already in
    # the maximum stays NaN as it does with float frames. With dense rows beside them the
    # numba pass converts the frames in the dense blocks, takes the maximum there and puts
    # the sum-only group in a spare dense row: the same values
    info = np.iinfo(dtype)
    n, p = MAX_PASS_FRAMES, 700
    x = np.full((n, p), info.max, dtype=dtype)
    x[:, 1::2] = info.min
    x[n // 2, 3] = info.max  # one odd frame out
    members = np.zeros((2, n), np.uint8)
    members[0] = 1
    members[1, ::3] = 1
    gsums = np.ones((2, p))
    gsumsq = np.ones(p)
    maximum = np.zeros(p)
    maximum[10] = np.nan
    weights, sums = (np.ones((n, 3)), np.zeros((3, p))) if dense else (None, None)
    frame_pass(x, 0, p, weights, sums, members, list(gsums), [None, gsumsq], maximum, False, backend=backend)
    xi = x.astype(np.int64)  # exact reference
    if dense:  # whole numbers below 2^53: exact
        np.testing.assert_array_equal(sums, np.broadcast_to(xi.sum(axis=0).astype(np.float64), (3, p)))
    expect = 1 + members.astype(np.int64) @ xi
    np.testing.assert_array_equal(gsums, expect.astype(np.float64))
    if info.bits <= 16:  # squares summed exactly in integers
        np.testing.assert_array_equal(gsumsq, (1 + members[1].astype(np.int64) @ (xi * xi)).astype(np.float64))
    else:  # in double, as float frames are
        xf = x.astype(np.float64)
        assert_within_order_bound(gsumsq, np.ones(p), members[1].astype(np.float64)[:, None], xf * xf, n)
    expect_max = np.maximum(0.0, xi.max(axis=0).astype(np.float64))
    expect_max[10] = np.nan
    np.testing.assert_array_equal(maximum, expect_max)


@pytest.mark.parametrize("backend", BACKENDS)
def test_frames_beyond_one_pass_are_refused_by_the_pass_and_split_by_accumulate(backend):
    n, p = MAX_PASS_FRAMES * 2 + 37, 300
    x = _batch(np.uint16, n, p, seed=5)
    xf = x.astype(np.float64)
    with pytest.raises(ValueError, match="frames per pass"):
        frame_pass(x, 0, p, None, None, None, [], [], np.zeros(p), False)
    rng = np.random.default_rng(6)
    w = rng.normal(size=(n, 3))
    members = rng.random(n) > 0.3
    s, g, m = np.zeros((3, p)), np.zeros(p), np.full(p, -np.inf)
    plan = SumsPlan(weights=w, sums=s, maximum=m)
    plan.add_group(members, g)
    with kernels.use_backend(backend):
        accumulate(x, [plan])
    # three passes, each within its bound: the whole within the bound of all the frames
    assert_within_order_bound(s, np.zeros_like(s), w, xf, n)
    np.testing.assert_array_equal(g, xf[members].sum(axis=0))
    np.testing.assert_array_equal(m, xf.max(axis=0))


def test_register_block_refuses_arrays_not_in_c_order():
    """The register block reads rows shape[1] elements apart: an array in another order is a
    typing error, never wrong sums."""
    from numba import njit
    from numba.core.errors import TypingError

    from dfxm_online.online.kernels import dense_block

    block = dense_block.VECTOR_BLOCK

    @njit
    def one_block(xs, w, rows, top, frames, pack):
        block(xs, w, rows, 0, 1, 0, 0, xs.shape[0], top, frames, pack)

    w, sums = np.ones((4, 1)), np.zeros((1, 64))
    rows = np.array([sums.ctypes.data], np.uint64)
    xs = np.arange(4 * 64, dtype=np.float64).reshape(4, 64)
    one_block(xs, w, rows, np.uint64(0), xs, False)
    expected = xs[:, : dense_block.VECTOR].sum(axis=0)
    assert np.array_equal(sums[0, : dense_block.VECTOR], expected) and not sums[0, dense_block.VECTOR:].any()
    # packing integer frames into xs on the way, with their maximum into a row as well
    frames = (xs[::-1] * 7).astype(np.uint16)
    top = np.full(64, 100.0)
    one_block(xs, w, rows, np.uint64(top.ctypes.data), frames, True)
    v = dense_block.VECTOR
    assert np.array_equal(xs[:, :v], frames[:, :v]) and np.array_equal(xs[:, v:], np.arange(4 * 64.0).reshape(4, 64)[:, v:])
    assert np.array_equal(sums[0, :v], expected + frames[:, :v].sum(axis=0))
    assert np.array_equal(top[:v], np.maximum(frames[:, :v].max(axis=0), 100)) and np.all(top[v:] == 100)
    with pytest.raises(TypingError):
        one_block(np.ones((4, 128))[:, ::2], w, rows, np.uint64(0), frames, False)


@pytest.mark.parametrize("sub_tile_kb", [32, 128, 256])
def test_every_sub_tile_size_gives_the_sums_of_numpy(sub_tile_kb, monkeypatch):
    # the numba pass sizes its sub-tile from the CPU's L2 (`sub_tile_bytes`): whatever the
    # size, sub-tiles and their partial last one cover every pixel once, with the groups,
    # squares and maximum exact and the dense sums within the summation-order bound
    from dfxm_online.online.kernels import frame_pass as numba_pass

    monkeypatch.setattr(numba_pass, "XS_BYTES", sub_tile_kb * 1024)
    n, p = 64, 9001
    assert numba_pass.sub_pixels(n) < p  # several sub-tiles, the last one partial
    x = _batch(np.uint16, n, p, seed=7)
    xf = x.astype(np.float64)
    rng = np.random.default_rng(8)
    weights = rng.normal(size=(n, 15))
    sums = np.zeros((15, p))
    members = np.zeros((3, n), np.uint8)
    members[0] = 1
    members[1, :8] = 1
    members[2, -8:] = 1
    gsums = np.zeros((3, p))
    gsumsq = np.zeros(p)
    maximum = np.zeros(p)
    frame_pass(x, 0, p, weights, sums, members, list(gsums), [None, None, gsumsq], maximum, False, backend="numba")
    assert_within_order_bound(sums, np.zeros_like(sums), weights, xf, n)
    np.testing.assert_array_equal(gsums, members.astype(np.float64) @ xf)
    np.testing.assert_array_equal(gsumsq, members[2].astype(np.float64) @ (xf * xf))
    np.testing.assert_array_equal(maximum, xf.max(axis=0))


def test_sub_tile_is_a_quarter_of_l2_within_its_limits():
    from dfxm_online.online.kernels.frame_pass import sub_tile_bytes

    kb = 1024
    assert sub_tile_bytes(None) == 256 * kb  # not known: the size measured on 2 MB
    assert sub_tile_bytes(2048 * kb) == 256 * kb  # Intel Xeon
    assert sub_tile_bytes(1024 * kb) == 256 * kb  # AMD Zen 4
    assert sub_tile_bytes(512 * kb) == 128 * kb  # AMD Zen 2 / 3
    assert sub_tile_bytes(64 * kb) == 32 * kb


def _cache_folder(root, index: int, level: int, kind: str, size: str) -> None:
    folder = root / f"index{index}"
    folder.mkdir()
    for name, value in (("level", level), ("type", kind), ("size", size)):
        (folder / name).write_text(f"{value}\n")


@pytest.mark.parametrize(("size", "expected"), [("512K", 512 * 1024), ("2M", 2 << 20), ("1048576", 1 << 20)])
def test_l2_size_read_from_the_kernel_cache_description(tmp_path, size, expected):
    # the layout of /sys/devices/system/cpu/cpu0/cache: instruction and data L1, then L2
    _cache_folder(tmp_path, 0, 1, "Data", "32K")
    _cache_folder(tmp_path, 1, 1, "Instruction", "32K")
    _cache_folder(tmp_path, 2, 2, "Unified", size)
    _cache_folder(tmp_path, 3, 3, "Unified", "32768K")
    assert kernels.l2_cache_bytes(str(tmp_path)) == expected


def test_l2_size_unknown_without_a_description(tmp_path):
    assert kernels.l2_cache_bytes(str(tmp_path / "absent")) is None
    _cache_folder(tmp_path, 0, 1, "Data", "48K")  # an L1 only
    assert kernels.l2_cache_bytes(str(tmp_path)) is None
