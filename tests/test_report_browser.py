"""The report's interactive figure in headless Debian Chromium: no page errors, selectors redraw
it with the analysis' numbers, a screenshot of the overview.

The study is bench/report_scale.py's synthetic one at a small size (2 domains x 3 levels x 2
seeds = 12 runs, 16 checkpoints, 4 questions per trait, 2 samples, 2 judges): a real store, the
real analysis and the real report code. Chromium is driven over the DevTools protocol on a pipe
(bench/_chromium.py), so the tests read plotly's drawn data from the page (``el.data``) and the
page's console and exceptions.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from _chromium import Page, screenshot  # noqa: E402
from report_scale import SETTINGS, build_store, load_spec  # noqa: E402

from traitwatch.analysis import StudyAnalysis, analyze  # noqa: E402
from traitwatch.report import write_report  # noqa: E402
from traitwatch.store import Store  # noqa: E402

pytestmark = pytest.mark.browser

READY = "document.body !== null && document.body.getAttribute('data-usable-ms')"
TRACES = "document.getElementById('tw-fig').data.map(function (d) { return {name: d.name, x: d.x, y: d.y, meta: d.meta || null}; })"


class Built:
    def __init__(self, html: Path, analysis: StudyAnalysis) -> None:
        self.html = html
        self.analysis = analysis


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    folder = tmp_path_factory.mktemp("report-browser")
    spec = load_spec(folder, seeds=2, bootstrap=40)
    build_store(folder / "study.sqlite", spec, checkpoints=16, questions=4, samples=2, lead=4)
    with Store(folder / "study.sqlite", readonly=True) as store:
        analysis = analyze(store, spec, SETTINGS)
        judges = {j.name: {"kind": j.kind, "weak": j.weak, "model": j.label()} for j in spec.judges}
        html = write_report(folder / "report", spec, analysis, store, judges=judges)
    return Built(html, analysis)


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    with Page(tmp_path / "profile") as p:
        yield p


def _select(page: Page, name: str, value: str) -> list[dict[str, Any]]:
    """Set a selector as a reader would (value, then a change event); the traces drawn after."""
    page.evaluate(
        f"(function () {{ var s = document.getElementById('tw-{name}'); s.value = {json.dumps(value)};"
        " s.dispatchEvent(new Event('change')); })()"
    )
    return page.evaluate(TRACES)  # type: ignore[no-any-return]


def _lines(traces: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Named line traces (not CI bands, not onset markers) -> their y values."""
    return {t["name"]: t["y"] for t in traces if t["meta"] != "band" and len(t["y"]) > 1}


def test_loads_without_errors_and_draws(built: Built, page: Page) -> None:
    page.open(built.html.as_uri(), ready=READY)
    assert page.evaluate("document.getElementById('tw-fig').getAttribute('data-view')") == "run"
    assert page.evaluate("document.querySelectorAll('#tw-fig .main-svg').length") >= 1
    traces = page.evaluate(TRACES)
    assert traces and any(len(t["y"]) == 16 for t in traces), "the first run's curves are drawn"
    assert page.errors() == []


def test_a_page_error_is_seen(built: Built, page: Page, tmp_path: Path) -> None:
    """The error check can fail: the same report with its figure data cut short throws in the
    report's own script, and the exception reaches ``errors()``."""
    html = built.html.read_text()
    broken = tmp_path / "broken.html"
    broken.write_text(re.sub(r'(<script type="application/json" id="tw-data">)\{', r"\1{{", html, count=1))
    page.open(broken.as_uri(), ready="document.readyState === 'complete'")
    assert page.evaluate(READY) is None, "nothing drawn"
    assert any("JSON" in e or "SyntaxError" in e for e in page.errors()), page.errors()


