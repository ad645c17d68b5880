"""Blind source separation at scan end against scikit-learn on the full matrix."""

import numpy as np
import pytest
from sklearn.decomposition import NMF, PCA, FastICA

from dfxm_online.analysis import bss
from dfxm_online.online.accumulators.decomposition import ChunkedNMF, OnlinePCA

# scikit-learn's reference NMF is run to its iteration cap on purpose (its best error)
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _sources(k=3, p=48 * 48, seed=1):
    """k independent, sparse, non-negative source images (grains) and their rocking curves."""
    rng = np.random.default_rng(seed)
    s = rng.exponential(1.0, size=(k, p)) * (rng.random((k, p)) < 0.35)
    n = 60
    x = np.arange(n)
    centres = np.linspace(12, 48, k)
    a = np.stack([np.exp(-0.5 * ((x - c) / 7.0) ** 2) for c in centres], axis=1) + 0.02
    return a, s


def _data(noise=0.01, seed=1):
    a, s = _sources(seed=seed)
    rng = np.random.default_rng(seed + 10)
    x = a @ s
    x += noise * x.std() * rng.standard_normal(x.shape)
    return np.maximum(x, 0.0), a, s


def _match(found, truth):
    """Mean over true sources of the best |correlation| with a found one."""
    c = np.abs(np.corrcoef(np.vstack([truth, found]))[: len(truth), len(truth):])
    return c.max(axis=1).mean()


def test_pca_spectrum_and_components_equal_sklearn():
    x, _, _ = _data()
    ours = bss.pca(bss.DataMatrix.dense(x), 4)
    ref = PCA(n_components=min(x.shape)).fit(x)
    n_valid = min(x.shape[0] - 1, x.shape[1])
    np.testing.assert_allclose(ours.explained_variance_ratio, ref.explained_variance_ratio_[:n_valid], atol=1e-10)
    np.testing.assert_allclose(ours.explained_variance[:4], ref.explained_variance_[:4], rtol=1e-9)
    np.testing.assert_allclose(ours.components, ref.components_[:4], atol=1e-8)
    np.testing.assert_allclose(ours.scores, ref.transform(x)[:, :4], atol=1e-7 * np.abs(ref.transform(x)).max())


def test_nmf_matches_sklearn_on_the_full_matrix():
    x, _, s = _data()
    ours = bss.nmf(bss.DataMatrix.dense(x), 3)
    model = NMF(3, init="nndsvda", solver="cd", max_iter=2000, tol=1e-8)
    w = model.fit_transform(x)
    ref_err = np.linalg.norm(x - w @ model.components_) / np.linalg.norm(x)
    # tolerance: within 1 % (relative) + 0.002 of scikit-learn's error, same sources
    assert ours.relative_error <= 1.01 * ref_err + 0.002
    np.testing.assert_allclose(ours.relative_error, np.linalg.norm(x - ours.weights @ ours.components) / np.linalg.norm(x), rtol=1e-9)
    assert _match(ours.components, s) > 0.97
    assert (ours.components >= 0).all() and (ours.weights >= 0).all()


def test_nica_recovers_independent_sources_at_least_as_well_as_fastica():
    x, a, s = _data()
    ours = bss.nica(bss.DataMatrix.dense(x), 3)
    ref = FastICA(3, whiten="unit-variance", random_state=0, max_iter=2000).fit_transform(x.T).T
    ours_match, ref_match = _match(ours.components, s), _match(ref, s)
    # tolerance: NICA's source correlation within 0.01 of FastICA's and above 0.98
    assert ours_match >= ref_match - 0.01 and ours_match > 0.98, (ours_match, ref_match)
    # non-negative sources: the negative part is noise-sized
    assert -ours.components.min() < 0.1 * ours.components.max()
    # the mixing reproduces the data as well as the rank-3 PCA does (NICA is a rotation of it)
    pca_err = np.linalg.norm(x - PCA(3).fit(x).inverse_transform(PCA(3).fit_transform(x))) / np.linalg.norm(x)
    assert ours.relative_error < pca_err + 0.05


