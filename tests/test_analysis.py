import numpy as np
import pytest

from traitwatch.analysis import Curve, consensus, judge_agreement, make_detector
from traitwatch.analysis._agreement import krippendorff_alpha_interval
from traitwatch.analysis._onsets import detect_onsets, lead_time, trait_curve
from traitwatch.analysis._samples import SharedBootstrap, arrange
from traitwatch.analysis.detectors import REGISTRY, Binseg, Bocpd, Cusum, Pelt, Sustained, Threshold
from traitwatch.errors import ConfigError
from traitwatch.store import ScoreRow

ALL = [cls() for cls in REGISTRY.values()]
STEPS = np.arange(0, 40, 2)


def step_curve(at: int, low: float = 2.0, high: float = 60.0, noise: float = 0.0, seed: int = 0) -> Curve:
    rng = np.random.default_rng(seed)
    mean = np.where(STEPS >= at, high, low) + rng.normal(0, noise, STEPS.size)
    return Curve.from_values(STEPS, mean, np.full(STEPS.size, 2.0))


@pytest.mark.parametrize("det", ALL, ids=lambda d: d.name)
def test_clean_step_is_found_at_the_step(det) -> None:
    assert det.detect(step_curve(14)).step == 14


@pytest.mark.parametrize("det", ALL, ids=lambda d: d.name)
def test_noisy_step_is_found_near_the_step(det) -> None:
    found = det.detect(step_curve(20, noise=3.0, seed=1)).step
    assert found is not None and abs(found - 20) <= 4


@pytest.mark.parametrize("det", ALL, ids=lambda d: d.name)
def test_pure_noise_has_no_onset(det) -> None:
    rng = np.random.default_rng(5)
    c = Curve.from_values(STEPS, 5 + rng.normal(0, 2.0, STEPS.size), np.full(STEPS.size, 2.0))
    assert det.detect(c).step is None


def test_ramp_onset_is_early_in_the_ramp() -> None:
    mean = np.clip((STEPS - 10) * 4.0, 0, 80) + 1
    c = Curve.from_values(STEPS, mean, np.full(STEPS.size, 1.5))
    for det in ALL:
        s = det.detect(c).step
        assert s is not None and 10 <= s <= 22, det.name


def test_missing_checkpoint_and_nan_scores_are_skipped() -> None:
    steps = np.array([0, 2, 4, 8, 10, 12, 14, 16])  # step 6 missing
    mean = np.array([1.0, 2.0, np.nan, 1.0, 50.0, 52.0, np.nan, 55.0])
    c = Curve.from_values(steps, mean, np.full(steps.size, 2.0))
    for det in (Threshold(persist=2), Cusum(), Pelt(min_size=1), Binseg(min_size=1), Bocpd(), Sustained(window=1, persist=2)):
        assert det.detect(c).step == 10, det.name


def test_curve_of_length_one_and_empty() -> None:
    one = Curve.from_values([0], [50.0])
    for det in ALL:
        assert det.detect(one).step is None
    nan = Curve.from_values([0, 2], [np.nan, np.nan])
    assert Threshold().detect(nan).step is None
    with pytest.raises(ValueError):
        Curve.from_values([0, 0], [1.0, 2.0])


def test_transient_spike_is_not_a_threshold_onset() -> None:
    mean = np.full(STEPS.size, 2.0)
    mean[5:7] = 60.0  # two checkpoints up, then back
    assert Threshold(persist=3).detect(Curve.from_values(STEPS, mean, np.full(STEPS.size, 2.0))).step is None


def test_online_update_never_alarms_before_the_change() -> None:
    c = step_curve(16, noise=1.0)
    for det in ALL:
        det.reset()
        fired = None
        for s, m, e in zip(c.steps, c.mean, c.se, strict=True):
            got = det.update(int(s), float(m), float(e))
            if got is not None:
                fired = got
                break
        assert fired is not None and fired.alarm_step >= fired.step >= 14, det.name
        assert fired.alarm_step >= 16


def test_registry_builds_and_rejects() -> None:
    assert make_detector("pelt", {"penalty_scale": 3.0}).penalty_scale == 3.0
    with pytest.raises(ConfigError, match="unknown detector"):
        make_detector("nope")
    with pytest.raises(ConfigError, match="has no parameter 'alpha'"):
        make_detector("cusum", {"alpha": 1})


