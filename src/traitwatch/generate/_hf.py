"""The ``hf`` backend: one base model in memory, many LoRA checkpoints in the same batch.

Why: evaluating hundreds of checkpoints by reloading the model for each one spends most of
the time loading. Here the base model stays resident; checkpoints are attached a chunk of
them at a time, and one batch serves rows from different adapters. Two ways to apply many
adapters in one batch: ``stacked`` (default; :mod:`._stacked`, each row through its own
adapter by a few batched products per layer, whatever the number of adapters) and ``peft``
(peft's mixed-adapter batches, ``adapter_names=[...]``; used for adapters that cannot be
stacked, e.g. DoRA). Stacked batches are decoded by our own loop (:mod:`._decode`: the
output layer's argmax a slice at a time, weights packed for oneDNN on a CPU, finished rows
dropped); peft batches by ``generate``. Either way only the spec's decoding settings apply.
Prompts are sorted by length so padding is small. Under greedy decoding the answers equal
one-adapter-at-a-time generation with peft and ``generate`` (tested).

Probes: for a request with probe texts we also measure log P(probe | prompt) as the start of
the answer by teacher forcing, once per (adapter, prompt). This gives smooth curves for
behaviours that greedy text shows only now and then.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from traitwatch.errors import ModelError
from traitwatch.models import LoadedModel, left_pad, split_lm
from traitwatch.models._packed import free_bytes as _free_bytes
from traitwatch.progress import console
from traitwatch.train import encode_prompt

from ._decode import decode
from ._protocol import Answer, GenerationRequest
from ._stacked import NotStackable, StackedLora, adapter_config


def strip_lora(module: Any) -> None:
    """Put back the original layers wherever peft wrapped one (``base_layer``), in place.

    Needed when peft fails half way through attaching an adapter: it has already replaced
    some layers of the shared base model, and the next user of that model must not see them.
    """
    for name, child in list(module.named_children()):
        base = getattr(child, "base_layer", None)
        if base is not None and hasattr(child, "lora_A"):
            setattr(module, name, base)
        else:
            strip_lora(child)
    if hasattr(module, "peft_config"):
        try:
            del module.peft_config
        except AttributeError:
            pass


def auto_batch_size(base: LoadedModel, max_tokens: int, *, cap: int = 256, cpu: int = 128) -> int:
    """Rows per batch: on a GPU as many as 70% of free memory holds; on a CPU ``cpu`` rows, or
    fewer where a quarter of the free memory does not hold them.

    Why: decoding reads every weight once per step whatever the batch, so on a GPU more rows
    are nearly free until the KV cache fills memory. On a CPU the step is compute-bound, but
    a small batch still wastes the matrix units: measured with our decoding loop on the 270M
    model with 16 checkpoints (256 answers of 32 tokens, 2-core AMD EPYC, 2026-12-05), 64 rows
    gave 14.1-14.5 answers/s, 128 rows 15.2-16.0 and 256 rows 15.6-16.0, so 128 (half the
    memory of 256). Per row: keys and values of every layer for ``max_tokens`` positions,
    plus a few float32 rows of logits.
    """
    cfg = base.model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    heads = int(getattr(cfg, "num_attention_heads", 1))
    kv = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    elem = next(base.model.parameters()).element_size()
    per_row = 2 * int(cfg.num_hidden_layers) * kv * head_dim * max_tokens * elem + 3 * 4 * int(cfg.vocab_size)
    if base.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(base.device)
        rows = int(0.7 * free) // per_row
    else:
        cap, free = cpu, _free_bytes()
        rows = free // 4 // per_row if free else cpu
    return max(1, min(cap, 1 << max(0, rows.bit_length() - 1)))


def adapter_configs(adapters: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Each adapter folder's adapter_config.json, read once ({} for the bare base model and for
    a config that cannot be read: attaching the adapter reports that)."""
    out: dict[str, dict[str, Any]] = {}
    for path in adapters:
        try:
            out[path] = adapter_config(path) if path else {}
        except (OSError, ValueError):
            out[path] = {}
    return out


