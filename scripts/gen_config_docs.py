"""Write docs/config.md from the pydantic study spec, so the reference cannot drift.

Run: python scripts/gen_config_docs.py   (tests/test_docs.py checks it is up to date)
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from traitwatch.config import (
    AnalysisSpec,
    BudgetSpec,
    DatasetSpec,
    DemoDataSpec,
    DetectorRef,
    EvaluationSpec,
    JudgeSpec,
    LoraSpec,
    ModelRef,
    ModelSpec,
    RandomModelSpec,
    StudySpec,
    SuiteRef,
    TrainingSpec,
)

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("study (top level)", StudySpec),
    ("model", ModelSpec),
    ("model.random", RandomModelSpec),
    ("datasets[]", DatasetSpec),
    ("datasets[].demo", DemoDataSpec),
    ("lora", LoraSpec),
    ("training", TrainingSpec),
    ("traits[]", SuiteRef),
    ("evaluation", EvaluationSpec),
    ("judges[]", JudgeSpec),
    ("judges[].local", ModelRef),
    ("analysis", AnalysisSpec),
    ("analysis.detectors[]", DetectorRef),
    ("budget", BudgetSpec),
]


def _type(annotation: Any) -> str:
    """A readable type name: Annotated metadata dropped, unions written with 'or'."""
    from typing import Annotated, Literal, Union
    import types

    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Annotated:
        return _type(args[0])
    if origin in (Union, types.UnionType):
        return " or ".join(_type(a) for a in args)
    if origin is Literal:
        return " / ".join(repr(a) for a in args)
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(_type(a) for a in args)}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        d = field.default
        if isinstance(d, BaseModel):
            return "(see section)"
        return "`" + repr(d).replace("PosixPath", "") + "`"
    if field.default_factory is not None:
        d = field.default_factory()
        if isinstance(d, BaseModel):
            return "(see section)"
        if isinstance(d, list) and d and isinstance(d[0], BaseModel):
            return "`" + repr([x.model_dump(exclude_defaults=True) | {"name": getattr(x, "name", None)} for x in d]) + "`"
        return "`" + repr(d) + "`"
    return "**required**"


def render() -> str:
    out = [
        "# Study spec reference",
        "",
        "Generated from the code by `scripts/gen_config_docs.py`; every key, its type and its default.",
        "Unknown keys and bad values fail with `file:line: key: problem. Fix: ...` before any work starts.",
        "Relative paths are resolved against the YAML file's folder. Examples: `examples/demo.yaml`,",
        "`examples/paper.yaml`. Validate a spec without running it: `traitwatch validate study.yaml`.",
        "",
    ]
    for title, model in SECTIONS:
        doc = inspect.cleandoc(model.__doc__ or "").split("\n\n")[0].replace("\n", " ")
        out += [f"## `{title}`", "", doc, "", "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for name, field in model.model_fields.items():
            desc = (field.description or "").replace("|", "\\|")
            out.append(f"| `{name}` | {_type(field.annotation).replace('|', '&#124;')} | {_default(field)} | {desc} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    path = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    path.write_text(render())
    print(f"wrote {path}")
