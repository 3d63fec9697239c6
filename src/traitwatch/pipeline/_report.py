"""The report stage: one self-contained HTML file and paper-style PNG figures.

Why it takes the analysis as an argument: the report shows exactly the numbers ``analyze``
computed (and wrote as CSV); it computes no statistics of its own.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from traitwatch.analysis import StudyAnalysis
from traitwatch.store import Store

from ._context import StageResult, StudyContext


def report(ctx: StudyContext, store: Store, analysis: StudyAnalysis, *, timings: Sequence[StageResult] = ()) -> tuple[Path, StageResult]:
    """Write ``report/report.html`` and the figures; returns the HTML path."""
    from traitwatch.report import write_report

    t0 = time.time()
    judges = {j.name: {"kind": j.kind, "weak": j.weak, "model": j.label()} for j in ctx.spec.judges}
    path = write_report(ctx.paths.report, ctx.spec, analysis, store, judges=judges, timings=timings)
    return path, StageResult("report", time.time() - t0, {"path": str(path)})
