"""Change-point metrics as defined for the Turing Change Point Dataset (van den Burg &
Williams, 2020): F1 with a margin, and segmentation covering.

Conventions (from the benchmark's README): the start (index 0) counts as a change point for
both the prediction and every annotation; precision is computed against the union of all
annotators' change points; recall is averaged over annotators; covering is averaged over
annotators. Written here from those definitions, used by ``bench/tcpd_benchmark.py`` and
the tests, and available to users scoring their own detectors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


def true_positives(truth: Iterable[int], predicted: Iterable[int], margin: int = 5) -> set[int]:
    """True change points matched by a prediction within ``margin``; each prediction matches once.

    Each true point takes the closest still-unused prediction within the margin (ties: the
    smaller index), visiting true points in increasing order.
    """
    free = sorted(set(predicted))
    hits: set[int] = set()
    for tau in sorted(set(truth)):
        close = [(abs(tau - x), x) for x in free if abs(tau - x) <= margin]
        if not close:
            continue
        _, best = min(close)
        hits.add(tau)
        free.remove(best)
    return hits


def f_measure(
    annotations: Mapping[str, Sequence[int]], predicted: Sequence[int], margin: int = 5, *, return_pr: bool = False
) -> float | tuple[float, float, float]:
    """F1 of ``predicted`` against several annotators (index 0 added to every set)."""
    per_annotator = [set(a) | {0} for a in annotations.values()]
    if not per_annotator:
        per_annotator = [{0}]
    pred = set(predicted) | {0}
    union = set().union(*per_annotator)
    precision = len(true_positives(union, pred, margin)) / len(pred)
    recall = sum(len(true_positives(t, pred, margin)) / len(t) for t in per_annotator) / len(per_annotator)
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return (f, precision, recall) if return_pr else f


def partition(change_points: Iterable[int], n_obs: int) -> list[range]:
    """Segments [0, c1), [c1, c2), ..., [ck, n) from change points (each the start of a segment)."""
    cuts = sorted({c for c in change_points if 0 < c < n_obs})
    edges = [0] + cuts + [n_obs]
    return [range(a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]


def _jaccard(a: range, b: range) -> float:
    inter = max(0, min(a.stop, b.stop) - max(a.start, b.start))
    union = len(a) + len(b) - inter
    return inter / union if union else 0.0


def cover_single(truth: Sequence[range], predicted: Sequence[range]) -> float:
    """Covering of the true segmentation by the predicted one: sum |A| max J(A, A') / n."""
    n = sum(len(a) for a in truth)
    return sum(len(a) * max(_jaccard(a, b) for b in predicted) for a in truth) / n


def covering(annotations: Mapping[str, Sequence[int]], predicted: Sequence[int], n_obs: int) -> float:
    """Segmentation covering averaged over annotators."""
    pred = partition(predicted, n_obs)
    truths = [partition(a, n_obs) for a in annotations.values()] or [partition([], n_obs)]
    return sum(cover_single(t, pred) for t in truths) / len(truths)
