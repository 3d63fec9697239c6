"""LoRA SFT for one run, top to bottom: data, model, optimizer, schedule, eval, checkpoint.

Why one function: the training loop is where subtle bugs hide (loss masking, schedule
off-by-ones, resume drift); a reader should see all of it in one sitting. Plain values
configure it. The one plug-in point is ``TrainCallback.on_checkpoint`` (the live monitor).

Why the loop does not write the study store: data flows one way and the pipeline owns
persistence. The loop reports what happened on disk as events (``record``: run started,
checkpoint saved, damaged checkpoint dropped, run finished); the pipeline turns them into
store rows. The same loop therefore runs in process, under a watcher or on a cluster worker.
The checkpoint folders are the truth: a run that a callback stopped leaves a
``STOPPED.json`` beside its checkpoints, so a rerun does not train it further.

Conventions (stated once, used everywhere):
  * ``step`` counts optimizer updates done. Checkpoint ``step_000000`` is the untouched
    base (a fresh LoRA with B = 0); checkpoint ``s`` holds the adapter after s updates.
  * A checkpoint is saved when ``step % save_every == 0`` and at the last step.
  * The loss is the mean cross-entropy over assistant tokens of the whole optimizer step
    (token-weighted across gradient-accumulation micro-batches).
  * The learning rate of update ``s`` (0-based) is ``peak * (s + 1) / warmup`` during
    warm-up, then decays (linear or cosine) to 0 at the last update.
  * Data order: epoch ``e`` visits the training examples in ``randperm(seed, e)`` order;
    update ``s`` takes the examples at stream positions ``[s * B, (s + 1) * B)``, B the
    effective batch. Resuming at step ``s`` therefore sees exactly the same data.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from traitwatch.config import LoraSpec, TrainingSpec
from traitwatch.data import ChatExample
from traitwatch.errors import ConfigError, DataError
from traitwatch.models import LoadedModel, head_logits, split_lm
from traitwatch.progress import console

from ._checkpoints import (
    drop_train_state,
    is_intact,
    list_checkpoints,
    load_adapter_tensors,
    load_train_state,
    optimizer_from_tensors,
    optimizer_to_tensors,
    read_meta,
    remove_partial,
    step_dir,
    write_checkpoint,
)
from ._tokenize import IGNORE, Encoded, collate, encode_chat

#: Written beside a run's checkpoints when a callback stopped it; a rerun leaves the run as it is.
STOPPED_FILE = "STOPPED.json"


@dataclass
class RunPlan:
    """Everything that defines one run; ``fingerprint`` hashes all of it."""

    run_id: str
    domain: str
    level: str
    seed: int
    examples: tuple[ChatExample, ...]
    dataset_sha: str
    run_dir: Path
    lora: LoraSpec
    training: TrainingSpec
    fingerprint: str
    #: The base model's short name in a study with several (``models:``); "" with one.
    model_name: str = ""
    #: The model's ``attributes`` from the spec (recorded with the run for across-model statistics).
    model_attributes: dict[str, float] = field(default_factory=dict)

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"


@dataclass(frozen=True)
class CheckpointEvent:
    """What the live monitor sees after each checkpoint.

    The folder is written on a background thread while training goes on; a callback that
    reads it calls ``written()`` first, which waits until the folder is complete (and returns
    its meta: step, adapter sha, losses).
    """

    run_id: str
    step: int
    total_steps: int
    path: Path
    train_loss: float | None
    heldout_loss: float | None
    learning_rate: float
    written: Callable[[], dict[str, Any]] = field(default=lambda: {}, compare=False, repr=False)


class TrainCallback(Protocol):
    def on_checkpoint(self, event: CheckpointEvent) -> bool:
        """Called on the training thread after each checkpoint; return True to stop the run."""
        ...


@dataclass(frozen=True)
class RunStarted:
    """Training of a run begins (or resumes): the sizes the data split gave."""

    run_id: str
    n_train: int
    n_heldout: int
    total_steps: int
    info: dict[str, Any]


@dataclass(frozen=True)
class CheckpointSaved:
    """A complete checkpoint folder is on disk (new, or found intact from an earlier run)."""

    run_id: str
    step: int
    path: Path
    adapter_sha: str
    train_loss: float | None
    heldout_loss: float | None
    learning_rate: float | None
    tokens_seen: int | None
    elapsed_s: float | None


@dataclass(frozen=True)
class CheckpointDropped:
    """A damaged checkpoint folder was deleted; training redoes it."""

    run_id: str
    step: int


@dataclass(frozen=True)
class RunFinished:
    run_id: str
    last_step: int
    stopped_early: bool


TrainEvent = RunStarted | CheckpointSaved | CheckpointDropped | RunFinished
#: Receives every event of a run in order, on the training thread.
Record = Callable[[TrainEvent], None]


def _ignore(event: TrainEvent) -> None:
    return None


@dataclass
class TrainResult:
    run_id: str
    total_steps: int
    last_step: int
    resumed_from: int | None
    stopped_early: bool
    seconds: float
    steps_run: int
    save_wait_s: float = 0.0
    checkpoints: list[int] = field(default_factory=list)


def split_heldout(n: int, spec: TrainingSpec, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of ``n`` example indices into (train, held-out)."""
    k = int(round(n * spec.heldout_fraction))
    if spec.heldout_max is not None:
        k = min(k, spec.heldout_max)
    k = min(k, n - 1)
    g = torch.Generator().manual_seed(1_000_003 * seed + 17)
    perm = torch.randperm(n, generator=g).tolist()
    return sorted(perm[k:]), sorted(perm[:k])


