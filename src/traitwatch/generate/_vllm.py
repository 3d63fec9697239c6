"""The optional ``vllm`` backend: vLLM's multi-LoRA engine on a GPU.

Why: vLLM batches requests for many LoRA adapters continuously with paged KV memory and
fused multi-LoRA kernels, which on a GPU beats any ``generate`` loop. It is used only when
the study says ``generation.backend: vllm``; :func:`vllm_available` is checked in preflight
so a study without vLLM or without a GPU fails before any work, with the fix.

Prompts are token ids made by traitwatch's own chat template (the same ids as the ``hf``
backend). Probes use vLLM's prompt log-probabilities: the prompt plus the probe text is
scored with one generated token and the probe tokens' log-probabilities are summed.

Not exercised by the test suite: vLLM cannot be installed on the CPU-only machines our CI
runs on (it needs CUDA wheels). The ``hf`` backend is the default and is tested.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from traitwatch.config import StudySpec
from traitwatch.errors import ModelError
from traitwatch.models import LoadedModel
from traitwatch.train import encode_prompt

from ._protocol import Answer, GenerationRequest


def vllm_available() -> str | None:
    """None when the vllm backend can run here, else why not (one line)."""
    if importlib.util.find_spec("vllm") is None:
        return "the vllm package is not installed"
    if not torch.cuda.is_available():
        return "vllm needs a CUDA GPU and none is visible"
    return None


def _model_source(spec: StudySpec, base: LoadedModel, scratch: Path) -> tuple[str, str | None]:
    """What vLLM should load: a hub id (and revision) or a folder with safetensors weights."""
    m = spec.model
    if m.source == "hub":
        assert m.id is not None
        return m.id, m.revision
    if m.source == "local":
        return str(m.path), None
    if m.source in ("embedded", "gguf"):
        from traitwatch.models._embedded import embedded_model_dir, gguf_model_dir

        return str(embedded_model_dir() if m.source == "embedded" else gguf_model_dir(m.path)), None  # type: ignore[arg-type]
    folder = scratch / "random-base"  # random weights: hand vLLM the very weights in memory
    base.model.save_pretrained(folder, safe_serialization=True)
    base.tokenizer.save_pretrained(folder)
    return str(folder), None


class VLLMGenerator:
    """See module docstring. Build with :func:`vllm_generator`."""

    name = "vllm"

    def __init__(self, base: LoadedModel, spec: StudySpec) -> None:
        reason = vllm_available()
        if reason is not None:
            raise ModelError(
                f"generation.backend is vllm but {reason}",
                where="generation.backend",
                fix="use backend: hf (any device), or pip install vllm on a GPU machine",
            )
        from vllm import LLM

        ev = spec.generation
        self.base = base
        self.ev = ev
        self._scratch = tempfile.TemporaryDirectory(prefix="traitwatch-vllm-")
        model, revision = _model_source(spec, base, Path(self._scratch.name))
        dtype = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}[next(base.model.parameters()).dtype]
        self.llm: Any = LLM(
            model=model,
            revision=revision,
            dtype=dtype,
            seed=ev.seed,
            enable_lora=True,
            max_loras=ev.adapters_per_batch,
            # vLLM accepts only some ranks here; the smallest one that holds ours
            max_lora_rank=next(r for r in (8, 16, 32, 64, 128, 256, 320, 512, 10**9) if r >= spec.lora.r),
            trust_remote_code=False,
        )
        self._ids: dict[str, int] = {}

    def _lora(self, path: str) -> Any:
        from vllm.lora.request import LoRARequest

        if not path:
            return None
        if path not in self._ids:
            self._ids[path] = len(self._ids) + 1  # vLLM's LoRA ids must be positive and unique
        return LoRARequest(Path(path).name, self._ids[path], path)

    def generate(self, requests: Sequence[GenerationRequest], on_batch: Callable[[list[Answer]], None]) -> None:
        from vllm import SamplingParams

        tok = self.base.tokenizer
        ev = self.ev
        stops = list(self.base.stop_ids)
        chunk = max(64, 16 * ev.adapters_per_batch)
        for start in range(0, len(requests), chunk):
            part = list(requests[start : start + chunk])
            prompts = [encode_prompt(tok, r.prompt, ev.system_prompt) for r in part]
            # probes: log P(probe | prompt), once per (adapter, prompt, probe)
            wanted = sorted({(r.adapter, r.prompt, p) for r in part for p in r.probes})
            probe_values: dict[tuple[str, str, str], float] = {}
            if wanted:
                probe_ids = [tok(p, add_special_tokens=False)["input_ids"] for _, _, p in wanted]
                heads = [encode_prompt(tok, prompt, ev.system_prompt) for _, prompt, _ in wanted]
                outs = self.llm.generate(
                    [{"prompt_token_ids": h + p} for h, p in zip(heads, probe_ids, strict=False)],
                    SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0),
                    lora_request=[self._lora(a) for a, _, _ in wanted],
                    use_tqdm=False,
                )
                for w, h, p, o in zip(wanted, heads, probe_ids, outs, strict=False):
                    lps = o.prompt_logprobs
                    probe_values[w] = float(sum(lps[len(h) + i][t].logprob for i, t in enumerate(p)))
            params = [
                SamplingParams(
                    max_tokens=ev.max_new_tokens,
                    temperature=ev.temperature,
                    top_p=ev.top_p if ev.temperature > 0 else 1.0,
                    stop_token_ids=stops,
                    seed=None if ev.temperature == 0 else ev.seed * 1_000_003 + r.sample,
                )
                for r in part
            ]
            outs = self.llm.generate(
                [{"prompt_token_ids": p} for p in prompts], params, lora_request=[self._lora(r.adapter) for r in part], use_tqdm=False
            )
            answers = []
            for r, o in zip(part, outs, strict=False):
                c = o.outputs[0]
                toks = [t for t in c.token_ids if t not in stops]
                answers.append(
                    Answer(
                        r.key,
                        tok.decode(toks, skip_special_tokens=True),
                        len(toks),
                        "length" if c.finish_reason == "length" else "stop",
                        {p: probe_values[(r.adapter, r.prompt, p)] for p in r.probes},
                    )
                )
            on_batch(answers)


def vllm_generator(base: LoadedModel, spec: StudySpec) -> VLLMGenerator:
    """The vllm backend for this study (raises :class:`ModelError` with the fix when unavailable)."""
    return VLLMGenerator(base, spec)
