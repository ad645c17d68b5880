"""Every NXdata a maps file holds describes itself (publish/nexus.py, publish/describe.py):
a title, its signal's long_name and units, axes datasets with units named in @axes, the
mosaicity map as an RGB image and its key with the two motors (deg) as axes, and
/entry/@default on the most useful plot. Checked with silx's own NXdata reader on files
written by `process` (with the fits and the scan-end groups) and by the daemon."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from silx.io.nxdata import NXdata, get_default

from dfxm_online.acquisition.simulate import SimulationSpec, simulate
from dfxm_online.analysis import sample_axes
from dfxm_online.analysis.scan_end import ScanEndOptions
from dfxm_online.config import AnalysisConfig, DaemonConfig
from dfxm_online.offline import process_to_file
from dfxm_online.publish.describe import describe, motor_unit, pixel_axis
from dfxm_online.publish.nexus import ProcessInfo, read_group, read_maps_file, write_maps_file

from .conftest import wait_done

MAIN_UNITS = {"intensity": "counts", "com_mu": "deg", "com_chi": "deg", "fwhm_mu": "deg", "fwhm_chi": "deg",
              "skewness_mu": "dimensionless", "kurtosis_chi": "dimensionless", "kam": "deg",
              "cov_mu_chi": "deg^2"}


def nxdata_groups(f: h5py.File) -> dict[str, h5py.Group]:
    found: dict[str, h5py.Group] = {}

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Group) and obj.attrs.get("NX_class") == "NXdata":
            found[name] = obj

    f.visititems(visit)
    return found


def text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def check_self_describing(f: h5py.File) -> dict[str, h5py.Group]:
    """The checks every NXdata passes, whatever wrote it; returns the groups."""
    groups = nxdata_groups(f)
    assert groups
    for path, group in groups.items():
        nx = NXdata(group)
        assert nx.is_valid, (path, nx.issues)
        assert nx.title, path
        signal = group[text(group.attrs["signal"])]
        assert "units" in signal.attrs and text(signal.attrs["long_name"]), path
        if signal.attrs.get("interpretation") in ("image", "rgba-image"):
            names = [text(a) for a in np.atleast_1d(group.attrs["axes"])]
            image_dims = names[:2] if signal.attrs["interpretation"] == "rgba-image" else names[-2:]
            for i, name in enumerate(image_dims):  # every image has its two axes, with units
                dim = i if signal.attrs["interpretation"] == "rgba-image" else signal.ndim - 2 + i
                assert name in group and group[name].shape == (signal.shape[dim],), (path, name)
                assert text(group[name].attrs["units"]) in ("pixel", "um", "deg", "mm"), (path, name)
    return groups


def test_describe_table():
    assert describe("com_mu").units == "deg" and describe("fwhm_chi").units == "deg"
    assert describe("intensity").units == "counts" and describe("fit/amplitude").units == "counts"
    assert describe("skewness_mu").units == "dimensionless" == describe("kurtosis_mu").units
    assert describe("cov_diff_ry_chi", ["diff_ry", "chi"]).long_name == "covariance of diff_ry and chi"
    assert describe("cov_mu_ffz", ["mu", "ffz"]).units == "deg mm" and motor_unit("ffz") == "mm"
    assert describe("fit/peak_mu_2_error").long_name == "standard error of fitted peak position along mu (second peak)"
    assert describe("fit/fwhm_mu_error").units == "deg" and describe("strain/strain_obpitch").units == "dimensionless"


def test_binned_maps_axes_are_the_block_centres_in_frame_pixels(tmp_path):
    """A live version binned b x b: each map pixel's axis value is the mean frame pixel
    index of its block, so the binned and the full-resolution maps share coordinates."""
    b, shape = 3, (5, 7)  # a 15 x 21 frame binned 3 x 3
    maps = {"intensity": np.ones(shape), "com_mu": np.zeros(shape), "mosaicity": np.zeros((*shape, 3), np.float32),
            "pca_component_0": np.zeros((1, 3)), "pca_weights": np.zeros((9, 2))}
    path = write_maps_file(tmp_path / "m.h5", maps, ProcessInfo(extra={"map_binning": b, "motors": "mu"}),
                           default="com_mu")
    with h5py.File(path) as f:
        check_self_describing(f)
        for name in ("intensity", "com_mu", "mosaicity"):
            g = f[f"entry/maps/{name}"]
            np.testing.assert_array_equal(g["y"][()], np.arange(15).reshape(5, 3).mean(axis=1))
            np.testing.assert_array_equal(g["x"][()], np.arange(21).reshape(7, 3).mean(axis=1))
            assert text(g["x"].attrs["units"]) == "pixel"
        # an axis is written once and hard-linked into the other groups
        assert f["entry/maps/intensity/x"].id == f["entry/maps/com_mu/x"].id
        # a decomposition image at a coarser binning (here 15 x 21 in 1 x 3 blocks of 15 x 7)
        comp = f["entry/maps/pca_component_0"]
        np.testing.assert_array_equal(comp["y"][()], [7.0])
        np.testing.assert_array_equal(comp["x"][()], np.arange(21).reshape(3, 7).mean(axis=1))
        weights = f["entry/maps/pca_weights"]
        assert [text(a) for a in weights.attrs["axes"]] == ["frames", "component"]
        assert "interpretation" not in weights["pca_weights"].attrs
        assert get_default(f).group.name == "/entry/maps/com_mu"
    # without a default the intensity is the plot a reader opens
    bare = write_maps_file(tmp_path / "b.h5", {"intensity": np.ones(shape)}, ProcessInfo())
    with h5py.File(bare) as f:
        assert get_default(f).group.name == "/entry/maps/intensity"


@pytest.fixture()
def mosaicity_file(redis_url, tmp_path):
    """A recorded mosaicity scan whose positioners give the sample pixel size."""
    rec = simulate(redis_url, SimulationSpec(kind="mosaicity", points=9, frame_shape=(40, 36), peak_counts=4000.0,
                                             scan_dir=tmp_path / "s", session="sd"))
    with h5py.File(rec.filename, "a") as f:
        positioners = f[f"{rec.scan_number}.1/instrument/positioners"]
        positioners["mainx"], positioners["obx"] = 5000.0, 250.0  # |M| = 19
    return rec


def test_process_file_is_self_describing(mosaicity_file, tmp_path):
    rec = mosaicity_file
    options = ScanEndOptions(detector_preset="pco_edge_2x", zsum_motor="chi", domains=3)
    config = AnalysisConfig(accumulators=["projections", "pca", "sums_along"])
    out = process_to_file(rec.filename, tmp_path / "maps.h5", rec.scan_number, config, progress=False,
                          scan_end=options)
    maps, process = read_maps_file(out)
    fits = read_group(out, "fit")
    with h5py.File(out) as f:
        groups = check_self_describing(f)
        assert {"entry/fit/peak_mu", "entry/fit/fwhm_chi_error", "entry/maps/mask", "entry/maps/domains",
                "entry/drift", "entry/zsum", "entry/bss/pca", "entry/bss/nmf"} <= set(groups)
        for name, unit in MAIN_UNITS.items():
            assert text(f[f"entry/maps/{name}/{name}"].attrs["units"]) == unit, name
        assert text(f["entry/fit/peak_mu/peak_mu"].attrs["units"]) == "deg"
        assert text(f["entry/fit/amplitude/amplitude"].attrs["units"]) == "counts"
        assert text(f["entry/fit/chi2/chi2"].attrs["units"]) == "dimensionless"
        # the sample axes (µm) on every full-size image: those of /entry/sample_axes
        pixel = sample_axes.sample_pixel_size(sample_axes.optical_pixel_size("pco_edge_2x"), 5000.0, 250.0)
        expected = sample_axes.sample_axes((40, 36), pixel)
        for path in ("entry/maps/com_mu", "entry/maps/mosaicity", "entry/fit/peak_chi", "entry/maps/mask"):
            np.testing.assert_allclose(f[path]["y"][()], expected.y)
            np.testing.assert_allclose(f[path]["x"][()], expected.x)
            assert text(f[path]["x"].attrs["units"]) == "um"
        # the mosaicity map: an RGB image; its key: an RGB image over the two motors in degrees
        mosaicity = NXdata(f["entry/maps/mosaicity"])
        assert mosaicity.interpretation == "rgba-image" and mosaicity.signal.shape == (40, 36, 3)
        key = NXdata(f["entry/maps/mosaicity_key"])
        assert key.interpretation == "rgba-image"
        assert key.axes_dataset_names == ["chi", "mu", None]
        assert key.axes_names[:2] == ["chi (deg)", "mu (deg)"]
        for motor in ("mu", "chi"):  # the key spans the COM values it colours
            values = f[f"entry/maps/mosaicity_key/{motor}"][()]
            assert text(f[f"entry/maps/mosaicity_key/{motor}"].attrs["units"]) == "deg"
            assert values[0] < np.nanmedian(maps[f"com_{motor}"]) < values[-1]
        # the z-sum stack's images get the frame axes, its first axis stays the motor's
        zsum = f["entry/zsum"]
        assert [text(a) for a in zsum.attrs["axes"]] == ["chi", "y", "x"] and text(zsum["chi"].attrs["units"]) == "deg"
        # silx opens the default plot: the COM of the rocking motor, labelled with its units
        default = get_default(f)
        assert default.group.name == "/entry/maps/com_mu"
        assert default.signal_name == "centre of mass along mu (deg)"
        assert default.axes_names == ["sample y (um)", "sample x (um)"]
        assert default.title == "centre of mass along mu (deg)"
    assert "peak_mu" in fits and process["state"] == "complete"


def test_daemon_file_is_self_describing(make_daemon, redis_url, tmp_path):
    daemon = make_daemon(DaemonConfig(publish_period=0.1))
    rec = simulate(redis_url, SimulationSpec(kind="mosaicity", points=9, frame_shape=(24, 20), peak_counts=3000.0,
                                             scan_dir=tmp_path / "s", session="dd"))
    status = wait_done(daemon, rec.scan_key)
    assert status.state == "complete", status.reason
    with h5py.File(status.path) as f:
        groups = check_self_describing(f)
        assert {"entry/maps/com_mu", "entry/maps/mosaicity", "entry/maps/mosaicity_key"} <= set(groups)
        for name, unit in MAIN_UNITS.items():
            assert text(f[f"entry/maps/{name}/{name}"].attrs["units"]) == unit, name
        com = f["entry/maps/com_mu"]
        np.testing.assert_array_equal(com["y"][()], pixel_axis(24))
        np.testing.assert_array_equal(com["x"][()], np.arange(20))
        key = NXdata(f["entry/maps/mosaicity_key"])
        assert key.axes_names[:2] == ["chi (deg)", "mu (deg)"]
        default = get_default(f)
        assert default.group.name == "/entry/maps/com_mu" and default.axes_names == ["row (pixel)", "column (pixel)"]
        # the NeXus @default chain (root -> entry -> maps -> com_mu), as silx view follows it
        assert text(f["entry"].attrs["default"]) == "maps" and get_default(f["entry"]).group == com


def test_quicklook_panels_units_fits_and_key_in_degrees(mosaicity_file, tmp_path):
    """The quick-look of a processed scan: COM, mosaicity and key, FWHM, intensity, KAM and
    the fits' peak and FWHM per motor, each titled with its units; the key drawn over the
    motors in degrees, so that a pixel's colour sits in the key at its (COM mu, COM chi)."""
    import matplotlib.image

    from dfxm_online.publish.quicklook import _DRAWING, draw_figure, quicklook_path, quicklook_title

    rec = mosaicity_file
    out = process_to_file(rec.filename, tmp_path / "maps.h5", rec.scan_number, progress=False,
                          scan_end=ScanEndOptions(detector_preset="pco_edge_2x"))
    png = matplotlib.image.imread(quicklook_path(out))
    # three rows of four 4.0 x 3.8 in panels at 72 dpi: the fits have a row of their own
    assert abs(png.shape[0] - 3 * 3.8 * 72) <= 1 and png.shape[1] == 4 * 4 * 72
    maps, process = read_maps_file(out)
    fits = read_group(out, "fit")
    with h5py.File(out) as f:
        key_group = f["entry/maps/mosaicity_key"]
        key_axes = [(name, key_group[name][()]) for name in ("chi", "mu")]
        sample = (f["entry/sample_axes/y"][()], f["entry/sample_axes/x"][()])
    title = quicklook_title("sample_0001.h5::1.1", "sample_0001", ["mu", "chi"], 81, 81, "complete")
    assert title == "sample_0001.h5::1.1 - dataset sample_0001 - mu, chi - 81/81 frames - complete"
    with _DRAWING:
        import matplotlib.pyplot as plt

        fig = draw_figure(maps, ["mu", "chi"], title, key_axes, fits, sample)
        try:
            panels = {ax.get_label(): ax for ax in fig.axes if ax.get_label() and not ax.get_label().startswith("<")}
            assert list(panels) == ["com_mu", "com_chi", "mosaicity", "mosaicity_key", "fwhm_mu", "fwhm_chi",
                                    "intensity", "kam", "fit/peak_mu", "fit/peak_chi", "fit/fwhm_mu", "fit/fwhm_chi"]
            assert panels["com_mu"].get_title() == "com_mu (deg)" and panels["intensity"].get_title() == "intensity (counts)"
            assert panels["fit/peak_mu"].get_title() == "fit/peak_mu (deg)"
            assert panels["com_mu"].get_ylabel() == "sample y (um)"
            key = panels["mosaicity_key"]
            assert key.get_xlabel() == "mu (deg)" and key.get_ylabel() == "chi (deg)"
            assert fig.get_suptitle() == title
            fig.canvas.draw()
            pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float) / 255
            height = pixels.shape[0]
            mu, chi = maps["com_mu"], maps["com_chi"]
            (mu_lo, mu_hi), (chi_lo, chi_hi) = key.get_xlim(), key.get_ylim()
            inside = np.isfinite(mu) & np.isfinite(chi) & (mu > mu_lo) & (mu < mu_hi) & (chi > chi_lo) & (chi < chi_hi)
            checked = 0
            x0, y0, x1, y1 = key.get_window_extent().extents
            for i, j in zip(*np.nonzero(inside)):
                x, y = key.transData.transform((mu[i, j], chi[i, j]))
                if not (x0 + 3 < x < x1 - 3 and y0 + 3 < y < y1 - 3):  # not on the frame's lines
                    continue
                drawn = pixels[height - int(round(y)), int(round(x))]
                assert np.abs(drawn - maps["mosaicity"][i, j]).max() < 0.08, (i, j)
                checked += 1
            assert checked > 100
        finally:
            plt.close(fig)
    assert process["state"] == "complete"


