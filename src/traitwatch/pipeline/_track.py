"""The track stage: log the study's curves and results to the spec's experiment trackers.

Why after ``analyze`` and from the store: the numbers researchers watch (trait means with
bootstrap CIs, onsets, leads, interventions) exist only once the analysis has run, and
logging what the store and the analysis hold makes the stage rerunnable at any time
(``traitwatch track``) without duplicating points. See ``traitwatch.trackers``.
"""

from __future__ import annotations

import time

from traitwatch.analysis import StudyAnalysis
from traitwatch.store import Store

from ._context import StageResult, StudyContext


def track(ctx: StudyContext, store: Store, analysis: StudyAnalysis | None = None) -> StageResult:
    """Log every run to every tracker of ``ctx.spec.trackers``; per tracker kind a line of
    counts (runs written, unchanged, values) and the command that opens it."""
    from traitwatch.analysis import analyze as analyze_study
    from traitwatch.trackers import log_study

    t0 = time.time()
    if analysis is None:
        analysis = analyze_study(store, ctx.spec, ctx.settings_hash(store))
    logged = log_study(ctx.spec, analysis, ctx.paths.out)
    counts = {kind: ", ".join(f"{k} {v}" for k, v in c.items() if k != "open") + f"; open with: {c['open']}" for kind, c in logged.items()}
    return StageResult("track", time.time() - t0, counts)
