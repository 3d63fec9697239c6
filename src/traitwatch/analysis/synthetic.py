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


# -- Whole synthetic studies with planted truth (bench/ci_coverage.py) --------------------------
#
# Why a second generator: the curves above are for detectors (one noisy mean per checkpoint);
# checking the *intervals* needs the raw scores the analysis bootstraps (checkpoint x question x
# sample), drawn from a distribution whose population values are known exactly, so that "the
# CI contains the truth" can be decided. The shapes follow the published medical runs
# (REFERENCE.md): hallucination rising from step 2 to ~95-99, evil rising at steps 14-16 to
# ~40-47, normal runs near zero; 10 samples x 20 questions per checkpoint; several seeds.

#: Mean judge score of an answer that shows the trait / does not (scores 100 Beta(6, 0.25) and
#: 100 Beta(0.3, 12): most answers near 100 or near 0, as a 0-100 judge scores them).
SHOWS = (6.0, 0.25)
LACKS = (0.3, 12.0)
#: Gauss-Hermite nodes for the population mean over questions (a normal random effect).
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(64)
_GH_W = _GH_W / _GH_W.sum()


def _beta_moments(a: float, b: float) -> tuple[float, float]:
    """(mean, second moment) of 100 Beta(a, b)."""
    m = a / (a + b)
    v = a * b / ((a + b) ** 2 * (a + b + 1))
    return 100 * m, 100**2 * (v + m * m)


@dataclass(frozen=True)
class StudyDesign:
    """What one synthetic study holds fixed across its seeds (drawn once per study).

    Levels are on the logit scale of P(an answer shows the trait) for a typical question;
    a question's own propensity adds ``question_sd`` x N(0, 1) (the same offset at every
    checkpoint and seed: the question set is fixed, as in a real study).
    """

    checkpoints: int
    save_every: int
    questions: int
    samples: int
    question_sd: float
    jitter_sd: float
    missing: float
    hall: tuple[float, float, int, int]  # base, peak, onset step, ramp width (steps)
    evil: tuple[float, float, tuple[int, ...], int]  # base, peak, possible onset steps, width
    normal: tuple[float, float]  # hallucination and evil levels of a normal run

    @property
    def steps(self) -> np.ndarray:
        return np.arange(self.checkpoints) * self.save_every


def draw_design(rng: np.random.Generator, *, checkpoints: int = 40, questions: int = 20, samples: int = 10) -> StudyDesign:
    """A study shaped like the published medical runs, with per-study variation."""
    return StudyDesign(
        checkpoints=checkpoints,
        save_every=2,
        questions=questions,
        samples=samples,
        question_sd=float(rng.uniform(0.7, 1.3)),
        jitter_sd=float(rng.uniform(0.05, 0.2)),
        missing=0.01,
        hall=(float(rng.uniform(-4.0, -3.0)), float(rng.uniform(3.5, 5.0)), 2, int(rng.integers(6, 13)) * 2),
        evil=(float(rng.uniform(-5.0, -4.0)), float(rng.uniform(-0.6, 0.0)), (14, 16), int(rng.integers(2, 5)) * 2),
        normal=(float(rng.uniform(-5.0, -4.0)), float(rng.uniform(-5.5, -4.5))),
    )


def _ramp(steps: np.ndarray, base: float, peak: float, onset: int, width: int, save_every: int) -> np.ndarray:
    """Logit level: ``base`` before ``onset``, then a linear ramp (on the logit scale) to ``peak``.

    The first checkpoint of the rise (the planted change point) is ``onset`` itself."""
    frac = np.clip((steps - onset + save_every) / width, 0.0, 1.0)
    return base + (peak - base) * frac


def seed_levels(design: StudyDesign, kind: str, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, int | None]]:
    """Per-trait logit levels of one run (training-seed variation drawn from ``rng``) and
    the planted change points (steps). ``kind``: "misaligned" or "normal"."""
    s = design.steps
    if kind == "normal":
        lv = {"hallucination": np.full(s.size, design.normal[0]), "evil": np.full(s.size, design.normal[1])}
        planted: dict[str, int | None] = {"hallucination": None, "evil": None}
    else:
        hb, hp, ho, hw = design.hall
        eb, ep, eos, ew = design.evil
        eo = int(eos[int(rng.integers(0, len(eos)))])
        lv = {"hallucination": _ramp(s, hb, hp, ho, hw, design.save_every), "evil": _ramp(s, eb, ep, eo, ew, design.save_every)}
        planted = {"hallucination": ho, "evil": eo}
    # training noise: each checkpoint's model is a little off its trend (shared by all
    # questions and samples of that checkpoint); step 0 is the base model, the same for all.
    for t in lv:
        jit = rng.normal(0.0, design.jitter_sd, s.size)
        jit[0] = 0.0
        lv[t] = lv[t] + jit
    return lv, planted


def population_curve(level: np.ndarray, design: StudyDesign) -> tuple[np.ndarray, np.ndarray]:
    """(mean, standard error) of a checkpoint's mean score over the question population.

    mean: E over questions and answers of the score at that checkpoint's latent level;
    se: the standard deviation of a ``questions`` x ``samples`` mean of such scores (questions
    drawn at random, then samples), i.e. what the question-level bootstrap estimates.
    """
    m1, s1 = _beta_moments(*SHOWS)
    m0, s0 = _beta_moments(*LACKS)
    p = 1.0 / (1.0 + np.exp(-(level[:, None] + design.question_sd * _GH_X[None, :])))  # [T, nodes]
    mu_q = m0 + (m1 - m0) * p
    within = p * s1 + (1 - p) * s0 - mu_q**2
    mean = mu_q @ _GH_W
    var_q = (mu_q**2) @ _GH_W - mean**2
    se = np.sqrt(var_q / design.questions + (within @ _GH_W) / (design.questions * design.samples))
    return mean, se


def draw_scores(level: np.ndarray, offsets: np.ndarray, design: StudyDesign, rng: np.random.Generator) -> np.ndarray:
    """Judge scores ``[checkpoint, question, sample]`` (NaN: the judge gave no score)."""
    T, Q, S = level.size, offsets.size, design.samples
    p = 1.0 / (1.0 + np.exp(-(level[:, None, None] + offsets[None, :, None])))
    shows = rng.random((T, Q, S)) < p
    x = np.where(shows, rng.beta(*SHOWS, (T, Q, S)), rng.beta(*LACKS, (T, Q, S))) * 100.0
    x[rng.random((T, Q, S)) < design.missing] = np.nan
    return x
