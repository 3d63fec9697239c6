"""A judge-free trait monitor from the model's own activations (persona vectors).

:func:`extract_direction` reads a trait's direction from answers the base model gives under
contrastive system prompts (the suite's ``instructions``); :func:`activation_judge` scores a
checkpoint by the projection of its activations on that direction, one forward pass per
question, many checkpoints per pass. docs/activation.md states the method and when to trust it.
"""

from ._directions import ExtractionSettings, SpanKind, TraitDirection, choose_layer, direction_key, extract_direction
from ._hidden import Span, span_means
from ._judge import METHOD, ActivationJudge, DirectionSource, activation_judge, project

__all__ = [
    "METHOD",
    "ActivationJudge",
    "DirectionSource",
    "ExtractionSettings",
    "Span",
    "SpanKind",
    "TraitDirection",
    "activation_judge",
    "choose_layer",
    "direction_key",
    "extract_direction",
    "project",
    "span_means",
]
