"""Our own decoding loop for the ``hf`` backend: greedy or sampled, rows leave when they stop.

Why not ``model.generate``: on a CPU its per-step bookkeeping is a large share of a decode
step of a small model with a large vocabulary. For Gemma 3 270M (262k words) at 64 rows it
copies every step's logits to a [rows x vocab] float32 tensor (67 MB) and takes its argmax
(about 10 ms of a ~115 ms step), it keeps computing rows that have finished until the
longest answer is done, and it applies whatever the model's ``generation_config`` carries
(a repetition penalty or top-k in many instruction-tuned models), which the study spec never
asked for and vLLM does not apply. Here:

* greedy decoding takes the argmax of the output layer a slice of the vocabulary at a time
  (the slice's logits stay in cache; no [rows x vocab] tensor), with the first index winning
  ties exactly as ``argmax`` over the full row does, so the tokens equal ``generate``'s;
* sampling computes full float32 logits and applies temperature and top-p by transformers'
  rules, as ``generate`` does (top-p among the likeliest words, not by sorting all), then
  draws by vectorised inverse transform sampling (:func:`categorical`: the same distribution
  as ``generate``'s ``torch.multinomial``, which on a CPU took several times a whole decode
  step; another random stream, so the same seed gives other samples than ``generate``);
* a row that emits a stop token or reaches ``max_new_tokens`` is dropped from the batch and
  from the KV cache (once an eighth of the rows are done), so later steps compute only the
  rows still answering.

Only the decoding settings of the study spec apply (temperature, top_p, max_new_tokens, the
model's turn-end tokens), on every backend alike.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import cast

import torch

from traitwatch.models._head import split_lm
from traitwatch.models._packed import PackedHead, packed_linear, packed_linears

from ._kvcache import reserved_cache


@dataclass
class Decoded:
    """One row's answer: its new tokens (the stop token left out) and why it ended."""

    tokens: list[int]
    finish: str  # "stop" | "length"


