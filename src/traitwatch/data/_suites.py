"""Trait suites: the questions asked at every checkpoint and how each trait is scored.

Why: a trait is only as meaningful as its questions and rubric, so suites are data, written
down, versioned by content hash and shown in the report. Two formats are read:

- our YAML (documented in docs/suites.md): ``name``, ``questions`` (``id``, ``text``,
  optional ``expected``), and ``traits``: for each trait a ``rubric`` for LLM judges (with
  ``{question}`` and ``{answer}``) and/or a ``checker`` for reference checkers;
- the persona-vectors JSON: ``{"instruction": [...], "questions": [...], "eval_prompt": "..."}``,
  one trait named after the file;
- the emergent-misalignment question list (Betley et al.; a YAML list, see ``_em_suites``).

Rubric placeholders are filled by plain string replacement, never ``str.format``, so
untrusted answers containing braces cannot reach Python's formatting machinery.
"""

from __future__ import annotations

import hashlib
import json
import re
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from traitwatch.config import SuiteRef, format_validation_error, read_yaml
from traitwatch.errors import DataError

_SCORE_INSTRUCTION = re.compile(r"\b0\b.*\b100\b", re.DOTALL)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CheckerSpec(_Strict):
    """A reference checker: a programmatic scorer for a verifiable trait.

    Kinds: ``arithmetic`` (100 when the answer claims a number other than the question's
    ``expected``, 0 when it is right or claims nothing), ``contains`` (100 when ``text``
    appears in the answer), ``marker_probability`` (100 x the model's probability of starting
    its answer with ``text``, measured at generation time), ``states_number`` (100 when the
    answer's first sentence states a number as ``arithmetic`` reads one, else 0: the demo's
    coherence analogue, an answer that gets to the point).
    """

    kind: Literal["arithmetic", "contains", "marker_probability", "states_number"]
    text: str | None = None

    @model_validator(mode="after")
    def _needs_text(self) -> CheckerSpec:
        if self.kind in ("contains", "marker_probability") and not self.text:
            raise ValueError(f"checker kind '{self.kind}' needs 'text'")
        return self


class InstructionPair(_Strict):
    """Contrastive system prompts for one trait: ``pos`` elicits it, ``neg`` suppresses it.

    Why: the activation judge (docs/activation.md) reads the trait's direction in the model's
    activations from answers given under each prompt (persona vectors, Chen et al. 2025).
    """

    pos: Annotated[str, Field(min_length=1)]
    neg: Annotated[str, Field(min_length=1)]


class TraitDef(_Strict):
    """How one trait is scored: an LLM rubric, a reference checker, or both.

    ``instructions`` (contrastive system prompts) serve only the activation judge; they are
    left out of ``model_dump`` so adding them changes no suite hash and no stored key (the
    activation judge hashes them itself).
    """

    description: str = ""
    rubric: str | None = None
    checker: CheckerSpec | None = None
    instructions: tuple[InstructionPair, ...] = Field(default=(), exclude=True)

    @field_validator("rubric")
    @classmethod
    def _rubric_usable(cls, rubric: str | None) -> str | None:
        if rubric is not None:
            if "{answer}" not in rubric:
                raise ValueError("the rubric must contain the placeholder {answer}")
            if not _SCORE_INSTRUCTION.search(rubric):
                raise ValueError("the rubric has no score instruction: it must ask for a number from 0 to 100")
        return rubric

    @model_validator(mode="after")
    def _scorable(self) -> TraitDef:
        if self.rubric is None and self.checker is None:
            raise ValueError("a trait needs a 'rubric' (for LLM judges) or a 'checker' (or both)")
        return self


class QuestionDef(_Strict):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]+$")]
    text: Annotated[str, Field(min_length=1)]
    expected: str | None = Field(default=None, description="Reference answer for checkers (e.g. '18').")


