"""The train, generate and judge stages on a Ray cluster (``executor: {kind: ray}`` / ``--executor ray``).

Why Ray: it is the scheduler open training and serving stacks already use (vLLM, RLlib), it
places tasks by the GPUs and CPUs they request, and it reruns a task whose worker died (node
preempted, process killed). traitwatch adds no scheduler of its own.

How the work is split: one task per run trains it (resuming from its checkpoints on disk, so
a retried task repeats at most one checkpoint interval), and as soon as a run's training task
returns, its checkpoints are answered in tasks of ``executor.block`` checkpoints each, while
other runs still train. The judge stage then runs in the driver as it does locally (checkers
are cheap; paid judges need one rate limiter and one spending cap for the whole study), except
that a judge that runs a model (a local LLM judge) has its batches scored as Ray tasks. Why
tasks and not a pool of actors: a task whose worker dies is simply rerun, and with the model
cached per worker process a task costs what an actor call would.

Why the driver writes and workers do not: the store is one SQLite file on the driver's local
disk (SQLite's locking is not safe on network filesystems), and every row has a content key,
so the driver commits each task's results as they arrive and a retried task's duplicate
results are ignored. Checkpoints live in the study's ``output_dir``, which every worker must
be able to read and write at the same path (a shared filesystem). Killing the driver loses at
most the results in flight; the same command continues.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from traitwatch.errors import ConfigError
from traitwatch.generate import Answer, GenerationRequest
from traitwatch.judges import Budget, Judge, JudgeRequest
from traitwatch.progress import console, stage_progress
from traitwatch.store import Store

from . import _ray_tasks as tasks
from ._context import StageResult, StudyContext
from ._generate import Placement, answer_row, check_adapter, generation_requests
from ._judge import Link, Send, judge, kept
from ._plan import plan_runs
from ._train import StoreRecorder


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "executor ray needs the ray package", where="executor.kind", fix="pip install 'traitwatch[ray]' (or pip install ray)"
        ) from None
    return ray


class RayCluster:
    """``ray.init`` on entry (join ``address``, or start a local instance), shutdown on exit
    when this process started it."""

    def __init__(self, ctx: StudyContext) -> None:
        self.spec = ctx.spec.executor
        self.ray = import_ray()
        self.started = False

    def __enter__(self) -> RayCluster:
        ray = self.ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if self.spec.address:
                kwargs["address"] = self.spec.address
            else:
                kwargs["num_cpus"] = self.spec.workers
                kwargs["object_store_memory"] = 256 * 2**20  # results are small: answers and events
            ray.init(**kwargs)
            self.started = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self.ray.shutdown()

    def remote(self, fn: Callable[..., Any], *, retry: bool = True) -> Any:
        """``fn`` as a Ray task with the executor's resources and retry count."""
        ex = self.spec
        return self.ray.remote(num_cpus=ex.num_cpus, num_gpus=ex.num_gpus, max_retries=ex.max_retries if retry else 0)(fn)


def _blocks(todo: list[tuple[GenerationRequest, Placement]], block: int) -> list[list[tuple[GenerationRequest, Placement]]]:
    """The requests grouped into tasks of ``block`` checkpoints (adapter folders) each."""
    out = []
    for model in dict.fromkeys(m.get("model", "") for _, m in todo):  # a task answers on one base model
        by_adapter: dict[str, list[tuple[GenerationRequest, Placement]]] = defaultdict(list)
        for r, m in todo:
            if m.get("model", "") == model:
                by_adapter[r.adapter].append((r, m))
        adapters = sorted(by_adapter)
        out += [[x for a in adapters[i : i + block] for x in by_adapter[a]] for i in range(0, len(adapters), block)]
    return out


def ray_stages(ctx: StudyContext, store: Store, names: Iterable[str]) -> dict[str, StageResult]:
    """Run the train, generate and judge stages named in ``names`` on Ray, in that order;
    returns their results (the caller runs the other stages)."""
    names = set(names)
    do_train, do_generate, do_judge = "train" in names, "generate" in names, "judge" in names
    if not (do_train or do_generate or do_judge):
        return {}
    if do_train and ctx.spec.monitor is not None:
        raise ConfigError(
            "the live monitor runs inside the training process, which executor ray does not offer",
            where="monitor",
            fix="remove monitor: from this spec and run `traitwatch watch RUN_DIR --study monitor.yaml` beside each run (docs/cluster.md)",
        )
    threads = max(1, math.ceil(ctx.spec.executor.num_cpus))
    out: dict[str, StageResult] = {}
    with RayCluster(ctx) as cluster:
        identity = cluster.remote(tasks.identity_task)
        for name, _ in ctx.spec.base_models():  # each model's identity, as its workers load it
            ctx.use_identity(cluster.ray.get(identity.remote(ctx.spec, threads, name)), name)
        if do_train or do_generate:
            out |= _TrainGenerate(ctx, store, cluster, threads).run(do_train, do_generate)
        if do_judge:
            out["judge"] = judge(ctx, store, remote=_judge_sender(ctx, cluster, threads))
    return out


