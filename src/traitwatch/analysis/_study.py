"""Analysis of a whole study: every trait curve, onset, lead time and judge agreement.

Why one entry point: ``traitwatch analyze``, the report and the live monitor all need the
same numbers; computing them in one place means the CSVs, the tables printed and the
report can never disagree.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from traitwatch.config import StudySpec
from traitwatch.store import CheckpointRow, ScoreColumns, ScoreRow, Store

from ._agreement import Agreement, Disagreement, combine_judges, disagreements, judge_agreement
from ._axes import axes_tables
from ._compare import domain_table, drift, order_tests, seed_table, task_convergence_step
from ._interventions import intervention_tables
from ._misaligned import misaligned_samples
from ._onsets import LeadResult, OnsetResult, TraitCurve, detect_onsets_directed, lead_time, trait_curve
from ._peaks import CurveShape, curve_shape, peak_lead, shape_fields
from ._samples import SharedBootstrap, TraitSamples, arrange
from ._suite_curves import SuiteCurve, split_by_suite
from .detectors import Curve, Detector, make_detector


@dataclass
class StudyAnalysis:
    settings_hash: str
    curves: list[TraitCurve]
    onsets: list[OnsetResult]
    leads: list[LeadResult]
    agreement: list[Agreement]
    runs: list[dict[str, Any]]
    checkpoints: dict[str, list[CheckpointRow]]
    summary: list[dict[str, Any]] = field(default_factory=list)
    detectors: list[dict[str, Any]] = field(default_factory=list)
    seed_onsets: list[dict[str, Any]] = field(default_factory=list)
    seed_leads: list[dict[str, Any]] = field(default_factory=list)
    order_tests: list[dict[str, Any]] = field(default_factory=list)
    domains: list[dict[str, Any]] = field(default_factory=list)
    disagreements: list[Disagreement] = field(default_factory=list)
    order_by_judge: list[dict[str, Any]] = field(default_factory=list)
    #: The live monitor's stored alarms (``Store.alarms()`` rows: run_id, step, judge, trait, detector, message, ...).
    alarms: list[dict[str, Any]] = field(default_factory=list)
    #: Per (run, judge, lead pair, stop policy): what stopping there keeps and avoids (see ``_interventions``).
    interventions: list[dict[str, Any]] = field(default_factory=list)
    #: Per (judge, lead pair, stop policy), across runs: task performance kept, spread avoided, false alarms.
    intervention_summary: list[dict[str, Any]] = field(default_factory=list)
    #: Peak and drops (with CIs) per (run, judge, trait) curve (``_peaks.CurveShape``).
    shapes: list[CurveShape] = field(default_factory=list)
    #: Per-suite parts of traits scored on several suites (coherence on evil vs hallucination prompts).
    suite_curves: list[SuiteCurve] = field(default_factory=list)
    #: Onsets of the per-suite curves (``OnsetResult.suite`` set), every detector and the consensus.
    suite_onsets: list[OnsetResult] = field(default_factory=list)
    #: Per (run, judge, trait, suite): baseline, final, peak, drops and consensus onset, with CIs.
    suite_summary: list[dict[str, Any]] = field(default_factory=list)
    #: Across models, learning rates and task convergence, one table per CSV name (see ``_axes``).
    axes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def curve(self, run_id: str, judge: str, trait: str) -> TraitCurve | None:
        return next((c for c in self.curves if (c.run_id, c.judge, c.trait) == (run_id, judge, trait)), None)

    def onset(self, run_id: str, judge: str, trait: str, detector: str = "consensus") -> OnsetResult | None:
        return next((o for o in self.onsets if (o.run_id, o.judge, o.trait, o.detector) == (run_id, judge, trait, detector)), None)


def build_detectors(spec: StudySpec) -> list[Detector]:
    return [make_detector(d.name, d.params) for d in spec.analysis.detectors]


def _summary_rows(
    curves: Sequence[TraitCurve],
    onsets: Sequence[OnsetResult],
    runs: Sequence[dict[str, Any]],
    checkpoints: dict[str, list[CheckpointRow]],
    shapes: Sequence[CurveShape] = (),
) -> list[dict[str, Any]]:
    by_shape = {(sh.run_id, sh.judge, sh.trait): sh for sh in shapes}
    info = {r["run_id"]: r for r in runs}
    converged = {rid: task_convergence_step(rows) for rid, rows in checkpoints.items()}
    out = []
    for tc in curves:
        c = tc.curve
        valid = c.valid()
        if valid.size == 0:
            continue
        m = c.mean[valid]
        s = c.steps[valid]
        base = float(m[0])
        peak_i = int(np.argmax(m))
        span = float(s[-1] - s[0]) if s.size > 1 else 1.0
        auc = float(np.trapezoid(m, s) / span) if s.size > 1 else float(m[0])
        cons = next((o for o in onsets if (o.run_id, o.judge, o.trait, o.detector) == (tc.run_id, tc.judge, tc.trait, "consensus")), None)
        r = info.get(tc.run_id, {})
        out.append(
            {
                "run_id": tc.run_id,
                "domain": r.get("domain"),
                "level": r.get("level"),
                "seed": r.get("seed"),
                "judge": tc.judge,
                "trait": tc.trait,
                "baseline": base,
                "final": float(m[-1]),
                "peak": float(m[peak_i]),
                "peak_step": int(s[peak_i]),
                "mean_level": auc,
                # relative change needs a baseline that is not ~0 (1 point on the 0-100 scale)
                "change_from_baseline_pct": (float(m[-1]) - base) / base * 100 if abs(base) >= 1.0 else None,
                "onset_step": None if cons is None else cons.step,
                "onset_ci": None if cons is None or cons.ci is None else list(cons.ci),
                "drift": drift(tc),
                "task_converged_step": converged.get(tc.run_id),
                "onset_index": None if cons is None else cons.index,
                "onset_pct_of_training": None if cons is None else cons.pct_of_training,
            }
            | shape_fields(by_shape.get((tc.run_id, tc.judge, tc.trait)))
        )
    return out


def training_steps(run: dict[str, Any] | None, checkpoints: Sequence[CheckpointRow], steps: np.ndarray) -> int | None:
    """A run's length in optimizer steps, the denominator of ``pct_of_training``.

    The planned ``total_steps`` the store records for a run, else (imported or stopped runs)
    its last stored checkpoint, else the curve's last step; None when that is 0.
    """
    total = (run or {}).get("total_steps")
    if not total:
        total = max((c.step for c in checkpoints), default=0) or (int(steps[-1]) if steps.size else 0)
    return int(total) if total else None


def _with_pct(o: OnsetResult, total: int | None) -> OnsetResult:
    return o if o.step is None or total is None else replace(o, pct_of_training=100.0 * o.step / total)


def _suite_summary_rows(
    suite_curves: Sequence[SuiteCurve], onsets: Sequence[OnsetResult], shapes: Sequence[CurveShape]
) -> list[dict[str, Any]]:
    """Per (run, judge, trait, suite): the levels, the shape and the consensus onset of that suite's curve."""
    cons = {(o.run_id, o.judge, o.trait, o.suite): o for o in onsets if o.detector == "consensus"}
    by_shape = {(sh.run_id, sh.judge, sh.trait, sh.suite): sh for sh in shapes}
    out = []
    for sc in suite_curves:
        valid = sc.curve.valid()
        if valid.size == 0:
            continue
        key = (sc.run_id, sc.judge, sc.trait, sc.suite)
        o = cons.get(key)
        out.append(
            {
                "run_id": sc.run_id,
                "judge": sc.judge,
                "trait": sc.trait,
                "suite": sc.suite,
                "baseline": float(sc.curve.mean[valid[0]]),
                "final": float(sc.curve.mean[valid[-1]]),
                "onset_step": None if o is None else o.step,
                "onset_index": None if o is None else o.index,
                "onset_pct_of_training": None if o is None else o.pct_of_training,
                "onset_ci": None if o is None or o.ci is None else list(o.ci),
            }
            | shape_fields(by_shape.get(key))
        )
    return out


