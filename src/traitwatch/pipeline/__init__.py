"""The study pipeline: one module per stage, each a function of (StudyContext, Store).

plan -> preflight -> train -> generate -> judge (calibrate first when gated) -> analyze -> track -> report.
``run_stages`` runs any subset in order; ``traitwatch.Study`` and the CLI both call it.
"""

from ._analyze import analyze
from ._calibrate import calibrate, gate
from ._context import StageResult, StudyContext, StudyPaths
from ._generate import generate
from ._judge import judge
from ._plan import load_suites
from ._preflight import check_names, preflight
from ._report import report
from ._run import STAGES, check_stages, run_stages
from ._track import track
from ._train import train

__all__ = [
    "STAGES",
    "StageResult",
    "StudyContext",
    "StudyPaths",
    "analyze",
    "calibrate",
    "check_names",
    "check_stages",
    "generate",
    "gate",
    "judge",
    "load_suites",
    "preflight",
    "report",
    "run_stages",
    "track",
    "train",
]
