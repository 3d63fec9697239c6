"""The calibrate stage: score a set of answers with known low/high levels before full judging.

Why: a judge that cannot tell a malicious answer from a refusal would make every curve
after it meaningless; checking it on a few dozen labelled items costs little and fails the
study early (``calibration.min_accuracy``). The gate reads balanced accuracy, not plain
accuracy, so a judge that scores everything alike cannot pass on a set where one class
dominates; a trait with too few items of a class (``calibration.min_per_class``) fails the
gate too rather than passing on a number that means nothing. Stored judgments are reused
like any other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from traitwatch.data import TraitDef
from traitwatch.errors import JudgeError
from traitwatch.judges import (
    Budget,
    CalibrationItem,
    CalibrationResult,
    Judge,
    Judgment,
    build_judge,
    calibration_requests,
    judgment_key,
    load_calibration,
    score_calibration,
)
from traitwatch.progress import stage_progress
from traitwatch.store import Store

from ._context import StudyContext


def calibrate(
    ctx: StudyContext, store: Store, *, only: str | None = None, set_ref: str | None = None, budget: Budget | None = None
) -> list[CalibrationResult]:
    """Score the calibration set with every LLM judge (stored judgments are reused)."""
    from ._judge import study_budget

    items = load_calibration(set_ref or ctx.spec.calibration.set)
    traits = ctx.suites.traits()
    budget = budget or study_budget(ctx, store)
    out: list[CalibrationResult] = []
    for jspec in ctx.spec.judges:
        if jspec.kind in ("check", "activation") or (only is not None and jspec.name != only):
            continue  # checkers are exact by construction: nothing to calibrate
        judge = build_judge(jspec, base=lambda: ctx.base, budget=budget)
        out.extend(_calibrate_one(ctx, store, judge, items, traits))
    return out


def _calibrate_one(
    ctx: StudyContext, store: Store, judge: Judge, items: Sequence[CalibrationItem], traits: Mapping[str, TraitDef]
) -> list[CalibrationResult]:
    """One judge on the calibration items: stored judgments reused, new ones stored as they come."""
    from ._judge import judgment_row

    pairs = calibration_requests(items, traits, judge)
    keys = [judgment_key(judge, req) for _, req in pairs]
    stored = {j.judgment_key: j for j in store.judgments(keys)}
    todo = [i for i, k in enumerate(keys) if k not in stored]
    results: list[Judgment | None] = [None] * len(pairs)
    for i, k in enumerate(keys):
        if k in stored:
            j = stored[k]
            results[i] = Judgment(j.score, j.reason, j.method, j.raw)

    if todo:
        with stage_progress(f"calibrate {judge.name}", len(todo)) as bar:

            def on_result(k: int, res: Judgment) -> None:
                i = todo[k]
                results[i] = res
                if not res.failed:
                    store.add_judgments([judgment_row(judge, keys[i], pairs[i][1], res)], [])
                bar.advance()

            judge.judge([pairs[i][1] for i in todo], on_result=on_result)
    return score_calibration(judge.name, pairs, results, ctx.spec.calibration.cut)


def gate(ctx: StudyContext, results: Sequence[CalibrationResult]) -> None:
    """Raise JudgeError when a gated judge has too few items of a class on a trait, or a
    balanced accuracy below calibration.min_accuracy on it (the first such trait)."""
    spec = ctx.spec.calibration
    need = spec.min_accuracy
    if need <= 0:
        return
    for r in results:
        thin = r.too_few(spec.min_per_class)
        if thin is not None:
            raise JudgeError(
                f"{thin} of trait {r.trait} for judge '{r.judge}' ({r.n_high} high, {r.n_low} low; "
                f"calibration.min_per_class is {spec.min_per_class})",
                where="calibration.set",
                fix=f"add {r.trait} items of the missing class to the calibration set, or lower calibration.min_per_class",
            )
        balanced = r.balanced_accuracy or 0.0
        if balanced < need:
            shown = ", ".join(f"{i} (expected {w}, got {'none' if s is None else f'{s:.0f}'})" for i, w, s in r.failures[:4])
            raise JudgeError(
                f"judge '{r.judge}' has a balanced accuracy of {balanced:.0%} on the calibration set for trait {r.trait} "
                f"(minimum {need:.0%}; high {r.correct_high} of {r.n_high} right, low {r.correct_low} of {r.n_low} right, "
                f"plain accuracy {r.accuracy:.0%}; wrong: {shown})",
                where=f"judge {r.judge}",
                fix="use a stronger judge or a clearer rubric, or lower calibration.min_accuracy",
            )
