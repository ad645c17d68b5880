"""ewoks tasks of the scan-end workflows (workflows/offline.json, post_scan.json): one per
stage of workflow/stages.py. They pass one small JSON document, the job, from task to task:
settings and the paths of the parts written so far, never arrays (tasks may run in other
processes or hosts)."""

from __future__ import annotations

from ewokscore import TaskWithProgress

from ..workflow import stages
from ..workflow.job import Job, job_from

#: every parameter of a workflow, given to its first task (`ewoks execute ... -p NAME=VALUE`)
JOB_INPUTS = [name for name in Job.model_fields if name not in ("filename", "output", "parts", "started")]


class ReadScan(TaskWithProgress, input_names=["filename", "output"], optional_input_names=JOB_INPUTS,
               output_names=["job"]):
    """The workflow's settings validated, and the scan's accumulator state: the daemon's
    (`state`) or the moments of the recorded frames."""

    def run(self) -> None:
        values = self.get_input_values()
        if not values.get("job_id"):
            values["job_id"] = self.job_id or ""
        job = job_from(values)
        self.outputs.job = stages.read_scan(job, self._report).model_dump()

    def _report(self, fraction: float) -> None:
        self.progress = int(100 * fraction)


class _Stage(TaskWithProgress, input_names=["job"], output_names=["job"], register=False):
    """A stage that adds its part to the job."""

    def run(self) -> None:
        self.outputs.job = self.stage(Job(**self.inputs.job)).model_dump()
        self.progress = 100

    def _report(self, fraction: float) -> None:
        self.progress = int(100 * fraction)

    def stage(self, job: Job) -> Job:
        raise NotImplementedError


class Moments(_Stage):
    """The final maps: the moments within each pixel's window."""

    def stage(self, job: Job) -> Job:
        return stages.moments(job, self._report)


class Fit(_Stage):
    """Per-pixel Gaussian fits (over ewoksjob workers in bands of rows with `fit_shards`)."""

    def stage(self, job: Job) -> Job:
        from ..workflow.sharding import fit_sharded

        return fit_sharded(job)


class FitBand(TaskWithProgress, input_names=["job", "rows", "stage"], output_names=["job"]):
    """One band of rows of a sharded fit (workflows/fit_band.json, submitted by `Fit`)."""

    def run(self) -> None:
        rows = tuple(int(r) for r in self.inputs.rows)
        self.outputs.job = stages.fit_band(Job(**self.inputs.job), rows, str(self.inputs.stage)).model_dump()


class Shift(_Stage):
    """Drift between the scan's halves (/entry/drift)."""

    def stage(self, job: Job) -> Job:
        return stages.analyses(job, "shift")


class Mask(_Stage):
    """Grain mask and sub-domains (/entry/maps/mask, /entry/maps/domains)."""

    def stage(self, job: Job) -> Job:
        return stages.analyses(job, "mask")


class StrainAxes(_Stage):
    """Sample axes, gradient correction, orientation distribution, strain, weak beam, z-sum, RSM."""

    def stage(self, job: Job) -> Job:
        return stages.analyses(job, "strain")


class BlindSourceSeparation(_Stage):
    """PCA, NMF, NICA of the frames (/entry/bss/...)."""

    def stage(self, job: Job) -> Job:
        return stages.analyses(job, "bss")


class WriteNexus(TaskWithProgress, input_names=["job"], output_names=["output", "frames_processed"]):
    """The parts assembled into the maps file (atomically) and its quick-look PNG."""

    def run(self) -> None:
        from ..publish.nexus import read_maps_file

        out = stages.write_nexus(Job(**self.inputs.job))
        self.outputs.output = str(out)
        self.outputs.frames_processed = int(read_maps_file(out)[1]["frames_processed"])
