"""The data behind the report's one interactive figure, embedded once as compact JSON.

Why one figure with selectors: at paper scale (18 runs x 2 judges) one figure per run and
judge made ~36 plotly figures (and with levels and seeds, many more combinations); the page
took long to draw and nobody could compare runs. Now the report embeds the analysis' numbers
once, and its own script (``explorer.js``) draws the view the reader picks: a run's curves, an
overlay of levels, the seeds of one condition with their mean, one trait's curve per prompt
suite, or a forest plot of lead times (onset and peak-to-peak).

Everything here is a number the analysis already computed (curves, onsets, leads, seed
leads, per-suite curves and drops), rounded for size, except the seed average of curves, which only exists for display:
the mean of the per-seed curves at each step they share, with a t interval over seeds
(docs/analysis.md, "Curves averaged over seeds").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from traitwatch.analysis import Curve, OnsetResult, StudyAnalysis

from ._figures import trait_colors

#: Rounding of scores (0-100) and losses in the embedded data: far below any CI's width, and
#: it keeps the paper-scale payload small (docs/outputs.md, "The report").
SCORE_DIGITS = 2
LOSS_DIGITS = 4


def _nums(values: Any, digits: int) -> list[float | None]:
    """Rounded floats, None for NaN/inf (JSON has no NaN)."""
    a = np.round(np.asarray(values, dtype=float), digits)
    return [None if not np.isfinite(v) else float(v) for v in a.tolist()]


def _ci(ci: Any) -> list[float] | None:
    if not ci or ci[0] is None or ci[1] is None or not (np.isfinite(ci[0]) and np.isfinite(ci[1])):
        return None
    return [round(float(ci[0]), 1), round(float(ci[1]), 1)]


def level_order(runs: Sequence[dict[str, Any]]) -> list[str]:
    """normal, mild, strong first (as present), then named conditions in the runs' order."""
    named = [lv for lv in ("normal", "mild", "strong") if any(r["level"] == lv for r in runs)]
    return list(dict.fromkeys(named + [r["level"] for r in runs]))


