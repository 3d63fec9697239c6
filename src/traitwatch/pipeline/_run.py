"""Run stages in order: the one loop shared by ``traitwatch run``, ``demo`` and ``Study.run``.

Why one loop: the CLI and the Python API are two faces of the same pipeline, so the order,
the preflight and the hand-over of the analysis to the report live in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from traitwatch.analysis import StudyAnalysis
from traitwatch.errors import ConfigError
from traitwatch.train import TrainCallback

from ._analyze import analyze
from ._context import StageResult, StudyContext
from ._generate import generate
from ._judge import judge
from ._preflight import preflight
from ._report import report
from ._track import track
from ._train import train

#: The stages of a study, in the order they run. Each reads only what earlier ones stored.
#: ``track`` (log to the spec's experiment trackers) does nothing when the spec has none.
STAGES: tuple[str, ...] = ("train", "generate", "judge", "analyze", "track", "report")


def check_stages(stages: Sequence[str]) -> list[str]:
    """The stage names, validated; ``evaluate`` (the old name of ``generate``) is accepted."""
    names = ["generate" if s == "evaluate" else s for s in stages]
    bad = [s for s in names if s not in STAGES]
    if bad:
        raise ConfigError(f"unknown stage {', '.join(bad)}", where="stages", fix=f"use some of {', '.join(STAGES)}")
    return names


def run_stages(
    ctx: StudyContext,
    stages: Sequence[str] = STAGES,
    *,
    callbacks: Sequence[TrainCallback] = (),
    on_stage: Callable[[StageResult], None] | None = None,
) -> tuple[list[StageResult], Path | None]:
    """Run the named stages in order; returns their results and the report path (if made)."""
    names = check_stages(stages)
    preflight(ctx)
    results: list[StageResult] = []
    report_path: Path | None = None
    analysis: StudyAnalysis | None = None
    with ctx.open_store() as store:
        distributed: dict[str, StageResult] = {}
        if ctx.spec.executor.kind == "ray":  # train, generate and judge on Ray; the rest here
            from ._ray import ray_stages

            if callbacks and "train" in names:
                raise ConfigError(
                    "training callbacks run in the training process, which executor ray does not offer",
                    where="executor.kind",
                    fix="train locally to use callbacks, or follow the runs with `traitwatch watch`",
                )

            distributed = ray_stages(ctx, store, names)
        for stage in names:
            if stage in distributed:
                res = distributed[stage]
            elif stage == "train":
                res = train(ctx, store, callbacks=callbacks)
            elif stage == "generate":
                res = generate(ctx, store)
            elif stage == "judge":
                res = judge(ctx, store)
            elif stage == "analyze":
                analysis, res = analyze(ctx, store)
            elif stage == "track":
                if not ctx.spec.trackers:
                    continue
                if analysis is None:
                    analysis, _ = analyze(ctx, store)
                res = track(ctx, store, analysis)
            else:
                if analysis is None:
                    analysis, _ = analyze(ctx, store)
                report_path, res = report(ctx, store, analysis, timings=results)
            results.append(res)
            if on_stage:
                on_stage(res)
    return results, report_path