def total_steps(n_train: int, spec: TrainingSpec) -> int:
    if spec.max_steps is not None:
        return spec.max_steps
    return max(1, math.ceil(spec.epochs * n_train / spec.effective_batch_size))


def lr_at(step: int, total: int, spec: TrainingSpec) -> float:
    """Learning rate of optimizer update ``step`` (0-based)."""
    peak = spec.learning_rate
    if step < spec.warmup_steps:
        return peak * (step + 1) / spec.warmup_steps
    if spec.lr_scheduler == "constant":
        return peak
    span = max(1, total - spec.warmup_steps)
    progress = min(1.0, (step - spec.warmup_steps) / span)
    if spec.lr_scheduler == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * progress))
    return peak * (1 - progress)


@lru_cache(maxsize=8)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    g = torch.Generator().manual_seed(1_000_003 * seed + 7919 * (epoch + 1))
    return tuple(torch.randperm(n, generator=g).tolist())


def step_examples(step: int, n_train: int, spec: TrainingSpec, seed: int) -> list[list[int]]:
    """Indices (into the training split) of each micro-batch of optimizer update ``step``."""
    out = []
    for micro in range(spec.gradient_accumulation_steps):
        start = step * spec.effective_batch_size + micro * spec.batch_size
        batch = []
        for pos in range(start, start + spec.batch_size):
            epoch, i = divmod(pos, n_train)
            batch.append(_epoch_order(n_train, seed, epoch)[i])
        out.append(batch)
    return out


