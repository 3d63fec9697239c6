"""The report's hardening: a hash-only script CSP, the weak-judge banner, judge coverage, counts in SQL.

The browser tests render the report in headless Debian Chromium (``make test`` installs it) with
the flags of tests/test_e2e.py, and read both the rendered DOM and Chromium's console log (where
a Content-Security-Policy violation is reported).
"""

from __future__ import annotations

import base64
import hashlib
import html as html_lib
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_e2e import CHROMIUM_FLAGS
from tiny import TinyStudy
from traitwatch.cli import app

runner = CliRunner()

SCRIPT_RE = re.compile(r"<script>(.*?)</script>", re.DOTALL)
CSP_RE = re.compile(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">')
TITLE = "<title>traitwatch report: tiny</title>"

#: Stored answers (and questions) crafted to break out of their element in every way we know.
PAYLOADS = [
    "</script><script>document.title='pwned'</script>",
    "<script>window.pwned=1;document.title='pwned'</script>",
    "<img src=x onerror=\"document.title='pwned'\">",
    "<svg onload=\"document.title='pwned'\"></svg>",
    "</td></tr></table></details><script>document.title='pwned'</script>",
    "<a href=\"javascript:document.title='pwned'\">click</a>",
    '"><iframe src="javascript:parent.document.title=\'pwned\'"></iframe>',
    "</textarea></style></title><script>document.title='pwned'</script>",
]


def _csp(html: str) -> dict[str, list[str]]:
    m = CSP_RE.search(html)
    assert m, "the report has no Content-Security-Policy"
    policy = html_lib.unescape(m.group(1))  # autoescaped like every value: ' is &#39;
    return {d.split()[0]: d.split()[1:] for d in (x.strip() for x in policy.split(";")) if d}


def _sha(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def _chromium(html_path: Path, profile: Path) -> tuple[str, str]:
    """(rendered DOM, console log) of the page in headless Chromium."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian chromium is required (make test installs it)"
    res = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}", "--dump-dom", html_path.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return res.stdout, res.stderr


def _csp_violations(log: str) -> list[str]:
    return [line for line in log.splitlines() if "Content Security Policy" in line]


def _inject(out: Path, payloads: list[str]) -> None:
    with sqlite3.connect(out / "study.sqlite") as c:
        keys = [r[0] for r in c.execute("SELECT gen_key FROM generations ORDER BY step, gen_key")]
        for key, p in zip(keys, payloads * (len(keys) // len(payloads) + 1), strict=False):
            c.execute("UPDATE generations SET answer=?, question=? WHERE gen_key=?", (p, p, key))


# -- the policy as written -------------------------------------------------------------------


def test_csp_allows_exactly_the_reports_own_scripts(completed_tiny_study: TinyStudy) -> None:
    html = (completed_tiny_study.out / "report" / "report.html").read_text()
    csp = _csp(html)
    assert csp["default-src"] == ["'none'"]
    scripts = SCRIPT_RE.findall(html)
    assert len(scripts) == 2, "plotly.js and the figure script run, nothing else"
    assert html.count("<script") == 3 and html.count('<script type="application/json" id="tw-data">') == 1, "plus the data, never run"
    assert sorted(csp["script-src"]) == sorted(_sha(s) for s in scripts)
    assert all(s.startswith("'sha256-") for s in csp["script-src"]), "no 'unsafe-inline', no 'unsafe-eval', no host"
    assert csp["base-uri"] == ["'none'"] and csp["form-action"] == ["'none'"]
    assert csp["img-src"] == ["data:"] and csp["font-src"] == ["data:"]


# -- in a real browser -----------------------------------------------------------------------


@pytest.mark.browser
def test_crafted_answers_run_nothing_and_own_scripts_run(tiny_study_copy: TinyStudy, tmp_path: Path) -> None:
    """Every stored answer and question is a break-out attempt: the title stays, plotly draws,
    and Chromium reports no CSP violation at all (none of ours, and nothing injected got as far
    as being an element the policy had to refuse)."""
    out = tiny_study_copy.out
    _inject(out, PAYLOADS)
    res = runner.invoke(app, ["report", str(tiny_study_copy.yaml)])
    assert res.exit_code == 0, res.output
    html_path = out / "report" / "report.html"
    dom, log = _chromium(html_path, tmp_path / "profile")
    assert TITLE in dom, "a payload changed the page title"
    assert 'class="main-svg"' in dom, "plotly did not render: the report's own scripts must run"
    assert dom.count("<script") == 3 and "<iframe" not in dom and '<img src="x"' not in dom and "<svg onload" not in dom
    assert '<a href="javascript:' not in dom and '&lt;a href="javascript:' in dom
    assert "&lt;/script&gt;&lt;script&gt;document.title=" in dom, "the payload is shown as text"
    assert not _csp_violations(log), _csp_violations(log)


@pytest.mark.browser
def test_csp_stops_markup_that_escaped_by_mistake(completed_tiny_study: TinyStudy, tmp_path: Path) -> None:
    """Defence in depth: model text pasted into the report unescaped (as an escaping mistake
    would) is refused by the policy, while the report's own scripts still run."""
    html = (completed_tiny_study.out / "report" / "report.html").read_text()
    raw = (
        "<script>document.title='pwned'</script>"
        "<img src=x onerror=\"document.title='pwned'\">"
        "<svg><animate onbegin=\"document.title='pwned'\" attributeName=x dur=1s /></svg>"
        "<iframe src=\"javascript:parent.document.title='pwned'\"></iframe>"
    )
    assert "<h2>Example answers</h2>" in html
    broken = tmp_path / "broken.html"
    broken.write_text(html.replace("<h2>Example answers</h2>", "<h2>Example answers</h2>" + raw, 1))
    dom, log = _chromium(broken, tmp_path / "profile")
    assert TITLE in dom, "the policy let injected markup run"
    assert 'class="main-svg"' in dom, "plotly did not render: the report's own scripts must run"
    refused = _csp_violations(log)
    for what in ("Executing inline script", "Executing inline event handler", "Running the JavaScript URL"):
        assert any(what in line for line in refused), f"Chromium should report refusing: {what}"


# -- the weak-judge banner -------------------------------------------------------------------


def test_weak_judge_banner_names_the_base_model(completed_tiny_study: TinyStudy) -> None:
    html = (completed_tiny_study.out / "report" / "report.html").read_text()
    banner = re.search(r'<div class="banner"><b>Weak judge:</b> (.*?) is marked weak', html)
    assert banner, "the tiny study's llm judge is weak"
    assert banner.group(1) == "llm (random-qwen2-h64, the study&#39;s base model)", banner.group(1)
    assert "(None)" not in html and ">None<" not in html


def test_weak_judge_banner_without_a_model_from_the_caller(tiny_study_copy: TinyStudy, tmp_path: Path) -> None:
    """A caller that gives no model for a judge (as the report's callers once did) still gets
    the judge's model from the spec, never None."""
    from traitwatch.config import load_study
    from traitwatch.pipeline import StudyContext
    from traitwatch.pipeline import analyze as analyze_stage
    from traitwatch.report import write_report
    from traitwatch.report._html import _judge_model

    ctx = StudyContext(load_study(tiny_study_copy.yaml))
    with ctx.open_store() as store:
        analysis, _ = analyze_stage(ctx, store)
        judges = {"check": {"kind": "check"}, "llm": {"kind": "local", "weak": True}, "gone": {"kind": "openai", "weak": True}}
        html = write_report(tmp_path / "r", ctx.spec, analysis, store, judges=judges).read_text()
    assert "llm (random-qwen2-h64, the study&#39;s base model) is marked weak" in html
    assert "gone (openai) is marked weak" in html, "a judge the spec does not know falls back to its kind"
    assert "(None)" not in html and "<td>None</td>" not in html
    assert _judge_model(ctx.spec, "check", {}, "x") == "reference checkers"


def test_weak_api_judge_shows_its_model(tmp_path: Path) -> None:
    import yaml

    from tiny import tiny_study_dict, write_study
    from traitwatch.config import load_study
    from traitwatch.report._html import _judge_model

    spec = tiny_study_dict(tmp_path / "out")
    spec["judges"].append({"name": "api", "kind": "openai", "model": "gpt-4.1-mini", "weak": True})
    loaded = load_study(write_study(tmp_path / "s.yaml", yaml.safe_load(yaml.safe_dump(spec))))
    assert _judge_model(loaded, "api", {"model": None}, "base") == "gpt-4.1-mini"


# -- judge coverage and counts ---------------------------------------------------------------


def test_judge_coverage_per_checkpoint(tiny_study_copy: TinyStudy) -> None:
    """The llm judge's scores at step 2 become None: the report's coverage table says so, per
    checkpoint, with the counts; other checkpoints and the checker stay at 0%."""
    from traitwatch.store import Store

    out = tiny_study_copy.out
    db = out / "study.sqlite"
    with sqlite3.connect(db) as c:
        c.execute(
            "UPDATE judgments SET score=NULL WHERE judge='llm' AND judgment_key IN"
            " (SELECT s.judgment_key FROM scores s JOIN generations g ON g.gen_key=s.gen_key WHERE g.step=2 AND s.judge='llm')"
        )
        rows = c.execute(
            "SELECT g.run_id, g.step, s.judge, j.score FROM generations g JOIN scores s ON s.gen_key=g.gen_key"
            " JOIN judgments j ON j.judgment_key=s.judgment_key"
        ).fetchall()
    expected: dict[tuple[str, int, str], list[int]] = {}
    for run_id, step, judge, score in rows:
        e = expected.setdefault((run_id, step, judge), [0, 0])
        e[0] += score is None
        e[1] += 1
    assert any(u for u, _ in expected.values()), "the update must leave some answers unscored"
    with Store(db, readonly=True) as store:
        (settings_hash,) = {r[0] for r in store.conn.execute("SELECT settings_hash FROM generations")}
        got = {(r["run_id"], r["step"], r["judge"]): [r["unscored"], r["links"]] for r in store.score_coverage(settings_hash=settings_hash)}
    assert got == expected

    res = runner.invoke(app, ["report", str(tiny_study_copy.yaml)])
    assert res.exit_code == 0, res.output
    html = (out / "report" / "report.html").read_text()
    assert "<h2>Judge coverage</h2>" in html
    table = html.split('<table class="coverage">', 1)[1].split("</table>", 1)[0]
    for (run_id, step, judge), (u, n) in expected.items():
        row = re.search(rf"<tr><td>{re.escape(run_id)}</td><td class=\"num\">{step}</td>.*?</tr>", table, re.DOTALL)
        assert row, (run_id, step)
        assert f"{100 * u / n:.0f}% ({u}/{n})" in row.group(0), (run_id, step, judge, row.group(0))
        if step == 2 and judge == "llm":
            assert u == n
    assert "<td>llm</td><td>arith-strong-s0</td>" in html


def test_summary_counts_answers_without_reading_them(completed_tiny_study: TinyStudy) -> None:
    html = (completed_tiny_study.out / "report" / "report.html").read_text()
    assert "2 run(s), 8 checkpoints, 64 answers," in html
    examples = html.split("<h2>Example answers</h2>", 1)[1].split("<h2>", 1)[0]
    assert "check/wrong_answer:" in examples and "llm/wrong_answer:" in examples, "example answers keep their scores"