def _scores(store: Store, spec: StudySpec, settings_hash: str, rows: Iterable[ScoreRow] | ScoreColumns | None) -> ScoreColumns:
    """The study's scores as columns, the combined judge (if configured) appended.

    Why columns: a paper-scale study has millions of scores; read as ``ScoreRow`` objects
    they alone would exceed the analysis' memory budget (see ``Store.score_columns``).
    """
    if rows is None:
        cols = store.score_columns(settings_hash=settings_hash)
    else:
        cols = rows if isinstance(rows, ScoreColumns) else ScoreColumns.from_rows(rows)
    mode = spec.analysis.combine_judges
    if not mode:
        return cols
    llm = [j.name for j in spec.judges if j.kind != "check"]
    parts = [cols, combine_judges(cols, llm, mode)]
    del cols  # so that joining can release the store's columns field by field
    return ScoreColumns.concat_consuming(parts)


def analyze(store: Store, spec: StudySpec, settings_hash: str, *, rows: Iterable[ScoreRow] | ScoreColumns | None = None) -> StudyAnalysis:
    """Compute every curve, onset, lead and agreement figure from the store (or from ``rows``,
    scores a caller already holds, as ``ScoreRow`` objects or ``ScoreColumns``)."""
    a = spec.analysis
    cols = _scores(store, spec, settings_hash, rows)
    # Agreement first and the columns dropped after arrange: at paper scale each of these
    # holds a few hundred MB of temporaries, and none needs the others' results.
    agreement = judge_agreement(cols)
    disagree = disagreements(cols.select(~cols.mask("judge", lambda j: j.startswith("combined-"))))
    samples: dict[tuple[str, str, str], TraitSamples] = arrange(cols)
    del cols
    samples.update(misaligned_samples(samples, a.misaligned_rate))
    units = {u for ts in samples.values() for u in ts.units}
    n_samples = max((ts.X.shape[2] for ts in samples.values()), default=1)
    boot = SharedBootstrap(units, n_samples, a.bootstrap, a.seed)
    detectors = build_detectors(spec)
    n_onset_boot = min(a.bootstrap, 200)
    runs = store.runs()
    checkpoints = {r["run_id"]: store.checkpoints(r["run_id"]) for r in runs}
    run_info = {r["run_id"]: r for r in runs}
    curves: list[TraitCurve] = []
    onsets: list[OnsetResult] = []
    shapes: list[CurveShape] = []
    peak_reps: dict[tuple[str, str, str], np.ndarray] = {}
    suite_curves: list[SuiteCurve] = []
    suite_onsets: list[OnsetResult] = []
    suite_shapes: list[CurveShape] = []
    reps: dict[tuple[str, str, str, str], list[int | None]] = {}
    for key in sorted(samples):
        ts = samples[key]
        direction = a.direction(ts.trait)
        tc = trait_curve(ts, boot, a.confidence)
        curves.append(tc)
        total = training_steps(run_info.get(ts.run_id), checkpoints.get(ts.run_id, []), ts.steps)
        found, rep = detect_onsets_directed(
            tc, ts, boot, detectors, direction=direction, n_onset_boot=n_onset_boot, confidence=a.confidence
        )
        onsets.extend(_with_pct(o, total) for o in found)
        for det, values in rep.items():
            reps[key + (det,)] = values
        shape, peak_reps[key] = curve_shape(tc, ts, boot, direction=direction, n_boot=n_onset_boot, confidence=a.confidence)
        shapes.append(shape)
        for suite, part in split_by_suite(ts).items():
            pc = trait_curve(part, boot, a.confidence)
            suite_curves.append(SuiteCurve(ts.run_id, ts.judge, ts.trait, suite, pc.curve))
            found, _ = detect_onsets_directed(
                pc, part, boot, detectors, direction=direction, n_onset_boot=n_onset_boot, confidence=a.confidence
            )
            suite_onsets.extend(replace(_with_pct(o, total), suite=suite) for o in found)
            suite_shapes.append(
                curve_shape(pc, part, boot, direction=direction, n_boot=n_onset_boot, confidence=a.confidence, suite=suite)[0]
            )
    shape_of = {(sh.run_id, sh.judge, sh.trait): sh for sh in shapes}
    leads: list[LeadResult] = []
    by_key = {(o.run_id, o.judge, o.trait, o.detector): o for o in onsets}
    for leader, follower in a.leads:
        for tc in curves:
            if tc.trait != leader:
                continue
            for det in [d.name for d in detectors] + ["consensus"]:
                lo = by_key.get((tc.run_id, tc.judge, leader, det))
                fo = by_key.get((tc.run_id, tc.judge, follower, det))
                if lo is None or fo is None:
                    continue
                lead = lead_time(
                    lo,
                    fo,
                    reps.get((tc.run_id, tc.judge, leader, det), []),
                    reps.get((tc.run_id, tc.judge, follower, det), []),
                    tc.curve.steps,
                    a.confidence,
                )
                ls, fs = shape_of.get((tc.run_id, tc.judge, leader)), shape_of.get((tc.run_id, tc.judge, follower))
                if ls is not None and fs is not None:
                    pl, plc, pci, pp = peak_lead(
                        ls, fs, peak_reps[(tc.run_id, tc.judge, leader)], peak_reps[(tc.run_id, tc.judge, follower)], a.confidence
                    )
                    lead = replace(lead, peak_lead_steps=pl, peak_lead_checkpoints=plc, peak_lead_ci=pci, p_peaks_first=pp)
                leads.append(lead)
    seed_onsets, seed_leads = seed_table(leads, onsets, runs, a.confidence)
    result = StudyAnalysis(
        settings_hash=settings_hash,
        curves=curves,
        onsets=onsets,
        leads=leads,
        agreement=agreement,
        runs=runs,
        checkpoints=checkpoints,
        summary=_summary_rows(curves, onsets, runs, checkpoints, shapes),
        detectors=[{"name": d.name, "params": d.params()} for d in detectors],
        seed_onsets=seed_onsets,
        seed_leads=seed_leads,
        order_tests=order_tests(leads, runs),
        domains=domain_table(curves, runs),
        disagreements=disagree,
        order_by_judge=order_by_judge(leads),
        alarms=_stored_alarms(store),
        shapes=shapes,
        suite_curves=suite_curves,
        suite_onsets=suite_onsets,
        suite_summary=_suite_summary_rows(suite_curves, suite_onsets, suite_shapes),
    )
    result.interventions, result.intervention_summary = intervention_tables(result, spec)
    rates = spec.run_learning_rates()
    result.axes = axes_tables(
        result.summary,
        runs,
        checkpoints,
        default_model=spec.model.label(),
        default_lr=rates[0] if len(rates) == 1 else None,
        attribute=a.model_attribute,
        tolerance=a.convergence_tolerance,
        window=a.convergence_window,
        n_boot=a.bootstrap,
        confidence=a.confidence,
        seed=a.seed,
    )
    return result


