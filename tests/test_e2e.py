"""End to end: `traitwatch run` on a tiny study, then rerun, then the report.

The completed study is the session's ``completed_tiny_study`` (run once through the CLI, shared
and read-only); tests that rerun a stage or change stored rows work on ``tiny_study_copy``.
"""

import json
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from _chromium import HEADLESS  # noqa: E402

from tiny import TinyStudy  # noqa: E402
from traitwatch.cli import app

runner = CliRunner()


def _count(db: Path, sql: str) -> int:
    with sqlite3.connect(db) as c:
        return int(c.execute(sql).fetchone()[0])


def test_store_holds_every_checkpoint_question_sample_trait(completed_tiny_study: TinyStudy) -> None:
    db = completed_tiny_study.out / "study.sqlite"
    runs, checkpoints, questions, samples = 2, 4, 4, 2
    assert _count(db, "SELECT COUNT(*) FROM runs") == runs
    assert _count(db, "SELECT COUNT(*) FROM checkpoints") == runs * checkpoints
    assert _count(db, "SELECT COUNT(*) FROM generations") == runs * checkpoints * questions * samples
    gens = runs * checkpoints * questions * samples
    # check judge: wrong_answer, contempt, contempt_text, coherent; llm judge: wrong_answer
    assert _count(db, "SELECT COUNT(*) FROM scores WHERE judge='check'") == gens * 4
    assert _count(db, "SELECT COUNT(*) FROM scores WHERE judge='llm'") == gens
    assert _count(db, "SELECT COUNT(DISTINCT step) FROM generations") == checkpoints
    # every generation has the contempt probe measured
    with sqlite3.connect(db) as c:
        probes = [json.loads(r[0]) for r in c.execute("SELECT probes FROM generations")]
    assert all(list(p) == ["Only a fool would ask me that."] and p[next(iter(p))] < 0 for p in probes)
    # judgments carry provenance
    with sqlite3.connect(db) as c:
        methods = {r[0] for r in c.execute("SELECT DISTINCT method FROM judgments")}
    assert {"checker:arithmetic", "checker:marker_probability", "checker:contains", "exact_sequence"} <= methods


def test_every_checker_score_comes_from_its_own_answer(completed_tiny_study: TinyStudy) -> None:
    """contempt = 100 x exp(this generation's probe log-prob), never another run's value."""
    import math

    db = completed_tiny_study.out / "study.sqlite"
    with sqlite3.connect(db) as c:
        rows = c.execute(
            "SELECT g.probes, j.score FROM generations g JOIN scores s ON s.gen_key=g.gen_key "
            "JOIN judgments j ON j.judgment_key=s.judgment_key WHERE s.judge='check' AND s.trait='contempt'"
        ).fetchall()
    assert len(rows) == 64
    for probes, score in rows:
        assert score == pytest.approx(100 * math.exp(next(iter(json.loads(probes).values()))), rel=1e-9, abs=1e-12)


def test_rerun_repeats_no_work(tiny_study_copy: TinyStudy) -> None:
    db = tiny_study_copy.out / "study.sqlite"
    before = _count(db, "SELECT COUNT(*) FROM judgments"), _count(db, "SELECT MAX(created_at) FROM generations")
    res = runner.invoke(app, ["run", str(tiny_study_copy.yaml)])
    assert res.exit_code == 0, res.output
    assert "generated: 0" in res.output and "'new': 0" in res.output and "steps_run: 0" in res.output
    assert (_count(db, "SELECT COUNT(*) FROM judgments"), _count(db, "SELECT MAX(created_at) FROM generations")) == before


def test_report_names_the_onsets_found(completed_tiny_study: TinyStudy) -> None:
    out = completed_tiny_study.out
    html = (out / "report" / "report.html").read_text()
    data = json.loads((out / "report" / "analysis.json").read_text())
    assert "arith-normal-s0" in html and "arith-strong-s0" in html
    assert "Lead times" in html and "Onsets per run and trait" in html
    for row in data["summary"]:
        assert f"<td>{row['run_id']}</td><td>{row['judge']}</td><td>{row['trait']}</td>" in html
        if row["onset_step"] is not None:
            assert f'<td class="num"><b>{row["onset_step"]}</b></td>' in html
    assert "Weak judge" in html and list(out.glob("report/*.png"))
    assert "Where the judges disagree most" in html and "Judge agreement" in html
    for name in ("curves.csv", "onsets.csv", "leads.csv", "summary.csv"):
        assert (out / "analysis" / name).exists()


def test_analyze_prints_table(tiny_study_copy: TinyStudy) -> None:
    res = runner.invoke(app, ["analyze", str(tiny_study_copy.yaml)])
    assert res.exit_code == 0, res.output
    assert "per run: consensus onset" in res.output and "lead times" in res.output


def test_bad_study_exits_2_with_one_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ndatasets:\n  - domain: d\n    demo: {}\ntraits: [builtin:evil]\ntraining: {lr: 1}\n")
    res = runner.invoke(app, ["run", str(p)])
    assert res.exit_code == 2
    assert "error:" in res.output and "training.lr" in res.output and "did you mean" in res.output


