"""One judge from its study spec, whatever its kind.

Why here and not in the pipeline: the spec's kinds and the judges' constructors change
together, and the pipeline should hold a :class:`Judge` without knowing which kind it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from traitwatch.config import ActivationJudgeSpec, CheckJudgeSpec, JudgeSpec, LocalJudgeSpec, ModelSpec, OpenAIJudgeSpec
from traitwatch.models import LoadedModel, load_model

from ._budget import Budget
from ._check import Checker
from ._local import LocalJudge
from ._openai import OpenAIJudge
from ._protocol import Judge

if TYPE_CHECKING:
    from traitwatch.activation import DirectionSource


def build_judge(spec: JudgeSpec, *, base: Callable[[], LoadedModel], budget: Budget, directions: DirectionSource | None = None) -> Judge:
    """The judge a study spec describes.

    Args:
        spec: one entry of ``StudySpec.judges``.
        base: returns the study's loaded base model; called only when a local judge with
            ``local.source: base`` first needs its model.
        budget: the study's spending cap, shared by its paid judges.
        directions: where an activation judge reads or builds its trait directions (the judge
            stage supplies it; without it an activation judge can be built and preflighted only).

    Building loads nothing: a local judge loads its model the first time it needs it, so
    ``build_judge(spec, ...).preflight()`` is cheap for every kind.
    """
    if isinstance(spec, CheckJudgeSpec):
        return Checker(spec.name)
    if isinstance(spec, LocalJudgeSpec):
        ref = spec.local

        def load() -> LoadedModel:
            if ref.source == "base":
                return base()
            return load_model(ModelSpec.model_validate(ref.model_dump()))

        return LocalJudge(
            spec.name,
            load,
            batch_size=spec.batch_size,
            min_mass=spec.min_mass,
            min_prefix_prob=spec.min_prefix_prob,
            response_prefix=spec.response_prefix,
            weak=spec.weak,
        )
    if isinstance(spec, OpenAIJudgeSpec):
        return OpenAIJudge(
            spec.name,
            spec.model,
            base_url=spec.base_url,
            api_key_env=spec.api_key_env,
            api_key_file=spec.api_key_file,
            scale=spec.scale,
            max_concurrency=spec.max_concurrency,
            timeout_s=spec.timeout_s,
            max_retries=spec.max_retries,
            price_input_per_mtok=spec.price_input_per_mtok,
            price_output_per_mtok=spec.price_output_per_mtok,
            min_mass=spec.min_mass,
            budget=budget,
            weak=spec.weak,
            digit_split=spec.digit_split,
        )
    if isinstance(spec, ActivationJudgeSpec):
        from traitwatch.activation import ActivationJudge  # imported here: traitwatch.activation imports the judges' protocol

        return ActivationJudge(
            spec.name,
            base,
            directions,
            span=spec.span,
            batch_size=spec.batch_size,
            adapters_per_batch=spec.adapters_per_batch,
            weak=spec.weak,
        )
    raise TypeError(f"not a judge spec: {type(spec).__name__}")
