"""The live monitor's policy and actions: which checkpoints to evaluate, online detectors, alarm
rules, what an alarm does.

Evaluation of a checkpoint (generate + judge on the probe set, stored like any answer) lives
in ``traitwatch.pipeline`` (it writes the store); the Hugging Face callback in
``traitwatch.hf``; the folder watcher behind ``traitwatch watch`` in the pipeline too.
"""

from ._actions import STOP_REQUEST, act, request_stop, stop_requested
from ._cadence import Cadence
from ._policy import Alarm, AlarmPolicy, CheckpointMeans, Rule

__all__ = ["STOP_REQUEST", "Alarm", "Cadence", "AlarmPolicy", "CheckpointMeans", "Rule", "act", "request_stop", "stop_requested"]
