"""Checkpoint folders written by any trainer: which layouts exist, when one is complete, and
how a run trained elsewhere becomes a run of the store.

Layouts understood (the folder that holds them is the run's checkpoint folder):

- Hugging Face / TRL / Unsloth: ``checkpoint-N/`` (N = global step) holding
  ``adapter_model.safetensors`` and ``adapter_config.json``, usually ``trainer_state.json``
  (``global_step``, ``max_steps``, ``log_history`` with the losses).
- traitwatch: ``step_NNNNNN/`` holding the adapter, its config and ``meta.json`` (run id,
  step, total steps, losses, the run's fingerprint, the adapter's size and sha256).

Why a completeness test of its own: a Hugging Face Trainer writes ``checkpoint-N`` in place
(no temporary name), so a folder can be seen half-written. A folder counts as complete only
when its adapter file is a whole safetensors file (its header names tensors that end exactly
at the end of the file), its ``adapter_config.json`` parses and, for our layout, its size is
the one ``meta.json`` records; ``.tmp`` folders are never read.

Why the fingerprint rules: an answer's key holds the run's fingerprint, so the same adapter
folder must get the same fingerprint whoever registers it (``traitwatch watch``, ``traitwatch
import``, the Hugging Face callback): a run of this study keeps its own (from ``meta.json``),
and a run already registered for the same folder keeps the one it has.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitwatch.config import LEVELS, StudySpec
from traitwatch.errors import StoreError
from traitwatch.store import CheckpointRow, Store, content_key
from traitwatch.train import ADAPTER_FILE

#: Sources (``info.source`` of a stored run) of runs trained outside this study's plan.
EXTERNAL_SOURCES = ("import", "hf-trainer", "watch")
CONFIG_FILE = "adapter_config.json"
TRAINER_STATE = "trainer_state.json"
#: A new run id names files and folders (exports, trackers, reports): letters, digits, ``_ . -``.
_SAFE_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

_HF_DIR = re.compile(r"^checkpoint-(\d+)$")
_OUR_DIR = re.compile(r"^step_(\d{6})$")
_RUN_ID = r"^(?P<domain>.+)-(?P<level>{})-s(?P<seed>\d+)$"  # {}: the levels and the spec's named conditions


@dataclass(frozen=True)
class FoundCheckpoint:
    """A checkpoint folder by its name: its step, where it is, and its layout (``hf`` or ``traitwatch``)."""

    step: int
    path: Path
    layout: str


def find_checkpoints(folder: Path) -> list[FoundCheckpoint]:
    """The checkpoint folders directly under ``folder``, by step (complete or not; ``.tmp`` never)."""
    out: dict[int, FoundCheckpoint] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    for p in entries:
        hf, ours = _HF_DIR.match(p.name), _OUR_DIR.match(p.name)
        m = hf or ours
        if m is None or not p.is_dir():
            continue
        step = int(m.group(1))
        out.setdefault(step, FoundCheckpoint(step, p, "hf" if hf else "traitwatch"))
    return [out[s] for s in sorted(out)]


def checkpoint_root(folder: Path) -> Path:
    """The folder holding the checkpoints: ``folder``, or ``folder/checkpoints`` for a run folder of ours."""
    if not find_checkpoints(folder) and find_checkpoints(folder / "checkpoints"):
        return folder / "checkpoints"
    return folder


def safetensors_complete(path: Path) -> bool:
    """True when ``path`` is a whole safetensors file: its tensors end exactly at the file's end."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return False
            n = int.from_bytes(head, "little")
            if n <= 1 or 8 + n > size or n > 100 << 20:
                return False
            header = json.loads(fh.read(n))
    except (OSError, ValueError):
        return False
    if not isinstance(header, dict):
        return False
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            return False
    return size == 8 + n + end


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def incomplete_reason(ck: FoundCheckpoint) -> str | None:
    """Why this checkpoint folder cannot be read yet (None: it is complete)."""
    adapter = ck.path / ADAPTER_FILE
    if not adapter.is_file():
        return f"no {ADAPTER_FILE} yet"
    if not safetensors_complete(adapter):
        return f"{ADAPTER_FILE} is still being written (incomplete safetensors file)"
    if _json(ck.path / CONFIG_FILE) is None:
        return f"{CONFIG_FILE} missing or still being written"
    if ck.layout == "traitwatch":
        meta = _json(ck.path / "meta.json")
        if meta is None:
            return "meta.json missing or still being written"
        if "adapter_bytes" in meta and meta["adapter_bytes"] != adapter.stat().st_size:
            return "the adapter does not match its meta.json (truncated or replaced)"
    return None


