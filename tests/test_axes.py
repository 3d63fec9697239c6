"""Across-run statistics (analysis._axes) on numbers whose answers are known."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from scipy import stats

from traitwatch.analysis._axes import (
    axes_tables,
    convergence_step,
    learning_rate_table,
    model_correlations,
    model_onsets,
    onset_vs_convergence,
    pearson_bootstrap,
    run_axes,
)
from traitwatch.store import CheckpointRow


def _cks(run: str, losses: Sequence[float | None], every: int = 2) -> list[CheckpointRow]:
    return [
        CheckpointRow(run_id=run, step=i * every, path="", adapter_sha="", train_loss=None, heldout_loss=h, learning_rate=0.0,
                      tokens_seen=0, elapsed_s=0.0)
        for i, h in enumerate(losses)
    ]  # fmt: skip


def _row(run: str, *, onset: int | None, final: float = 50.0, baseline: float = 10.0, trait: str = "evil", **kw: Any) -> dict[str, Any]:
    return {
        "run_id": run,
        "domain": kw.get("domain", "medical"),
        "level": kw.get("level", "strong"),
        "judge": "j",
        "trait": trait,
        "baseline": baseline,
        "final": final,
        "drift": kw.get("drift", final - baseline),
        "onset_step": onset,
        "onset_ci": kw.get("ci"),
    }


def _axes(model: str, lr: float = 1e-4, params: int | None = 100, **attrs: float) -> dict[str, Any]:
    return {"model": model, "learning_rate": lr, "params": params, "attributes": attrs}


def test_convergence_rule_and_its_smoothing() -> None:
    # no smoothing: first checkpoint within 5% of the drop (3 -> 1) of the minimum: 1.05 <= 1.1
    assert convergence_step(_cks("r", [3.0, 2.0, 1.5, 1.2, 1.05, 1.0, 1.0]), 0.05, 1) == 8
    # a one-checkpoint dip: unsmoothed it counts as converged at step 2, the trailing mean of 3 waits
    spiky = [3.0, 1.0, 2.5, 2.0, 1.5, 1.2, 1.0, 1.0, 1.0]
    assert convergence_step(_cks("r", spiky), 0.05, 1) == 2
    smooth = [np.mean(spiky[max(0, i - 2) : i + 1]) for i in range(len(spiky))]
    target = min(smooth) + 0.05 * (smooth[0] - min(smooth))
    expect = 2 * next(i for i, v in enumerate(smooth) if v <= target)
    assert convergence_step(_cks("r", spiky), 0.05, 3) == expect == 14
    # a looser tolerance converges earlier; a loss that never drops, or too few losses: none
    assert convergence_step(_cks("r", [3.0, 2.0, 1.5, 1.2, 1.05, 1.0]), 0.5, 1) == 2  # 2.0 <= 1 + 0.5 * 2
    assert convergence_step(_cks("r", [1.0, 1.2, 1.1]), 0.05, 1) is None
    assert convergence_step(_cks("r", [1.0, None]), 0.05, 1) is None


def test_pearson_bootstrap_over_models() -> None:
    few = pearson_bootstrap([1, 2], [3, 5], 100, 0.95, 0)
    assert few["r"] is None and few["note"].startswith("n/a: 2 models")
    exact = pearson_bootstrap([1, 2, 3, 4, 5], [3, 5, 7, 9, 11], 200, 0.95, 0)
    assert exact["r"] == pytest.approx(1.0) and exact["ci"] == pytest.approx([1.0, 1.0])
    rng = np.random.default_rng(3)
    x = np.arange(12.0)
    y = -0.8 * x + rng.normal(0, 3, 12)
    got = pearson_bootstrap(list(x), list(y), 500, 0.95, 1)
    assert got["r"] == pytest.approx(stats.pearsonr(x, y).statistic)
    assert got["r"] < 0 and got["ci"][0] <= got["r"] <= got["ci"][1] < 0.5
    assert got["replicates"] > 450  # replicates with a constant x or y are dropped, rarely with 12 models
    flat = pearson_bootstrap([1, 2, 3], [4, 4, 4], 50, 0.95, 0)
    assert flat["r"] is None and "same for every model" in flat["note"]


def test_model_onsets_k_of_n_and_correlation_table() -> None:
    summary = [
        _row("a0", onset=10, final=80),
        _row("a1", onset=12, final=70),
        _row("a2", onset=None, final=60),
        _row("b0", onset=None, final=20),
        _row("b1", onset=None, final=30),
        _row("c0", onset=30, final=40),
    ]
    axes = {"a0": _axes("big", params=300), "a1": _axes("big", params=300), "a2": _axes("big", params=300)}
    axes |= {"b0": _axes("small", params=100), "b1": _axes("small", params=100), "c0": _axes("mid", params=200)}
    rows = {r["model"]: r for r in model_onsets(summary, axes)}
    assert rows["big"]["k_of_n"] == "2 of 3" and rows["big"]["onset_mean"] == 11.0
    assert rows["small"]["k_of_n"] == "0 of 2" and rows["small"]["onset_mean"] is None
    corr = {r["statistic"]: r for r in model_correlations(summary, axes, "params", n_boot=200, confidence=0.95, seed=0)}
    finals = corr["final"]
    assert finals["models"] == 3 and finals["values"]["big"] == [300.0, 70.0] and finals["values"]["small"] == [100.0, 25.0]
    assert finals["r"] == pytest.approx(stats.pearsonr([300, 100, 200], [70, 25, 40]).statistic)
    assert corr["final_minus_baseline"]["values"]["mid"] == [200.0, 30.0]
    # another attribute from models[].attributes; models without it are left out
    axes["c0"] = _axes("mid", params=200, size=7.0)
    by_size = model_correlations(summary, axes, "size", n_boot=50, confidence=0.95, seed=0)
    assert {r["models"] for r in by_size} == {1} and by_size[0]["r"] is None


def test_onset_minus_convergence_and_sign_test() -> None:
    summary = [_row(f"r{i}", onset=20 + 2 * i, ci=[18 + 2 * i, 24 + 2 * i]) for i in range(6)] + [_row("late", onset=None)]
    converged: dict[str, int | None] = {rid: 10 for rid in [*(f"r{i}" for i in range(6)), "late"]}
    per_run, tests = onset_vs_convergence(summary, converged, {}, 0.95)
    assert [r["onset_minus_convergence"] for r in per_run] == [10, 12, 14, 16, 18, 20]
    assert per_run[0]["ci"] == [8, 14]  # the onset's CI shifted by the convergence step
    [t] = tests
    assert t["runs"] == 6 and t["after"] == 6 and t["before"] == 0
    assert t["sign_test_p"] == pytest.approx(2 * 0.5**6)
    diffs = np.array([10, 12, 14, 16, 18, 20.0])
    half = stats.t.ppf(0.975, 5) * diffs.std(ddof=1) / np.sqrt(6)
    assert t["mean"] == 15.0 and t["ci"] == pytest.approx([15 - half, 15 + half])


def test_learning_rate_table() -> None:
    summary = [_row("x0", onset=10, final=40), _row("x1", onset=14, final=60), _row("y0", onset=None, final=5)]
    axes = {"x0": _axes("m", lr=1e-4), "x1": _axes("m", lr=1e-4), "y0": _axes("m", lr=1e-5)}
    table = {r["learning_rate"]: r for r in learning_rate_table(summary, axes, {"x0": 1.0, "x1": 2.0, "y0": None}, 0.95)}
    fast = table[1e-4]
    assert (fast["runs"], fast["onset_found"], fast["onset_mean"], fast["final_mean"], fast["heldout_loss_mean"]) == (2, 2, 12.0, 50.0, 1.5)
    half = stats.t.ppf(0.975, 1) * np.std([40, 60], ddof=1) / np.sqrt(2)
    assert fast["final_ci"] == pytest.approx([50 - half, 50 + half])
    slow = table[1e-5]
    assert slow["onset_found"] == 0 and slow["onset_ci"] is None and slow["heldout_loss_mean"] is None and slow["final_ci"] is None


def test_axes_tables_reads_run_info_and_falls_back() -> None:
    runs = [
        {"run_id": "old", "info": {}},  # stored before runs recorded their axes
        {"run_id": "new", "info": {"model_name": "q7", "learning_rate": 2e-5, "model_params": 7, "model_attributes": {"size": 7}}},
    ]
    assert run_axes(runs[0], "base-model", 1e-5) == _axes("base-model", lr=1e-5, params=None)
    assert run_axes(runs[1], "base-model", 1e-5) == _axes("q7", lr=2e-5, params=7, size=7)
    summary = [_row("old", onset=6), _row("new", onset=4)]
    cks = {"old": _cks("old", [3.0, 2.0, 1.0, 1.0]), "new": _cks("new", [3.0, 1.0, 1.0, 1.0])}
    tables = axes_tables(summary, runs, cks, default_model="base-model", default_lr=1e-5, tolerance=0.05, window=1, n_boot=10)
    assert set(tables) == {"model_onsets", "model_correlations", "task_convergence", "convergence_tests", "learning_rates"}
    assert {r["run_id"]: r["onset_minus_convergence"] for r in tables["task_convergence"]} == {"old": 6 - 4, "new": 4 - 2}
    assert {r["learning_rate"]: r["heldout_loss_mean"] for r in tables["learning_rates"]} == {1e-5: 1.0, 2e-5: 1.0}