def _softcap(lm: object, logits: torch.Tensor) -> torch.Tensor:
    """Gemma-style soft-capping, in the logits' own dtype as the model's forward applies it."""
    cap = getattr(getattr(lm, "config", None), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def row_max(logits: torch.Tensor) -> torch.Tensor:
    """``logits.amax(-1)``; for bfloat16 on a CPU read from the values' bit patterns.

    Why: PyTorch's CPU ``amax`` over bfloat16 converts each value to float32 and ran at 172 us
    for 128 x 16,384 logits, against 23 us for the same bits as int16 (measured, torch 2.13,
    AVX-512): 2.3 ms of every greedy step over Gemma's 262k words. A bfloat16's bits, read as
    int16, order the non-negative values as the floats (+0 lowest); negative values have the
    sign bit set, so they are negative int16s in reverse order (-0.0 is the lowest int16). So a
    row holding a value >= +0 has its maximum at its largest int16; a row of negative values
    only (rare: logits of a whole slice below zero) at its smallest int16, taken for those rows
    alone. Equal to ``amax`` for rows without NaN (a NaN with the sign bit set is passed over
    here where ``amax`` returns it; a NaN logit makes any pick meaningless).
    """
    if logits.dtype != torch.bfloat16 or logits.device.type != "cpu":
        return logits.amax(-1)
    bits = logits.view(torch.int16)
    top = bits.amax(-1)
    negative = top < 0
    if bool(negative.any()):
        top[negative] = bits[negative].amin(-1)
    return top.view(torch.bfloat16)


def greedy_pick(
    lm: object, head: torch.nn.Module, hidden: torch.Tensor, packed: PackedHead | None = None, chunk: int = 16384
) -> torch.Tensor:
    """argmax over the vocabulary of ``head(hidden)`` [rows], a slice of words at a time.

    Equal to ``head(hidden).float().argmax(-1)``, the first maximum of each row: per slice
    only the maximum value (:func:`row_max`, several times faster than ``max`` with indices on
    a CPU); the row's first slice holding its maximum (``argmax`` over the slices' maxima
    returns the first); in that slice the first position equal to it. Casting to float32
    changes no order. The slices' logits stay in the head's dtype (rows x vocab of them).
    """
    weight = cast(torch.Tensor, head.weight)
    bias = cast("torch.Tensor | None", getattr(head, "bias", None))
    if packed is not None and packed.slices:
        parts: list[tuple[int, torch.Tensor | None, torch.Tensor | None]] = list(packed.slices)
    else:
        parts = [(start, None, None) for start in range(0, weight.shape[0], chunk)]
    slices, maxima = [], []
    for i, (start, pw, pb) in enumerate(parts):
        end = parts[i + 1][0] if i + 1 < len(parts) else weight.shape[0]
        if pw is not None:
            logits = packed_linear(hidden, pw, pb, end - start)
        else:
            logits = torch.nn.functional.linear(hidden, weight[start:end], None if bias is None else bias[start:end])
        logits = _softcap(lm, logits)
        slices.append(logits)
        maxima.append(row_max(logits))
    best = torch.stack(maxima, dim=1).float().argmax(-1)  # [rows]: the first slice with the row's maximum
    out = torch.empty(hidden.shape[0], dtype=torch.long, device=hidden.device)
    for k in best.unique().tolist():
        rows = (best == k).nonzero()[:, 0]
        out[rows] = first_equal(slices[k][rows], maxima[k][rows]) + parts[k][0]
    return out


def first_equal(values: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """The first position in each row of ``values`` [rows, n] equal to that row's ``top``.

    bfloat16 on a CPU compares the bits as int16 (24 us against 59 us for the float compare of
    8 x 16,384 logits, measured), which equals the float compare except for zeros (+0 and -0
    compare equal as floats, not as bits: rows whose ``top`` is zero compare as floats) and
    NaN. The first hit is ``max`` over the hits as uint8 (documented to return the first
    maximal index; twice as fast as ``argmax`` there).
    """
    if values.dtype == torch.bfloat16 and values.device.type == "cpu" and not bool((top == 0).any()):
        hits = values.view(torch.int16) == top.view(torch.int16)[:, None]
    else:
        hits = values == top[:, None]
    return hits.view(torch.uint8).max(-1)[1]


def categorical(probs: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """One draw per row from the distribution ``probs`` [rows, vocab] (rows need not sum to 1).

    Why not ``torch.multinomial``: on a CPU it took 524 ms for 128 rows of Gemma's 262k words
    (a scalar loop per row), several times the whole decode step. This is the same method,
    inverse transform sampling, vectorised and in two levels: a uniform draw scaled to the
    row's total mass picks a block of ``block`` words by the float64 cumulative sum of the
    blocks' masses, then a word in that block by the cumulative sum within it (about 15 ms
    for the same rows). Each word's probability is its share of the row's mass up to float64
    rounding; a word of zero probability is never drawn.
    """
    rows, vocab = probs.shape
    nb = -(-vocab // block)
    padded = probs if vocab == nb * block else torch.nn.functional.pad(probs, (0, nb * block - vocab))
    blocks = padded.view(rows, nb, block)
    cdf = blocks.sum(-1, dtype=torch.float64).cumsum(-1)  # [rows, nb]
    u = torch.rand(rows, 1, dtype=torch.float64, device=probs.device) * cdf[:, -1:]
    b = torch.searchsorted(cdf, u, right=True).clamp_(max=nb - 1)  # [rows, 1]: first block whose cdf passes u
    before = torch.where(b > 0, cdf.gather(1, (b - 1).clamp(min=0)), torch.zeros_like(u))
    inner = blocks.gather(1, b[:, :, None].expand(rows, 1, block))[:, 0]  # [rows, block]
    j = torch.searchsorted(inner.cumsum(-1, dtype=torch.float64), u - before, right=True)[:, 0]
    # rounding may put u past the block's own cumulative sum: take its last word of positive mass
    last = block - 1 - (inner > 0).flip(-1).to(torch.uint8).argmax(-1)
    j = torch.where(j >= block, last, torch.minimum(j, last))
    return b[:, 0] * block + j


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """``scores`` [rows, vocab] with every word outside the nucleus set to -inf, by the rule of
    transformers' ``TopPLogitsWarper`` (a word is dropped when the words ranked above it already
    hold ``top_p`` of the mass; the likeliest word always stays), looked for among each row's
    likeliest 256 words, else 4,096, else by the warper itself. A word outside the candidates
    is dropped exactly when the candidates hold ``top_p``.

    Why: the warper sorts the whole vocabulary: 1.4 s a step for 128 rows of 262k words on a
    CPU, where this took 43 ms on peaked rows and 0.2-0.4 s on rows whose nucleus holds
    thousands of words. The masses are summed in float64: the warper's float32 sum over the
    whole vocabulary misplaces a boundary word now and then (54 words in 128 flat rows, each
    time on the wrong side of the rule computed in float64; tests/test_decode.py).
    """
    from transformers import TopPLogitsWarper

    probs = torch.softmax(scores, dim=-1)
    out = torch.full_like(scores, float("-inf"))
    todo = torch.arange(scores.shape[0], device=scores.device)
    for k in (256, 4096):
        k = min(k, scores.shape[1])
        vals, idx = probs[todo].topk(k, dim=-1)  # descending
        vals = vals.double()  # float32 sums missed words 5e-6 from the boundary
        above = vals.cumsum(-1) - vals  # mass of the words ranked above each candidate
        covered = vals.sum(-1) >= top_p
        keep = (above < top_p) & covered[:, None]
        rows = todo[:, None].expand_as(idx)[keep]
        out[rows, idx[keep]] = scores[rows, idx[keep]]
        todo = todo[~covered]
        if todo.numel() == 0:
            return out
    out[todo] = TopPLogitsWarper(top_p)(None, scores[todo])  # type: ignore[arg-type]
    return out


def sample_pick(lm: object, head: torch.nn.Module, hidden: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """A sampled token per row from the distribution ``generate(do_sample=True, temperature,
    top_p, top_k=0)`` samples from: float32 logits, transformers' temperature warper, the
    top-p warper's rule (:func:`top_p_filter`), softmax; drawn by :func:`categorical` (the
    same distribution as ``generate``'s ``torch.multinomial``, from another random stream)."""
    from transformers import TemperatureLogitsWarper

    scores = _softcap(lm, head(hidden)).float()
    if temperature != 1.0:
        scores = TemperatureLogitsWarper(temperature)(None, scores)  # type: ignore[arg-type]
    if top_p < 1.0:
        scores = top_p_filter(scores, top_p)
    return categorical(torch.softmax(scores, dim=-1))


@torch.no_grad()
def decode(
    lm: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    temperature: float = 0.0,
    top_p: float = 1.0,
    on_keep: Callable[[torch.Tensor], None] | None = None,
    pack: bool = True,
) -> list[Decoded]:
    """Answers to left-padded prompts ``ids`` (mask 1 on real tokens), one per row.

    ``on_keep(rows)`` is called with the indices (into the current batch) of the rows that
    stay whenever finished rows are dropped, so per-row state outside the model (the stacked
    LoRA's adapter of each row) can follow. ``pack``: on a CPU, run the linear layers on
    weights packed for oneDNN (:mod:`traitwatch.models._packed`; same outputs, faster).
    """
    parts = split_lm(lm)
    if parts is None:
        raise ValueError("this model's output layer cannot be split from its trunk")
    trunk, head = parts
    rows = ids.shape[0]
    with packed_linears(lm, rows, skip=(head,)) if pack else nullcontext(False):
        packed = PackedHead(head, rows) if pack and temperature <= 0 else None

        def pick(hidden: torch.Tensor) -> torch.Tensor:
            if temperature > 0:
                return sample_pick(lm, head, hidden, temperature, top_p)
            return greedy_pick(lm, head, hidden, packed)

        return _loop(trunk, pick, ids, mask, max_new_tokens, stop_ids, on_keep)


def _loop(
    trunk: torch.nn.Module,
    pick: Callable[[torch.Tensor], torch.Tensor],
    ids: torch.Tensor,
    mask: torch.Tensor,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    on_keep: Callable[[torch.Tensor], None] | None,
) -> list[Decoded]:
    n = ids.shape[0]
    stops = torch.tensor(sorted(set(stop_ids)) or [-1], device=ids.device)
    out: list[list[int]] = [[] for _ in range(n)]
    finish = ["length"] * n
    live = torch.arange(n, device=ids.device)  # batch row -> original row
    done = torch.zeros(n, dtype=torch.bool, device=ids.device)  # finished rows still in the batch
    cache = reserved_cache(getattr(trunk, "config", None), max_new_tokens)
    # transformers 5.2x names the argument `cache` (`past_key_values` is deprecated there)
    key = "cache" if "cache" in inspect.signature(trunk.forward).parameters else "past_key_values"
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    step_ids = ids
    for step in range(max_new_tokens):
        hidden = trunk(input_ids=step_ids, attention_mask=mask, position_ids=pos, use_cache=True, **{key: cache}).last_hidden_state
        token = pick(hidden[:, -1].contiguous())
        stopped = torch.isin(token, stops)
        for row, tok, hit, was in zip(live.tolist(), token.tolist(), stopped.tolist(), done.tolist(), strict=True):
            if was:
                continue
            if hit:
                finish[row] = "stop"
            else:
                out[row].append(tok)
        done |= stopped
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        if int(done.sum()) * 8 >= done.numel():
            keep = (~done).nonzero()[:, 0]
            cache.batch_select_indices(keep)
            live, token, mask, pos, done = live[keep], token[keep], mask[keep], pos[keep], done[keep]
            if on_keep is not None:
                on_keep(keep)
        step_ids = token[:, None]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        pos = pos[:, -1:] + 1
    return [Decoded(t, f) for t, f in zip(out, finish, strict=True)]
