"""A study's work, counted before it runs: runs, checkpoints, answers, judgments, tokens and
cost, and how much of it the store already holds (``traitwatch plan``; docs/cluster.md).

Why counted and not run: a paper-scale study is thousands of checkpoints and millions of
answers; how many machines (and dollars) it needs should be known before the first step. Every
count follows the rule the stage itself uses (``train._loop`` saves step 0, every
``save_every``-th step and the last; ``_plan.evaluated_steps`` picks the evaluated and judged
checkpoints; a judge scores the traits its ``can_score`` accepts), so a finished study holds
exactly the counted rows. It loads the datasets (a run's steps depend on their size), never a
model: a run's steps are counted from its examples before tokenization.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitwatch.judges import Budget, JudgeRequest, build_judge
from traitwatch.judges._openai import OpenAIJudge
from traitwatch.store import Store
from traitwatch.train import ADAPTER_FILE

from ._context import StudyContext
from ._layout import EXTERNAL_SOURCES
from ._plan import evaluated_steps, plan_runs, settings_meta_key
from ._train import run_steps

#: Characters per token of an answer not generated yet, which is taken as ``max_new_tokens``
#: long (an upper bound: answers stop early); once the store holds answers, their mean length.
ANSWER_CHARS_PER_TOKEN = 4


def checkpoint_steps(total: int, save_every: int) -> list[int]:
    """The steps training saves a checkpoint at: 0, every ``save_every``-th, and the last."""
    return sorted(set(range(0, total + 1, save_every)) | {total})


@dataclass
class RunWork:
    """One run's work: training steps, checkpoints, evaluated checkpoints and answers."""

    run_id: str
    source: str  # "planned" (trained by this study), or import / hf-trainer / watch
    steps: int  # optimizer steps of the run (0: trained elsewhere)
    steps_done: int  # the last stored checkpoint's step (training resumes there)
    checkpoints: list[int]  # the steps it saves (a stopped or external run: those stored)
    checkpoints_stored: int
    evaluated: list[int]  # the checkpoints the generate stage answers at
    answers: int
    answers_stored: int


@dataclass
class JudgeWork:
    """One judge's work: judgments (answer x trait links), and for API judges tokens and cost."""

    name: str
    kind: str
    traits: list[str]
    judgments: int
    stored: int
    per_checkpoint: int  # judgments per judged checkpoint
    left_by_run: dict[str, int]
    input_tokens: float | None = None  # of the judgments left (API judges)
    output_tokens: float | None = None
    cost_usd: float | None = None  # of the judgments left, at the judge's prices (API judges)
    spent_usd: float = 0.0  # what the store's judgments of this judge cost

    @property
    def left(self) -> int:
        return self.judgments - self.stored


@dataclass
class StudyWork:
    """Everything ``traitwatch plan`` counts (docs/cluster.md defines each number)."""

    study: str
    per_checkpoint: int  # answers per evaluated checkpoint: questions x samples
    runs: list[RunWork]
    judges: list[JudgeWork]
    notes: list[str] = field(default_factory=list)

    def totals(self) -> dict[str, int]:
        r = self.runs
        return {
            "runs": len(r),
            "runs_trained": sum(1 for x in r if x.steps_done >= x.steps),
            "steps": sum(x.steps for x in r),
            "steps_done": sum(min(x.steps_done, x.steps) for x in r),
            "checkpoints": sum(len(x.checkpoints) for x in r),
            "checkpoints_stored": sum(x.checkpoints_stored for x in r),
            "evaluated_checkpoints": sum(len(x.evaluated) for x in r),
            "answers": sum(x.answers for x in r),
            "answers_stored": sum(x.answers_stored for x in r),
        }

    def to_dict(self) -> dict[str, Any]:
        runs = [{k: v for k, v in vars(x).items() if k not in ("checkpoints", "evaluated")} for x in self.runs]
        for d, x in zip(runs, self.runs, strict=True):
            d |= {"checkpoints": len(x.checkpoints), "evaluated_checkpoints": len(x.evaluated)}
        judges = [{k: v for k, v in vars(j).items() if k != "left_by_run"} | {"left": j.left} for j in self.judges]
        return {"study": self.study, "answers_per_checkpoint": self.per_checkpoint, "totals": self.totals(), "runs": runs, "judges": judges}