class _TrainGenerate:
    """The driver's loop: training tasks, then answer tasks for each run as its training returns."""

    def __init__(self, ctx: StudyContext, store: Store, cluster: RayCluster, threads: int) -> None:
        self.ctx, self.store, self.cluster, self.threads = ctx, store, cluster, threads
        self.pending: dict[Any, tuple[str, Any]] = {}
        self.submitted: set[str] = set()
        self.train = {"runs": 0, "steps_run": 0}
        self.generate = {"answers": 0, "generated": 0, "reused": 0}
        self.commit_s = 0.0
        self._generate_task = cluster.remote(tasks.generate_task)

    def submit_generation(self, run_ids: set[str] | None) -> None:
        """Submit answer tasks for these runs' checkpoints (every stored run when None)."""
        ctx, store = self.ctx, self.store
        settings = ctx.settings_hash(store)
        wanted = generation_requests(ctx, store, only=run_ids)
        wanted = [(r, m) for r, m in wanted if r.key not in self.submitted]
        have = store.existing("generations", "gen_key", [r.key for r, _ in wanted])
        todo = [(r, m) for r, m in wanted if r.key not in have]
        for path, sha in sorted({(r.adapter, m["adapter_sha"]) for r, m in todo}):
            check_adapter(Path(path), sha)
        self.generate["answers"] += len(wanted)
        self.generate["reused"] += len(wanted) - len(todo)
        self.submitted.update(r.key for r, _ in wanted)
        for part in _blocks(todo, ctx.spec.executor.block):
            ref = self._generate_task.remote(ctx.spec, [r for r, _ in part], self.threads, part[0][1].get("model") or None)
            self.pending[ref] = ("generate", ({r.key: (r, m) for r, m in part}, settings))

    def run(self, do_train: bool, do_generate: bool) -> dict[str, StageResult]:
        ctx, store, ray = self.ctx, self.store, self.cluster.ray
        t0 = time.time()
        train_s = 0.0
        plans = {p.run_id: p for p in plan_runs(ctx.spec, ctx.identities()) if ctx.wants(p.run_id)} if do_train else {}
        self.train["runs"] = len(plans)
        train_task = self.cluster.remote(tasks.train_task)
        with stage_progress("ray: train + generate (tasks)", 0) as bar:
            for rid, plan in plans.items():
                self.pending[train_task.remote(ctx.spec, rid, self.threads)] = ("train", plan)
            if not do_train:
                self.submit_generation(None)
            bar.grow(len(self.pending))
            while self.pending:
                [ref], _ = ray.wait(list(self.pending), num_returns=1)
                kind, what = self.pending.pop(ref)
                result = ray.get(ref)  # a task that failed after its retries raises here
                if kind == "train":
                    events, res = result
                    recorder = StoreRecorder(store, what, ctx.identity_of(what.model_name))
                    for event in events:
                        recorder(event)
                    self.train["steps_run"] += res.steps_run
                    train_s = time.time() - t0
                    console.print(f"  {what.run_id}: {res.steps_run} steps in {res.seconds:.1f}s (ray task)", markup=False)
                    if do_generate:
                        before = len(self.pending)
                        self.submit_generation({what.run_id})
                        bar.grow(len(self.pending) - before)
                else:
                    index, settings = what
                    answers: list[Answer] = result
                    t = time.perf_counter()
                    rows = []
                    for a in answers:
                        req, where = index[a.key]
                        rows.append(answer_row(req, where, a, settings))
                    store.add_generations(rows)
                    self.commit_s += time.perf_counter() - t
                    self.generate["generated"] += len(answers)
                bar.advance(1)
        out = {}
        if do_train:
            out["train"] = StageResult("train", train_s, self.train | {"checkpoints": len(store.checkpoints())})
        if do_generate:
            made = self.generate["generated"]
            rate = round(made / self.commit_s) if self.commit_s > 0 and made else None
            out["generate"] = StageResult("generate", time.time() - t0, self.generate | {"driver_rows_per_s": rate})
        return out


def _judge_sender(ctx: StudyContext, cluster: RayCluster, threads: int) -> Send:
    """How the judge stage sends a judge that runs a model: its batches as Ray tasks, all in
    flight at once, each result stored by the driver as it arrives (same rows as ``_send``)."""
    task = cluster.remote(tasks.judge_task)

    def send(
        judge_: Judge,
        todo: list[tuple[str, JudgeRequest]],
        links: dict[str, list[Link]],
        store: Store,
        budget: Budget,
        advance: Callable[[int], None],
    ) -> tuple[int, list[str]]:
        made = 0
        failures: list[str] = []
        pending = {}
        for i in range(0, len(todo), judge_.batch_size):
            part = todo[i : i + judge_.batch_size]
            pending[task.remote(ctx.spec, judge_.name, [r for _, r in part], threads)] = part
        while pending:
            [ref], _ = cluster.ray.wait(list(pending), num_returns=1)
            part = pending.pop(ref)
            results = zip(part, cluster.ray.get(ref), strict=True)
            rows = [row for (key, req), res in results if res is not None and (row := kept(judge_, key, req, res, links, failures))]
            store.add_judgments([r for r, _ in rows], [link for _, ls in rows for link in ls])
            made += len(rows)
            advance(len(part))
        return made, failures

    return send