def signature(ck: FoundCheckpoint) -> tuple[int, ...]:
    """Sizes and modification times of the files that matter: equal in two looks = settled."""
    out: list[int] = []
    for name in (ADAPTER_FILE, CONFIG_FILE, "meta.json"):
        try:
            st = (ck.path / name).stat()
            out += [st.st_size, st.st_mtime_ns]
        except OSError:
            out += [-1, -1]
    return tuple(out)


def read_meta(ck: FoundCheckpoint) -> dict[str, Any]:
    """Our layout's meta.json (empty for other layouts or when unreadable)."""
    return (_json(ck.path / "meta.json") or {}) if ck.layout == "traitwatch" else {}


def trainer_state(ck: FoundCheckpoint) -> dict[str, Any]:
    """A Hugging Face checkpoint's trainer_state.json (empty when absent)."""
    return _json(ck.path / TRAINER_STATE) or {}


def training_finished(ck: FoundCheckpoint) -> bool:
    """Whether this (newest) checkpoint is the last of its training run, as its files say."""
    if ck.layout == "traitwatch":
        meta = read_meta(ck)
        return bool(meta.get("total_steps")) and meta.get("step") == meta.get("total_steps")
    state = trainer_state(ck)
    try:
        return int(state.get("max_steps") or 0) > 0 and int(state.get("global_step", -1)) >= int(state["max_steps"])
    except (TypeError, ValueError):
        return False


def planned_total(ck: FoundCheckpoint) -> int | None:
    """The run's total steps as the newest checkpoint records them (None: not recorded)."""
    value = read_meta(ck).get("total_steps") if ck.layout == "traitwatch" else trainer_state(ck).get("max_steps")
    try:
        return int(value) if value else None
    except (TypeError, ValueError):
        return None


def checkpoint_row(run_id: str, ck: FoundCheckpoint, sha: str, history: list[dict[str, Any]]) -> CheckpointRow:
    """The store row of a complete checkpoint; losses from meta.json, else from the trainer's log history."""
    meta = read_meta(ck)
    if meta:
        return CheckpointRow(
            run_id=run_id,
            step=ck.step,
            path=str(ck.path.resolve()),
            adapter_sha=sha,
            train_loss=meta.get("train_loss"),
            heldout_loss=meta.get("heldout_loss"),
            learning_rate=meta.get("learning_rate"),
            tokens_seen=meta.get("tokens_seen"),
            elapsed_s=meta.get("elapsed_s"),
        )
    log = trainer_state(ck).get("log_history") or history
    logged = [e for e in log if isinstance(e, dict) and isinstance(e.get("step"), int) and 0 < e["step"] <= ck.step]
    losses = [e for e in logged if "loss" in e]
    evals = [e for e in logged if "eval_loss" in e and e["step"] == ck.step]
    return CheckpointRow(
        run_id=run_id,
        step=ck.step,
        path=str(ck.path.resolve()),
        adapter_sha=sha,
        train_loss=float(losses[-1]["loss"]) if losses and ck.step > 0 else None,
        heldout_loss=float(evals[-1]["eval_loss"]) if evals else None,
        learning_rate=float(losses[-1]["learning_rate"]) if losses and "learning_rate" in losses[-1] else None,
        tokens_seen=None,
        elapsed_s=None,
    )


def record_checkpoint(store: Store, row: CheckpointRow) -> str:
    """Store the row unless the same adapter is stored at this step: ``new``, ``same`` or ``replaced``."""
    old = next((c for c in store.checkpoints(row.run_id) if c.step == row.step), None)
    if old is not None and old.adapter_sha == row.adapter_sha:
        return "same"
    store.add_checkpoint(row)
    return "new" if old is None else "replaced"