def token_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of cross-entropy over target tokens, number of target tokens).

    The output layer is applied to target positions only: with a 262k-word vocabulary it
    costs more than the rest of a 270M model, and most positions are prompt.
    """
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE
    n = int(mask.sum())
    parts = split_lm(model)
    if parts is not None:
        trunk, head = parts
        hidden = trunk(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        logits = head_logits(model, head, hidden[:, :-1][mask])
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][mask]
    return F.cross_entropy(logits.float(), labels[mask], reduction="sum"), n


@torch.no_grad()
def heldout_loss(model: Any, encoded: Sequence[Encoded], batch_size: int, pad_id: int, device: torch.device) -> float | None:
    """Mean per-token loss on the held-out split (None when there is none)."""
    if not encoded:
        return None
    model.eval()
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    total, count = 0.0, 0
    for i in range(0, len(order), batch_size):
        batch = {k: v.to(device) for k, v in collate([encoded[j] for j in order[i : i + batch_size]], pad_id).items()}
        loss, n = token_loss(model, batch)
        total += float(loss.detach())
        count += n
    return total / max(1, count)


def _lora_config(spec: LoraSpec) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,  # type: ignore[arg-type]  # typed int by peft; used as a float scale alpha / r
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        use_rslora=spec.use_rslora,
        task_type="CAUSAL_LM",
        bias="none",
    )


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda{i}"] = s
    return out


def _restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def encode_examples(base: LoadedModel, plan: RunPlan) -> list[Encoded]:
    """Tokenize every example; fail when truncation leaves none with a target token."""
    encoded = [encode_chat(base.tokenizer, ex, plan.training.max_length) for ex in plan.examples]
    kept = [e for e in encoded if e.n_target > 0]
    if len(kept) < 2:
        raise DataError(
            f"only {len(kept)} example(s) keep an assistant token within max_length={plan.training.max_length}",
            where=f"run {plan.run_id}",
            fix="raise training.max_length or shorten the prompts",
        )
    return kept


def _param_count(base: LoadedModel) -> int:
    """Parameters of the base model (before LoRA), the default model attribute across models."""
    return int(sum(p.numel() for p in base.model.parameters()))


def make_optimizer(params: list[torch.nn.Parameter], spec: TrainingSpec) -> torch.optim.Optimizer:
    """AdamW with the spec's weight decay: torch's, or bitsandbytes' 8-bit one (``adamw_8bit``,
    what the published runs used). No silent fallback: a run asked to match the published
    optimizer that quietly used another would not be the run it claims to be."""
    if spec.optimizer == "adamw_8bit":
        bnb = check_optimizer(spec)
        opt: torch.optim.Optimizer = bnb.optim.AdamW8bit(params, lr=spec.learning_rate, weight_decay=spec.weight_decay)
        return opt
    return torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=spec.weight_decay)


def check_optimizer(spec: TrainingSpec) -> Any:
    """The module the spec's optimizer needs (bitsandbytes for ``adamw_8bit``; None for torch's),
    or a one-line error; the train stage asks before any run starts."""
    if spec.optimizer != "adamw_8bit":
        return None
    try:
        import bitsandbytes  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        raise ConfigError(
            "optimizer adamw_8bit needs the bitsandbytes package, which is not importable here",
            where="training.optimizer",
            fix="pip install bitsandbytes (a CUDA machine), or use optimizer: adamw",
        ) from None
    return bitsandbytes


def train_run(
    plan: RunPlan,
    base: LoadedModel,
    *,
    record: Record = _ignore,
    callbacks: Sequence[TrainCallback] = (),
    on_step: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train (or resume, or skip when done) one run, saving a checkpoint every ``save_every`` steps.

    Args:
        plan: the run.
        base: the loaded base model; LoRA is attached for the run and removed afterwards.
        record: receives what happened on disk (see ``TrainEvent``); the pipeline stores it.
        callbacks: live monitors; any returning True stops the run after that checkpoint.
        on_step: progress hook called with (steps done, total steps).
    """
    t0 = time.time()
    spec = plan.training
    device = base.device
    pad_id = int(base.tokenizer.pad_token_id)

    # -- data ------------------------------------------------------------------------------
    encoded = encode_examples(base, plan)
    train_idx, held_idx = split_heldout(len(encoded), spec, plan.seed)
    train = [encoded[i] for i in train_idx]
    g = torch.Generator().manual_seed(1_000_003 * plan.seed + 31)
    held = [encoded[held_idx[i]] for i in torch.randperm(len(held_idx), generator=g)[: spec.heldout_eval_max].tolist()]
    steps = total_steps(len(train), spec)
    info: dict[str, Any] = {"save_every": spec.save_every, "effective_batch": spec.effective_batch_size}
    # the run's place on the study's model and learning-rate axes (read by analysis._axes)
    info |= {"model_name": plan.model_name or base.label, "learning_rate": spec.learning_rate, "model_params": _param_count(base)}
    if plan.model_attributes:
        info["model_attributes"] = dict(plan.model_attributes)
    record(RunStarted(plan.run_id, len(train), len(held), steps, info))

    # -- what is already on disk -----------------------------------------------------------
    ckdir = plan.checkpoint_dir
    remove_partial(ckdir)
    on_disk = _drop_damaged(list_checkpoints(ckdir), record, plan.run_id)
    for _, folder in on_disk:
        record(_saved(plan.run_id, folder, read_meta(folder)))
    was_stopped = (ckdir / STOPPED_FILE).exists()
    last = on_disk[-1][0] if on_disk else None
    if last is not None and (last >= steps or was_stopped):
        if on_step:
            on_step(steps, steps)
        record(RunFinished(plan.run_id, last, was_stopped))
        return TrainResult(plan.run_id, steps, last, last, was_stopped, time.time() - t0, 0, 0.0, [s for s, _ in on_disk])

    # -- model and optimizer ---------------------------------------------------------------
    from peft import get_peft_model, set_peft_model_state_dict
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(plan.seed)
    with warnings.catch_warnings():
        # peft asks transformers `is_gradient_checkpointing`, deprecated with a FutureWarning on
        # every LoRA wrap: about their API, not the user's study. Scoped here, never global.
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(base.model, _lora_config(plan.lora))
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="traitwatch-ckpt")
    pending: list[tuple[Future[dict[str, Any]], Path]] = []
    saved: list[int] = [s for s, _ in on_disk]
    save_wait = 0.0

    def settle() -> None:
        nonlocal save_wait
        tw = time.time()
        while pending:
            fut, folder = pending.pop(0)
            meta = fut.result()
            record(_saved(plan.run_id, folder, meta))
            for older_step, older in list_checkpoints(ckdir)[:-2]:
                if older_step < meta["step"]:
                    drop_train_state(older)
        save_wait += time.time() - tw

    def save(step: int, train_loss: float | None, lr: float, tokens: int) -> None:
        held_loss = heldout_loss(model, held, spec.eval_batch_size, pad_id, device)
        adapter = {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}
        opt_tensors, opt_info = optimizer_to_tensors(opt.state_dict())
        opt_tensors.update(_rng_tensors())
        opt_info.update({"step": step, "tokens_seen": tokens})
        meta = {
            "run_id": plan.run_id,
            "step": step,
            "total_steps": steps,
            "train_loss": train_loss,
            "heldout_loss": held_loss,
            "learning_rate": lr,
            "tokens_seen": tokens,
            "elapsed_s": time.time() - t0,
            "fingerprint": plan.fingerprint,
        }
        config = model.peft_config["default"].to_dict()
        settle()  # at most one checkpoint in flight: bounded memory, ordered records
        folder = step_dir(ckdir, step)
        fut = writer.submit(write_checkpoint, folder, adapter, config, meta, (opt_tensors, opt_info))
        pending.append((fut, folder))
        saved.append(step)
        for cb in callbacks:
            if cb.on_checkpoint(CheckpointEvent(plan.run_id, step, steps, folder, train_loss, held_loss, lr, fut.result)):
                raise _StopRun(step)

    stopped = False
    resumed_from: int | None = None
    start, tokens = 0, 0
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = make_optimizer(params, spec)
        for step, folder in reversed(on_disk):
            state = load_train_state(folder)
            if state is None:
                continue
            set_peft_model_state_dict(model, {k: v.to(device) for k, v in load_adapter_tensors(folder).items()})
            tensors, info = state
            opt.load_state_dict(optimizer_from_tensors({k: v.to(device) for k, v in tensors.items()}, info))
            _restore_rng(tensors)
            start, tokens, resumed_from = step, int(info["tokens_seen"]), step
            break
        if on_step:
            on_step(start, steps)
        if start == 0:
            save(0, None, 0.0, 0)
        window: list[float] = []
        for step in range(start, steps):
            lr = lr_at(step, steps, spec)
            for group in opt.param_groups:
                group["lr"] = lr
            model.train()
            micro = [collate([train[i] for i in idx], pad_id) for idx in step_examples(step, len(train), spec, plan.seed)]
            n_total = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in micro)
            loss_sum = 0.0
            for b in micro:
                b = {k: v.to(device) for k, v in b.items()}
                loss, _ = token_loss(model, b)
                (loss / n_total).backward()
                loss_sum += float(loss.detach())
                tokens += int(b["attention_mask"].sum())
            if spec.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            window.append(loss_sum / n_total)
            done = step + 1
            if on_step:
                on_step(done, steps)
            if done % spec.save_every == 0 or done == steps:
                save(done, sum(window) / len(window), lr, tokens)
                window = []
    except _StopRun as stop:
        stopped = True
        ckdir.mkdir(parents=True, exist_ok=True)
        (ckdir / STOPPED_FILE).write_text(json.dumps({"step": stop.step, "at": time.time()}))
    finally:
        try:
            settle()
        finally:
            writer.shutdown(wait=True)
            model.unload()
            base.model.eval()
    record(RunFinished(plan.run_id, saved[-1], stopped))
    return TrainResult(
        plan.run_id,
        steps,
        saved[-1],
        resumed_from,
        stopped,
        time.time() - t0,
        (saved[-1] if stopped else steps) - start,
        save_wait,
        sorted(set(saved)),
    )


