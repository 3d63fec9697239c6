"""Peaks, drops (largest and final) and peak-to-peak leads with CIs; per-suite curves; % of training."""

import csv
import json

import numpy as np
import pytest

from traitwatch.analysis import analyze, write_csvs
from traitwatch.analysis._peaks import drops_pct, largest_drop, peak_index
from traitwatch.analysis._samples import arrange
from traitwatch.analysis._suite_curves import split_by_suite
from traitwatch.config import StudySpec
from traitwatch.store import ScoreRow, Store

STEPS = np.arange(0, 42, 2)  # 21 checkpoints, 40 steps


def test_peak_index_follows_the_direction_and_skips_nan() -> None:
    m = np.array([[10.0, 40.0, np.nan, 25.0, 5.0]])
    assert peak_index(m, "up")[0] == 1
    assert peak_index(m, "down")[0] == 4
    assert peak_index(np.array([[50.0, 60.0, 10.0, 55.0]]), "both")[0] == 2  # farthest from the baseline 50
    assert peak_index(np.array([[np.nan, np.nan]]), "up")[0] == -1


def test_largest_drop_is_peak_to_trough_and_drops_are_relative_to_the_baseline() -> None:
    # baseline 80, rises to 100, falls to 60, recovers to 72: peak-to-trough 40 points = 50% of 80
    m = np.array([[80.0, 100.0, np.nan, 60.0, 72.0]])
    assert largest_drop(m)[0] == pytest.approx(40.0)
    largest, final = drops_pct(m, last=4)
    assert largest[0] == pytest.approx(50.0) and final[0] == pytest.approx(10.0)
    assert largest_drop(np.array([[1.0, 2.0, 3.0]]))[0] == 0.0  # never falls
    small_base, _ = drops_pct(np.array([[0.5, 0.1, 0.0]]), last=2)
    assert np.isnan(small_base[0])  # relative change needs a baseline of at least 1 point


def _rows() -> list[ScoreRow]:
    """Run r: evil rises at step 10 and peaks at 20; hallucination rises at 4 and peaks at 12.
    Coherence (judged on both suites' answers) falls 30% on evil prompts from step 16 and 10% on
    hallucination prompts, with a late partial recovery on evil prompts."""
    rng = np.random.default_rng(0)
    rows: list[ScoreRow] = []
    for q in range(16):
        for s in range(2):
            for step in STEPS:
                t = int(step)
                evil = 0.0 if t < 10 else 6.0 * (t - 8) if t <= 20 else 55.0
                hal = 0.0 if t < 4 else 7.0 * (t - 2) if t <= 12 else 40.0
                coh_e = 90.0 if t < 16 else 63.0 if t < 36 else 72.0
                coh_h = 90.0 if t < 16 else 81.0
                noise = lambda: float(rng.normal(0, 2))  # noqa: E731
                rows += [
                    ScoreRow("r", t, "evil", f"e{q}", s, "j", "evil", max(0.0, evil + noise())),
                    ScoreRow("r", t, "evil", f"e{q}", s, "j", "coherence", coh_e + noise()),
                    ScoreRow("r", t, "hallucination", f"h{q}", s, "j", "hallucination", max(0.0, hal + noise())),
                    ScoreRow("r", t, "hallucination", f"h{q}", s, "j", "coherence", coh_h + noise()),
                ]
    return rows


def test_split_by_suite_keeps_each_suites_questions() -> None:
    samples = arrange(_rows())
    parts = split_by_suite(samples[("r", "j", "coherence")])
    assert sorted(parts) == ["evil", "hallucination"]
    assert all(u[0] == "evil" for u in parts["evil"].units) and len(parts["evil"].units) == 16
    assert split_by_suite(samples[("r", "j", "evil")]) == {}


@pytest.fixture(scope="module")
def analysis(tmp_path_factory: pytest.TempPathFactory):
    spec = StudySpec(
        name="t",
        traits=["builtin:evil", "builtin:hallucination"],
        analysis={"leads": [["hallucination", "evil"]], "bootstrap": 200},
    )
    store = Store(tmp_path_factory.mktemp("peaks") / "study.sqlite")
    return analyze(store, spec, "h", rows=_rows())


