"""The analyze stage: curves, onsets, leads and agreement from what the store holds.

Why a stage of its own: it reads only the store (no model), so it reruns in seconds after
any change to detectors or leads, and its CSVs are the numbers the report shows.
"""

from __future__ import annotations

import time

from traitwatch.analysis import StudyAnalysis, write_csvs
from traitwatch.analysis import analyze as analyze_study
from traitwatch.store import Store

from ._context import StageResult, StudyContext


def analyze(ctx: StudyContext, store: Store) -> tuple[StudyAnalysis, StageResult]:
    """Analyse the study and write ``analysis/*.csv``."""
    t0 = time.time()
    result = analyze_study(store, ctx.spec, ctx.settings_hash(store))
    files = write_csvs(result, ctx.paths.analysis)
    return result, StageResult("analyze", time.time() - t0, {"curves": len(result.curves), "files": [str(f) for f in files]})
