"""Constants of the Gaussian that both the analysis and the simulator use (one definition,
so that neither imports the other for it)."""

import math

#: full width at half maximum of a Gaussian, in standard deviations: 2 sqrt(2 ln 2)
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
