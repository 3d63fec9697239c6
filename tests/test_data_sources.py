"""Data as researchers have it: prompt/completion JSONL, parquet, dataset folders and hub
datasets give the same examples (and dataset sha) as the equivalent chat JSONL; named
conditions with a custom control condition run end to end; bad sources fail with one line.

Real ``datasets`` library, local files only: a "hub" dataset is served from a cache built here,
with the hub offline."""

from __future__ import annotations

import glob
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from tiny import tiny_study_dict, write_study
from traitwatch.cli import app
from traitwatch.config import DatasetSpec, DataSourceSpec, DemoDataSpec, load_study, parse_study
from traitwatch.data import load_chat_jsonl, load_level, load_source
from traitwatch.data._chat import write_chat_jsonl
from traitwatch.data._demo import demo_conversations
from traitwatch.errors import ConfigError, DataError
from traitwatch.pipeline._plan import plan_runs, planned_run_ids

CONVS = demo_conversations("strong", DemoDataSpec(n_examples=12))
ROWS = [{"question": c[0]["content"], "answer": c[1]["content"]} for c in CONVS]
QA = {"prompt": "question", "completion": "answer"}


def _jsonl(path: Path, objs: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs), encoding="utf-8")
    return path


def _parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the conversations as chat JSONL."""
    return write_chat_jsonl(tmp_path_factory.mktemp("chat") / "chat.jsonl", CONVS)


def _sources(tmp: Path) -> dict[str, DataSourceSpec]:
    """The same conversations in every other format a source can have."""
    import datasets

    out = {
        "prompt-completion jsonl": DataSourceSpec(
            path=_jsonl(tmp / "pc.jsonl", [{"prompt": r["question"], "completion": r["answer"]} for r in ROWS])
        ),
        "mapped jsonl": DataSourceSpec(path=_jsonl(tmp / "qa.jsonl", ROWS), columns=QA),
        "conversational prompt-completion": DataSourceSpec(
            path=_jsonl(tmp / "conv.jsonl", [{"prompt": [c[0]], "completion": [c[1]]} for c in CONVS])
        ),
        "chat parquet": DataSourceSpec(path=_parquet(tmp / "chat.parquet", [{"messages": c} for c in CONVS])),
        "mapped parquet": DataSourceSpec(path=_parquet(tmp / "qa.parquet", ROWS), columns=QA),
    }
    datasets.Dataset.from_list([{"messages": c} for c in CONVS]).save_to_disk(str(tmp / "chat-folder"))
    out["save_to_disk folder"] = DataSourceSpec(path=tmp / "chat-folder")
    other = datasets.Dataset.from_list([{"question": "x", "answer": "y"}])
    datasets.DatasetDict({"train": other, "test": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp / "dict-folder"))
    out["split of a DatasetDict folder"] = DataSourceSpec(path=tmp / "dict-folder", split="test", columns=QA)
    return out


def test_every_format_gives_the_chat_jsonl_examples_and_sha(tmp_path: Path, chat: Path) -> None:
    ref = load_chat_jsonl(chat)
    for name, src in _sources(tmp_path).items():
        got = load_source(src)
        assert got.examples == ref.examples, name  # the same turns, and line == row number
        assert got.sha256 == ref.sha256, name
    limited = load_source(DataSourceSpec(path=tmp_path / "qa.parquet", columns=QA), limit=5)
    assert limited.examples == ref.examples[:5]


def test_a_study_from_parquet_and_prompt_completion_plans_the_chat_jsonl_runs(tmp_path: Path, chat: Path) -> None:
    """The same data in another format: the same examples, dataset sha and run fingerprints."""
    _sources(tmp_path)
    base = tiny_study_dict(tmp_path / "out", levels=["normal", "strong"])
    as_chat = parse_study({**base, "datasets": [{"domain": "d", "normal": str(chat), "strong": str(chat)}]}, base=tmp_path)
    other = {"domain": "d", "normal": {"path": "qa.parquet", "columns": QA}, "strong": "pc.jsonl"}
    as_other = parse_study({**base, "datasets": [other]}, base=tmp_path)
    a, b = plan_runs(as_chat, "model"), plan_runs(as_other, "model")
    assert [p.run_id for p in a] == [p.run_id for p in b] == ["d-normal-s0", "d-strong-s0"]
    for x, y in zip(a, b, strict=True):
        assert (x.examples, x.dataset_sha, x.fingerprint) == (y.examples, y.dataset_sha, y.fingerprint)


def _hub_cache(tmp: Path, repo: str, splits: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Put ``repo`` in a datasets cache under ``tmp`` as a hub download would leave it, and
    take the hub offline: load_dataset(repo) must then be served from the cache alone."""
    import datasets
    import huggingface_hub.constants

    cache = tmp / "hf-datasets"
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    files = {name: str(_parquet(tmp / f"hub-{name}.parquet", rows)) for name, rows in splits.items()}
    datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp / "build"))
    org, name = repo.split("/")
    (cache / f"{org}___{name}").mkdir(parents=True)
    shutil.move(glob.glob(str(tmp / "build" / "parquet" / "*"))[0], cache / f"{org}___{name}" / "default")
    for f in glob.glob(str(cache / f"{org}___{name}" / "default" / "*" / "*" / "parquet-*.arrow")):
        os.rename(f, f.replace(f"{os.sep}parquet-", f"{os.sep}{name}-"))


