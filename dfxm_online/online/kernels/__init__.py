"""Compiled kernels (numba) and the code path each runs on.

numba compiles every kernel for the CPU it runs on (`cache=True`: once per machine and
target, in `__pycache__`), so one install is fast on AVX-512, AVX2 and older x86-64 CPUs
alike; `NUMBA_CPU_NAME` (and `NUMBA_CPU_FEATURES`) force another target, which is how the
tests and `make bench` run the AVX2 (`haswell`) and generic (`generic`: SSE2) code on an
AVX-512 machine. On an AVX-512 host the target also drops LLVM's preference for 256-bit
vectors, so that the register blocks use the full 512-bit FMA width
(`_allow_512_bit_vectors`). The kernels release the GIL and run on the project's tile threads
(`online/tiles.py`), not numba's own thread pool (`parallel=True`), whose default
"workqueue" layer aborts when two of the daemon's threads enter it at once.

The pass over a batch of frames also has a numpy floor, a tiled `w @ x` with one BLAS thread
per tile thread (`framesums._Pass`, backend "numpy"): `DFXM_KERNELS` = `auto` (default),
`numba` or `numpy` chooses. `auto` takes numba whenever it imports: in every run at 2048^2
(bench/RESULTS.md) the compute core on the numba pass was ahead of the same on the numpy
floor on every target, the generic SSE2 one included (2026-12-06, per CPU time: 142 against
121 frames/s, with OpenBLAS's AVX-512 kernels under the floor), so the floor is there for a
Python where numba is missing and as a reference. (Tried on the generic target: the dense
rows by BLAS on each tile the numba pass had just read for the groups and maximum, 145
against 142 frames/s: not kept.)
"""

from __future__ import annotations

import os
import platform
from contextlib import contextmanager
from pathlib import Path

ENV = "DFXM_KERNELS"
BACKENDS = ("auto", "numba", "numpy")

#: LLVM CPU names (NUMBA_CPU_NAME) whose instruction set includes AVX2 and FMA; other names
#: (generic, x86-64, nehalem, sandybridge, ...) are taken as without
_AVX2_FMA_CPUS = frozenset({
    "haswell", "broadwell", "skylake", "skylake-avx512", "cascadelake", "cooperlake", "cannonlake",
    "icelake-client", "icelake-server", "tigerlake", "rocketlake", "alderlake", "raptorlake",
    "meteorlake", "arrowlake", "lunarlake", "sapphirerapids", "emeraldrapids", "graniterapids",
    "x86-64-v3", "x86-64-v4", "znver1", "znver2", "znver3", "znver4", "znver5", "bdver2",
    "bdver3", "bdver4",
})

_forced: str | None = None

#: the LLVM tuning feature that keeps vectors at 256 bits on AVX-512 CPUs
_PREFER_256 = "prefer-256-bit"


def _allow_512_bit_vectors() -> None:
    """Let numba's code use 512-bit vectors on an AVX-512 host: numba's target becomes the
    host's CPU and features plus `-prefer-256-bit` (called first thing by the package,
    dfxm_online/__init__.py).

    Why: LLVM's tuning for Intel's AVX-512 CPUs keeps vectors at 256 bits (Skylake-X lowered
    its clock under 512-bit code), so the register blocks ran on ymm at half the FMA width:
    this machine's FMA peak is 28.4 GFMA/s per core on ymm and 53.7 on zmm, and the compute
    core went from 326-356 to 382-437 frames/s with zmm blocks (bench/RESULTS.md). On AMD's
    AVX-512 CPUs a zmm operation is two ymm ones: no loss. Done once, before numba's CPU
    target is first set up (its target machine is made once per process), and never where
    NUMBA_CPU_NAME or NUMBA_CPU_FEATURES choose the target (the tests' and bench's code paths).
    """
    try:
        from numba import config
        from numba.core.codegen import get_host_cpu_features
        from numba.core.registry import cpu_target
    except ImportError:
        return
    if config.CPU_NAME is not None or config.CPU_FEATURES is not None:
        return
    if "_toplevel_target_context" in vars(cpu_target):  # numba's target is already made
        return
    features = get_host_cpu_features()
    if "+avx512f" in features.split(","):
        config.CPU_FEATURES = f"{features},-{_PREFER_256}"


