"""Do the analysis' 95% intervals contain the truth 95% of the time? (issue 14, part 5)

Synthetic studies shaped like the published medical runs (``traitwatch.analysis.synthetic``:
hallucination rising from step 2 to 91-95, evil rising at step 14 or 16 to 35-51, a normal run
at 3-4.5; judge-like scores bounded 0-100, most near 0 or 100, a persistent random effect per
question; 20 questions x 10 samples per checkpoint; 4 seeds of the misaligned run and one
normal run per study) are analysed by the product's own code: ``arrange`` on score columns,
the shared bootstrap, ``trait_curve``, ``detect_onsets`` with the default detectors and their
consensus, ``lead_time`` and ``seed_table``, with the defaults of ``AnalysisSpec`` (1000
replicates, 200 for onsets, 95%). Each interval is then checked against the planted truth:

* per-checkpoint mean: the population mean of the generating distribution at that
  checkpoint's model (over the question population: questions are a random effect; the
  checkpoint's training noise is part of the model, so it is conditioned on);
* onset (per run, trait, detector and consensus): the detector run on the population curve
  (the noise-free expected curve, with the standard error the analysis would estimate at
  this size), i.e. the statistic's value on the distribution the data are drawn from; runs
  whose population curve has no onset (the normal run) are not counted;
* lead (per run): the same for onset(evil) - onset(hallucination), consensus;
* across-seed lead: the mean over training seeds of the per-run true lead (Monte Carlo over
  ``TRUTH_DRAWS`` seed draws of the same study design), against ``seed_table``'s interval.

An interval that is missing (no onset found on the data, too few replicates) counts as not
covering. Run:  python bench/ci_coverage.py [--studies N] [--seed S] [--workers W] [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from traitwatch.analysis import _onsets, consensus, make_detector
from traitwatch.analysis._compare import seed_table
from traitwatch.analysis._onsets import detect_onsets, lead_time, trait_curve
from traitwatch.analysis._samples import SharedBootstrap, arrange
from traitwatch.analysis.detectors import Curve, Detector
from traitwatch.analysis.synthetic import StudyDesign, draw_design, draw_scores, population_curve, seed_levels
from traitwatch.config import AnalysisSpec
from traitwatch.store import ScoreColumns

SEEDS = 4  # misaligned runs per study (training seeds)
TRAITS = ("hallucination", "evil")
LEADER, FOLLOWER = TRAITS
TRUTH_DRAWS = 40  # seed draws for the across-seed truth (Monte Carlo; see docs/analysis.md)
JUDGE = "judge"
CHECKPOINTS = 28  # steps 0-54: the published onsets (steps 2 and 14-16) and their plateaus


def _onset_truth(levels: dict[str, np.ndarray], design: StudyDesign, detectors: Sequence[Detector]) -> dict[str, dict[str, int | None]]:
    """Per trait: each detector's onset (and the consensus) on the population curve."""
    out: dict[str, dict[str, int | None]] = {}
    for trait, lv in levels.items():
        mean, se = population_curve(lv, design)
        c = Curve(design.steps, mean, se)
        found = {d.name: d.detect(c).step for d in detectors}
        found["consensus"] = consensus(list(found.values()))
        out[trait] = found
    return out


def _columns(runs: dict[str, dict[str, np.ndarray]], design: StudyDesign) -> ScoreColumns:
    """Score columns (as the store gives them) of every run and trait."""
    T, Q, S = design.checkpoints, design.questions, design.samples
    t_i, q_i, s_i = (a.ravel() for a in np.meshgrid(np.arange(T), np.arange(Q), np.arange(S), indexing="ij"))
    qids = np.array([f"q{q:02d}" for q in range(Q)], dtype=object)[q_i]
    parts = []
    for run_id, traits in runs.items():
        for trait, x in traits.items():
            n = t_i.size
            parts.append(
                ScoreColumns(
                    run_id=np.full(n, run_id, dtype=object),
                    step=design.steps[t_i].astype(np.int64),
                    suite=np.full(n, "suite", dtype=object),
                    question_id=qids,
                    sample=s_i.astype(np.int64),
                    judge=np.full(n, JUDGE, dtype=object),
                    trait=np.full(n, trait, dtype=object),
                    score=x.ravel().astype(float),
                )
            )
    return ScoreColumns.concat(parts)


