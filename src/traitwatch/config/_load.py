"""Reading a study spec from YAML, with errors that point at the file, line and key.

Why: pydantic knows *what* is wrong and PyYAML knows *where* each key sits; joining the two
gives the one-line error a user needs ("study.yaml:14: training.lr: unknown key. Fix: did
you mean 'learning_rate'?"). Relative paths in the file are resolved against its folder so a
study can be run from anywhere.
"""

from __future__ import annotations

import difflib
import types
from pathlib import Path
from typing import Annotated, Any, NamedTuple, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from traitwatch.errors import ConfigError, TraitwatchError

from ._spec import LocalJudgeSpec, OpenAIJudgeSpec, StudySpec

Loc = tuple[str | int, ...]


def _walk_nodes(node: yaml.Node, path: Loc, lines: dict[Loc, int], file: str, error_type: type[TraitwatchError] = ConfigError) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                dotted = _dotted(path + (key,))
                raise error_type(
                    f"key '{dotted}' appears twice (first on line {seen[key]})",
                    where=f"{file}:{line}",
                    fix="keep one of them; YAML would silently use the last",
                )
            seen[key] = line
            lines[path + (key,)] = line
            _walk_nodes(value_node, path + (key,), lines, file, error_type)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _walk_nodes(item, path + (i,), lines, file, error_type)


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def _strip(annotation: Any) -> Any:
    """Drop ``Annotated`` metadata and a ``None`` branch: ``Annotated[X, ...] | None`` -> X."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _tagged_variants(annotation: Any) -> tuple[str, dict[str, type[BaseModel]]] | None:
    """(the key, {tag: model}) when ``annotation`` is a union discriminated on a key (judges' kind)."""
    if get_origin(annotation) is not Annotated:
        return None
    inner, *meta = get_args(annotation)
    key = next((m.discriminator for m in meta if isinstance(m, FieldInfo) and isinstance(m.discriminator, str)), None)
    if key is None:
        return None
    out: dict[str, type[BaseModel]] = {}
    for variant in get_args(_strip(inner)):
        if isinstance(variant, type) and issubclass(variant, BaseModel) and key in variant.model_fields:
            for tag in get_args(_strip(variant.model_fields[key].annotation)):
                out[str(tag)] = variant
    return key, out


def _is_internal(part: Any) -> bool:
    """pydantic's own loc parts: union branches ('list[str]', "literal['auto']"), type names."""
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "list", "dict", "tuple"})


class _Where(NamedTuple):
    loc: Loc  # as the user wrote it
    owner: type[BaseModel] | None  # the model owning loc's last key
    target: Any  # the annotation at loc (what the value there should be)
    siblings: dict[str, type[BaseModel]]  # {tag: variant} when owner is one variant of a tagged union
    tag_key: str  # the key that tells those variants apart (e.g. kind)


def _resolve_loc(root: type[BaseModel], loc: tuple[Any, ...]) -> _Where:
    """Walk the spec's types along pydantic's loc, dropping what pydantic adds that is not in
    the YAML: union branch names and the tag of a discriminated union (pydantic's
    ``judges.0.openai.model`` is the user's ``judges[0].model``)."""
    out: list[str | int] = []
    owner: type[BaseModel] | None = None
    current: Any = root
    tagged: dict[str, type[BaseModel]] = {}
    siblings: dict[str, type[BaseModel]] = {}
    tag_key = "kind"
    for part in loc:
        union = _tagged_variants(current)
        if union is not None and isinstance(part, str) and part in union[1]:
            tag_key, tagged = union
            current = tagged[part]  # the tag: not a key in the YAML
            continue
        if _is_internal(part):
            continue
        out.append(part)
        model = _strip(current)
        if isinstance(part, int):
            args = get_args(model) if get_origin(model) in (list, tuple) else ()
            current, owner, siblings = (args[0] if args else None), None, {}
        elif get_origin(model) is dict:  # a key of a mapping (datasets[].conditions.<name>): its value's type
            current, owner, siblings = get_args(model)[1], None, {}
        elif isinstance(model, type) and issubclass(model, BaseModel):
            owner, siblings = model, (tagged if model in tagged.values() else {})
            field = model.model_fields.get(part)
            current = field.annotation if field is not None else None
            if field is not None and isinstance(field.discriminator, str):
                current = Annotated[field.annotation, Field(discriminator=field.discriminator)]
        else:
            owner, current, siblings = None, None, {}
        tagged = {}
    return _Where(tuple(out), owner, current, siblings, tag_key)


