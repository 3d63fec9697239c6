"""When a live run raises an alarm: online detectors fed one checkpoint at a time.

Why a policy object apart from evaluation: deciding "is this a rise?" must use only the
checkpoints seen so far (what a live monitor can know), the same way for a run trained by
traitwatch, a Hugging Face Trainer, or a folder a watcher follows. It holds no model and no
store, so it is tested on plain numbers and replayed exactly after a restart: feeding it the
stored checkpoints again gives the same state, and a checkpoint it has seen is ignored.

Rule (per run and alarm rule): the rule's detector, updated with each checkpoint's mean score,
has placed an onset at or before this checkpoint, AND this checkpoint's mean is at least
``min_rise`` points above step 0's, for ``consecutive`` checkpoints in a row. The alarm names
the detector's onset step and the last safe checkpoint: the last one seen before the onset.

Direction (``analysis.directions``: coherence and alignment go bad by falling): a ``down``
rule feeds its detector the negated mean and asks for a fall of ``min_rise`` points, so the
detectors stay written for rises (as in ``analysis.detectors.direction``); ``both`` runs one
detector per orientation and alarms on whichever fires first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from traitwatch.analysis import Detector, make_detector

#: (judge, trait) -> (mean score 0-100, standard error) at one checkpoint.
CheckpointMeans = Mapping[tuple[str, str], tuple[float, float]]


@dataclass(frozen=True)
class Rule:
    """An alarm rule with its judge resolved (see ``MonitorSpec.alarms``)."""

    trait: str
    judge: str
    detector: str
    params: Mapping[str, Any] = field(default_factory=dict)
    min_rise: float = 10.0
    consecutive: int = 1
    direction: str = "up"  # up | down | both (the trait's analysis direction)


@dataclass(frozen=True)
class Alarm:
    """A raised alarm. ``step`` is the checkpoint at which the monitor knew; ``onset_step`` is
    where the detector places the start of the rise (never later than ``step``)."""

    run_id: str
    step: int
    judge: str
    trait: str
    detector: str
    onset_step: int | None
    last_safe_step: int | None
    baseline: float
    value: float
    direction: str = "up"  # which way the trait moved: up (rose) or down (fell)

    @property
    def message(self) -> str:
        change, moved = ("fall", "fell") if self.direction == "down" else ("rise", "rose")
        safe = f"none (the {change} began at the first checkpoint)" if self.last_safe_step is None else f"step {self.last_safe_step}"
        return (
            f"{self.trait} {moved} in run {self.run_id} (judge {self.judge}, detector {self.detector}): "
            f"{self.value:.1f} at step {self.step} vs {self.baseline:.1f} at step 0; onset at step {self.onset_step}; "
            f"last safe checkpoint: {safe}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"message": self.message}


@dataclass
class _State:
    detectors: list[tuple[float, Detector]]  # (sign the mean is fed with, detector): +1 up, -1 down
    steps: list[int] = field(default_factory=list)
    baseline: float | None = None
    onset: int | None = None
    sign: float = 1.0  # the orientation whose detector placed the onset
    streak: int = 0
    fired: bool = False


class AlarmPolicy:
    """Feed checkpoints in step order with :meth:`observe`; it returns the alarms they raise."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = list(rules)
        self._state: dict[tuple[str, int], _State] = {}

    def _get(self, run_id: str, i: int) -> _State:
        key = (run_id, i)
        if key not in self._state:
            rule = self.rules[i]
            signs = {"up": [1.0], "down": [-1.0], "both": [1.0, -1.0]}[rule.direction]
            self._state[key] = _State([(sign, make_detector(rule.detector, dict(rule.params))) for sign in signs])
        return self._state[key]

    def last_step(self, run_id: str) -> int | None:
        """The latest checkpoint this policy has seen for a run (None: none yet)."""
        seen = [s.steps[-1] for (r, _), s in self._state.items() if r == run_id and s.steps]
        return max(seen) if seen else None

    def observe(self, run_id: str, step: int, means: CheckpointMeans) -> list[Alarm]:
        """Add one checkpoint of a run; returns the alarms raised at it (each rule fires once a run).

        A checkpoint at or before one already seen for the run is ignored (replays are safe);
        a rule whose (judge, trait) has no finite mean at this checkpoint skips it.
        """
        out = []
        for i, rule in enumerate(self.rules):
            st = self._get(run_id, i)
            if st.steps and step <= st.steps[-1]:
                continue
            mean, se = means.get((rule.judge, rule.trait), (math.nan, math.nan))
            if not math.isfinite(mean):
                continue
            st.steps.append(step)
            if st.baseline is None:
                st.baseline = mean
            for sign, detector in st.detectors:
                found = detector.update(step, sign * mean, se if math.isfinite(se) else 0.0)
                if found is not None and st.onset is None:
                    st.onset, st.sign = found.step, sign
            risen = st.onset is not None and st.sign * (mean - st.baseline) >= rule.min_rise
            st.streak = st.streak + 1 if risen else 0
            if st.fired or st.streak < rule.consecutive:
                continue
            st.fired = True
            before = [s for s in st.steps if st.onset is not None and s < st.onset]
            out.append(
                Alarm(
                    run_id,
                    step,
                    rule.judge,
                    rule.trait,
                    rule.detector,
                    st.onset,
                    before[-1] if before else None,
                    st.baseline,
                    mean,
                    "down" if st.sign < 0 else "up",
                )
            )
        return out
