"""How long a study's work takes on 1 and on N workers (``traitwatch plan``; docs/cluster.md).

Why a model of the time and not a guess: the work is counted exactly (``_estimate``), so the
only unknowns are one worker's rates: training steps, answers and judgments per second. Each is
taken, in this order, from the spec (``executor.throughput``), from this study's store when it
has done some of that work, or from a short measurement on this machine (``--measure``, which
loads the model); a rate none of them gives leaves the wall time unknown, never invented.

On N workers: runs go to workers whole (one run's training is not split), longest first;
generation and local judging are split in blocks of ``executor.block`` checkpoints of one run,
shared out longest first; the stages run one after another; an API judge gets through its
requests at its own rate whatever N (its rate limit); checkers take no time.
"""

from __future__ import annotations

import heapq
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from traitwatch.store import Store

from ._context import StudyContext
from ._estimate import JudgeWork, RunWork, StudyWork, count_work

#: What a measurement trains: this many steps, a checkpoint (with its held-out loss) every 2.
MEASURE_STEPS = 5

ASSUMPTIONS = [
    "each worker is as fast as the rates above (one worker: one training, generation or judging task at a time);"
    " starting a worker (loading the model) is not counted",
    "training: runs go to workers whole (one run's training is not split), longest first",
    "generation and local judging: split in blocks of executor.block checkpoints of one run, shared out longest first",
    "stages run one after another (train, then generate, then judge); overlapping them can only be faster",
    "an API judge gets through its requests at its own rate (its rate limit) whatever the number of workers",
    "checkers take no time; judgments are counted as (answer, trait) pairs: identical inputs are sent once, so fewer",
]


@dataclass(frozen=True)
class Rate:
    """One worker's throughput for one stage (per second), and where it came from."""

    per_s: float | None
    unit: str  # training steps, answers or judgments
    source: str  # spec, store, measured, or none
    how: str = ""
    key: str = ""  # its executor.throughput key


@dataclass
class StudyPlan:
    """The work, the rates, and the expected wall time (seconds) per stage on 1 and N workers."""

    work: StudyWork
    rates: dict[str, Rate]
    workers: int
    wall: dict[int, dict[str, float | None]]

    def to_dict(self) -> dict[str, Any]:
        return self.work.to_dict() | {
            "workers": self.workers,
            "throughput": {k: vars(r) for k, r in self.rates.items()},
            "wall_time_s": {str(n): stages for n, stages in self.wall.items()},
            "assumptions": ASSUMPTIONS,
            "notes": self.work.notes,
        }


def _judge_stage(j: JudgeWork) -> str:
    return f"judge {j.name}"


def _needed(work: StudyWork) -> dict[str, str]:
    """Stage -> the ``executor.throughput`` key that gives its rate (checkers need none)."""
    out = {"train": "train_steps_per_s", "generate": "answers_per_s"}
    for j in work.judges:
        if j.kind != "check":
            out[_judge_stage(j)] = "api_judgments_per_s" if j.kind == "openai" else "judgments_per_s"
    return out


def _units(stage: str) -> str:
    return {"train": "training steps", "generate": "answers"}.get(stage, "judgments")


def _batch_rate(rows: list[tuple[float, int]]) -> float | None:
    """Items per second from (write time, items) of stored batches: the median over consecutive
    batches of items / time since the previous batch (``analysis._probes.seconds_per_answer``'s rule)."""
    if len(rows) < 2:
        return None
    times = np.array([r[0] for r in rows], dtype=float)
    counts = np.array([r[1] for r in rows], dtype=float)
    per = float(np.median(np.diff(times) / counts[1:]))
    return 1.0 / per if per > 0 else None


