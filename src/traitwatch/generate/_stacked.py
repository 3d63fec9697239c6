"""Many LoRA checkpoints applied to one resident base model in a single batch, stacked.

Why not peft's mixed-adapter batches: for every adapted layer peft loops over the adapters
present in the batch, selecting and scattering their rows: K small matrix products plus
index copies per layer per decode step. With 16 checkpoints in a batch on the 270M Gemma
that loop costs about as much as the base model itself (measured in ``bench/``); on a GPU it
is thousands of tiny kernel launches per step.

Here every adapted linear layer gets all K adapters' ``A`` matrices concatenated into one
``[R, in]`` matrix and all ``B * scale`` into one ``[out, R]`` matrix (R = sum of ranks). A
forward hook adds ``((x @ A_cat^T) * mask) @ B_cat^T`` to the layer's output, where ``mask``
keeps, for each row of the batch, only the columns of that row's adapter. That is two dense
products and one multiply per layer whatever K is, with no gathers or scatters. Its extra
work grows with R (K x rank), so it suits the dozens of small-rank checkpoints of a study.

Only plain LoRA on linear layers is stacked (no DoRA, biases, rank/alpha patterns or
``modules_to_save``); :func:`can_stack` says whether a set of adapters qualifies and the
generator falls back to peft when not. Under greedy decoding the answers equal those of peft
with one adapter at a time (tested).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

_PREFIX = "base_model.model."


def adapter_config(path: str) -> dict[str, Any]:
    """A peft adapter folder's adapter_config.json."""
    return json.loads((Path(path) / "adapter_config.json").read_text())


def can_stack(model: nn.Module, adapters: Sequence[str]) -> str | None:
    """None when these adapter folders can be stacked onto ``model``, else the reason why not."""
    modules = dict(model.named_modules())
    for path in adapters:
        if not path:
            continue
        try:
            cfg = adapter_config(path)
        except (OSError, ValueError) as exc:
            return f"{path}: unreadable adapter_config.json ({exc})"
        if cfg.get("peft_type") != "LORA":
            return f"{path}: peft_type {cfg.get('peft_type')!r} is not LORA"
        for key, plain in (("use_dora", False), ("bias", "none"), ("fan_in_fan_out", False), ("lora_bias", False)):
            if cfg.get(key, plain) not in (plain, None):
                return f"{path}: {key}={cfg.get(key)!r}"
        for key in (
            "modules_to_save",
            "rank_pattern",
            "alpha_pattern",
            "trainable_token_indices",
            "target_parameters",
            "layer_replication",
        ):
            if cfg.get(key):
                return f"{path}: {key} is set"
        if not (Path(path) / "adapter_model.safetensors").is_file():
            return f"{path}: no adapter_model.safetensors"
        targets = cfg.get("target_modules") or []
        if isinstance(targets, str):
            return f"{path}: target_modules is a pattern ({targets!r}), not a list of modules"
        for name in targets:
            mod = modules.get(name)
            if mod is not None and type(mod) is not nn.Linear:
                return f"{path}: {name} is a {type(mod).__name__}, not a plain Linear"
    return None


class NotStackable(ValueError):
    """These adapters are valid but cannot be stacked (see :func:`can_stack`); use peft."""


