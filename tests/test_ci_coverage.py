"""The coverage benchmark's core (bench/ci_coverage.py) and the interval it checks.

The bench reads no data from outside: its studies come from traitwatch.analysis.synthetic.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

from traitwatch.analysis._onsets import _ci, lead_time, nearest_interval
from traitwatch.analysis.synthetic import draw_design, draw_scores, population_curve, seed_levels

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import ci_coverage
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return ci_coverage


def test_nearest_interval_takes_the_share_nearest_95_percent() -> None:
    # 8 of 200 replicates (4%) one checkpoint early: the equal-tailed 95% interval keeps 14
    # (it cuts only 2.5% a side); 16 alone holds 96%, nearer 95% than both (100%).
    early = np.array([14.0] * 8 + [16.0] * 192)
    assert np.quantile(early, 0.025) == 14.0 and nearest_interval(early, 0.95) == (16.0, 16.0)
    # 11 of 200 early: 16 alone holds 94.5%, 0.5 points from 95%, both 100%: 16 alone (the
    # shortest range holding at least 95% had to keep 14)
    assert nearest_interval(np.array([14.0] * 11 + [16.0] * 189), 0.95) == (16.0, 16.0)
    # 20 of 200 early: 90% alone, 100% both, a tie on distance: the larger share wins
    assert nearest_interval(np.array([14.0] * 20 + [16.0] * 180), 0.95) == (14.0, 16.0)
    # the nearest share of every range between two replicate values (brute force)
    rng = np.random.default_rng(0)
    for _ in range(50):
        v = rng.choice([2.0, 4.0, 6.0, 8.0], size=200, p=rng.dirichlet(np.ones(4)))
        got = nearest_interval(v, 0.95)
        assert got is not None
        share = np.mean((v >= got[0]) & (v <= got[1]))
        values = np.unique(v)
        best = min(abs(np.mean((v >= a) & (v <= b)) - 0.95) for a in values for b in values if a <= b)
        assert abs(share - 0.95) == pytest.approx(best)
    # every replicate distinct: the shortest range holding 95% of them
    cont = np.random.default_rng(1).normal(size=400)
    lo, hi = nearest_interval(cont, 0.95)  # type: ignore[misc]
    assert np.sum((cont >= lo) & (cont <= hi)) == 380
    s = np.sort(cont)
    assert hi - lo == pytest.approx(np.min(s[379:] - s[:21]))
    assert nearest_interval(np.array([3.0]), 0.95) is None


def test_onset_ci_ignores_replicates_without_onset() -> None:
    ci, frac = _ci([None, 4, 4, 6, 6, None] + [4] * 15, 0.95)  # 17 of 19 found at 4 (89%): both kept
    assert frac == pytest.approx(19 / 21) and ci == (4.0, 6.0)


def test_population_curve_is_the_mean_of_many_questions() -> None:
    """The planted per-checkpoint truth: the generator's own mean and standard error."""
    rng = np.random.default_rng(3)
    design = draw_design(rng, checkpoints=12)
    levels, planted = seed_levels(design, "misaligned", rng)
    assert planted == {"hallucination": 2, "evil": planted["evil"]} and planted["evil"] in (14, 16)
    mean, se = population_curve(levels["evil"], design)
    big = draw_scores(levels["evil"], rng.normal(0, design.question_sd, 20000), design, rng)
    assert np.allclose(np.nanmean(big, axis=(1, 2)), mean, atol=0.6)
    means = [np.nanmean(draw_scores(levels["evil"], rng.normal(0, design.question_sd, 20), design, rng), axis=(1, 2)) for _ in range(300)]
    assert np.allclose(np.std(means, axis=0), se, rtol=0.2)
    assert np.all((big >= 0) | np.isnan(big)) and np.nanmax(big) <= 100


def test_bench_core_on_two_studies_gives_fractions() -> None:
    bench = _bench()
    results = [bench.run_study(i, 11) for i in range(2)]
    cov = bench.coverage(results)
    for name in ("mean", "onset:consensus", "lead:consensus", "seed_lead"):
        share, count = cov[name]
        assert count > 0 and 0.0 <= share <= 1.0, name
    assert cov["mean"][1] == 2 * (bench.SEEDS + 1) * 2 * bench.CHECKPOINTS  # every checkpoint of every curve
    assert cov["onset:consensus"][1] == 2 * bench.SEEDS * 2  # misaligned runs x traits (normal runs have no onset)
    assert all(r["seed_truth"] is not None and r["seed_truth"] > 0 for r in results)  # hallucination leads evil


def test_lead_ci_is_the_nearest_interval_of_paired_differences() -> None:
    from traitwatch.analysis._onsets import OnsetResult

    lead_o = OnsetResult("r", "j", "a", "d", 2, 1, None, 1.0)
    follow = OnsetResult("r", "j", "b", "d", 16, 8, None, 1.0)
    leader_reps = [2] * 200
    follower_reps = [14] * 4 + [16] * 196  # 2% at 14: 16 alone (98%) is nearer 95% than both
    lr = lead_time(lead_o, follow, leader_reps, follower_reps, np.arange(0, 40, 2), 0.95)
    assert lr.lead_steps == 14 and lr.ci_steps == (14.0, 14.0) and lr.p_leads == 1.0
