"""Trait curves with CIs, onset detectors, lead times, judge agreement."""

from ._agreement import Agreement, Disagreement, combine_judges, disagreements, judge_agreement
from ._interventions import AlarmReplay, AlarmSettings, alarm_settings, intervention_tables, replay_alarm
from ._misaligned import misaligned_indicator, misaligned_rate
from ._onsets import LeadResult, OnsetResult, TraitCurve, consensus
from ._peaks import CurveShape
from ._study import StudyAnalysis, analyze, build_detectors, curve_rows, write_csvs
from ._suite_curves import SuiteCurve
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
    "CurveShape",
    "Detector",
    "LeadResult",
    "Onset",
    "OnsetResult",
    "StudyAnalysis",
    "SuiteCurve",
    "TraitCurve",
    "analyze",
    "build_detectors",
    "consensus",
    "curve_rows",
    "intervention_tables",
    "judge_agreement",
    "make_detector",
    "misaligned_indicator",
    "misaligned_rate",
    "replay_alarm",
    "write_csvs",
]
