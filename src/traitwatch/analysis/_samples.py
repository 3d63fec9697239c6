"""Trait scores arranged for statistics, and a bootstrap shared across traits.

Why a shared bootstrap: the unit of evidence is the *question* (a question that happens to
provoke the trait does so at every checkpoint), so a replicate resamples questions (then
samples within each question) once and applies that draw to every checkpoint and every
trait scored on the same answers. Per-checkpoint CIs, onset CIs and lead-time CIs all come
from the same replicates, so a lead's CI reflects the real pairing of its two curves.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from traitwatch.store import ScoreRow

Unit = tuple[str, str]  # (suite, question_id)


@dataclass(frozen=True)
class TraitSamples:
    """Scores of one (run, judge, trait): ``X[t, q, s]`` = sample s of question q at step t (NaN = missing)."""

    run_id: str
    judge: str
    trait: str
    steps: np.ndarray
    units: tuple[Unit, ...]
    X: np.ndarray

    def means(self) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            counts = np.isfinite(self.X).sum(axis=(1, 2))
            sums = np.nansum(self.X, axis=(1, 2))
            return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)

    def counts(self) -> np.ndarray:
        return np.isfinite(self.X).sum(axis=(1, 2))


def arrange(rows: Iterable[ScoreRow]) -> dict[tuple[str, str, str], TraitSamples]:
    """Group score rows into TraitSamples per (run, judge, trait)."""
    groups: dict[tuple[str, str, str], list[ScoreRow]] = defaultdict(list)
    for r in rows:
        groups[(r.run_id, r.judge, r.trait)].append(r)
    out = {}
    for key, rs in groups.items():
        steps = np.array(sorted({r.step for r in rs}), dtype=int)
        units = tuple(sorted({(r.suite, r.question_id) for r in rs}))
        n_samples = max(r.sample for r in rs) + 1
        X = np.full((steps.size, len(units), n_samples), np.nan)
        si = {s: i for i, s in enumerate(steps)}
        ui = {u: i for i, u in enumerate(units)}
        for r in rs:
            if r.score is not None:
                X[si[r.step], ui[(r.suite, r.question_id)], r.sample] = r.score
        out[key] = TraitSamples(key[0], key[1], key[2], steps, units, X)
    return out


class SharedBootstrap:
    """Replicate draws of questions (per suite) and samples, shared by every trait curve."""

    def __init__(self, units: Iterable[Unit], n_samples: int, n_boot: int, seed: int) -> None:
        by_suite: dict[str, list[str]] = defaultdict(list)
        for suite, q in sorted(set(units)):
            by_suite[suite].append(q)
        self.by_suite = dict(by_suite)
        self.n_boot = n_boot
        self.n_samples = max(1, n_samples)
        rng = np.random.default_rng(seed)
        self.q_draw: dict[str, np.ndarray] = {}
        self.s_draw: dict[str, np.ndarray] = {}
        for suite, qs in self.by_suite.items():
            self.q_draw[suite] = rng.integers(0, len(qs), size=(n_boot, len(qs)))
            self.s_draw[suite] = rng.integers(0, self.n_samples, size=(n_boot, len(qs), self.n_samples))

    def replicate_means(self, ts: TraitSamples, n: int | None = None) -> np.ndarray:
        """Bootstrap replicate curves ``[n, steps]`` (NaN where a replicate has no valid score)."""
        n = self.n_boot if n is None else min(n, self.n_boot)
        pos = {u: i for i, u in enumerate(ts.units)}
        S = ts.X.shape[2]
        cols_q: list[np.ndarray] = []
        cols_s: list[np.ndarray] = []
        for suite, qs in self.by_suite.items():
            present = np.array([pos.get((suite, q), -1) for q in qs])
            if np.all(present < 0):
                continue
            qi = present[self.q_draw[suite][:n]]  # [n, Qs] positions in ts (or -1)
            si = self.s_draw[suite][:n] % S  # [n, Qs, samples]
            cols_q.append(qi)
            cols_s.append(si[:, :, :S])
        if not cols_q:
            return np.full((n, ts.steps.size), np.nan)
        qi = np.concatenate(cols_q, axis=1)
        si = np.concatenate(cols_s, axis=1)
        Xp = np.concatenate([ts.X, np.full(ts.X.shape[:1] + (1, S), np.nan)], axis=1)  # index -1 -> NaN column
        out = np.empty((n, ts.steps.size))
        for b in range(n):
            vals = Xp[:, qi[b][:, None], si[b]]  # [T, Q, S]
            cnt = np.isfinite(vals).sum(axis=(1, 2))
            with np.errstate(invalid="ignore"):
                out[b] = np.where(cnt > 0, np.nansum(vals, axis=(1, 2)) / np.maximum(cnt, 1), np.nan)
        return out
