"""Change-point methods on annotated real series (TCPD development split).

Runs every segmenting detector of traitwatch with its shipped defaults (the same for every
series) on the series in ``../shared/data/tcpd-dev`` (or ``--data DIR`` of the same format),
scores F1 (margin 5) and segmentation covering exactly as that folder's README defines them,
and prints them beside the no-change-point baseline on the same series.

Preprocessing is each segmenter's own rule for a bare series (``Segmenter.segment_series``,
the same for every method and series, as in the TCPD paper): missing values are filled by
linear interpolation (the indices of the series are kept) and each dimension is divided by its
standard deviation, the noise unit under the null of no change. ``--alternatives`` also prints
binseg under other rules, for the record in docs/analysis.md (which says which choices
looked at these annotations): the old default (penalty_scale 8), and the mBIC penalty on two difference-based
noise units (white noise: MAD of first differences; AR(1): long-run scale from the MADs of
lag-1 and lag-2 differences). Run:  python bench/tcpd_benchmark.py [--data DIR] [--alternatives]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from traitwatch.analysis.detectors import REGISTRY, Binseg, Segmenter, interpolate_missing, robust_sigma
from traitwatch.analysis.metrics import covering, f_measure

#: The method traitwatch recommends for segmenting series (see docs/analysis.md).
DEFAULT_METHOD = "binseg"
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tcpd-dev"


def load(folder: Path) -> list[tuple[str, np.ndarray, dict[str, list[int]]]]:
    annotations = json.loads((folder / "annotations.json").read_text())
    out = []
    for name in sorted(annotations):
        data = json.loads((folder / "datasets" / name / f"{name}.json").read_text())
        cols = [[np.nan if v is None else float(v) for v in s["raw"]] for s in data["series"]]
        values = np.array(cols, dtype=float).T
        assert values.shape[0] == data["n_obs"], name
        out.append((name, values, annotations[name]))
    return out


def segmenters() -> dict[str, Segmenter]:
    return {name: cls() for name, cls in sorted(REGISTRY.items()) if issubclass(cls, Segmenter)}  # type: ignore[misc]


def _mad_var(d: np.ndarray) -> float:
    return float((np.median(np.abs(d - np.median(d))) / 0.6745) ** 2)


def ar1_long_run_sigma(y: np.ndarray, phi_max: float = 0.9) -> float:
    """Long-run noise sd of an AR(1) series from robust lag-1 and lag-2 difference variances:
    Var(y[t+k] - y[t]) = 2 s^2 (1 - phi^k), so phi = v2 / v1 - 1, then s^2 (1 + phi) / (1 - phi)."""
    v1, v2 = _mad_var(np.diff(y)), _mad_var(y[2:] - y[:-2])
    if v1 <= 0:
        return 0.0
    phi = float(np.clip(v2 / v1 - 1, 0.0, phi_max))
    return float(np.sqrt(v1 / (2 * (1 - phi)) * (1 + phi) / (1 - phi)))


def alternatives() -> dict[str, Callable[[np.ndarray], list[int]]]:
    """Binseg under rules that are not the default, each as values -> change points."""

    def by_unit(unit: Callable[[np.ndarray], float]) -> Callable[[np.ndarray], list[int]]:
        def run(values: np.ndarray) -> list[int]:
            y = interpolate_missing(values).reshape(len(values), -1)
            cols = [(c - c.mean()) / (unit(c) or 1.0) for c in y.T]
            return Binseg().changepoints(np.column_stack(cols))

        return run

    return {
        "old_pen8": Binseg(penalty_scale=8.0).segment_series,
        "diff_white": by_unit(robust_sigma),
        "diff_ar1": by_unit(ar1_long_run_sigma),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with annotations.json and datasets/")
    ap.add_argument("--margin", type=int, default=5)
    ap.add_argument("--alternatives", action="store_true", help="also binseg under rules that are not the default")
    args = ap.parse_args(argv)
    series = load(args.data)
    methods: dict[str, Callable[[np.ndarray], list[int]]] = {m: s.segment_series for m, s in segmenters().items()}
    if args.alternatives:
        methods.update({f"binseg_{k}": f for k, f in alternatives().items()})
    scores: dict[str, list[tuple[float, float]]] = {m: [] for m in ["zero", *methods]}
    seconds: dict[str, float] = {m: 0.0 for m in scores}
    for _name, values, ann in series:
        for m in scores:
            t0 = time.perf_counter()
            cps = [] if m == "zero" else methods[m](values)
            seconds[m] += time.perf_counter() - t0
            scores[m].append((float(f_measure(ann, cps, args.margin)), covering(ann, cps, len(values))))
    names = list(scores)
    width = max(len(n) for n, _, _ in series)
    print(f"{len(series)} series from {args.data}; F1 (margin {args.margin}) / cover per method")
    print(" " * width + "  " + "  ".join(f"{m:>17}" for m in names))
    for i, (name, _, _) in enumerate(series):
        print(f"{name:<{width}}  " + "  ".join(f"    {scores[m][i][0]:.3f} / {scores[m][i][1]:.3f}" for m in names))
    means = {m: (float(np.mean([s[0] for s in scores[m]])), float(np.mean([s[1] for s in scores[m]]))) for m in names}
    print(f"{'mean':<{width}}  " + "  ".join(f"    {means[m][0]:.3f} / {means[m][1]:.3f}" for m in names))
    print(f"{'seconds':<{width}}  " + "  ".join(f"{seconds[m]:>17.2f}" for m in names))
    d, z = means[DEFAULT_METHOD], means["zero"]
    print(f"default rule: mBIC penalty_scale {Binseg().penalty_scale:g} on each series' own noise unit (its standard deviation)")
    print(f"default {DEFAULT_METHOD}: F1 {d[0]:.3f} cover {d[1]:.3f}; no-change baseline: F1 {z[0]:.3f} cover {z[1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
