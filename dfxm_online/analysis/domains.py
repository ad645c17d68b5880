"""Sub-domain clustering of the orientation (COM, COM) vectors, as darfix. Pure, no I/O.

Each pixel with an orientation (both COM maps finite, inside the optional mask) is a point
(com_a, com_b); the points are standardised (zero mean, unit variance per axis, so that a
narrow rocking angle and a wide rolling angle weigh alike) and clustered by scikit-learn's
`MiniBatchKMeans` with darfix's settings (20 initialisations, the best inertia kept, seeded:
the same maps give the same labels). Each sub-domain is coloured by the mosaicity key at its
mean orientation, with the same centre and scale as the mosaicity map
(:func:`dfxm_online.orientation.mosaicity_rgb`), so a domain has the colour its pixels have
on average in the mosaicity map. darfix samples its (colorstamps) key image the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..online.orientation import mosaicity_rgb

#: initialisations tried (darfix's `_KMEANS_RUNS`)
KMEANS_RUNS = 20


@dataclass(frozen=True)
class Domains:
    """`labels` (H, W) int32, -1 where there is no orientation; `rgb` (H, W, 3) float32,
    black there; `centres` (k, 2) mean (com_a, com_b) per domain in motor units;
    `colours` (k, 3); `sizes` (k,) pixels per domain."""

    labels: np.ndarray
    rgb: np.ndarray
    centres: np.ndarray
    colours: np.ndarray
    sizes: np.ndarray


def cluster_domains(
    com_a: np.ndarray,
    com_b: np.ndarray,
    n_domains: int,
    *,
    mask: np.ndarray | None = None,
    random_state: int = 0,
    n_init: int = KMEANS_RUNS,
    key_centre: tuple[float, float] | None = None,
    key_scale: tuple[float, float] | None = None,
) -> Domains:
    """Cluster the pixels' orientation vectors into `n_domains` sub-domains.

    `key_centre` / `key_scale` are the mosaicity map's (default: its robust defaults, so the
    colours match the `mosaicity` map written beside)."""
    a, b = np.asarray(com_a, dtype=np.float64), np.asarray(com_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError("com_a and com_b must be 2-D maps of one shape")
    valid = np.isfinite(a) & np.isfinite(b)
    if mask is not None:
        valid &= np.asarray(mask, dtype=bool)
    labels = np.full(a.shape, -1, dtype=np.int32)
    k = int(n_domains)
    if k < 1:
        raise ValueError("n_domains must be >= 1")
    n_points = int(valid.sum())
    if n_points < k:
        raise ValueError(f"{n_points} pixels with an orientation cannot make {k} domains")
    # scikit-learn is imported here, not with the module: 1.0-1.3 s of every process's start
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.preprocessing import StandardScaler

    features = StandardScaler().fit_transform(np.column_stack([a[valid], b[valid]]))
    kmeans = MiniBatchKMeans(n_clusters=k, n_init=n_init, random_state=random_state)
    labels[valid] = kmeans.fit_predict(features)
    sizes = np.bincount(labels[valid], minlength=k)
    centres = np.full((k, 2), np.nan)
    for j in range(k):
        members = labels == j
        if members.any():
            centres[j] = a[members].mean(), b[members].mean()
    _, _, extent = mosaicity_rgb(
        np.where(valid, a, np.nan), np.where(valid, b, np.nan), key_centre, key_scale, key_size=1
    )
    centre = (0.5 * (extent[0] + extent[1]), 0.5 * (extent[2] + extent[3]))
    scale = (0.5 * (extent[1] - extent[0]), 0.5 * (extent[3] - extent[2]))
    colours, _, _ = mosaicity_rgb(centres[None, :, 0], centres[None, :, 1], centre, scale, key_size=1)
    colours = np.where(np.isfinite(centres).all(axis=1)[:, None], colours[0], 1.0).astype(np.float32)
    rgb = np.zeros((*a.shape, 3), dtype=np.float32)
    rgb[valid] = colours[labels[valid]]
    return Domains(labels=labels, rgb=rgb, centres=centres, colours=colours, sizes=sizes)
