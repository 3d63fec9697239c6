"""Direction: which change of a trait counts as its onset, for every detector alike.

Why one place: the detectors are written for a rise (see ``base``). A trait that is high
when good (coherence, alignment) goes bad by declining; rather than give every detector a
second code path, the curve is mirrored (``-score``) so a decline becomes a rise, and the
detector runs unchanged. ``both`` runs the detector on both orientations and keeps the
earlier onset. The onset's step and index are positions on the original curve, so every
table, lead and plot reads them as before; ``evidence["direction"]`` says which way it went,
and level-like evidence values (baseline, threshold, level) are mirrored back to the
trait's own 0-100 scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from .base import Curve, Detector, Onset

Direction = Literal["up", "down", "both"]
DIRECTIONS: tuple[Direction, ...] = ("up", "down", "both")
#: Evidence values that are levels on the curve's scale (mirrored back after a "down" run).
_LEVEL_KEYS = ("baseline", "threshold", "level")


def mirrored(curve: Curve) -> Curve:
    """The curve upside down: means, and CI bounds swapped and negated (se and counts kept)."""
    lo = None if curve.hi is None else -curve.hi
    hi = None if curve.lo is None else -curve.lo
    return Curve(curve.steps, -curve.mean, curve.se, lo, hi, curve.n)


def oriented(curve: Curve, direction: Literal["up", "down"]) -> Curve:
    """The curve as a detector must see it for ``direction`` (a rise in the returned curve)."""
    return curve if direction == "up" else mirrored(curve)


def unmirror_evidence(evidence: Mapping[str, Any]) -> dict[str, Any]:
    """Evidence found on a mirrored curve with its level-like values back on the trait's scale."""
    ev = dict(evidence)
    for key in _LEVEL_KEYS:
        value = ev.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            ev[key] = -float(value)
    return ev


def _unmirror(onset: Onset, direction: Literal["up", "down"]) -> Onset:
    ev = unmirror_evidence(onset.evidence) if direction == "down" else dict(onset.evidence)
    ev["direction"] = direction
    return Onset(onset.detector, onset.step, onset.index, onset.alarm_step, ev)


def detect_directed(detector: Detector, curve: Curve, direction: Direction = "up") -> Onset:
    """``detector``'s onset of ``curve`` for a trait that goes bad in ``direction``.

    ``up`` gives exactly ``detector.detect(curve)`` (plus ``evidence["direction"]``), so rising
    traits keep their results. ``both``: the earlier of the up and down onsets (up on a tie).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
    if direction != "both":
        return _unmirror(detector.detect(oriented(curve, direction)), direction)
    up = _unmirror(detector.detect(curve), "up")
    down = _unmirror(detector.detect(mirrored(curve)), "down")
    if down.step is not None and (up.step is None or down.step < up.step):
        return down
    return up
