"""The study pipeline: plan runs, then train -> generate -> judge -> analyze -> report."""

from ._plan import GENERATION_VERSION, Suites, evaluated_steps, generation_settings_hash, load_suites, plan_runs, run_id, study_paths
from ._stages import StageResult, StudyRunner

__all__ = [
    "GENERATION_VERSION",
    "StageResult",
    "StudyRunner",
    "Suites",
    "evaluated_steps",
    "generation_settings_hash",
    "load_suites",
    "plan_runs",
    "run_id",
    "study_paths",
]
