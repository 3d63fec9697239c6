"""A trait's direction (up | down | both) honoured by every detector, point onsets and bootstrap CIs."""

import numpy as np
import pytest
from pydantic import ValidationError

from traitwatch.analysis._onsets import detect_onsets, detect_onsets_directed, trait_curve
from traitwatch.analysis._samples import SharedBootstrap, arrange
from traitwatch.analysis.detectors import REGISTRY, Curve, Sustained, detect_directed, mirrored
from traitwatch.config import AnalysisSpec
from traitwatch.store import ScoreRow

STEPS = np.arange(0, 40, 2)


def level_curve(at: int, before: float, after: float, noise: float = 0.0, seed: int = 0) -> Curve:
    rng = np.random.default_rng(seed)
    mean = np.where(STEPS >= at, after, before) + rng.normal(0, noise, STEPS.size)
    return Curve.from_values(STEPS, mean, np.full(STEPS.size, 2.0))


@pytest.mark.parametrize("cls", list(REGISTRY.values()), ids=lambda c: c.name)
def test_every_detector_finds_a_decline_only_when_told_down(cls) -> None:
    det = cls()
    falling = level_curve(16, 90.0, 35.0, noise=1.0)
    down = detect_directed(det, falling, "down")
    assert down.step is not None and 12 <= down.step <= 18, down
    assert down.evidence["direction"] == "down"
    assert detect_directed(det, falling, "up").step is None
    both = detect_directed(det, falling, "both")
    assert both.step == down.step and both.evidence["direction"] == "down"


@pytest.mark.parametrize("cls", list(REGISTRY.values()), ids=lambda c: c.name)
def test_up_is_the_detector_unchanged_and_both_takes_the_earlier_change(cls) -> None:
    det = cls()
    rising = level_curve(10, 5.0, 60.0, noise=1.0, seed=3)
    plain = det.detect(rising)
    up = detect_directed(det, rising, "up")
    assert (up.step, up.index, up.alarm_step) == (plain.step, plain.index, plain.alarm_step)
    assert {k: v for k, v in up.evidence.items() if k != "direction"} == plain.evidence
    assert detect_directed(det, rising, "down").step is None
    # a fall at step 8 then a rise far above the start at step 24: "both" reports the fall
    mean = np.where(STEPS >= 8, 20.0, 50.0)
    mean = np.where(STEPS >= 24, 95.0, mean)
    updown = Curve.from_values(STEPS, mean, np.full(STEPS.size, 2.0))
    b = detect_directed(det, updown, "both")
    assert b.evidence["direction"] == "down" and b.step is not None and b.step <= 10


def test_mirrored_levels_are_reported_on_the_trait_scale() -> None:
    falling = level_curve(16, 90.0, 35.0)
    m = mirrored(falling)
    assert np.allclose(m.mean, -falling.mean) and np.allclose(m.se, falling.se)
    down = detect_directed(Sustained(), falling, "down")
    assert down.evidence["baseline"] == pytest.approx(90.0)
    assert down.evidence["level"] == pytest.approx(80.0)  # baseline - delta: the line the curve fell below
    with pytest.raises(ValueError, match="direction"):
        detect_directed(Sustained(), falling, "sideways")  # type: ignore[arg-type]


def _falling_rows(trait: str, onset: int, n_q: int = 12, seed: int = 0) -> list[ScoreRow]:
    """Scores that fall from ~90 to ~40 at ``onset`` (+- a per-question jitter)."""
    rng = np.random.default_rng(seed)
    rows = []
    for q in range(n_q):
        jitter = int(rng.integers(-1, 2)) * 2
        for step in STEPS:
            score = 40.0 if step >= onset + jitter else 90.0
            rows.append(ScoreRow("r", int(step), "s", f"q{q}", 0, "j", trait, score + float(rng.normal(0, 3))))
    return rows


def test_directed_onsets_have_bootstrap_cis_in_the_right_orientation() -> None:
    samples = arrange(_falling_rows("coherence", 20))
    ts = samples[("r", "j", "coherence")]
    boot = SharedBootstrap(set(ts.units), 1, 200, seed=0)
    dets = [cls() for cls in REGISTRY.values()]
    tc = trait_curve(ts, boot, 0.95)
    down, reps = detect_onsets_directed(tc, ts, boot, dets, direction="down", n_onset_boot=100, confidence=0.95)
    cons = down[-1]
    assert cons.detector == "consensus" and cons.direction == "down"
    assert cons.step is not None and 16 <= cons.step <= 22
    assert cons.ci is not None and cons.ci[0] <= cons.step <= cons.ci[1] and cons.found_fraction > 0.9
    assert len(reps["consensus"]) == 100
    up, _ = detect_onsets_directed(tc, ts, boot, dets, direction="up", n_onset_boot=100, confidence=0.95)
    assert all(o.step is None for o in up) and all(o.direction == "up" for o in up)
    plain, _ = detect_onsets(tc, ts, boot, dets, n_onset_boot=100, confidence=0.95)
    assert [(o.step, o.ci) for o in plain] == [(o.step, o.ci) for o in up]
    both, both_reps = detect_onsets_directed(tc, ts, boot, dets, direction="both", n_onset_boot=100, confidence=0.95)
    assert both[-1].step == cons.step and both[-1].direction == "both"
    assert [o.step for o in both[:-1]] == [o.step for o in down[:-1]]
    assert both_reps["consensus"] == reps["consensus"]


def test_direction_config_defaults_and_overrides() -> None:
    a = AnalysisSpec()
    assert a.direction("coherence") == "down" and a.direction("aligned") == "down" and a.direction("evil") == "up"
    b = AnalysisSpec(directions={"coherence": "both", "evil": "down"})
    assert b.direction("coherence") == "both" and b.direction("evil") == "down" and b.direction("coherent") == "down"
    with pytest.raises(ValidationError):
        AnalysisSpec(directions={"evil": "sideways"})