def test_selectors_redraw_with_the_analysis_numbers(built: Built, page: Page) -> None:
    a = built.analysis
    runs = [r["run_id"] for r in a.runs]
    page.open(built.html.as_uri(), ready=READY)

    def curve_means(run_id: str, judge: str) -> dict[str, list[float]]:
        return {c.trait: np.round(c.curve.mean, 2).tolist() for c in a.curves if c.run_id == run_id and c.judge == judge}

    first = _lines(page.evaluate(TRACES))
    opened = runs[int(page.evaluate("document.getElementById('tw-run').value"))]
    assert opened == "math-mild-s0", "the first run outside the control condition with an onset"
    assert {k: v for k, v in first.items() if k != "held-out loss"} == curve_means(opened, "judge-a")
    strong = runs.index("medical-strong-s1")
    after = _lines(_select(page, "run", str(strong)))
    assert after != first
    assert {k: v for k, v in after.items() if k != "held-out loss"} == curve_means("medical-strong-s1", "judge-a")
    by_judge = _lines(_select(page, "judge", "judge-b"))
    assert {k: v for k, v in by_judge.items() if k != "held-out loss"} == curve_means("medical-strong-s1", "judge-b")
    # the consensus onset of each trait is a marker with its CI as a whisker
    onsets = {o.trait: o for o in a.onsets if o.run_id == "medical-strong-s1" and o.judge == "judge-b" and o.detector == "consensus"}
    markers = page.evaluate(
        "document.getElementById('tw-fig').data.filter(function (d) { return /onset \\(consensus\\)$/.test(d.name); })"
        ".map(function (d) { return {name: d.name, x: d.x[0], plus: d.error_x.array[0], minus: d.error_x.arrayminus[0]}; })"
    )
    assert {m["name"].split(" ")[0]: m["x"] for m in markers} == {t: o.step for t, o in onsets.items() if o.step is not None}
    for m in markers:
        o = onsets[m["name"].split(" ")[0]]
        if o.ci is not None:
            assert m["x"] - m["minus"] == pytest.approx(round(o.ci[0], 1)) and m["x"] + m["plus"] == pytest.approx(round(o.ci[1], 1))

    # levels overlaid: one line per level, each the mean of that level's seeds
    _select(page, "judge", "judge-a")
    _select(page, "domain", "medical")
    _select(page, "trait", "hallucination")
    levels = _lines(_select(page, "view", "levels"))
    assert set(levels) == {"normal (2 seeds)", "mild (2 seeds)", "strong (2 seeds)"}
    for lv in ("normal", "mild", "strong"):
        per_seed = [
            c.curve.mean for c in a.curves if c.run_id.startswith(f"medical-{lv}-") and c.judge == "judge-a" and c.trait == "hallucination"
        ]
        assert levels[f"{lv} (2 seeds)"] == pytest.approx(np.round(np.mean(per_seed, axis=0), 2).tolist(), abs=0.011)
    evil = _lines(_select(page, "trait", "evil"))
    assert evil != levels

    # seeds of one condition: each seed's curve and their mean
    _select(page, "level", "strong")
    seeds = _lines(_select(page, "view", "seeds"))
    assert set(seeds) == {"seed 0", "seed 1", "mean of 2 seeds"}
    by_seed = {c.run_id[-1]: c.curve.mean for c in a.curves if (c.run_id[:-1], c.judge, c.trait) == ("medical-strong-s", "judge-a", "evil")}
    assert seeds["seed 1"] == np.round(by_seed["1"], 2).tolist()
    assert seeds["mean of 2 seeds"] == pytest.approx(np.round((by_seed["0"] + by_seed["1"]) / 2, 2).tolist(), abs=0.011)

    # forest plot: one point per run with a defined consensus lead, one per run with a defined
    # peak-to-peak lead (its label ends "/ peak-to-peak"), plus one mean per condition
    forest = _select(page, "view", "forest")
    consensus = [x for x in a.leads if x.detector == "consensus" and x.judge == "judge-a"]
    defined = [x for x in consensus if x.lead_steps is not None]
    peaks = [x for x in consensus if x.peak_lead_steps is not None]
    means = [s for s in a.seed_leads if s["judge"] == "judge-a" and s["seeds"] > 1 and s["lead_steps_mean"] is not None]
    assert len(forest) == 1 and len(forest[0]["x"]) == len(defined) + len(peaks) + len(means)
    onset_x = [x for x, y in zip(forest[0]["x"], forest[0]["y"], strict=True) if not y.endswith("/ peak-to-peak")]
    peak_x = [x for x, y in zip(forest[0]["x"], forest[0]["y"], strict=True) if y.endswith("/ peak-to-peak")]
    assert sorted(onset_x) == pytest.approx(sorted([x.lead_steps for x in defined] + [round(s["lead_steps_mean"], 1) for s in means]))
    assert sorted(peak_x) == sorted(x.peak_lead_steps for x in peaks) and peaks
    assert page.errors() == []


def test_screenshot_of_the_overview(built: Built, tmp_path: Path) -> None:
    """The top of the report as Chromium draws it: the figure (a drawn plot, not an empty box)
    and the overview image below it. The PNG is kept in the test's folder for a person to look at."""
    from PIL import Image

    png = screenshot(built.html, tmp_path / "overview.png", tmp_path / "profile", height=1600)
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape[0] == 1600 and img.shape[1] == 1280
    fig_band = img[450:900]  # where the figure sits below the summary
    colors = {tuple(c) for c in fig_band.reshape(-1, 3)[::7].tolist()}
    assert len(colors) > 50, "the figure area is blank: plotly drew nothing"
    blue = np.all(np.abs(fig_band.astype(int) - (31, 119, 180)) < 40, axis=-1).sum()
    red = np.all(np.abs(fig_band.astype(int) - (214, 39, 40)) < 40, axis=-1).sum()
    assert blue > 100 and red > 100, "both traits' curves are drawn in their colours"
