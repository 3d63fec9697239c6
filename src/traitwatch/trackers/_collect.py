"""Turn the store's checkpoints and the analysis into :class:`TrackedRun` objects.

Why from the analysis and not from live events: the analysis holds every number a researcher
compares (curve means with bootstrap CIs, consensus onsets, leads, interventions), computed
once; logging exactly those values means a tracker's chart and ``analysis/curves.csv`` can
never disagree. Values that are missing (no score, no onset, no CI) are left out, never
logged as 0 or NaN.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from traitwatch.config import StudySpec

from . import _names as names
from ._base import TrackedRun

if TYPE_CHECKING:
    from traitwatch.analysis import StudyAnalysis

#: Columns of the intervention tables that say which row it is (part of the metric name or the run), not numbers.
_ROW_KEYS = frozenset({"run_id", "domain", "level", "seed", "judge", "leader", "follower", "policy", "alarm_trait", "alarm_rule"})


def _number(value: Any) -> float | None:
    """A loggable float: bools as 1/0; None, NaN, infinities and non-numbers as None."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float, np.integer, np.floating)):
        out = float(value)
        return out if math.isfinite(out) else None
    return None


def _put(into: dict[str, float], name: str, value: Any) -> None:
    number = _number(value)
    if number is not None:
        into[name] = number


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``a.b.c`` keys; lists of mappings indexed (``judges.0.name``), other
    lists as one JSON string, None as ``null``: the form every tracker takes as parameters."""
    out: dict[str, Any] = {}
    if isinstance(value, Mapping):
        for k, v in value.items():
            out |= flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
        for i, v in enumerate(value):
            out |= flatten(v, f"{prefix}.{i}")
    elif isinstance(value, (list, tuple)):
        out[prefix] = json.dumps(value)
    else:
        out[prefix] = "null" if value is None else value
    return out


def spec_params(spec: StudySpec) -> dict[str, Any]:
    """The spec's settings as flat parameters (the trackers themselves left out: they change
    where results go, not what they are)."""
    return flatten(spec.model_dump(mode="json", exclude={"trackers"}))


def _numbers(row: Mapping[str, Any]) -> Iterable[tuple[str, float]]:
    """The numeric columns of an intervention row; a ``*_ci`` pair as ``*_ci_low``, ``*_ci_high``."""
    for key, value in row.items():
        if key in _ROW_KEYS:
            continue
        if key.endswith("_ci") and isinstance(value, (list, tuple)) and len(value) == 2:
            for suffix, bound in zip(("low", "high"), value, strict=True):
                number = _number(bound)
                if number is not None:
                    yield f"{key}_{suffix}", number
            continue
        number = _number(value)
        if number is not None:
            yield key, number


def _run_series(run_id: str, analysis: StudyAnalysis) -> dict[int, dict[str, float]]:
    """Per checkpoint step: trait means and CI bounds per judge, losses, live alarms (0/1)."""
    series: dict[int, dict[str, float]] = {}
    for tc in analysis.curves:
        if tc.run_id != run_id:
            continue
        c = tc.curve
        bounds = {"mean": c.mean, "ci_low": c.lo, "ci_high": c.hi}
        for i, step in enumerate(c.steps):
            at = series.setdefault(int(step), {})
            for stat in names.TRAIT_STATS:
                values = bounds[stat]
                if values is not None:
                    _put(at, names.trait(tc.judge, tc.trait, stat), values[i])
    for ck in analysis.checkpoints.get(run_id, []):
        at = series.setdefault(int(ck.step), {})
        _put(at, names.HELDOUT_LOSS, ck.heldout_loss)
        _put(at, names.TRAIN_LOSS, ck.train_loss)
    for al in analysis.alarms:
        if al["run_id"] != run_id:
            continue
        name, fired = names.alarm(al["judge"], al["trait"], al["detector"]), int(al["step"])
        series.setdefault(fired, {})
        for step, at in series.items():
            at[name] = 1.0 if step >= fired else 0.0
    return {s: m for s, m in sorted(series.items()) if m}


def _run_summary(run_id: str, analysis: StudyAnalysis) -> dict[str, float]:
    """Onsets per (judge, trait, detector), leads with CIs, the run's intervention rows."""
    out: dict[str, float] = {}
    for o in analysis.onsets:
        if o.run_id != run_id:
            continue
        ci = o.ci or (None, None)
        for stat, value in zip(names.ONSET_STATS, (o.step, ci[0], ci[1], o.found_fraction), strict=True):
            _put(out, names.onset(o.judge, o.trait, o.detector, stat), value)
    for ld in analysis.leads:
        if ld.run_id != run_id:
            continue
        ci = ld.ci_steps or (None, None)
        values = (ld.lead_steps, ld.lead_checkpoints, ci[0], ci[1], ld.p_leads)
        for stat, value in zip(names.LEAD_STATS, values, strict=True):
            _put(out, names.lead(ld.judge, ld.leader, ld.follower, ld.detector, stat), value)
    for row in analysis.interventions:
        if row["run_id"] == run_id:
            for column, value in _numbers(row):
                out[names.intervention(row["judge"], row["leader"], row["follower"], row["policy"], column)] = value
    return out


def tracked_runs(spec: StudySpec, analysis: StudyAnalysis) -> list[TrackedRun]:
    """One :class:`TrackedRun` per stored run (plus ``study-summary`` when the study has an
    intervention summary), in the store's run order."""
    params = spec_params(spec)
    info = {r["run_id"]: r for r in analysis.runs}
    run_ids = list(info) + sorted({tc.run_id for tc in analysis.curves} - set(info))
    out: list[TrackedRun] = []
    for run_id in run_ids:
        run = info.get(run_id, {})
        series = _run_series(run_id, analysis)
        identity = {"run.id": run_id, "run.domain": run.get("domain"), "run.level": run.get("level"), "run.seed": run.get("seed")}
        out.append(
            TrackedRun(
                name=run_id,
                group=spec.name,
                params=params | {k: "null" if v is None else v for k, v in identity.items()},
                series=series,
                summary=_run_summary(run_id, analysis),
                tags=_tags(spec, analysis, run_id, str(run.get("status", "unknown"))),
                final_step=max(series, default=0),
            )
        )
    if analysis.intervention_summary:
        summary: dict[str, float] = {}
        for row in analysis.intervention_summary:
            for column, value in _numbers(row):
                summary[names.intervention(row["judge"], row["leader"], row["follower"], row["policy"], column)] = value
        out.append(
            TrackedRun(
                name=names.SUMMARY_RUN,
                group=spec.name,
                params=params,
                summary=summary,
                tags=_tags(spec, analysis, names.SUMMARY_RUN, "summary"),
                final_step=max((r.final_step for r in out), default=0),
            )
        )
    return out


def _tags(spec: StudySpec, analysis: StudyAnalysis, run_id: str, status: str) -> dict[str, str]:
    return {
        "traitwatch.study": spec.name,
        "traitwatch.run": run_id,
        "traitwatch.status": status,
        "traitwatch.settings_hash": analysis.settings_hash,
    }
