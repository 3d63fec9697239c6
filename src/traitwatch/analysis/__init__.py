"""Trait curves with CIs, onset detectors, lead times, judge agreement."""

from ._agreement import Agreement, Disagreement, combine_judges, disagreements, judge_agreement
from ._interventions import AlarmReplay, AlarmSettings, alarm_settings, intervention_tables, replay_alarm
from ._onsets import LeadResult, OnsetResult, TraitCurve, consensus
from ._study import StudyAnalysis, analyze, build_detectors, curve_rows, write_csvs
from .detectors import REGISTRY, Curve, Detector, Onset, make_detector

__all__ = [
    "REGISTRY",
    "Agreement",
    "AlarmReplay",
    "AlarmSettings",
    "alarm_settings",
    "Disagreement",
    "combine_judges",
    "disagreements",
    "Curve",
    "Detector",
    "LeadResult",
    "Onset",
    "OnsetResult",
    "StudyAnalysis",
    "TraitCurve",
    "analyze",
    "build_detectors",
    "consensus",
    "curve_rows",
    "intervention_tables",
    "judge_agreement",
    "make_detector",
    "replay_alarm",
    "write_csvs",
]
