"""The train stage: every run of the study, each resumed or skipped when already done.

Why the store writes live here: ``traitwatch.train`` reports what it wrote to disk as events
and never opens the store (data flows one way); this module turns each event into rows, in
its own small transaction, so a kill loses nothing that is already on disk.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from traitwatch.config import dump_study
from traitwatch.errors import ConfigError
from traitwatch.models import describe
from traitwatch.progress import console, stage_progress
from traitwatch.store import CheckpointRow, Store
from traitwatch.train import (
    CheckpointDropped,
    CheckpointSaved,
    RunFinished,
    RunPlan,
    RunStarted,
    TrainCallback,
    TrainEvent,
    check_optimizer,
    split_heldout,
    total_steps,
    train_run,
)

from ._context import StageResult, StudyContext
from ._plan import plan_runs
from ._preflight import check_disk


class StoreRecorder:
    """Writes one run's training events to the store (the pipeline's side of ``record``)."""

    def __init__(self, store: Store, plan: RunPlan, model_identity: str) -> None:
        self.store = store
        self.plan = plan
        self.model_identity = model_identity

    def __call__(self, event: TrainEvent) -> None:
        p = self.plan
        if isinstance(event, RunStarted):
            self.store.upsert_run(
                run_id=p.run_id,
                fingerprint=p.fingerprint,
                domain=p.domain,
                level=p.level,
                seed=p.seed,
                model=self.model_identity,
                dataset_sha=p.dataset_sha,
                n_train=event.n_train,
                n_heldout=event.n_heldout,
                total_steps=event.total_steps,
                info=event.info,
            )
        elif isinstance(event, CheckpointSaved):
            self.store.add_checkpoint(
                CheckpointRow(
                    run_id=event.run_id,
                    step=event.step,
                    path=str(event.path),
                    adapter_sha=event.adapter_sha,
                    train_loss=event.train_loss,
                    heldout_loss=event.heldout_loss,
                    learning_rate=event.learning_rate,
                    tokens_seen=event.tokens_seen,
                    elapsed_s=event.elapsed_s,
                )
            )
        elif isinstance(event, CheckpointDropped):
            self.store.delete_checkpoint(event.run_id, event.step)
        elif isinstance(event, RunFinished):
            self.store.set_run_status(event.run_id, "stopped_early" if event.stopped_early else "trained")


def run_steps(plan: RunPlan) -> int:
    """Optimizer steps of a run, from its data and training settings."""
    return total_steps(len(split_heldout(len(plan.examples), plan.training, plan.seed)[0]), plan.training)


def train(ctx: StudyContext, store: Store, *, callbacks: Sequence[TrainCallback] = ()) -> StageResult:
    """Train every planned run (LoRA), a checkpoint every ``save_every`` steps; resumes."""
    t0 = time.time()
    check_optimizer(ctx.spec.training)  # before the model loads and any run starts
    base = ctx.base
    plans = plan_runs(ctx.spec, ctx.identities())
    if not plans:
        raise ConfigError(
            "the study has no datasets, so there is nothing to train",
            where="datasets",
            fix="add datasets (docs/config.md), or run only the later stages (--stages generate,judge,analyze,report)",
        )
    plans = [p for p in plans if ctx.wants(p.run_id)]  # --runs: this job's share of the study
    check_disk(ctx, plans)
    store.set_meta("spec", dump_study(ctx.spec))
    store.set_meta("model", json.dumps(describe(base), default=str))
    expected = {p.run_id: run_steps(p) for p in plans}
    callbacks = list(callbacks)
    monitor = None
    if ctx.spec.monitor is not None:
        from traitwatch.models import load_model

        from ._monitor import LiveMonitor, MonitorCallback

        # its own copy of the base model: the training copy carries the LoRA being trained
        t_load = time.time()
        copy = load_model(ctx.spec.model)
        monitor = MonitorCallback(LiveMonitor(ctx, store, model=copy), {p.run_id: p.fingerprint for p in plans})
        monitor_load_s = time.time() - t_load
        callbacks.append(monitor)
    steps_run, wait = 0, 0.0
    with stage_progress("train (steps)", sum(expected.values())) as bar:
        for plan in plans:
            bar.note(f"train {plan.run_id}")
            seen = {"done": 0}

            def on_step(done: int, total: int, seen: dict[str, int] = seen) -> None:
                bar.advance(max(0, done - seen["done"]))
                seen["done"] = done

            model = ctx.base_for(plan.model_name)  # plans are grouped by model: each loads once
            res = train_run(plan, model, record=StoreRecorder(store, plan, model.identity), callbacks=callbacks, on_step=on_step)
            bar.advance(max(0, expected[plan.run_id] - seen["done"]))
            steps_run += res.steps_run
            wait += res.save_wait_s
            console.print(
                f"  {plan.run_id}: {res.steps_run} steps in {res.seconds:.1f}s"
                + (f" (resumed from step {res.resumed_from})" if res.resumed_from is not None and res.steps_run else "")
                + (" (already trained)" if not res.steps_run else "")
                + (" (stopped early)" if res.stopped_early else "")
            )
    counts: dict[str, object] = {
        "runs": len(plans),
        "steps_run": steps_run,
        "checkpoints": len(store.checkpoints()),
        "checkpoint_wait_s": round(wait, 2),
    }
    if monitor is not None:
        live = monitor.monitor
        counts |= {"alarms": len(monitor.alarms), "monitor_s": round(live.seconds, 1), "monitor_evaluated": live.evaluated}
        counts["monitor_load_s"] = round(monitor_load_s, 1)
        if live.skipped:
            counts["monitor_skipped"] = live.skipped
            console.print(f"  live monitor: {live.skipped} due checkpoints skipped to stay within max_overhead {live.spec.max_overhead}")
    return StageResult("train", time.time() - t0, counts)
