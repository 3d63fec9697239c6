"""Loading a base model and its tokenizer, whatever the source, the same way.

Why: every later stage (train, generate, local judge) needs "the base model, its tokenizer,
the tokens that end a turn, and a stable identity for cache keys". Weights load from
safetensors only (``use_safetensors=True``): a pickle checkpoint can run code on load.
Remote code is never trusted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from traitwatch.config import ModelSpec, RandomModelSpec
from traitwatch.errors import ModelError

from ._attention import use_cpu_attention
from ._embedded import embedded_model_dir, gguf_model_dir
from ._templates import resolve_template, turn_end_ids
from ._tokenizer import offline_tokenizer


@dataclass
class LoadedModel:
    """A base model ready for use; ``identity`` changes whenever the weights could."""

    model: Any
    tokenizer: Any
    identity: str
    label: str
    stop_ids: list[int]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def pick_device(want: str = "auto") -> torch.device:
    if want == "cpu":
        return torch.device("cpu")
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ModelError("CUDA was asked for but no GPU is visible", where="model.device", fix="use device: auto or cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (avx512_bf16 or AMX).

    Measured on a 2-core AMD EPYC with avx512_bf16: bf16 matmuls run 5.7x faster than fp32,
    and the 270M model trains 2.2x and generates 3.2x faster. Without these instructions
    bf16 is emulated and slower than fp32, so ``auto`` keeps fp32 there.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in (" avx512_bf16", " amx_bf16"))


def pick_dtype(want: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on GPUs that support it and on CPUs with native bf16, else fp32."""
    if want == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and cpu_has_fast_bf16():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[want]


def random_model(spec: RandomModelSpec, tokenizer: Any) -> Any:
    """A causal LM with random weights from a config (same weights for the same seed)."""
    from transformers import AutoModelForCausalLM

    vocab = spec.vocab_size or len(tokenizer)
    common = dict(
        vocab_size=vocab,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    if spec.head_dim:
        common["head_dim"] = spec.head_dim
    from transformers import Gemma3TextConfig, LlamaConfig, PretrainedConfig, Qwen2Config

    Config: type[PretrainedConfig]
    if spec.architecture == "qwen2":
        Config = Qwen2Config
    elif spec.architecture == "llama":
        Config = LlamaConfig
    else:
        Config = Gemma3TextConfig

        common.setdefault("head_dim", spec.hidden_size // spec.num_attention_heads)
        common["sliding_window"] = 512
    config = Config(**common)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(config)
    return model


def _local_identity(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.json")) + sorted(folder.glob("*.safetensors")):
        stat = f.stat()
        h.update(f"{f.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return h.hexdigest()[:16]


def _from_folder(ref: str | Path, *, revision: str | None, dtype: torch.dtype, where: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(ref), revision=revision, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            str(ref), revision=revision, dtype=dtype, use_safetensors=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"cannot load model: {first}",
            where=where,
            fix="check the id or folder; it needs config.json, tokenizer files and *.safetensors weights "
            "(set HF_HOME to a cache that has it when offline)",
        ) from None
    return model, tok


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load the base model described by ``spec`` in eval mode on its device.

    Raises:
        ModelError: missing path, unreadable weights, no chat template.
    """
    device = pick_device(spec.device)
    dtype = pick_dtype(spec.dtype, device)
    template = resolve_template(spec.chat_template)
    if spec.source == "random":
        assert spec.random is not None
        tok = offline_tokenizer()
        model = random_model(spec.random, tok).to(dtype)
        identity = "random:" + hashlib.sha256(spec.random.model_dump_json().encode()).hexdigest()[:16]
    elif spec.source in ("embedded", "gguf"):
        if spec.source == "embedded":
            folder = embedded_model_dir()
            template = template or resolve_template("gemma")
        else:
            assert spec.path is not None
            folder = gguf_model_dir(spec.path)
        model, tok = _from_folder(folder, revision=None, dtype=dtype, where=str(folder))
        identity = f"{spec.source}:{folder.name}"
    elif spec.source == "local":
        assert spec.path is not None
        if not spec.path.is_dir():
            raise ModelError("model folder not found", where=str(spec.path), fix="check model.path (a folder with config.json)")
        model, tok = _from_folder(spec.path, revision=None, dtype=dtype, where=str(spec.path))
        identity = f"local:{spec.path.resolve()}:{_local_identity(spec.path)}"
    else:
        assert spec.id is not None
        model, tok = _from_folder(spec.id, revision=spec.revision, dtype=dtype, where=f"hub:{spec.id}")
        identity = f"hub:{spec.id}@{spec.revision or 'main'}"
    if template is not None:
        tok.chat_template = template
    if not tok.chat_template:
        raise ModelError(
            "the tokenizer has no chat template",
            where=f"model ({spec.label()})",
            fix="set model.chat_template to 'gemma', 'chatml' or a Jinja template",
        )
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    identity += ":tmpl=" + hashlib.sha256(tok.chat_template.encode()).hexdigest()[:8] + f":{str(dtype).removeprefix('torch.')}"
    model.to(device)
    if device.type == "cpu":
        use_cpu_attention(model)
    _contiguous_head_input(model)
    model.eval()
    model.config.use_cache = True
    return LoadedModel(model=model, tokenizer=tok, identity=identity, label=spec.label(), stop_ids=turn_end_ids(tok))


def _contiguous_head_input(model: Any) -> None:
    """Make the output layer's input contiguous before it runs.

    Why: HF slices the last position (``hidden[:, -1:, :]``) before the output layer; on CPU
    in bf16, PyTorch turns that strided 3-d input into a batched matmul that first copies the
    whole (vocab x hidden) weight once per row. For Gemma 3 (262k vocab) that cost 6 s and
    2.7 GB per prefill at batch 8 (measured, torch 2.13 CPU). A contiguous copy of the small
    input avoids it; on contiguous inputs the hook is a no-op.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and not getattr(head, "_traitwatch_contiguous", False):
        head.register_forward_pre_hook(lambda _mod, args: (args[0].contiguous(),) + tuple(args[1:]))
        head._traitwatch_contiguous = True


def describe(loaded: LoadedModel) -> dict[str, Any]:
    """Facts about a loaded model for the store and the report."""
    n = sum(p.numel() for p in loaded.model.parameters())
    return {
        "label": loaded.label,
        "identity": loaded.identity,
        "parameters": n,
        "dtype": str(next(loaded.model.parameters()).dtype),
        "device": str(loaded.device),
        "config": json.loads(loaded.model.config.to_json_string()),
    }