def test_consensus_is_a_reported_step() -> None:
    assert consensus([10, 14, None]) == 10 and consensus([10, 14, 18]) == 14
    assert consensus([None, None, 12]) is None and consensus([]) is None


def _rows(run: str, trait: str, onset: int, n_q: int = 12, seed: int = 0) -> list[ScoreRow]:
    """Binary scores: each question flips to 100 at ``onset`` (+- a small per-question jitter)."""
    rng = np.random.default_rng(seed)
    rows = []
    for q in range(n_q):
        jitter = int(rng.integers(-1, 2)) * 2
        for step in STEPS:
            score = 100.0 if step >= onset + jitter else 0.0
            rows.append(ScoreRow(run, int(step), "s", f"q{q}", 0, "check", trait, score))
    return rows


def test_lead_time_sign_and_bootstrap_ci() -> None:
    rows = _rows("r", "lead", 10) + _rows("r", "follow", 22, seed=1)
    samples = arrange(rows)
    boot = SharedBootstrap({u for ts in samples.values() for u in ts.units}, 1, 200, seed=0)
    dets = [Sustained(), Cusum(), Binseg()]
    results, reps = {}, {}
    for key, ts in samples.items():
        tc = trait_curve(ts, boot, 0.95)
        assert tc.curve.lo is not None and np.all(tc.curve.lo <= tc.curve.mean + 1e-9)
        found, rep = detect_onsets(tc, ts, boot, dets, n_onset_boot=100, confidence=0.95)
        results[key[2]] = next(o for o in found if o.detector == "consensus")
        reps[key[2]] = rep["consensus"]
    lead = lead_time(results["lead"], results["follow"], reps["lead"], reps["follow"], STEPS, 0.95)
    assert lead.lead_steps == results["follow"].step - results["lead"].step
    assert 8 <= lead.lead_steps <= 16 and lead.lead_checkpoints == lead.lead_steps // 2
    assert lead.ci_steps[0] <= lead.lead_steps <= lead.ci_steps[1] and lead.ci_steps[0] > 0
    assert lead.p_leads == 1.0
    rev = lead_time(results["follow"], results["lead"], reps["follow"], reps["lead"], STEPS, 0.95)
    assert rev.lead_steps == -lead.lead_steps and rev.p_leads == 0.0


def test_curve_mean_and_ci_from_samples() -> None:
    rows = [ScoreRow("r", 0, "s", f"q{q}", s, "j", "t", float(10 * q + s)) for q in range(5) for s in range(2)]
    ts = arrange(rows)[("r", "j", "t")]
    assert ts.X.shape == (1, 5, 2)
    boot = SharedBootstrap(ts.units, 2, 400, seed=1)
    tc = trait_curve(ts, boot, 0.9)
    assert tc.curve.mean[0] == pytest.approx(20.5)
    assert tc.curve.lo[0] < 20.5 < tc.curve.hi[0] and 5 < tc.curve.se[0] < 10


def test_krippendorff_alpha_known_values() -> None:
    assert krippendorff_alpha_interval([[1, 1], [2, 2], [3, 3]]) == pytest.approx(1.0)
    # two raters, units (1,2),(2,3),(3,4): hand computed alpha = 1 - Do/De
    values = [[1, 2], [2, 3], [3, 4]]
    pooled = np.array([1, 2, 2, 3, 3, 4], dtype=float)
    n = 6
    d_o = sum(2 * (a - b) ** 2 for a, b in values) / n
    d_e = ((pooled[:, None] - pooled[None, :]) ** 2).sum() / (n * (n - 1))
    assert krippendorff_alpha_interval(values) == pytest.approx(1 - d_o / d_e)
    assert krippendorff_alpha_interval([[5], [None, 3]]) is None


def test_judge_agreement_metrics() -> None:
    rows = []
    for i, (a, b) in enumerate([(0, 10), (50, 40), (100, 90), (20, 30)]):
        rows += [ScoreRow("r", i, "s", "q", 0, "A", "t", float(a)), ScoreRow("r", i, "s", "q", 0, "B", "t", float(b))]
    (ag,) = judge_agreement(rows)
    assert ag.n == 4 and ag.mae == pytest.approx(10.0) and ag.spearman == pytest.approx(1.0)
    assert 0.8 < ag.alpha <= 1.0 and 0.9 < ag.pearson <= 1.0


