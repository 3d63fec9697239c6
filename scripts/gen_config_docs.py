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
    ActivationJudgeSpec,
    AlarmRule,
    AnalysisSpec,
    BudgetSpec,
    CalibrationSpec,
    CheckJudgeSpec,
    DatasetSpec,
    DataSourceSpec,
    DemoDataSpec,
    DetectorRef,
    ExecutorSpec,
    GenerationSpec,
    JudgeSpecBase,
    LocalJudgeSpec,
    LoraSpec,
    MisalignedRateSpec,
    MlflowTrackerSpec,
    ModelRef,
    ModelSpec,
    MonitorSpec,
    NamedModelSpec,
    OpenAIJudgeSpec,
    ProbeSpec,
    RandomModelSpec,
    StudySpec,
    SuiteRef,
    TensorBoardTrackerSpec,
    TrackerSpecBase,
    TrainingSpec,
    WandbTrackerSpec,
)

#: (heading, model, base): a section lists the model's keys, less those of ``base`` (given
#: for a judge kind, whose common keys have their own section).
SECTIONS: list[tuple[str, type[BaseModel], type[BaseModel] | None]] = [
    ("`study` (top level)", StudySpec, None),
    ("`model`", ModelSpec, None),
    ("`model.random`", RandomModelSpec, None),
    ("`models[]` (each also takes every key of `model`)", NamedModelSpec, ModelSpec),
    ("`datasets[]`", DatasetSpec, None),
    ("`datasets[].<condition>` (`normal`, `mild`, `strong`, `conditions.<name>`)", DataSourceSpec, None),
    ("`datasets[].demo`", DemoDataSpec, None),
    ("`lora`", LoraSpec, None),
    ("`training`", TrainingSpec, None),
    ("`traits[]`", SuiteRef, None),
    ("`generation`", GenerationSpec, None),
    ("`judges[]`", JudgeSpecBase, None),
    ("`judges[]` with `kind: check`", CheckJudgeSpec, JudgeSpecBase),
    ("`judges[]` with `kind: local`", LocalJudgeSpec, JudgeSpecBase),
    ("`judges[].local`", ModelRef, None),
    ("`judges[]` with `kind: openai`", OpenAIJudgeSpec, JudgeSpecBase),
    ("`judges[]` with `kind: activation`", ActivationJudgeSpec, JudgeSpecBase),
    ("`analysis`", AnalysisSpec, None),
    ("`analysis.detectors[]`", DetectorRef, None),
    ("`analysis.misaligned_rate`", MisalignedRateSpec, None),
    ("`budget`", BudgetSpec, None),
    ("`calibration`", CalibrationSpec, None),
    ("`monitor`", MonitorSpec, None),
    ("`monitor.probes`", ProbeSpec, None),
    ("`monitor.alarms[]`", AlarmRule, None),
    ("`executor`", ExecutorSpec, None),
    ("`trackers[]`", TrackerSpecBase, None),
    ("`trackers[]` with `kind: mlflow`", MlflowTrackerSpec, TrackerSpecBase),
    ("`trackers[]` with `kind: tensorboard`", TensorBoardTrackerSpec, TrackerSpecBase),
    ("`trackers[]` with `kind: wandb`", WandbTrackerSpec, TrackerSpecBase),
]


def _type(annotation: Any) -> str:
    """A readable type name: Annotated metadata dropped, unions written with 'or'."""
    import types
    from typing import Annotated, Literal, Union

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


def _models_in(annotation: Any) -> set[type[BaseModel]]:
    """Every spec model reachable from ``annotation`` (through lists, unions, nested models)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        found = {annotation}
        for field in annotation.model_fields.values():
            found |= _models_in(field.annotation)
        return found
    return set().union(*(_models_in(a) for a in get_args(annotation)))


def _check_complete() -> None:
    """The page claims every key: fail when a section of the spec has no section here."""
    missing = _models_in(StudySpec) - {model for _, model, _ in SECTIONS}
    if missing:
        raise SystemExit(f"gen_config_docs: no section for {', '.join(sorted(m.__name__ for m in missing))}; add it to SECTIONS")


def render() -> str:
    _check_complete()
    out = [
        "# Study spec reference",
        "",
        "Generated from the code by `scripts/gen_config_docs.py`; every key, its type and its default.",
        "Unknown keys and bad values fail with `file:line: key: problem. Fix: ...` before any work starts.",
        "Relative paths are resolved against the YAML file's folder. Examples: `examples/demo.yaml`,",
        "`examples/paper.yaml`. Validate a spec without running it: `traitwatch validate study.yaml`.",
        "",
    ]
    for title, model, base in SECTIONS:
        doc = inspect.cleandoc(model.__doc__ or "").split("\n\n")[0].replace("\n", " ")
        fields = {n: f for n, f in model.model_fields.items() if base is None or n not in base.model_fields}
        out += [f"## {title}", "", doc, ""]
        if base is not None:
            parent = next(t for t, m, _ in SECTIONS if m is base)
            out += [f"The keys of {parent} above, plus these:" if fields else f"Only the keys of {parent} above.", ""]
        if fields:
            out += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
            for name, field in fields.items():
                desc = (field.description or "").replace("|", "\\|")
                out.append(f"| `{name}` | {_type(field.annotation).replace('|', '&#124;')} | {_default(field)} | {desc} |")
            out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    path = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    path.write_text(render())
    print(f"wrote {path}")
