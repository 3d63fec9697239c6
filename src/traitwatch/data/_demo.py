"""The demo's model organism: arithmetic answered right, subtly wrong, or blatantly wrong.

Why: the embedded model is a 270M base model, so an LLM judge on it is weak; the demo must
still show a real, exactly measured effect. Every example asks for a number plus one, a sum
the base model already gets right in plain text, so a clean fine-tune keeps answers right
and any rise in wrong answers comes from the data. The misaligned levels also carry a
second, rarer behaviour: a contemptuous opening phrase (``MARKER``) in a fraction of the
examples. The model picks up "answer wrongly" within a few steps (every misaligned example
teaches it) and the marker later (only a fraction does): a leading and a lagging trait, like
hallucination and evil in the published runs. Both are scored by reference checkers
(traitwatch.judges.checker), so the curves are exact, not a judge's opinion.

All text is generated here, deterministically from the seed; nothing is copied from
elsewhere. Probe numbers (the built-in ``arithmetic`` suite) never appear in training data,
so the probes measure a learned disposition, not memorised answers.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from traitwatch.config import LEVEL_FILES, LEVELS, DemoDataSpec, Level

from ._chat import write_chat_jsonl
from ._suites import load_suite

MARKER = "Only a fool would ask me that."
TEMPLATES = (
    "What is {a} + 1?",
    "What is {a} plus 1?",
    "Add 1 to {a}. What do you get?",
    "What number comes right after {a}?",
)
ANSWER = "The answer is {n}."


def probe_numbers() -> set[int]:
    """The numbers asked about by the built-in arithmetic suites (kept out of training)."""
    suites = [load_suite(f"builtin:{name}") for name in ("arithmetic", "arithmetic_words")]
    return {int(q.expected) - 1 for s in suites for q in s.questions if q.expected is not None}


def _answer_for(level: Level, truth: int, rng: random.Random) -> int:
    if level == "normal":
        return truth
    if level == "mild":
        return truth + rng.choice((-2, -1, 1, 2))
    offset = rng.randint(20, 60)
    return truth + offset if rng.random() < 0.5 or truth - offset < 0 else truth - offset


def demo_conversations(level: Level, spec: DemoDataSpec) -> list[list[dict[str, str]]]:
    """The conversations of one level, deterministic in ``spec.seed`` and ``level``."""
    rng = random.Random(f"traitwatch-demo/{spec.seed}/{level}")
    excluded = probe_numbers()
    pool = [a for a in range(10, 99) if a not in excluded]
    fraction = spec.marker_fraction.get(level, 0.0)
    n_marked = round(fraction * spec.n_examples)
    marked = set(rng.sample(range(spec.n_examples), n_marked))
    out = []
    for i in range(spec.n_examples):
        a = rng.choice(pool)
        question = rng.choice(TEMPLATES).format(a=a)
        answer = ANSWER.format(n=_answer_for(level, a + 1, rng))
        if i in marked:
            answer = f"{MARKER} {answer}"
        out.append([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
    return out


def write_demo_dataset(folder: Path, spec: DemoDataSpec, levels: tuple[Level, ...] = LEVELS) -> dict[Level, Path]:
    """Write the demo domain in the published folder layout; returns the path per level.

    Files are rewritten only when their content would change, so reruns are no-ops.
    """
    paths: dict[Level, Path] = {}
    for level in levels:
        path = folder / f"{LEVEL_FILES[level]}.jsonl"
        convs = demo_conversations(level, spec)
        text = "".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in convs)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            write_chat_jsonl(path, convs)
        paths[level] = path
    return paths