def seed_mean(
    curves: Sequence[tuple[np.ndarray, np.ndarray]], confidence: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The mean of per-seed curves at the steps every seed has, and a t interval over seeds.

    Args:
        curves: (steps, mean) of each seed's curve.
        confidence: the interval's coverage (the analysis' ``confidence``).

    Returns:
        steps, mean, lo, hi; lo and hi are None with fewer than two seeds. At a step where a
        seed's mean is NaN (no score there) the mean and interval use the seeds that have one.
    """
    common = curves[0][0]
    for steps, _ in curves[1:]:
        common = np.intersect1d(common, steps)
    Y = np.vstack([m[np.searchsorted(s, common)] for s, m in curves]) if len(common) else np.empty((len(curves), 0))
    ok = np.isfinite(Y)
    n = ok.sum(axis=0)
    total = np.where(ok, Y, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / n, np.nan)
        if len(curves) < 2:
            return common, mean, None, None
        sd = np.sqrt(np.where(ok, (Y - mean) ** 2, 0.0).sum(axis=0) / (n - 1))
        half = stats.t.ppf(0.5 + confidence / 2, np.maximum(n - 1, 1)) * sd / np.sqrt(n)
    half = np.where(n >= 2, half, np.nan)
    return common, mean, mean - half, mean + half


def figure_data(analysis: StudyAnalysis, leads: Sequence[tuple[str, str]], confidence: float) -> dict[str, Any]:
    """Everything the interactive figure draws, as plain JSON-ready values (see ``explorer.js``)."""
    runs = analysis.runs
    run_index = {r["run_id"]: i for i, r in enumerate(runs)}
    traits = sorted({c.trait for c in analysis.curves})
    judges = sorted({c.judge for c in analysis.curves})
    detectors = [d["name"] for d in analysis.detectors]
    by_det: dict[tuple[str, str, str], dict[str, int]] = defaultdict(dict)
    consensus: dict[tuple[str, str, str], Any] = {}
    for o in analysis.onsets:
        key = (o.run_id, o.judge, o.trait)
        if o.detector == "consensus":
            consensus[key] = o
        elif o.step is not None:
            by_det[key][o.detector] = int(o.step)
    curves = []
    groups: dict[tuple[str, str, str, str], list[tuple[int, np.ndarray, np.ndarray]]] = defaultdict(list)
    for tc in analysis.curves:
        if tc.run_id not in run_index:
            continue
        c = tc.curve
        key = (tc.run_id, tc.judge, tc.trait)
        cons = consensus.get(key)
        curves.append({"r": run_index[tc.run_id], "j": tc.judge, "t": tc.trait} | _curve_json(c, cons) | {"det": by_det.get(key, {})})
        r = runs[run_index[tc.run_id]]
        groups[(r["domain"], r["level"], tc.judge, tc.trait)].append((int(r["seed"]), np.asarray(c.steps), np.asarray(c.mean, dtype=float)))
    seeds = []
    for (domain, level, judge, trait), items in sorted(groups.items()):
        items.sort(key=lambda x: x[0])
        steps, mean, lo, hi = seed_mean([(s, m) for _, s, m in items], confidence)
        seeds.append(
            {
                "d": domain,
                "l": level,
                "j": judge,
                "t": trait,
                "n": len(items),
                "x": [int(s) for s in steps.tolist()],
                "m": _nums(mean, SCORE_DIGITS),
                "lo": None if lo is None else _nums(lo, SCORE_DIGITS),
                "hi": None if hi is None else _nums(hi, SCORE_DIGITS),
            }
        )
    loss = {}
    for r in runs:
        held = [(c.step, c.heldout_loss) for c in analysis.checkpoints.get(r["run_id"], []) if c.heldout_loss is not None]
        if held:
            loss[run_index[r["run_id"]]] = {"x": [int(s) for s, _ in held], "y": _nums([v for _, v in held], LOSS_DIGITS)}
    lead_rows = [
        {
            "r": run_index[lead.run_id],
            "j": lead.judge,
            "a": lead.leader,
            "b": lead.follower,
            "v": lead.lead_steps,
            "ci": _ci(lead.ci_steps),
            "p": None if lead.p_leads is None else round(float(lead.p_leads), 3),
            "pv": lead.peak_lead_steps,
            "pci": _ci(lead.peak_lead_ci),
        }
        for lead in analysis.leads
        if lead.detector == "consensus" and lead.run_id in run_index
    ]
    seed_leads = [
        {
            "d": s["domain"],
            "l": s["level"],
            "j": s["judge"],
            "a": s["leader"],
            "b": s["follower"],
            "n": s["seeds"],
            "k": s["defined"],
            "v": None if s["lead_steps_mean"] is None else round(float(s["lead_steps_mean"]), 1),
            "ci": _ci(s["lead_steps_ci"]),
        }
        for s in analysis.seed_leads
        if s["seeds"] > 1
    ]
    return {
        "confidence": round(confidence * 100),
        "traits": traits,
        "judges": judges,
        "detectors": detectors,
        "colors": trait_colors(traits),
        "leaders": sorted({a for a, _ in leads}),
        "pairs": [[a, b] for a, b in leads],
        "runs": [{"id": r["run_id"], "d": r["domain"], "l": r["level"], "s": int(r["seed"])} for r in runs],
        "domains": sorted({r["domain"] for r in runs}),
        "levels": level_order(runs),
        "curves": curves,
        "seeds": seeds,
        "loss": loss,
        "alarms": [
            {"r": run_index[a["run_id"]], "j": a["judge"], "t": a["trait"], "step": int(a["step"])}
            for a in analysis.alarms
            if a["run_id"] in run_index
        ],
        "leads": lead_rows,
        "seed_leads": seed_leads,
        "directions": {t: analysis_direction(analysis, t) for t in traits},
        "suites": suite_data(analysis, run_index),
    }


def analysis_direction(analysis: StudyAnalysis, trait: str) -> str:
    """The direction the analysis used for a trait (``up`` when it recorded none)."""
    return next((o.direction for o in analysis.onsets if o.trait == trait), "up")


def _curve_json(c: Curve, consensus: OnsetResult | None) -> dict[str, Any]:
    """A curve as the explorer draws it: steps, mean and CI band, and its consensus onset with its CI."""
    return {
        "x": [int(s) for s in c.steps.tolist()],
        "m": _nums(c.mean, SCORE_DIGITS),
        "lo": None if c.lo is None else _nums(c.lo, SCORE_DIGITS),
        "hi": None if c.hi is None else _nums(c.hi, SCORE_DIGITS),
        "on": None if consensus is None or consensus.step is None else int(consensus.step),
        "ci": None if consensus is None else _ci(consensus.ci),
    }


def suite_data(analysis: StudyAnalysis, run_index: dict[str, int]) -> list[dict[str, Any]]:
    """Per-suite curves of traits scored on several suites, each with its consensus onset and
    drops (docs/analysis.md, "Per-suite curves"); the "suites" view draws them."""
    cons = {(o.run_id, o.judge, o.trait, o.suite): o for o in analysis.suite_onsets if o.detector == "consensus"}
    rows = {(r["run_id"], r["judge"], r["trait"], r["suite"]): r for r in analysis.suite_summary}
    out = []
    for sc in analysis.suite_curves:
        if sc.run_id not in run_index:
            continue
        key = (sc.run_id, sc.judge, sc.trait, sc.suite)
        o, row, c = cons.get(key), rows.get(key, {}), sc.curve
        out.append(
            {"r": run_index[sc.run_id], "j": sc.judge, "t": sc.trait, "s": sc.suite}
            | _curve_json(c, o)
            | {
                "b": _round(row.get("baseline")),
                "pct": _round(row.get("onset_pct_of_training")),
                "ld": _round(row.get("largest_drop_pct")),
                "ldci": _ci(row.get("largest_drop_ci")),
                "fd": _round(row.get("final_drop_pct")),
                "fdci": _ci(row.get("final_drop_ci")),
            }
        )
    return out


def _round(v: Any, digits: int = 1) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), digits)
