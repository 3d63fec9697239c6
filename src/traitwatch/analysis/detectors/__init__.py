"""Onset detectors: one contract (``base.Detector``), one file per method, a name registry.

The study YAML names detectors by registry name with keyword parameters
(``analysis.detectors: [{name: pelt, params: {penalty_scale: 2}}]``).
"""

from __future__ import annotations

import inspect
from typing import Any

from traitwatch.errors import ConfigError

from .base import Curve, Detector, Onset, baseline, robust_sigma
from .binseg import Binseg
from .bocpd import Bocpd
from .cusum import Cusum
from .direction import DIRECTIONS, Direction, detect_directed, mirrored, oriented, unmirror_evidence
from .pelt import Pelt
from .segment import Segmenter, interpolate_missing, standardize
from .sustained import Sustained
from .threshold import Threshold

REGISTRY: dict[str, type[Detector]] = {cls.name: cls for cls in (Threshold, Sustained, Cusum, Pelt, Binseg, Bocpd)}


def make_detector(name: str, params: dict[str, Any] | None = None) -> Detector:
    """Build a detector by registry name; unknown names or parameters are ConfigErrors."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown detector '{name}'", where="analysis.detectors", fix=f"use one of: {', '.join(sorted(REGISTRY))}")
    cls = REGISTRY[name]
    params = dict(params or {})
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    bad = [p for p in params if p not in allowed]
    if bad:
        raise ConfigError(
            f"detector '{name}' has no parameter {', '.join(repr(b) for b in bad)}",
            where="analysis.detectors",
            fix=f"its parameters are: {', '.join(allowed)}",
        )
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(str(exc), where=f"analysis.detectors[{name}]", fix="check the parameter values") from None


__all__ = [
    "REGISTRY",
    "Binseg",
    "Bocpd",
    "Curve",
    "Cusum",
    "DIRECTIONS",
    "Detector",
    "Direction",
    "Onset",
    "Pelt",
    "Segmenter",
    "Sustained",
    "Threshold",
    "baseline",
    "detect_directed",
    "interpolate_missing",
    "make_detector",
    "mirrored",
    "oriented",
    "unmirror_evidence",
    "robust_sigma",
    "standardize",
]