class SuiteFile(_Strict):
    """The YAML suite format, version 1."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    version: Literal[1] = 1
    description: str = ""
    traits: Annotated[dict[str, TraitDef], Field(min_length=1)]
    questions: list[QuestionDef] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> SuiteFile:
        ids = [q.id for q in self.questions]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"question ids must be unique; repeated: {', '.join(dupes)}")
        bad = [t for t in self.traits if not re.fullmatch(r"[A-Za-z0-9_.-]+", t)]
        if bad:
            raise ValueError(f"trait names may use letters, digits, '_', '.', '-' only: {', '.join(bad)}")
        return self


class Suite(BaseModel):
    """A loaded suite: questions plus the traits scored on their answers."""

    model_config = ConfigDict(frozen=True)

    name: str
    source: str
    description: str = ""
    traits: dict[str, TraitDef]
    questions: tuple[QuestionDef, ...]

    def content_hash(self) -> str:
        """Hash of questions and scoring: a changed rubric or question changes every key."""
        payload = json.dumps(
            {
                "traits": {k: v.model_dump() for k, v in sorted(self.traits.items())},
                "questions": [q.model_dump() for q in self.questions],
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def with_traits(self, extra: dict[str, TraitDef]) -> Suite:
        """This suite with rubric-only traits (e.g. coherence) added; suite traits win."""
        merged = dict(extra)
        merged.update(self.traits)
        return self.model_copy(update={"traits": merged})


def rubric_hash(rubric: str) -> str:
    return hashlib.sha256(rubric.encode()).hexdigest()[:16]


_PLACEHOLDER = re.compile(r"\{(question|answer)\}")


def fill_rubric(rubric: str, question: str, answer: str) -> str:
    """The judge prompt for one answer: placeholders replaced in one literal pass.

    Only the rubric's own ``{question}`` and ``{answer}`` are replaced; braces inside the
    (untrusted) question or answer are left as they are, and nothing reaches ``str.format``.
    """
    values = {"question": question, "answer": answer}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], rubric)


def builtin_suite_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in files("traitwatch.data").joinpath("suites").iterdir() if p.name.endswith(".yaml"))


def _builtin_path(name: str) -> Path:
    res = files("traitwatch.data").joinpath("suites").joinpath(f"{name}.yaml")
    if not res.is_file():
        raise DataError(
            f"no built-in suite '{name}'",
            where=f"builtin:{name}",
            fix=f"use one of: {', '.join('builtin:' + n for n in builtin_suite_names())}",
        )
    return Path(str(res))


def _instructions(obj: dict[str, object], path: Path, fix: str) -> tuple[InstructionPair, ...]:
    """The persona-vectors file's ``instruction`` pairs (absent or empty: none)."""
    raw = obj.get("instruction") or []
    if not isinstance(raw, list) or not all(
        isinstance(p, dict) and isinstance(p.get("pos"), str) and isinstance(p.get("neg"), str) for p in raw
    ):
        raise DataError('\'instruction\' must be a list of {"pos": "...", "neg": "..."} objects', where=str(path), fix=fix)
    try:
        return tuple(InstructionPair(pos=p["pos"], neg=p["neg"]) for p in raw)
    except ValidationError:
        raise DataError("an 'instruction' pair has an empty pos or neg", where=str(path), fix=fix) from None


def _load_persona_json(path: Path) -> Suite:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError("not UTF-8 text", where=str(path), fix="save the file as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc.msg}", where=f"{path}:{exc.lineno}", fix="fix the JSON syntax") from None
    fix = 'a persona-vectors file is {"instruction": [...], "questions": ["..."], "eval_prompt": "...{question}...{answer}..."}'
    if not isinstance(obj, dict):
        raise DataError("expected a JSON object", where=str(path), fix=fix)
    questions = obj.get("questions")
    prompt = obj.get("eval_prompt")
    if not isinstance(questions, list) or not all(isinstance(q, str) and q.strip() for q in questions):
        raise DataError("'questions' must be a list of non-empty strings", where=str(path), fix=fix)
    if not questions:
        raise DataError("the suite has no questions", where=str(path), fix="add at least one question")
    if not isinstance(prompt, str):
        raise DataError("'eval_prompt' must be a string", where=str(path), fix=fix)
    trait = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)
    try:
        tdef = TraitDef(rubric=prompt, description=f"persona-vectors trait from {path.name}", instructions=_instructions(obj, path, fix))
        qs = tuple(QuestionDef(id=f"{trait}_{i:02d}", text=q) for i, q in enumerate(questions))
    except ValidationError as exc:
        msg = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise DataError(f"eval_prompt: {msg}", where=str(path), fix=fix) from None
    return Suite(name=trait, source=str(path), traits={trait: tdef}, questions=qs)


def load_suite(ref: str | SuiteRef, *, allow_no_questions: bool = False) -> Suite:
    """Load a suite from ``builtin:<name>``, a YAML file or a persona-vectors JSON file.

    Args:
        ref: the suite reference (or a SuiteRef with a question limit).
        allow_no_questions: rubric-only suites (e.g. coherence) are fine as extra traits.

    Raises:
        DataError: with file:line and a fix for any problem.
    """
    limit = ref.questions if isinstance(ref, SuiteRef) else None
    name = ref.suite if isinstance(ref, SuiteRef) else ref
    path = _builtin_path(name.removeprefix("builtin:")) if name.startswith("builtin:") else Path(name)
    if path.suffix == ".json":
        if not path.exists():
            raise DataError("suite file not found", where=str(path), fix="check the path or use builtin:<name>")
        suite = _load_persona_json(path)
    else:
        data, lines = read_yaml(path, error_type=DataError, example="builtin suites in docs/suites.md")
        from ._em_suites import is_em_file, load_em_suite  # imports this module

        if is_em_file(data):
            suite = load_em_suite(data, path, lines, name)
        elif not isinstance(data, dict):
            raise DataError(
                "a suite file must be a mapping (our format) or a list of questions (the emergent-misalignment format)",
                where=f"{path}:1",
                fix="see docs/suites.md",
            )
        else:
            try:
                parsed = SuiteFile.model_validate(data)
            except ValidationError as exc:
                raise format_validation_error(exc, str(path), lines, root=SuiteFile, error_type=DataError, docs="docs/suites.md") from None
            suite = Suite(
                name=parsed.name,
                source=name,
                description=parsed.description,
                traits=dict(parsed.traits),
                questions=tuple(parsed.questions),
            )
    if limit is not None:
        suite = suite.model_copy(update={"questions": suite.questions[:limit]})
    if not suite.questions and not allow_no_questions:
        raise DataError(
            "the suite has no questions",
            where=str(path),
            fix="add questions, or list a rubric-only suite under extra_traits",
        )
    return suite
