"""The daemon loads the live path's compiled kernels at start-up (`kernel_loading`), so a new
daemon's first scan does not: checked in a fresh process, where nothing is loaded yet."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import json
from dfxm_online.config import AnalysisConfig
from dfxm_online.kernel_loading import load_live_kernels
from dfxm_online.online.kernels import frame_pass, pixelmaps

kernels = {"frame pass": frame_pass.frame_pass, "block sums": pixelmaps.block_sums}
before = {name: [str(s) for s in k.signatures] for name, k in kernels.items()}
load_live_kernels(AnalysisConfig())
after = {name: [str(s) for s in k.signatures] for name, k in kernels.items()}
print(json.dumps({"before": before, "after": after}))
"""


def test_the_live_kernels_are_loaded_for_uint16_frames():
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["before"] == {"frame pass": [], "block sums": []}
    # the frame pass over uint16 frames (the accumulators) and the block sums of uint16
    # frames (the preview's binning) are loaded
    assert any(s.startswith("(Array(uint16, 2, 'C'") for s in out["after"]["frame pass"])
    assert any(s.startswith("(Array(uint16, 3, 'C'") for s in out["after"]["block sums"])
