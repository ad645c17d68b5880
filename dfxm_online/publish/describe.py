"""What a map is and in which units: the words and units every reader of the maps shows.

One table for the maps file (publish/nexus.py writes them as `long_name`, `units` and the
NXdata `title`), the quick-look PNG (publish/quicklook.py) and the live viewer (viewer.py),
so that the three label a map alike. Pure, no I/O.

Units follow NeXus (`units` attribute, UDUNITS spelling): motor angles in `deg`, translation
motors in `mm` (a strain scan may move `ffz`), intensities in `counts` (at the reference
monitor value when the chain normalises by a monitor), detector pixels as `pixel`, sample positions in `um`,
ratios and shape statistics (skewness, kurtosis, strain, correlation, chi²) `dimensionless`,
and decomposition components, whose scale is arbitrary, `a.u.`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DIMENSIONLESS = "dimensionless"
#: motors that translate rather than rotate (mm): BLISS's usual DFXM names
TRANSLATION_MOTORS = frozenset({"ffz", "ffy", "obx", "oby", "obz", "mainx", "samx", "samy", "samz",
                                "diffty", "difftz", "ffx", "x", "y", "z"})


def motor_unit(motor: str) -> str:
    """`mm` for a translation motor, `deg` for the others (DFXM scans rotate: mu, chi, phi,
    diffry, obpitch, ccmth...)."""
    return "mm" if motor.lower() in TRANSLATION_MOTORS else "deg"


@dataclass(frozen=True)
class Description:
    """A map's words and unit: `long_name` (what it is), `units` (NeXus)."""

    long_name: str
    units: str

    @property
    def label(self) -> str:
        """`long_name (units)`, the units left out when dimensionless: an axis or colour bar label."""
        return label(self.long_name, self.units)


def label(long_name: str, units: str) -> str:
    """`long_name (units)`; a dimensionless quantity is its name alone."""
    return f"{long_name} ({units})" if units and units != DIMENSIONLESS else long_name


def _split_motor(rest: str, motors: Sequence[str]) -> tuple[str, str]:
    """`rest` = "<motor>" or "<motor>_<motor>": the first motor (one of `motors` when they
    are known, since a motor name may hold an underscore) and what follows it."""
    for motor in sorted(motors, key=len, reverse=True):
        if rest == motor or rest.startswith(motor + "_"):
            return motor, rest[len(motor) + 1:]
    head, _, tail = rest.partition("_")
    return head, tail


def _product(a: str, b: str) -> str:
    ua, ub = motor_unit(a), motor_unit(b)
    return f"{ua}^2" if ua == ub else f"{ua} {ub}"


def describe(name: str, motors: Sequence[str] = ()) -> Description:
    """What the map `name` is (`intensity`, `com_mu`, `fit/peak_mu_error`, `bss/nmf`...) and
    its units. `motors`: the scan's motors, to split names such as `cov_<m1>_<m2>`. A name
    this table does not know is `a.u.`."""
    base = name.rsplit("/", 1)[-1]
    if base.endswith("_error"):
        d = describe(base[: -len("_error")], motors)
        return Description(f"standard error of {d.long_name}", d.units)
    for prefix, words, unit in _PER_MOTOR:
        if base.startswith(prefix):
            motor, rest = _split_motor(base[len(prefix):], motors)
            second = " (second peak)" if rest == "2" else ""
            return Description(f"{words} {motor}{second}", motor_unit(motor) if unit is None else unit)
    for prefix, words in (("cov_", "covariance of"), ("correlation_", "correlation of")):
        if base.startswith(prefix):
            a, rest = _split_motor(base[len(prefix):], motors)
            b, tail = _split_motor(rest, motors)
            second = " (second peak)" if tail == "2" else ""
            unit = _product(a, b) if prefix == "cov_" else DIMENSIONLESS
            return Description(f"{words} {a} and {b}{second}", unit)
    for prefix, words, unit in _NUMBERED:
        if base.startswith(prefix):
            return Description(f"{words} {base[len(prefix):]}".strip(), unit)
    if base.endswith("_2") and base[:-2] in _NAMED:
        d = _NAMED[base[:-2]]
        return Description(f"{d.long_name} (second peak)", d.units)
    if base in _NAMED:
        return _NAMED[base]
    return Description(base.replace("_", " "), "a.u.")