def test_change_point_metrics_hand_computed() -> None:
    from traitwatch.analysis.metrics import covering, f_measure, partition, true_positives

    assert true_positives([10, 20], [11, 12, 30], margin=5) == {10}
    assert true_positives([10, 12], [11], margin=5) == {10}, "one prediction matches one true point"
    ann = {"a": [50], "b": [52, 80]}
    # predictions {0, 51} ; union truth {0, 50, 52, 80}: TP = {0, 50} -> P = 2/2
    # recall a: {0,50} both hit -> 1 ; b: {0,52,80}: 0 and 52 hit -> 2/3 ; R = 5/6
    f, p, r = f_measure(ann, [51], return_pr=True)
    assert p == pytest.approx(1.0) and r == pytest.approx(5 / 6) and f == pytest.approx(2 * (5 / 6) / (1 + 5 / 6))
    assert f_measure({"a": []}, []) == pytest.approx(1.0), "no change annotated, none predicted"
    assert [list(s) for s in partition([3], 6)] == [[0, 1, 2], [3, 4, 5]]
    # truth [0,50),[50,100) vs prediction [0,40),[40,100): J = 40/50 and 50/60
    assert covering({"a": [50]}, [40], 100) == pytest.approx((50 * 40 / 50 + 50 * 50 / 60) / 100)
    assert covering({"a": [50]}, [50], 100) == pytest.approx(1.0)


def test_segmenters_find_every_change_point() -> None:
    y = np.concatenate([np.zeros(30), np.full(30, 6.0), np.full(30, 2.0)]) + np.random.default_rng(0).normal(0, 1, 90)
    for det in (Pelt(), Binseg(), Bocpd()):
        cps = det.changepoints(y)
        assert any(abs(c - 30) <= 2 for c in cps) and any(abs(c - 60) <= 2 for c in cps), (det.name, cps)
        assert len(cps) <= 4, (det.name, cps)


def test_synthetic_families_are_reproducible_and_labelled() -> None:
    from traitwatch.analysis.synthetic import FAMILIES, make_family

    for fam in FAMILIES:
        a, b = make_family(fam, 3, seed=1), make_family(fam, 3, seed=1)
        assert all(np.array_equal(x.curve.mean, y.curve.mean) for x, y in zip(a, b, strict=True))
        assert all((x.onset_index is None) == (fam in ("none", "spiky", "small")) for x in a)
        for x in a:
            if x.onset_index is not None:
                assert x.latent[x.onset_index] > x.latent[x.onset_index - 1], "the rise starts at the onset"
                assert x.latent.max() - x.latent[0] >= 20 and x.latent[x.onset_index - 1] <= x.latent[0] + 1e-9


