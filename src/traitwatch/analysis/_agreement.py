"""Agreement between judges on the same answers: correlations, MAE, Krippendorff's alpha.

Why: a conclusion that holds under one judge only is a fact about that judge. Agreement
metrics are ordinary metrics here, computed on every answer two judges both scored.

Why columnar and closed-form: at paper scale the study holds about two million answers per
judge, plus a combined judge. The textbook alpha builds an n x n matrix of value differences
(terabytes at n = 4 million), and a dict per answer costs hundreds of bytes per score. So:

* alpha (interval metric) uses its O(n) closed form. With squared differences,
  ``sum_{i != j} (v_i - v_j)^2 = 2 m * SSD`` for any m values with sum of squared deviations
  from their mean ``SSD``. Hence the expected disagreement over all n pairable values is
  ``D_e = 2 SSD_all / (n - 1)`` (twice the ddof=1 variance), and the observed disagreement is
  ``D_o = (1/n) * sum_u 2 m_u SSD_u / (m_u - 1)`` over units u with m_u >= 2 values.
* answers are grouped with integer codes and numpy (lookup tables, ``bincount``,
  ``ufunc.at``), not a dict per answer: every text field is coded in sorted order, so an
  answer's id orders exactly like its key tuple ``(run_id, step, suite, question_id, sample)``
  and ties, output order and "a judge's last score wins" match the dict-based definitions
  these functions had before. Per trait, the scores become one (answers, judges) matrix.

Every function takes ScoreRows (what ``Store.scores`` returns) or ``ScoreColumns`` (one numpy
array per field), which skips the per-row objects entirely. A score of None, or a non-finite
score, is "not scored" (SQLite stores NaN as NULL, so the store cannot hold one anyway).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import combinations
from operator import attrgetter
from typing import Any, overload

import numpy as np
from scipy import stats

# ScoreColumns lives in the store, which builds it; imported here also so that existing
# ``from traitwatch.analysis._agreement import ScoreColumns`` keeps working.
from traitwatch.store import ScoreColumns, ScoreRow

_KEY_FIELDS = ("run_id", "step", "suite", "question_id", "sample")  # one answer (the "item")
_TEXT_FIELDS = frozenset({"run_id", "suite", "question_id", "judge", "trait"})
_CHUNK = 1 << 16  # rows built per batch when turning arrays back into ScoreRows


@dataclass(frozen=True)
class Agreement:
    trait: str
    judge_a: str
    judge_b: str
    n: int
    spearman: float | None
    pearson: float | None
    mae: float | None
    alpha: float | None


# -- Krippendorff's alpha ------------------------------------------------------------------------


def _alpha_grouped(values: np.ndarray, units: np.ndarray) -> float | None:
    """Interval alpha of finite ``values`` where ``units[i]`` is the unit (a non-negative int) of
    ``values[i]``; units with fewer than two values are dropped. O(n), numpy only."""
    if values.size == 0:
        return None
    counts = np.bincount(units)
    keep = counts[units] >= 2
    if not keep.all():
        values, units = values[keep], units[keep]
        counts = np.where(counts >= 2, counts, 0)
    n = values.size
    # Exactly "every pairable value equal": the only case with D_e = 0 (checked on the values,
    # not on a computed variance, which rounding can leave a hair above zero).
    if n == 0 or values.min() == values.max():
        return None
    m = counts.astype(float)
    unit_mean = np.bincount(units, weights=values, minlength=m.size) / np.maximum(m, 1.0)
    dev = values - unit_mean[units]
    ssd = np.bincount(units, weights=dev * dev, minlength=m.size)
    pairable = counts >= 2
    d_o = 2.0 * float(np.sum(ssd[pairable] * m[pairable] / (m[pairable] - 1.0))) / n
    dev_all = values - values.mean()
    d_e = 2.0 * float(np.dot(dev_all, dev_all)) / (n - 1)
    return float(1.0 - d_o / d_e)


def krippendorff_alpha_interval(units: Iterable[Iterable[float | None]]) -> float | None:
    """Krippendorff's alpha (interval metric) for units rated by any number of judges.

    None and non-finite ratings are dropped; units with fewer than two ratings are not pairable
    and are dropped. Returns None when nothing is pairable or there is no variation at all
    (alpha undefined). O(n) in the number of ratings (closed form; see the module docstring).
    """
    vals: list[float] = []
    ids: list[int] = []
    for i, u in enumerate(units):
        for v in u:
            if v is not None:
                vals.append(float(v))
                ids.append(i)
    values = np.asarray(vals, dtype=float)
    unit_ids = np.asarray(ids, dtype=np.intp)
    finite = np.isfinite(values)
    if not finite.all():
        values, unit_ids = values[finite], unit_ids[finite]
    return _alpha_grouped(values, unit_ids)


def krippendorff_alpha_interval_array(values: np.ndarray) -> float | None:
    """Krippendorff's alpha (interval metric) of a (units, raters) array, NaN for a missing rating.

    Same result as ``krippendorff_alpha_interval(values.tolist())`` (non-finite entries are
    missing; units with fewer than two ratings dropped; None when undefined), computed with
    row-wise numpy reductions only: no Python loop over units, a few copies of the array.
    """
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D (units, raters) array, got shape {arr.shape}")
    present = np.isfinite(arr)
    m = present.sum(axis=1)
    pairable = m >= 2
    if not pairable.all():
        arr, present, m = arr[pairable], present[pairable], m[pairable]
    n = int(m.sum())
    if n == 0:
        return None
    lo = float(np.min(arr, where=present, initial=np.inf))
    if lo == float(np.max(arr, where=present, initial=-np.inf)):  # D_e = 0: see _alpha_grouped
        return None
    mf = m.astype(float)
    missing = ~present
    dev = np.where(present, arr, 0.0)  # one work array, reused: deviations, zero where missing
    unit_mean = dev.sum(axis=1) / mf
    mean_all = float(dev.sum()) / n
    np.subtract(arr, unit_mean[:, None], out=dev)
    dev[missing] = 0.0
    ssd = np.einsum("ij,ij->i", dev, dev)
    d_o = 2.0 * float(np.sum(ssd * mf / (mf - 1.0))) / n
    np.subtract(arr, mean_all, out=dev)
    dev[missing] = 0.0
    d_e = 2.0 * float(np.einsum("ij,ij->", dev, dev)) / (n - 1)
    return float(1.0 - d_o / d_e)


# -- columnar scores -------------------------------------------------------------------------------

ScoreInput = Iterable[ScoreRow] | ScoreColumns


def _same(n: int, text: str) -> np.ndarray:
    """An object array holding ``text`` n times: one shared str (``np.full(n, text, dtype=object)``
    would make a new str per element)."""
    out = np.empty(n, dtype=object)
    out.fill(text)
    return out


class _Scores:
    """Scores coded as integers for grouping: ``item`` numbers the answers (run, step, suite,
    question, sample) 0..n_items-1 in the order of that key tuple; ``judge`` and ``trait``
    index the sorted ``judges`` and ``traits``. Rows with no score stay (NaN), so row indices
    match the source."""

    def __init__(self, src: Sequence[ScoreRow] | ScoreColumns) -> None:
        self.src = src
        self.n = len(src)
        self.score = self._scores()
        self.judge, self.judges = self._codes("judge")
        self.trait, self.traits = self._codes("trait")
        self.item, self.n_items, self.item_row = _lex_ids([partial(self._ranks, f) for f in _KEY_FIELDS], self.n)

    def _values(self, name: str) -> Iterable[Any]:
        return getattr(self.src, name) if isinstance(self.src, ScoreColumns) else map(attrgetter(name), self.src)

    def _scores(self) -> np.ndarray:
        if isinstance(self.src, ScoreColumns):
            return self.src.score.astype(float, copy=False)
        return np.fromiter(self._values("score"), dtype=object, count=self.n).astype(float)  # None -> NaN

    def _codes(self, name: str) -> tuple[np.ndarray, list[Any]]:
        """Integer codes of a text field, numbered in the sorted order of its distinct values."""
        if isinstance(self.src, ScoreColumns):
            return self.src.codes(name)
        levels_ = sorted(set(self._values(name)))
        index = {s: i for i, s in enumerate(levels_)}
        return np.fromiter(map(index.__getitem__, self._values(name)), dtype=np.int32, count=self.n), levels_

    def _ranks(self, name: str) -> tuple[np.ndarray, int]:
        """Dense ranks (0..k-1, in value order) of a key field, and k."""
        if name in _TEXT_FIELDS:
            codes, levels = self._codes(name)
            return codes, len(levels)
        if isinstance(self.src, ScoreColumns):
            return _dense_ranks(getattr(self.src, name).astype(np.int64, copy=False))
        return _dense_ranks(np.fromiter(self._values(name), dtype=np.int64, count=self.n), scratch=True)

    def key(self, item: int) -> tuple[str, int, str, str, int]:
        """The (run_id, step, suite, question_id, sample) of an item, as the source holds it."""
        i = int(self.item_row[item])
        r = self.src.row(i) if isinstance(self.src, ScoreColumns) else self.src[i]
        return r.run_id, r.step, r.suite, r.question_id, r.sample


def _index_dtype(n: int) -> type[np.signedinteger[Any]]:
    """int32 row indices where they fit (half the memory of int64 at millions of rows)."""
    return np.int32 if n < 2**31 - 1 else np.int64


def _dense_ranks(values: np.ndarray, *, scratch: bool = False) -> tuple[np.ndarray, int]:
    """Ranks 0..k-1 of integer ``values`` among their k distinct values, and k. A lookup table
    over the value range where that range is small (no sort, little memory), else a sort.
    ``scratch``: the caller gives ``values`` up, so it may be overwritten (one copy fewer)."""
    if values.size == 0:
        return np.zeros(0, np.int64), 0
    lo, hi = int(values.min()), int(values.max())
    if hi - lo < 2 * values.size + 1024:
        offset = np.subtract(values, lo, out=values if scratch else None)
        seen = np.zeros(hi - lo + 1, dtype=bool)
        seen[offset] = True
        table = np.cumsum(seen, dtype=_index_dtype(values.size))
        table -= 1
        return table[offset], int(table[-1]) + 1
    uniq, inv = np.unique(values, return_inverse=True)
    return inv.reshape(-1), uniq.size


def _lex_ids(columns: Sequence[Callable[[], tuple[np.ndarray, int]]], n: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Dense ids of the distinct rows of ``columns`` (callables returning each column's dense
    ranks and their count, so one column is held at a time), numbered in lexicographic order;
    the number of ids; the first row of each id."""
    key = np.zeros(n, dtype=np.int64)
    span = 1
    for get in columns:
        ranks, k = get()
        if span * k >= 2**62:  # re-rank the key so far: then span * k <= n * n
            key, span = _dense_ranks(key, scratch=True)
            key = key.astype(np.int64, copy=False)
        key *= k
        key += ranks
        span *= k
        del ranks
    ids, n_ids = _dense_ranks(key, scratch=True)
    del key
    index = _index_dtype(n)
    ids = ids.astype(index, copy=False)
    first = np.full(n_ids, n, dtype=index)
    np.minimum.at(first, ids, np.arange(n, dtype=index))
    return ids, n_ids, first


