"""A study split into parts (`--runs`, `--output-dir`) and joined again (`traitwatch merge`).

The real case (slow): the tiny study run whole, and the same spec run as two jobs, one per
run, each into its own folder (one through the CLI, one through the Python API), merged: the
merged store holds exactly the whole study's rows, its checkpoints are copied into the merged
folder, and the later stages run on it. The merge's own rules (conflicts, repeats, a kill
mid-copy) are checked on parts cut from the shared completed tiny study: its store and run
folders, copied and reduced to one run each, as a job of a split study would hold them.
"""

from __future__ import annotations

import csv
import shutil
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import traitwatch as tw
from tiny import TinyStudy, folder_digest, write_study
from traitwatch.cli import app
from traitwatch.errors import ConfigError

runner = CliRunner()
RUNS = ("arith-normal-s0", "arith-strong-s0")
#: Columns that say when or where, not what: the merged study may differ from the whole here.
PLACE_AND_TIME = {"created_at", "acted_at", "elapsed_s", "path"}


def _cli(*args: object) -> str:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


def _tables(out: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows, sorted, without time and place columns; the spec without its folder."""
    tables: dict[str, list[tuple[Any, ...]]] = {}
    with closing(sqlite3.connect(f"{(out / 'study.sqlite').as_uri()}?mode=ro", uri=True)) as db:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for t in names:
            cols = [r[1] for r in db.execute(f"PRAGMA table_info({t})") if r[1] not in PLACE_AND_TIME]
            rows = db.execute(f"SELECT {', '.join(cols)} FROM {t}").fetchall()
            if t == "meta":
                rows = [(k, _placeless(v) if k == "spec" else v) for k, v in rows]
            tables[t] = sorted(rows, key=repr)
    return tables


def _placeless(text: str) -> str:
    spec = yaml.safe_load(text)
    spec.pop("output_dir")
    return yaml.safe_dump(spec)


def _csv(path: Path) -> list[dict[str, str]]:
    """An analysis CSV's rows without time and place columns."""
    with path.open(newline="") as fh:
        return [{k: v for k, v in row.items() if k not in PLACE_AND_TIME} for row in csv.DictReader(fh)]


def _checkpoint_paths(out: Path) -> list[Path]:
    with closing(sqlite3.connect(f"{(out / 'study.sqlite').as_uri()}?mode=ro", uri=True)) as db:
        return [Path(r[0]) for r in db.execute("SELECT path FROM checkpoints")]


def _part(study: TinyStudy, folder: Path, run_id: str) -> Path:
    """A copy of the completed study holding only ``run_id``: what a job with ``--runs run_id`` stores."""
    shutil.copytree(study.out, folder, ignore=shutil.ignore_patterns("analysis", "report", ".traitwatch.lock"))
    for other in set(RUNS) - {run_id}:
        shutil.rmtree(folder / "runs" / other)
    with closing(sqlite3.connect(folder / "study.sqlite")) as db, db:
        db.execute("DELETE FROM scores WHERE gen_key IN (SELECT gen_key FROM generations WHERE run_id != ?)", (run_id,))
        for table in ("generations", "checkpoints", "runs", "alarms"):
            db.execute(f"DELETE FROM {table} WHERE run_id != ?", (run_id,))
    return folder


@pytest.fixture
def parts(completed_tiny_study: TinyStudy, tmp_path: Path) -> tuple[Path, Path]:
    return _part(completed_tiny_study, tmp_path / "a", RUNS[0]), _part(completed_tiny_study, tmp_path / "b", RUNS[1])


@pytest.mark.slow  # about 45 s on 2 cores: the tiny study three times (whole, and as two jobs), merged, then analyzed
def test_a_study_run_as_two_jobs_and_merged_equals_the_study_run_whole(
    tmp_path: Path, tiny_study_dict: Callable[..., dict[str, Any]]
) -> None:
    # answers and judgments that do not depend on what else is in a batch: greedy, one at a time
    spec = tiny_study_dict(
        tmp_path / "whole",
        generation={"samples_per_question": 1, "temperature": 0.0, "max_new_tokens": 6, "batch_size": 1, "adapters_per_batch": 1},
    )
    spec["judges"][1]["batch_size"] = 1
    study = write_study(tmp_path / "tiny.yaml", spec)
    _cli("run", study)
    _cli("run", study, "--runs", "arith-normal-*", "--output-dir", tmp_path / "job0")
    job1 = tw.Study.load(study, runs=["*-strong-s0"], output_dir=tmp_path / "job1")
    assert job1.paths.out == (tmp_path / "job1").resolve()
    job1.run(stages=["train", "generate", "judge"])
    for job, run in ((tmp_path / "job0", RUNS[0]), (tmp_path / "job1", RUNS[1])):  # each job did its runs only
        assert sorted(p.name for p in (job / "runs").iterdir()) == [run]
        assert {r[0] for r in _tables(job)["runs"]} == {run}
        assert {r[1] for r in _tables(job)["generations"]} == {run}

    merged = tmp_path / "merged"
    output = _cli("merge", merged, tmp_path / "job0", tmp_path / "job1")
    assert "generations:" in output and f"--output-dir {merged.resolve()}" in output
    assert _tables(merged) == _tables(tmp_path / "whole")
    paths = _checkpoint_paths(merged)
    assert len(paths) == 8 and all(
        p.is_relative_to(merged.resolve() / "runs") and (p / "adapter_model.safetensors").is_file() for p in paths
    )

    _cli("run", study, "--output-dir", merged, "--stages", "analyze,report")
    assert (merged / "report" / "report.html").is_file()
    for table in sorted((tmp_path / "whole" / "analysis").glob("*.csv")):
        assert _csv(merged / "analysis" / table.name) == _csv(table), table.name
    assert tw.Study.open(merged).scores().equals(tw.Study.open(tmp_path / "whole").scores())


def test_merged_parts_hold_every_row_once_and_their_checkpoints(
    completed_tiny_study: TinyStudy, parts: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "merged"
    output = _cli("merge", out, *parts)
    assert _tables(out) == _tables(completed_tiny_study.out)
    assert "judgments: " in output and "already there" in output  # both parts hold the shared judgments
    paths = _checkpoint_paths(out)  # the parts were moved since they trained: found by their layout
    assert paths and all(p.is_relative_to(out.resolve() / "runs") and (p / "meta.json").is_file() for p in paths)
    assert sorted(p.name for p in (out / "runs").iterdir()) == list(RUNS)
    assert (out / "data").is_dir() and not (out / "analysis").exists()
    assert tw.Study.open(out).paths.out == out.resolve()


def _set(db_path: Path, sql: str, *args: object) -> None:
    with closing(sqlite3.connect(db_path)) as db, db:
        assert db.execute(sql, args).rowcount == 1


def test_a_conflicting_row_is_an_error_naming_it_and_writes_nothing(parts: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = parts
    twin = tmp_path / "twin"  # the same run, answered differently: not a part of the same study
    shutil.copytree(a, twin)
    with closing(sqlite3.connect(twin / "study.sqlite")) as db:
        gen_key = db.execute("SELECT gen_key FROM generations ORDER BY gen_key LIMIT 1").fetchone()[0]
    _set(twin / "study.sqlite", "UPDATE generations SET answer = answer || ' (changed)' WHERE gen_key = ?", gen_key)

    out = tmp_path / "new"
    res = runner.invoke(app, ["merge", str(out), str(a), str(b), str(twin)])
    assert res.exit_code == 2, res.output
    line = " ".join(res.output.split())
    assert "table generations" in line and gen_key in line and "in answer" in line, line
    assert str(a.resolve()) in line and str(twin.resolve()) in line and "nothing was written" in line, line
    assert not out.exists()

    merged = tmp_path / "merged"  # a merged study that exists already is left as it was
    _cli("merge", merged, a, b)
    before = folder_digest(merged)
    res = runner.invoke(app, ["merge", str(merged), str(twin)])
    assert res.exit_code == 2 and "table generations" in res.output
    assert folder_digest(merged) == before


def test_parts_of_other_generation_settings_are_an_error_naming_what_differs(parts: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = parts
    _set(b / "study.sqlite", "UPDATE meta SET value = 'other' WHERE key LIKE 'settings:%'")
    res = runner.invoke(app, ["merge", str(tmp_path / "out"), str(a), str(b)])
    line = " ".join(res.output.split())
    assert res.exit_code == 2 and "meta 'settings:" in line and "generation settings hash" in line and "other" in line, line
    assert not (tmp_path / "out").exists()


def test_judgments_that_differ_only_in_what_the_judge_said_keep_the_first(parts: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = parts
    with closing(sqlite3.connect(a / "study.sqlite")) as db:
        key, score = db.execute("SELECT judgment_key, score FROM judgments WHERE score IS NOT NULL ORDER BY judgment_key").fetchone()
    _set(b / "study.sqlite", "UPDATE judgments SET score = ?, raw = '{}' WHERE judgment_key = ?", score + 1, key)
    output = _cli("merge", tmp_path / "out", a, b)
    assert "note: 1 judgments were stored by two parts with different outputs" in " ".join(output.split())
    with closing(sqlite3.connect(tmp_path / "out" / "study.sqlite")) as db:
        assert db.execute("SELECT score FROM judgments WHERE judgment_key = ?", (key,)).fetchone()[0] == score


def test_merging_again_or_after_a_kill_changes_nothing(parts: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "merged"
    _cli("merge", out, *parts)
    first = folder_digest(out)
    again = _cli("merge", out, *parts)
    assert "generations: 0 new" in again and "files copied: 0" in again
    assert folder_digest(out) == first
    # killed while copying: some files not there yet, one half-written under its temporary name
    shutil.rmtree(_checkpoint_paths(out)[-1])
    meta = out / "runs" / RUNS[0] / "checkpoints" / "step_000000" / "meta.json"
    meta.with_name("meta.json.merge-tmp").write_bytes(meta.read_bytes()[:10])
    meta.unlink()
    _cli("merge", out, *parts)
    assert folder_digest(out) == first


def test_runs_that_match_no_run_are_an_error_naming_the_runs(completed_tiny_study: TinyStudy, tmp_path: Path) -> None:
    res = runner.invoke(
        app, ["run", str(completed_tiny_study.yaml), "--runs", "arith-*", "--runs", "medical-*", "--output-dir", str(tmp_path / "j")]
    )
    line = " ".join(res.output.split())
    assert res.exit_code == 2 and "--runs: 'medical-*' matches no run of the study" in line and ", ".join(RUNS) in line, line
    assert not (tmp_path / "j").exists()
    with pytest.raises(ConfigError, match="matches no run"):
        tw.Study.load(completed_tiny_study.yaml, runs=["nope"])