def wide_vectors() -> bool:
    """Whether numba's target takes 512-bit vectors (AVX-512 without the 256-bit preference)."""
    try:
        from numba import config
    except ImportError:
        return False
    features = (config.CPU_FEATURES or "").split(",")
    return "+avx512f" in features and f"-{_PREFER_256}" in features


def numba_target() -> tuple[str, frozenset[str]]:
    """The CPU name and the features numba compiles for: the host's, or those forced by
    NUMBA_CPU_NAME / NUMBA_CPU_FEATURES (read once by numba, at its import)."""
    from numba import config
    from numba.core.codegen import get_host_cpu_features

    name = config.CPU_NAME
    features = config.CPU_FEATURES
    if name is None:
        import llvmlite.binding as llvm

        name = llvm.get_host_cpu_name()
        features = features or get_host_cpu_features()
    if features:
        on = frozenset(f[1:] for f in features.split(",") if f.startswith("+"))
    elif name in _AVX2_FMA_CPUS:
        on = frozenset({"avx2", "fma"} | ({"avx512f"} if name in {
            "skylake-avx512", "cascadelake", "cooperlake", "cannonlake", "icelake-client", "icelake-server",
            "tigerlake", "rocketlake", "sapphirerapids", "emeraldrapids", "graniterapids", "x86-64-v4",
            "znver4", "znver5"} else set()))
    else:
        on = frozenset()
    return name, on


#: where Linux describes the first CPU's caches (one `index*` folder per cache)
_CACHES = "/sys/devices/system/cpu/cpu0/cache"


def l2_cache_bytes(caches: str = _CACHES) -> int | None:
    """The size of the first CPU's level-2 data (or unified) cache, in bytes, or None where
    the system does not say (not Linux, no sysfs). Why: the frame pass sizes the sub-tile it
    keeps in L2 from it (`frame_pass.sub_tile_bytes`); L2 is 2 MB per core on the Intel Xeon
    the pass was first tuned on, 1 MB on AMD's Zen 4 and 512 KB on Zen 2 and Zen 3."""
    try:
        folders = sorted(os.scandir(caches), key=lambda e: e.name)
    except OSError:
        return None
    for folder in folders:
        if not folder.name.startswith("index"):
            continue
        try:
            level, kind, size = (Path(folder.path, name).read_text().strip() for name in ("level", "type", "size"))
        except OSError:
            continue
        if level == "2" and kind in ("Data", "Unified"):
            units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
            try:
                return int(size[:-1]) * units[size[-1]] if size[-1:] in units else int(size)
            except ValueError:
                return None
    return None


def instruction_set() -> str:
    """What the numba target's vector code uses: AVX-512, AVX2+FMA, or the x86-64 baseline."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return platform.machine()
    _, features = numba_target()
    if "avx512f" in features:
        return "AVX-512"
    if {"avx2", "fma"} <= features:
        return "AVX2+FMA"
    return "SSE2 (generic)"


def requested_backend() -> str:
    """DFXM_KERNELS (or the test hook `use_backend`), checked."""
    value = _forced or os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{ENV} must be one of {', '.join(BACKENDS)}, not {value!r}")
    return value


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def frame_pass_backend() -> str:
    """"numba" or "numpy": which implementation runs the pass over a batch of frames."""
    value = requested_backend()
    if value != "auto":
        return value
    return "numba" if numba_available() else "numpy"


def code_path() -> str:
    """One line naming the code path of this process: the numba target and the pass's backend."""
    name, _ = numba_target()
    backend = frame_pass_backend()
    floor = "numpy tiled product" if backend == "numpy" else "numba"
    return f"numba target {name} ({instruction_set()}); frame pass: {floor}"


@contextmanager
def use_backend(backend: str):
    """Test hook: run the frame pass with `backend` ("numba", "numpy" or "auto") inside."""
    global _forced
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}")
    before, _forced = _forced, backend
    try:
        yield
    finally:
        _forced = before
