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
from functools import partial

import numpy as np

from traitwatch.store import ScoreColumns, ScoreRow

from ._agreement import _lex_ids

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


def arrange(rows: Iterable[ScoreRow] | ScoreColumns) -> dict[tuple[str, str, str], TraitSamples]:
    """Group scores into TraitSamples per (run, judge, trait), keys in sorted order.

    Each group gets its steps sorted, its units (suite, question_id) sorted, and
    ``X[step, unit, sample]`` (samples 0..max sample of the group), NaN where no score (a None
    score is not written); when the same (run, judge, trait, step, unit, sample) is scored more
    than once, the last score in row order wins.

    Why numpy on columns: at paper scale there are millions of scores, and a dict of lists of
    rows per group would hold a Python object per score. Rows are ordered by group with one
    stable argsort of integer ids, and each group is filled with vectorised indexing. A list of
    ``ScoreRow`` is converted to columns first, so both inputs share one definition.
    """
    cols = rows if isinstance(rows, ScoreColumns) else ScoreColumns.from_rows(rows)
    n = len(cols)
    if n == 0:
        return {}
    # Dense ids in sorted (run, judge, trait) and (suite, question_id) order; codes are made
    # one column at a time inside _lex_ids, so at most one is held besides the key.
    group, n_groups, group_row = _lex_ids([partial(_coded, cols, f) for f in ("run_id", "judge", "trait")], n)
    unit, _, unit_row = _lex_ids([partial(_coded, cols, f) for f in ("suite", "question_id")], n)
    order = np.argsort(group, kind="stable")  # by group; row order kept within a group
    ends = np.cumsum(np.bincount(group, minlength=n_groups))
    del group
    out: dict[tuple[str, str, str], TraitSamples] = {}
    for g in range(n_groups):
        idx = order[(ends[g - 1] if g else 0) : ends[g]]
        first = int(group_row[g])
        key = (str(cols.run_id[first]), str(cols.judge[first]), str(cols.trait[first]))
        steps, si = np.unique(cols.step[idx], return_inverse=True)
        units, ui = np.unique(unit[idx], return_inverse=True)
        sample = cols.sample[idx]
        X = np.full((steps.size, units.size, int(sample.max()) + 1), np.nan)
        score = cols.score[idx]
        ok = ~np.isnan(score)
        si, ui, sample, score = si.reshape(-1)[ok], ui.reshape(-1)[ok], sample[ok], score[ok]
        last = _last_of_each(np.ravel_multi_index((si, ui, sample), X.shape, mode="wrap"))
        X[si[last], ui[last], sample[last]] = score[last]
        names = tuple((str(cols.suite[r]), str(cols.question_id[r])) for r in unit_row[units].tolist())
        out[key] = TraitSamples(key[0], key[1], key[2], steps.astype(int), names, X)
    return out


def _coded(cols: ScoreColumns, name: str) -> tuple[np.ndarray, int]:
    """A text field's codes (in sorted order of its values) and the number of values."""
    codes, levels = cols.codes(name)
    return codes, len(levels)


def _last_of_each(keys: np.ndarray) -> np.ndarray:
    """Positions of the last occurrence of each distinct key. Why: numpy does not define which
    of several assignments to one element wins, and "the last score wins" is the rule."""
    _, first_from_end = np.unique(keys[::-1], return_index=True)
    return keys.size - 1 - first_from_end


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
