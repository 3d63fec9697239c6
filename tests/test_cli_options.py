"""The command line's common surface: --version, --quiet / --verbose, --json on status and
analyze (parsed, and every key defined in docs/cli.md), OPENAI_BASE_URL for the openai judge,
the warning for a spending cap that cannot see an unpriced judge, and `judge --dry-run` before
anything is generated (an estimate from the plan)."""

from __future__ import annotations

import csv
import json
import re
import sqlite3
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter
from typer.testing import CliRunner

import traitwatch
from openai_server import FakeOpenAI
from tiny import TinyStudy, write_study
from traitwatch.cli import app
from traitwatch.config import JudgeSpec, load_study
from traitwatch.judges import Budget, build_judge
from traitwatch.pipeline import StudyContext
from traitwatch.pipeline._estimate import count_work
from traitwatch.pipeline._judge import unpriced_judges
from traitwatch.progress import NORMAL, set_verbosity

ROOT = Path(__file__).resolve().parents[1]
CLI_DOC = (ROOT / "docs" / "cli.md").read_text()
runner = CliRunner()

#: An API judge of the wrong_answer trait; no base_url (so OPENAI_BASE_URL applies), no key.
API = {"name": "api", "kind": "openai", "model": "judge-test", "traits": ["wrong_answer"], "api_key_env": None, "max_retries": 0}
PRICES = {"price_input_per_mtok": 2.0, "price_output_per_mtok": 8.0}
TOP = [("80", -0.7), ("90", -1.2)]


@pytest.fixture(autouse=True)
def _normal_verbosity() -> Iterator[None]:
    """The CLI sets a process-wide verbosity; put the default back for the tests after this one."""
    yield
    set_verbosity(NORMAL)


def _documented(keys: Any, where: str) -> None:
    missing = [k for k in keys if f"`{k}`" not in CLI_DOC]
    assert not missing, f"docs/cli.md does not define {where} keys {missing}"


def _with(study: TinyStudy, **overrides: Any) -> TinyStudy:
    spec = yaml.safe_load(study.yaml.read_text())
    spec.update(overrides)
    write_study(study.yaml, spec)
    return study


