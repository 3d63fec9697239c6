"""The judge stage: every stored answer scored by every judge, for every trait it can score.

Why links and keys: a judgment is keyed by (judge identity, trait, rubric or checker, exact
input), so the same answer given at 30 checkpoints is judged once and linked 30 times, and a
rerun sends no request whose judgment is stored. The stage never asks which kind of judge it
holds: batch size, flush cadence, cost estimate and preflight all come from the ``Judge``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from traitwatch.config import ActivationJudgeSpec, JudgeSpec, OpenAIJudgeSpec, StudySpec
from traitwatch.errors import BudgetExceeded, JudgeError
from traitwatch.judges import Budget, Judge, JudgeRequest, Judgment, build_judge, judgment_key
from traitwatch.progress import console, stage_progress
from traitwatch.store import JudgmentRow, Store

from ._calibrate import calibrate, gate
from ._context import StageResult, StudyContext
from ._plan import evaluated_steps

if TYPE_CHECKING:
    from traitwatch.activation import DirectionSource

#: (gen_key, judge name, trait, judgment_key): an answer's score for one trait by one judge.
Link = tuple[str, str, str, str]
#: (gen_key, trait, judgment_key, request) still to link.
Work = tuple[str, str, str, JudgeRequest]
#: Sends (judgment_key, request) pairs and stores the judgments with their links: ``_send`` here,
#: or the Ray executor's, which scores a model-running judge's batches on workers.
Send = Callable[[Judge, list[tuple[str, JudgeRequest]], dict[str, list[Link]], Store, Budget, Callable[[int], None]], tuple[int, list[str]]]


def make_judge(ctx: StudyContext, name: str, budget: Budget) -> Judge:
    """The study's judge called ``name``, built from its spec."""
    spec = next(j for j in ctx.spec.judges if j.name == name)
    return build_judge(spec, base=lambda: ctx.base, budget=budget, directions=study_directions(ctx, spec, budget))


def study_directions(ctx: StudyContext, spec: JudgeSpec, budget: Budget) -> DirectionSource | None:
    """Where an activation judge keeps its trait directions: ``<output_dir>/activation/``, read
    from the questions of the suite that defines each trait, filtered by ``spec.filter_judge``
    (None for a judge of another kind)."""
    if not isinstance(spec, ActivationJudgeSpec):
        return None
    from traitwatch.activation import DirectionSource, ExtractionSettings

    traits = {t: (d, s) for s in ctx.suites.suites for t, d in s.traits.items() if d.instructions}
    settings = ExtractionSettings(
        samples=spec.samples,
        max_new_tokens=spec.max_new_tokens,
        temperature=spec.temperature,
        seed=spec.seed,
        threshold=spec.threshold,
        layer=spec.layer,
    )
    fname = spec.filter_judge
    return DirectionSource(
        folder=ctx.paths.out / "activation",
        questions={t: [(q.text, q.expected) for q in s.questions] for t, (_, s) in traits.items()},
        filter_judge=None if fname is None else (lambda: make_judge(ctx, fname, budget)),
        settings=settings,
        definitions={t: d for t, (d, _) in traits.items()},
        batch_size=spec.batch_size,
    )


def study_budget(ctx: StudyContext, store: Store) -> Budget:
    """The spending cap with what the study has already spent."""
    return Budget(ctx.spec.budget.max_usd, sum(v["cost_usd"] for v in store.spend().values()))


def judgment_row(judge: Judge, key: str, req: JudgeRequest, res: Judgment) -> JudgmentRow:
    return JudgmentRow(
        judgment_key=key,
        judge=judge.name,
        judge_identity=judge.identity,
        trait=req.trait,
        scoring_hash=judge.scoring_hash(req.definition),
        prompt_hash=judge.prompt_hash(req),
        score=res.score,
        reason=res.reason,
        method=res.method,
        raw=res.raw,
        input_tokens=res.input_tokens,
        output_tokens=res.output_tokens,
        cost_usd=res.cost_usd,
    )