#: A condition on the store's answers ``g`` (SQL, parameters): this spec's generation settings,
#: questions and samples, so answers to questions or samples the spec dropped since do not count.
Asked = tuple[str, list[Any]]


def _asked(ctx: StudyContext, settings: str | None) -> Asked | None:
    pairs = [v for s in ctx.suites.suites for q in s.questions for v in (s.name, q.id)]
    if settings is None or not pairs:
        return None
    values = ",".join(["(?, ?)"] * (len(pairs) // 2))
    cond = f"g.settings_hash = ? AND g.sample < ? AND (g.suite, g.question_id) IN (VALUES {values})"
    return cond, [settings, ctx.spec.generation.samples_per_question, *pairs]


def _answers_at(store: Store | None, asked: Asked | None) -> dict[tuple[str, int], int]:
    if store is None or asked is None:
        return {}
    sql = f"SELECT g.run_id, g.step, COUNT(*) FROM generations g WHERE {asked[0]} GROUP BY g.run_id, g.step"
    return {(r[0], int(r[1])): int(r[2]) for r in store.conn.execute(sql, asked[1])}


def _links(store: Store | None, asked: Asked | None) -> dict[str, list[tuple[str, int, str, str, int]]]:
    """judge name -> (run, step, suite, trait, links stored) for the asked answers."""
    out: dict[str, list[tuple[str, int, str, str, int]]] = defaultdict(list)
    if store is None or asked is None:
        return out
    sql = (
        "SELECT s.judge, g.run_id, g.step, g.suite, s.trait, COUNT(*) FROM scores s JOIN generations g ON g.gen_key = s.gen_key"
        f" WHERE {asked[0]} GROUP BY s.judge, g.run_id, g.step, g.suite, s.trait"
    )
    for j, run, step, suite, trait, n in store.conn.execute(sql, asked[1]):
        out[j].append((run, int(step), suite, trait, int(n)))
    return out


def _run_work(
    ctx: StudyContext, store: Store | None, answers_at: dict[tuple[str, int], int], per_ck: int, notes: list[str]
) -> list[RunWork]:
    spec = ctx.spec
    stored_runs = {r["run_id"]: r for r in store.runs()} if store is not None else {}
    stored_cks: dict[str, list[Any]] = defaultdict(list)
    for c in store.checkpoints() if store is not None else []:
        stored_cks[c.run_id].append(c)
    out: list[RunWork] = []

    def add(rid: str, source: str, steps: int, done: int, cks: list[int], have: set[int]) -> None:
        ev = evaluated_steps(cks, spec.generation.every)
        got = sum(min(per_ck, answers_at.get((rid, s), 0)) for s in ev)
        out.append(RunWork(rid, source, steps, done, cks, len(have & set(cks)), ev, len(ev) * per_ck, got))

    for plan in plan_runs(spec, ""):  # the model's identity only names the run's fingerprint
        row = stored_runs.pop(plan.run_id, None)
        if not ctx.wants(plan.run_id):  # --runs: only the matching runs' work
            continue
        have = {c.step for c in stored_cks.get(plan.run_id, [])}
        steps = run_steps(plan)
        if row is not None and row["total_steps"] and row["total_steps"] != steps:
            notes.append(
                f"run {plan.run_id}: the store says {row['total_steps']} steps, the spec gives {steps} (examples that"
                " max_length leaves without an answer token are dropped, or the settings changed); counted as the store says"
            )
            steps = int(row["total_steps"])
        status = row["status"] if row is not None else "planned"
        if status == "stopped_early" and have:
            steps = max(have)
        done = steps if status in ("trained", "stopped_early") else max(have, default=0)
        cks = sorted(have) if status == "stopped_early" else checkpoint_steps(steps, spec.training.save_every)
        add(plan.run_id, "planned", steps, done, cks, have)
    for rid, row in stored_runs.items():
        source = (row["info"] or {}).get("source")
        if source in EXTERNAL_SOURCES and ctx.wants(rid):
            present = {c.step for c in stored_cks.get(rid, []) if (Path(c.path) / ADAPTER_FILE).exists()}
            add(rid, str(source), 0, 0, sorted(present), present)
    return out


def _judge_work(ctx: StudyContext, store: Store | None, runs: list[RunWork], links: dict[str, Any], answer_chars: int) -> list[JudgeWork]:
    spec, suites = ctx.spec, ctx.suites.suites
    samples = spec.generation.samples_per_question
    spent = store.spend() if store is not None else {}
    out = []
    for jspec in spec.judges:
        judge = build_judge(jspec, base=lambda: ctx.base, budget=Budget(None))  # builds, loads nothing
        scored = {
            s.name: [t for t, d in s.traits.items() if judge.can_score(d) and (jspec.traits is None or t in jspec.traits)] for s in suites
        }
        per_ck = sum(len(s.questions) * samples * len(scored[s.name]) for s in suites)
        judged = {r.run_id: set(evaluated_steps(r.evaluated, jspec.every)) for r in runs}
        have_run: dict[str, int] = defaultdict(int)
        have_pair: dict[tuple[str, str], int] = defaultdict(int)
        for run, step, suite, trait, n in links.get(jspec.name, []):
            if step in judged.get(run, ()) and trait in scored.get(suite, ()):
                have_run[run] += n
                have_pair[(suite, trait)] += n
        total = sum(len(j) for j in judged.values()) * per_ck
        work = JudgeWork(
            jspec.name,
            jspec.kind,
            sorted({t for ts in scored.values() for t in ts}),
            total,
            sum(have_run.values()),
            per_ck,
            {rid: len(j) * per_ck - have_run[rid] for rid, j in judged.items()},
            spent_usd=float(spent.get(jspec.name, {}).get("cost_usd", 0.0)),
        )
        if isinstance(judge, OpenAIJudge):
            tin = tout = cost = 0.0
            answer = "x" * answer_chars
            for s in suites:
                for t in scored[s.name]:
                    reqs = [JudgeRequest(t, s.traits[t], q.text, answer, {"expected": q.expected}) for q in s.questions]
                    if not reqs:
                        continue
                    left = sum(len(j) for j in judged.values()) * len(s.questions) * samples - have_pair[(s.name, t)]
                    tokens = [judge.estimate_tokens(r) for r in reqs]
                    tin += left * sum(a for a, _ in tokens) / len(reqs)
                    tout += left * sum(b for _, b in tokens) / len(reqs)
                    cost += left * sum(judge.estimate_cost(r) for r in reqs) / len(reqs)
            work.input_tokens, work.output_tokens, work.cost_usd = round(tin), round(tout), cost
        out.append(work)
    return out


def count_work(ctx: StudyContext, store: Store | None) -> StudyWork:
    """The study's work and what ``store`` (None: nothing stored yet) already holds."""
    spec = ctx.spec
    settings = store.get_meta(settings_meta_key(spec)) if store is not None else None
    per_ck = sum(len(s.questions) for s in ctx.suites.suites) * spec.generation.samples_per_question
    notes: list[str] = []
    asked = _asked(ctx, settings)
    if store is not None and settings is None and store.conn.execute("SELECT 1 FROM generations LIMIT 1").fetchone():
        notes.append(
            "the store's answers were made under another generation: section (or before it was edited): counted as not"
            " stored; the generate stage (which loads the model) reuses those whose settings hash still matches"
        )
    runs = _run_work(ctx, store, _answers_at(store, asked), per_ck, notes)
    chars = spec.generation.max_new_tokens * ANSWER_CHARS_PER_TOKEN
    if store is not None and asked is not None:
        mean = store.conn.execute(f"SELECT AVG(LENGTH(g.answer)) FROM generations g WHERE {asked[0]}", asked[1]).fetchone()[0]
        chars = int(round(mean)) if mean is not None else chars
    judges = _judge_work(ctx, store, runs, _links(store, asked), chars)
    if not runs:
        notes.append("the study has no datasets and its store holds no runs trained elsewhere: nothing to do")
    return StudyWork(spec.name, per_ck, runs, judges, notes)