def test_nica_nmf_starts_from_nica_and_reaches_sklearn_nmf_error():
    x, _, s = _data()
    first, second = bss.nica_nmf(bss.DataMatrix.dense(x), 3)
    model = NMF(3, init="nndsvda", solver="cd", max_iter=2000, tol=1e-8)
    w = model.fit_transform(x)
    ref_err = np.linalg.norm(x - w @ model.components_) / np.linalg.norm(x)
    assert second.relative_error <= 1.01 * ref_err + 0.002
    assert _match(second.components, s) > 0.97


def test_low_rank_sketch_gives_the_same_products_as_the_dense_matrix():
    x, _, _ = _data()
    acc = OnlinePCA(x.shape[1], 8)
    acc.update(x)
    acc.finish()
    snap = acc.snapshot()
    sketch = bss.DataMatrix.from_sketch(snap["mean"], snap["weights"], snap["components"])
    dense = bss.DataMatrix.dense(snap["mean"] + snap["weights"] @ snap["components"])
    rng = np.random.default_rng(3)
    h, w = rng.random((3, x.shape[1])), rng.random((x.shape[0], 3))
    for name, args in (("gram", ()), ("times_t", (h,)), ("t_times", (w,)), ("row_sums", ())):
        np.testing.assert_allclose(getattr(sketch, name)(*args), getattr(dense, name)(*args), rtol=1e-9, atol=1e-9)
    assert sketch.squared_norm() == pytest.approx(dense.squared_norm(), rel=1e-9)


def test_nica_and_nmf_from_the_online_sketch_match_the_full_matrix():
    x, _, s = _data()
    acc = ChunkedNMF(x.shape[1], 3)
    for start in range(0, len(x), 10):
        acc.update(x[start : start + 10])
    acc.finish()
    sketch_state = {k[7:]: v for k, v in acc.state().items() if k.startswith("sketch.")}
    snap = OnlinePCA.from_state(sketch_state).snapshot()
    sketch = bss.DataMatrix.from_sketch(snap["mean"], snap["weights"], snap["components"])
    on_sketch = bss.nica(sketch, 3)
    on_full = bss.nica(bss.DataMatrix.dense(x), 3)
    assert _match(on_sketch.components, s) > 0.98
    assert _match(on_sketch.components, on_full.components) > 0.99
    err = np.linalg.norm(x - on_sketch.weights @ on_sketch.components) / np.linalg.norm(x)
    assert err < on_full.relative_error + 0.01


def test_pca_and_nica_on_the_sketch_equal_them_on_its_dense_matrix():
    """The low-rank eigen-problems (QR of the thin factor) give the dense ones' results."""
    x, _, _ = _data()
    acc = OnlinePCA(x.shape[1], 6)
    acc.update(x)
    acc.finish()
    snap = acc.snapshot()
    sketch = bss.DataMatrix.from_sketch(snap["mean"], snap["weights"], snap["components"])
    dense = bss.DataMatrix.dense(snap["mean"] + snap["weights"] @ snap["components"])
    a, b = bss.pca(sketch, 4), bss.pca(dense, 4)
    np.testing.assert_allclose(a.explained_variance[:4], b.explained_variance[:4], rtol=1e-9)
    np.testing.assert_allclose(a.explained_variance_ratio[:6], b.explained_variance_ratio[:6], atol=1e-12)
    np.testing.assert_allclose(a.components, b.components, atol=1e-8)
    np.testing.assert_allclose(np.abs(bss.whitening(sketch, 3)), np.abs(bss.whitening(dense, 3)), rtol=1e-6, atol=1e-12)
    # NICA from either: the same sources (the eigenvectors' signs, hence the start of the
    # rotation and the order of the sources, may differ)
    na, nb = bss.nica(sketch, 3), bss.nica(dense, 3)
    assert _match(na.components, nb.components) > 0.999