#: Names other tools use for our keys (Hugging Face, axolotl, peft), for "did you mean".
ALIASES = {
    "lr": "learning_rate",
    "learningrate": "learning_rate",
    "batch": "batch_size",
    "per_device_train_batch_size": "batch_size",
    "micro_batch_size": "batch_size",
    "grad_accum": "gradient_accumulation_steps",
    "gradient_accumulation": "gradient_accumulation_steps",
    "num_epochs": "epochs",
    "num_train_epochs": "epochs",
    "warmup": "warmup_steps",
    "max_seq_length": "max_length",
    "sequence_len": "max_length",
    "save_steps": "save_every",
    "lora_r": "r",
    "rank": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "lora_target_modules": "target_modules",
    "samples": "samples_per_question",
    "n_samples": "samples_per_question",
    "seed": "seeds",
}


def _fix_for(err: ErrorDetails, where: _Where, docs: str = "docs/config.md") -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if "fix" in ctx:  # a validator's own error that says how to fix it
        return str(ctx["fix"])
    loc, model = where.loc, where.owner
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else ""
        if model is not None:
            allowed = list(model.model_fields)
            alias = ALIASES.get(key.lower())
            close = [alias] if alias in allowed else difflib.get_close_matches(key, allowed, n=1)
            elsewhere = sorted({t for t, v in where.siblings.items() if v is not model and key in v.model_fields})
            if elsewhere and not close:
                here = next((t for t, v in where.siblings.items() if v is model), "?")
                there = " or ".join(f"{where.tag_key}: {t}" for t in elsewhere)
                return f"'{key}' is a key of {there}, not of {where.tag_key}: {here}; allowed keys here: {', '.join(allowed)}"
            hint = f"did you mean '{close[0]}'? " if close else ""
            return f"{hint}allowed keys here: {', '.join(allowed)}"
        return "remove it"
    if kind == "union_tag_not_found":
        return f"add '{_tag_name(ctx)}' with one of: {', '.join(_tags(where))} (each one's keys: {docs})"
    if kind == "union_tag_invalid":
        tags = _tags(where)
        close = difflib.get_close_matches(str(ctx.get("tag", "")), tags, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"{hint}use one of: {', '.join(tags)} (each one's keys: {docs})"
    if kind == "missing":
        if not loc:
            return "add the missing key"
        field = model.model_fields.get(str(loc[-1])) if model is not None else None
        about = f": {field.description}" if field is not None and field.description else ""
        return f"add '{loc[-1]}'{about}"
    if kind == "literal_error":
        return f"use one of {ctx.get('expected', 'the allowed values')}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return "use a whole number"
    if kind in ("float_parsing", "float_type"):
        return "use a number, e.g. 1e-4"
    if kind in ("bool_parsing", "bool_type"):
        return "use true or false"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return "use a value in the allowed range"
    if kind in ("list_type", "too_short"):
        return "give a list (YAML '- item' lines) with at least one item"
    if kind == "string_pattern_mismatch":
        return "use only letters, digits, '_', '.' and '-'"
    if kind == "model_attributes_type":
        return f"give a mapping of keys here (see {docs})"
    if kind == "value_error":
        return f"change it as the message says (format: {docs})"
    return f"see {docs} for this key"


def _tag_name(ctx: dict[str, Any]) -> str:
    """The discriminator's key ("kind") from pydantic's quoted ctx value ("'kind'")."""
    return str(ctx.get("discriminator", "kind")).strip("'\"")


def _tags(where: _Where) -> list[str]:
    union = _tagged_variants(where.target)
    return list(union[1]) if union is not None else []


def format_validation_error(
    exc: ValidationError,
    file: str,
    lines: dict[Loc, int],
    root: type[BaseModel] = StudySpec,
    error_type: type[TraitwatchError] = ConfigError,
    docs: str = "docs/config.md",
) -> TraitwatchError:
    """Turn the first pydantic error into a one-line error; the rest are summarised by count."""
    errors = exc.errors()
    first = errors[0]
    where = _resolve_loc(root, first["loc"])
    ctx = first.get("ctx") or {}
    msg = first["msg"]
    value = first.get("input")
    loc = where.loc
    if first["type"] == "union_tag_not_found":
        msg, value = f"missing '{_tag_name(ctx)}'", None
    elif first["type"] == "union_tag_invalid":
        loc = loc + (_tag_name(ctx),)
        msg, value = f"unknown {_tag_name(ctx)}", ctx.get("tag")
    line = None
    probe = loc
    while probe:
        if probe in lines:
            line = lines[probe]
            break
        probe = probe[:-1]
    if line is None:
        line = lines.get((), 1)
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    shown = ""
    if first["type"] not in ("missing", "extra_forbidden") and isinstance(value, (str, int, float, bool)):
        shown = f" (got {value!r})"
    return error_type(
        f"{_dotted(loc)}: {msg}{shown}{more}",
        where=f"{file}:{line}",
        fix=_fix_for(first, where, docs),
    )


def read_yaml(
    path: Path, error_type: type[TraitwatchError] = ConfigError, example: str = "examples/demo.yaml"
) -> tuple[Any, dict[Loc, int]]:
    """Parse a YAML file, returning the data and a map from key path to line number."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error_type("file not found", where=file, fix=f"check the path; start from {example}") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise error_type(f"not UTF-8 text (bad byte at offset {exc.start})", where=f"{file}:{line}", fix="save the file as UTF-8") from None
    except IsADirectoryError:
        raise error_type("is a folder, not a file", where=file, fix=f"pass a file like {example}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{file}:{mark.line + 1}" if mark is not None else file
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error_type(
            f"malformed YAML: {problem}",
            where=where,
            fix="check indentation and quote values that contain ':' or '#'",
        ) from None
    lines: dict[Loc, int] = {}
    if node is not None:
        _walk_nodes(node, (), lines, file, error_type)
    return data, lines


def _resolve(base: Path, value: Path | None) -> Path | None:
    if value is None:
        return None
    value = Path(value).expanduser()
    return value if value.is_absolute() else (base / value)


def resolve_paths(spec: StudySpec, base: Path) -> StudySpec:
    """Make every relative path in ``spec`` relative to ``base`` (the YAML file's folder)."""
    spec = spec.model_copy(deep=True)
    spec.output_dir = _resolve(base, spec.output_dir) or (base / "runs" / spec.name)
    spec.judge_cache = _resolve(base, spec.judge_cache)
    spec.store = _resolve(base, spec.store)
    if spec.monitor is not None:
        spec.monitor.alarm_file = _resolve(base, spec.monitor.alarm_file) or (spec.output_dir / "alarms.jsonl")
    if spec.model.path is not None:
        spec.model.path = _resolve(base, spec.model.path)
    for named in spec.models:
        named.path = _resolve(base, named.path)
    for ds in spec.datasets:
        ds.folder = _resolve(base, ds.folder)
        for src in ds.sources():
            src.path = _resolve(base, src.path)
    for ref in spec.traits:
        if not ref.suite.startswith("builtin:"):
            ref.suite = str(_resolve(base, Path(ref.suite)))
    spec.extra_traits = [t if t.startswith("builtin:") else str(_resolve(base, Path(t))) for t in spec.extra_traits]
    for judge in spec.judges:
        if isinstance(judge, OpenAIJudgeSpec):
            judge.api_key_file = _resolve(base, judge.api_key_file)
        elif isinstance(judge, LocalJudgeSpec) and judge.local.path is not None:
            judge.local.path = _resolve(base, judge.local.path)
    for tracker in spec.trackers:  # tensorboard's log_dir, wandb's dir (defaults follow output_dir at use)
        for attr in ("log_dir", "dir"):
            if getattr(tracker, attr, None) is not None:
                setattr(tracker, attr, _resolve(base, getattr(tracker, attr)))
    return spec


def parse_study(data: Any, *, file: str = "<study>", lines: dict[Loc, int] | None = None, base: Path | None = None) -> StudySpec:
    """Validate already-parsed YAML data as a StudySpec (paths resolved against ``base``)."""
    if data is None:
        raise ConfigError("the study file is empty", where=file, fix="start from examples/demo.yaml")
    if not isinstance(data, dict):
        raise ConfigError(
            f"the top level must be a mapping of keys, not a {type(data).__name__}",
            where=f"{file}:1",
            fix="start from examples/demo.yaml",
        )
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, file, lines or {}) from None
    return resolve_paths(spec, base or Path.cwd())


def load_study(path: str | Path) -> StudySpec:
    """Load and validate a study YAML file; raises ConfigError with file:line on any problem.

    A folder stands for the one YAML file at its top (``traitwatch demo`` writes ``demo.yaml``
    into its output folder, so ``traitwatch report traitwatch-demo`` works)."""
    path = Path(path)
    if path.is_dir():
        path = _study_file_in(path)
    data, lines = read_yaml(path)
    return parse_study(data, file=str(path), lines=lines, base=path.resolve().parent)


def _study_file_in(folder: Path) -> Path:
    """The study file a folder holds: its only top-level ``.yaml`` / ``.yml`` file."""
    found = sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if len(found) == 1:
        return found[0]
    what = "holds no study file (.yaml)" if not found else f"holds {len(found)} YAML files ({', '.join(p.name for p in found)})"
    raise ConfigError(f"is a folder that {what}", where=str(folder), fix="pass the study's YAML file itself, like examples/demo.yaml")


def dump_study(spec: StudySpec) -> str:
    """The spec as YAML (every default written out), for the report and for reproducibility."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
