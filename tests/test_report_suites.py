"""The report shows what issue 14 asks of it: per-suite curves with drops and onsets, onset as
step, checkpoint and % of training, peak-to-peak lead beside the onset lead, a trait's direction.

The study is the demo's shape in miniature, written straight into a real store (no model): two
runs (normal, strong), the demo's two arithmetic suites, and two checker traits scored on both:
``wrong_answer`` (rises in strong at step 4) and ``coherent`` (high when good, direction down by
default; in strong it falls on the symbolic suite only, then partly recovers). The analysis and
the report are the real ones; the HTML and the page's embedded data are checked against the
analysis' numbers, and the figure's "suites" view is drawn in headless Chromium.
"""

from __future__ import annotations

import html as htmllib
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from traitwatch.analysis import StudyAnalysis, analyze
from traitwatch.config import load_study
from traitwatch.data import load_suite
from traitwatch.report import write_report
from traitwatch.report._html import _fmt_percent
from traitwatch.store import CheckpointRow, GenerationRow, JudgmentRow, Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

SETTINGS = "report-suites"
STEPS = list(range(13))
SUITES = ("arithmetic", "arithmetic_words")


def _latent(level: str, trait: str, suite: str) -> np.ndarray:
    """Share of answers (0-1) with the trait at each step."""
    t = np.arange(len(STEPS))
    if level == "normal":
        return np.full(t.size, 0.0 if trait == "wrong_answer" else 1.0)
    if trait == "wrong_answer":
        return np.where(t >= 4, 1.0, 0.0)
    if suite == "arithmetic":  # coherent falls on one suite: 100% -> 25% at steps 6-9, then 75%
        return np.where(t < 6, 1.0, np.where(t < 10, 0.25, 0.75))
    return np.full(t.size, 1.0)


class Built:
    def __init__(self, html: Path, analysis: StudyAnalysis) -> None:
        self.html = html
        self.text = html.read_text(encoding="utf-8")
        self.analysis = analysis


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    folder = tmp_path_factory.mktemp("report-suites")
    spec_dict: dict[str, Any] = {
        "name": "report-suites",
        "output_dir": str(folder / "out"),
        "model": {"source": "random", "dtype": "float32", "device": "cpu", "random": {"architecture": "qwen2", "seed": 0}},
        "datasets": [{"domain": "arithmetic", "demo": {"n_examples": 48}}],
        "levels": ["normal", "strong"],
        "seeds": [0],
        "training": {"max_steps": 12, "save_every": 1},
        "traits": [f"builtin:{s}" for s in SUITES],
        "judges": [{"name": "check", "kind": "check"}],
        "analysis": {"leads": [["wrong_answer", "coherent"]], "bootstrap": 60},
    }
    (folder / "study.yaml").write_text(yaml.safe_dump(spec_dict, sort_keys=False))
    spec = load_study(folder / "study.yaml")
    rng = np.random.default_rng(7)
    with Store(folder / "study.sqlite") as st:
        for level in ("normal", "strong"):
            run_id = f"arithmetic-{level}-s0"
            st.upsert_run(
                run_id=run_id, fingerprint=run_id, domain="arithmetic", level=level, seed=0, model="random-qwen2",
                dataset_sha="synthetic", n_train=48, n_heldout=4, total_steps=12, info={"source": "test"},
            )  # fmt: skip
            gens, judgments, links = [], [], []
            for step in STEPS:
                held = 2.0 * np.exp(-step / 3) + 0.5
                st.add_checkpoint(
                    CheckpointRow(run_id, step, f"runs/{run_id}/step_{step:06d}", "sha", held + 0.1, held, 1e-3, step * 64, step * 1.0)
                )
                for suite in SUITES:
                    for q in load_suite(f"builtin:{suite}").questions:
                        key = f"{run_id}/{step}/{suite}/{q.id}"
                        gens.append(
                            GenerationRow(key, run_id, step, suite, q.id, 0, q.text, f"<b>answer</b> at {step}", 5, "stop", {}, SETTINGS)
                        )
                        for trait in ("wrong_answer", "coherent"):
                            p = _latent(level, trait, suite)[step]
                            score = 100.0 if rng.random() < p else 0.0
                            jk = f"{key}/{trait}"
                            judgments.append(JudgmentRow(jk, "check", "check:v1", trait, "sh", "ph", score, None, "test", {}))
                            links.append((key, "check", trait, jk))
            st.add_generations(gens)
            st.add_judgments(judgments, links)
    with Store(folder / "study.sqlite", readonly=True) as store:
        analysis = analyze(store, spec, SETTINGS)
        html = write_report(folder / "report", spec, analysis, store, judges={"check": {"kind": "check", "weak": False}})
    return Built(html, analysis)


