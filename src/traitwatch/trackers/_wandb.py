"""Weights & Biases: one W&B run per traitwatch run, grouped by study, offline by default.

Why a fixed run id: W&B keys a run by its id, so the same traitwatch run always goes to the
same W&B run (``<study>-<run>``). Online, a rerun resumes that run and logs only the steps
after the last one W&B has (W&B history only moves forward), then rewrites the summary and
config. Offline (the default: no key, no network) a run is written to
``<dir>/wandb/offline-run-<time>-<id>/``; a rerun first removes the earlier copies of the same
run that were not synced yet, so ``wandb sync`` uploads one copy, not one per rerun.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import Any

from traitwatch.config import StudySpec, WandbTrackerSpec
from traitwatch.errors import ConfigError

from . import _names as names
from ._base import TrackedRun, require

_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_MAX_ID = 64


def run_id(study: str, run: str) -> str:
    """The W&B run id of a traitwatch run: ``<study>-<run>`` in letters, digits, ``_`` and ``-``
    (a hash replaces the tail when that is too long or had to change characters)."""
    raw = f"{study}-{run}"
    safe = _ID_UNSAFE.sub("_", raw)
    if safe == raw and len(safe) <= _MAX_ID:
        return safe
    return f"{safe[: _MAX_ID - 9]}-{hashlib.sha256(raw.encode()).hexdigest()[:8]}"


class WandbTracker:
    """Logs with ``wandb.init(project, group=<study>, name=<run>, id=<study>-<run>)``."""

    kind = "wandb"

    def __init__(self, spec: WandbTrackerSpec, study: StudySpec, out: Path) -> None:
        self.spec = spec
        self.dir = (spec.dir or out).resolve()
        self.study = study.name

    def where(self) -> str:
        if self.spec.mode == "offline":
            return f"wandb sync {self.dir / 'wandb'}/offline-run-*  (then open the project '{self.spec.project}' on wandb.ai)"
        return f"https://wandb.ai, project '{self.spec.project}', group '{self.study}'"

    def offline_dirs(self, run: str) -> list[Path]:
        """This run's offline run folders, oldest first."""
        return sorted((self.dir / "wandb").glob(f"offline-run-*-{run_id(self.study, run)}"))

    def log(self, runs: list[TrackedRun]) -> dict[str, int]:
        wandb = require("wandb")
        self.dir.mkdir(parents=True, exist_ok=True)
        points = 0
        for run in runs:
            if self.spec.mode == "offline":
                for old in self.offline_dirs(run.name):
                    if not any(old.glob("*.synced")):  # `wandb sync` leaves run-<id>.wandb.synced
                        shutil.rmtree(old, ignore_errors=True)
            points += self._write(wandb, run)
        return {"written": len(runs), "values": points}

    def _write(self, wandb: Any, run: TrackedRun) -> int:
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, disable_git=True, save_code=False)
        try:
            live = wandb.init(
                project=self.spec.project,
                entity=self.spec.entity,
                group=run.group,
                name=run.name,
                id=run_id(self.study, run.name),
                job_type="summary" if run.name == names.SUMMARY_RUN else "run",
                tags=[t for t in (run.params.get("run.domain"), run.params.get("run.level")) if t not in (None, "null")],
                dir=str(self.dir),
                mode=self.spec.mode,
                resume="allow" if self.spec.mode == "online" else None,
                reinit="finish_previous",
                settings=settings,
            )
        except wandb.errors.Error as exc:
            raise ConfigError(
                f"wandb could not start a run: {exc}", where="trackers (wandb)", fix="run `wandb login`, or use mode: offline"
            ) from None
        logged = 0
        try:
            live.config.update(run.params, allow_val_change=True)
            first = live.step if live.resumed else 0  # online resume: W&B keeps steps before this one
            for step, values in run.series.items():
                if step >= first:
                    live.log(values, step=step)
                    logged += len(values)
            live.summary.update(run.summary)
            logged += len(run.summary)
        finally:
            live.finish()
        return logged