def run_study(index: int, seed: int, spec: AnalysisSpec | None = None) -> dict[str, Any]:
    """Draw one study, analyse it as the product does, and tally which intervals cover the truth.

    Returns counts ``{name: [covered, total]}`` (names: mean, mean_low/mid/high by true level,
    onset:<detector>, lead:<detector>, seed_lead) plus diagnostics."""
    a = spec or AnalysisSpec()
    rng = np.random.default_rng([seed, index])
    design = draw_design(rng, checkpoints=CHECKPOINTS)
    detectors = [make_detector(d.name, d.params) for d in a.detectors]
    offsets = rng.normal(0.0, design.question_sd, design.questions)
    scores: dict[str, dict[str, np.ndarray]] = {}
    truth_mean: dict[tuple[str, str], np.ndarray] = {}
    truth_onset: dict[str, dict[str, dict[str, int | None]]] = {}
    runs: list[dict[str, Any]] = []
    for k in range(SEEDS + 1):
        kind = "normal" if k == SEEDS else "misaligned"
        run_id = f"medical-{kind}-s{k}"
        levels, _planted = seed_levels(design, kind, rng)
        scores[run_id] = {t: draw_scores(levels[t], offsets, design, rng) for t in TRAITS}
        for t in TRAITS:
            truth_mean[(run_id, t)] = population_curve(levels[t], design)[0]
        truth_onset[run_id] = _onset_truth(levels, design, detectors)
        runs.append({"run_id": run_id, "domain": "medical", "level": kind, "seed": k})
    # the across-seed truth: E over training seeds of the per-run true lead (consensus)
    draw_rng = np.random.default_rng([seed, index, 1])
    true_leads = []
    for _ in range(TRUTH_DRAWS):
        lv, _p = seed_levels(design, "misaligned", draw_rng)
        on = _onset_truth(lv, design, detectors)
        lo, fo = on[LEADER]["consensus"], on[FOLLOWER]["consensus"]
        if lo is not None and fo is not None:
            true_leads.append(fo - lo)
    seed_truth = float(np.mean(true_leads)) if true_leads else None

    # the product's analysis (as analysis._study.analyze does it, from score columns)
    samples = arrange(_columns(scores, design))
    units = {u for ts in samples.values() for u in ts.units}
    boot = SharedBootstrap(units, max(ts.X.shape[2] for ts in samples.values()), a.bootstrap, a.seed + index)
    n_onset_boot = min(a.bootstrap, 200)
    tally: Counter[str] = Counter()
    total: Counter[str] = Counter()
    onsets_all = []
    reps: dict[tuple[str, str, str], list[int | None]] = {}
    by_key = {}
    for key in sorted(samples):
        ts = samples[key]
        run_id, _judge, trait = key
        tc = trait_curve(ts, boot, a.confidence)
        truth = truth_mean[(run_id, trait)]
        c_lo, c_hi = tc.curve.lo, tc.curve.hi
        assert c_lo is not None and c_hi is not None
        inside = (c_lo <= truth + 1e-9) & (truth - 1e-9 <= c_hi)
        for band, sel in (("low", truth < 10), ("mid", (truth >= 10) & (truth <= 90)), ("high", truth > 90)):
            tally[f"mean_{band}"] += int(np.sum(inside & sel))
            total[f"mean_{band}"] += int(np.sum(sel))
        tally["mean"] += int(inside.sum())
        total["mean"] += inside.size
        if truth_onset[run_id][trait]["consensus"] is None and run_id.startswith("medical-normal"):
            continue  # the normal run: no onset to check (saves a fifth of the time)
        found, rep = detect_onsets(tc, ts, boot, detectors, n_onset_boot=n_onset_boot, confidence=a.confidence)
        onsets_all.extend(found)
        for o in found:
            by_key[(run_id, trait, o.detector)] = o
            reps[(run_id, trait, o.detector)] = rep.get(o.detector, [])
            t_on = truth_onset[run_id][trait][o.detector]
            if t_on is None:
                continue
            total[f"onset:{o.detector}"] += 1
            tally[f"onset:{o.detector}"] += int(o.ci is not None and o.ci[0] <= t_on <= o.ci[1])
            if o.detector == "consensus":
                tally["onset_exact"] += int(o.step == t_on)
    leads = []
    for r in runs:
        rid = r["run_id"]
        if (rid, LEADER, "consensus") not in by_key or (rid, FOLLOWER, "consensus") not in by_key:
            continue
        for det in [d.name for d in detectors] + ["consensus"]:
            lo_, fo_ = by_key[(rid, LEADER, det)], by_key[(rid, FOLLOWER, det)]
            lr = lead_time(lo_, fo_, reps[(rid, LEADER, det)], reps[(rid, FOLLOWER, det)], design.steps, a.confidence)
            leads.append(lr)
            tl, tf = truth_onset[rid][LEADER][det], truth_onset[rid][FOLLOWER][det]
            if tl is None or tf is None:
                continue
            total[f"lead:{det}"] += 1
            tally[f"lead:{det}"] += int(lr.ci_steps is not None and lr.ci_steps[0] <= tf - tl <= lr.ci_steps[1])
    _on_rows, lead_rows = seed_table(leads, onsets_all, runs, a.confidence)
    row = next(x for x in lead_rows if x["level"] == "misaligned" and x["leader"] == LEADER and x["follower"] == FOLLOWER)
    if seed_truth is not None:
        total["seed_lead"] += 1
        ci = row["lead_steps_ci"]
        tally["seed_lead"] += int(ci is not None and ci[0] <= seed_truth <= ci[1])
    return {"covered": dict(tally), "total": dict(total), "seed_truth": seed_truth}