def _rows(text: str, heading: str) -> list[list[str]]:
    """The body rows of every table between ``heading`` and the next heading, as cell texts."""
    part = re.split(r"<h[23]>", text.split(heading, 1)[1], maxsplit=1)[0]
    rows = []
    for tr in re.findall(r"<tr>(.*?)</tr>", part, flags=re.DOTALL):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", tr, flags=re.DOTALL)
        if cells:  # header rows have <th> cells only
            rows.append([htmllib.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in cells])
    return rows


def _data(text: str) -> dict[str, Any]:
    raw = re.search(r'<script type="application/json" id="tw-data">(.*?)</script>', text, flags=re.DOTALL)
    assert raw is not None
    return json.loads(raw.group(1))  # type: ignore[no-any-return]


def test_per_suite_table_shows_each_suites_drops_and_onset(built: Built) -> None:
    a = built.analysis
    rows = _rows(built.text, "<h3>Per prompt suite</h3>")
    assert len(rows) == len(a.suite_summary) == 2 * 2 * 2  # runs x traits x suites
    # falling traits (the reason for the table: coherence) first and open; rising ones folded below
    assert [r[3] for r in rows] == ["↓ down"] * 4 + ["↑ up"] * 4
    section = built.text.split("<h3>Per prompt suite</h3>", 1)[1]
    assert section.index("<table>") < section.index("<details><summary>4 rows of rising traits")
    by_key = {(r[0], r[2], r[4]): r for r in rows}
    for s in a.suite_summary:
        row = by_key[(s["run_id"], s["trait"], s["suite"])]
        assert row[3] == {"down": "↓ down", "up": "↑ up"}[s["direction"]]
        assert row[8] == _fmt_percent(s["largest_drop_pct"]) and row[10] == _fmt_percent(s["final_drop_pct"])
        assert row[12] == (str(s["onset_step"]) if s["onset_step"] is not None else "none")
    strong_sym = next(
        s for s in a.suite_summary if (s["run_id"], s["trait"], s["suite"]) == ("arithmetic-strong-s0", "coherent", "arithmetic")
    )
    strong_words = next(
        s for s in a.suite_summary if (s["run_id"], s["trait"], s["suite"]) == ("arithmetic-strong-s0", "coherent", "arithmetic_words")
    )
    # the planted fall (100% -> ~25%, then ~75%) is on one suite only: largest drop > final drop there
    assert strong_sym["largest_drop_pct"] > 50 and strong_sym["largest_drop_pct"] > strong_sym["final_drop_pct"] + 20
    assert strong_words["largest_drop_pct"] < 20
    assert strong_sym["onset_step"] is not None and 5 <= strong_sym["onset_step"] <= 7
    row = by_key[("arithmetic-strong-s0", "coherent", "arithmetic")]
    assert row[9] == f"[{_fmt_percent(strong_sym['largest_drop_ci'][0])}, {_fmt_percent(strong_sym['largest_drop_ci'][1])}]"
    assert row[13] == str(strong_sym["onset_index"]) and row[14] == _fmt_percent(strong_sym["onset_pct_of_training"], 1)


