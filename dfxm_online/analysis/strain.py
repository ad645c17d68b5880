"""Strain maps from the centre of mass of a strain motor (darfix's formulas). Pure, no I/O.

A strain scan moves an angle that selects the lattice spacing d: the objective's 2θ
(`obpitch`, or another 2θ motor such as `tth`), or the monochromator angle (`ccmth`), which
changes the wavelength at a fixed 2θ. Bragg's law differentiated gives the relative change
of d, i.e. the (axial) strain, of each pixel from the COM of that motor:

- 2θ motor: λ = 2 d sin θ at fixed λ, so ε = Δd/d = -Δθ cot θ = -Δ(2θ) / (2 tan(2θ₀ / 2));
- `ccmth`: λ = 2 d_mono sin θ_m and, at a fixed 2θ, d ∝ λ, so ε = Δθ_m cot θ_m₀.

The reference angle (2θ₀ or θ_m₀) is given, or the median of the COM map's finite pixels
(darfix's default). Angles are in degrees, strain is dimensionless (darfix's docstrings call
it "degrees"; the numbers are the same).
"""

from __future__ import annotations

import numpy as np

#: motors whose COM is a 2θ angle (the objective's pitch follows 2θ)
TWO_THETA_MOTORS = ("obpitch", "tth", "twotheta", "ffpitch")
#: motors whose COM is the monochromator Bragg angle
MONOCHROMATOR_MOTORS = ("ccmth",)


def reference_angle(com: np.ndarray, reference: float | None) -> float:
    """The given reference, or the median of the finite pixels of `com` (NaN if none)."""
    if reference is not None:
        return float(reference)
    finite = np.asarray(com, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return float(np.median(finite)) if finite.size else float("nan")


def strain_two_theta(com_two_theta: np.ndarray, reference: float | None = None) -> np.ndarray:
    """ε = -(2θ - 2θ₀) / (2 tan(2θ₀ / 2)) with angles in radians (darfix
    `strain_obpitch_scan`); `com_two_theta` in degrees."""
    ref = np.deg2rad(reference_angle(com_two_theta, reference))
    return -(np.deg2rad(np.asarray(com_two_theta, dtype=np.float64)) - ref) / (2.0 * np.tan(ref / 2.0))


def strain_monochromator(com_ccmth: np.ndarray, reference: float | None = None) -> np.ndarray:
    """ε = (θ_m - θ_m₀) / tan(θ_m₀) with angles in radians (darfix `strain_ccmth_scan`);
    `com_ccmth` in degrees."""
    ref = np.deg2rad(reference_angle(com_ccmth, reference))
    return (np.deg2rad(np.asarray(com_ccmth, dtype=np.float64)) - ref) / np.tan(ref)


def strain_maps(
    com_maps: dict[str, np.ndarray],
    references: dict[str, float] | None = None,
    two_theta_motors: tuple[str, ...] = TWO_THETA_MOTORS,
) -> dict[str, tuple[np.ndarray, float]]:
    """{motor: (strain map, reference used)} for every strain motor among `com_maps`
    ({motor name: COM map in degrees}); motors that are not strain motors are skipped."""
    references = references or {}
    out: dict[str, tuple[np.ndarray, float]] = {}
    for motor, com in com_maps.items():
        if motor in two_theta_motors:
            ref = reference_angle(com, references.get(motor))
            out[motor] = (strain_two_theta(com, ref), ref)
        elif motor in MONOCHROMATOR_MOTORS:
            ref = reference_angle(com, references.get(motor))
            out[motor] = (strain_monochromator(com, ref), ref)
    return out