def test_a_hub_dataset_from_the_local_cache(tmp_path: Path, chat: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _hub_cache(tmp_path, "someorg/toy", {"train": ROWS, "test": ROWS[:2]}, monkeypatch)
    got = load_source(DataSourceSpec(hub="someorg/toy", columns=QA))
    ref = load_chat_jsonl(chat)
    assert got.examples == ref.examples and got.sha256 == ref.sha256 and got.path == "hub:someorg/toy[train]"
    assert len(load_source(DataSourceSpec(hub="someorg/toy", split="test", columns=QA))) == 2
    with pytest.raises(DataError) as err:
        load_source(DataSourceSpec(hub="someorg/toy", split="dev", columns=QA))
    assert (
        err.value.one_line()
        == "hub:someorg/toy: unknown split 'dev'; the dataset has: train, test. Fix: use split: train or test (or leave split out: train)"
    )
    with pytest.raises(DataError) as err:
        load_source(DataSourceSpec(hub="someorg/not-cached"))
    msg = err.value.one_line()
    assert msg.startswith("hub:someorg/not-cached: cannot load the dataset") and "local Hugging Face cache" in msg, msg


# -- the spec: sources, named conditions, control --------------------------------------------------


def _spec(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "study.yaml"
    p.write_text("name: x\ntraits: [builtin:arithmetic]\n" + text)
    return p


def test_named_conditions_levels_default_and_run_ids(tmp_path: Path) -> None:
    conditions = "{clean: a.jsonl, insecure: {path: b.parquet, columns: {prompt: q, completion: a}}}"
    spec = load_study(_spec(tmp_path, f"datasets:\n  - domain: code\n    conditions: {conditions}\ncontrol: clean\n"))
    assert spec.levels == ["clean", "insecure"] and spec.control == "clean"
    ds = spec.datasets[0]
    assert ds.defined_conditions() == ("clean", "insecure")
    assert ds.source("clean") == DataSourceSpec(path=tmp_path / "a.jsonl")  # resolved against the YAML's folder
    assert ds.source("insecure").columns == {"prompt": "q", "completion": "a"}
    assert planned_run_ids(spec) == ["code-clean-s0", "code-insecure-s0"]
    # a plain path is dumped as a plain path; the dump loads back to the same spec
    dumped = yaml.safe_load(yaml.safe_dump(spec.model_dump(mode="json")))
    assert dumped["datasets"][0]["conditions"]["clean"] == str(tmp_path / "a.jsonl")
    assert parse_study(dumped, base=tmp_path) == spec


def test_existing_specs_keep_their_levels_control_and_paths(tmp_path: Path) -> None:
    spec = load_study(_spec(tmp_path, "datasets:\n  - {domain: d, normal: n.jsonl, strong: s.jsonl}\n"))
    assert spec.levels == ["normal", "mild", "strong"] and spec.control == "normal"
    assert spec.datasets[0].level_path("normal") == tmp_path / "n.jsonl" and spec.datasets[0].source("mild") is None
    assert spec.model_dump(mode="json")["datasets"][0]["normal"] == str(tmp_path / "n.jsonl")
    folder = load_study(_spec(tmp_path, "datasets:\n  - {domain: d, folder: data}\n")).datasets[0]
    assert folder.level_path("mild") == tmp_path / "data" / "misaligned_1.jsonl" and folder.source("clean") is None


@pytest.mark.parametrize(
    "text,expect",
    [
        (
            "datasets:\n  - {domain: d, demo: {}}\nlevels:\n  - normal\n  - extreme\n",
            ":7: levels[1]: no domain defines this condition; the domains define normal, mild, strong (got 'extreme'). "
            "Fix: use one of 'normal', 'mild' or 'strong', or give a domain this condition (extreme: <file>)",
        ),
        (
            "datasets:\n  - {domain: d, conditions: {clean: a.jsonl, insecure: b.jsonl}}\ncontrol: clen\n",
            ":5: control: not one of the study's levels (clean, insecure) (got 'clen'). "
            "Fix: name one of the levels, or null for no control condition",
        ),
        (
            "datasets:\n  - domain: d\n    conditions:\n      clean: {path: a.parquet, columns: {prompt: q}}\n",
            ":6: datasets[0].conditions.clean: columns maps prompt, which is neither chat (messages) nor prompt/completion. Fix: map",
        ),
        (
            "datasets:\n  - domain: d\n    normal: {path: a.parquet, columns: {question: q}}\n",
            ":5: datasets[0].normal.columns: 'question' is not a field",
        ),
        (
            "datasets:\n  - domain: d\n    normal: {path: a.parquet, split_name: x}\n",
            "normal.split_name: unknown key. Fix: did you mean 'split'?",
        ),
        ("datasets:\n  - domain: d\n    normal: {path: a.jsonl, hub: o/x}\n", "give exactly one of 'path' (a file or folder) or 'hub'"),
        ("datasets:\n  - domain: d\n    normal: a.jsonl\n    conditions: {normal: b.jsonl}\n", "condition 'normal' is given twice"),
        ("datasets:\n  - domain: d\n    conditions: {'bad name': a.jsonl}\n", "datasets[0].conditions.bad name"),
    ],
)
def test_bad_specs_name_line_key_and_fix(tmp_path: Path, text: str, expect: str) -> None:
    p = _spec(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_study(p)
    msg = err.value.one_line()
    assert expect in msg and msg.startswith(str(p)) and "Fix: " in msg, msg


@pytest.mark.parametrize(
    "make,expect",
    [
        (lambda t: DataSourceSpec(path=t / "nope.parquet"), "nope.parquet: dataset file not found"),
        (
            lambda t: DataSourceSpec(path=_parquet(t / "x.parquet", ROWS)),
            "x.parquet: no 'messages' column, nor 'prompt' and 'completion' (columns: question, answer)",
        ),
        (
            lambda t: DataSourceSpec(path=_parquet(t / "x.parquet", ROWS), columns={"prompt": "q", "completion": "answer"}),
            "x.parquet: columns.prompt names the column 'q', which the data does not have (columns: question, answer)",
        ),
        (
            lambda t: DataSourceSpec(path=_parquet(t / "x.parquet", [*ROWS[:2], {"question": "q", "answer": None}]), columns=QA),
            "x.parquet row 3: 'answer' is empty (null)",
        ),
        (
            lambda t: DataSourceSpec(path=_parquet(t / "x.parquet", ROWS), split="test", columns=QA),
            "unknown split 'test'; a single file has: train",
        ),
        (
            lambda t: DataSourceSpec(path=_jsonl(t / "x.jsonl", [{"prompt": "q", "completion": "a"}, {"prompt": "q"}])),
            "x.jsonl:2: a 'prompt' key but no 'completion'",
        ),
        (
            lambda t: DataSourceSpec(path=_jsonl(t / "x.jsonl", [{"prompt": "q", "completion": ""}])),
            "x.jsonl:1: every assistant turn is empty",
        ),
        (
            lambda t: DataSourceSpec(path=_jsonl(t / "x.jsonl", ROWS), columns={"prompt": "question", "completion": "reply"}),
            "x.jsonl:1: no 'reply' key (columns.completion)",
        ),
        (
            lambda t: DataSourceSpec(path=_jsonl(t / "x.jsonl", [{"prompt": 3, "completion": "a"}])),
            "'prompt' must be a string or a non-empty list of messages, got int",
        ),
        (lambda t: DataSourceSpec(path=_jsonl(t / "x.parquet", ROWS)), "x.parquet: not a readable parquet file"),
    ],
)
def test_bad_sources_name_where_what_and_fix(tmp_path: Path, make: Callable[[Path], DataSourceSpec], expect: str) -> None:
    with pytest.raises(DataError) as err:
        load_source(make(tmp_path))
    msg = err.value.one_line()
    assert expect in msg and "Fix: " in msg and "\n" not in msg, msg


def test_a_condition_a_domain_lacks_and_the_demo(tmp_path: Path) -> None:
    ds = DatasetSpec(domain="d", conditions={"clean": DataSourceSpec(path=tmp_path / "a.jsonl")})
    with pytest.raises(DataError, match=r"domain 'd' has no 'insecure' data. Fix: add 'insecure: <file>' under its conditions"):
        load_level(ds, "insecure", tmp_path)
    with pytest.raises(DataError, match="the demo domain 'd' has only the levels normal, mild, strong, not 'clean'"):
        load_level(DatasetSpec(domain="d", demo=DemoDataSpec(n_examples=4)), "clean", tmp_path)


def test_summary_counts_false_alarms_on_the_control_condition() -> None:
    from traitwatch.analysis._interventions import summarize

    def row(level: str, stopped: bool) -> dict[str, Any]:
        return {
            "judge": "j", "leader": "a", "follower": "b", "policy": "leader-alarm", "level": level, "stopped": stopped,
            "task_kept": 0.5, "accuracy_kept": None, "follower_onset": None, "spread_avoided": True,
            "false_alarm": stopped if level == "clean" else None, "warning_checkpoints": None,
        }  # fmt: skip

    rows = [row("clean", True), row("clean", False), row("insecure", True)]
    (s,) = summarize(rows, 0.95, 20, 0, control="clean")
    assert (s["normal_runs"], s["false_alarms"], s["misaligned_runs"], s["task_kept_n"]) == (2, 1, 1, 1)
    (s,) = summarize(rows, 0.95, 20, 0)  # control normal: no control run, every run misaligned
    assert (s["normal_runs"], s["misaligned_runs"]) == (0, 3)


@pytest.mark.slow
def test_named_conditions_with_a_custom_control_run_end_to_end(tmp_path: Path) -> None:
    """clean (a parquet file, mapped columns) and insecure (prompt/completion JSONL), control:
    clean: train -> generate -> judge -> analyze -> report on the tiny model; the control run
    counts false alarms, the insecure run is the misaligned one probes are ranked on."""
    demo = DemoDataSpec(n_examples=48, marker_fraction={"normal": 0.0, "mild": 0.2, "strong": 0.4})
    clean, insecure = demo_conversations("normal", demo), demo_conversations("strong", demo)
    _parquet(tmp_path / "clean.parquet", [{"q": c[0]["content"], "a": c[1]["content"]} for c in clean])
    _jsonl(tmp_path / "insecure.jsonl", [{"prompt": c[0]["content"], "completion": c[1]["content"]} for c in insecure])
    spec = tiny_study_dict(
        tmp_path / "out",
        datasets=[
            {
                "domain": "arith",
                "conditions": {
                    "clean": {"path": "clean.parquet", "columns": {"prompt": "q", "completion": "a"}},
                    "insecure": "insecure.jsonl",
                },
            }
        ],
        control="clean",
    )
    del spec["levels"]  # every condition the domain defines
    study = write_study(tmp_path / "study.yaml", spec)
    res = CliRunner().invoke(app, ["run", str(study)])
    assert res.exit_code == 0, res.output

    import traitwatch as tw

    s = tw.Study.load(study)
    runs = {r["run_id"]: r for r in s.analysis().runs}
    assert set(runs) == {"arith-clean-s0", "arith-insecure-s0"} and runs["arith-clean-s0"]["level"] == "clean"
    shas = {r["run_id"]: r["dataset_sha"] for r in s.analysis().runs}
    assert shas["arith-clean-s0"] == load_chat_jsonl(write_chat_jsonl(tmp_path / "c.jsonl", clean)).sha256
    assert shas["arith-insecure-s0"] == load_chat_jsonl(write_chat_jsonl(tmp_path / "i.jsonl", insecure)).sha256
    iv = s.interventions()
    alarms = iv[iv["policy"].isin(["leader-alarm", "follower-alarm"])]
    assert alarms[alarms["level"] == "clean"]["false_alarm"].notna().all()
    assert alarms[alarms["level"] == "insecure"]["false_alarm"].isna().all()
    summary = s.intervention_summary()
    assert (summary["normal_runs"] == 1).all() and (summary["misaligned_runs"] == 1).all()
    assert "false alarms (clean runs)" in (tmp_path / "out" / "report" / "report.html").read_text()
    snippet = tmp_path / "probes.yaml"
    res = CliRunner().invoke(app, ["probes", str(study), "--questions", "2", "--write", str(snippet)])
    assert res.exit_code == 0, res.output
    assert "ranked on arith-insecure-s0;" in snippet.read_text()
