"""Experiment trackers: the study's curves and results in MLflow, TensorBoard or W&B.

Why after the analysis, from the store: every number a tracker shows (trait means with their
bootstrap CIs, losses, live alarms, onsets, leads, interventions) already exists once
``analyze`` has run, and only there are the CIs and onsets known. Logging them from the store
and the analysis makes tracking a stage like the others: it can run alone
(``traitwatch track study.yaml``, also while a study is still training), it is idempotent (a
rerun adds no duplicate points; see each backend), and a tracker failing never loses stored
work. Live logging inside the training loop would show a curve a few minutes sooner but
without CIs or onsets, and would tie training to a tracker's server; the live monitor
already raises alarms during training.

One module per backend (``_mlflow``, ``_tensorboard``, ``_wandb``), each importing its
package only when used; names in ``_names``; what is logged in ``_collect``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traitwatch.config import TRACKER_KINDS, StudySpec, TrackerSpec
from traitwatch.errors import ConfigError

from . import _names as names
from ._base import INSTALL, PACKAGES, TrackedRun, Tracker, check_installed, require
from ._collect import flatten, spec_params, tracked_runs

if TYPE_CHECKING:
    from traitwatch.analysis import StudyAnalysis

__all__ = [
    "INSTALL",
    "PACKAGES",
    "TrackedRun",
    "Tracker",
    "build_tracker",
    "check_installed",
    "check_trackers",
    "flatten",
    "log_study",
    "names",
    "require",
    "spec_params",
    "tracked_runs",
    "with_trackers",
]


def build_tracker(spec: TrackerSpec, study: StudySpec, out: Path) -> Tracker:
    """The backend for one ``trackers[]`` entry; ``out`` is the study's output folder (defaults live there)."""
    from traitwatch.config import MlflowTrackerSpec, TensorBoardTrackerSpec

    if isinstance(spec, MlflowTrackerSpec):
        from ._mlflow import MlflowTracker

        return MlflowTracker(spec, study, out)
    if isinstance(spec, TensorBoardTrackerSpec):
        from ._tensorboard import TensorBoardTracker

        return TensorBoardTracker(spec, study, out)
    from ._wandb import WandbTracker

    return WandbTracker(spec, study, out)


def with_trackers(spec: StudySpec, kinds: Sequence[str]) -> StudySpec:
    """The spec with a tracker of each kind in ``kinds`` added with its defaults (``--tracker``);
    a kind the spec already has keeps the spec's settings."""
    from pydantic import TypeAdapter

    have = {t.kind for t in spec.trackers}
    added: list[Any] = []
    for kind in kinds:
        if kind not in TRACKER_KINDS:
            raise ConfigError(f"unknown tracker '{kind}'", where="--tracker", fix=f"use one of {', '.join(TRACKER_KINDS)}")
        if kind not in have:
            have.add(kind)
            added.append(TypeAdapter(TrackerSpec).validate_python({"kind": kind}))
    if not added:
        return spec
    return spec.model_copy(update={"trackers": [*spec.trackers, *added]})


def check_trackers(spec: StudySpec) -> None:
    """Before any work: every configured tracker's package is installed."""
    check_installed([t.kind for t in spec.trackers])


def log_study(spec: StudySpec, analysis: StudyAnalysis, out: Path) -> dict[str, dict[str, Any]]:
    """Log the study to every tracker of ``spec``; returns per tracker kind its counts and where to look."""
    runs: list[TrackedRun] = tracked_runs(spec, analysis)
    result: dict[str, dict[str, Any]] = {}
    kinds: list[str] = [t.kind for t in spec.trackers]
    for i, tspec in enumerate(spec.trackers):
        tracker = build_tracker(tspec, spec, out)
        key = tracker.kind if kinds.count(tracker.kind) == 1 else f"{tracker.kind}[{i}]"
        result[key] = tracker.log(runs) | {"open": tracker.where()}
    return result
