"""Trait curves with CIs, onset detectors, lead times, judge agreement."""

from ._agreement import Agreement, Disagreement, combine_judges, disagreements, judge_agreement
from ._onsets import LeadResult, OnsetResult, TraitCurve, consensus
from ._study import StudyAnalysis, analyze, build_detectors, curve_rows, write_csvs
from .detectors import REGISTRY, Curve, Detector, Onset, make_detector

__all__ = [
    "REGISTRY",
    "Agreement",
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
    "judge_agreement",
    "make_detector",
    "write_csvs",
]