def judge_work(ctx: StudyContext, store: Store, judge: Judge, jspec: JudgeSpec) -> tuple[list[Work], int]:
    """(gen_key, trait, judgment_key, request) still to link for this judge, and how many are linked
    (answers of the runs ``ctx.runs`` matches: ``--runs``)."""
    suites = {s.name: s for s in ctx.suites.suites}
    questions = {(s.name, q.id): q for s in ctx.suites.suites for q in s.questions}
    checkpoints = {(c.run_id, c.step): c for c in store.checkpoints()}  # the activation judge reads the checkpoint
    linked = store.linked(judge.name)
    work: list[Work] = []
    done = 0
    gens = [g for g in store.generations(settings_hash=ctx.settings_hash(store)) if ctx.wants(g.run_id)]
    steps_by_run: dict[str, set[int]] = {}
    for g in gens:
        steps_by_run.setdefault(g.run_id, set()).add(g.step)
    judged = {r: set(evaluated_steps(sorted(s), jspec.every)) for r, s in steps_by_run.items()}
    for g in gens:
        suite = suites.get(g.suite)
        if suite is None or g.step not in judged[g.run_id]:
            continue
        q = questions.get((g.suite, g.question_id))
        for trait, tdef in suite.traits.items():
            if not judge.can_score(tdef) or (jspec.traits is not None and trait not in jspec.traits):
                continue
            ck = checkpoints.get((g.run_id, g.step))
            context = {"expected": q.expected if q else None, "probes": g.probes}
            if ck is not None:
                context |= {"adapter": ck.path, "adapter_sha": ck.adapter_sha}
            req = JudgeRequest(trait, tdef, g.question, g.answer, context)
            key = judgment_key(judge, req)
            if linked.get((g.gen_key, trait)) == key:
                done += 1
                continue
            work.append((g.gen_key, trait, key, req))
    return work, done


def kept(
    judge: Judge, key: str, req: JudgeRequest, res: Judgment, links: dict[str, list[Link]], failures: list[str]
) -> tuple[JudgmentRow, list[Link]] | None:
    """A judgment to store with its links, or None for a request that got no answer (its reason
    goes to ``failures``; left unstored so the next run asks again). Used by ``_send`` and the
    Ray executor's sender, so both store exactly the same."""
    if res.failed:
        failures.append(res.reason or "failed")
        return None
    return judgment_row(judge, key, req, res), links[key]


def _send(
    judge: Judge,
    todo: list[tuple[str, JudgeRequest]],
    links: dict[str, list[Link]],
    store: Store,
    budget: Budget,
    advance: Callable[[int], None],
) -> tuple[int, list[str]]:
    """Send requests in the judge's batches; store each result as the judge's flush cadence says."""
    made = 0
    failures: list[str] = []
    pending: list[tuple[JudgmentRow, list[Link]]] = []
    part: list[tuple[str, JudgeRequest]] = []  # the batch in flight; on_result indexes into it

    def flush() -> None:
        if pending:
            store.add_judgments([r for r, _ in pending], [link for _, ls in pending for link in ls])
            pending.clear()

    def on_result(k: int, res: Judgment) -> None:
        row = kept(judge, *part[k], res, links, failures)
        if row is not None:
            pending.append(row)
            if len(pending) >= judge.flush_every:
                flush()

    for i in range(0, len(todo), judge.batch_size):
        part[:] = todo[i : i + judge.batch_size]
        try:
            results = judge.judge([r for _, r in part], on_result=on_result)
        finally:
            flush()
        made += sum(1 for r in results if r is not None and not r.failed)
        advance(len(part))
        if budget.exhausted:
            raise BudgetExceeded(
                f"spending cap of ${budget.max_usd or 0:.2f} reached after ${budget.spent_usd:.2f}; {made} new judgments stored",
                where=f"judge {judge.name}",
                fix="raise budget.max_usd in the study and rerun; nothing already judged will be sent again",
            )
    return made, failures


