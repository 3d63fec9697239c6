"""Comparisons across runs: seeds, domains, levels, and tests of "A leads B".

Why: a lead seen in one run is an anecdote. Users want "hallucination leads evil by k
checkpoints in domain X but not Y", with how many seeds agree, an interval, and a test.
Intervals across seeds use the t distribution (seeds are few); the test of the order is a
two-sided sign test on the non-zero leads (exact binomial, no distribution assumed).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from traitwatch.store import CheckpointRow

from ._onsets import LeadResult, OnsetResult, TraitCurve


def t_interval(values: Sequence[float], confidence: float) -> tuple[float, float] | None:
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return None
    half = stats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return float(v.mean() - half), float(v.mean() + half)


def sign_test(leads: Sequence[float]) -> float | None:
    """Two-sided exact sign test of median lead = 0 (ties dropped); None without data."""
    pos = sum(1 for x in leads if x > 0)
    neg = sum(1 for x in leads if x < 0)
    if pos + neg == 0:
        return None
    return float(stats.binomtest(pos, pos + neg, 0.5).pvalue)


def task_convergence_step(rows: Sequence[CheckpointRow], fraction: float = 0.95) -> int | None:
    """First step at which the held-out loss has made ``fraction`` of its total improvement."""
    held = [(r.step, r.heldout_loss) for r in rows if r.heldout_loss is not None]
    if len(held) < 2:
        return None
    first, best = held[0][1], min(h for _, h in held)
    if first - best <= 0:
        return None
    target = first - fraction * (first - best)
    return next(s for s, h in held if h <= target)


def drift(tc: TraitCurve) -> float | None:
    """Mean rise above the step-0 baseline over the run (area above baseline per checkpoint)."""
    c = tc.curve
    idx = c.valid()
    if idx.size < 2:
        return None
    return float(np.mean(c.mean[idx[1:]] - c.mean[idx[0]]))


def seed_table(
    leads: Sequence[LeadResult], onsets: Sequence[OnsetResult], runs: Sequence[dict[str, Any]], confidence: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(onsets across seeds per domain/level/judge/trait, leads across seeds per domain/level/judge/pair)."""
    info = {r["run_id"]: r for r in runs}
    on: dict[tuple[str, str, str, str], list[int | None]] = defaultdict(list)
    for o in onsets:
        if o.detector == "consensus" and o.run_id in info:
            r = info[o.run_id]
            on[(r["domain"], r["level"], o.judge, o.trait)].append(o.step)
    onset_rows = []
    for (domain, level, judge, trait), steps in sorted(on.items()):
        found = [s for s in steps if s is not None]
        onset_rows.append(
            {
                "domain": domain,
                "level": level,
                "judge": judge,
                "trait": trait,
                "seeds": len(steps),
                "onset_found": len(found),
                "onset_mean": float(np.mean(found)) if found else None,
                "onset_ci": t_interval(found, confidence),
                "onsets": steps,
            }
        )
    ld: dict[tuple[str, str, str, str, str], list[LeadResult]] = defaultdict(list)
    for lead in leads:
        if lead.detector == "consensus" and lead.run_id in info:
            r = info[lead.run_id]
            ld[(r["domain"], r["level"], lead.judge, lead.leader, lead.follower)].append(lead)
    lead_rows = []
    for (domain, level, judge, a, b), items in sorted(ld.items()):
        vals = [lead.lead_steps for lead in items if lead.lead_steps is not None]
        cks = [lead.lead_checkpoints for lead in items if lead.lead_checkpoints is not None]
        lead_rows.append(
            {
                "domain": domain,
                "level": level,
                "judge": judge,
                "leader": a,
                "follower": b,
                "seeds": len(items),
                "defined": len(vals),
                "lead_steps_mean": float(np.mean(vals)) if vals else None,
                "lead_steps_ci": t_interval(vals, confidence),
                "lead_checkpoints_mean": float(np.mean(cks)) if cks else None,
                "seeds_leader_first": sum(1 for v in vals if v > 0),
                "sign_test_p": sign_test(vals),
                "leads": vals,
            }
        )
    return onset_rows, lead_rows


def order_tests(leads: Sequence[LeadResult], runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Across all runs of a judge and pair (and per domain): does the leader rise first?"""
    info = {r["run_id"]: r for r in runs}
    groups: dict[tuple[str, str, str, str], list[int]] = defaultdict(list)
    for lead in leads:
        if lead.detector != "consensus" or lead.lead_steps is None or lead.run_id not in info:
            continue
        groups[(lead.judge, lead.leader, lead.follower, "all")].append(lead.lead_steps)
        groups[(lead.judge, lead.leader, lead.follower, info[lead.run_id]["domain"])].append(lead.lead_steps)
    return [
        {
            "judge": j,
            "leader": a,
            "follower": b,
            "domain": d,
            "runs": len(v),
            "leader_first": sum(1 for x in v if x > 0),
            "ties": sum(1 for x in v if x == 0),
            "median_lead_steps": float(np.median(v)),
            "sign_test_p": sign_test(v),
        }
        for (j, a, b, d), v in sorted(groups.items())
    ]


def domain_table(curves: Sequence[TraitCurve], runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drift (mean rise over baseline) per judge, trait, level and domain, averaged over seeds,
    with the ratio of each domain's drift to every other domain's."""
    info = {r["run_id"]: r for r in runs}
    cell: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    for tc in curves:
        r = info.get(tc.run_id)
        d = drift(tc)
        if r is not None and d is not None:
            cell[(tc.judge, tc.trait, r["level"], r["domain"])].append(d)
    rows = []
    keys = sorted({k[:3] for k in cell})
    for judge, trait, level in keys:
        means = {dom: float(np.mean(v)) for (j, t, lv, dom), v in cell.items() if (j, t, lv) == (judge, trait, level)}
        row: dict[str, Any] = {"judge": judge, "trait": trait, "level": level}
        for dom, m in sorted(means.items()):
            row[f"drift_{dom}"] = m
        doms = sorted(means)
        for i, a in enumerate(doms):
            for b in doms[i + 1 :]:
                row[f"ratio_{a}_over_{b}"] = means[a] / means[b] if abs(means[b]) > 1e-9 else None
        rows.append(row)
    return rows
