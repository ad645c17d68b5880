"""`scan_end_groups` on a simulated scan run through the real `ScanPipeline`: every group
is there, with the values of the analysis functions it calls, and missing inputs are
reported as skipped instead of failing."""

import json

import numpy as np
import pytest

from dfxm_online.acquisition.geometry import MotorAxis, ScanGeometry
from dfxm_online.acquisition.model import CrystalModel, scan_positions
from dfxm_online.analysis import bss, drift, masks, strain
from dfxm_online.analysis.scan_end import ScanEndOptions, scan_end_groups
from dfxm_online.config import AnalysisConfig
from dfxm_online.online.pipeline import ScanPipeline

SHAPE = (40, 36)


def _scan(accumulators=("projections", "pca", "nmf", "sums_along"), motors=None, seed=0):
    motors = motors or (MotorAxis("mu", -0.2, 0.2, 11), MotorAxis("chi", -1.0, 1.0, 9))
    model = CrystalModel.make(SHAPE, motors, seed=seed, n_grains=3, peak_counts=2000.0, dark_offset=0.0, read_noise=0.0)
    grid = scan_positions(motors)
    rng = np.random.default_rng(seed)
    frames = np.stack([model.frame(p, rng) for p in grid])
    positions = {m.name: grid[:, i] for i, m in enumerate(motors)}
    geometry = ScanGeometry(motors=motors, npoints=len(grid), detector="pco")
    config = AnalysisConfig(accumulators=list(accumulators), background="none", nmf_components=3,
                            pca_components=4, decomposition_binning=2, sums_along_motor=motors[-1].name)
    pipe = ScanPipeline(geometry, SHAPE, config)
    for start in range(0, len(grid), 16):
        pipe.update(frames[start : start + 16], {k: v[start : start + 16] for k, v in positions.items()})
    pipe.finish()
    return pipe, pipe.snapshot(), frames, positions, model


def _batches(frames):
    def start():
        for s in range(0, len(frames), 20):
            yield np.arange(s, min(s + 20, len(frames))), frames[s : s + 20].astype(np.float64)
    return start


POSITIONERS = {"mainx": -4800.0, "obx": 270.0, "obpitch": np.full(5, 20.4), "ffz": 1700.0}