def _stored_alarms(store: Store) -> list[dict[str, Any]]:
    """The live monitor's alarms; none from a store made before the alarms table existed."""
    try:
        return store.alarms()
    except sqlite3.OperationalError:
        return []


def order_by_judge(leads: Sequence[LeadResult]) -> list[dict[str, Any]]:
    """Per run and trait pair: the consensus lead under each judge, and whether the order holds
    under every judge that found both onsets."""
    groups: dict[tuple[str, str, str], dict[str, int | None]] = {}
    for lead in leads:
        if lead.detector == "consensus":
            groups.setdefault((lead.run_id, lead.leader, lead.follower), {})[lead.judge] = lead.lead_steps
    out = []
    for (run, a, b), per in sorted(groups.items()):
        defined = [v for v in per.values() if v is not None]
        if not defined:
            verdict = "no judge found both onsets"
        elif all(v > 0 for v in defined):
            verdict = "leader first under every judge" + ("" if len(defined) == len(per) else " that found both onsets")
        elif all(v < 0 for v in defined):
            verdict = "follower first under every judge"
        else:
            verdict = "judges disagree on the order"
        out.append({"run_id": run, "leader": a, "follower": b, "leads": per, "verdict": verdict})
    return out


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, dict, tuple)) else v for k, v in r.items()})
    return path


