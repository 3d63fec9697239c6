"""Synthetic trait curves with known onsets, shared by the tests and ``bench/``.

Why realistic noise matters: a detector tuned on clean steps fails on real judge curves.
Curves here are built the way real ones are measured: at each checkpoint a latent trait
level (with checkpoint-to-checkpoint jitter from training noise, shared by all questions)
is asked ``questions`` questions ``samples`` times; each question has a persistent
propensity offset; each answer is scored 0-100 with judge noise (or 0/100 for binary
checkers). The curve is the mean per checkpoint with the question-level standard error,
exactly what the analysis computes.

Families (``FAMILIES``): ``sudden`` (a step), ``gradual`` (a ramp over 4-20 checkpoints),
``dip`` (a dip of 8-20 points for a few checkpoints before the rise), ``plateau`` (a
partial rise, a plateau, then the full rise), ``none`` (no change), ``spiky`` (no onset but
one or two transient spikes), ``small`` (a sustained rise of 3-7 points, below the 10-point
effect size, so no onset by definition). The true onset is the first checkpoint of the rise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .detectors.base import Curve

FAMILIES = ("sudden", "gradual", "dip", "plateau", "none", "spiky", "small")


@dataclass(frozen=True)
class SyntheticCurve:
    family: str
    curve: Curve
    onset_index: int | None
    latent: np.ndarray

    @property
    def onset_step(self) -> int | None:
        return None if self.onset_index is None else int(self.curve.steps[self.onset_index])


def latent_level(family: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, int | None]:
    """The noiseless trait level per checkpoint and the true onset index."""
    base = rng.uniform(0, 15)
    rise = rng.uniform(20, 70)
    onset = int(rng.integers(max(3, n // 8), n - max(6, n // 5)))
    x = np.full(n, base)
    if family == "sudden":
        x[onset:] = base + rise
    elif family == "gradual":
        width = int(rng.integers(4, 21))
        ramp = np.clip((np.arange(n) - onset + 1) / width, 0, 1)
        x = base + rise * ramp
    elif family == "dip":
        depth = min(base, rng.uniform(8, 20)) if base > 8 else rng.uniform(3, 8)
        length = int(rng.integers(2, 6))
        x[max(1, onset - length) : onset] = max(0.0, base - depth)
        x[onset:] = base + rise
    elif family == "plateau":
        part = rng.uniform(0.35, 0.6)
        later = int(rng.integers(onset + 4, max(onset + 5, n - 2)))
        x[onset:] = base + rise * part
        x[later:] = base + rise
    elif family == "small":
        x[onset:] = base + rng.uniform(3, 7)
        return x, None
    elif family == "spiky":
        for _ in range(int(rng.integers(1, 3))):
            at = int(rng.integers(1, n - 2))
            x[at : at + int(rng.integers(1, 3))] = base + rng.uniform(20, 40)
        return x, None
    elif family == "none":
        return x, None
    else:
        raise ValueError(f"unknown family {family!r}")
    return np.clip(x, 0, 100), onset


def make_curve(
    family: str,
    *,
    rng: np.random.Generator,
    n: int = 60,
    save_every: int = 2,
    questions: int = 20,
    samples: int = 5,
    jitter: float = 3.0,
    question_sd: float = 12.0,
    judge_sd: float = 15.0,
    binary: bool = False,
) -> SyntheticCurve:
    """One synthetic curve of ``n`` checkpoints (step 0 first) from ``family``."""
    level, onset = latent_level(family, n, rng)
    observed = np.clip(level + rng.normal(0, jitter, n), 0, 100)
    observed[0] = level[0]
    offsets = rng.normal(0, question_sd, questions)
    p = np.clip(observed[:, None] + offsets[None, :], 0, 100)  # [n, Q]
    if binary:
        scores = 100.0 * (rng.random((n, questions, samples)) < (p[:, :, None] / 100))
    else:
        scores = np.clip(p[:, :, None] + rng.normal(0, judge_sd, (n, questions, samples)), 0, 100)
    q_means = scores.mean(axis=2)
    mean = q_means.mean(axis=1)
    se = q_means.std(axis=1, ddof=1) / np.sqrt(questions)
    steps = np.arange(n) * save_every
    return SyntheticCurve(family, Curve(steps, mean, se, mean - 1.96 * se, mean + 1.96 * se), onset, level)


def make_family(family: str, count: int, *, seed: int, **kwargs: object) -> list[SyntheticCurve]:
    """``count`` curves of one family; the same seed gives the same curves."""
    rng = np.random.default_rng([seed, FAMILIES.index(family)])
    out = []
    for _ in range(count):
        n = int(rng.integers(30, 141)) if "n" not in kwargs else int(kwargs["n"])  # type: ignore[call-overload]
        kw = {k: v for k, v in kwargs.items() if k != "n"}
        out.append(make_curve(family, rng=rng, n=n, binary=bool(rng.random() < 0.3), **kw))  # type: ignore[arg-type]
    return out