def _drop_damaged(on_disk: list[tuple[int, Path]], record: Record, run_id: str) -> list[tuple[int, Path]]:
    """Delete checkpoints whose adapter no longer matches its meta, and every later one.

    The size is checked for all (cheap); the sha256 for the two latest (the ones training
    resumes from). Deleted checkpoints are redone by training; a ``CheckpointDropped`` event
    lets the pipeline remove their records so nothing downstream reads a stale one.
    """
    damaged = next((i for i, (_, folder) in enumerate(on_disk) if not is_intact(folder, full=i >= len(on_disk) - 2)), None)
    if damaged is None:
        return on_disk
    for step, folder in on_disk[damaged:]:
        shutil.rmtree(folder, ignore_errors=True)
        record(CheckpointDropped(run_id, step))
    console.print(f"  {run_id}: checkpoint step {on_disk[damaged][0]} is damaged; redoing it and the ones after it")
    return on_disk[:damaged]


class _StopRun(Exception):
    def __init__(self, step: int) -> None:
        super().__init__(f"stopped by a callback at step {step}")
        self.step = step


def _saved(run_id: str, folder: Path, meta: dict[str, Any]) -> CheckpointSaved:
    return CheckpointSaved(
        run_id=run_id,
        step=int(meta["step"]),
        path=folder,
        adapter_sha=str(meta["adapter_sha"]),
        train_loss=meta.get("train_loss"),
        heldout_loss=meta.get("heldout_loss"),
        learning_rate=meta.get("learning_rate"),
        tokens_seen=meta.get("tokens_seen"),
        elapsed_s=meta.get("elapsed_s"),
    )
