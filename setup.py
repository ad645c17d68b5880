"""Build of the C extension that remains, dfxm_online.online._pixelmaps (metadata:
pyproject.toml). The pass over a batch of frames is numba now
(`online/kernels/frame_pass.py`, compiled for the CPU it runs on at first use).

_pixelmaps: plain C11, no numpy headers: arrays come in through the buffer protocol; GCC
builds its vectorized loops for AVX-512, AVX2 and a generic x86-64 target and picks one at
load time (target_clones).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dfxm_online.online._pixelmaps",
            sources=["dfxm_online/online/_pixelmaps.c"],
            depends=["dfxm_online/online/_buffers.h"],
            extra_compile_args=["-O3", "-std=gnu11", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"],
        ),
    ]
)
