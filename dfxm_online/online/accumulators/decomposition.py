"""Blind source separation of the scan's frames, updated during the scan: PCA and NMF.

As in darfix, the stack is a matrix X (frames x pixels) factorised as X ~ W H: the rows of
H (k, P) are component images and the columns of W (n_frames, k) are their per-frame weights
(for a rocking scan, the rocking curve of each component). Both accumulators keep the
frames only as long as a batch takes: their state is O(k P + n_frames k) (ChunkedNMF:
O(r P + n_frames r) with r = k + 5), not O(n_frames P).

`OnlinePCA` wraps scikit-learn's `IncrementalPCA.partial_fit`. Its weights are the scores of
IncrementalPCA's own implicit rank-k model of the past frames, carried from basis to basis
by the known change of basis (see the class docstring for what that means for accuracy).
It cannot merge (an incremental PCA keeps only its top-k subspace).

`ChunkedNMF` solves the NMF, at every update, on a compressed copy of all frames seen (an
incremental rank-r PCA of X, i.e. an `OnlinePCA` with a few more components than the NMF),
so that every frame's weights are refitted against the current components: a one-pass
scheme that fits each frame once cannot do that, and fails on a scan whose sources appear
one after another (see the class docstring). With frozen components (given, e.g. from a
previous scan) it keeps exact additive statistics instead, and merges exactly.

Optional spatial binning (block sums of `binning` x `binning` pixels) is applied before the
decomposition: the components are then binned images. The sources of a DFXM scan (grains,
domains, subgrains) are many pixels wide, binning 4 keeps them and makes a 2048 x 2048
detector 16x cheaper (and the binned counts less noisy); rows/columns that do not fill a
block at the bottom/right edge are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from ..preprocess import block_sums
from ..tiles import TILE_PIXELS  # pixel tiles of the component update

if TYPE_CHECKING:  # scikit-learn is imported where a PCA is made: 1.0-1.3 s of every
    # process's start (daemon, `process`, workflow) that runs no PCA, measured
    from sklearn.decomposition import IncrementalPCA


def bin_frames(frames: np.ndarray, binning: int) -> np.ndarray:
    """(B, H, W) -> (B, H // b, W // b) float64 block sums; incomplete edge blocks dropped.

    Sums (not means) keep binned pixels in counts, so Poisson statistics still apply; the
    block sums are the preprocessing's (:func:`..preprocess.block_sums`).
    """
    b = int(binning)
    if b == 1:
        return frames.astype(np.float64)
    height, width = frames.shape[1:]
    if b > height or b > width:
        raise ValueError(f"binning {b} is larger than the frame {height}x{width}")
    return block_sums(frames, b, b)


class _FrameMatrix:
    """Turns batches of frames into rows of the (optionally binned) data matrix X."""

    def __init__(
        self,
        n_pixels: int,
        n_components: int,
        binning: int = 1,
        frame_shape: tuple[int, int] | None = None,
    ) -> None:
        if n_components < 1:
            raise ValueError("n_components must be >= 1")
        if binning < 1:
            raise ValueError("binning must be >= 1")
        if frame_shape is not None and frame_shape[0] * frame_shape[1] != n_pixels:
            raise ValueError(f"frame_shape {frame_shape} does not have {n_pixels} pixels")
        self.n_pixels = int(n_pixels)
        self.n_components = int(n_components)
        self.binning = int(binning)
        self.frame_shape = (
            None if frame_shape is None else (int(frame_shape[0]), int(frame_shape[1]))
        )

    @property
    def shape(self) -> tuple[int, int] | None:
        """Image shape of one component (binned), None while the frame shape is unknown."""
        if self.frame_shape is None:
            return None
        b = self.binning
        return (self.frame_shape[0] // b, self.frame_shape[1] // b)

    @property
    def n_features(self) -> int:
        """Columns of X: pixels after binning."""
        if self.binning == 1:
            return self.n_pixels
        if self.shape is None:
            raise ValueError("the binned size is unknown before the first (B, H, W) batch")
        return self.shape[0] * self.shape[1]

    def _rows(self, frames: np.ndarray) -> np.ndarray:
        """(B, n_features) float64 rows of X for a batch (B, H, W) or (B, P)."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            shape = (frames.shape[1], frames.shape[2])
            if shape[0] * shape[1] != self.n_pixels:
                raise ValueError(
                    f"frames have {shape[0] * shape[1]} pixels, expected {self.n_pixels}"
                )
            if self.frame_shape is None:
                self.frame_shape = shape
            elif shape != self.frame_shape:
                raise ValueError(f"frames are {shape}, expected {self.frame_shape}")
        elif frames.ndim == 2:
            if frames.shape[1] != self.n_pixels:
                raise ValueError(f"frames have {frames.shape[1]} pixels, expected {self.n_pixels}")
            if self.binning == 1:
                return frames.astype(np.float64)
            if self.frame_shape is None:
                raise ValueError("binning needs (B, H, W) frames or a frame_shape")
            frames = frames.reshape(frames.shape[0], *self.frame_shape)
        else:
            raise ValueError(f"frames must be (B, H, W) or (B, P), got shape {frames.shape}")
        return bin_frames(frames, self.binning).reshape(frames.shape[0], -1)

    def _config_state(self) -> dict[str, np.ndarray]:
        shape = (-1, -1) if self.frame_shape is None else self.frame_shape
        return {
            "n_pixels": np.array(self.n_pixels),
            "n_components": np.array(self.n_components),
            "binning": np.array(self.binning),
            "frame_shape": np.array(shape, dtype=np.int64),
        }

    @staticmethod
    def _config_kwargs(state: Mapping[str, np.ndarray]) -> dict:
        shape = tuple(int(s) for s in np.asarray(state["frame_shape"]))
        return {
            "n_pixels": int(state["n_pixels"]),
            "n_components": int(state["n_components"]),
            "binning": int(state["binning"]),
            "frame_shape": None if shape[0] < 0 else shape,
        }


def _read_only(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.flags.writeable = False
    return view


def gram_partial_fit(
    ipca: IncrementalPCA, x: np.ndarray, work: np.ndarray | None = None
) -> np.ndarray:
    """`ipca.partial_fit(x)` computed through the Gram matrix of the stacked rows.

    The update is IncrementalPCA's own (Ross et al. 2008): the SVD of
    M = [S V_old; x - batch mean; mean correction], (k + B + 1, P), truncated to k, and the
    same attributes are written (with the same sign convention, svd_flip on V), so the two
    solvers are interchangeable, also across a checkpoint. Only the SVD is done differently:
    LAPACK's SVD of a short wide matrix is Householder work, memory-bound (~4.5 s for
    22 x 4.2M on one core; `partial_fit` ~7.6 s per batch of 16 frames of 2048 x 2048 with
    k = 5), while M M^T (22 x 22), its eigendecomposition and V = S^-1 U^T M are BLAS-3
    products (~0.5 s for the whole update). Squaring M loses accuracy only for
    singular values below ~1e-8 S_1 (the discarded tail); a step whose k-th singular value is
    below 1e-6 S_1 (nearly rank-deficient data) falls back to `partial_fit`.

    `work` is a scratch buffer for M, returned for the next call: a fresh (k + B + 1, P)
    array per batch (700 MB at 2048 x 2048) costs more in page faults than the products.
    """
    x = np.asarray(x, dtype=np.float64)
    k = ipca.n_components
    n_b, p = x.shape
    fitted = hasattr(ipca, "components_")
    if not k <= p:
        raise ValueError(f"n_components={k} invalid for {p} features")
    if not fitted and n_b < k:
        raise ValueError(f"n_components={k} needs at least {k} frames in the first batch")
    batch_mean = x.mean(axis=0)
    batch_m2 = np.einsum("ij,ij->j", x, x) - n_b * batch_mean**2  # sum of squared deviations
    rows = n_b if not fitted else k + n_b + 1
    if work is None or work.shape[0] < rows or work.shape[1] != p:
        work = np.empty((rows, p))
    stacked = work[:rows]
    if not fitted:
        n, mean, m2 = n_b, batch_mean, batch_m2
        np.subtract(x, batch_mean, out=stacked)
    else:
        n_old = int(ipca.n_samples_seen_)
        n = n_old + n_b
        delta = batch_mean - ipca.mean_
        mean = ipca.mean_ + delta * (n_b / n)
        m2 = ipca.var_ * n_old + batch_m2 + delta**2 * (n_old * n_b / n)
        np.multiply(ipca.singular_values_[:, None], ipca.components_, out=stacked[:k])
        np.subtract(x, batch_mean, out=stacked[k : k + n_b])
        np.multiply(np.sqrt(n_old * n_b / n), ipca.mean_ - batch_mean, out=stacked[-1])
    eigval, eigvec = np.linalg.eigh(stacked @ stacked.T)
    eigval, eigvec = np.maximum(eigval[::-1], 0.0), eigvec[:, ::-1]
    sing = np.sqrt(eigval)
    if sing[k - 1] <= 1e-6 * sing[0]:
        ipca.partial_fit(x)
        return work
    comp = eigvec[:, :k].T @ stacked
    comp /= sing[:k, None]
    # svd_flip(u_based_decision=False): the largest |entry| of each component is positive
    # (largest |entry| from the max and the min, without a (k, P) temporary of |comp|)
    idx = np.arange(k)
    hi, lo = comp.argmax(axis=1), comp.argmin(axis=1)
    big = np.where(np.abs(comp[idx, hi]) >= np.abs(comp[idx, lo]), hi, lo)
    comp *= np.sign(comp[idx, big])[:, None]
    var = np.maximum(m2, 0.0) / n
    explained = eigval / (n - 1)
    ipca.components_ = comp
    ipca.n_components_ = k
    ipca.n_features_in_ = p
    ipca.n_samples_seen_ = n
    ipca.mean_ = mean
    ipca.var_ = var
    ipca.singular_values_ = sing[:k]
    ipca.explained_variance_ = explained[:k]
    ipca.explained_variance_ratio_ = eigval[:k] / np.sum(var * n)
    # sklearn: the mean of the discarded spectrum of this step's SVD (min(M.shape) values)
    rank = min(stacked.shape)
    ipca.noise_variance_ = float(explained[k:rank].mean()) if k not in (n_b, p) else 0.0
    return work


class OnlinePCA(_FrameMatrix):
    """Incremental PCA of the frames (scikit-learn `IncrementalPCA.partial_fit`).

    Snapshot: "components" (k, P') principal component images (P' = pixels after binning),
    "mean" (P',), "explained_variance_ratio" (k,) (the spectrum used to choose the number of
    components: its denominator is the exact total variance of all frames seen),
    "explained_variance" and "singular_values" (k,), "weights" (n_frames, k) the per-frame
    scores, "n_frames" the frames in the model, "pending" the frames buffered but not yet fitted,
    "shape" the component image shape (or None for flat frames).

    Solver: "gram" (default) runs IncrementalPCA's update with a Gram-matrix SVD
    (`gram_partial_fit`: ~10x faster at 2048 x 2048, 5x after binning 4; same attributes
    to ~1e-13, tested);
    "sklearn" calls `IncrementalPCA.partial_fit` itself. The model is an `IncrementalPCA`
    object (`self.ipca`) either way.

    Buffering: `partial_fit` needs at least n_components frames on its first call, and every
    call costs an SVD of a (k + batch + 1, P') matrix and truncates back to rank k, so tiny
    batches are slower and (one truncation per call) less accurate. Frames are buffered until
    `min_batch` (default n_components) are pending; `finish()` fits what is left.

    Weights: the exact scores (x_i - mean) @ components.T need every frame again. We keep
    instead each frame's scores T (n, k) and carry them to every new basis: with old/new means
    m, m' and components V, V',

        T <- T @ (V V'^T) + (m - m') @ V'^T        (new frames: (x - m') @ V'^T),

    which is exact for the part of each frame inside the subspace of the moment. This is
    not an ad-hoc approximation: IncrementalPCA's state (mean, V, singular values S) is the PCA
    of an implicit data set in which every past frame was replaced by its rank-k
    reconstruction at each call, and T are exactly that data set's scores (so T.sum(0) == 0
    and T^T T == diag(S^2) to rounding, tested). They differ from the exact projections of the
    real frames only by the part of each frame that IncrementalPCA itself truncated away and
    that a later basis rotated into view; for a scan that is a few sources + noise this is at
    the noise level (tests: RMS error < 3 % of the exact scores' RMS for every component above
    the noise, measured <= 1.5 % for any batch size; the scores of pure-noise components, whose
    directions wander from batch to batch, are off by 10-20 %). `transform(frames)` gives the
    exact scores when the frames are read a second time.
    """

    def __init__(
        self,
        n_pixels: int,
        n_components: int,
        *,
        binning: int = 1,
        frame_shape: tuple[int, int] | None = None,
        min_batch: int | None = None,
        solver: str = "gram",
    ) -> None:
        super().__init__(n_pixels, n_components, binning, frame_shape)
        if solver not in ("gram", "sklearn"):
            raise ValueError("solver must be 'gram' or 'sklearn'")
        self.solver = solver
        self.min_batch = (
            self.n_components if min_batch is None else max(int(min_batch), self.n_components)
        )
        from sklearn.decomposition import IncrementalPCA

        self.ipca = IncrementalPCA(n_components=self.n_components)
        self._pending: list[np.ndarray] = []
        self._weights = np.zeros((0, self.n_components))
        self._work: np.ndarray | None = None  # scratch for gram_partial_fit, not state

    @property
    def fitted(self) -> bool:
        return hasattr(self.ipca, "components_")

    @property
    def n_frames(self) -> int:
        """Frames included in the model (buffered frames not counted)."""
        return self._weights.shape[0]

    @property
    def n_pending(self) -> int:
        return sum(p.shape[0] for p in self._pending)

    def update(self, frames: np.ndarray, positions: Mapping[str, np.ndarray] | None = None) -> None:
        """Add a batch of frames (B, H, W) or (B, P) in acquisition order.

        `positions` is not used: the weights' rows are in acquisition order, to be paired with
        the recorded positions by the caller.
        """
        self._add_rows(self._rows(frames))

    def _add_rows(self, rows: np.ndarray) -> None:
        """Buffer rows of X (float64, owned by us: they are kept without a copy) and fit."""
        if rows.shape[0] == 0:
            return
        self._pending.append(rows)
        if self.n_pending >= self.min_batch:
            self._flush()

    def finish(self) -> None:
        """Fit the buffered frames (end of scan); raises if the scan had fewer than k frames."""
        if not self._pending:
            return
        if not self.fitted and self.n_pending < self.n_components:
            raise ValueError(
                f"{self.n_pending} frames cannot give {self.n_components} principal components"
            )
        self._flush()

    def _flush(self) -> None:
        x = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending = []
        ipca = self.ipca
        old = (ipca.components_, ipca.mean_) if self.fitted else None
        if self.solver == "gram":
            self._work = gram_partial_fit(ipca, x, self._work)
        else:
            ipca.partial_fit(x)  # copies x (copy=True): we still need the frames below
        comp, mean = ipca.components_, ipca.mean_
        new = x @ comp.T - mean @ comp.T
        if old is not None:
            change = old[0] @ comp.T  # (k, k) change of basis
            shift = (old[1] - mean) @ comp.T
            self._weights = np.concatenate([self._weights @ change + shift, new])
        else:
            self._weights = new

    def transform(self, frames: np.ndarray) -> np.ndarray:
        """Exact scores (B, k) of frames (a second pass) on the current components."""
        if not self.fitted:
            raise ValueError("no components yet")
        rows = self._rows(frames)
        return (rows - self.ipca.mean_) @ self.ipca.components_.T

    def merge(self, other: OnlinePCA) -> None:
        """Not possible exactly: raises ValueError.

        Each IncrementalPCA keeps only its top-k subspace; the variance of each half outside
        it is gone, so no combination equals the PCA of all frames. Process the frames in one
        accumulator (or merge exact statistics such as ChunkedNMF with frozen components).
        """
        raise ValueError(
            "OnlinePCA cannot be merged exactly: an incremental PCA keeps only its rank-k "
            "subspace, the rest of each part's variance is lost"
        )

    #: IncrementalPCA's fitted attributes, enough to continue partial_fit bit for bit
    _FITTED = (
        "components_",
        "singular_values_",
        "mean_",
        "var_",
        "explained_variance_",
        "explained_variance_ratio_",
        "noise_variance_",
        "n_samples_seen_",
    )

    def state(self) -> dict[str, np.ndarray]:
        out = self._config_state()
        out["min_batch"] = np.array(self.min_batch)
        out["solver"] = np.array(self.solver)
        out["weights"] = self._weights.copy()
        out["pending"] = np.concatenate(self._pending) if self._pending else np.zeros((0, 0))
        if self.fitted:
            for name in self._FITTED:
                out["ipca_" + name] = np.array(getattr(self.ipca, name), copy=True)
        return out

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> OnlinePCA:
        obj = cls(
            **cls._config_kwargs(state),
            min_batch=int(state["min_batch"]),
            solver=str(state["solver"]),
        )
        obj._weights = np.array(state["weights"], dtype=np.float64)
        pending = np.asarray(state["pending"], dtype=np.float64)
        obj._pending = [pending.copy()] if pending.shape[0] else []
        if "ipca_components_" in state:
            ipca = obj.ipca
            for name in cls._FITTED:
                setattr(ipca, name, np.array(state["ipca_" + name], copy=True))
            ipca.n_samples_seen_ = int(ipca.n_samples_seen_)
            ipca.noise_variance_ = float(ipca.noise_variance_)
            ipca.n_components_ = ipca.components_.shape[0]
            ipca.n_features_in_ = ipca.components_.shape[1]
        return obj

    def snapshot(self) -> dict | None:
        """Components, spectrum and weights (see class docstring); None before the first fit."""
        if not self.fitted:
            return None
        ipca = self.ipca
        return {
            # partial_fit assigns new arrays, never writes into these: views are safe
            "components": _read_only(ipca.components_),
            "mean": _read_only(ipca.mean_),
            "explained_variance_ratio": ipca.explained_variance_ratio_.copy(),
            "explained_variance": ipca.explained_variance_.copy(),
            "singular_values": ipca.singular_values_.copy(),
            "weights": self._weights.copy(),
            "n_frames": self.n_frames,
            "pending": self.n_pending,
            "shape": self.shape,
        }


def nnls_rows(g: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """argmin_{w >= 0} ||x - w H||^2 for each row of g = X H^T (B, k), gram = H H^T (k, k).

    ||x - w H||^2 = w G w^T - 2 w g^T + const = ||L^T w^T - L^{-1} g^T||^2 + const with
    G = L L^T, so each row is a k-variable NNLS (scipy's exact active-set solver) that never
    touches the P pixels again. A ridge of 1e-12 trace(G) keeps a dead component (an
    all-zero image) from making G singular.
    """
    # imported here, as scikit-learn is for the PCA: scipy.optimize is 0.3 s of a start
    from scipy.linalg import cho_factor, solve_triangular
    from scipy.optimize import nnls

    k = gram.shape[0]
    ridge = 1e-12 * max(float(np.trace(gram)), np.finfo(float).tiny)
    lower = np.tril(cho_factor(gram + ridge * np.eye(k), lower=True)[0])
    z = solve_triangular(lower, g.T, lower=True)  # (k, B)
    upper = lower.T
    w = np.empty(g.shape)
    for i in range(g.shape[0]):
        w[i] = nnls(upper, z[:, i])[0]
    return w


def hals_weights(w: np.ndarray, g: np.ndarray, gram: np.ndarray, sweeps: int) -> None:
    """HALS sweeps on all weight rows at once, in place (g = X H^T, gram = H H^T).

    Column j: W_j <- max(0, W_j + (g_j - W gram_j) / gram_jj), the exact minimiser in W_j
    with the other columns fixed (Cichocki & Phan 2009).
    """
    for _ in range(sweeps):
        for j in range(w.shape[1]):
            if gram[j, j] > 0:
                w[:, j] = np.maximum(w[:, j] + (g[:, j] - w @ gram[:, j]) / gram[j, j], 0.0)


def hals_components(h: np.ndarray, a: np.ndarray, b: np.ndarray, sweeps: int) -> None:
    """HALS sweeps on the component images from A = W^T X and B = W^T W, in place.

    Row j: H_j <- max(0, H_j + (A_j - B_j H) / B_jj). Pixel columns are independent, so the
    update is tiled over pixels and each tile runs all its sweeps while in cache. Components
    that no frame uses (B_jj = 0) are left as they are.
    """
    diag = np.diag(b)
    active = [j for j in range(h.shape[0]) if diag[j] > 0]
    for start in range(0, h.shape[1], TILE_PIXELS):
        stop = min(start + TILE_PIXELS, h.shape[1])
        ht, at = h[:, start:stop].copy(), a[:, start:stop]
        for _ in range(sweeps):
            for j in active:
                ht[j] += (at[j] - b[j] @ ht) / diag[j]
                np.maximum(ht[j], 0.0, out=ht[j])
        h[:, start:stop] = ht


def nndsvda(left: np.ndarray, right: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """NNDSVDa initial (W, H) of X = left @ right (n, q) @ (q, P), without forming X.

    Same construction as scikit-learn's init="nndsvda" (Boutsidis & Gallopoulos 2008: the
    dominant sign-part of each singular pair; zeros filled with the mean of X); the SVD of X
    comes from a QR of the thin left factor and an SVD of a (q, P) matrix.
    """
    q, r = np.linalg.qr(left)
    u, s, vt = np.linalg.svd(r @ right, full_matrices=False)
    u = q @ u
    n, p = left.shape[0], right.shape[1]
    w, h = np.zeros((n, k)), np.zeros((k, p))
    for j in range(min(k, s.size)):
        x, y = (np.abs(u[:, 0]), np.abs(vt[0])) if j == 0 else (u[:, j], vt[j])
        parts = []
        for sx, sy in ((x, y), (-x, -y)):
            xp, yp = np.maximum(sx, 0.0), np.maximum(sy, 0.0)
            parts.append((np.linalg.norm(xp) * np.linalg.norm(yp), xp, yp))
        sigma, xp, yp = max(parts, key=lambda t: t[0])
        if sigma > 0:
            lam = np.sqrt(s[j] * sigma)
            w[:, j] = lam * xp / np.linalg.norm(xp)
            h[j] = lam * yp / np.linalg.norm(yp)
    eps = 1e-6
    w[w < eps] = 0.0
    h[h < eps] = 0.0
    avg = float(left.sum(axis=0) @ right.sum(axis=1)) / (n * p)
    w[w == 0] = avg
    h[h == 0] = avg
    return w, h


class ChunkedNMF(_FrameMatrix):
    """Non-negative matrix factorisation X ~ W H of the frames, updated batch by batch.

    Snapshot: "components" (k, P') non-negative component images (P' = pixels after
    binning), "weights" (n_frames, k) non-negative per-frame weights (rows in acquisition
    order), "relative_error" ||X - W H||_F / ||X||_F over those frames, "n_frames",
    "pending" (frames buffered, not yet in the model), "shape"; None before any components.

    Learning mode (default). The obvious online scheme (Mairal et al. 2010: fit each new
    frame's weights against the current H once, re-solve H from the additive statistics
    A = W^T X, B = W^T W) fails on a scan: frames arrive ordered by motor position, so each
    source appears in its own part of the scan, and the weights of the early frames, frozen
    against an early H, keep pulling H back (on the test stacks: relative error 0.2-0.45
    against 0.09 for batch NMF, sources missed; a window of re-fitted recent frames only helps
    when it spans half the scan). What every frame must be refitted against is the current
    H, and that needs the frames again. So we keep a compressed copy of all frames: an
    incremental rank-r PCA of X (an `OnlinePCA`, r = `sketch_rank`, default k + 5),
    X ~ X^ = 1 m + T V, O(r P + n r) memory. The NMF is solved on X^ by HALS (block
    coordinate descent) with everything through the thin factors: X^ H^T = 1 (m H^T) +
    T (V H^T) (n, k) for the weights of all frames, W^T X^ = (W^T 1) m + (W^T T) V (k, P)
    for the components; `iterations` alternations of `sweeps` sweeps per update (warm
    started, so the live result tracks the scan), NNDSVDa initialisation from the sketch,
    and `finish()` iterates to convergence (`final_iterations`, `tol`). The sketch takes
    frames in groups of at least r (see OnlinePCA's buffering), so the model lags the scan by
    at most r - 1 frames ("pending"). Cost per update: the sketch's (r + B + 1, P') Gram
    SVD, plus O(r k P') per alternation; the weights of all n frames cost only O(n r k).

    Accuracy: this is the NMF of X^ instead of X; it differs only through the part of the
    frames the sketch truncated (noise beyond rank r + 1 for a scan of a few sources). Tests:
    relative error within 1.1x + 0.01 of scikit-learn's batch NMF on the whole stack (in
    practice equal to 3 digits), sources recovered with correlation > 0.95, for any batch
    size. "relative_error" uses the exact ||X||^2 and X^ for the cross term <X, W H>.
    `transform(frames)` gives exact NNLS weights of frames read a second time.

    Frozen mode (`components` given, `update_components=False`), e.g. components learned on
    a previous scan: each frame's weights are its exact NNLS fit against the fixed components
    (`nnls_rows`), and the additive statistics A, B, ||X||^2 are kept. Every weight then
    depends only on its frame, so two accumulators with the same components over other
    frames merge exactly (merge == whole, tested), "relative_error" is exact, and
    `solve_components()` re-solves the images from the merged statistics. Learning mode
    cannot merge (two sketches are two incremental PCAs): ValueError.

    Negative input: NMF needs X >= 0. An `offset` image (native resolution, e.g. a dark) is
    subtracted first, then values below 0 (noise around a zero background) are clipped to 0.
    Clipping keeps the positive half of that noise (a bias of sigma / sqrt(2 pi) per pixel
    where the signal is 0, which NMF absorbs as signal); it is applied after binning, where
    the relative noise is smaller. A pedestal left in the frames is not an error but costs a
    component (a flat image with a flat weight).
    """

    def __init__(
        self,
        n_pixels: int,
        n_components: int,
        *,
        binning: int = 1,
        frame_shape: tuple[int, int] | None = None,
        offset: np.ndarray | None = None,
        sketch_rank: int | None = None,
        iterations: int = 2,
        sweeps: int = 5,
        final_iterations: int = 300,
        tol: float = 1e-7,
        components: np.ndarray | None = None,
        update_components: bool = True,
    ) -> None:
        super().__init__(n_pixels, n_components, binning, frame_shape)
        k = self.n_components
        self.sketch_rank = k + 5 if sketch_rank is None else int(sketch_rank)
        if self.sketch_rank < k:
            raise ValueError("sketch_rank must be >= n_components")
        self.iterations = int(iterations)
        self.sweeps = int(sweeps)
        self.final_iterations = int(final_iterations)
        self.tol = float(tol)
        self.update_components = bool(update_components)
        self._offset_native = None if offset is None else np.asarray(offset, np.float64).reshape(-1)
        if self._offset_native is not None and self._offset_native.size != self.n_pixels:
            raise ValueError(f"offset must have {self.n_pixels} pixels")
        self._offset: np.ndarray | None = None  # binned, made once the frame shape is known
        self.H: np.ndarray | None = None
        if components is not None:
            h = np.array(components, dtype=np.float64)
            if h.ndim != 2 or h.shape[0] != k or (h < 0).any():
                raise ValueError(f"components must be {k} non-negative images (k, P')")
            self.H = h
        elif not self.update_components:
            raise ValueError("update_components=False needs the components to apply")
        self._weights = np.zeros((0, k))
        self._sq_rows = np.zeros(0)  # ||x_i||^2 of every (clipped, binned) frame seen
        self._sketch: OnlinePCA | None = None  # learning mode
        self._scratch: np.ndarray | None = None  # W^T X^ buffer, not state
        self._A: np.ndarray | None = None  # frozen mode: W^T X
        self._B = np.zeros((k, k))  # frozen mode: W^T W
        if not self.update_components:
            self._A = np.zeros_like(self.H)

    @property
    def n_frames(self) -> int:
        """Frames with weights (in the model)."""
        return self._weights.shape[0]

    @property
    def n_pending(self) -> int:
        return 0 if self._sketch is None else self._sketch.n_pending

    def _nonneg_rows(self, frames: np.ndarray) -> np.ndarray:
        rows = self._rows(frames)
        if self._offset_native is not None:
            if self._offset is None:
                off = self._offset_native
                if self.binning > 1:
                    off = bin_frames(off.reshape(1, *self.frame_shape), self.binning)
                self._offset = off.reshape(-1)
            rows -= self._offset
        np.maximum(rows, 0.0, out=rows)
        return rows

    def update(self, frames: np.ndarray, positions: Mapping[str, np.ndarray] | None = None) -> None:
        """Add a batch of frames (B, H, W) or (B, P) in acquisition order (positions unused)."""
        rows = self._nonneg_rows(frames)
        if rows.shape[0] == 0:
            return
        if self.H is not None and self.H.shape[1] != rows.shape[1]:
            raise ValueError(f"components have {self.H.shape[1]} pixels, frames {rows.shape[1]}")
        self._sq_rows = np.concatenate([self._sq_rows, np.einsum("ij,ij->i", rows, rows)])
        if not self.update_components:
            h = self.H
            w = nnls_rows(rows @ h.T, h @ h.T)
            self._A += w.T @ rows
            self._B += w.T @ w
            self._weights = np.concatenate([self._weights, w])
            return
        if self._sketch is None:
            self._sketch = OnlinePCA(rows.shape[1], self.sketch_rank)
        before = self._sketch.n_frames
        self._sketch._add_rows(rows)  # rows are ours: no second copy
        if self._sketch.n_frames > before:
            self._catch_up()
            for _ in range(self.iterations):
                self._alternate()

    def finish(self) -> None:
        """End of scan: fit the buffered frames and iterate the NMF to convergence."""
        if self._sketch is None:
            return
        if not self._sketch.fitted and self._sketch.n_pending < self.sketch_rank:
            raise ValueError(
                f"{self._sketch.n_pending} frames are fewer than sketch_rank={self.sketch_rank}"
            )
        self._sketch.finish()
        self._catch_up()
        previous = None
        for _ in range(self.final_iterations):
            loss = self._alternate()
            if previous is not None and abs(previous - loss) <= self.tol * self._sq_rows.sum():
                break
            previous = loss

    def _factors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean m (P',), scores T (n, r) and components V (r, P') of the sketch X^ = 1 m + T V."""
        sk = self._sketch
        return sk.ipca.mean_, sk._weights, sk.ipca.components_

    def _projections(self, h: np.ndarray) -> np.ndarray:
        """X^ H^T (n, k) through the thin factors."""
        m, t, v = self._factors()
        return t @ (v @ h.T) + m @ h.T

    def _catch_up(self) -> None:
        """Weights for the frames the sketch has just taken in (NNDSVDa at the first fit)."""
        m, t, v = self._factors()
        n, k = t.shape[0], self.n_components
        if self.H is None:
            left = np.column_stack([np.ones(n), t])
            self._weights, self.H = nndsvda(left, np.vstack([m, v]), k)
            return
        new = n - self.n_frames
        if new > 0:
            h = self.H
            g = t[-new:] @ (v @ h.T) + m @ h.T
            self._weights = np.concatenate([self._weights, nnls_rows(g, h @ h.T)])

    def _alternate(self) -> float:
        """One HALS alternation (weights of all frames, then components) on the sketch.

        Returns the sketch loss ||X^ - W H||^2 - ||X^||^2 after the weights step.
        """
        m, t, v = self._factors()
        h, w = self.H, self._weights
        g, gram = self._projections(h), h @ h.T
        hals_weights(w, g, gram, self.sweeps)
        loss = float(np.sum((w.T @ w) * gram) - 2.0 * np.sum(w * g))
        if self._scratch is None or self._scratch.shape != h.shape:
            self._scratch = np.empty_like(h)  # reused: a fresh (k, P') array costs page faults
        a = np.matmul(w.T @ t, v, out=self._scratch)
        a += w.sum(axis=0)[:, None] * m
        hals_components(h, a, w.T @ w, self.sweeps)
        return loss

    def solve_components(self, sweeps: int = 50) -> None:
        """Frozen mode: re-solve the images from the statistics A, B (e.g. after merges).

        The weights already stored were fitted against the previous images: call it once all
        frames are in (this accumulator no longer merges with ones using the old images).
        """
        if self.update_components:
            raise ValueError("in learning mode the components are solved at every update")
        hals_components(self.H, self._A, self._B, int(sweeps))

    def transform(self, frames: np.ndarray) -> np.ndarray:
        """Exact NNLS weights (B, k) of frames (a second pass) against the current components."""
        if self.H is None:
            raise ValueError("no components yet")
        rows = self._nonneg_rows(frames)
        return nnls_rows(rows @ self.H.T, self.H @ self.H.T)

    def merge(self, other: ChunkedNMF) -> None:
        """Frozen mode only: add another accumulator's frames (they follow ours in order)."""
        if self.update_components or other.update_components:
            raise ValueError(
                "ChunkedNMF merges exactly only with frozen components (update_components="
                "False): a learning accumulator solves its NMF on an incremental-PCA sketch "
                "of its frames, and two sketches cannot be combined exactly"
            )
        if (other.n_components, other.binning, other.n_pixels) != (
            self.n_components,
            self.binning,
            self.n_pixels,
        ) or not np.array_equal(self.H, other.H):
            raise ValueError(
                "cannot merge: different configurations, or weights fitted against different "
                "components"
            )
        self._A += other._A
        self._B += other._B
        self._sq_rows = np.concatenate([self._sq_rows, other._sq_rows])
        self._weights = np.concatenate([self._weights, other._weights])

    def state(self) -> dict[str, np.ndarray]:
        out = self._config_state()
        out.update(
            sketch_rank=np.array(self.sketch_rank),
            iterations=np.array(self.iterations),
            sweeps=np.array(self.sweeps),
            final_iterations=np.array(self.final_iterations),
            tol=np.array(self.tol),
            update_components=np.array(self.update_components),
            weights=self._weights.copy(),
            sq_rows=self._sq_rows.copy(),
        )
        if self._offset_native is not None:
            out["offset"] = self._offset_native.copy()
        if self.H is not None:
            out["H"] = self.H.copy()
        if self._A is not None:
            out["A"] = self._A.copy()
            out["B"] = self._B.copy()
        if self._sketch is not None:
            out.update({"sketch." + key: val for key, val in self._sketch.state().items()})
        return out

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> ChunkedNMF:
        obj = cls(
            **cls._config_kwargs(state),
            offset=state.get("offset"),
            sketch_rank=int(state["sketch_rank"]),
            iterations=int(state["iterations"]),
            sweeps=int(state["sweeps"]),
            final_iterations=int(state["final_iterations"]),
            tol=float(state["tol"]),
            components=state.get("H"),
            update_components=bool(state["update_components"]),
        )
        obj._weights = np.array(state["weights"], dtype=np.float64)
        obj._sq_rows = np.array(state["sq_rows"], dtype=np.float64)
        if "A" in state:
            obj._A = np.array(state["A"], dtype=np.float64)
            obj._B = np.array(state["B"], dtype=np.float64)
        sketch = {key[7:]: val for key, val in state.items() if key.startswith("sketch.")}
        if sketch:
            obj._sketch = OnlinePCA.from_state(sketch)
        return obj

    def snapshot(self) -> dict | None:
        """Components, weights and the relative error (see class docstring); None before any."""
        if self.H is None or self.n_frames == 0:
            return None
        h, w = self.H, self._weights
        sq = float(self._sq_rows[: self.n_frames].sum())
        if self.update_components:
            cross = float(np.sum(w * self._projections(h)))
        else:
            cross = float(np.einsum("kp,kp->", self._A, h))
        loss = sq - 2.0 * cross + float(np.sum((w.T @ w) * (h @ h.T)))
        return {
            "components": h.copy(),  # H is updated in place: a copy, not a view
            "weights": w.copy(),
            "relative_error": float(np.sqrt(max(loss, 0.0) / sq)) if sq > 0 else 0.0,
            "n_frames": self.n_frames,
            "pending": self.n_pending,
            "shape": self.shape,
        }
