"""Onset detectors on synthetic trait curves with known onsets.

Families of curves (see ``traitwatch.analysis.synthetic``) with judge-like noise: sudden and
gradual rises, a dip before the rise, a two-stage plateau, no change, transient spikes, and
sustained rises too small to matter (under the 10-point effect size). Every detector runs
with its shipped defaults; scores:

* F1 within a tolerance of ``--tolerance`` checkpoints: a detection within the tolerance of
  the true onset is a true positive; any other detection is a false positive (plus a miss
  when the curve had an onset); precision = TP / detections, recall = TP / curves with onset;
* false alarms: the share of no-onset curves (none, spiky, small) with any detection;
* delay: detected minus true onset, in checkpoints, over true positives (median and mean);
* alarm delay: for the online ``update`` path, the checkpoint at which the alarm fires
  minus the true onset (what a live monitor would wait).

The generator's seed is fixed, so the numbers are reproducible. ``--sweep`` also prints the
parameter sweep behind the defaults. Run:  python bench/onset_benchmark.py [--sweep]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

from traitwatch.analysis import consensus
from traitwatch.analysis.detectors import REGISTRY, Curve, Detector, make_detector
from traitwatch.analysis.synthetic import FAMILIES, SyntheticCurve, make_family

SEED = 20261122
ONSET_FAMILIES = ("sudden", "gradual", "dip", "plateau")
#: The study default (config.AnalysisSpec.detectors); its consensus is scored as "consensus".
DEFAULT_SET = ("sustained", "cusum", "binseg")


def score(found: Sequence[int | None], curves: Sequence[SyntheticCurve], tol: int) -> dict[str, float]:
    tp = fp = fn = 0
    alarms = no_onset = 0
    delays: list[int] = []
    per_family: dict[str, list[int]] = {}
    for f, c in zip(found, curves, strict=False):
        hit = 0
        if c.onset_index is None:
            no_onset += 1
            if f is not None:
                alarms += 1
                fp += 1
        elif f is None:
            fn += 1
        elif abs(f - c.onset_index) <= tol:
            tp += 1
            hit = 1
            delays.append(f - c.onset_index)
        else:
            fp += 1
            fn += 1
        per_family.setdefault(c.family, []).append(hit if c.onset_index is not None else int(f is None))
    precision = tp / max(1, tp + fp)
    recall = tp / max(1, tp + fn)
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    out = {
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "false_alarm": alarms / max(1, no_onset),
        "delay_median": float(np.median(delays)) if delays else float("nan"),
        "delay_mean": float(np.mean(delays)) if delays else float("nan"),
    }
    for fam, hits in per_family.items():
        out[f"ok_{fam}"] = float(np.mean(hits))
    return out


def index_of(curve: Curve, step: int | None) -> int | None:
    return None if step is None else int(np.flatnonzero(curve.steps == step)[0])


def run_detector(det: Detector, curves: Sequence[SyntheticCurve]) -> list[int | None]:
    return [index_of(c.curve, det.detect(c.curve).step) for c in curves]


def online_alarm(det: Detector, curve: Curve) -> int | None:
    det.reset()
    for i, (s, m, e) in enumerate(zip(curve.steps, curve.mean, curve.se, strict=False)):
        if det.update(int(s), float(m), float(e)) is not None:
            return i
    return None


def table(rows: list[tuple[str, dict[str, float]]], title: str) -> None:
    fams = [f for f in FAMILIES]
    print(f"\n{title}")
    head = f"{'detector':<22} {'F1':>5} {'prec':>5} {'recall':>6} {'false+':>6} {'delay':>5} {'|d|':>5}  " + " ".join(
        f"{f[:7]:>7}" for f in fams
    )
    print(head)
    print("-" * len(head))
    for name, s in rows:
        print(
            f"{name:<22} {s['f1']:5.3f} {s['precision']:5.3f} {s['recall']:6.3f} {s['false_alarm']:6.3f} "
            f"{s['delay_median']:5.1f} {s['delay_mean']:5.2f}  " + " ".join(f"{s.get('ok_' + f, float('nan')):7.2f}" for f in fams)
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-family", type=int, default=80)
    ap.add_argument("--tolerance", type=int, default=3, help="checkpoints")
    ap.add_argument("--sweep", action="store_true", help="also print the parameter sweep behind the defaults")
    args = ap.parse_args(argv)
    t0 = time.time()
    curves = [c for fam in FAMILIES for c in make_family(fam, args.per_family, seed=SEED)]
    print(f"{len(curves)} synthetic curves ({args.per_family} per family, seed {SEED}), tolerance +-{args.tolerance} checkpoints")
    print("ok_<family>: share of curves handled right (onset found within tolerance; or no detection for no-onset families)")
    found: dict[str, list[int | None]] = {}
    rows = []
    for name in sorted(REGISTRY):
        det = make_detector(name)
        found[name] = run_detector(det, curves)
        rows.append((name, score(found[name], curves, args.tolerance)))
    cons = [consensus([found[d][i] for d in DEFAULT_SET]) for i in range(len(curves))]
    rows.append(("consensus(default set)", score(cons, curves, args.tolerance)))
    table(rows, "offline detection, shipped defaults")
    sets = [
        DEFAULT_SET,
        ("threshold", "pelt"),
        ("threshold", "cusum", "pelt"),
        ("threshold", "sustained", "cusum", "binseg"),
        ("threshold", "sustained", "cusum", "pelt", "binseg"),
        ("threshold", "sustained", "cusum", "binseg", "bocpd"),
        ("sustained", "cusum", "binseg", "bocpd", "pelt"),
    ]
    crow = []
    for members in sets:
        c = [consensus([found[d][i] for d in members]) for i in range(len(curves))]
        crow.append(("+".join(m[:4] for m in members), score(c, curves, args.tolerance)))
    table(crow, "consensus (median) of detector sets")
    print("\nonline alarms (update one checkpoint at a time): median / mean alarm delay in checkpoints, over detected onsets")
    for name in sorted(REGISTRY):
        det = make_detector(name)
        delays = []
        for c in curves:
            if c.onset_index is None:
                continue
            a = online_alarm(det, c.curve)
            if a is not None and a >= c.onset_index - args.tolerance:
                delays.append(a - c.onset_index)
        print(f"  {name:<10} median {np.median(delays):5.1f}  mean {np.mean(delays):5.2f}  (n={len(delays)})")
    if args.sweep:
        sweeps: list[tuple[str, dict[str, object]]] = []
        for p in (1, 2, 3, 5, 8, 12):
            sweeps += [("pelt", {"penalty_scale": p}), ("binseg", {"penalty_scale": p})]
        sweeps += [("pelt", {"persist": 1}), ("binseg", {"persist": 1})]  # no persistence rule
        for h in (30, 100, 300, 1000):
            sweeps.append(("bocpd", {"hazard": h}))
        for persist in (1, 2, 3, 4):
            sweeps.append(("threshold", {"persist": persist}))
        for h in (3, 5, 8):
            sweeps.append(("cusum", {"h": h}))
        for w, p in ((3, 2), (3, 3), (5, 3)):
            sweeps.append(("sustained", {"window": w, "persist": p}))
        for delta in (5, 10, 15):
            sweeps.append(("threshold", {"delta": delta}))
        srows = []
        for name, params in sweeps:
            label = name + " " + ",".join(f"{k.replace('penalty_scale', 'pen')}={v}" for k, v in params.items())
            srows.append((label[:22], score(run_detector(make_detector(name, params), curves), curves, args.tolerance)))
        table(srows, "parameter sweep")
    print(f"\n{time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