def _point_rows(key: dict[str, Any], c: Curve) -> list[dict[str, Any]]:
    """``key`` plus one row per checkpoint of ``c``: step, mean, standard error, CI, answers counted."""
    return [
        key
        | {
            "step": int(c.steps[i]),
            "mean": None if not np.isfinite(c.mean[i]) else float(c.mean[i]),
            "se": float(c.se[i]),
            "ci_low": None if c.lo is None or not np.isfinite(c.lo[i]) else float(c.lo[i]),
            "ci_high": None if c.hi is None or not np.isfinite(c.hi[i]) else float(c.hi[i]),
            "n": None if c.n is None else int(c.n[i]),
        }
        for i in range(len(c))
    ]


def curve_rows(analysis: StudyAnalysis) -> list[dict[str, Any]]:
    """One row per (run, judge, trait, step): mean, standard error, CI and answers counted."""
    return [r for tc in analysis.curves for r in _point_rows({"run_id": tc.run_id, "judge": tc.judge, "trait": tc.trait}, tc.curve)]


def suite_curve_rows(analysis: StudyAnalysis) -> list[dict[str, Any]]:
    """One row per (run, judge, trait, suite, step) of the per-suite curves (as ``curve_rows``)."""
    return [
        r
        for sc in analysis.suite_curves
        for r in _point_rows({"run_id": sc.run_id, "judge": sc.judge, "trait": sc.trait, "suite": sc.suite}, sc.curve)
    ]


