"""Blind source separation at scan end: PCA spectrum, NMF, NICA, NICA-initialised NMF
(darfix §3.3.3 and appendix A). Pure, no I/O.

The stack is X (n frames x P pixels) ~ W H: rows of H are component images, columns of W
their weights per frame (a rocking curve per component). Every method here works through
four products of X (`DataMatrix`): X Xᵀ (n x n), X Hᵀ, Wᵀ X and the row sums, so the same
code runs on

- the exact matrix of the (binned) frames, read again at scan end (`DataMatrix.dense`);
- the online accumulators' low-rank sketch X^ = 1 m + T V (`DataMatrix.from_sketch`: the
  mean image, per-frame scores and components of `OnlinePCA`, or of `ChunkedNMF`'s rank
  k + 5 sketch), without forming X^. This is exact for X^, and X^ differs from X only by
  what the incremental PCA truncated (noise beyond its rank for a scan of a few sources;
  see `online/accumulators/decomposition.py`).

Methods:

- **PCA spectrum** (`pca`): eigen-decomposition of the frames' covariance (frames as
  samples, centred by the mean frame) through the n x n Gram matrix; explained variance
  ratio over the full spectrum: the curve from which the number of sources is read.
- **NMF** (`nmf`): HALS (the project's `hals_weights` / `hals_components`, Cichocki & Phan
  2009) from an NNDSVDa start, as scikit-learn's `NMF(init="nndsvda", solver="cd")`. darfix
  uses Lee & Seung's multiplicative updates from a random start, which converge much more
  slowly and to a start-dependent solution.
- **NICA** (`nica`): Oja & Plumbley (2004), as darfix: whiten, then rotate the whitened data
  Z by an orthonormal W, descending on the negative part of Y = W Z (E = (f Yᵀ - Y fᵀ)/P,
  f = min(0, Y); W <- W - lr E W; symmetric re-orthonormalisation). Where we differ: the
  whitening matrix is the covariance's, but it is applied to the data *without* removing
  each frame's mean (Plumbley's pre-whitening for non-negative sources); darfix whitens
  with scikit-learn's PCA, which centres, so that its Y cannot be non-negative at the true
  sources and the gradient does not vanish there. Sources are H = Y, mixing W = (W Q)⁺.
  darfix returns |H| and |W|; we return them signed (a negative weight is information)
  and take absolute values only to start NICA-NMF.
- **NICA-NMF** (`nica_nmf`): NMF started from NICA's |W|, |H| (Kitamura & Ono 2016; darfix).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..online.accumulators.decomposition import hals_components, hals_weights, nndsvda

log = logging.getLogger(__name__)


class DataMatrix:
    """X (n, P) given densely, or as left @ right with left (n, q), right (q, P)."""

    def __init__(self, dense: np.ndarray | None = None, left: np.ndarray | None = None,
                 right: np.ndarray | None = None) -> None:
        if (dense is None) == (left is None or right is None):
            raise ValueError("give either the dense matrix or both factors")
        self.x = None if dense is None else np.asarray(dense, dtype=np.float64)
        self.left = None if left is None else np.asarray(left, dtype=np.float64)
        self.right = None if right is None else np.asarray(right, dtype=np.float64)

    @classmethod
    def dense(cls, x: np.ndarray) -> DataMatrix:
        return cls(dense=np.asarray(x, dtype=np.float64).reshape(len(x), -1))

    @classmethod
    def from_sketch(cls, mean: np.ndarray, scores: np.ndarray, components: np.ndarray) -> DataMatrix:
        """X^ = 1 mean + scores @ components (an incremental PCA's model of the frames)."""
        scores = np.asarray(scores, dtype=np.float64)
        left = np.column_stack([np.ones(scores.shape[0]), scores])
        right = np.vstack([np.asarray(mean, np.float64)[None, :], np.asarray(components, np.float64)])
        return cls(left=left, right=right)

    @property
    def shape(self) -> tuple[int, int]:
        if self.x is not None:
            return self.x.shape
        return (self.left.shape[0], self.right.shape[1])

    def gram(self) -> np.ndarray:
        """X Xᵀ (n, n)."""
        if self.x is not None:
            return self.x @ self.x.T
        return self.left @ (self.right @ self.right.T) @ self.left.T

    def times_t(self, h: np.ndarray) -> np.ndarray:
        """X Hᵀ (n, k)."""
        if self.x is not None:
            return self.x @ h.T
        return self.left @ (self.right @ h.T)

    def t_times(self, w: np.ndarray) -> np.ndarray:
        """Wᵀ X (k, P)."""
        if self.x is not None:
            return w.T @ self.x
        return (w.T @ self.left) @ self.right

    def row_sums(self) -> np.ndarray:
        if self.x is not None:
            return self.x.sum(axis=1)
        return self.left @ self.right.sum(axis=1)

    def squared_norm(self) -> float:
        if self.x is not None:
            return float(np.einsum("ij,ij->", self.x, self.x))
        return float(np.trace(self.gram()))

    def nndsvda(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.x is not None:
            return nndsvda(np.eye(self.shape[0]), self.x, k)
        return nndsvda(self.left, self.right, k)


def _symmetric_eig(matrix: DataMatrix, centre_frames: bool, centre_pixels: bool) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (decreasing, clipped at 0) and eigenvectors (n, ·) of X' X'ᵀ, X' = X with
    the mean frame removed (`centre_frames`: PCA, frames as samples) or each frame's mean
    over the pixels removed (`centre_pixels`: NICA's whitening).

    For the sketch X = L R this is the q x q problem of (C L) (R Rᵀ) (C L)ᵀ through a QR of
    the thin n x q factor: an n x n `eigh` of 962 frames took 4.6 s on the loaded 2 cores."""
    n, p = matrix.shape
    if matrix.x is None:
        left, middle = matrix.left, matrix.right @ matrix.right.T
        if centre_frames:
            left = left - left.mean(axis=0)
        if centre_pixels:
            r1 = matrix.right.sum(axis=1)
            middle = middle - np.outer(r1, r1) / p
        q, b = np.linalg.qr(left)
        eigval, small = np.linalg.eigh(b @ middle @ b.T)
        eigvec = q @ small
    else:
        gram = matrix.gram()
        if centre_frames:
            row = gram.mean(axis=1)
            gram = gram - row[:, None] - row[None, :] + row.mean()  # C G C, C = I - 11ᵀ/n
        if centre_pixels:
            mu = matrix.row_sums() / p
            gram = gram - p * np.outer(mu, mu)
        eigval, eigvec = np.linalg.eigh(gram)
    return np.maximum(eigval[::-1], 0.0), eigvec[:, ::-1]


@dataclass(frozen=True)
class Factorisation:
    """X ~ weights @ components: `components` (k, P), `weights` (n, k), `relative_error`
    ||X - W H||_F / ||X||_F, `iterations` run."""

    components: np.ndarray
    weights: np.ndarray
    relative_error: float
    iterations: int


@dataclass(frozen=True)
class PCASpectrum:
    """`explained_variance_ratio` and `explained_variance` (all min(n-1, P) non-trivial
    eigenvalues, decreasing), the first k `components` (k, P) and their per-frame `scores`
    (n, k), `mean` (P,)."""

    explained_variance_ratio: np.ndarray
    explained_variance: np.ndarray
    components: np.ndarray
    scores: np.ndarray
    mean: np.ndarray


def relative_error(matrix: DataMatrix, w: np.ndarray, h: np.ndarray) -> float:
    sq = matrix.squared_norm()
    loss = sq - 2.0 * float(np.sum(w * matrix.times_t(h))) + float(np.sum((w.T @ w) * (h @ h.T)))
    return float(np.sqrt(max(loss, 0.0) / sq)) if sq > 0 else 0.0


def pca(matrix: DataMatrix, n_components: int) -> PCASpectrum:
    """PCA of the frames (samples) through the centred n x n Gram matrix."""
    n, p = matrix.shape
    ones = np.full((n, 1), 1.0 / n)
    mean = matrix.t_times(ones)[0]  # the mean frame (P,)
    centring = np.eye(n) - 1.0 / n
    eigval, eigvec = _symmetric_eig(matrix, centre_frames=True, centre_pixels=False)
    rank = max(min(n - 1, p, eigval.size), 1)
    eigval, eigvec = eigval[:rank], eigvec[:, :rank]
    k = min(int(n_components), rank)
    sing = np.sqrt(eigval[:k])
    keep = sing > 0
    u = eigvec[:, :k]
    # V = Σ⁻¹ Uᵀ Xc, Xc = C X (C symmetric)
    comps = np.zeros((k, p))
    comps[keep] = matrix.t_times(centring @ u[:, keep]) / sing[keep, None]
    # sign as scikit-learn's svd_flip(u_based_decision=False): largest |entry| positive
    idx = np.argmax(np.abs(comps), axis=1)
    signs = np.sign(comps[np.arange(k), idx])
    signs[signs == 0] = 1.0
    comps *= signs[:, None]
    scores = u * sing[None, :] * signs[None, :]
    total = eigval.sum()
    ratio = eigval / total if total > 0 else np.zeros_like(eigval)
    return PCASpectrum(ratio, eigval / max(n - 1, 1), comps, scores, mean)


def nmf(
    matrix: DataMatrix,
    n_components: int,
    *,
    weights: np.ndarray | None = None,
    components: np.ndarray | None = None,
    max_iter: int = 500,
    tol: float = 1e-7,
) -> Factorisation:
    """Non-negative X ~ W H by HALS, started from (weights, components) or NNDSVDa; stops
    when the loss changes by less than tol · ||X||² in one alternation."""
    k = int(n_components)
    if weights is None or components is None:
        w, h = matrix.nndsvda(k)
    else:
        w, h = np.array(weights, dtype=np.float64), np.array(components, dtype=np.float64)
        if (w < 0).any() or (h < 0).any():
            raise ValueError("NMF starts from non-negative factors")
    sq = matrix.squared_norm()
    previous = None
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 (reported)
        g, gram = matrix.times_t(h), h @ h.T
        hals_weights(w, g, gram, 1)
        loss = float(np.sum((w.T @ w) * gram) - 2.0 * np.sum(w * g))
        hals_components(h, matrix.t_times(w), w.T @ w, 1)
        if previous is not None and abs(previous - loss) <= tol * sq:
            break
        previous = loss
    return Factorisation(h, w, relative_error(matrix, w, h), iterations)


def whitening(matrix: DataMatrix, k: int) -> np.ndarray:
    """Q (k, n): Q C Qᵀ = I for the covariance C of the frames' values over the pixels
    (each frame centred by its mean over the pixels), C's top k eigenvectors."""
    n, p = matrix.shape
    eigval, eigvec = _symmetric_eig(matrix, centre_frames=False, centre_pixels=True)
    eigval, eigvec = eigval[:k] / max(p - 1, 1), eigvec[:, :k]
    if not (eigval > 0).all():
        raise ValueError(f"the frames have fewer than {k} independent directions")
    return eigvec.T / np.sqrt(eigval)[:, None]


def nica(
    matrix: DataMatrix,
    n_components: int,
    *,
    learning_rate: float = 0.03,
    max_iter: int = 500,
    tol: float = 1e-9,
) -> Factorisation:
    """Non-negative ICA (Oja & Plumbley 2004): sources H (k, P), signed mixing W (n, k)."""
    n, p = matrix.shape
    k = min(int(n_components), n)
    q = whitening(matrix, k)
    z = matrix.t_times(q.T)  # Q X (k, P): whitened, not mean-removed
    rot = np.eye(k)
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 (reported)
        y = rot @ z
        f = np.minimum(y, 0.0)
        fy = f @ y.T
        e = (fy - fy.T) / p
        rot = rot - learning_rate * e @ rot
        vals, vecs = np.linalg.eigh(rot @ rot.T)
        rot = (vecs / np.sqrt(vals)) @ vecs.T @ rot
        if np.abs(e).max() < tol:
            break
    h = rot @ z
    # sources with a negative majority come out flipped: NICA fixes the sign only when it
    # converged; make the bulk of each source positive
    signs = np.where(h.sum(axis=1) < 0, -1.0, 1.0)
    h *= signs[:, None]
    wq = (signs[:, None] * rot) @ q  # H = (W Q) X
    w = np.linalg.pinv(wq)  # (n, k)
    return Factorisation(h, w, relative_error(matrix, w, h), iterations)


def nica_nmf(matrix: DataMatrix, n_components: int, *, max_iter: int = 500,
             tol: float = 1e-7, nica_iter: int = 500) -> tuple[Factorisation, Factorisation]:
    """(NICA, NMF started from NICA's |W|, |H|), as darfix's `nica_nmf`."""
    first = nica(matrix, n_components, max_iter=nica_iter)
    second = nmf(matrix, first.components.shape[0], weights=np.abs(first.weights),
                 components=np.abs(first.components), max_iter=max_iter, tol=tol)
    return first, second
