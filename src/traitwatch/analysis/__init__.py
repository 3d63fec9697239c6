"""Trait curves with CIs, onset detectors, lead times, judge agreement."""

from ._agreement import Agreement, Disagreement, combine_judges, disagreements, judge_agreement, krippendorff_alpha_interval
from ._onsets import LeadResult, OnsetResult, TraitCurve, consensus, detect_onsets, lead_time, trait_curve
from ._samples import SharedBootstrap, TraitSamples, arrange
from ._study import StudyAnalysis, analyze, build_detectors, write_csvs
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
    "SharedBootstrap",
    "StudyAnalysis",
    "TraitCurve",
    "TraitSamples",
    "analyze",
    "arrange",
    "build_detectors",
    "consensus",
    "detect_onsets",
    "judge_agreement",
    "krippendorff_alpha_interval",
    "lead_time",
    "make_detector",
    "trait_curve",
    "write_csvs",
]