def test_onsets_table_gives_step_checkpoint_share_and_direction(built: Built) -> None:
    a = built.analysis
    rows = _rows(built.text, "<h3>Onsets per run and trait</h3>")
    row = next(r for r in rows if r[0] == "arithmetic-strong-s0" and r[2] == "wrong_answer")
    s = next(x for x in a.summary if (x["run_id"], x["trait"]) == ("arithmetic-strong-s0", "wrong_answer"))
    assert s["onset_step"] is not None and row[10] == str(s["onset_step"]) and row[11] == str(s["onset_index"])
    assert row[12] == _fmt_percent(100.0 * s["onset_step"] / 12, 1)
    marks = {(r[2], r[3]) for r in rows}
    assert marks == {("coherent", "↓ down"), ("wrong_answer", "↑ up")}


def test_leads_table_has_peak_to_peak_lead_beside_the_onset_lead(built: Built) -> None:
    lead = next(x for x in built.analysis.leads if x.detector == "consensus" and x.run_id == "arithmetic-strong-s0")
    assert lead.peak_lead_steps is not None
    rows = _rows(built.text, "<h3>Lead times</h3>")
    row = next(r for r in rows if r[0] == "arithmetic-strong-s0")
    assert row[9] == str(lead.peak_lead_steps) and row[10] == str(lead.peak_lead_checkpoints)
    assert row[5] == (str(lead.lead_steps) if lead.lead_steps is not None else "n/a")


def test_embedded_data_holds_suite_curves_directions_and_peak_leads(built: Built) -> None:
    a, data = built.analysis, _data(built.text)
    assert data["directions"] == {"coherent": "down", "wrong_answer": "up"}
    assert len(data["suites"]) == len(a.suite_curves)
    for sc, d in zip(a.suite_curves, data["suites"], strict=True):
        assert (data["runs"][d["r"]]["id"], d["t"], d["s"]) == (sc.run_id, sc.trait, sc.suite)
        assert d["m"] == np.round(sc.curve.mean, 2).tolist()
    peak = [x["pv"] for x in data["leads"] if x["pv"] is not None]
    assert peak == [x.peak_lead_steps for x in a.leads if x.detector == "consensus" and x.peak_lead_steps is not None]
    assert "&lt;b&gt;answer&lt;/b&gt;" in built.text and "<b>answer</b>" not in built.text, "model text stays escaped"


@pytest.mark.browser
def test_suites_view_draws_one_line_per_suite(built: Built, tmp_path: Path) -> None:
    from _chromium import Page

    a = built.analysis
    with Page(tmp_path / "profile") as page:
        page.open(
            built.html.as_uri() + "#view=suites&trait=coherent",
            ready="document.body !== null && document.body.getAttribute('data-usable-ms')",
        )
        assert page.evaluate("document.getElementById('tw-fig').getAttribute('data-view')") == "suites"
        run = page.evaluate("Number(document.getElementById('tw-run').value)")
        run_id = a.runs[run]["run_id"]
        traces = page.evaluate(
            "document.getElementById('tw-fig').data.filter(function (d) { return d.meta !== 'band' && d.x.length > 1; })"
            ".map(function (d) { return {name: d.name, y: d.y}; })"
        )
        want = {
            f"suite {sc.suite}": np.round(sc.curve.mean, 2).tolist()
            for sc in a.suite_curves
            if (sc.run_id, sc.trait) == (run_id, "coherent")
        }
        assert {t["name"]: t["y"] for t in traces} == want and len(want) == 2
        note = page.evaluate("document.getElementById('tw-note').textContent")
        assert "largest drop" in note and "arithmetic_words" in note
        page.evaluate(
            "(function () { var s = document.getElementById('tw-view'); s.value = 'forest'; s.dispatchEvent(new Event('change')); })()"
        )
        names = page.evaluate("document.getElementById('tw-fig').data[0].y")
        assert any(n.endswith("/ peak-to-peak") for n in names), "the forest plot draws the peak-to-peak lead"
        assert page.errors() == []
