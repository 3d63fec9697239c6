"""Metric names: every name a tracker shows is made here, and only here.

Why one module: three trackers must show the same curve under the same name, and
docs/trackers.md lists these functions' patterns; a name changed here changes everywhere.
Names are paths separated by ``/`` (MLflow, TensorBoard and W&B all group charts by the first
part); parts are made of letters, digits and ``_ . -`` (MLflow's and TensorBoard's safe set),
other characters become ``_``.
"""

from __future__ import annotations

import re

#: The held-out loss of each checkpoint (``checkpoints.heldout_loss``), per step.
HELDOUT_LOSS = "loss/heldout"
#: The training loss at each checkpoint (``checkpoints.train_loss``), per step.
TRAIN_LOSS = "loss/train"
#: The name of the extra tracker run that holds study-level numbers (intervention summary).
SUMMARY_RUN = "study-summary"

#: Per (judge, trait) and checkpoint: the curve's mean and the bounds of its bootstrap CI.
TRAIT_STATS = ("mean", "ci_low", "ci_high")
#: Per (judge, trait, detector): the onset step, its bootstrap CI and the share of replicates with an onset.
ONSET_STATS = ("step", "ci_low", "ci_high", "found_fraction")
#: Per (judge, lead pair, detector): the lead in steps and checkpoints, its CI (steps) and P(leader first).
LEAD_STATS = ("steps", "checkpoints", "ci_low", "ci_high", "p_leader_first")

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def part(text: str) -> str:
    """One path part of a metric name: characters outside letters, digits and ``_ . -`` become ``_``."""
    return _UNSAFE.sub("_", text) or "_"


def pair(leader: str, follower: str) -> str:
    """A lead pair as one part: ``<leader>_over_<follower>`` (the lead of leader over follower)."""
    return f"{part(leader)}_over_{part(follower)}"


def trait(judge: str, trait_name: str, stat: str) -> str:
    """``trait/<judge>/<trait>/<stat>``, stat one of :data:`TRAIT_STATS`."""
    return f"trait/{part(judge)}/{part(trait_name)}/{stat}"


def alarm(judge: str, trait_name: str, detector: str) -> str:
    """``alarm/<judge>/<trait>/<detector>``: 0 before the live monitor's alarm, 1 from its step on."""
    return f"alarm/{part(judge)}/{part(trait_name)}/{part(detector)}"


def onset(judge: str, trait_name: str, detector: str, stat: str) -> str:
    """``onset/<judge>/<trait>/<detector>/<stat>``, stat one of :data:`ONSET_STATS`."""
    return f"onset/{part(judge)}/{part(trait_name)}/{part(detector)}/{stat}"


def lead(judge: str, leader: str, follower: str, detector: str, stat: str) -> str:
    """``lead/<judge>/<leader>_over_<follower>/<detector>/<stat>``, stat one of :data:`LEAD_STATS`."""
    return f"lead/{part(judge)}/{pair(leader, follower)}/{part(detector)}/{stat}"


def intervention(judge: str, leader: str, follower: str, policy: str, column: str) -> str:
    """``intervention/<judge>/<leader>_over_<follower>/<policy>/<column>``: a numeric column of
    ``interventions.csv`` (per run) or ``interventions_summary.csv`` (the study-summary run)."""
    return f"intervention/{part(judge)}/{pair(leader, follower)}/{part(policy)}/{part(column)}"
