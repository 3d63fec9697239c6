"""Watch a run trained with the Hugging Face stack you already use: Trainer, TRL, Unsloth.

    from traitwatch.hf import TraitwatchCallback
    trainer = SFTTrainer(..., callbacks=[TraitwatchCallback("monitor.yaml")])

At each checkpoint the Trainer saves (``save_steps``), the callback evaluates the new adapter
on the study's probe set (``monitor:`` in the spec), scores it with the live judges, feeds the
online detectors and, on an alarm, stores it, prints it, appends it to the alarm file, posts
it to the webhook, and with the ``stop`` action sets ``control.should_training_stop`` and names
the last safe checkpoint. A stop requested from outside (``traitwatch watch`` writes a
``STOP`` file into the output folder) stops the run at its next save too.

Why a callback and not our own loop: researchers keep their trainer; the callback is the
plug-in point the Trainer offers (TRL and Unsloth build on it). It evaluates with its own copy
of the base model (``model:`` in the spec), so the model being trained is never touched, and
it saves and restores the random state so training is the same with or without it. It also
saves the untouched adapter as ``checkpoint-0`` at the start: the step-0 baseline every
detector compares with.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from traitwatch.config import StudySpec, load_study
from traitwatch.monitor import Alarm, stop_requested
from traitwatch.store import Store
from traitwatch.train import ADAPTER_FILE


class TraitwatchCallback(TrainerCallback):
    """Live trait monitoring inside a Hugging Face Trainer (TRL, Unsloth).

    Args:
        study: the study spec (YAML path or a validated ``StudySpec``) with a ``monitor:``
            section; its ``model:`` names the base model being fine-tuned, its ``output_dir``
            holds the store of answers, judgments and alarms.
        run_id: the run's name in the store (default: the Trainer's output folder name).
        domain, level, seed: how the run is filed for analysis (default: ``external``, the
            level named in the spec if it has exactly one, and the Trainer's seed).
        stop_on_alarm: stop training on an alarm (default: when the spec's actions say ``stop``).
    """

    def __init__(
        self,
        study: str | Path | StudySpec,
        *,
        run_id: str | None = None,
        domain: str = "external",
        level: str | None = None,
        seed: int | None = None,
        stop_on_alarm: bool | None = None,
    ) -> None:
        spec = study if isinstance(study, StudySpec) else load_study(study)
        if spec.monitor is None:
            from traitwatch.errors import ConfigError

            raise ConfigError("the study has no monitor section", where="monitor", fix="add monitor: {alarms: [TRAIT]} (docs/monitor.md)")
        self.spec = spec
        self.run_id = run_id
        self.domain = domain
        self.level = level or (spec.levels[0] if len(spec.levels) == 1 else "unknown")
        self.seed = seed
        self.stop_on_alarm = ("stop" in spec.monitor.actions) if stop_on_alarm is None else stop_on_alarm
        self.alarms: list[Alarm] = []
        self.last_safe_step: int | None = None
        self._monitor: Any = None
        self._store: Store | None = None
        self._seen: list[int] = []
        self._fingerprint = ""

    # -- set-up ------------------------------------------------------------------------------
    def _start(self, args: TrainingArguments) -> None:
        from traitwatch.pipeline import StudyContext
        from traitwatch.pipeline._layout import find_checkpoints, identify_run
        from traitwatch.pipeline._monitor import LiveMonitor

        ctx = StudyContext(self.spec)
        ctx.paths.out.mkdir(parents=True, exist_ok=True)
        self._store = Store(ctx.paths.store)
        self._monitor = LiveMonitor(ctx, self._store)
        out = _out(args).resolve()
        # the same identity rules as `traitwatch watch` and `import` on this folder, so their answers agree
        ident = identify_run(self._store, out, find_checkpoints(out), kind="hf-run", run_id=self.run_id)
        self.run_id, self._fingerprint = ident.run_id, ident.fingerprint
        self._store.upsert_run(
            run_id=self.run_id,
            fingerprint=self._fingerprint,
            domain=self.domain,
            level=self.level,
            seed=int(self.seed if self.seed is not None else args.seed),
            model=self._monitor.model.identity,
            dataset_sha="",
            n_train=0,
            n_heldout=0,
            total_steps=int(args.max_steps) if args.max_steps and args.max_steps > 0 else 0,
            info={"source": "hf-trainer", "output_dir": str(out), "save_steps": args.save_steps},
        )
        self._seen = [c.step for c in self._store.checkpoints(self.run_id)]
        self._monitor.catch_up(self.run_id, 1 << 62, self._fingerprint)  # a resumed run: replay what is stored

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self._monitor is None:
            self._start(args)
        model = kwargs.get("model")
        baseline = _out(args) / "checkpoint-0"
        if state.global_step == 0 and model is not None and hasattr(model, "peft_config") and not (baseline / ADAPTER_FILE).exists():
            model.save_pretrained(str(baseline))  # the untouched adapter: step 0, the baseline
            self._evaluate(args, 0, baseline, state)

    # -- each checkpoint ---------------------------------------------------------------------
    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        folder = _out(args) / f"checkpoint-{state.global_step}"
        if (folder / ADAPTER_FILE).exists():
            alarms = self._evaluate(args, state.global_step, folder, state)
            if alarms and self.stop_on_alarm:
                self._stop(args, control, alarms[0])
        request = stop_requested(_out(args))
        if request is not None and not control.should_training_stop:
            from traitwatch.progress import console

            console.print(f"traitwatch: stop requested for {self.run_id} ({request.get('message', 'no reason given')})", markup=False)
            control.should_training_stop = True

    def _evaluate(self, args: TrainingArguments, step: int, folder: Path, state: TrainerState) -> list[Alarm]:
        import torch

        from traitwatch.pipeline._layout import FoundCheckpoint, checkpoint_row, record_checkpoint
        from traitwatch.pipeline._monitor import LiveCheckpoint
        from traitwatch.train import file_sha256

        assert self._store is not None and self._monitor is not None
        if step in self._seen:
            return []
        sha = file_sha256(folder / ADAPTER_FILE)
        record_checkpoint(self._store, checkpoint_row(str(self.run_id), FoundCheckpoint(step, folder, "hf"), sha, state.log_history))
        due = self._monitor.due(str(self.run_id), step)
        self._seen.append(step)
        if not due:
            return []
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):  # training's random state stays exact
            alarms: list[Alarm] = self._monitor.observe(LiveCheckpoint(str(self.run_id), step, folder.resolve(), sha, self._fingerprint))
        self.alarms += alarms
        return alarms

    def _stop(self, args: TrainingArguments, control: TrainerControl, alarm: Alarm) -> None:
        from traitwatch.progress import console

        control.should_training_stop = True
        self.last_safe_step = alarm.last_safe_step
        safe = "none" if alarm.last_safe_step is None else str(_out(args) / f"checkpoint-{alarm.last_safe_step}")
        record = alarm.to_dict() | {"time": time.time(), "last_safe_checkpoint": safe}
        (_out(args) / "STOPPED.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
        assert self._store is not None
        self._store.set_run_status(str(self.run_id), "stopped_early")
        console.print(f"traitwatch: stopping {self.run_id} at step {alarm.step}; last safe checkpoint: {safe}", markup=False)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self._store is not None:
            if not self.alarms or not self.stop_on_alarm:
                self._store.set_run_status(str(self.run_id), "trained")
            self._store.close()
            self._store = None
            self._monitor = None


def _out(args: TrainingArguments) -> Path:
    """The Trainer's output folder (where it writes ``checkpoint-N``)."""
    return Path(str(args.output_dir))
