"""TensorBoard: one sub-folder of event files per traitwatch run, under the study's log folder.

Why rewrite instead of append: TensorBoard reads every event file in a run's folder and shows
all their points, so a second write of the same step would draw the curve twice. The track
stage therefore deletes the run folder's event files (only ``events.out.tfevents.*``, nothing
else there) and writes the run whole; it holds a few thousand scalars and takes milliseconds.
Event files are written with torch's ``SummaryWriter`` (torch is already a dependency; the
``tensorboard`` package provides the file format).
"""

from __future__ import annotations

from pathlib import Path

from traitwatch.config import StudySpec, TensorBoardTrackerSpec

from . import _names as names
from ._base import TrackedRun, require


class TensorBoardTracker:
    """Writes ``<log_dir>/<run>/events.out.tfevents.*`` (default log_dir: ``<output_dir>/tensorboard``)."""

    kind = "tensorboard"

    def __init__(self, spec: TensorBoardTrackerSpec, study: StudySpec, out: Path) -> None:
        self.log_dir = (spec.log_dir or out / "tensorboard").resolve()

    def where(self) -> str:
        return f"tensorboard --logdir {self.log_dir}"

    def run_dir(self, run: str) -> Path:
        """The folder of one traitwatch run's event files."""
        return self.log_dir / names.part(run)

    def log(self, runs: list[TrackedRun]) -> dict[str, int]:
        require("tensorboard")
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        points = 0
        for run in runs:
            folder = self.run_dir(run.name)
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.glob("events.out.tfevents.*"):
                old.unlink()
            writer = SummaryWriter(log_dir=str(folder))
            try:
                for step, values in run.series.items():
                    for name, value in values.items():
                        writer.add_scalar(name, value, global_step=step)
                for name, value in run.summary.items():
                    writer.add_scalar(name, value, global_step=run.final_step)
                # The HPARAMS tab: the run's settings, with its consensus onsets as the metrics to compare.
                shown = {k: v for k, v in run.summary.items() if k.endswith("/consensus/step")}
                hp = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in run.params.items()}
                for summary in hparams(hp, shown):
                    writer._get_file_writer().add_summary(summary)  # as SummaryWriter.add_hparams does, without its sub-folder
            finally:
                writer.close()
            points += run.points()
        return {"written": len(runs), "values": points}
