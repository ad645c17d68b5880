"""Every code path this machine's CPU can run, checked: the host target in this process, each
narrower numba target (AVX2 on an AVX-512 machine, generic SSE2 on any x86-64) in a
subprocess with NUMBA_CPU_NAME set (numba's target is process-wide), and the numpy floor.

A CI machine with AVX-512 so tests the code an AVX2-only or older CPU runs. The paths run
are named in the session's terminal summary (conftest.py)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from dfxm_online.online import kernels

from . import kernel_checks

ROOT = Path(__file__).resolve().parents[1]
X86 = platform.machine().lower() in ("x86_64", "amd64")


def narrower_targets() -> list[tuple[str, str, bool]]:
    """(NUMBA_CPU_NAME, instruction set it gives, whether with the host's own features) for
    the targets below the host's that this CPU can execute: on an AVX-512 host whose code
    takes 512-bit vectors, the same CPU with 256-bit ones (what NUMBA_CPU_NAME alone gives)."""
    if not X86:
        return []
    host = kernels.instruction_set()
    targets = []
    if host == "AVX-512" and kernels.wide_vectors():
        targets.append((kernels.numba_target()[0], "AVX-512", True))
    if host == "AVX-512":
        targets.append(("haswell", "AVX2+FMA", False))
    if host != "SSE2 (generic)":
        targets.append(("generic", "SSE2 (generic)", False))
    return targets


def test_host_target():
    report = kernel_checks.run_all()
    assert report["checked"]
    vectors = ", 512-bit vectors" if report["wide_vectors"] else ""
    kernel_checks.EXERCISED.append(f"numba {report['target']} ({report['instruction_set']}{vectors}), in process")


@pytest.mark.parametrize("cpu, instruction_set, host_features", narrower_targets())
def test_narrower_target_in_a_subprocess(cpu, instruction_set, host_features):
    from numba.core.codegen import get_host_cpu_features

    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU")}
    env.update(NUMBA_CPU_NAME=cpu, DFXM_KERNELS="numba")
    if host_features:
        env["NUMBA_CPU_FEATURES"] = get_host_cpu_features()
    run = subprocess.run([sys.executable, "-m", "tests.kernel_checks"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["target"] == cpu and report["instruction_set"] == instruction_set
    assert not report["wide_vectors"]  # a target named in the environment keeps LLVM's vector width
    assert report["checked"] == kernel_checks.run_all()["checked"]  # the same checks as in process
    vectors = ", 256-bit vectors" if host_features else ""
    kernel_checks.EXERCISED.append(f"numba {cpu} ({instruction_set}{vectors}), subprocess")


def test_numpy_floor():
    checked = kernel_checks.check_frame_pass("numpy") + kernel_checks.check_windowed_pass("numpy")
    assert checked
    kernel_checks.EXERCISED.append("numpy floor (tiled w @ x)")


def test_auto_takes_numba_when_it_imports_else_the_numpy_floor(monkeypatch):
    monkeypatch.delenv(kernels.ENV, raising=False)
    assert kernels.frame_pass_backend() == "numba"
    monkeypatch.setattr(kernels, "numba_available", lambda: False)
    assert kernels.frame_pass_backend() == "numpy"
    with kernels.use_backend("numba"):
        assert kernels.frame_pass_backend() == "numba"
    monkeypatch.setenv(kernels.ENV, "numpy")
    assert kernels.frame_pass_backend() == "numpy"
    monkeypatch.setenv(kernels.ENV, "fast")
    with pytest.raises(ValueError, match="DFXM_KERNELS"):
        kernels.frame_pass_backend()
