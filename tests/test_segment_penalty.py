"""The segmenters' penalty rule (issue 14, part 7): mBIC on the series' own noise unit.

Properties that hold whatever the data: the result does not depend on the series' units, a
clear mean shift is found where it is, pure noise mostly gives no change point, and on trait
curves the noise unit covers training jitter that the standard errors miss.
"""

from __future__ import annotations

import numpy as np
import pytest

from traitwatch.analysis.detectors import Binseg, Curve, Pelt, make_detector
from traitwatch.analysis.detectors.segment import RupturesSegmenter


def shifted(seed: int, n: int = 200, at: int = 120, jump: float = 3.0) -> np.ndarray:
    y = np.random.default_rng(seed).normal(0.0, 1.0, n)
    y[at:] += jump
    return y


@pytest.mark.parametrize("cls", [Binseg, Pelt])
def test_change_points_do_not_depend_on_the_series_units(cls: type[RupturesSegmenter]) -> None:
    rng = np.random.default_rng(3)
    y = np.concatenate([rng.normal(0, 1, 80), rng.normal(2.5, 1, 60), rng.normal(-1, 1, 60)])
    two = np.column_stack([y, rng.normal(0, 1, y.size) + np.r_[np.zeros(100), np.full(100, 3.0)]])
    det = cls()
    base, base2 = det.segment_series(y), det.segment_series(two)
    assert base, "the planted shifts are found at all"
    for a, b in ((0.001, 0.0), (7.0, -40.0), (1e5, 3.0)):
        assert det.segment_series(a * y + b) == base, (a, b)
        assert det.segment_series(two * np.array([a, 1.0 / a]) + b) == base2, (a, b)


def test_a_clear_single_mean_shift_is_found_where_it_is() -> None:
    for seed in range(20):
        for det in (Binseg(), Pelt()):
            cps = det.segment_series(shifted(seed))
            assert any(abs(c - 120) <= 3 for c in cps), (det.name, seed, cps)
            assert len(cps) <= 2, (det.name, seed, cps)


def test_pure_noise_of_length_200_mostly_gives_no_change_point() -> None:
    empty = sum(not Binseg().segment_series(np.random.default_rng(seed).normal(5.0, 2.0, 200)) for seed in range(50))
    assert empty >= 45, f"{50 - empty} of 50 noise series got change points"


def test_missing_values_are_interpolated_not_invented() -> None:
    y = shifted(4)
    gappy = y.copy()
    gappy[[10, 50, 51, 150]] = np.nan
    cps = Binseg().segment_series(gappy)
    assert any(abs(c - 120) <= 3 for c in cps) and len(cps) <= 2, cps


def test_trait_curve_noise_unit_covers_jitter_the_standard_errors_miss() -> None:
    """Standard errors of 0.2 points, but the curve jitters by 4 points per checkpoint
    (training noise): dividing by the SE alone (floored at 1) would cut the flat curve into
    pieces; the first-difference scale keeps it whole, and a 25-point rise is still found."""
    det = make_detector("binseg")
    assert isinstance(det, Binseg)
    steps = np.arange(0, 120, 2)
    pieces = onsets = 0
    for seed in range(30):
        mean = 20 + np.random.default_rng(seed).normal(0, 4, steps.size)
        flat = det.detect(Curve.from_values(steps, mean, np.full(steps.size, 0.2)))
        pieces += len(flat.evidence["changepoints"])
        onsets += flat.step is not None
        assert 2.0 < flat.evidence["sigma"] < 6.0, flat.evidence["sigma"]
        rise = mean + np.where(np.arange(steps.size) >= 35, 25.0, 0.0)
        found = det.detect(Curve.from_values(steps, rise, np.full(steps.size, 0.2)))
        assert found.index is not None and abs(found.index - 35) <= 1, (seed, found)
    assert pieces <= 6 and onsets <= 2, f"{pieces} change points and {onsets} onsets on 30 flat curves"


def test_trait_curve_noise_unit_is_the_standard_error_when_that_is_larger() -> None:
    steps = np.arange(40)
    mean = np.full(40, 30.0) + np.random.default_rng(1).normal(0, 0.5, 40)
    found = Binseg().detect(Curve.from_values(steps, mean, np.full(40, 6.0)))
    assert found.evidence["sigma"] == pytest.approx(6.0)


def test_a_transient_spike_is_a_change_point_but_not_an_onset() -> None:
    """The penalty finds the spike (it is a real change); the onset rule asks that the rise last."""
    steps = np.arange(60)
    noise = np.random.default_rng(7).normal(0, 2.0, 60)
    spike = 10 + noise + np.where((steps >= 20) & (steps < 22), 30.0, 0.0)
    found = Binseg().detect(Curve.from_values(steps, spike, np.full(60, 2.0)))
    assert 20 in found.evidence["changepoints"] and found.step is None, found
    later = spike + np.where(steps >= 40, 25.0, 0.0)
    found = Binseg().detect(Curve.from_values(steps, later, np.full(60, 2.0)))
    assert found.step == 40, found