def store_rates(ctx: StudyContext, store: Store, work: StudyWork) -> dict[str, Rate]:
    """Rates measured from what this study's store holds (stages it has done some of)."""
    from traitwatch.analysis._probes import seconds_per_answer

    from ._plan import settings_meta_key

    out: dict[str, Rate] = {}
    steps = secs = 0.0
    by_run: dict[str, list[Any]] = {}
    for c in store.checkpoints():
        by_run.setdefault(c.run_id, []).append(c)
    for cks in by_run.values():
        cks.sort(key=lambda c: c.step)
        for a, b in zip(cks, cks[1:], strict=False):  # one training session: elapsed_s grows (a resume restarts it)
            if a.elapsed_s is not None and b.elapsed_s is not None and b.elapsed_s > a.elapsed_s:
                steps, secs = steps + b.step - a.step, secs + b.elapsed_s - a.elapsed_s
    if steps:
        out["train"] = Rate(steps / secs, "training steps", "store", f"checkpoints' elapsed_s: {steps:.0f} steps in {secs:.1f}s")
    settings = store.get_meta(settings_meta_key(ctx.spec))
    if settings is not None:
        per, _ = seconds_per_answer(store, settings)
        if per:
            out["generate"] = Rate(1 / per, "answers", "store", "answer write times (median over batches)")
    for j in work.judges:
        if j.kind == "check":
            continue
        sql = "SELECT created_at, COUNT(*) FROM judgments WHERE judge=? GROUP BY created_at ORDER BY created_at"
        rate = _batch_rate([(float(t), int(n)) for t, n in store.conn.execute(sql, (j.name,))])
        if rate:
            out[_judge_stage(j)] = Rate(rate, "judgments", "store", "judgment write times (median over batches)")
    return out


def measure_rates(ctx: StudyContext, work: StudyWork, stages: set[str]) -> dict[str, Rate]:
    """Time a few training steps, one generation batch and one batch of each local judge here.

    Loads the study's base model (and a local judge's own model). Training: ``MEASURE_STEPS``
    steps of the first run with a checkpoint every 2 (a step, plus a checkpoint's save and
    held-out loss spread over ``save_every`` steps); nothing is written to the study.
    """
    from traitwatch.generate import Answer, GenerationRequest
    from traitwatch.judges import Budget, JudgeRequest
    from traitwatch.train import train_run
    from traitwatch.train._checkpoints import step_dir

    from ._generate import make_generator
    from ._judge import make_judge
    from ._plan import plan_runs

    out: dict[str, Rate] = {}
    plans = plan_runs(ctx.spec, "")
    if not plans:
        return out
    base = ctx.base
    with tempfile.TemporaryDirectory(prefix="traitwatch-measure-") as tmp:
        training = ctx.spec.training.model_copy(update={"max_steps": MEASURE_STEPS, "save_every": 2})
        plan = replace(plans[0], run_dir=Path(tmp) / plans[0].run_id, training=training)
        at: dict[int, float] = {}

        def on_step(done: int, _total: int) -> None:
            at.setdefault(done, time.perf_counter())

        res = train_run(plan, base, on_step=on_step)
        step_s = ((at[2] - at[1]) + (at[4] - at[3])) / 2  # saves happen after steps 2 and 4
        save_s = max(0.0, ((at[3] - at[2]) + (at[5] - at[4])) / 2 - step_s)
        per_step = step_s + save_s / ctx.spec.training.save_every
        out["train"] = Rate(1 / per_step, "training steps", "measured", f"{MEASURE_STEPS} steps of {plan.run_id} here")
        adapter = str(step_dir(plan.checkpoint_dir, res.last_step))
        gen = ctx.spec.generation
        rows = gen.batch_size if isinstance(gen.batch_size, int) else 64
        if gen.batch_size == "auto" and base.device.type == "cuda":
            from traitwatch.generate._hf import auto_batch_size

            longest = max(len(base.tokenizer(q.text)["input_ids"]) for s in ctx.suites.suites for q in s.questions)
            rows = auto_batch_size(base, longest + gen.max_new_tokens)
        asked = [(s, q) for s in ctx.suites.suites for q in s.questions]
        reqs = [
            GenerationRequest(f"measure-{i}", adapter, asked[i % len(asked)][1].text, i, ctx.suites.probes(asked[i % len(asked)][0]))
            for i in range(rows)
        ]
        answers: list[Answer] = []
        t = time.perf_counter()
        make_generator(ctx).generate(reqs, answers.extend)
        out["generate"] = Rate(rows / (time.perf_counter() - t), "answers", "measured", f"one batch of {rows} answers here")
        for j in work.judges:
            if _judge_stage(j) not in stages or j.kind != "local":
                continue
            jspec = next(s for s in ctx.spec.judges if s.name == j.name)
            judge = make_judge(ctx, j.name, Budget(None))
            jreqs = []
            for i, a in enumerate(answers):
                suite, q = asked[i % len(asked)]
                for trait, tdef in suite.traits.items():
                    if judge.can_score(tdef) and (jspec.traits is None or trait in jspec.traits):
                        jreqs.append(JudgeRequest(trait, tdef, q.text, a.text, {"expected": q.expected, "probes": a.probes}))
            if not jreqs:
                continue
            judge.judge(jreqs[:1])  # loads the judge's model: not part of the rate
            part = jreqs[: judge.batch_size]
            t = time.perf_counter()
            judge.judge(part)
            out[_judge_stage(j)] = Rate(len(part) / (time.perf_counter() - t), "judgments", "measured", f"{len(part)} judgments here")
    return out