class StackedLora:
    """K LoRA adapters hooked onto a base model; choose each row's adapter with :meth:`rows`.

    Slot 0 is the bare base model (no adapter); adapter ``adapters[i]`` is slot ``i``
    (an empty path is also the bare base). Call :meth:`close` (or use as a context manager)
    to remove the hooks: the base model is never modified.
    """

    def __init__(self, model: nn.Module, adapters: Sequence[str]) -> None:
        reason = can_stack(model, adapters)
        if reason is not None:
            raise NotStackable(reason)
        self.model = model
        self.adapters = list(adapters)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        modules = dict(model.named_modules())
        # module name -> list of (slot, A [r, in], B*scale [out, r])
        parts: dict[str, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
        for slot, path in enumerate(self.adapters):
            if not path:
                continue
            cfg = adapter_config(path)
            weights = load_file(str(Path(path) / "adapter_model.safetensors"))
            names = {k[len(_PREFIX) : -len(".lora_A.weight")] for k in weights if k.endswith(".lora_A.weight")}
            for name in sorted(names):
                if name not in modules or type(modules[name]) is not nn.Linear:
                    raise ValueError(f"{path}: adapter weights for {name}, which is not a linear layer of this model")
                a = weights[f"{_PREFIX}{name}.lora_A.weight"]
                b = weights[f"{_PREFIX}{name}.lora_B.weight"]
                r = a.shape[0]
                lin = modules[name]
                if a.shape[1] != lin.in_features or b.shape != (lin.out_features, r):
                    raise ValueError(f"{path}: {name} LoRA shapes {tuple(a.shape)}/{tuple(b.shape)} do not fit {lin}")
                alpha = float(cfg.get("lora_alpha", r))
                scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
                parts.setdefault(name, []).append((slot, a.float(), b.float() * scale))
        self._layouts: dict[tuple[tuple[int, int], ...], torch.Tensor] = {}
        self._weights: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for name, items in parts.items():
            layout = tuple((slot, a.shape[0]) for slot, a, _ in items)
            if layout not in self._layouts:
                owner = torch.cat([torch.full((r,), slot, dtype=torch.long) for slot, r in layout])
                self._layouts[layout] = owner.to(self.device)
            a_cat = torch.cat([a for _, a, _ in items], dim=0).to(self.device, self.dtype)
            b_cat = torch.cat([b for _, _, b in items], dim=1).to(self.device, self.dtype)
            self._weights[name] = (a_cat, b_cat, self._layouts[layout])
        # Siblings that read the same input (q/k/v of an attention block, gate/up of an MLP:
        # same parent, same input width, same adapters): one product with their A matrices
        # side by side instead of one each (fewer, larger products; measured in bench/).
        groups: dict[tuple[str, int, int], list[str]] = {}
        for name, (a_cat, _, owner) in self._weights.items():
            groups.setdefault((name.rpartition(".")[0], a_cat.shape[1], id(owner)), []).append(name)
        self._group_of: dict[str, tuple[int, int, int]] = {}  # name -> (group, column start, end)
        self._group_a: list[torch.Tensor] = []
        self._group_owner: list[torch.Tensor] = []
        for names_ in groups.values():
            g = len(self._group_a)
            a_cat = torch.cat([self._weights[n][0] for n in names_], dim=0) if len(names_) > 1 else self._weights[names_[0]][0]
            self._group_a.append(a_cat)
            self._group_owner.append(self._weights[names_[0]][2])
            start = 0
            for n in names_:
                r = self._weights[n][0].shape[0]
                self._group_of[n] = (g, start, start + r)
                start += r
        # Per group and slot, the slot's A rows of every sibling side by side, and where each
        # sibling's columns start in that product, with its columns (lo, hi) in A_cat / B_cat:
        # for the prefill's per-adapter products (_segmented).
        self._slot_a: list[dict[int, torch.Tensor]] = []
        self._slot_cols: dict[str, dict[int, tuple[int, int, int]]] = {n: {} for n in self._weights}
        for g, names_ in enumerate(groups.values()):
            owner = self._group_owner[g].cpu()
            per: dict[int, torch.Tensor] = {}
            for slot in sorted(set(owner.tolist())):
                cols = (owner == slot).nonzero()[:, 0]
                lo, hi = int(cols[0]), int(cols[-1]) + 1
                per[slot] = torch.cat([self._weights[n][0][lo:hi] for n in names_], dim=0)
                for i, n in enumerate(names_):
                    self._slot_cols[n][slot] = (i * (hi - lo), lo, hi)
            self._slot_a.append(per)
        self._runs: list[tuple[int, int, int]] | None = None  # (slot, first row, end row) when rows are grouped
        self._low: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # group -> (input, masked low-rank product)
        self._seg_low: dict[int, tuple[torch.Tensor, dict[int, torch.Tensor]]] = {}  # group -> (input, first row -> product)
        self._masks: dict[int, torch.Tensor] = {}
        self._slots: torch.Tensor | None = None
        self._hooks = [modules[name].register_forward_hook(self._hook(name)) for name in self._weights]

    def slot(self, adapter: str) -> int:
        """The slot of an adapter path given at construction."""
        return 0 if not adapter else self.adapters.index(adapter)

    def _group_low(self, g: int, x: torch.Tensor) -> torch.Tensor:
        """The masked low-rank product of group ``g``'s A matrices with ``x``, computed once per
        input: the first sibling to see ``x`` computes it, the others reuse it (same tensor object)."""
        cached = self._low.get(g)
        if cached is not None and cached[0] is x:
            return cached[1]
        owner = self._group_owner[g]
        mask = self._masks.get(id(owner))
        if mask is None:
            assert self._slots is not None
            mask = (self._slots[:, None] == owner[None, :]).to(self.dtype)
            self._masks[id(owner)] = mask
        a = self._group_a[g]
        low = torch.nn.functional.linear(x.to(self.dtype), a)  # [B, T, siblings x R]
        reps = a.shape[0] // owner.shape[0]
        shape = low.shape
        low.view(*shape[:-1], reps, owner.shape[0]).mul_(mask[:, None, None, :] if low.dim() == 3 else mask[:, None, :])  # fresh: in place
        self._low[g] = (x, low)
        return low

    def _segmented(self, name: str, g: int, x: torch.Tensor, out: torch.Tensor) -> None:
        """Add each run of rows' own adapter product to ``out`` in place: ``x[run] @ A_s^T @ B_s^T``.

        Why, for the prefill: the stacked product computes every adapter's columns for every
        row and masks all but one (K times the LoRA work); with many tokens per row that is a
        large share of the pass (about a third of the base model's work at K=16, rank 8).
        Rows grouped by adapter (:meth:`rows` with sorted slots) need only their own columns.
        """
        assert self._runs is not None
        cached = self._seg_low.get(g)
        if cached is None or cached[0] is not x:
            lows: dict[int, torch.Tensor] = {}
            for slot, a, b in self._runs:
                a_s = self._slot_a[g].get(slot)
                if a_s is not None:
                    lows[a] = torch.nn.functional.linear(x[a:b].to(self.dtype), a_s)
            cached = self._seg_low[g] = (x, lows)
        lows = cached[1]
        _, b_cat, _ = self._weights[name]
        for slot, a, b in self._runs:
            where = self._slot_cols[name].get(slot)
            if where is None:
                continue
            start, lo, hi = where
            low = lows[a][..., start : start + hi - lo]
            part = out[a:b].view(-1, out.shape[-1])
            part.addmm_(low.reshape(-1, hi - lo), b_cat[:, lo:hi].t())

    def _hook(self, name: str) -> Any:
        _, b_cat, _ = self._weights[name]
        g, lo, hi = self._group_of[name]

        def hook(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor | None:
            if self._slots is None:
                return None  # not inside rows(): behave as the bare base model
            x = args[0]
            if (
                self._runs is not None
                and x.dim() == 3
                and x.shape[1] > 1
                and not torch.is_grad_enabled()
                and out.dtype == self.dtype
                and out.is_contiguous()
            ):
                self._segmented(name, g, x, out)
                return out
            low = self._group_low(g, x)[..., lo:hi]
            if torch.is_grad_enabled() or out.dtype != self.dtype or not out.is_contiguous():
                return out + torch.nn.functional.linear(low, b_cat).to(out.dtype)
            # inference: add the product into the layer's fresh output in place (one fewer
            # tensor of the layer's output size per layer and step)
            flat = out.view(-1, out.shape[-1])
            flat.addmm_(low.reshape(-1, low.shape[-1]), b_cat.t())
            return out

        return hook

    @contextmanager
    def rows(self, slots: Sequence[int]) -> Iterator[None]:
        """Within this block, batch row i of every forward pass uses adapter slot ``slots[i]``.

        Rows grouped by slot (each slot's rows next to each other) let passes of several
        tokens per row (a prefill) compute each adapter's product on its own rows only.
        """
        self._slots = torch.tensor(list(slots), dtype=torch.long, device=self.device)
        self._runs = _runs(slots)
        self._forget()
        try:
            yield
        finally:
            self._slots = None
            self._runs = None
            self._forget()

    def keep(self, rows: torch.Tensor) -> None:
        """Inside :meth:`rows`: the batch now holds only these rows of it (finished rows left)."""
        assert self._slots is not None
        self._slots = self._slots[rows.to(self._slots.device)]
        self._runs = _runs(self._slots.tolist())
        self._forget()

    def _forget(self) -> None:
        """Drop what was computed for the previous rows (masks, low-rank products)."""
        self._masks = {}
        self._low = {}
        self._seg_low = {}

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def __enter__(self) -> StackedLora:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _runs(slots: Sequence[int]) -> list[tuple[int, int, int]] | None:
    """(slot, first row, end row) of each run of equal slots, or None when some slot's rows are
    not all in one run (rows not grouped by adapter)."""
    runs: list[tuple[int, int, int]] = []
    for i, slot in enumerate(slots):
        if runs and runs[-1][0] == slot:
            runs[-1] = (slot, runs[-1][1], i + 1)
        else:
            runs.append((slot, i, i + 1))
    return runs if len({r[0] for r in runs}) == len(runs) else None