def _rank(config: dict[str, Any]) -> int:
    try:
        return int(config.get("r") or 0)
    except (TypeError, ValueError):
        return 0


def adapter_order(configs: dict[str, dict[str, Any]]) -> list[str]:
    """The order adapters (``configs``' keys) are attached in, a chunk at a time: by rank (0 for
    the bare base model or an unreadable config), then by path (a run's checkpoints together).
    Why by rank: the stacked LoRA pads every adapter of a chunk to the chunk's largest rank, so
    a chunk that mixed ranks 8 and 64 would do rank-64 work for all."""
    return sorted(configs, key=lambda a: (_rank(configs[a]), a))


class HFGenerator:
    """See module docstring. Build with :func:`hf_generator`."""

    name = "hf"

    def __init__(
        self,
        base: LoadedModel,
        *,
        batch_size: int | str,
        adapters_per_batch: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        system_prompt: str | None,
        seed: int,
        lora: str = "stacked",
    ) -> None:
        if lora not in ("stacked", "peft"):
            raise ValueError(f"lora must be 'stacked' or 'peft', not {lora!r}")
        self.base = base
        self.lora = lora
        self.stacked_used = False  # whether the last chunk ran stacked (for tests and benchmarks)
        self._stacked: StackedLora | None = None
        self._told_fallback = False
        self.batch_size = batch_size
        self._batch = batch_size if isinstance(batch_size, int) else 0  # resolved in generate()
        self.adapters_per_batch = adapters_per_batch
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.system_prompt = system_prompt
        self.seed = seed
        self._prompt_cache: dict[str, list[int]] = {}

    # -- helpers -----------------------------------------------------------------------------
    def _ids(self, prompt: str) -> list[int]:
        if prompt not in self._prompt_cache:
            self._prompt_cache[prompt] = encode_prompt(self.base.tokenizer, prompt, self.system_prompt)
        return self._prompt_cache[prompt]

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return left_pad(rows, int(self.base.tokenizer.pad_token_id), self.base.device)

    def _attach(self, adapters: list[str]) -> tuple[Any, dict[str, str]]:
        """Attach these adapters; returns (model to call, path -> adapter name or stacked slot)."""
        from peft import PeftModel

        self._stacked = None
        self.stacked_used = False
        if self.lora == "stacked":
            try:
                self._stacked = StackedLora(self.base.model, adapters)
            except NotStackable as why:
                if not self._told_fallback:
                    console.print(
                        f"[yellow]note:[/] checkpoints cannot be stacked ({why}); using peft mixed-adapter batches (same answers, slower)"
                    )
                    self._told_fallback = True
            except (ValueError, RuntimeError, KeyError) as exc:
                raise ModelError(
                    f"adapter does not fit the base model: {str(exc).splitlines()[0][:200]}",
                    where=", ".join(a for a in adapters if a)[:300],
                    fix="evaluate adapters with the base model they were trained on (model: in the study spec)",
                ) from None
        if self._stacked is not None:
            self.stacked_used = True
            self.base.model.eval()
            return self.base.model, {path: str(self._stacked.slot(path)) for path in adapters}
        names: dict[str, str] = {}
        model: Any = None
        for i, path in enumerate(adapters):
            if not path:
                names[path] = "__base__"
                continue
            name = f"a{i}"
            try:
                if model is None:
                    model = PeftModel.from_pretrained(self.base.model, path, adapter_name=name, is_trainable=False)
                else:
                    model.load_adapter(path, adapter_name=name, is_trainable=False)
            except (RuntimeError, ValueError, KeyError) as exc:
                if model is not None:
                    model.unload()
                else:
                    strip_lora(self.base.model)
                raise ModelError(
                    f"adapter does not fit the base model: {str(exc).splitlines()[0][:200]}",
                    where=str(path),
                    fix="evaluate adapters with the base model they were trained on (model: in the study spec)",
                ) from None
            names[path] = name
        if model is None:
            model = self.base.model
        model.eval()
        return model, names

    @contextmanager
    def _rows(self, model: Any, names: list[str], kwargs: dict[str, Any]) -> Iterator[None]:
        """Route batch row i through adapter ``names[i]`` for the forward passes in this block."""
        if self._stacked is not None:
            with self._stacked.rows([int(n) for n in names]):
                yield
            return
        if hasattr(model, "peft_config") and (len(set(names)) > 1 or len(model.peft_config) > 1):
            kwargs["adapter_names"] = names  # else the one attached adapter is active for every row
        yield

    # -- the work ---------------------------------------------------------------------------
    @torch.no_grad()
    def _generate_batch(self, model: Any, rows: list[tuple[GenerationRequest, str]]) -> list[tuple[str, int, str]]:
        ids, mask = self._left_pad([self._ids(r.prompt) for r, _ in rows])
        names = [name for _, name in rows]
        if not hasattr(model, "peft_config") and split_lm(model) is not None:
            # stacked adapters or the bare base model: our decoding loop (see _decode)
            with self._rows(model, names, {}):
                outs = decode(
                    model,
                    ids,
                    mask,
                    max_new_tokens=self.max_new_tokens,
                    stop_ids=self.base.stop_ids,
                    temperature=self.temperature,
                    top_p=self.top_p,
                    on_keep=self._stacked.keep if self._stacked is not None else None,
                )
            tok = self.base.tokenizer
            return [(tok.decode(o.tokens, skip_special_tokens=True), len(o.tokens), o.finish) for o in outs]
        # peft's mixed-adapter batches go through generate(), with only the spec's settings
        # (a fresh GenerationConfig: nothing from the model's own, as in _decode)
        from transformers import GenerationConfig

        sampled = self.temperature > 0
        config = GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            eos_token_id=self.base.stop_ids,
            pad_token_id=int(self.base.tokenizer.pad_token_id),
            do_sample=sampled,
            temperature=self.temperature if sampled else None,
            top_p=self.top_p if sampled else None,
            top_k=0 if sampled else None,
        )
        kwargs: dict[str, Any] = dict(input_ids=ids, attention_mask=mask, generation_config=config)
        with self._rows(model, names, kwargs):
            out = model.generate(**kwargs)
        new = out[:, ids.shape[1] :].tolist()
        stops = set(self.base.stop_ids)
        results = []
        for seq in new:
            cut = next((i for i, t in enumerate(seq) if t in stops), None)
            toks = seq if cut is None else seq[:cut]
            text = self.base.tokenizer.decode(toks, skip_special_tokens=True)
            results.append((text, len(toks), "length" if cut is None else "stop"))
        return results

    @torch.no_grad()
    def _probe_batch(self, model: Any, rows: list[tuple[str, str, str]]) -> list[float]:
        """log P(probe | prompt) for rows of (prompt, probe text, adapter name)."""
        tok = self.base.tokenizer
        probe_ids = [tok(p, add_special_tokens=False)["input_ids"] for _, p, _ in rows]
        seqs = [self._ids(prompt) + pid for (prompt, _, _), pid in zip(rows, probe_ids, strict=False)]
        ids, mask = self._left_pad(seqs)
        keep = max(len(p) for p in probe_ids) + 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "logits_to_keep": keep}
        with self._rows(model, [name for _, _, name in rows], kwargs):
            logits = model(**kwargs).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        out = []
        for i, pid in enumerate(probe_ids):
            n = len(pid)
            # logits[:, j] predicts the token after position (T - keep + j); probe tokens are the last n.
            pos = torch.arange(keep - 1 - n, keep - 1)
            out.append(float(logp[i, pos, torch.tensor(pid)].sum()))
        return out

    def generate(self, requests: Sequence[GenerationRequest], on_batch: Callable[[list[Answer]], None]) -> None:
        if not isinstance(self.batch_size, int) and requests:
            longest = max(len(self._ids(r.prompt)) + max((len(p) for p in r.probes), default=0) for r in requests)
            self._batch = auto_batch_size(self.base, longest + self.max_new_tokens)
        by_adapter: dict[str, list[GenerationRequest]] = defaultdict(list)
        for r in requests:
            by_adapter[r.adapter].append(r)
        configs = adapter_configs(by_adapter)
        adapters = adapter_order(configs)
        torch.manual_seed(self.seed)
        # peft cannot mix DoRA adapters in one batch (and they cannot be stacked): one at a time
        per = 1 if any(c.get("use_dora") for c in configs.values()) else self.adapters_per_batch
        for c in range(0, len(adapters), per):
            chunk = adapters[c : c + per]
            for path in chunk:
                if path and not Path(path).is_dir():
                    raise ModelError("adapter folder not found", where=path, fix="run `traitwatch train` for this study first")
            model, names = self._attach(chunk)
            try:
                self._run_chunk(model, names, [r for a in chunk for r in by_adapter[a]], on_batch)
            finally:
                if self._stacked is not None:
                    self._stacked.close()
                    self._stacked = None
                elif hasattr(model, "peft_config"):
                    model.unload()
                self.base.model.eval()

    def _run_chunk(
        self,
        model: Any,
        names: dict[str, str],
        requests: list[GenerationRequest],
        on_batch: Callable[[list[Answer]], None],
    ) -> None:
        # Probe log-probabilities, once per (adapter, prompt, probe).
        wanted = sorted({(r.adapter, r.prompt, p) for r in requests for p in r.probes})
        probe_values: dict[tuple[str, str, str], float] = {}
        wanted.sort(key=lambda w: len(self._ids(w[1])))
        # Within a batch, rows grouped by adapter: the stacked LoRA then computes each adapter's
        # product on its own rows for passes of many tokens (StackedLora.rows).
        for i in range(0, len(wanted), self._batch):
            probes = sorted(wanted[i : i + self._batch], key=lambda w: w[0])
            vals = self._probe_batch(model, [(prompt, probe, names[a]) for a, prompt, probe in probes])
            probe_values.update(zip(probes, vals, strict=True))
        # Answers, length-sorted across adapters.
        order = sorted(requests, key=lambda r: (len(self._ids(r.prompt)), r.adapter, r.sample))
        for i in range(0, len(order), self._batch):
            part = sorted(order[i : i + self._batch], key=lambda r: r.adapter)
            outs = self._generate_batch(model, [(r, names[r.adapter]) for r in part])
            on_batch(
                [
                    Answer(r.key, text, n, finish, {p: probe_values[(r.adapter, r.prompt, p)] for p in r.probes})
                    for r, (text, n, finish) in zip(part, outs, strict=False)
                ]
            )


def hf_generator(
    base: LoadedModel,
    *,
    batch_size: int | str = 32,
    adapters_per_batch: int = 16,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    system_prompt: str | None = None,
    seed: int = 0,
    lora: str = "stacked",
) -> HFGenerator:
    """The default backend (any device): batched mixed-adapter generation with peft.

    Args:
        base: the resident base model.
        batch_size: rows per ``generate`` call, or ``"auto"`` (:func:`auto_batch_size`).
        adapters_per_batch: adapters attached at once (memory: one LoRA each).
        max_new_tokens: answer length cap; answers that hit it are marked ``finish="length"``.
        temperature: 0 for greedy decoding.
        top_p: nucleus sampling mass.
        system_prompt: optional system turn before every question.
        seed: torch seed set before generating.
        lora: ``stacked`` (our batched LoRA, falls back to peft where it cannot stack) or
            ``peft`` (peft mixed-adapter batches).
    """
    return HFGenerator(
        base,
        batch_size=batch_size,
        adapters_per_batch=adapters_per_batch,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        system_prompt=system_prompt,
        seed=seed,
        lora=lora,
    )