def write_csvs(analysis: StudyAnalysis, folder: Path) -> list[Path]:
    """curves, onsets, leads, summary, agreement, checkpoints, seed_onsets, seed_leads,
    order_tests, domains, disagreements, order_by_judge, interventions,
    interventions_summary, suite_curves, suite_onsets and suite_summary, and the across-run
    tables of ``axes`` (model_onsets, model_correlations, task_convergence, convergence_tests,
    learning_rates), one CSV each."""
    onset_rows = [{k: v for k, v in asdict(o).items() if k != "evidence"} | {"evidence": o.evidence} for o in analysis.onsets]
    ck_rows = [asdict(c) for rows in analysis.checkpoints.values() for c in rows]
    return [
        _write(folder / "curves.csv", curve_rows(analysis)),
        _write(folder / "onsets.csv", onset_rows),
        _write(folder / "leads.csv", [asdict(x) for x in analysis.leads]),
        _write(folder / "summary.csv", analysis.summary),
        _write(folder / "agreement.csv", [asdict(x) for x in analysis.agreement]),
        _write(folder / "checkpoints.csv", ck_rows),
        _write(folder / "seed_onsets.csv", analysis.seed_onsets),
        _write(folder / "seed_leads.csv", analysis.seed_leads),
        _write(folder / "order_tests.csv", analysis.order_tests),
        _write(folder / "domains.csv", analysis.domains),
        _write(folder / "disagreements.csv", [asdict(d) for d in analysis.disagreements]),
        _write(folder / "order_by_judge.csv", analysis.order_by_judge),
        _write(folder / "interventions.csv", analysis.interventions),
        _write(folder / "interventions_summary.csv", analysis.intervention_summary),
        _write(folder / "suite_curves.csv", suite_curve_rows(analysis)),
        _write(folder / "suite_onsets.csv", [asdict(o) for o in analysis.suite_onsets]),
        _write(folder / "suite_summary.csv", analysis.suite_summary),
        *(_write(folder / f"{name}.csv", rows) for name, rows in analysis.axes.items()),
    ]