def judge_one(
    ctx: StudyContext, store: Store, jspec: JudgeSpec, budget: Budget, *, dry_run: bool = False, remote: Send | None = None
) -> dict[str, Any]:
    """Link every answer to this judge's judgment, sending only requests not stored anywhere.

    ``remote``: how to send a judge that runs a model (``runs_model``), e.g. to Ray workers.
    """
    judge = make_judge(ctx, jspec.name, budget)
    send: Send = remote if remote is not None and judge.runs_model else _send
    work, done = judge_work(ctx, store, judge, jspec)
    keys = sorted({k for _, _, k, _ in work})
    stored = store.existing("judgments", "judgment_key", keys)
    cache = None if dry_run else ctx.open_cache()
    try:
        if cache is not None:
            stored |= store.copy_judgments([k for k in keys if k not in stored], cache)  # reused: no cost here
        fresh: dict[str, JudgeRequest] = {}
        for _, _, k, req in work:
            if k not in stored:
                fresh.setdefault(k, req)
        if dry_run:
            cost = sum(judge.estimate_cost(r) for r in fresh.values())
            return {"requests": len(fresh), "links": len(work), "already": done, "estimated_usd": round(cost, 4)}
        reuse = [(g, judge.name, t, k) for g, t, k, _ in work if k in stored]  # judged before: link only
        if reuse:
            store.add_judgments([], reuse)
        links: dict[str, list[Link]] = {}
        for g, t, k, _ in work:
            if k not in stored:
                links.setdefault(k, []).append((g, judge.name, t, k))
        todo = list(fresh.items())
        with stage_progress(f"judge {judge.name}", len(todo)) as bar:
            made, failures = send(judge, todo, links, store, budget, bar.advance)
        if cache is not None:
            cache.copy_judgments([k for k in keys if k not in stored], store)
    finally:
        if cache is not None:
            cache.close()
    if failures:
        raise JudgeError(
            f"{len(failures)} of {len(todo)} requests got no usable answer (first: {failures[0]}); {made} judgments stored",
            where=f"judge {judge.name}",
            fix="check the endpoint and rerun traitwatch judge; only the failed requests are sent again",
        )
    return {"new": made, "reused": len(reuse), "already": done, "links": len(work)}


def unpriced_judges(spec: StudySpec, only: str | None = None) -> list[str]:
    """Why ``budget.max_usd`` cannot limit some API judges, one line each: the cap is set and the
    judge (kind openai) gives neither price, so its requests count as free. A price given as 0
    (a free server) is a price: no line."""
    cap = spec.budget.max_usd
    if cap is None:
        return []
    prices = {"price_input_per_mtok", "price_output_per_mtok"}
    return [
        f"judge {j.name} ({j.model}) has no prices, so budget.max_usd (${cap:g}) cannot limit what it spends."
        " Fix: set its price_input_per_mtok and price_output_per_mtok (USD per million tokens, from the provider's price list;"
        " 0 for a free server)"
        for j in spec.judges
        if isinstance(j, OpenAIJudgeSpec) and (only is None or j.name == only) and not prices & j.model_fields_set
    ]


def warn_unpriced(spec: StudySpec, only: str | None = None) -> None:
    """Print :func:`unpriced_judges` as warnings (before any request is sent)."""
    for line in unpriced_judges(spec, only):
        console.print("[yellow]warning:[/yellow] " + line.replace("[", "\\["), soft_wrap=True)


def judge(ctx: StudyContext, store: Store, *, dry_run: bool = False, only: str | None = None, remote: Send | None = None) -> StageResult:
    """Score every stored answer with the study's judges (or only the one named ``only``)."""
    t0 = time.time()
    warn_unpriced(ctx.spec, only)
    budget = study_budget(ctx, store)
    if ctx.spec.calibration.min_accuracy > 0 and not dry_run:
        gate(ctx, calibrate(ctx, store, only=only, budget=budget))
    counts = {
        j.name: judge_one(ctx, store, j, budget, dry_run=dry_run, remote=remote) for j in ctx.spec.judges if only is None or j.name == only
    }
    return StageResult("judge", time.time() - t0, counts)
