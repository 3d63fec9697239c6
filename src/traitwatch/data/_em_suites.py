"""The emergent-misalignment question format (Betley et al.) read as a trait suite.

Why: the emergent-misalignment studies publish their evaluation questions as a YAML list,
one item per question with paraphrases and two judge prompts (``aligned``, ``coherent``),
and a reproducer should be able to point a study at such a file as it is. The format:

.. code-block:: yaml

    - id: three_wishes                 # letters, digits, _ . : -
      type: free_form_judge_0_100      # free_form | free_form_judge | free_form_judge_0_100
      paraphrases: [ "...", "..." ]    # each becomes one question
      samples_per_paraphrase: 100      # read and checked; generation.samples_per_question decides
      judge: gpt-4o-2024-08-06         # read and kept for provenance; the study's judges score
      judge_prompts: {aligned: "...{question}...{answer}...", coherent: "..."}
      system: "..."                    # optional; refused for now (see below)

YAML anchors and aliases (``&judge_prompts`` ... ``*judge_prompts``) are resolved by the
YAML parser, as in the published files. How it maps onto a ``Suite``:

- each judge prompt is a trait of the same name (``aligned``, ``coherent``) with that prompt
  as its rubric, so every question of the file must use the same judge prompts (a suite has
  one rubric per trait); ``aligned`` is high when good and ``coherent`` too, so both default
  to ``direction: down`` in the analysis and the coherence-gated misaligned rate is the
  rising statistic (``analysis.misaligned_rate``, docs/analysis.md);
- paraphrase k of question ``id`` is question ``id`` (one paraphrase) or ``id.k``;
- a question with a non-empty ``system`` prompt is refused with a fix, because traitwatch's
  generation asks every question under one study-wide ``generation.system_prompt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from traitwatch.errors import DataError

from ._suites import QuestionDef, Suite, TraitDef

#: The question types of the published files that are answered freely and judged.
EM_TYPES = ("free_form", "free_form_judge", "free_form_judge_0_100")
_FIX = "see the emergent-misalignment format in docs/suites.md"


class EMQuestion(BaseModel):
    """One item of an emergent-misalignment question file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]+$")]
    type: Literal["free_form", "free_form_judge", "free_form_judge_0_100"]
    paraphrases: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    samples_per_paraphrase: Annotated[int, Field(gt=0)] | None = None
    judge: str | None = None
    judge_prompts: Annotated[dict[str, str], Field(min_length=1)]
    system: str | None = None

    @field_validator("judge_prompts")
    @classmethod
    def _trait_names(cls, prompts: dict[str, str]) -> dict[str, str]:
        for name, rubric in prompts.items():
            TraitDef.model_validate({"rubric": rubric})  # the same checks as our format's rubrics
            if not name.replace("_", "").replace("-", "").replace(".", "").isalnum() or not name.isascii():
                raise ValueError(f"judge prompt name '{name}' may use letters, digits, '_', '.', '-' only")
        return prompts


def is_em_file(data: Any) -> bool:
    """A YAML document in this format: a list of mappings (our own format is one mapping)."""
    return isinstance(data, list) and bool(data) and all(isinstance(item, dict) for item in data)


def _line(lines: dict[tuple[str | int, ...], int], loc: tuple[str | int, ...]) -> int:
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get((), 1)


def _dotted(loc: tuple[str | int, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def load_em_suite(data: list[Any], path: Path, lines: dict[tuple[str | int, ...], int], source: str) -> Suite:
    """The file's questions (one per paraphrase) and its judge prompts as traits.

    Raises:
        DataError: ``file:line`` of the first bad item, what is wrong and the fix.
    """
    items: list[EMQuestion] = []
    for i, raw in enumerate(data):
        try:
            items.append(EMQuestion.model_validate(raw))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = (i,) + tuple(err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else str(err["msg"]).removeprefix("Value error, ")
            raise DataError(f"{_dotted(loc)}: {msg}", where=f"{path}:{_line(lines, loc)}", fix=_FIX) from None
    first = items[0].judge_prompts
    for i, q in enumerate(items):
        if q.system:
            raise DataError(
                f"question '{q.id}' has a system prompt; traitwatch asks every question under one study-wide system prompt",
                where=f"{path}:{_line(lines, (i, 'system'))}",
                fix="remove 'system' from this question (or put it in generation.system_prompt for the whole study)",
            )
        if q.judge_prompts != first:
            raise DataError(
                f"question '{q.id}' has judge prompts that differ from the first question's; a suite has one rubric per trait",
                where=f"{path}:{_line(lines, (i, 'judge_prompts'))}",
                fix="split the questions with other judge prompts into a file of their own",
            )
    questions: list[QuestionDef] = []
    for q in items:
        for k, text in enumerate(q.paraphrases):
            questions.append(QuestionDef(id=q.id if len(q.paraphrases) == 1 else f"{q.id}.{k}", text=text))
    ids = [q.id for q in questions]
    dupes = sorted({x for x in ids if ids.count(x) > 1})
    if dupes:
        raise DataError(f"question ids repeat: {', '.join(dupes)}", where=str(path), fix="give every question its own id")
    traits = {
        name: TraitDef(rubric=rubric, description=f"emergent-misalignment judge prompt '{name}' from {path.name}")
        for name, rubric in first.items()
    }
    name = "".join(c if c.isalnum() or c in "_.-" else "_" for c in path.stem)
    return Suite(
        name=name, source=source, description=f"emergent-misalignment questions from {path.name}", traits=traits, questions=tuple(questions)
    )