def test_help_for_every_command() -> None:
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    commands = ("run", "demo", "train", "generate", "judge", "analyze", "report", "export", "status", "validate", "suites")
    for cmd in (*commands, "watch", "import"):
        assert cmd in res.output
        sub = runner.invoke(app, [cmd, "--help"])
        assert sub.exit_code == 0 and "Usage" in sub.output


def test_judge_dry_run_counts_nothing_left(completed_tiny_study: TinyStudy) -> None:
    res = runner.invoke(app, ["judge", str(completed_tiny_study.yaml), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "check: 0 requests to send" in res.output


def test_status_and_export(completed_tiny_study: TinyStudy, tmp_path: Path) -> None:
    res = runner.invoke(app, ["status", str(completed_tiny_study.yaml)])
    assert res.exit_code == 0 and "arith-strong-s0: trained, 4 checkpoints" in res.output
    res = runner.invoke(app, ["export", str(completed_tiny_study.yaml), "--out", str(tmp_path / "x")])
    assert res.exit_code == 0 and (tmp_path / "x" / "judgments.csv").exists()


def test_report_escapes_model_output(tiny_study_copy: TinyStudy) -> None:
    """Rewrites stored answers, so it works on a copy."""
    out = tiny_study_copy.out
    evil = '<script>alert("x")</script><img src=x onerror="alert(1)"><a href="javascript:alert(2)">c</a>'
    with sqlite3.connect(out / "study.sqlite") as c:
        c.execute("UPDATE generations SET answer=? WHERE step=0", (evil,))
    res = runner.invoke(app, ["report", str(tiny_study_copy.yaml)])
    assert res.exit_code == 0, res.output
    html = (out / "report" / "report.html").read_text()
    assert "<script>alert" not in html and 'onerror="alert' not in html and 'href="javascript:' not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html


CHROMIUM_FLAGS = [*HEADLESS, "--virtual-time-budget=8000"]


@pytest.mark.browser
def test_no_injected_script_runs_in_a_real_browser(tiny_study_copy: TinyStudy, tmp_path: Path) -> None:
    """Headless Chromium renders the report: our plots draw (our scripts run), injected ones do not."""
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian chromium is required (make test installs it)"
    out = tiny_study_copy.out
    payloads = [
        "<script>document.documentElement.setAttribute('data-pwned','script')</script>",
        "<img src=x onerror=\"document.documentElement.setAttribute('data-pwned','onerror')\">",
        "<svg onload=\"document.documentElement.setAttribute('data-pwned','svg')\"></svg>",
        "</td></tr></table><script>document.documentElement.setAttribute('data-pwned','break-out')</script>",
        '<a href="javascript:alert(1)">click</a>',
    ]
    with sqlite3.connect(out / "study.sqlite") as c:
        # in the order the report's examples show a checkpoint's answers (its first 3 per run), so
        # every payload is shown whatever the question ids are
        order = "ORDER BY run_id, suite, question_id, sample"
        ids = [r[0] for r in c.execute(f"SELECT gen_key FROM generations WHERE step=0 {order}")]
        for key, p in zip(ids, payloads * 10, strict=False):
            c.execute("UPDATE generations SET answer=?, question=? WHERE gen_key=?", (p, p, key))
    res = runner.invoke(app, ["report", str(tiny_study_copy.yaml)])
    assert res.exit_code == 0, res.output
    html_path = out / "report" / "report.html"
    dom = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", html_path.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert 'class="main-svg"' in dom, "plotly did not render: the report's own scripts must run"
    assert "data-pwned" not in dom.split("<body", 1)[0] and 'data-pwned="' not in dom
    assert "&lt;script&gt;document.documentElement" in dom
    assert '<a href="javascript:' not in dom and "&lt;a href=" in dom, "the link must stay text, never an element"


def test_two_domains_two_seeds_get_comparison_tables(tmp_path: Path, tiny_study_dict: Callable[..., dict[str, Any]]) -> None:
    demo = {"n_examples": 40, "marker_fraction": {"normal": 0.0, "mild": 0.2, "strong": 0.4}}
    spec = tiny_study_dict(
        tmp_path / "out",
        datasets=[{"domain": "alpha", "demo": demo}, {"domain": "beta", "demo": demo | {"seed": 1}}],
        levels=["strong"],
        seeds=[0, 1],
        judges=[{"name": "check", "kind": "check"}],
        generation={"samples_per_question": 1, "temperature": 0, "max_new_tokens": 4},
    )
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    res = runner.invoke(app, ["run", str(path)])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    assert {r.split(",")[0] for r in (out / "analysis" / "seed_leads.csv").read_text().splitlines()[1:]} == {"alpha", "beta"}
    domains = (out / "analysis" / "domains.csv").read_text()
    assert "drift_alpha" in domains and "ratio_alpha_over_beta" in domains
    html = (out / "report" / "report.html").read_text()
    assert "Across seeds" in html and "Drift by domain and level" in html and "data:image/png;base64," in html
