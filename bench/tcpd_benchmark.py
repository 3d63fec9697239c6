"""Change-point methods on annotated real series (TCPD development split).

Runs every segmenting detector of traitwatch with its shipped defaults (the same for every
series) on the series in ``../shared/data/tcpd-dev`` (or ``--data DIR`` of the same format),
scores F1 (margin 5) and segmentation covering exactly as that folder's README defines them,
and prints them beside the no-change-point baseline on the same series.

Preprocessing, the same for every method and series (as in the TCPD paper): missing values
are filled by linear interpolation (the indices of the series are kept) and each dimension
is standardised to zero mean and unit variance. (Dividing by the robust scale of first
differences instead, the noise unit that suits white noise, over-segments these trending,
autocorrelated series: binseg F1 0.57, cover 0.44.) Run:  python bench/tcpd_benchmark.py [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from traitwatch.analysis.detectors import REGISTRY, Segmenter, interpolate_missing, standardize
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


def prepare(values: np.ndarray) -> np.ndarray:
    """Missing values interpolated, each dimension standardised."""
    return standardize(interpolate_missing(values))


def segmenters() -> dict[str, Segmenter]:
    return {name: cls() for name, cls in sorted(REGISTRY.items()) if issubclass(cls, Segmenter)}  # type: ignore[misc]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with annotations.json and datasets/")
    ap.add_argument("--margin", type=int, default=5)
    args = ap.parse_args(argv)
    series = load(args.data)
    methods = segmenters()
    scores: dict[str, list[tuple[float, float]]] = {m: [] for m in ["zero", *methods]}
    seconds: dict[str, float] = {m: 0.0 for m in scores}
    for _name, values, ann in series:
        y = prepare(values)
        for m in scores:
            t0 = time.perf_counter()
            cps = [] if m == "zero" else methods[m].changepoints(y)
            seconds[m] += time.perf_counter() - t0
            scores[m].append((float(f_measure(ann, cps, args.margin)), covering(ann, cps, len(values))))
    names = list(scores)
    width = max(len(n) for n, _, _ in series)
    print(f"{len(series)} series from {args.data}; F1 (margin {args.margin}) / cover per method")
    print(" " * width + "  " + "  ".join(f"{m:>13}" for m in names))
    for i, (name, _, _) in enumerate(series):
        print(f"{name:<{width}}  " + "  ".join(f"{scores[m][i][0]:.3f} / {scores[m][i][1]:.3f}" for m in names))
    means = {m: (float(np.mean([s[0] for s in scores[m]])), float(np.mean([s[1] for s in scores[m]]))) for m in names}
    print(f"{'mean':<{width}}  " + "  ".join(f"{means[m][0]:.3f} / {means[m][1]:.3f}" for m in names))
    print(f"{'seconds':<{width}}  " + "  ".join(f"{seconds[m]:>13.2f}" for m in names))
    d, z = means[DEFAULT_METHOD], means["zero"]
    print(f"default {DEFAULT_METHOD}: F1 {d[0]:.3f} cover {d[1]:.3f}; no-change baseline: F1 {z[0]:.3f} cover {z[1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
