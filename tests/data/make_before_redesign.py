"""Reference maps made by main before the live-path redesign: run with a checkout of e6aa944
at /work/wt-before (`git worktree add /work/wt-before e6aa944`, its C extensions built).
Kept for the record of how tests/data/before_redesign_*.npz were made; not run by the tests."""
import sys
from pathlib import Path

import numpy as np

OLD = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/wt-before")  # the checkout of e6aa944
sys.path.insert(0, str(OLD))
import dfxm_online  # noqa: E402

assert dfxm_online.__file__.startswith(str(OLD)), dfxm_online.__file__
from dfxm_online.acquisition.geometry import MotorAxis, ScanGeometry  # noqa: E402
from dfxm_online.acquisition.model import CrystalModel, scan_positions  # noqa: E402
from dfxm_online.config import AnalysisConfig  # noqa: E402
from dfxm_online.online.pipeline import ScanPipeline  # noqa: E402

cases = {
    "rocking": [MotorAxis("mu", -0.4, 0.4, 31)],
    "mosaicity": [MotorAxis("mu", -0.4, 0.4, 15), MotorAxis("chi", -1.5, 1.5, 11)],
    "strain": [MotorAxis("mu", -0.4, 0.4, 9), MotorAxis("chi", -1.0, 1.0, 7), MotorAxis("ffz", -0.3, 0.3, 5)],
}
for name, axes in cases.items():
    shape = (26, 22)
    model = CrystalModel.make(shape, axes, seed=5, peak_counts=3000.0, background=2.0)
    positions = scan_positions(axes, zigzag=name == "mosaicity")
    rng = np.random.default_rng(11)
    frames = np.stack([model.frame(p, rng) for p in positions])
    geometry = ScanGeometry(motors=tuple(axes), npoints=len(positions), detector="pco", frame_shape=shape)
    config = AnalysisConfig(batch_size=16)
    pipeline = ScanPipeline(geometry, shape, config)
    named = {a.name: positions[:, i] for i, a in enumerate(axes)}
    for start in range(0, len(positions), 16):
        pipeline.update(frames[start:start + 16], {k: v[start:start + 16] for k, v in named.items()})
    pipeline.finish()
    maps = pipeline.snapshot()
    live = pipeline.snapshot(np.float32, binning=2)
    np.savez_compressed(Path(__file__).parent / f"before_redesign_{name}.npz", frames=frames, positions=positions,
                        motors=np.array([a.name for a in axes]), starts=np.array([a.start for a in axes]),
                        stops=np.array([a.stop for a in axes]), points=np.array([a.npoints for a in axes]),
                        **{f"map_{k}": v for k, v in maps.items()}, **{f"live_{k}": v for k, v in live.items()})
    print(name, sorted(maps)[:6], len(maps))
