"""OnlinePCA and ChunkedNMF against scikit-learn's batch PCA / NMF on the whole stack.

The stack really is a sum of 3 non-negative sources (overlapping 2-D Gaussian grains) with
Gaussian rocking curves centred at 30 %, 50 % and 70 % of the scan, plus Poisson noise (peak
~300 counts), frames in acquisition order: each source appears in its own part of the scan,
which is what makes one-pass decompositions hard.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from scipy.linalg import subspace_angles
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import NMF, PCA, IncrementalPCA

from dfxm_online.online.accumulators.decomposition import (
    ChunkedNMF,
    OnlinePCA,
    bin_frames,
    gram_partial_fit,
    nnls_rows,
)

SHAPE = (24, 20)
P = SHAPE[0] * SHAPE[1]


def make_stack(n_frames: int = 90, seed: int = 0, peak: float = 300.0):
    """(stack uint16 (n, 24, 20), sources (3, P), rocking curves (n, 3))."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]].astype(float)
    grains = [((7, 6), (3.0, 2.5)), ((12, 13), (2.5, 3.5)), ((17, 7), (3.5, 2.0))]
    sources = np.stack(
        [
            np.exp(-0.5 * (((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2))
            for (cy, cx), (sy, sx) in grains
        ]
    ).reshape(3, -1)
    t = np.arange(n_frames)[:, None]
    curves = np.exp(-0.5 * ((t - np.array([0.3, 0.5, 0.7]) * n_frames) / (0.09 * n_frames)) ** 2)
    stack = rng.poisson(peak * curves @ sources).astype(np.uint16).reshape(n_frames, *SHAPE)
    return stack, sources, curves


def feed(acc, stack, batch: int, start: int = 0, stop: int | None = None) -> None:
    stop = len(stack) if stop is None else stop
    for i in range(start, stop, batch):
        j = min(i + batch, stop)
        acc.update(stack[i:j], {"mu": np.arange(i, j, dtype=float)})


def matched_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Correlations of the rows of b with their best match among the rows of a (a permutation)."""
    c = np.corrcoef(np.vstack([a, b]))[: len(a), len(a) :]
    rows, cols = linear_sum_assignment(-c)
    return c[rows, cols]


def roundtrip(state: dict) -> dict:
    """Through an .npz file: the state must be plain numpy arrays."""
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    with np.load(buf) as data:
        return {key: data[key] for key in data.files}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        if x.dtype.kind in "fc":
            np.testing.assert_allclose(
                x, y, rtol=1e-12, atol=1e-12 * max(np.abs(y).max(initial=0), 1)
            )
        else:
            np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------- binning


@pytest.mark.parametrize("dtype", [np.uint16, np.float64])
def test_bin_frames_equals_block_sums(dtype):
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 65535, (3, 26, 23)).astype(dtype)  # edges do not fill a block
    out = bin_frames(frames, 4)
    ref = frames[:, :24, :20].astype(np.float64).reshape(3, 6, 4, 5, 4).sum(axis=(2, 4))
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, ref)


def test_binning_equals_prebinned_frames():
    stack, _, _ = make_stack(40)
    binned = OnlinePCA(P, 3, binning=2)
    flat = OnlinePCA(P // 4, 3)
    feed(binned, stack, 5)
    feed(flat, bin_frames(stack, 2).reshape(len(stack), -1), 5)
    a, b = binned.snapshot(), flat.snapshot()
    assert a["shape"] == (12, 10) and a["components"].shape == (3, 120)
    np.testing.assert_allclose(a["components"], b["components"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(a["weights"], b["weights"], rtol=1e-12, atol=1e-10)


# --------------------------------------------------------------------------- PCA


@pytest.mark.parametrize("batch", [1, 2, 7, 16])
def test_pca_matches_full_pca(batch):
    """Tolerances: IncrementalPCA truncates to rank k at every call; with 3 sources and k = 3
    what it drops is noise, measured 5e-5 on the variance ratios (tolerance 1e-3, i.e. 0.1 %
    of the variance), < 0.05 degree on the subspace (tolerance 1 degree), and the same
    reconstruction error as the full PCA to 5 digits (tolerance 0.1 % relative)."""
    stack, _, _ = make_stack(90)
    x = stack.reshape(len(stack), -1).astype(float)
    ref = PCA(3).fit(x)
    acc = OnlinePCA(P, 3)
    feed(acc, stack, batch)
    acc.finish()
    snap = acc.snapshot()
    assert snap["n_frames"] == 90 and snap["pending"] == 0 and snap["shape"] == SHAPE
    np.testing.assert_allclose(
        snap["explained_variance_ratio"], ref.explained_variance_ratio_, rtol=0, atol=1e-3
    )
    assert np.degrees(subspace_angles(snap["components"].T, ref.components_.T)).max() < 1.0
    np.testing.assert_allclose(snap["mean"], ref.mean_, rtol=1e-12)

    def residual(comp, mean):
        xc = x - mean
        return np.linalg.norm(xc - xc @ comp.T @ comp) / np.linalg.norm(x - x.mean(0))

    full, ours = residual(ref.components_, ref.mean_), residual(snap["components"], snap["mean"])
    assert full > 0.05  # there is noise to lose
    assert ours <= full * (1 + 1e-3)


def test_pca_spectrum_shows_three_sources():
    """With more components than sources, the spectrum has its elbow at 3."""
    stack, _, _ = make_stack(90)
    x = stack.reshape(len(stack), -1).astype(float)
    acc = OnlinePCA(P, 6)
    feed(acc, stack, 4)
    acc.finish()
    evr = acc.snapshot()["explained_variance_ratio"]
    np.testing.assert_allclose(evr[:3], PCA(3).fit(x).explained_variance_ratio_, atol=1e-3)
    assert evr[:3].sum() > 0.95 and evr[3] < 0.01 * evr[2]


@pytest.mark.parametrize("batch", [1, 5, 16])
def test_pca_weights(batch):
    """The tracked weights are exactly the scores of IncrementalPCA's own implicit model
    (zero mean, T^T T = diag(S^2), to rounding), and within 3 % RMS of the exact projections
    of the real frames (measured <= 1.5 %)."""
    stack, _, _ = make_stack(90)
    acc = OnlinePCA(P, 3)
    feed(acc, stack, batch)
    acc.finish()
    snap = acc.snapshot()
    w, s = snap["weights"], snap["singular_values"]
    assert w.shape == (90, 3)
    np.testing.assert_allclose(w.sum(axis=0), 0.0, atol=1e-9 * s[0])
    np.testing.assert_allclose(w.T @ w, np.diag(s**2), rtol=0, atol=1e-9 * s[0] ** 2)
    x = stack.reshape(90, -1).astype(float)
    exact = (x - snap["mean"]) @ snap["components"].T
    np.testing.assert_allclose(acc.transform(stack), exact, rtol=1e-10, atol=1e-9)
    rms_error = np.sqrt(((w - exact) ** 2).mean(axis=0) / (exact**2).mean(axis=0))
    assert rms_error.max() < 0.03


def test_gram_partial_fit_equals_partial_fit():
    """Same IncrementalPCA update through a Gram-matrix SVD: same attributes, same signs."""
    stack, _, _ = make_stack(60)
    x = stack.reshape(60, -1).astype(float)
    ref, fast = IncrementalPCA(4), IncrementalPCA(4)
    work = None
    for start, stop in [(0, 10), (10, 13), (13, 14), (14, 30), (30, 60)]:
        ref.partial_fit(x[start:stop])
        work = gram_partial_fit(fast, x[start:stop], work)
        for name in OnlinePCA._FITTED:
            a, b = np.asarray(getattr(fast, name)), np.asarray(getattr(ref, name))
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12 * np.abs(b).max(), err_msg=name)
    np.testing.assert_allclose(fast.transform(x), ref.transform(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_gram_solver_equals_sklearn_solver(batch):
    stack, _, _ = make_stack(60)
    fast, ref = OnlinePCA(P, 4, solver="gram"), OnlinePCA(P, 4, solver="sklearn")
    feed(fast, stack, batch)
    feed(ref, stack, batch)
    fast.finish()
    ref.finish()
    np.testing.assert_allclose(fast.snapshot()["weights"], ref.snapshot()["weights"], rtol=1e-9)
    # a checkpoint written with one solver continues with the other
    cut = batch * (30 // batch)  # on a batch boundary: the same batches as `ref`
    part = OnlinePCA(P, 4, solver="gram")
    feed(part, stack, batch, stop=cut)
    state = roundtrip(part.state())
    state["solver"] = np.array("sklearn")
    resumed = OnlinePCA.from_state(state)
    feed(resumed, stack, batch, start=cut)
    resumed.finish()
    np.testing.assert_allclose(resumed.snapshot()["weights"], ref.snapshot()["weights"], rtol=1e-9)


def test_pca_state_round_trip_equals_uninterrupted():
    stack, _, _ = make_stack(90)
    whole = OnlinePCA(P, 3, min_batch=8)
    feed(whole, stack, 3)
    whole.finish()
    first = OnlinePCA(P, 3, min_batch=8)
    feed(first, stack, 3, stop=39)
    assert first.n_pending > 0  # the buffer is part of the state
    state = roundtrip(first.state())
    resumed = OnlinePCA.from_state(state)
    assert resumed.n_pending == first.n_pending and resumed.n_frames == first.n_frames
    feed(resumed, stack, 3, start=39)
    resumed.finish()
    assert_same_state(resumed.state(), whole.state())
    a, b = resumed.snapshot(), whole.snapshot()
    for key in ("components", "weights", "explained_variance_ratio"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12, atol=1e-12)
    # the sklearn solver resumes as well
    ref = OnlinePCA(P, 3, solver="sklearn")
    feed(ref, stack, 7, stop=40)
    resumed = OnlinePCA.from_state(roundtrip(ref.state()))
    feed(resumed, stack, 7, start=40)
    feed(ref, stack, 7, start=40)
    np.testing.assert_allclose(resumed.snapshot()["weights"], ref.snapshot()["weights"], rtol=1e-12)


def test_pca_merge_raises():
    stack, _, _ = make_stack(40)
    a, b = OnlinePCA(P, 3), OnlinePCA(P, 3)
    feed(a, stack, 5, stop=20)
    feed(b, stack, 5, start=20)
    with pytest.raises(ValueError, match="cannot be merged exactly"):
        a.merge(b)


def test_pca_batches_smaller_than_components():
    stack, _, _ = make_stack(30)
    acc = OnlinePCA(P, 4)
    assert acc.snapshot() is None
    for i in range(3):  # 3 single frames: fewer than 4 components, buffered
        acc.update(stack[i : i + 1])
    assert acc.snapshot() is None and acc.n_pending == 3
    acc.update(stack[3:4])
    assert acc.snapshot()["n_frames"] == 4 and acc.n_pending == 0
    feed(acc, stack, 1, start=4, stop=30)
    acc.finish()
    snap = acc.snapshot()
    assert snap["n_frames"] == 30 and snap["weights"].shape == (30, 4)
    short = OnlinePCA(P, 4)
    feed(short, stack, 1, stop=3)
    with pytest.raises(ValueError, match="3 frames"):
        short.finish()


# --------------------------------------------------------------------------- NMF


def sklearn_nmf(x: np.ndarray, k: int = 3):
    """Reference: batch NMF on the whole matrix. init="nndsvda" (deterministic; the zeros of
    NNDSVD filled with the data mean, which the coordinate-descent solver needs to move them),
    run to convergence."""
    model = NMF(k, init="nndsvda", solver="cd", max_iter=2000, tol=1e-7, random_state=0)
    w = model.fit_transform(x)
    return w, model.components_


def rel_error(x, w, h):
    return np.linalg.norm(x - w @ h) / np.linalg.norm(x)


@pytest.mark.parametrize("batch", [1, 5, 16])
def test_nmf_matches_batch_nmf(batch):
    """Tolerances: relative error within 1.1x + 0.01 of scikit-learn's (measured equal to 3
    digits, 0.0901 vs 0.0900: the sketch only drops noise), also for the live snapshot
    before finish(); sources and rocking curves recovered up to permutation/scale with
    correlation > 0.95 (measured > 0.99)."""
    stack, sources, curves = make_stack(90)
    x = stack.reshape(90, -1).astype(float)
    w_ref, h_ref = sklearn_nmf(x)
    target = 1.1 * rel_error(x, w_ref, h_ref) + 0.01
    acc = ChunkedNMF(P, 3)
    feed(acc, stack, batch)
    live = acc.snapshot()
    n = live["n_frames"]
    assert n + live["pending"] == 90 and n >= 80
    assert rel_error(x[:n], live["weights"], live["components"]) <= target
    acc.finish()
    snap = acc.snapshot()
    w, h = snap["weights"], snap["components"]
    assert w.shape == (90, 3) and h.shape == (3, P) and snap["shape"] == SHAPE
    assert (w >= 0).all() and (h >= 0).all()
    err = rel_error(x, w, h)
    assert err <= target
    assert abs(snap["relative_error"] - err) < 1e-3  # from the sketch, without the frames
    assert matched_correlation(h, sources).min() > 0.95
    assert matched_correlation(w.T, curves.T).min() > 0.95


def test_nmf_clips_negative_input_and_subtracts_offset():
    stack, sources, _ = make_stack(60)
    dark = np.random.default_rng(5).uniform(90, 110, SHAPE)
    with_dark = stack + dark  # float frames on a pedestal
    acc = ChunkedNMF(P, 3, offset=dark)
    ref = ChunkedNMF(P, 3)
    feed(acc, with_dark, 6)
    feed(ref, stack, 6)
    acc.finish()
    ref.finish()
    np.testing.assert_allclose(
        acc.snapshot()["components"], ref.snapshot()["components"], rtol=1e-6, atol=1e-6
    )
    # background-subtracted frames with negative noise: clipped to 0, still a valid NMF
    noisy = stack - 2.0 + np.random.default_rng(6).normal(0, 1.0, stack.shape)
    assert (noisy < 0).mean() > 0.2
    acc = ChunkedNMF(P, 3)
    feed(acc, noisy, 6)
    acc.finish()
    snap = acc.snapshot()
    assert (snap["components"] >= 0).all() and (snap["weights"] >= 0).all()
    assert matched_correlation(snap["components"], sources).min() > 0.95


def test_nmf_frozen_merge_equals_whole():
    """With frozen components every weight is the exact NNLS fit of its frame, and the
    statistics A = W^T X, B = W^T W, ||X||^2 add up: merge(two halves) == whole."""
    stack, _, _ = make_stack(90)
    x = stack.reshape(90, -1).astype(float)
    _, h = sklearn_nmf(x[::3])  # components learned elsewhere (every third frame)
    whole = ChunkedNMF(P, 3, components=h, update_components=False)
    first = ChunkedNMF(P, 3, components=h, update_components=False)
    second = ChunkedNMF(P, 3, components=h, update_components=False)
    feed(whole, stack, 7)
    feed(first, stack, 4, stop=45)
    feed(second, stack, 6, start=45)
    first.merge(second)
    for key in ("A", "B", "sq_rows", "weights"):
        np.testing.assert_allclose(first.state()[key], whole.state()[key], rtol=1e-10, atol=1e-9)
    a, b = first.snapshot(), whole.snapshot()
    assert a["n_frames"] == 90
    assert a["relative_error"] == pytest.approx(b["relative_error"], rel=1e-10)
    w = b["weights"]
    np.testing.assert_allclose(w, nnls_rows(x @ h.T, h @ h.T), rtol=1e-10, atol=1e-9)
    assert b["relative_error"] == pytest.approx(rel_error(x, w, h), rel=1e-9)
    first.solve_components()
    whole.solve_components()
    np.testing.assert_allclose(first.H, whole.H, rtol=1e-9, atol=1e-12)
    # re-solving from the exact statistics lowers the loss of the stored weights
    assert whole.snapshot()["relative_error"] < b["relative_error"]
    with pytest.raises(ValueError, match="different components"):
        first.merge(ChunkedNMF(P, 3, components=h * 2, update_components=False))


def test_nmf_learning_merge_raises():
    stack, _, _ = make_stack(40)
    a, b = ChunkedNMF(P, 3), ChunkedNMF(P, 3)
    feed(a, stack, 5, stop=20)
    feed(b, stack, 5, start=20)
    with pytest.raises(ValueError, match="frozen components"):
        a.merge(b)
    with pytest.raises(ValueError, match="needs the components"):
        ChunkedNMF(P, 3, update_components=False)


def test_nmf_state_round_trip_equals_uninterrupted():
    stack, _, _ = make_stack(90)
    whole = ChunkedNMF(P, 3)
    feed(whole, stack, 3)
    whole.finish()
    part = ChunkedNMF(P, 3)
    feed(part, stack, 3, stop=42)
    assert part.n_pending > 0  # the sketch's buffer is part of the state
    resumed = ChunkedNMF.from_state(roundtrip(part.state()))
    assert resumed.n_pending == part.n_pending and resumed.n_frames == part.n_frames
    feed(resumed, stack, 3, start=42)
    resumed.finish()
    assert_same_state(resumed.state(), whole.state())
    a, b = resumed.snapshot(), whole.snapshot()
    np.testing.assert_allclose(a["components"], b["components"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a["weights"], b["weights"], rtol=1e-12, atol=1e-12)


def bin_h(h: np.ndarray) -> np.ndarray:
    return bin_frames(h.reshape(-1, *SHAPE), 2).reshape(len(h), -1)


def test_nmf_frozen_state_round_trip_with_binning():
    stack, _, _ = make_stack(60)
    h = bin_h(sklearn_nmf(stack.reshape(60, -1).astype(float))[1])
    whole = ChunkedNMF(P, 3, components=h, update_components=False, binning=2)
    feed(whole, stack, 5)
    part = ChunkedNMF(P, 3, components=h, update_components=False, binning=2)
    feed(part, stack, 5, stop=30)
    resumed = ChunkedNMF.from_state(roundtrip(part.state()))
    feed(resumed, stack, 5, start=30)
    assert_same_state(resumed.state(), whole.state())
    assert resumed.snapshot()["shape"] == (12, 10)


def test_nmf_batches_smaller_than_components():
    stack, sources, _ = make_stack(60)
    acc = ChunkedNMF(P, 3)  # sketch rank 3 + 5 = 8
    for i in range(7):
        acc.update(stack[i : i + 1])
        assert acc.snapshot() is None and acc.n_pending == i + 1
    acc.update(stack[7:8])
    assert acc.snapshot()["n_frames"] == 8
    feed(acc, stack, 2, start=8)
    acc.finish()
    snap = acc.snapshot()
    assert snap["n_frames"] == 60
    assert matched_correlation(snap["components"], sources).min() > 0.95
    short = ChunkedNMF(P, 3)
    feed(short, stack, 1, stop=5)
    with pytest.raises(ValueError, match="fewer than sketch_rank"):
        short.finish()


def test_nmf_learning_with_binning():
    stack, sources, _ = make_stack(60)
    acc = ChunkedNMF(P, 3, binning=2)
    feed(acc, stack, 16)
    acc.finish()
    snap = acc.snapshot()
    assert snap["shape"] == (12, 10) and snap["components"].shape == (3, 120)
    x = bin_frames(stack, 2).reshape(60, -1)
    _, h_ref = sklearn_nmf(x)
    w_ref = nnls_rows(x @ h_ref.T, h_ref @ h_ref.T)
    assert (
        rel_error(x, snap["weights"], snap["components"]) <= 1.1 * rel_error(x, w_ref, h_ref) + 0.01
    )
    assert matched_correlation(snap["components"], bin_h(sources)).min() > 0.95
