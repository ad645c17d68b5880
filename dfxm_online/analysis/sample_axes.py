"""Pixel size at the sample, sample axes in µm, and the optical gradient correction of COM
maps (darfix's formulas). Pure, no I/O.

Magnification. The X-ray objective at `obx` (sample-to-objective distance d1) images the
sample onto the detector at `mainx` (sample-to-detector distance d1 + d2), so
M = d2 / d1 = |mainx| / obx - 1 and a detector pixel of size p (the camera pixel over the
visible-light optics' magnification) sees p / |M| of the sample. darfix computes
|(-mainx) / obx - 1|: it negates the recorded `mainx` (recorded negative at ID06), which is
the same number for a negative `mainx`; we take |mainx| so that a positive record gives the
physical value too.

Detector presets (optical pixel sizes, µm). darfix knows two lists: its magnification
widget's PCO edge 2x = 3.25 µm and 10x = 0.65 µm (6.5 µm camera pixels), and its
`PixelSize` enum used for the RSM, Basler = 0.051, PcoEdge_2x = 0.00375, PcoEdge_10x =
0.00075 in millimetres (its RSM geometry is in the units of `ffz` and `mainx`, mm). Both are
here, in µm.

Sample axes: the objective inverts the image in both directions; darfix's axes for a
centred frame are x = (j - W/2) s along the columns and y = (H/2 - i) s along the rows (for
a square frame: darfix builds its grids with `meshgrid(arange(H), arange(W))`, which are
transposed (W, H) arrays for a frame that is not square; ours are (W,) and (H,) vectors). In
topography (`topography_orientation`), one axis is foreshortened by the tilt of the
sample: it is divided by |sin(obpitch)|.

Gradient correction (darfix `gradient_correction.py`, from notebooks by M. Demetrio de
Magalhães and V. Sanna): the objective maps angle to detector position non-uniformly, which
adds a linear gradient across the field to COM maps:

- chi: chi_corr = chi - ξ y_s / (2 sin θ), ξ = cos(obpitch) / obx, θ = obpitch / 2,
  y_s the horizontal (column) position from the frame centre, in metres;
- obpitch or ccmth: com_corr = com + ξ z_s, ξ = cos(2θ₀) / obx, 2θ₀ = arctan(ffz / mainx),
  z_s = (row position from the centre) · sin(2θ₀) (vertical).

Pixel positions from the centre are (index - (n - 1) / 2) · pixel size, as in darfix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: optical pixel sizes (µm) of the magnification presets (darfix's magnification widget)
MAGNIFICATION_PRESETS_UM = {"pco_edge_2x": 3.25, "pco_edge_10x": 0.65}
#: detector pixel sizes (µm) of darfix's `PixelSize` enum (there in mm), used for the RSM
DETECTOR_PRESETS_UM = {"basler": 51.0, "pco_edge_2x_rsm": 3.75, "pco_edge_10x_rsm": 0.75}


def optical_pixel_size(detector: str | float) -> float:
    """A preset name (case-insensitive, either list) or a size in µm -> size in µm."""
    if isinstance(detector, int | float):
        return float(detector)
    key = str(detector).lower()
    for presets in (MAGNIFICATION_PRESETS_UM, DETECTOR_PRESETS_UM):
        if key in presets:
            return presets[key]
    known = sorted(MAGNIFICATION_PRESETS_UM) + sorted(DETECTOR_PRESETS_UM)
    raise ValueError(f"unknown detector preset {detector!r}; known: {', '.join(known)}")


def magnification(mainx: float, obx: float) -> float:
    """M = |mainx| / obx - 1 (both in the same unit)."""
    if obx == 0:
        raise ValueError("obx must not be 0")
    return abs(mainx) / obx - 1.0


def sample_pixel_size(optical_pixel_um: float, mainx: float, obx: float) -> float:
    """Size (µm) of the sample seen by one pixel: optical pixel / |M|."""
    m = magnification(mainx, obx)
    if m == 0:
        raise ValueError("magnification is 0 (|mainx| == 2 obx)")
    return abs(optical_pixel_um / m)


@dataclass(frozen=True)
class SampleAxes:
    """Sample coordinates (µm) of a frame's rows (`y`, (H,)) and columns (`x`, (W,)),
    and the pixel size along each (`pixel_y`, `pixel_x`, µm, positive)."""

    y: np.ndarray
    x: np.ndarray
    pixel_y: float
    pixel_x: float


def sample_axes(
    shape: tuple[int, int],
    pixel_um: float,
    *,
    centre: bool = True,
    topography_orientation: int | None = None,
    obpitch: float | None = None,
) -> SampleAxes:
    """darfix's magnification axes as 1-D vectors: x = (j - W/2) s, y = (H/2 - i) s when
    centred, x = j s, y = (H - 1 - i) s otherwise. `topography_orientation` 0 (x) or 1 (y)
    divides that axis by |sin(obpitch)| (obpitch in degrees)."""
    h, w = shape
    s = float(pixel_um)
    if centre:
        x = (np.arange(w) - w / 2) * s
        y = (h / 2 - np.arange(h)) * s
    else:
        x = np.arange(w) * s
        y = (h - 1 - np.arange(h)) * s
    px, py = s, s
    if topography_orientation is not None:
        if obpitch is None:
            raise ValueError("topography needs obpitch")
        stretch = 1.0 / abs(np.sin(np.radians(obpitch)))
        if topography_orientation == 0:
            x, px = x * stretch, px * stretch
        elif topography_orientation == 1:
            y, py = y * stretch, py * stretch
        else:
            raise ValueError("topography_orientation must be 0 (x), 1 (y) or None")
    return SampleAxes(y=y, x=x, pixel_y=py, pixel_x=px)


def _centred(n: int) -> np.ndarray:
    return np.arange(n) - (n - 1) / 2.0


def chi_gradient_correction(
    com_chi: np.ndarray, obpitch_deg: float, obx_m: float, pixel_size_m: float
) -> np.ndarray:
    """COM chi (degrees) minus the optics' gradient across the field (along the columns)."""
    two_theta = np.deg2rad(obpitch_deg)
    y_s = _centred(com_chi.shape[1])[np.newaxis, :] * pixel_size_m
    xi = np.cos(two_theta) / obx_m
    return com_chi - np.rad2deg(xi * y_s / (2.0 * np.sin(two_theta / 2.0)))


def two_theta_gradient_correction(
    com: np.ndarray, ffz_m: float, mainx_m: float, obx_m: float, pixel_size_m: float
) -> np.ndarray:
    """COM obpitch or ccmth (degrees) plus ξ z_s, the optics' gradient along the rows
    (darfix `obpitch_correction` / `ccmth_correction`, with |mainx|: see the module)."""
    two_theta0 = np.arctan(ffz_m / abs(mainx_m))
    xi = np.cos(two_theta0) / obx_m
    z_s = _centred(com.shape[0])[:, np.newaxis] * pixel_size_m * np.sin(two_theta0)
    return np.rad2deg(np.deg2rad(com) + xi * z_s)