@pytest.mark.slow  # runs the whole TCPD benchmark: 8-11 s on 2 cores, the longest test left in make test-fast
def test_tcpd_default_method_beats_the_baseline_and_meets_the_target(capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped default (binseg) on the annotated real series, as bench/tcpd_benchmark.py prints it."""
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "bench"))
    try:
        import tcpd_benchmark
    finally:
        sys.path.pop(0)
    assert tcpd_benchmark.main([]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    import re

    m = re.fullmatch(r"default (\w+): F1 ([\d.]+) cover ([\d.]+); no-change baseline: F1 ([\d.]+) cover ([\d.]+)", last)
    assert m, last
    f1, cover, f0, c0 = map(float, m.groups()[1:])
    assert f1 >= 0.75 and cover >= 0.70 and f1 > f0 and cover > c0


def test_comparisons_across_seeds_and_domains() -> None:
    from traitwatch.analysis import LeadResult, OnsetResult, TraitCurve
    from traitwatch.analysis._compare import domain_table, order_tests, seed_table, sign_test, t_interval, task_convergence_step
    from traitwatch.store import CheckpointRow

    assert sign_test([3, 5, 2, 4, 1, 6]) == pytest.approx(2 * 0.5**6)
    assert sign_test([0, 0]) is None and sign_test([2, -2]) == pytest.approx(1.0)
    lo, hi = t_interval([10, 12, 14], 0.95)
    assert lo == pytest.approx(12 - 4.302653 * 2 / np.sqrt(3), rel=1e-5) and hi == pytest.approx(12 + 4.302653 * 2 / np.sqrt(3), rel=1e-5)
    runs = [{"run_id": f"{d}-strong-s{s}", "domain": d, "level": "strong", "seed": s} for d in ("med", "math") for s in (0, 1, 2)]
    leads = [
        LeadResult(r["run_id"], "j", "hal", "evil", "consensus", 2, 2 + lead, lead, lead // 2, None, None, 1.0)
        for r, lead in zip(runs, [20, 18, 22, 4, -2, 0], strict=True)
    ]
    onsets = [OnsetResult(r["run_id"], "j", "evil", "consensus", 22, 11, None, 1.0) for r in runs]
    seed_on, seed_ld = seed_table(leads, onsets, runs, 0.95)
    med = next(r for r in seed_ld if r["domain"] == "med")
    assert med["seeds"] == 3 and med["lead_steps_mean"] == pytest.approx(20.0) and med["seeds_leader_first"] == 3
    assert med["sign_test_p"] == pytest.approx(0.25)
    assert next(r for r in seed_on if r["domain"] == "math")["onset_mean"] == 22
    tests = {(r["domain"]): r for r in order_tests(leads, runs)}
    assert tests["all"]["runs"] == 6 and tests["all"]["leader_first"] == 4 and tests["all"]["ties"] == 1
    assert tests["math"]["leader_first"] == 1
    steps = np.arange(0, 10, 2)
    curves = [
        TraitCurve(r["run_id"], "j", "evil", Curve.from_values(steps, [0, d, d, d, d] if r["domain"] == "med" else [0, 0.2, 0.2, 0.2, 0.2]))
        for r, d in zip(runs, [40, 40, 40, 0, 0, 0], strict=True)
    ]
    (row,) = domain_table(curves, runs)
    assert row["drift_med"] == pytest.approx(40) and row["drift_math"] == pytest.approx(0.2)
    assert row["ratio_math_over_med"] == pytest.approx(0.005)
    ck = [
        CheckpointRow("r", s, "", "", None, h, None, None, None)
        for s, h in zip(range(0, 12, 2), [3.0, 2.0, 1.2, 1.06, 1.02, 1.0], strict=True)
    ]
    assert task_convergence_step(ck) == 6  # 95% of the 2.0 improvement: loss <= 1.1


def test_combined_judge_disagreements_and_order_by_judge() -> None:
    from traitwatch.analysis import LeadResult, combine_judges, disagreements
    from traitwatch.analysis._study import order_by_judge

    rows = []
    for step, (a, b, c) in enumerate([(10, 30, 90), (80, 60, 50), (0, 0, 100)]):
        rows += [ScoreRow("r", step, "s", "q", 0, j, "t", float(v)) for j, v in (("A", a), ("B", b), ("check", c))]
    rows.append(ScoreRow("r", 9, "s", "q", 0, "A", "t", 50.0))  # only one judge: not combined
    comb = combine_judges(rows, ["A", "B"], "mean")
    assert [(r.step, r.score, r.judge) for r in comb] == [(0, 20.0, "combined-mean"), (1, 70.0, "combined-mean"), (2, 0.0, "combined-mean")]
    assert [r.score for r in combine_judges(rows, ["A", "B", "check"], "median")] == [30.0, 60.0, 0.0]
    top = disagreements(rows, k=1)
    ab = next(d for d in top if (d.judge_a, d.judge_b) == ("A", "B"))
    assert (ab.step, ab.score_a, ab.score_b) == (0, 10.0, 30.0) or (ab.step, ab.score_a, ab.score_b) == (1, 80.0, 60.0)
    assert next(d for d in top if (d.judge_a, d.judge_b) == ("A", "check")).step == 2

    def mk(judge: str, lead: int | None) -> LeadResult:
        return LeadResult("r", judge, "x", "y", "consensus", 2, None if lead is None else 2 + lead, lead, lead, None, None, 1.0)

    verdicts = (
        order_by_judge([mk("A", 4), mk("B", 6)]),
        order_by_judge([mk("A", 4), mk("B", -2)]),
        order_by_judge([mk("A", 4), mk("B", None)]),
    )
    assert [v[0]["verdict"] for v in verdicts] == [
        "leader first under every judge",
        "judges disagree on the order",
        "leader first under every judge that found both onsets",
    ]