def makespan(sizes: list[float], workers: int) -> float:
    """Wall time of independent tasks of these durations on ``workers``, longest first to the least loaded."""
    loads = [0.0] * max(1, min(workers, len(sizes)))
    for size in sorted(sizes, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + size)
    return max(loads)


def _blocks(left_by_run: list[int], per_checkpoint: int, block: int) -> list[float]:
    """A run's work left, cut in blocks of ``block`` checkpoints (the last block smaller)."""
    size = max(1, per_checkpoint * block)
    out: list[float] = []
    for left in left_by_run:
        full, rest = divmod(left, size)
        out += [float(size)] * full + ([float(rest)] if rest else [])
    return out


def wall_times(work: StudyWork, rates: dict[str, Rate], workers: int, block: int) -> dict[str, float | None]:
    """Seconds per stage, and their sum (``total``), on ``workers``; None where a rate is unknown."""
    runs: list[RunWork] = work.runs
    amounts: dict[str, tuple[list[float], bool]] = {  # stage -> (task sizes, shared out over workers)
        "train": ([float(max(0, r.steps - r.steps_done)) for r in runs], True),
        "generate": (_blocks([r.answers - r.answers_stored for r in runs], work.per_checkpoint, block), True),
    }
    for j in work.judges:
        if j.kind != "check":
            amounts[_judge_stage(j)] = (_blocks(list(j.left_by_run.values()), j.per_checkpoint, block), j.kind != "openai")
    out: dict[str, float | None] = {}
    for stage, (sizes, shared) in amounts.items():
        rate = rates.get(stage)
        if not sum(sizes):
            out[stage] = 0.0
        elif rate is None or not rate.per_s:
            out[stage] = None
        else:
            out[stage] = (makespan(sizes, workers) if shared else sum(sizes)) / rate.per_s
    values = list(out.values())
    out["total"] = None if any(v is None for v in values) else sum(v for v in values if v is not None)
    return out


def plan_study(ctx: StudyContext, *, workers: int = 1, measure: bool = False) -> StudyPlan:
    """Count the study's work, find one worker's rates (spec, store, ``measure``), and time it on 1 and N workers."""
    store = ctx.open_store(readonly=True) if ctx.paths.store.exists() else None
    try:
        work = count_work(ctx, store)
        needed = _needed(work)
        given = ctx.spec.executor.throughput
        rates = {s: Rate(given[k], _units(s), "spec", f"executor.throughput.{k}") for s, k in needed.items() if k in given}
        if store is not None:
            rates = store_rates(ctx, store, work) | rates
    finally:
        if store is not None:
            store.close()
    missing = {s for s in needed if s not in rates} & {s for s, v in wall_times(work, {}, 1, 1).items() if v is None}
    if measure and missing:
        rates = {k: v for k, v in measure_rates(ctx, work, missing).items() if k in missing} | rates
    for s, key in needed.items():
        how = " (an API judge is never measured: it would cost)" if key == "api_judgments_per_s" else ", or run with --measure"
        rates.setdefault(s, Rate(None, _units(s), "none", f"give executor.throughput.{key}{how}"))
    rates = {s: replace(r, key=needed[s]) for s, r in rates.items()}
    block = ctx.spec.executor.block
    wall = {n: wall_times(work, rates, n, block) for n in sorted({1, workers})}
    return StudyPlan(work, rates, workers, wall)
