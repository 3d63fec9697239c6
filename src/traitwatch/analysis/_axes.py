"""Statistics across the study's axes: models, learning rates, and task convergence.

Why: the companion study's claims are about runs compared with each other, not about one
curve: "emergent misalignment in 2 of 12 models", "grows with model size (r = 0.90)",
"emerges after the main task has converged", "depends on the learning rate". Each needs the
per-run numbers the analysis already has (``summary`` rows: baseline, final, drift, consensus
onset and its CI; the held-out loss per checkpoint) grouped by the run's model and learning
rate, which training records in the run's ``info`` (``model_name``, ``learning_rate``,
``model_params``, ``model_attributes``). Every statistic is defined once, in docs/analysis.md
("Across models and learning rates").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from traitwatch.store import CheckpointRow

from ._compare import sign_test, t_interval

#: Run statistics correlated with a model attribute (names of ``summary`` columns, plus one).
CORRELATED = ("drift", "final", "final_minus_baseline")


def run_axes(run: dict[str, Any], default_model: str, default_lr: float | None) -> dict[str, Any]:
    """A stored run's place on the axes: model name, learning rate, parameter count, attributes.

    Runs stored before training recorded these (or imported ones) fall back to the study's one
    model and learning rate.
    """
    info = run.get("info") or {}
    return {
        "model": info.get("model_name") or default_model,
        "learning_rate": info.get("learning_rate", default_lr),
        "params": info.get("model_params"),
        "attributes": dict(info.get("model_attributes") or {}),
    }


def convergence_step(rows: Sequence[CheckpointRow], tolerance: float, window: int) -> int | None:
    """First step where the smoothed held-out loss is within ``tolerance`` of its total drop of
    its minimum: smoothed(s) <= min + tolerance * (smoothed(0) - min).

    The smoothing is a trailing mean over ``window`` checkpoints (causal: what a monitor could
    know at that step). None without two held-out losses, or when the loss never drops.
    """
    held = [(r.step, r.heldout_loss) for r in sorted(rows, key=lambda r: r.step) if r.heldout_loss is not None]
    if len(held) < 2:
        return None
    loss = np.asarray([h for _, h in held], dtype=float)
    smooth = np.asarray([loss[max(0, i - window + 1) : i + 1].mean() for i in range(loss.size)])
    first, best = float(smooth[0]), float(smooth.min())
    if first - best <= 0:
        return None
    target = best + tolerance * (first - best)
    return next(held[i][0] for i in range(loss.size) if smooth[i] <= target)


def _mean_ci(values: Sequence[float], confidence: float) -> tuple[float | None, list[float] | None]:
    if not values:
        return None, None
    ci = t_interval(values, confidence)
    return float(np.mean(values)), None if ci is None else [ci[0], ci[1]]


#: The columns a per-group table of runs is keyed by (model_onsets, learning_rate_table).
_GROUP = ("model", "learning_rate", "domain", "level", "judge", "trait")


def _grouped(summary: Sequence[dict[str, Any]], axes: dict[str, dict[str, Any]]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Summary rows of runs with axes, grouped by :data:`_GROUP` (the group's columns, its rows), in key order."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in summary:
        ax = axes.get(row["run_id"])
        if ax is not None:
            groups[(ax["model"], ax["learning_rate"], row["domain"], row["level"], row["judge"], row["trait"])].append(row)
    ordered = sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0]))
    return [(dict(zip(_GROUP, key, strict=True)), rows) for key, rows in ordered]


def model_onsets(summary: Sequence[dict[str, Any]], axes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, learning rate, domain, level, judge, trait): in how many of its seeds the
    trait has a consensus onset ("onset in k of n seeds")."""
    out = []
    for group, rows in _grouped(summary, axes):
        steps = [r["onset_step"] for r in rows]
        found = [s for s in steps if s is not None]
        out.append(
            group
            | {
                "seeds": len(steps),
                "onset_found": len(found),
                "k_of_n": f"{len(found)} of {len(steps)}",
                "onset_mean": float(np.mean(found)) if found else None,
            }
        )
    return out


