"""Build of the compiled loops, dfxm_online.online._framesums and _pixelmaps (metadata:
pyproject.toml).

Plain C11 (with GCC vector extensions), no numpy headers: arrays come in through the buffer
protocol. GCC builds _framesums and _pixelmaps's vectorized loops for AVX-512, AVX2 and a generic x86-64 target and picks one
at load time (target_clones), so one build runs on any x86-64 machine at the speed of the one
it runs on.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dfxm_online.online._framesums",
            sources=["dfxm_online/online/_framesums.c"],
            depends=[
                "dfxm_online/online/_framesums_pass.h",
                "dfxm_online/online/_framesums_types.h",
                "dfxm_online/online/_buffers.h",
            ],
            extra_compile_args=["-O3", "-std=gnu11", "-Wno-psabi"],
        ),
        Extension(
            "dfxm_online.online._pixelmaps",
            sources=["dfxm_online/online/_pixelmaps.c"],
            depends=["dfxm_online/online/_buffers.h"],
            extra_compile_args=["-O3", "-std=gnu11", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"],
        ),
    ]
)
