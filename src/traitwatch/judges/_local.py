"""The local judge: any Hugging Face causal LM, scored exactly over the answers 0..100.

Why: an API judge shows only its top-20 first tokens; a local model shows everything. We
compute the probability of each full answer "0".."100" (see ``_numbers`` for the method)
by walking a trie of the numbers' tokenizations level by level. The judge prompt is run
once per request (batched, left-padded, ``logits_to_keep=1``); each trie level is one more
forward step of one token per live prefix, reusing the prompt's KV cache rows
(``Cache.batch_select_indices``), so 101 numbers cost a handful of single-token steps.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from traitwatch.data import TraitDef, fill_rubric, rubric_hash
from traitwatch.models import LoadedModel, left_pad, lse_and_gather, split_lm

from ._numbers import DEFAULT_MIN_MASS, min_mass_tag, weighted_mean
from ._protocol import Judge, JudgeRequest, Judgment, OnResult


@dataclass(frozen=True)
class NumberTrie:
    """Token-sequence trie of the numbers 0..scale_max in their canonical tokenization.

    ``columns`` are the only vocabulary entries whose logits the walk needs: every trie
    token and every token whose text begins with a digit (a continuation of a number).
    """

    children: dict[tuple[int, ...], tuple[int, ...]]
    complete: dict[tuple[int, ...], int]
    columns: torch.Tensor  # vocabulary ids, sorted
    is_digit: torch.Tensor  # bool per column: the token's text begins with a digit

    @classmethod
    def build(cls, tokenizer: Any, vocab_size: int, scale_max: int = 100) -> NumberTrie:
        children: dict[tuple[int, ...], set[int]] = {}
        complete: dict[tuple[int, ...], int] = {}
        for n in range(scale_max + 1):
            seq = tuple(int(t) for t in tokenizer(str(n), add_special_tokens=False)["input_ids"])
            complete[seq] = n
            for i in range(len(seq)):
                children.setdefault(seq[:i], set()).add(seq[i])
        digit = set()
        for i, tok in enumerate(tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))):
            if tok and tok[0] in "0123456789":
                digit.add(i)
        cols = sorted(digit | {t for v in children.values() for t in v})
        return cls(
            {k: tuple(sorted(v)) for k, v in children.items()},
            complete,
            torch.tensor(cols, dtype=torch.long),
            torch.tensor([c in digit for c in cols], dtype=torch.bool),
        )


def _forward(model: Any, cols: torch.Tensor, **kw: Any) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """One forward step: (cache, log-probabilities of ``cols`` at the last position [rows, cols],
    log P(token text begins with anything) normaliser applied)."""
    parts = split_lm(model)
    if parts is not None:
        trunk, head = parts
        out = trunk(use_cache=True, **kw)
        lse, picked = lse_and_gather(model, head, out.last_hidden_state[:, -1], cols)
    else:
        out = model(use_cache=True, logits_to_keep=1, **kw)
        logits = out.logits[:, -1].float()
        lse, picked = torch.logsumexp(logits, dim=-1), logits[:, cols]
    return out.past_key_values, picked - lse[:, None], lse


MIN_SHARED_PREFIX = 16  # tokens; below this, one plain left-padded pass is as cheap


def _common_prefix(prompts: list[list[int]]) -> int:
    """Length of the common beginning, leaving every prompt at least one token of its own."""
    if len(prompts) < 2:
        return 0
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return max(0, n)


def _shared_prefix_inputs(
    model: Any, prompts: list[list[int]], shared: int, pad_id: int, device: torch.device
) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the common prefix once, repeat its cache per row, and lay out the rows' own tails.

    Layout per row: [prefix][padding][own tokens], padding masked out; the own tokens get
    positions ``shared, shared + 1, ...`` as if the padding were not there.
    """
    prefix = torch.tensor([prompts[0][:shared]], device=device)
    out = model(input_ids=prefix, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    cache.batch_repeat_interleave(len(prompts))
    tails = [p[shared:] for p in prompts]
    width = max(len(t) for t in tails)
    ids = torch.full((len(tails), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(tails), shared + width), dtype=torch.long)
    attn[:, :shared] = 1
    pos = torch.zeros((len(tails), width), dtype=torch.long)
    for i, t in enumerate(tails):
        ids[i, width - len(t) :] = torch.tensor(t)
        attn[i, shared + width - len(t) :] = 1
        pos[i, width - len(t) :] = torch.arange(shared, shared + len(t))
    return cache, ids.to(device), attn.to(device), pos.to(device)


@torch.no_grad()
def number_distributions(
    model: Any,
    prompts: list[list[int]],
    trie: NumberTrie,
    *,
    pad_id: int,
    min_prefix_prob: float = 0.0,
    min_mass: float = 0.0,
    share_prefix: bool = True,
) -> list[tuple[dict[int, float], float]]:
    """For each prompt: ({n: P(answer is exactly n)}, pruned mass).

    ``min_prefix_prob = 0`` expands every prefix (exact); otherwise prefixes below it are
    skipped and their probability is returned as the pruned mass (an upper bound on what the
    skipped numbers could hold). When the first token's probability of starting a number is
    already below ``min_mass``, the score is None whatever the rest, so that prompt is not
    expanded (its distribution is left empty and the bound is returned as pruned mass).

    ``share_prefix``: the prompts' common beginning (chat template and the rubric text before
    the question, identical for every judgment of a trait) runs once and its KV cache is
    repeated for every row; only the rest runs per row. Same distributions either way (tested).
    """
    device = next(model.parameters()).device
    cols = trie.columns.to(device)
    col_pos = {int(c): i for i, c in enumerate(trie.columns.tolist())}
    digit_cols = trie.is_digit.to(device)
    shared = _common_prefix(prompts) if share_prefix else 0
    if shared >= MIN_SHARED_PREFIX:
        cache, ids, attn, positions = _shared_prefix_inputs(model, prompts, shared, pad_id, device)
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        cache, logp, _ = _forward(model, cols, input_ids=ids, attention_mask=attn, position_ids=positions, past_key_values=cache)
    else:
        ids, attn = left_pad(prompts, pad_id, device)
        lengths = attn.sum(dim=1)
        positions = (attn.cumsum(dim=1) - 1).clamp(min=0)
        cache, logp, _ = _forward(model, cols, input_ids=ids, attention_mask=attn, position_ids=positions)
    rows: list[tuple[int, tuple[int, ...], float]] = []
    dists: list[dict[int, float]] = [{} for _ in prompts]
    pruned = [0.0] * len(prompts)
    first = [col_pos[t] for t in trie.children.get((), ())]
    start_mass = logp[:, first].exp().sum(dim=-1).tolist()
    keep_rows = []
    for b in range(len(prompts)):
        if start_mass[b] < min_mass:
            pruned[b] = start_mass[b]
        else:
            rows.append((b, (), 0.0))
            keep_rows.append(b)
    if keep_rows and len(keep_rows) < len(prompts):
        index = torch.tensor(keep_rows, device=device)
        cache.batch_select_indices(index)
        attn, logp = attn[index], logp[index]
    depth = 0
    while rows:
        p_digit = (logp.exp() * digit_cols).sum(dim=-1).tolist()
        lp_rows = logp.cpu()
        nxt: list[tuple[int, tuple[int, ...], float]] = []
        parents: list[int] = []
        for i, (b, prefix, lp) in enumerate(rows):
            n = trie.complete.get(prefix)
            if n is not None:
                dists[b][n] = math.exp(lp) * max(0.0, 1.0 - p_digit[i])
            for t in trie.children.get(prefix, ()):
                child_lp = lp + float(lp_rows[i, col_pos[t]])
                if math.exp(child_lp) < min_prefix_prob:
                    pruned[b] += math.exp(child_lp)
                    continue
                nxt.append((b, prefix + (t,), child_lp))
                parents.append(i)
        if not nxt:
            break
        index = torch.tensor(parents, device=device)
        cache.batch_select_indices(index)
        attn = torch.cat([attn[index], torch.ones((len(nxt), 1), dtype=attn.dtype, device=device)], dim=1)
        pos = (lengths[torch.tensor([b for b, _, _ in nxt], device=device)] + depth).unsqueeze(1)
        tokens = torch.tensor([[prefix[-1]] for _, prefix, _ in nxt], device=device)
        cache, logp, _ = _forward(model, cols, input_ids=tokens, attention_mask=attn, position_ids=pos, past_key_values=cache)
        rows = nxt
        depth += 1
    return list(zip(dists, pruned, strict=True))


class LocalJudge:
    """See module docstring. Build with :func:`local_judge` (or ``build_judge`` from a spec).

    The model may be given as a loader (``build_judge`` does): it is called the first time
    the judge needs it (identity, hashes, scoring), so building a judge and its ``preflight``
    load nothing.
    """

    flush_every = 256
    runs_model = True

    def __init__(
        self,
        name: str,
        model: LoadedModel | Callable[[], LoadedModel],
        *,
        batch_size: int,
        min_mass: float,
        min_prefix_prob: float,
        response_prefix: str,
        weak: bool,
        share_prefix: bool = True,
    ) -> None:
        self.name = name
        self.share_prefix = share_prefix
        self._model = model if isinstance(model, LoadedModel) else None
        self._load = None if isinstance(model, LoadedModel) else model
        self._trie: NumberTrie | None = None
        self.forward_batch_size = batch_size  # judge prompts per forward pass
        self.batch_size = batch_size * 4  # requests per judge() call (the protocol's batch)
        self.min_mass = min_mass
        self.min_prefix_prob = min_prefix_prob
        self.response_prefix = response_prefix
        self.weak = weak

    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            assert self._load is not None
            self._model = self._load()
        return self._model

    @property
    def identity(self) -> str:
        """The model's identity and every setting that can change a score: ``min_mass`` (None
        below it, and the walk skips prompts under it), ``min_prefix_prob`` (pruning) and
        ``response_prefix`` (the prompt). Not ``batch_size``/``share_prefix`` (same scores)."""
        settings = f"{self.min_prefix_prob}|{self.response_prefix}" + min_mass_tag(self.min_mass, "|")
        return f"local:{self.model.identity}:exact-v1:{hashlib.sha256(settings.encode()).hexdigest()[:8]}"

    @property
    def trie(self) -> NumberTrie:
        if self._trie is None:
            vocab = self.model.model.get_output_embeddings().weight.shape[0]
            self._trie = NumberTrie.build(self.model.tokenizer, vocab)
        return self._trie

    def preflight(self) -> None:
        """Nothing to check before work (no key, no network); the model loads on first use."""

    def estimate_cost(self, request: JudgeRequest) -> float:
        return 0.0

    def can_score(self, definition: TraitDef) -> bool:
        return definition.rubric is not None

    def scoring_hash(self, definition: TraitDef) -> str:
        assert definition.rubric is not None
        return rubric_hash(definition.rubric)

    def _prompt_ids(self, r: JudgeRequest) -> list[int]:
        assert r.definition.rubric is not None
        text = fill_rubric(r.definition.rubric, r.question, r.answer)
        tok = self.model.tokenizer
        rendered = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        return list(tok(rendered + self.response_prefix, add_special_tokens=False)["input_ids"])

    def prompt_hash(self, request: JudgeRequest) -> str:
        return hashlib.sha256(str(self._prompt_ids(request)).encode()).hexdigest()[:16]

    def judge(self, requests: Sequence[JudgeRequest], on_result: OnResult | None = None) -> list[Judgment | None]:
        prompts = [self._prompt_ids(r) for r in requests]
        # batches of one trait share the rubric's beginning (see number_distributions)
        order = sorted(range(len(requests)), key=lambda i: (requests[i].trait, len(prompts[i])))
        results: list[Judgment | None] = [None] * len(requests)
        pad = int(self.model.tokenizer.pad_token_id)
        for s in range(0, len(order), self.forward_batch_size):
            part = order[s : s + self.forward_batch_size]
            outs = number_distributions(
                self.model.model,
                [prompts[i] for i in part],
                self.trie,
                pad_id=pad,
                min_prefix_prob=self.min_prefix_prob,
                min_mass=self.min_mass,
                share_prefix=self.share_prefix,
            )
            for i, (dist, pruned) in zip(part, outs, strict=True):
                scored = weighted_mean(dist, min_mass=self.min_mass)
                raw = {
                    "distribution": {str(k): v for k, v in sorted(dist.items()) if v >= 1e-6},
                    "mass": scored.mass,
                    "pruned_mass": pruned,
                }
                judgment = Judgment(scored.score, scored.reason, "exact_sequence", raw, input_tokens=len(prompts[i]))
                results[i] = judgment
                if on_result is not None:
                    on_result(i, judgment)
        return results


def local_judge(
    model: LoadedModel,
    *,
    name: str = "local",
    batch_size: int = 16,
    min_mass: float = DEFAULT_MIN_MASS,
    min_prefix_prob: float = 1e-6,
    response_prefix: str = "",
    weak: bool = False,
    share_prefix: bool = True,
) -> Judge:
    """A judge run on a local Hugging Face causal LM, scoring the exact 0..100 distribution.

    Args:
        model: the judge model (any loaded causal LM with a chat template).
        name: the judge's name in the study.
        batch_size: judge prompts per forward pass (the judge's ``batch_size``, the requests
            a caller hands to one ``judge`` call, is 4x this).
        min_mass: below this total probability on numbers the score is None, with the reason.
        min_prefix_prob: prefixes less likely than this are not expanded (0 = exact).
        response_prefix: text put at the start of the judge's reply (e.g. "Score: " for base models).
        weak: flag the judge as weak in reports.
        share_prefix: run the prompts' common beginning once per batch (same scores; faster).
    """
    return LocalJudge(
        name,
        model,
        batch_size=batch_size,
        min_mass=min_mass,
        min_prefix_prob=min_prefix_prob,
        response_prefix=response_prefix,
        weak=weak,
        share_prefix=share_prefix,
    )
