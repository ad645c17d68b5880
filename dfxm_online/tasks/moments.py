"""ewoks task: moment maps of a recorded scan (a thin wrapper over `offline.process_to_file`)."""

from __future__ import annotations

from ewokscore import Task

from ..config import load_config


class ProcessScanMoments(
    Task,
    input_names=["filename", "output"],
    optional_input_names=["scan", "dark", "detector", "motors", "background", "config_file"],
    output_names=["output", "frames_processed"],
):
    """Per-pixel moment maps of scan `scan` of a BLISS file, written in the daemon's layout."""

    def run(self) -> None:
        from ..offline import process_to_file
        from ..publish.nexus import read_maps_file

        config = load_config(
            self.get_input_value("config_file", None),
            detector=self.get_input_value("detector", None),
            motors=self.get_input_value("motors", None),
            background=self.get_input_value("background", None),
        )
        out = process_to_file(
            self.inputs.filename, self.inputs.output, self.get_input_value("scan", "1.1"),
            config.analysis, self.get_input_value("dark", None), progress=False,
        )
        _, process = read_maps_file(out)
        self.outputs.output = str(out)
        self.outputs.frames_processed = int(process["frames_processed"])
