"""Agreement between judges on the same answers: correlations, MAE, Krippendorff's alpha.

Why: a conclusion that holds under one judge only is a fact about that judge. Agreement
metrics are ordinary metrics here, computed on every answer two judges both scored.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy import stats

from traitwatch.store import ScoreRow


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


def krippendorff_alpha_interval(units: Iterable[Iterable[float | None]]) -> float | None:
    """Krippendorff's alpha (interval metric) for units rated by any number of judges.

    Units with fewer than two ratings are not pairable and are dropped. Returns None when
    there is no variation at all (alpha undefined).
    """
    kept = [np.array([v for v in u if v is not None and np.isfinite(v)], dtype=float) for u in units]
    kept = [u for u in kept if u.size >= 2]
    if not kept:
        return None
    values = np.concatenate(kept)
    n = values.size
    d_o = 0.0
    for u in kept:
        diff = u[:, None] - u[None, :]
        d_o += (diff**2).sum() / (u.size - 1)
    d_o /= n
    diff_all = values[:, None] - values[None, :]
    d_e = (diff_all**2).sum() / (n * (n - 1))
    if d_e == 0:
        return None
    return float(1 - d_o / d_e)


Item = tuple[str, int, str, str, int]  # (run, step, suite, question, sample)


def _judge_pairs(rows: Iterable[ScoreRow]) -> Iterator[tuple[str, str, str, dict[Item, dict[str, float]]]]:
    """(trait, judge a, judge b, {item: {judge: score}}) for every pair of judges of a trait."""
    table: dict[str, dict[Item, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r.score is not None:
            table[r.trait][(r.run_id, r.step, r.suite, r.question_id, r.sample)][r.judge] = r.score
    for trait, items in sorted(table.items()):
        judges = sorted({j for v in items.values() for j in v})
        for a, b in combinations(judges, 2):
            yield trait, a, b, items


def judge_agreement(rows: Iterable[ScoreRow]) -> list[Agreement]:
    """Pairwise agreement per trait over items (run, step, suite, question, sample) both judges scored."""
    out = []
    for trait, a, b, items in _judge_pairs(rows):
        pairs = np.array([(v[a], v[b]) for v in items.values() if a in v and b in v], dtype=float)
        if pairs.shape[0] < 2:
            out.append(Agreement(trait, a, b, int(pairs.shape[0]), None, None, None, None))
            continue
        x, y = pairs[:, 0], pairs[:, 1]
        varied = np.std(x) > 0 and np.std(y) > 0
        sp = float(stats.spearmanr(x, y).statistic) if varied else None
        pe = float(stats.pearsonr(x, y).statistic) if varied else None
        alpha = krippendorff_alpha_interval(pairs.tolist())
        out.append(Agreement(trait, a, b, int(x.size), sp, pe, float(np.mean(np.abs(x - y))), alpha))
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


def disagreements(rows: Iterable[ScoreRow], k: int = 5) -> list[Disagreement]:
    """The ``k`` answers per trait and judge pair where the two judges differ most."""
    out = []
    for trait, a, b, items in _judge_pairs(rows):
        both = [(abs(v[a] - v[b]), key, v[a], v[b]) for key, v in items.items() if a in v and b in v]
        both.sort(key=lambda x: (-x[0], x[1]))
        out.extend(Disagreement(trait, a, b, *key, sa, sb) for _, key, sa, sb in both[:k])
    return out


def combine_judges(rows: Iterable[ScoreRow], judges: Iterable[str], mode: str) -> list[ScoreRow]:
    """A combined judge (``combined-mean`` or ``combined-median``) over ``judges``, for answers
    at least two of them scored."""
    members = set(judges)
    items: dict[tuple[str, int, str, str, int, str], list[float]] = defaultdict(list)
    for r in rows:
        if r.judge in members and r.score is not None:
            items[(r.run_id, r.step, r.suite, r.question_id, r.sample, r.trait)].append(r.score)
    agg = np.mean if mode == "mean" else np.median
    return [
        ScoreRow(run, step, suite, q, sample, f"combined-{mode}", trait, float(agg(v)))
        for (run, step, suite, q, sample, trait), v in sorted(items.items())
        if len(v) >= 2
    ]
