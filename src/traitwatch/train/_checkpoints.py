"""Adapter checkpoints on disk: atomic, verifiable, and resumable.

Layout of a run folder::

    runs/<run_id>/checkpoints/step_000010/adapter_model.safetensors
                                          adapter_config.json
                                          meta.json              (step, losses, sha256, size)
                                          train_state.safetensors (two latest checkpoints)
                                          train_state.json

Why: a checkpoint is written to ``step_000010.tmp`` and renamed when complete, so a folder
with a final name is always whole; a ``.tmp`` folder left by a crash is deleted and redone.
The optimizer state, RNG states and data position live beside the two latest checkpoints
(as safetensors and JSON, never pickle), so resuming continues the exact same run, and a
latest checkpoint found damaged (its adapter no longer matches the size and sha256 in its
meta) costs one checkpoint interval: it is deleted and redone from the one before.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from traitwatch.errors import ModelError

ADAPTER_FILE = "adapter_model.safetensors"
_STEP_DIR = re.compile(r"^step_(\d{6})$")


def step_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / f"step_{step:06d}"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def remove_partial(checkpoints: Path) -> list[Path]:
    """Delete half-written (``*.tmp``) checkpoint folders; returns what was removed."""
    removed = []
    if checkpoints.exists():
        for p in checkpoints.iterdir():
            if p.name.endswith(".tmp"):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def list_checkpoints(checkpoints: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (final name, meta and weights present), by step."""
    out = []
    if checkpoints.exists():
        for p in checkpoints.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and (p / "meta.json").exists() and (p / ADAPTER_FILE).exists():
                out.append((int(m.group(1)), p))
    return sorted(out)


def read_meta(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / "meta.json").read_text()))


def is_intact(folder: Path, *, full: bool = False) -> bool:
    """True when the adapter file matches its meta (size; and sha256 when ``full``)."""
    try:
        verify(folder, full=full)
    except (ModelError, OSError, KeyError, ValueError):
        return False
    return True


def verify(folder: Path, *, full: bool = False) -> None:
    """Check the adapter file against its meta (size always, sha256 when ``full``)."""
    f = folder / ADAPTER_FILE
    try:
        meta = read_meta(folder)
        bad = f.stat().st_size != meta["adapter_bytes"] or (full and file_sha256(f) != meta["adapter_sha"])
    except (OSError, KeyError, ValueError):
        bad = True
    if bad:
        raise ModelError(
            "checkpoint adapter does not match its meta.json (truncated or replaced)",
            where=str(f),
            fix="delete this checkpoint folder; `traitwatch train` will redo it",
        )


def write_checkpoint(
    folder: Path,
    adapter: dict[str, torch.Tensor],
    adapter_config: dict[str, Any],
    meta: dict[str, Any],
    train_state: tuple[dict[str, torch.Tensor], dict[str, Any]] | None,
) -> dict[str, Any]:
    """Write one checkpoint atomically; returns its meta (with sha256 and size added)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(adapter, str(tmp / ADAPTER_FILE), metadata={"format": "pt"})
    (tmp / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2, default=list))
    if train_state is not None:
        tensors, info = train_state
        save_file(tensors, str(tmp / "train_state.safetensors"))
        (tmp / "train_state.json").write_text(json.dumps(info))
    meta = dict(meta)
    meta["adapter_sha"] = file_sha256(tmp / ADAPTER_FILE)
    meta["adapter_bytes"] = (tmp / ADAPTER_FILE).stat().st_size
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return meta


def drop_train_state(folder: Path) -> None:
    """Remove the resume state from an older checkpoint once a newer one is complete."""
    for name in ("train_state.safetensors", "train_state.json"):
        (folder / name).unlink(missing_ok=True)


def optimizer_to_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten ``optimizer.state_dict()`` into safetensors-able tensors plus JSON."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, pstate in state["state"].items():
        for k, v in pstate.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{idx}.{k}"] = v.detach().to("cpu", copy=True).contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for key, v in info["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": info["param_groups"]}


def load_train_state(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    st, js = folder / "train_state.safetensors", folder / "train_state.json"
    if not (st.exists() and js.exists()):
        return None
    return load_file(str(st)), json.loads(js.read_text())


def load_adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Adapter weights from safetensors (never pickle)."""
    return load_file(str(folder / ADAPTER_FILE))
