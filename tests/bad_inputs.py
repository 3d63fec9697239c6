"""The catalogue of bad inputs: each case builds a broken input, runs the real CLI, and
records the one line the user sees. Used by tests/test_bad_input.py (each case must exit 2
with one line naming where, what and how to fix, and lose no stored work) and by
scripts/gen_errors_doc.py (which writes docs/errors.md from the same runs)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from typer.testing import CliRunner

from tiny import TINY, run_tiny_study, tiny_study_dict

GOOD = {"messages": [{"role": "user", "content": "What is 3 + 1?"}, {"role": "assistant", "content": "The answer is 4."}]}


@dataclass(frozen=True)
class Case:
    id: str
    title: str
    make: Callable[[Path, Path], list[str]]  # (tmp folder, completed study folder) -> CLI arguments
    expect: tuple[str, ...]
    on_stored_work: bool = False


def _yaml(tmp: Path, text: str | bytes, name: str = "study.yaml") -> Path:
    p = tmp / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


def _study(tmp: Path, **overrides: object) -> Path:
    p = tmp / "study.yaml"
    p.write_text(yaml.safe_dump(tiny_study_dict(tmp / "out", **overrides), sort_keys=False))
    return p


def _jsonl(tmp: Path, lines: list[bytes]) -> Path:
    good = json.dumps(GOOD).encode()
    p = tmp / "data.jsonl"
    p.write_bytes(b"\n".join([good, *lines, good]) + b"\n")
    return p


def _with_data(tmp: Path, lines: list[bytes]) -> list[str]:
    path = _jsonl(tmp, lines)
    return ["validate", str(_study(tmp, datasets=[{"domain": "d", "normal": str(path)}], levels=["normal"]))]


QA_ROWS = [{"question": "What is 3 + 1?", "answer": "The answer is 4."}, {"question": "What is 5 + 1?", "answer": None}]


def _with_source(tmp: Path, source: object) -> list[str]:
    """validate a study whose normal level is ``source`` (a path or a source mapping, docs/data.md)."""
    return ["validate", str(_study(tmp, datasets=[{"domain": "d", "normal": source}], levels=["normal"]))]


def _qa_parquet(tmp: Path, rows: list[dict[str, object]]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp / "data.parquet")
    return str(tmp / "data.parquet")


def _split_folder(tmp: Path) -> str:
    """A dataset folder holding the splits train and test (DatasetDict.save_to_disk)."""
    import datasets

    rows = datasets.Dataset.from_list(QA_ROWS[:1])
    datasets.DatasetDict({"train": rows, "test": rows}).save_to_disk(str(tmp / "qa"))
    return str(tmp / "qa")


def _on_done(tmp: Path, done: Path, **overrides: object) -> Path:
    """A copy of the completed study, with some settings changed."""
    out = tmp / "out"
    shutil.copytree(done, out)
    spec = tiny_study_dict(out)
    spec.update(overrides)
    p = tmp / "study.yaml"
    p.write_text(yaml.safe_dump(spec, sort_keys=False))
    return p


def _suite(tmp: Path, text: str) -> list[str]:
    p = tmp / "suite.yaml"
    p.write_text(text)
    return ["validate", str(_study(tmp, traits=[str(p)], analysis={"leads": []}))]


def _hold_lock(tmp: Path, done: Path) -> list[str]:
    p = _on_done(tmp, done)
    code = (
        "import time; from pathlib import Path; from traitwatch.store import StudyLock\n"
        f"with StudyLock(Path({str(tmp / 'out')!r})):\n    print('held', flush=True); time.sleep(30)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    _HELD.append(proc)
    return ["judge", str(p)]


_HELD: list[subprocess.Popen[str]] = []


def _unsafe_key(tmp: Path, done: Path) -> list[str]:
    key = tmp / "key.txt"
    key.write_text("sk-dummy\n")
    key.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    judges = [{"name": "api", "kind": "openai", "model": "m", "api_key_file": str(key)}]
    return ["judge", str(_on_done(tmp, done, judges=judges))]


CASES: list[Case] = [
    Case(
        "yaml-malformed",
        "malformed YAML",
        lambda t, d: ["validate", str(_yaml(t, "name: x\ndatasets: [\n  - a: b: c\n"))],
        ("malformed YAML", "study.yaml:3"),
    ),
    Case(
        "yaml-unknown-key",
        "unknown key (a name from another tool)",
        lambda t, d: [
            "validate",
            str(_yaml(t, "name: x\ndatasets:\n  - {domain: d, demo: {}}\ntraits: [builtin:evil]\ntraining:\n  lr: 1.0e-4\n")),
        ],
        ("study.yaml:6", "training.lr: unknown key", "did you mean 'learning_rate'"),
    ),
    Case(
        "yaml-wrong-type",
        "wrong type",
        lambda t, d: [
            "validate",
            str(_yaml(t, "name: x\ndatasets:\n  - {domain: d, demo: {}}\ntraits: [builtin:evil]\ntraining:\n  save_every: often\n")),
        ],
        ("study.yaml:6", "training.save_every", "'often'"),
    ),
    Case(
        "yaml-bad-choice",
        "a value outside its choices",
        lambda t, d: [
            "validate",
            str(_yaml(t, "name: x\ndatasets:\n  - {domain: d, demo: {}}\ntraits: [builtin:evil]\ntraining:\n  lr_scheduler: cosin\n")),
        ],
        ("study.yaml:6", "training.lr_scheduler", "'cosine'"),
    ),
    Case(
        "condition-undefined",
        "a level (condition) in `levels` that no domain defines",
        lambda t, d: [
            "validate",
            str(_yaml(t, "name: x\ndatasets:\n  - {domain: d, demo: {}}\ntraits: [builtin:evil]\nlevels: [normal, extreme]\n")),
        ],
        ("study.yaml:5", "levels[1]", "no domain defines", "'mild'"),
    ),
    Case(
        "control-unknown",
        "a `control` condition that is not one of the study's levels",
        lambda t, d: [
            "validate",
            str(
                _yaml(
                    t,
                    "name: x\ndatasets:\n  - domain: d\n    conditions: {clean: a.jsonl, insecure: b.jsonl}\n"
                    "control: clen\ntraits: [builtin:evil]\n",
                )
            ),
        ],
        ("study.yaml:5", "control", "not one of the study's levels (clean, insecure)"),
    ),
    Case(
        "models-duplicate-name",
        "two models of `models:` with the same name",
        lambda t, d: ["validate", str(_study(t, models=[{"name": "m", **TINY}, {"name": "m", **TINY}]))],
        ("model names must be unique",),
    ),
    Case(
        "activation-several-models",
        "an activation judge in a study of several models",
        lambda t, d: [
            "validate",
            str(_study(t, models=[{"name": "a", **TINY}, {"name": "b", **TINY}], judges=[{"name": "act", "kind": "activation"}])),
        ],
        ("activation judge", "several 'models'"),
    ),
    Case(
        "optimizer-8bit-without-bitsandbytes",
        "`training.optimizer: adamw_8bit` where bitsandbytes is not installed",
        lambda t, d: ["run", str(_study(t, training={"optimizer": "adamw_8bit", "max_steps": 2}))],
        ("training.optimizer", "bitsandbytes"),
    ),
    Case("yaml-duplicate-key", "a key given twice", lambda t, d: ["validate", str(_yaml(t, "name: x\nname: y\n"))], ("appears twice",)),
    Case("yaml-empty", "an empty study file", lambda t, d: ["validate", str(_yaml(t, ""))], ("empty",)),
    Case("yaml-not-utf8", "a study file that is not UTF-8", lambda t, d: ["validate", str(_yaml(t, b"name: caf\xe9\n"))], ("not UTF-8",)),
    Case("study-missing", "a study file that does not exist", lambda t, d: ["run", str(t / "nope.yaml")], ("file not found",)),
    Case(
        "dataset-missing",
        "a dataset file that does not exist",
        lambda t, d: ["validate", str(_study(t, datasets=[{"domain": "d", "normal": str(t / "missing.jsonl")}], levels=["normal"]))],
        ("missing.jsonl", "dataset file not found"),
    ),
    Case(
        "dataset-empty",
        "an empty dataset",
        lambda t, d: (
            (t / "e.jsonl").write_text("\n")
            and ["validate", str(_study(t, datasets=[{"domain": "d", "normal": str(t / "e.jsonl")}], levels=["normal"]))]
        ),
        ("dataset has no examples",),
    ),
    Case(
        "jsonl-not-json",
        "a JSONL line that is not JSON",
        lambda t, d: _with_data(t, [b'{"messages": [}']),
        ("data.jsonl:2", "not valid JSON"),
    ),
    Case(
        "jsonl-wrong-role",
        "a message with a wrong role",
        lambda t, d: _with_data(t, [b'{"messages": [{"role": "bot", "content": "hi"}]}']),
        ("data.jsonl:2", "role is 'bot'"),
    ),
    Case(
        "jsonl-no-assistant",
        "a conversation without an assistant turn",
        lambda t, d: _with_data(t, [b'{"messages": [{"role": "user", "content": "hi"}]}']),
        ("data.jsonl:2", "no assistant turn"),
    ),
    Case(
        "jsonl-not-utf8",
        "non-UTF-8 bytes in a dataset",
        lambda t, d: _with_data(t, [b'{"messages": "\xff"}']),
        ("data.jsonl:2", "not UTF-8"),
    ),
    Case(
        "jsonl-huge-line",
        "a huge line (over 8 MiB)",
        lambda t, d: _with_data(t, [b'{"messages": [{"role": "assistant", "content": "' + b"x" * (9 * 2**20) + b'"}]}']),
        ("data.jsonl:2", "over the 8 MiB limit"),
    ),
    Case(
        "source-bad-columns",
        "a column mapping that is neither `messages` nor `prompt` + `completion`",
        lambda t, d: _with_source(t, {"path": str(t / "data.parquet"), "columns": {"prompt": "question"}}),
        ("study.yaml", "datasets[0].normal", "columns maps prompt, which is neither"),
    ),
    Case(
        "source-missing-column",
        "a column mapping naming a column the data lacks",
        lambda t, d: _with_source(t, {"path": _qa_parquet(t, QA_ROWS), "columns": {"prompt": "q", "completion": "answer"}}),
        ("data.parquet", "names the column 'q'", "question, answer"),
    ),
    Case(
        "source-no-columns",
        "a parquet file without `messages` or `prompt`/`completion` columns, and no mapping",
        lambda t, d: _with_source(t, _qa_parquet(t, QA_ROWS)),
        ("data.parquet", "no 'messages' column", "columns: {prompt: <column>"),
    ),
    Case(
        "source-unknown-split",
        "a split the dataset folder does not have",
        lambda t, d: _with_source(t, {"path": _split_folder(t), "split": "validation"}),
        ("unknown split 'validation'", "train, test"),
    ),
    Case(
        "source-null-value",
        "a table row without a value in a mapped column",
        lambda t, d: _with_source(t, {"path": _qa_parquet(t, QA_ROWS), "columns": {"prompt": "question", "completion": "answer"}}),
        ("data.parquet row 2", "'answer' is empty (null)"),
    ),
    Case(
        "jsonl-no-completion",
        "a prompt/completion line without its completion",
        lambda t, d: _with_data(t, [b'{"prompt": "What is 3 + 1?"}']),
        ("data.jsonl:2", "a 'prompt' key but no 'completion'"),
    ),
    Case(
        "suite-no-questions",
        "a trait suite with no questions",
        lambda t, d: _suite(t, "name: s\ntraits:\n  t: {checker: {kind: contains, text: x}}\n"),
        ("suite has no questions",),
    ),
    Case(
        "suite-no-score-instruction",
        "a rubric without a score instruction",
        lambda t, d: _suite(t, "name: s\ntraits:\n  t:\n    rubric: 'Is {answer} nice?'\nquestions:\n  - {id: q, text: hi}\n"),
        ("suite.yaml:4", "no score instruction"),
    ),
    Case(
        "suite-unknown-builtin",
        "an unknown built-in suite",
        lambda t, d: ["validate", str(_study(t, traits=["builtin:nope"], analysis={"leads": []}))],
        ("no built-in suite 'nope'", "builtin:evil"),
    ),
    Case(
        "em-question-system",
        "an emergent-misalignment question with its own system prompt",
        lambda t, d: _suite(
            t,
            "- id: a\n  type: free_form\n  paraphrases: ['q?']\n  system: Be evil.\n"
            "  judge_prompts: {aligned: 'Q {question} A {answer}: rate alignment from 0 to 100.'}\n",
        ),
        ("suite.yaml:4", "has a system prompt", "generation.system_prompt"),
    ),
    Case(
        "em-judge-prompts-differ",
        "emergent-misalignment questions whose judge prompts differ",
        lambda t, d: _suite(
            t,
            "- id: a\n  type: free_form\n  paraphrases: ['q?']\n"
            "  judge_prompts: {aligned: 'Q {question} A {answer}: rate alignment from 0 to 100.'}\n"
            "- id: b\n  type: free_form\n  paraphrases: ['r?']\n"
            "  judge_prompts: {aligned: 'Q {question} A {answer}: alignment, 0 to 100.'}\n",
        ),
        ("suite.yaml:8", "differ from the first question's"),
    ),
    Case(
        "activation-filter-unknown",
        "an activation judge whose filter_judge names no judge",
        lambda t, d: ["validate", str(_study(t, judges=[{"name": "act", "kind": "activation", "filter_judge": "nope"}]))],
        ("filter_judge", "nope"),
    ),
    Case(
        "detector-unknown",
        "an unknown detector",
        lambda t, d: ["validate", str(_study(t, analysis={"detectors": ["magic"]}))],
        ("unknown detector 'magic'", "binseg"),
    ),
    Case(
        "lead-unknown-trait",
        "a lead pair naming a trait no suite has",
        lambda t, d: ["validate", str(_study(t, analysis={"leads": [["wrong_answer", "evil"]]}))],
        ("analysis.leads[0]", "unknown trait 'evil'"),
    ),
    Case(
        "model-path-missing",
        "a model path that does not exist",
        lambda t, d: ["run", str(_study(t, model={"source": "local", "path": str(t / "no-model")}))],
        ("model folder not found",),
    ),
    Case(
        "model-changed",
        "an adapter from a different base model (the study's model changed after training)",
        lambda t, d: [
            "evaluate",
            str(
                _on_done(
                    t,
                    d,
                    model={
                        "source": "random",
                        "dtype": "float32",
                        "random": {"hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1},
                    },
                )
            ),
        ],
        ("trained with other settings",),
        on_stored_work=True,
    ),
    Case(
        "judge-down",
        "a judge endpoint that is down",
        lambda t, d: [
            "judge",
            str(
                _on_done(
                    t, d, judges=[{"name": "api", "kind": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1", "api_key_env": None}]
                )
            ),
        ],
        ("cannot reach the judge endpoint", "stored judgments are kept"),
        on_stored_work=True,
    ),
    Case(
        "judge-garbage",
        "a judge endpoint that returns garbage",
        lambda t, d: [
            "judge",
            str(
                _on_done(
                    t,
                    d,
                    judges=[
                        {
                            "name": "api",
                            "kind": "openai",
                            "model": "m",
                            "base_url": os.environ["TW_GARBAGE_URL"],
                            "api_key_env": None,
                            "max_retries": 1,
                            "max_concurrency": 64,
                        }
                    ],
                )
            ),
        ],  # 64: the retries' backoff waits overlap
        ("got no usable answer", "malformed JSON body", "only the failed requests are sent again"),
        on_stored_work=True,
    ),
    Case(
        "api-key-missing",
        "an API key variable that is not set",
        lambda t, d: [
            "judge",
            str(_on_done(t, d, judges=[{"name": "api", "kind": "openai", "model": "m", "api_key_env": "TW_NOT_SET_KEY"}])),
        ],
        ("TW_NOT_SET_KEY is not set",),
        on_stored_work=True,
    ),
    Case("api-key-file-unsafe", "an API key file others can read", _unsafe_key, ("readable by others", "chmod 600"), on_stored_work=True),
    Case(
        "output-unwritable",
        "an output folder that cannot be written",
        lambda t, d: (t / "file").write_text("x") and ["run", str(_study(t, output_dir=str(t / "file" / "out")))],
        ("not writable",),
    ),
    Case("study-locked", "a study another process is running", _hold_lock, ("in use by pid", "wait for it"), on_stored_work=True),
    Case(
        "runs-no-match",
        "a `--runs` glob that matches no run of the study",
        lambda t, d: ["run", str(_on_done(t, d)), "--runs", "arith-*", "--runs", "medical-*"],
        ("--runs", "matches no run", "arith-normal-s0, arith-strong-s0"),
        on_stored_work=True,
    ),
    Case(
        "merge-conflict",
        "`traitwatch merge` of a part whose run was trained differently (same run and step, another adapter)",
        lambda t, d: _merge_conflict(t, d),
        ("table checkpoints", "adapter_sha", "nothing was written"),
        on_stored_work=True,
    ),
]


def _merge_conflict(tmp: Path, done: Path) -> list[str]:
    """A merged study (``out``) and a part holding one of its runs trained again, differently."""
    from traitwatch.pipeline._merge import merge_studies

    shutil.copytree(done, tmp / "a")
    merge_studies(tmp / "out", [tmp / "a"])
    shutil.copytree(done, tmp / "b")
    with sqlite3.connect(tmp / "b" / "study.sqlite") as c:
        c.execute("UPDATE checkpoints SET adapter_sha = ? WHERE run_id = 'arith-normal-s0' AND step = 2", ("0" * 64,))
    return ["merge", str(tmp / "out"), str(tmp / "b")]


def _counts(out: Path) -> dict[str, int]:
    db = out / "study.sqlite"
    tables = ("runs", "checkpoints", "generations", "judgments", "scores")
    if not db.exists():
        return dict.fromkeys(tables, 0)
    with sqlite3.connect(db) as c:
        return {t: c.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}


def run_case(case: Case, tmp: Path, done: Path) -> tuple[int, str, bool]:
    """(exit code, the error line, whether stored work is intact)."""
    from traitwatch.cli import app

    tmp.mkdir(parents=True, exist_ok=True)
    try:
        args = case.make(tmp, done)
        before = _counts(tmp / "out")
        res = CliRunner().invoke(app, args)
        after = _counts(tmp / "out")
    finally:
        for p in _HELD:
            p.kill()
            p.wait()
        _HELD.clear()
    lines = [x for x in res.output.splitlines() if x.startswith(("error:", "stopped:"))]
    line = lines[0] if len(lines) == 1 else res.output
    return res.exit_code, line, before == after


def normalize(line: str, tmp: Path) -> str:
    line = line.replace(str(tmp), "<dir>")
    line = re.sub(r"pid \d+ on \S+ since [\d-]+ [\d:]+ \(.*?\)", "pid <pid> on <host> since <time> (<command>)", line)
    line = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", line)
    return line.removeprefix("error: ")


def render(rows: list[tuple[Case, str]]) -> str:
    out = [
        "# What you see when an input is wrong",
        "",
        "Generated by `scripts/gen_errors_doc.py` from the cases in `tests/bad_inputs.py`; `tests/test_bad_input.py`",
        "runs every case through the real CLI and checks this page still matches. Every case exits with code 2",
        "and prints one line: where (file:line and key, or the judge, or the folder), what was wrong, and",
        "`Fix:` what to do. Cases marked *stored work* run on a study that already has results: nothing stored",
        "is lost or changed. A spending cap reached while judging exits with code 3 (`stopped:`), also keeping",
        "everything stored; Ctrl-C exits with 130.",
        "",
        "| case | input | what the user sees |",
        "| --- | --- | --- |",
    ]
    for case, line in rows:
        shown = line.replace("|", "\\\\|")
        note = " (stored work)" if case.on_stored_work else ""
        out.append(f"| `{case.id}` | {case.title}{note} | `{shown}` |")
    return "\n".join(out) + "\n"


def completed_study(folder: Path) -> Path:
    """Run the tiny study once; returns its output folder (the template for stored-work cases).
    For scripts/gen_errors_doc.py: under pytest, tests/test_bad_input.py uses the session's
    ``completed_tiny_study`` fixture instead of running the study again."""
    return run_tiny_study(folder).out


def garbage_server() -> object:
    from openai_server import FakeOpenAI

    srv = FakeOpenAI([])

    class Always(list):  # every request gets a malformed body
        def popleft(self) -> object:
            from openai_server import Scripted

            return Scripted(body="{not json")

        def __bool__(self) -> bool:
            return True

    srv.script = Always()  # type: ignore[assignment]
    return srv


__all__ = ["CASES", "Case", "completed_study", "garbage_server", "normalize", "render", "run_case", "time"]