def _prepare(rows: ScoreInput) -> _Scores:
    if isinstance(rows, ScoreColumns):
        return _Scores(rows)
    return _Scores(rows if isinstance(rows, Sequence) else list(rows))


@dataclass(frozen=True)
class _TraitTable:
    """One trait's scores as an (items, judges) matrix, NaN where a judge did not score."""

    trait: str
    judges: list[str]
    items: np.ndarray  # global item ids, ascending (so in key-tuple order)
    scores: np.ndarray  # (len(items), len(judges))


def _trait_tables(t: _Scores) -> Iterator[_TraitTable]:
    """Per trait (sorted) with any score: the matrix; a judge scoring an item twice: last wins."""
    scored = np.isfinite(t.score)
    index = _index_dtype(t.n)
    for code, trait in enumerate(t.traits):
        sel = np.flatnonzero(scored & (t.trait == code)).astype(index)
        if sel.size == 0:
            continue
        judge = t.judge[sel]
        present = np.zeros(len(t.judges), dtype=bool)
        present[judge] = True
        jcodes = np.flatnonzero(present)
        col = (np.cumsum(present, dtype=np.int32) - 1)[judge]
        del judge
        last = np.full((t.n_items, jcodes.size), -1, dtype=index)  # the last row scoring (item, judge)
        np.maximum.at(last, (t.item[sel], col), sel)
        del col, sel
        items = np.flatnonzero((last >= 0).any(axis=1))
        last = last[items]
        mat = np.where(last >= 0, t.score[last], np.nan)
        del last
        yield _TraitTable(trait, [t.judges[j] for j in jcodes], items, mat)