@dataclass(frozen=True)
class RunIdentity:
    """Who a checkpoint folder is in the store: run id, fingerprint, and its stored row if any."""

    run_id: str
    fingerprint: str
    stored: dict[str, Any] | None

    @property
    def external(self) -> bool:
        """Registered (or to be registered) as a run trained outside this study's plan."""
        return self.stored is None or (self.stored.get("info") or {}).get("source") in EXTERNAL_SOURCES


def identify_run(
    store: Store, folder: Path, found: list[FoundCheckpoint], *, kind: str, run_id: str | None, default_id: str | None = None
) -> RunIdentity:
    """The run a checkpoint folder is: a run of a traitwatch study keeps the id and fingerprint
    its meta.json names; a folder registered before keeps its fingerprint; else a new one
    ``content_key(f"{kind}-v1", run_id, folder)`` (``folder`` resolved). The id: ``run_id``
    (the user's), else the id the folder was registered under, else ``default_id``, else the
    folder's name."""
    folder = folder.resolve()
    runs = {r["run_id"]: r for r in store.runs()}
    meta = next((m for m in (read_meta(c) for c in found) if m.get("run_id") and m.get("fingerprint")), None)
    if meta is not None:
        rid = str(meta["run_id"])
        if run_id is not None and run_id != rid:
            raise StoreError(
                f"this folder holds run '{rid}' of a traitwatch study (its meta.json says so); --run-id {run_id} would split its answers",
                where=str(folder),
                fix="leave out --run-id",
            )
        stored = runs.get(rid)
        if stored is not None and stored["fingerprint"] != meta["fingerprint"]:
            raise StoreError(
                f"run '{rid}' is stored with other settings than the run in this folder",
                where=str(folder),
                fix="use the store of the study that trained it, or another output_dir",
            )
        return RunIdentity(rid, str(meta["fingerprint"]), stored)
    if run_id is None:  # a folder registered before under another name keeps it
        same = [r for r in runs.values() if _external_dir(r) == folder]
        if len(same) == 1:
            return RunIdentity(same[0]["run_id"], str(same[0]["fingerprint"]), same[0])
    rid = run_id or default_id or folder.name
    stored = runs.get(rid)
    if stored is None:
        if not _SAFE_RUN_ID.match(rid):
            why = f"'{rid}' cannot be a run id: it names files and folders, so only letters, digits, '_', '.', '-' (up to 128)"
            raise StoreError(why, where="--run-id" if run_id is not None else str(folder), fix="name the run with --run-id NAME")
        return RunIdentity(rid, content_key(f"{kind}-v1", rid, str(folder)), None)
    if _external_dir(stored) == folder:
        return RunIdentity(rid, str(stored["fingerprint"]), stored)
    where = (stored.get("info") or {}).get("dir") or (stored.get("info") or {}).get("output_dir")
    other = f"the folder {where}" if where else "a run of this study"
    raise StoreError(
        f"run id '{rid}' is already in the store for {other}",
        where=str(folder),
        fix="name this run with --run-id NAME",
    )


def _external_dir(run: dict[str, Any]) -> Path | None:
    """The checkpoint folder of a stored run trained elsewhere (None for a run of the study)."""
    info = run.get("info") or {}
    where = info.get("dir") or info.get("output_dir")
    return Path(str(where)).resolve() if info.get("source") in EXTERNAL_SOURCES and where else None


def run_design(spec: StudySpec, run_id: str, domain: str | None, level: str | None, seed: int | None) -> tuple[str, str, int]:
    """(domain, level, seed) to file a run under: the options given, else what a run id of the
    form ``domain-level-sSEED`` says, else ``external``, the spec's level when it names one
    (else ``unknown``), and seed 0."""
    m = re.match(_RUN_ID.format("|".join(map(re.escape, dict.fromkeys([*LEVELS, *spec.levels])))), run_id)
    default_level = spec.levels[0] if len(spec.levels) == 1 else "unknown"
    return (
        domain or (m.group("domain") if m else "external"),
        level or (m.group("level") if m else default_level),
        seed if seed is not None else (int(m.group("seed")) if m else 0),
    )