def test_quicklook_draws_a_large_map_from_every_kth_pixel_over_its_whole_extent():
    """A map larger than `DRAWN_PIXELS` a side is drawn from every k-th pixel (k the
    smallest step that fits), over the full map's pixel extent, its colour range from what
    is drawn; the mosaicity RGB map the same; a small map as it is."""
    from dfxm_online.publish.quicklook import _DRAWING, DRAWN_PIXELS, draw_figure, robust_range

    rng = np.random.default_rng(3)
    rows, columns = 3 * DRAWN_PIXELS - 100, 2 * DRAWN_PIXELS + 7  # k = 3
    maps = {"com_mu": rng.normal(size=(rows, columns)).astype(np.float32),
            "com_chi": rng.normal(size=(40, 30)).astype(np.float32),
            "mosaicity": rng.random((rows, columns, 3)).astype(np.float32),
            "mosaicity_key": rng.random((16, 16, 3)).astype(np.float32)}
    with _DRAWING:
        import matplotlib.pyplot as plt

        fig = draw_figure(maps, ["mu", "chi"], "t")
        try:
            panels = {ax.get_label(): ax for ax in fig.axes if ax.get_label() and not ax.get_label().startswith("<")}
            image = panels["com_mu"].images[0]
            np.testing.assert_array_equal(image.get_array(), maps["com_mu"][::3, ::3])
            assert list(image.get_extent()) == [-0.5, columns - 0.5, -0.5, rows - 0.5]
            assert (image.norm.vmin, image.norm.vmax) == pytest.approx(robust_range(maps["com_mu"][::3, ::3]))
            colours = panels["mosaicity"].images[0]
            np.testing.assert_array_equal(colours.get_array(), maps["mosaicity"][::3, ::3])
            assert list(colours.get_extent()) == [-0.5, columns - 0.5, -0.5, rows - 0.5]
            np.testing.assert_array_equal(panels["com_chi"].images[0].get_array(), maps["com_chi"])
        finally:
            plt.close(fig)
