"""dfxm-online: live analysis of DFXM scans."""

__version__ = "0.1.0"

# numba's target is made once per process, by the first module that compiles or declares a
# kernel (importing `analysis.gaussian_lm` does): the choice of vector width for AVX-512
# hosts has to come first, so that every process of the service (daemon, `process`, ewoks
# workers) compiles the same code and gets the same numbers
from .online.kernels import _allow_512_bit_vectors

_allow_512_bit_vectors()