def test_scan_end_groups_with_accumulators_only():
    pipe, maps, frames, positions, model = _scan()
    opts = ScanEndOptions(detector_preset="pco_edge_2x", domains=3, strain_reference={}, zsum_motor="chi")
    groups, process = scan_end_groups(maps, pipe.geometry.motors, positions=positions,
                                      positioners=POSITIONERS, accumulators=pipe.extras, options=opts)
    # drift: from the half sums of the projections, not refined without frames. No drift is
    # simulated, but the mesh's halves (low / high chi) light up different grains: their
    # "shift" is flagged as not reliable
    d = groups["/entry/drift"]
    assert not d["refined"] and not d["reliable"] and d["similarity"] < 0.8
    # mask: the Recon3D mask of the intensity map at 5 % of its robust maximum
    m = groups["/entry/maps/mask"]
    threshold = 0.05 * np.percentile(maps["intensity"][maps["intensity"] > 0], 99.5)
    np.testing.assert_array_equal(m["mask"], masks.recon3d_mask(maps["intensity"], threshold, 100))
    assert m["@axes"] == ["y", "x"] and m["y"].size == SHAPE[0] and m["@units"]["x"] == "um"
    assert process["pixel_size_um"] == pytest.approx(3.25 / (4800 / 270 - 1))
    # domains: labels inside the mask only, one of 3
    dom = groups["/entry/maps/domains"]
    assert dom["domains"].shape == (*SHAPE, 3)
    assert set(np.unique(dom["labels"][m["mask"].astype(bool)])) <= {0, 1, 2}
    assert (dom["labels"][~m["mask"].astype(bool)] == -1).all()
    # the distribution along chi from the sums_along accumulator (no frames)
    od = groups["/entry/orientation_distribution"]
    np.testing.assert_allclose(od["orientation_distribution"], frames.reshape(9, 11, -1).sum(axis=(1, 2)), rtol=1e-9)
    # the chi COM map got the optical gradient correction
    assert "/entry/gradient_corrected/com_chi" in groups
    # z-sum of chi from the accumulator
    np.testing.assert_allclose(groups["/entry/zsum"]["zsum"], frames.reshape(9, 11, *SHAPE).sum(axis=1), rtol=1e-9)
    # BSS from the online sketch; the online NMF as it is
    assert process["bss_source"] == "online nmf sketch"
    nmf_snap = pipe.extras["nmf"].snapshot()
    np.testing.assert_allclose(groups["/entry/bss/nmf"]["weights"], nmf_snap["weights"])
    np.testing.assert_allclose(groups["/entry/bss/pca"]["explained_variance_ratio"],
                               pipe.extras["pca"].snapshot()["explained_variance_ratio"])
    assert groups["/entry/bss/nica"]["components"].shape == (3, SHAPE[0] // 2, SHAPE[1] // 2)
    # NICA-NMF on the sketch fits as well as the online NMF (its own start)
    assert groups["/entry/bss/nica_nmf"]["relative_error"] <= 1.05 * nmf_snap["relative_error"] + 0.01
    # no strain motor, no frames for the weak beam / RSM (off by default): nothing else
    assert not any(k.startswith("/entry/strain") for k in groups)
    assert json.loads(process["scan_end_options"])["domains"] == 3
    for group in groups.values():
        signal = group.get("@signal")
        assert signal is None or next(iter(group)) == signal  # the signal comes first


def test_scan_end_groups_with_frames_refines_drift_and_uses_the_exact_matrix():
    pipe, maps, frames, positions, model = _scan()
    opts = ScanEndOptions(weak_beam_sigma=2.0, bss_components=3, domains=0)
    groups, process = scan_end_groups(maps, pipe.geometry.motors, positions=positions,
                                      accumulators=pipe.extras, frame_batches=_batches(frames), options=opts)
    d = groups["/entry/drift"]
    half = pipe.extras["projections"].snapshot()
    coarse = drift.coarse_shift(half["sum_first_half"].reshape(SHAPE), half["sum_second_half"].reshape(SHAPE), len(frames))
    np.testing.assert_allclose(d["coarse_shift_per_frame"], coarse)
    assert d["refined"] or not coarse.any()
    # orientation distribution from the frames: the frame totals on the (mu, chi) grid
    od = groups["/entry/orientation_distribution"]
    np.testing.assert_allclose(od["orientation_distribution"], frames.sum(axis=(1, 2)).reshape(9, 11).T, rtol=1e-12)
    assert od["@axes"] == ["mu", "chi"] and od["contours"].shape[1] == 3
    # weak beam maps for every motor
    assert {"/entry/weak_beam/com_mu", "/entry/weak_beam/com_chi"} <= set(groups)
    # BSS on the exact frame matrix, binned 4x4 (bss_binning default)
    assert process["bss_source"] == "frames"
    from dfxm_online.online.accumulators.decomposition import bin_frames

    x = bin_frames(frames, 4).reshape(len(frames), -1)
    ref = bss.nmf(bss.DataMatrix.dense(x), 3)
    np.testing.assert_allclose(groups["/entry/bss/nmf"]["relative_error"], ref.relative_error, rtol=1e-9)
    assert "sample axes: no detector_preset" in process["scan_end_skipped"]


def test_strain_scan_and_skips():
    motors = (MotorAxis("obpitch", 20.0, 20.8, 15),)
    pipe, maps, frames, positions, model = _scan(accumulators=("projections",), motors=motors)
    groups, process = scan_end_groups(maps, motors, positions=positions, accumulators=pipe.extras,
                                      options=ScanEndOptions(strain_reference={"obpitch": 20.4}, rsm_q=(1, 1, 1), rsm_a=4.05))
    g = groups["/entry/strain/strain_obpitch"]
    np.testing.assert_allclose(g["strain_obpitch"], strain.strain_two_theta(maps["com_obpitch"], 20.4), equal_nan=True)
    assert g["reference"] == 20.4 and process["strain_reference_obpitch"] == 20.4
    skipped = process["scan_end_skipped"]
    assert "domains: needs two motors" in skipped
    assert "rsm: needs the frames" in skipped
    assert "bss: needs the frames or the pca / nmf accumulators" in skipped
    assert "orientation distribution" in skipped


def test_options_from_dict_rejects_unknown_keys():
    opts = ScanEndOptions.from_dict({"domains": 5, "contour_levels": [0.5], "rsm_q": [1, 1, 1]})
    assert opts.domains == 5 and opts.contour_levels == (0.5,) and opts.rsm_q == (1, 1, 1)
    with pytest.raises(ValueError, match="unknown scan-end option"):
        ScanEndOptions.from_dict({"domain": 5})