def pearson_bootstrap(x: Sequence[float], y: Sequence[float], n_boot: int, confidence: float, seed: int) -> dict[str, Any]:
    """Pearson r of (x, y) over models, with a percentile bootstrap CI that resamples models.

    Fewer than 3 models: r is not computed (``note`` says so): with 2 points r is always +-1.
    Replicates in which x or y is constant (r undefined) are dropped; ``replicates`` counts
    those kept.
    """
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = xa.size
    if n < 3:
        return {"r": None, "ci": None, "replicates": 0, "note": f"n/a: {n} model{'s' if n != 1 else ''} (needs at least 3)"}
    if np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return {"r": None, "ci": None, "replicates": 0, "note": "n/a: the attribute or the statistic is the same for every model"}
    r = float(stats.pearsonr(xa, ya).statistic)
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        if np.ptp(xa[i]) > 0 and np.ptp(ya[i]) > 0:
            reps.append(float(np.corrcoef(xa[i], ya[i])[0, 1]))
    ci = None
    if len(reps) >= 2:
        lo, hi = np.quantile(reps, [(1 - confidence) / 2, (1 + confidence) / 2])
        ci = [float(lo), float(hi)]
    return {"r": r, "ci": ci, "replicates": len(reps), "note": ""}


def model_correlations(
    summary: Sequence[dict[str, Any]],
    axes: dict[str, dict[str, Any]],
    attribute: str,
    *,
    n_boot: int,
    confidence: float,
    seed: int,
) -> list[dict[str, Any]]:
    """Per (learning rate, domain, level, judge, trait, statistic): Pearson r across models of
    the model ``attribute`` with the statistic's mean over the model's seeds, bootstrap CI over
    models. Statistics: ``CORRELATED`` (a misaligned-rate trait, where the study has one, is a
    trait like any other here)."""
    per: dict[tuple[Any, ...], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    attr_of: dict[str, float] = {}
    for row in summary:
        ax = axes.get(row["run_id"])
        if ax is None:
            continue
        value = ax["params"] if attribute == "params" else ax["attributes"].get(attribute)
        if value is None:
            continue
        attr_of[ax["model"]] = float(value)
        stat_values = {"drift": row.get("drift"), "final": row.get("final"), "final_minus_baseline": None}
        if row.get("final") is not None and row.get("baseline") is not None:
            stat_values["final_minus_baseline"] = row["final"] - row["baseline"]
        for stat in CORRELATED:
            v = stat_values[stat]
            if v is not None:
                per[(ax["learning_rate"], row["domain"], row["level"], row["judge"], row["trait"], stat)][ax["model"]].append(float(v))
    out = []
    for (lr, domain, level, judge, trait, stat), by_model in sorted(per.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        models = sorted(by_model)
        xs = [attr_of[m] for m in models]
        ys = [float(np.mean(by_model[m])) for m in models]
        corr = pearson_bootstrap(xs, ys, n_boot, confidence, seed)
        out.append(
            {
                "learning_rate": lr,
                "domain": domain,
                "level": level,
                "judge": judge,
                "trait": trait,
                "attribute": attribute,
                "statistic": stat,
                "models": len(models),
                "r": corr["r"],
                "r_ci": corr["ci"],
                "replicates": corr["replicates"],
                "note": corr["note"],
                "values": {m: [x, y] for m, x, y in zip(models, xs, ys, strict=True)},
            }
        )
    return out


def onset_vs_convergence(
    summary: Sequence[dict[str, Any]],
    converged: Mapping[str, int | None],
    axes: dict[str, dict[str, Any]],
    confidence: float,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per run, judge and trait: consensus onset minus task-convergence step, its CI = the
    onset's CI shifted by the convergence step; across runs per judge and trait: mean with a
    t-interval, how many runs rise after convergence, and a sign test of "onset - convergence
    = 0")."""
    per_run = []
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in summary:
        conv = converged.get(row["run_id"])
        onset = row.get("onset_step")
        if conv is None or onset is None:
            continue
        ci = row.get("onset_ci")
        ax = axes.get(row["run_id"], {})
        diff = onset - conv
        per_run.append(
            {
                "run_id": row["run_id"],
                "model": ax.get("model"),
                "learning_rate": ax.get("learning_rate"),
                "domain": row["domain"],
                "level": row["level"],
                "judge": row["judge"],
                "trait": row["trait"],
                "onset_step": onset,
                "converged_step": conv,
                "onset_minus_convergence": diff,
                "ci": None if ci is None else [ci[0] - conv, ci[1] - conv],
            }
        )
        groups[(row["judge"], row["trait"])].append(float(diff))
    tests = []
    for (judge, trait), diffs in sorted(groups.items()):
        mean, ci = _mean_ci(diffs, confidence)
        tests.append(
            {
                "judge": judge,
                "trait": trait,
                "runs": len(diffs),
                "mean": mean,
                "ci": ci,
                "after": sum(1 for d in diffs if d > 0),
                "before": sum(1 for d in diffs if d < 0),
                "sign_test_p": sign_test(diffs),
            }
        )
    return per_run, tests


def learning_rate_table(
    summary: Sequence[dict[str, Any]],
    axes: dict[str, dict[str, Any]],
    final_heldout: dict[str, float | None],
    confidence: float,
) -> list[dict[str, Any]]:
    """Per (model, learning rate, domain, level, judge, trait) over seeds: onsets found, onset
    mean, final score and final held-out loss, each mean with a t-interval (two runs or more)."""
    out = []
    for group, rows in _grouped(summary, axes):
        onsets = [r["onset_step"] for r in rows if r.get("onset_step") is not None]
        finals = [r["final"] for r in rows if r.get("final") is not None]
        held = [h for r in rows if (h := final_heldout.get(r["run_id"])) is not None]
        onset_mean, onset_ci = _mean_ci(onsets, confidence)
        final_mean, final_ci = _mean_ci(finals, confidence)
        held_mean, held_ci = _mean_ci(held, confidence)
        out.append(
            group
            | {
                "runs": len(rows),
                "onset_found": len(onsets),
                "onset_mean": onset_mean,
                "onset_ci": onset_ci,
                "final_mean": final_mean,
                "final_ci": final_ci,
                "heldout_loss_mean": held_mean,
                "heldout_loss_ci": held_ci,
            }
        )
    return out


def axes_tables(
    summary: Sequence[dict[str, Any]],
    runs: Sequence[dict[str, Any]],
    checkpoints: dict[str, list[CheckpointRow]],
    *,
    default_model: str,
    default_lr: float | None,
    attribute: str = "params",
    tolerance: float = 0.05,
    window: int = 3,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, list[dict[str, Any]]]:
    """Every across-run table, by CSV name (without ``.csv``): model_onsets,
    model_correlations, task_convergence, convergence_tests, learning_rates."""
    axes = {r["run_id"]: run_axes(r, default_model, default_lr) for r in runs}
    converged = {rid: convergence_step(rows, tolerance, window) for rid, rows in checkpoints.items()}
    final_heldout: dict[str, float | None] = {}
    for rid, rows in checkpoints.items():
        held = [r for r in sorted(rows, key=lambda r: r.step) if r.heldout_loss is not None]
        final_heldout[rid] = held[-1].heldout_loss if held else None
    per_run, tests = onset_vs_convergence(summary, converged, axes, confidence)
    return {
        "model_onsets": model_onsets(summary, axes),
        "model_correlations": model_correlations(summary, axes, attribute, n_boot=n_boot, confidence=confidence, seed=seed),
        "task_convergence": per_run,
        "convergence_tests": tests,
        "learning_rates": learning_rate_table(summary, axes, final_heldout, confidence),
    }