# -- --version, help, --quiet / --verbose ---------------------------------------------------------
def test_version_is_the_package_version_on_stdout() -> None:
    res = subprocess.run([sys.executable, "-m", "traitwatch.cli", "--version"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"traitwatch {traitwatch.__version__}\n"
    pyproject = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert pyproject is not None and pyproject.group(1) == traitwatch.__version__


def test_every_command_has_help_and_the_global_options_are_listed() -> None:
    for cmd in app.registered_commands:
        text = cmd.help or (cmd.callback.__doc__ if cmd.callback else None)
        assert text and text.strip(), f"command {cmd.name or cmd.callback} has no help text"
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for option in ("--version", "--quiet", "--verbose"):
        assert option in res.output
    for cmd in ("status", "analyze"):
        assert "--json" in runner.invoke(app, [cmd, "--help"]).output
    assert "plan" in runner.invoke(app, ["judge", "--help"]).output  # --dry-run estimates from the plan


def test_quiet_and_verbose_together_are_refused() -> None:
    res = runner.invoke(app, ["--quiet", "--verbose", "suites"])
    assert res.exit_code == 2 and "--quiet / --verbose" in res.output


def _library_warning_shown() -> bool:
    """Whether a warning raised inside a library (transformers) passes the filters set now."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit("deprecated thing", FutureWarning, "modeling_utils.py", 1, module="transformers.modeling_utils", registry={})
    return bool(caught)


def _own_warning_shown() -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit("ours", UserWarning, "x.py", 1, module="traitwatch.pipeline._judge", registry={})
    return bool(caught)


def test_library_warnings_are_hidden_unless_verbose() -> None:
    assert runner.invoke(app, ["suites"]).exit_code == 0
    assert not _library_warning_shown() and _own_warning_shown()
    assert runner.invoke(app, ["--quiet", "suites"]).exit_code == 0
    assert not _library_warning_shown()
    assert runner.invoke(app, ["--verbose", "suites"]).exit_code == 0
    assert _library_warning_shown() and _own_warning_shown()


def test_quiet_keeps_the_results_and_drops_progress_and_notes(tiny_study_copy: TinyStudy) -> None:
    """Judging a finished study: the model loads (a note), each judge's stage prints its
    progress lines, and the result line follows; --quiet keeps only the result line."""
    normal = runner.invoke(app, ["judge", str(tiny_study_copy.yaml)])
    assert normal.exit_code == 0, normal.output
    assert "loading model" in normal.output and "judge check: 0 to do" in normal.output
    quiet = runner.invoke(app, ["--quiet", "judge", str(tiny_study_copy.yaml)])
    assert quiet.exit_code == 0, quiet.output
    assert "loading model" not in quiet.output and "to do" not in quiet.output and "done (" not in quiet.output
    result = [line for line in normal.output.splitlines() if line.startswith("judge ") and "already" in line]
    assert result and [line.split("  ", 1)[1] for line in result] == [
        line.split("  ", 1)[1] for line in quiet.output.splitlines() if line.startswith("judge ")
    ]


# -- --json -----------------------------------------------------------------------------------------
def test_status_json_parses_on_stdout_of_the_real_command(completed_tiny_study: TinyStudy) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "traitwatch.cli", "status", str(completed_tiny_study.yaml), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)  # nothing else on stdout
    with closing(sqlite3.connect(completed_tiny_study.out / "study.sqlite")) as db:
        answers = db.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
        judgments = dict(db.execute("SELECT judge, COUNT(*) FROM judgments GROUP BY judge").fetchall())
    assert data["study"] == "tiny" and Path(data["output_dir"]).resolve() == completed_tiny_study.out.resolve()
    assert data["answers"] == answers == 64 and data["spent_usd"] == 0.0 and data["max_usd"] is None
    runs = {r["run_id"]: r for r in data["runs"]}
    assert set(runs) == {"arith-normal-s0", "arith-strong-s0"}
    r = runs["arith-strong-s0"]
    assert (r["status"], r["source"], r["checkpoints"], r["last_step"], r["total_steps"]) == ("trained", "study", 4, 6, 6)
    assert (r["domain"], r["level"], r["seed"]) == ("arith", "strong", 0)
    assert {j["name"]: j["judgments"] for j in data["judges"]} == judgments
    _documented(data, "status")
    _documented(r, "status run")
    _documented(data["judges"][0], "status judge")
    text = runner.invoke(app, ["status", str(completed_tiny_study.yaml)])
    assert "arith-strong-s0: trained, 4 checkpoints (last step 6 of 6)" in text.output and "answers stored: 64" in text.output


def test_analyze_json_has_the_printed_tables(tiny_study_copy: TinyStudy) -> None:
    res = runner.invoke(app, ["analyze", str(tiny_study_copy.yaml), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert set(data) == {"study", "analysis_dir", "summary", "suite_summary", "leads", "seed_leads", "order_tests", "domains", "axes"}
    _documented(data, "analyze")
    folder = Path(data["analysis_dir"])
    with (folder / "summary.csv").open() as fh:
        summary_csv = list(csv.DictReader(fh))
    assert len(data["summary"]) == len(summary_csv) > 0
    assert {(s["run_id"], s["judge"], s["trait"]) for s in data["summary"]} == {(s["run_id"], s["judge"], s["trait"]) for s in summary_csv}
    _documented(data["summary"][0], "analyze summary")
    leads = data["leads"]
    assert {lead["detector"] for lead in leads} >= {"consensus", "cusum"}
    assert all((lead["leader"], lead["follower"]) == ("wrong_answer", "contempt") for lead in leads)
    _documented(leads[0], "analyze leads")
    for table in ("seed_leads", "order_tests"):
        for row in data[table]:
            _documented(row, f"analyze {table}")
    for row in data["domains"]:
        _documented([k for k in row if not k.startswith(("drift_", "ratio_"))], "analyze domains")
    assert "`drift_DOMAIN`" in CLI_DOC and "`ratio_A_over_B`" in CLI_DOC
    assert "per run: consensus onset" not in res.output  # the tables are not printed with --json


# -- OPENAI_BASE_URL ------------------------------------------------------------------------------
def _built_url(spec: dict[str, Any]) -> str:
    judge = build_judge(TypeAdapter(JudgeSpec).validate_python(spec), base=lambda: None, budget=Budget(None))
    return str(judge.base_url)


def test_the_spec_base_url_wins_over_openai_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert _built_url(API) == "https://api.openai.com/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1/")
    assert _built_url(API) == "http://127.0.0.1:8000/v1"
    assert _built_url({**API, "base_url": "http://127.0.0.1:9/v1"}) == "http://127.0.0.1:9/v1"


def test_judge_sends_to_openai_base_url(tiny_study_copy: TinyStudy, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = yaml.safe_load(tiny_study_copy.yaml.read_text())
    _with(tiny_study_copy, judges=[*spec["judges"], {**API, **PRICES}])
    with FakeOpenAI(TOP) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        res = runner.invoke(app, ["judge", str(tiny_study_copy.yaml), "--judge", "api"])
        assert res.exit_code == 0, res.output
        assert len(srv.requests) > 0 and all(r["model"] == "judge-test" for r in srv.requests)
    with closing(sqlite3.connect(tiny_study_copy.out / "study.sqlite")) as db:
        identities = {row[0] for row in db.execute("SELECT DISTINCT judge_identity FROM judgments WHERE judge='api'")}
    assert identities == {f"openai:{srv.base_url}:judge-test:0-100:top20-v1:digits-fallback"}
    assert "warning" not in res.output  # priced: the cap sees it


# -- the budget cap and an unpriced API judge ------------------------------------------------------
def test_a_cap_with_an_unpriced_api_judge_warns_once_before_judging(tiny_study_copy: TinyStudy) -> None:
    spec = yaml.safe_load(tiny_study_copy.yaml.read_text())
    with FakeOpenAI(TOP) as srv:
        _with(tiny_study_copy, judges=[*spec["judges"], {**API, "base_url": srv.base_url}], budget={"max_usd": 1.0})
        res = runner.invoke(app, ["judge", str(tiny_study_copy.yaml), "--judge", "api"])
        assert res.exit_code == 0, res.output
        assert srv.requests
    out = res.output
    assert out.count("warning:") == 1 and "judge api (judge-test) has no prices" in out and "budget.max_usd ($1)" in out
    assert out.index("warning:") < out.index("judge api: ")  # before the stage starts
    dry = runner.invoke(app, ["judge", str(tiny_study_copy.yaml), "--dry-run"])
    assert dry.exit_code == 0 and dry.output.count("warning:") == 1


def test_which_judges_the_cap_cannot_see(tmp_path: Path, tiny_study_dict: Callable[..., dict[str, Any]]) -> None:
    def lines(judge: dict[str, Any], budget: dict[str, Any]) -> list[str]:
        path = write_study(
            tmp_path / "s.yaml", tiny_study_dict(tmp_path / "out", judges=[{"name": "check", "kind": "check"}, judge], budget=budget)
        )
        return unpriced_judges(load_study(path))

    assert len(lines(API, {"max_usd": 5})) == 1
    assert lines(API, {}) == []  # no cap: nothing to warn about
    assert lines({**API, **PRICES}, {"max_usd": 5}) == []
    assert lines({**API, "price_input_per_mtok": 0, "price_output_per_mtok": 0}, {"max_usd": 5}) == []  # a free server, said so
    assert lines({**API, "price_output_per_mtok": 1.0}, {"max_usd": 5}) == []


# -- judge --dry-run before anything is generated -------------------------------------------------
def test_dry_run_estimates_from_the_plan_before_anything_runs(tmp_path: Path, tiny_study_dict: Callable[..., dict[str, Any]]) -> None:
    base = tiny_study_dict(tmp_path / "fresh")
    path = write_study(tmp_path / "fresh.yaml", {**base, "judges": [*base["judges"], {**API, **PRICES}], "budget": {"max_usd": 0.001}})
    res = runner.invoke(app, ["judge", str(path), "--dry-run"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "an estimate from the plan" in out and "no answers stored yet" in out
    assert "loading model" not in out and "warning" not in out
    assert not (tmp_path / "fresh" / "study.sqlite").exists()
    work = {j.name: j for j in count_work(StudyContext(load_study(path)), None).judges}
    for name in ("check", "llm", "api"):
        j = work[name]
        assert f"  {name} ({j.kind}): {j.judgments:,} judgments, 0 stored, {j.left:,} left" in out
    api = work["api"]
    assert api.judgments == 64 and api.cost_usd is not None and f"estimated ${api.cost_usd:.4f}" in out
    assert "passes budget.max_usd ($0.0010)" in out
    only = runner.invoke(app, ["judge", str(path), "--dry-run", "--judge", "api"])
    assert only.exit_code == 0 and "  api (openai)" in only.output and "  check (check)" not in only.output
    bad = runner.invoke(app, ["judge", str(path), "--dry-run", "--judge", "nope"])
    assert bad.exit_code == 2 and "--judge" in bad.output and "api" in bad.output