_PER_MOTOR = (
    ("com_", "centre of mass along", None),
    ("fwhm_", "FWHM along", None),
    ("skewness_", "skewness along", DIMENSIONLESS),
    ("kurtosis_", "excess kurtosis along", DIMENSIONLESS),
    ("peak_", "fitted peak position along", None),
    ("strain_", "strain from", DIMENSIONLESS),
    ("projections_", "sum of the frames per position of", "counts"),
)
_NUMBERED = (
    ("pca_component_", "PCA component", "a.u."),
    ("nmf_component_", "NMF component", "a.u."),
)
_NAMED = {
    "intensity": Description("integrated intensity", "counts"),
    "background": Description("background subtracted from each frame", "counts"),
    "kam": Description("kernel average misorientation", "deg"),
    "mosaicity": Description("mosaicity (orientation colour, key beside it)", DIMENSIONLESS),
    "mosaicity_key": Description("mosaicity colour key", DIMENSIONLESS),
    "sum": Description("sum of the frames", "counts"),
    "max": Description("maximum of the frames", "counts"),
    "sum_first_half": Description("sum of the first half of the frames", "counts"),
    "sum_second_half": Description("sum of the second half of the frames", "counts"),
    "background_median": Description("median of every k-th frame", "counts"),
    "rolling_median": Description("rolling median of the frames", "counts"),
    "minimum": Description("minimum of the frames", "counts"),
    "low_quantile": Description("low quantile of the frames", "counts"),
    "pca_weights": Description("PCA weights per frame", "a.u."),
    "nmf_weights": Description("NMF weights per frame", "a.u."),
    "pca_variance": Description("PCA explained variance ratio", DIMENSIONLESS),
    "amplitude": Description("fitted amplitude", "counts"),
    "chi2": Description("reduced chi-square of the fit", DIMENSIONLESS),
    "converged": Description("fit converged (1) or not (0)", DIMENSIONLESS),
    "iterations": Description("fit iterations", DIMENSIONLESS),
    "peaks": Description("peaks kept by the fit", DIMENSIONLESS),
    "mask": Description("grain mask (1 = grain)", DIMENSIONLESS),
    "domains": Description("sub-domains (cluster colour)", DIMENSIONLESS),
    "labels": Description("sub-domain label", DIMENSIONLESS),
    "orientation_distribution": Description("intensity per motor position", "counts"),
    "zsum": Description("sum of the frames per motor position", "counts"),
    "rsm": Description("reciprocal space map", "counts"),
    "components": Description("components", "a.u."),
    "weights": Description("weights per frame", "a.u."),
    "explained_variance_ratio": Description("explained variance ratio", DIMENSIONLESS),
    "relative_error": Description("relative error of the factorisation", DIMENSIONLESS),
    "pixel_size": Description("pixel size at the sample", "um"),
    "shift_per_frame": Description("drift per frame", "pixel"),
    "component": Description("component", DIMENSIONLESS),
    "frames": Description("frames", DIMENSIONLESS),
}


#: the names of the image axes datasets (rows, columns), as the scan-end groups name them
ROW_AXIS, COLUMN_AXIS = "y", "x"


def pixel_axis(n: int, block: float = 1.0) -> np.ndarray:
    """The pixel index of the centre of each of `n` map pixels, each `block` frame pixels
    wide (a map binned b x b: b i + (b - 1) / 2), so that a live binned map and the final
    one have the same coordinates."""
    return block * np.arange(n, dtype=np.float64) + (block - 1.0) / 2.0


def pixel_axes_descriptions(sample: bool) -> tuple[Description, Description]:
    """The (row, column) axes' descriptions: frame pixels, or sample µm."""
    if sample:
        return Description("sample y", "um"), Description("sample x", "um")
    return Description("row", "pixel"), Description("column", "pixel")