def _judge_pairs(t: _Scores) -> Iterator[tuple[_TraitTable, int, int]]:
    """(trait table, column of judge a, column of judge b) for every pair of judges of a trait."""
    for tab in _trait_tables(t):
        for a, b in combinations(range(len(tab.judges)), 2):
            yield tab, a, b


def _both(tab: _TraitTable, a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y = tab.scores[:, a], tab.scores[:, b]
    both = ~np.isnan(x) & ~np.isnan(y)
    return tab.items[both], x[both], y[both]


def judge_agreement(rows: ScoreInput) -> list[Agreement]:
    """Pairwise agreement per trait over items (run, step, suite, question, sample) both judges scored."""
    out: list[Agreement] = []
    for tab, a, b in _judge_pairs(_prepare(rows)):
        ja, jb = tab.judges[a], tab.judges[b]
        _, x, y = _both(tab, a, b)
        if x.size < 2:
            out.append(Agreement(tab.trait, ja, jb, int(x.size), None, None, None, None))
            continue
        varied = bool(x.min() < x.max() and y.min() < y.max())
        sp = float(stats.spearmanr(x, y).statistic) if varied else None
        pe = float(stats.pearsonr(x, y).statistic) if varied else None
        alpha = krippendorff_alpha_interval_array(np.column_stack((x, y)))
        out.append(Agreement(tab.trait, ja, jb, int(x.size), sp, pe, float(np.mean(np.abs(x - y))), alpha))
    return out


@dataclass(frozen=True)
class Disagreement:
    trait: str
    judge_a: str
    judge_b: str
    run_id: str
    step: int
    suite: str
    question_id: str
    sample: int
    score_a: float
    score_b: float


def disagreements(rows: ScoreInput, k: int = 5) -> list[Disagreement]:
    """The ``k`` answers per trait and judge pair where the two judges differ most (ties: the
    smaller (run, step, suite, question, sample) first)."""
    t = _prepare(rows)
    out: list[Disagreement] = []
    for tab, a, b in _judge_pairs(t):
        items, x, y = _both(tab, a, b)
        diff = np.abs(x - y)
        cand = np.arange(diff.size)
        if 0 < k < diff.size:  # only the values that can make the top k need sorting
            kth = np.partition(diff, diff.size - k)[diff.size - k]
            cand = np.flatnonzero(diff >= kth)
        top = cand[np.lexsort((items[cand], -diff[cand]))][:k]
        out.extend(Disagreement(tab.trait, tab.judges[a], tab.judges[b], *t.key(int(items[i])), float(x[i]), float(y[i])) for i in top)
    return out


@overload
def combine_judges(rows: ScoreColumns, judges: Iterable[str], mode: str) -> ScoreColumns: ...
@overload
def combine_judges(rows: Iterable[ScoreRow], judges: Iterable[str], mode: str) -> list[ScoreRow]: ...
def combine_judges(rows: ScoreInput, judges: Iterable[str], mode: str) -> list[ScoreRow] | ScoreColumns:
    """A combined judge (``combined-mean`` or ``combined-median``) over ``judges``, for answers
    at least two of them scored (every score counts, a judge's repeated score included).

    Rows come out in (run, step, suite, question, sample, trait) order; ScoreColumns in,
    ScoreColumns out.
    """
    t = _prepare(rows)
    members = set(judges)
    name = f"combined-{mode}"
    codes = np.array([i for i, j in enumerate(t.judges) if j in members], dtype=np.int64)
    sel = np.flatnonzero(np.isin(t.judge, codes) & np.isfinite(t.score))
    n_traits = max(1, len(t.traits))
    group = t.item[sel].astype(np.int64) * n_traits + t.trait[sel]  # numbered in (key..., trait) order
    size = t.n_items * n_traits
    counts = np.bincount(group, minlength=size)
    keep = np.flatnonzero(counts >= 2)
    values = t.score[sel]
    del sel
    if mode == "mean":  # summed in row order: the float np.mean gives for fewer than 8 scores
        agg = np.bincount(group, weights=values, minlength=size)[keep] / counts[keep]
    else:
        ordered = values[np.lexsort((values, group))]
        start = (np.cumsum(counts) - counts)[keep]
        c = counts[keep]
        agg = (ordered[start + (c - 1) // 2] + ordered[start + c // 2]) / 2
    del group, values
    item, trait = np.divmod(keep, n_traits)
    src_rows = t.item_row[item]
    if isinstance(t.src, ScoreColumns):
        s = t.src
        return ScoreColumns(
            run_id=s.run_id[src_rows],
            step=s.step[src_rows],
            suite=s.suite[src_rows],
            question_id=s.question_id[src_rows],
            sample=s.sample[src_rows],
            judge=_same(keep.size, name),
            trait=np.array(t.traits, dtype=object)[trait],
            score=agg,
        )
    seq, traits = t.src, t.traits
    out: list[ScoreRow] = []
    for lo in range(0, keep.size, _CHUNK):  # chunks: no million-long temporary lists of ints
        sl = slice(lo, lo + _CHUNK)
        out.extend(
            ScoreRow(r.run_id, r.step, r.suite, r.question_id, r.sample, name, traits[k], v)
            for r, k, v in zip(map(seq.__getitem__, src_rows[sl].tolist()), trait[sl].tolist(), agg[sl].tolist(), strict=True)
        )
    return out
