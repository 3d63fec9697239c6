"""A trait's direction in activation space, read from contrastive system prompts.

Why (persona vectors, Chen et al. 2025): answers the base model gives under a prompt that
elicits a trait and under one that suppresses it differ, on average, along a direction of the
residual stream; a fine-tuned model whose activations move along that direction expresses the
trait more. The recipe, per trait:

1. answer the suite's questions under each ``pos`` and each ``neg`` system prompt (the base
   model, no adapter);
2. keep the ``pos`` answers the filter judge scores at or above ``threshold`` and the ``neg``
   answers below it (no filter judge: keep all), so the direction is read from answers that
   show the trait and answers that do not, not from what the prompts merely asked for;
3. per layer, the direction is mean(response-token activations of kept ``pos`` answers) minus
   the same for ``neg``;
4. the layer is the one whose direction (from the other questions) best separates held-out
   questions' ``pos`` from ``neg`` answers (Cohen's d of their projections).

The result is stored as safetensors (vectors of every layer) with its provenance in the
file's metadata, under a key of everything that shaped it, so it is built once per study.
Answers and filter scores are kept in a work file as they are made: a killed extraction
resumes without generating or paying for a judgment twice.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from traitwatch.data import TraitDef
from traitwatch.errors import JudgeError
from traitwatch.models import LoadedModel
from traitwatch.train import encode_prompt

from ._hidden import Span, span_means

#: What a score averages: ``prompt`` the last prompt token (no answer needed), ``answer`` the answer's tokens.
SpanKind = Literal["prompt", "answer"]
#: Scores a batch of (question, expected, answer) for the trait: 0..100 or None (no score).
FilterFn = Callable[[Sequence[tuple[str, str | None, str]]], list[float | None]]


@dataclass(frozen=True)
class ExtractionSettings:
    """Everything besides the model, the trait and its questions that shapes a direction.

    Attributes:
        samples: answers per (question, instruction pair, sign).
        max_new_tokens: answer length cap.
        temperature: sampling temperature of the answers (0: greedy).
        seed: torch seed before generating.
        threshold: a ``pos`` answer is kept when the filter scores it at least this, a ``neg``
            answer when below it.
        layer: a fixed layer (index into hidden states, 1 = after the first block); None
            chooses by held-out separation.
        filter_identity: the filter judge's identity (None: no filter, every answer kept).
    """

    samples: int = 2
    max_new_tokens: int = 48
    temperature: float = 1.0
    seed: int = 0
    threshold: float = 50.0
    layer: int | None = None
    filter_identity: str | None = None

    def tag(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class TraitDirection:
    """A trait's direction at every layer, the chosen layer, and the projections that anchor scores.

    ``reference`` holds mean projections on the chosen layer's unit direction, per span
    (``answer``: response tokens; ``prompt``: the last prompt token): ``<span>_pos`` /
    ``<span>_neg`` under the positive / negative system prompt (kept answers) and
    ``<span>_base`` with no system prompt (the base model as the study asks it). A score maps
    a projection linearly so that the base model is 50 and one positive-minus-negative gap is
    50 points: ``50 + 50 (p - base) / (pos - neg)``, clipped to 0..100. Why the base and not the
    negative prompt as the anchor: a monitor must see a move either way from where training
    starts, and the base model can lie anywhere between (or beyond) the two prompted means.
    """

    trait: str
    vectors: torch.Tensor
    layer: int
    separation: list[float]
    reference: dict[str, float]
    counts: dict[str, int]
    provenance: dict[str, str] = field(default_factory=dict)

    def unit(self) -> torch.Tensor:
        """The chosen layer's direction, length 1 (float32)."""
        v = self.vectors[self.layer].float()
        return v / v.norm().clamp(min=1e-12)

    def score(self, projection: float, span: SpanKind) -> float:
        """0..100: 50 at the base model's mean projection, +-50 per positive-minus-negative gap (clipped).

        The gap is the span's own where the positive prompt's span projects above the negative
        one's; else the answers' gap (the direction is read from answers, so there it is
        positive by construction). Why: on a small base model the prompt's last token can sit
        the wrong way round on the answers' direction, and a scale of the wrong sign or near zero
        would turn every shift into a constant or an inverted score."""
        lo, hi, base = self.reference[f"{span}_neg"], self.reference[f"{span}_pos"], self.reference[f"{span}_base"]
        if not hi > lo:
            lo, hi = self.reference["answer_neg"], self.reference["answer_pos"]
        if not hi > lo:
            return 50.0
        return float(min(100.0, max(0.0, 50.0 + 50.0 * (projection - base) / (hi - lo))))

    def save(self, path: Path) -> None:
        """safetensors with the choice and provenance in its metadata (written atomically)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "trait": self.trait,
            "layer": str(self.layer),
            "separation": json.dumps(self.separation),
            "reference": json.dumps(self.reference),
            "counts": json.dumps(self.counts),
            "provenance": json.dumps(self.provenance, sort_keys=True),
        }
        tmp = path.with_suffix(".tmp")
        save_file({"vectors": self.vectors.float().contiguous()}, str(tmp), metadata=meta)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> TraitDirection:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            vectors = f.get_tensor("vectors")
        return cls(
            trait=meta["trait"],
            vectors=vectors,
            layer=int(meta["layer"]),
            separation=[float(x) for x in json.loads(meta["separation"])],
            reference={k: float(v) for k, v in json.loads(meta["reference"]).items()},
            counts={k: int(v) for k, v in json.loads(meta["counts"]).items()},
            provenance=json.loads(meta["provenance"]),
        )


def direction_key(model_identity: str, trait: str, definition: TraitDef, questions: Sequence[str], settings: ExtractionSettings) -> str:
    """Hash of everything a direction depends on: model, instructions, the filter's scoring, questions, settings."""
    payload = json.dumps(
        {
            "model": model_identity,
            "trait": trait,
            "instructions": [[p.pos, p.neg] for p in definition.instructions],
            "scoring": definition.model_dump(),
            "questions": list(questions),
            "settings": settings.tag(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _cohens_d(pos: torch.Tensor, neg: torch.Tensor) -> float:
    if len(pos) < 1 or len(neg) < 1:
        return float("nan")
    pooled = ((pos.var(unbiased=False) if len(pos) > 1 else 0.0) + (neg.var(unbiased=False) if len(neg) > 1 else 0.0)) / 2
    return float((pos.mean() - neg.mean()) / math.sqrt(float(pooled) + 1e-8))


def choose_layer(
    pos: torch.Tensor, neg: torch.Tensor, pos_q: Sequence[int], neg_q: Sequence[int], *, fixed: int | None = None
) -> tuple[int, list[float], int]:
    """(layer, separation per layer, held-out questions) from response means ``[n, layers, hidden]``.

    Every fourth question (by index) is held out; the direction from the others is scored by
    Cohen's d between held-out ``pos`` and ``neg`` projections. Layer 0 (the embeddings, blind
    to the system prompt) is never chosen. With fewer than 2 held-out questions holding both
    signs the separation is measured in sample (and ``held out`` is 0).
    """
    n_layers = pos.shape[1]
    held = {q for q in set(pos_q) & set(neg_q) if q % 4 == 3}
    train_p = torch.tensor([q not in held for q in pos_q])
    train_n = torch.tensor([q not in held for q in neg_q])
    if len(held) < 2 or not train_p.any() or not train_n.any():
        held = set()
        train_p = torch.ones(len(pos_q), dtype=torch.bool)
        train_n = torch.ones(len(neg_q), dtype=torch.bool)
    test_p = ~train_p if held else train_p
    test_n = ~train_n if held else train_n
    seps = [float("nan")]
    for layer in range(1, n_layers):
        v = pos[train_p, layer].mean(0) - neg[train_n, layer].mean(0)
        u = v / v.norm().clamp(min=1e-12)
        seps.append(_cohens_d(pos[test_p, layer] @ u, neg[test_n, layer] @ u))
    if fixed is not None:
        return fixed, seps, len(held)
    best = max(range(1, n_layers), key=lambda i: -math.inf if math.isnan(seps[i]) else seps[i])
    return best, seps, len(held)


class _WorkFile:
    """Answers and filter scores of an extraction in progress (JSON, replaced atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, dict[str, Any]] = {"answers": {}, "scores": {}}
        if path.exists():
            self.data = json.loads(path.read_text(encoding="utf-8"))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data), encoding="utf-8")
        os.replace(tmp, self.path)


def extract_direction(
    base: LoadedModel,
    trait: str,
    definition: TraitDef,
    questions: Sequence[tuple[str, str | None]],
    settings: ExtractionSettings,
    *,
    score: FilterFn | None = None,
    workfile: Path | None = None,
    batch_size: int = 16,
) -> TraitDirection:
    """The trait's direction from the base model (recipe in the module docstring).

    Args:
        base: the study's base model (no adapter is applied).
        trait: trait name.
        definition: the trait, with its ``instructions`` pairs.
        questions: (question text, expected answer) for the filter.
        settings: what shapes the answers and the choice.
        score: the filter (None: keep every answer).
        workfile: where answers and filter scores are kept while extracting (resume).
        batch_size: rows per generate / forward call.

    Raises:
        JudgeError: no instruction pairs, or too few answers kept on either side.
    """
    from traitwatch.generate import GenerationRequest, hf_generator

    where = f"activation direction for trait {trait}"
    if not definition.instructions:
        raise JudgeError(
            "the trait has no contrastive instructions",
            where=where,
            fix="add instructions: [{pos: ..., neg: ...}] to the trait in its suite",
        )
    work = _WorkFile(workfile) if workfile is not None else None
    answers: dict[str, str] = dict(work.data["answers"]) if work else {}
    rows: list[tuple[str, int, int, str]] = []  # (sign, pair index, question index, answer key)
    runs: list[tuple[int, str, str | None]] = [
        (p, sign, sys) for p, pair in enumerate(definition.instructions) for sign, sys in (("pos", pair.pos), ("neg", pair.neg))
    ]
    for p, sign, system in runs + [(0, "base", None)]:  # base: no system prompt, anchors the score scale
        reqs = [GenerationRequest(f"{sign}|{p}|{qi}|{s}", "", q, s) for qi, (q, _) in enumerate(questions) for s in range(settings.samples)]
        rows += [(sign, p, int(r.key.split("|")[2]), r.key) for r in reqs]
        todo = [r for r in reqs if r.key not in answers]
        if todo:
            gen = hf_generator(
                base,
                batch_size=batch_size,
                adapters_per_batch=1,
                max_new_tokens=settings.max_new_tokens,
                temperature=settings.temperature,
                system_prompt=system,
                seed=settings.seed + 1000 * p + {"pos": 0, "neg": 500, "base": 700}[sign],
            )
            gen.generate(todo, lambda batch: answers.update({a.key: a.text for a in batch}))
            if work:
                work.data["answers"] = answers
                work.save()
    scores: dict[str, float | None] = dict(work.data["scores"]) if work else {}
    if score is not None:
        todo_keys = [k for sign, _, _, k in rows if k not in scores and sign != "base"]
        for i in range(0, len(todo_keys), 32):
            part = todo_keys[i : i + 32]
            got = score([(questions[int(k.split("|")[2])][0], questions[int(k.split("|")[2])][1], answers[k]) for k in part])
            scores.update(zip(part, got, strict=True))
            if work:
                work.data["scores"] = scores
                work.save()
    tok = base.tokenizer
    kept: dict[str, list[tuple[int, Span, Span]]] = {"pos": [], "neg": [], "base": []}
    for sign, p, qi, key in rows:
        s = scores.get(key)
        if sign != "base" and score is not None and (s is None or (s < settings.threshold if sign == "pos" else s >= settings.threshold)):
            continue
        pair = definition.instructions[p]
        prompt = encode_prompt(tok, questions[qi][0], {"pos": pair.pos, "neg": pair.neg}.get(sign))
        answer = list(tok(answers[key], add_special_tokens=False)["input_ids"])
        if not answer:
            continue
        kept[sign].append((qi, Span(prompt + answer, len(prompt)), Span(prompt, len(prompt) - 1)))
    counts = {f"generated_{s}": sum(r[0] == s for r in rows) for s in ("pos", "neg", "base")}
    counts |= {"kept_pos": len(kept["pos"]), "kept_neg": len(kept["neg"])}
    if min(counts["kept_pos"], counts["kept_neg"]) < 2:
        raise JudgeError(
            f"too few answers kept to read a direction ({counts['kept_pos']} positive, {counts['kept_neg']} negative of "
            f"{counts['generated_pos']} each; the filter keeps positive answers scored >= {settings.threshold:g} and negative ones below)",
            where=where,
            fix="use stronger instructions, more questions or samples (activation.samples), a lower threshold, or no filter_judge",
        )
    if not kept["base"]:
        raise JudgeError(
            "the base model gave only empty answers without a system prompt",
            where=where,
            fix="raise activation max_new_tokens or samples",
        )
    resp = {s: span_means(base, [a for _, a, _ in kept[s]], batch_size=batch_size) for s in ("pos", "neg", "base")}
    last = {s: span_means(base, [b for _, _, b in kept[s]], batch_size=batch_size) for s in ("pos", "neg", "base")}
    layer, seps, held = choose_layer(
        resp["pos"], resp["neg"], [q for q, _, _ in kept["pos"]], [q for q, _, _ in kept["neg"]], fixed=settings.layer
    )
    if not 0 <= layer < resp["pos"].shape[1]:
        raise JudgeError(
            f"layer {layer} does not exist (the model has hidden states 0..{resp['pos'].shape[1] - 1})",
            where=where,
            fix="set activation layer to one of those, or leave it out to choose by held-out separation",
        )
    vectors = resp["pos"].mean(0) - resp["neg"].mean(0)
    u = vectors[layer] / vectors[layer].norm().clamp(min=1e-12)
    reference = {
        "answer_pos": float((resp["pos"][:, layer] @ u).mean()),
        "answer_neg": float((resp["neg"][:, layer] @ u).mean()),
        "prompt_pos": float((last["pos"][:, layer] @ u).mean()),
        "prompt_neg": float((last["neg"][:, layer] @ u).mean()),
        "answer_base": float((resp["base"][:, layer] @ u).mean()),
        "prompt_base": float((last["base"][:, layer] @ u).mean()),
    }
    counts["heldout_questions"] = held
    provenance = {
        "model": base.identity,
        "filter": settings.filter_identity or "none",
        "settings": json.dumps(settings.__dict__, sort_keys=True),
        "instructions": str(len(definition.instructions)),
        "questions": str(len(questions)),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return TraitDirection(trait, vectors, layer, seps, reference, counts, provenance)