def equal_tailed(values: np.ndarray, confidence: float) -> tuple[float, float] | None:
    """The percentile interval the product used before (for ``--interval equal-tailed``)."""
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return None
    a = (1 - confidence) / 2
    return float(np.quantile(v, a)), float(np.quantile(v, 1 - a))


def shortest(values: np.ndarray, confidence: float) -> tuple[float, float] | None:
    """The shortest range holding at least ``confidence`` of the replicates (for ``--interval
    shortest``: the construction of 2026-11-23, coverage 0.991 / 0.990)."""
    f = np.sort(np.asarray(values, dtype=float))
    if f.size < 2:
        return None
    k = min(f.size, int(np.ceil(confidence * f.size - 1e-9)))
    width = f[k - 1 :] - f[: f.size - k + 1]
    best = np.flatnonzero(width == width.min())
    j = int(best[np.argmin(np.abs((f[best] + f[best + k - 1]) / 2 - np.median(f)))])
    return float(f[j]), float(f[j + k - 1])


def _job(args: tuple[int, int, str]) -> dict[str, Any]:
    index, seed, interval = args
    if interval != "nearest":  # an earlier construction, to compare with
        _onsets.nearest_interval = equal_tailed if interval == "equal-tailed" else shortest
    return run_study(index, seed)


def coverage(results: Sequence[dict[str, Any]]) -> dict[str, tuple[float, int]]:
    """Name -> (share covered, intervals checked), pooled over studies."""
    cov: Counter[str] = Counter()
    tot: Counter[str] = Counter()
    for r in results:
        cov.update(r["covered"])
        tot.update(r["total"])
    return {k: (cov[k] / tot[k] if tot[k] else float("nan"), tot[k]) for k in sorted(tot)}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=200, help="synthetic studies (default 200)")
    ap.add_argument("--seed", type=int, default=20261123, help="generator seed (same seed, same numbers)")
    ap.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    ap.add_argument("--quick", action="store_true", help="2 studies, 1 process (a smoke test)")
    ap.add_argument(
        "--interval",
        choices=("nearest", "shortest", "equal-tailed"),
        default="nearest",
        help="onset and lead CI construction: the product's (nearest to 95%%), or an earlier one (shortest holding 95%%, equal-tailed)",
    )
    args = ap.parse_args(argv)
    n = 2 if args.quick else args.studies
    workers = 1 if args.quick else max(1, args.workers)
    t0 = time.perf_counter()
    jobs = [(i, args.seed, args.interval) for i in range(n)]
    if workers == 1:
        results = [_job(j) for j in jobs]
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = pool.map(_job, jobs, chunksize=1)
    wall = time.perf_counter() - t0
    cov = coverage(results)
    print(
        f"machine: {platform.machine()}, {multiprocessing.cpu_count()} cores; {workers} worker(s); {wall:.0f} s; "
        f"onset/lead interval: {args.interval}"
    )
    for name, (share, count) in cov.items():
        if name == "onset_exact":
            continue
        print(f"  {name:<22} {share:6.3f}  ({count} intervals)")
    if "onset:consensus" in cov:
        exact = sum(r["covered"].get("onset_exact", 0) for r in results)
        print(f"  consensus onset on the data = true onset in {exact / max(1, cov['onset:consensus'][1]):.3f} of curves")
    pick = [cov.get(k, (float("nan"), 0))[0] for k in ("mean", "onset:consensus", "lead:consensus", "seed_lead")]
    print("coverage: mean {:.3f} onset {:.3f} lead {:.3f} seed-lead {:.3f} ({} studies)".format(*pick, n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