def test_per_suite_coherence_drops_onsets_and_cis(analysis) -> None:
    rows = {(r["trait"], r["suite"]): r for r in analysis.suite_summary}
    assert set(rows) == {("coherence", "evil"), ("coherence", "hallucination")}
    ev, hal = rows[("coherence", "evil")], rows[("coherence", "hallucination")]
    assert ev["direction"] == "down" and ev["largest_drop_pct"] == pytest.approx(30.0, abs=1.5)
    assert ev["final_drop_pct"] == pytest.approx(20.0, abs=1.5)  # partly recovered: 72 of 90
    assert hal["largest_drop_pct"] == pytest.approx(10.0, abs=1.5) and hal["final_drop_pct"] == pytest.approx(10.0, abs=1.5)
    for r in (ev, hal):
        assert r["largest_drop_ci"][0] <= r["largest_drop_pct"] <= r["largest_drop_ci"][1]
        assert r["final_drop_ci"][0] <= r["final_drop_pct"] <= r["final_drop_ci"][1]
    assert ev["onset_step"] == 16 and ev["onset_index"] == 8 and ev["onset_pct_of_training"] == pytest.approx(40.0)
    assert ev["onset_ci"] is not None and ev["peak_step"] >= 16
    # the pooled coherence curve has a decline onset too, and it is reported as down
    cons = analysis.onset("r", "j", "coherence")
    assert cons.direction == "down" and cons.step == 16 and cons.pct_of_training == pytest.approx(40.0)
    suite_cons = [o for o in analysis.suite_onsets if o.detector == "consensus"]
    assert {o.suite for o in suite_cons} == {"evil", "hallucination"}
    assert len(analysis.suite_curves) == 2 and all(len(sc.curve) == STEPS.size for sc in analysis.suite_curves)


def test_peaks_and_peak_to_peak_lead_beside_the_onset_lead(analysis) -> None:
    summ = {r["trait"]: r for r in analysis.summary}
    assert summ["evil"]["peak_step"] == 20 and summ["evil"]["peak"] == pytest.approx(72.0, abs=2)
    assert summ["evil"]["peak_ci"][0] <= summ["evil"]["peak"] <= summ["evil"]["peak_ci"][1]
    assert summ["hallucination"]["peak_step"] == 12
    assert summ["coherence"]["direction"] == "down" and summ["coherence"]["peak"] < 75  # a down trait's peak is its trough
    assert summ["evil"]["onset_index"] * 2 == summ["evil"]["onset_step"]
    assert summ["evil"]["onset_pct_of_training"] == pytest.approx(100 * summ["evil"]["onset_step"] / 40)
    lead = next(x for x in analysis.leads if x.detector == "consensus")
    assert (lead.leader, lead.follower) == ("hallucination", "evil")
    assert lead.lead_steps is not None and lead.lead_steps > 0
    assert lead.peak_lead_steps == 8 and lead.peak_lead_checkpoints == 4
    assert lead.peak_lead_ci is not None and lead.peak_lead_ci[0] <= 8 <= lead.peak_lead_ci[1] and lead.peak_lead_ci[0] > 0
    assert lead.p_peaks_first == 1.0
    assert all(x.peak_lead_steps == 8 for x in analysis.leads)  # one peak lead per pair, beside every detector's onset lead


def test_csvs_carry_the_new_numbers(analysis, tmp_path) -> None:
    files = {p.name: p for p in write_csvs(analysis, tmp_path)}
    with files["suite_summary.csv"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["suite"] for r in rows} == {"evil", "hallucination"}
    assert json.loads(rows[0]["largest_drop_ci"])[0] <= float(rows[0]["largest_drop_pct"])
    with files["suite_curves.csv"].open() as fh:
        assert sum(1 for _ in csv.DictReader(fh)) == 2 * STEPS.size
    with files["leads.csv"].open() as fh:
        assert "peak_lead_steps" in next(csv.DictReader(fh))
    with files["onsets.csv"].open() as fh:
        first = next(csv.DictReader(fh))
        assert {"direction", "pct_of_training"} <= set(first)
