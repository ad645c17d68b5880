"""Shift (drift) correction: an injected linear drift found to 0.1 pixel over the scan."""

import numpy as np
import pytest

from dfxm_online.analysis import drift
from dfxm_online.online.accumulators.projections import Projections


def _texture(shape=(96, 96), seed=0):
    """A smooth textured grain away from the edges (a DFXM frame's signal)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    grain = np.exp(-(((y - 48) / 22.0) ** 2 + ((x - 46) / 18.0) ** 2) ** 2)
    from scipy.ndimage import gaussian_filter

    texture = gaussian_filter(rng.random(shape), 2.0)
    return grain * (0.3 + texture / texture.max())


def _drifting_scan(n=81, drift_per_frame=(0.045, -0.03), rocking_sigma=None):
    """Frames of one grain drifting by `drift_per_frame` (dy, dx) px per frame, with the
    intensity of a rocking curve (Gaussian in the frame index) when `rocking_sigma`."""
    from scipy.ndimage import shift

    base = _texture()
    frames = np.empty((n, *base.shape))
    weights = np.ones(n) if rocking_sigma is None else np.exp(-0.5 * ((np.arange(n) - n / 2) / rocking_sigma) ** 2)
    for i in range(n):
        frames[i] = 1000.0 * weights[i] * shift(base, np.array(drift_per_frame) * i, order=3)
    return frames


def _halves(frames):
    acc = Projections(frames.shape[1] * frames.shape[2], n_frames_expected=len(frames))
    acc.update(frames)
    snap = acc.snapshot()
    return snap["sum_first_half"].reshape(frames.shape[1:]), snap["sum_second_half"].reshape(frames.shape[1:])


def _batches(frames, size=16):
    for start in range(0, len(frames), size):
        yield np.arange(start, min(start + size, len(frames))), frames[start : start + size]


@pytest.mark.parametrize("rocking_sigma", [None, 14.0])
def test_injected_linear_drift_found_to_a_tenth_of_a_pixel(rocking_sigma):
    n, d = 81, np.array([0.045, -0.03])
    frames = _drifting_scan(n, tuple(d), rocking_sigma)
    first, second = _halves(frames)
    est = drift.estimate_drift(first, second, n, _batches(frames))
    assert est.refined and est.similarity > 0.99
    # darfix's convention: the correction is minus the drift
    total_error = (np.array(est.shift_per_frame) + d) * (n - 1)
    assert np.all(np.abs(total_error) < 0.1), (est, total_error)


def test_coarse_estimate_is_biased_by_a_rocking_curve_and_the_search_fixes_it():
    n, d = 81, np.array([0.045, -0.03])
    frames = _drifting_scan(n, tuple(d), rocking_sigma=10.0)
    first, second = _halves(frames)
    coarse = drift.coarse_shift(first, second, n)
    # intensity-weighted halves are closer than n/2 frames: the coarse length is short
    assert np.hypot(*coarse) < 0.8 * np.hypot(*d)
    est = drift.estimate_drift(first, second, n, _batches(frames, 7))
    assert np.all(np.abs((np.array(est.shift_per_frame) + d) * (n - 1)) < 0.1)


def test_scale_scores_equal_darfix_shift_and_sum_in_real_space():
    """The Fourier-space score equals var/mean of the circularly shifted frames' sum."""
    frames = _drifting_scan(9, (0.4, -0.25))
    direction = np.array([0.6, -0.8])
    step, n_steps = 0.3, 4
    scores = drift.scale_scores(_batches(frames, 4), direction, step, n_steps)
    for j in range(n_steps):
        total = np.zeros(frames.shape[1:])
        for i, frame in enumerate(frames):
            total += drift.apply_drift(frame[None], tuple(direction * step * j), np.array([i]), "fourier")[0]
        # the candidates' terms are summed in complex64: ~1e-8 relative
        assert scores[j] == pytest.approx(total.var() / total.mean(), rel=1e-6)


def test_binned_search_still_finds_the_drift():
    n, d = 81, np.array([0.045, -0.03])
    frames = _drifting_scan(n, tuple(d), 14.0)
    first, second = _halves(frames)
    est = drift.estimate_drift(first, second, n, _batches(frames), binning=2)
    assert np.all(np.abs((np.array(est.shift_per_frame) + d) * (n - 1)) < 0.2)


def test_apply_drift_undoes_the_drift():
    n, d = 41, np.array([0.1, 0.05])
    frames = _drifting_scan(n, tuple(d))
    corrected = drift.apply_drift(frames, tuple(-d), method="linear")
    inner = (slice(None), slice(10, -10), slice(10, -10))
    # the last frame, moved back by 4 px and 2 px, matches the first (bilinear smoothing aside)
    assert np.abs(corrected[-1][inner[1:]] - frames[0][inner[1:]]).max() < 0.05 * frames[0].max()
    fourier = drift.apply_drift(frames, tuple(-d), method="fourier")
    assert np.abs(fourier[-1][inner[1:]] - frames[0][inner[1:]]).max() < 0.02 * frames[0].max()


def test_no_drift_gives_zero_and_no_refinement():
    frames = _drifting_scan(20, (0.0, 0.0))
    first, second = _halves(frames)
    est = drift.estimate_drift(first, second, 20, _batches(frames))
    assert est.shift_per_frame == (0.0, 0.0) and not est.refined


def test_halves_of_different_structures_have_a_low_similarity():
    """A mesh whose two halves light up different grains: the shift means nothing."""
    from scipy.ndimage import gaussian_filter

    a, b = (gaussian_filter(np.random.default_rng(s).random((64, 64)), 3.0) for s in (1, 2))
    est = drift.estimate_drift(a, b, 50)
    assert est.similarity < 0.5


def test_a_subset_of_the_frames_finds_the_same_drift():
    n, d = 81, np.array([0.045, -0.03])
    frames = _drifting_scan(n, tuple(d), 14.0)
    first, second = _halves(frames)
    est = drift.estimate_drift(first, second, n, _batches(frames), max_frames=20)
    assert np.all(np.abs((np.array(est.shift_per_frame) + d) * (n - 1)) < 0.1)
