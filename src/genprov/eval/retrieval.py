"""Retrieval metrics for data attribution by similarity, and hubness of the retrieval space.

``scores`` is always an (n_queries, n_items) matrix, higher = more similar / more influential; a query's
ranking sorts items by descending score, ties broken by the lower item index. ``positives`` lists, per
query, the indices of the items that truly belong with it (e.g. the exemplar training images a
customized model was fine-tuned on, Wang et al., 2023, "Evaluating data attribution for text-to-image
models", sec. 5: Recall@K and mAP).

Hubness (Radovanović et al., 2010, "Hubs in space") counts how often each item lands in some query's
top k (its k-occurrence); a strongly right-skewed distribution means a few "hub" items are retrieved
for everything, which makes top-k attribution look alike across queries.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy.stats import skew

from genprov.exceptions import DataError
from genprov.metrics import average_precision, scores_and_positives
from genprov.utils.arrays import ArrayLike, as_float_array

__all__ = [
    "k_occurrence",
    "k_occurrence_skewness",
    "mean_average_precision",
    "recall_at_k",
    "recall_per_query",
]


def _check_k(k: int, n_items: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_items:
        raise DataError(f"k must be an integer in [1, {n_items}] (the number of items); got {k!r}.")
    return int(k)


def _ranking(scores: np.ndarray) -> np.ndarray:
    """(n_q, n_items) item indices of each query sorted by descending score (stable)."""
    return np.argsort(-scores, axis=1, kind="stable")


def _recall(order: np.ndarray, positives: list[np.ndarray], k: int) -> np.ndarray:
    """(n_q,) share of each query's positives among the first ``k`` entries of its ranking ``order``."""
    top = order[:, : _check_k(k, order.shape[1])]
    return np.array([np.isin(p, top[q]).mean() for q, p in enumerate(positives)])


def recall_per_query(scores: ArrayLike, positives: Sequence[ArrayLike], k: int) -> np.ndarray:
    """Per query, the fraction of its positives found among its top ``k`` items.

    Args:
        scores: (n_q, n_items) scores, higher = ranked earlier.
        positives: ``n_q`` index arrays, each non-empty, unique, in ``[0, n_items)``.
        k: Cut-off, in ``[1, n_items]``.

    Returns:
        (n_q,) float64 in [0, 1].
    """
    s, pos = scores_and_positives(scores, positives)
    return _recall(_ranking(s), pos, k)


def recall_at_k(scores: ArrayLike, positives: Sequence[ArrayLike], ks: Iterable[int] = (1, 5, 10)) -> dict[int, float]:
    """Recall@K averaged over queries, for each K in ``ks``.

    Recall@K of one query is ``|top-K ∩ positives| / |positives|``; with a single positive per query it
    is the hit rate.

    Args:
        scores: (n_q, n_items) scores, higher = ranked earlier.
        positives: ``n_q`` index arrays, each non-empty, unique, in ``[0, n_items)``.
        ks: Cut-offs, each in ``[1, n_items]``.

    Returns:
        ``{k: mean recall}``; higher = better.
    """
    s, pos = scores_and_positives(scores, positives)
    order = _ranking(s)
    return {int(k): float(_recall(order, pos, k).mean()) for k in ks}


def mean_average_precision(scores: ArrayLike, positives: Sequence[ArrayLike]) -> float:
    """Mean over queries of :func:`average_precision` (mAP); higher = better."""
    return float(average_precision(scores, positives).mean())


def k_occurrence(scores: ArrayLike, k: int, *, exclude_self: bool = False) -> np.ndarray:
    """How many queries rank each item in their top ``k`` (the k-occurrence N_k).

    Args:
        scores: (n_q, n_items) scores, higher = ranked earlier.
        k: Cut-off, in ``[1, n_items]`` (``n_items - 1`` with ``exclude_self``).
        exclude_self: For a square matrix of items against themselves: never count an item as its own
            neighbour.

    Returns:
        (n_items,) int64 counts; they sum to ``n_q * k``.
    """
    s = as_float_array(scores, "scores", ndim=2)
    if exclude_self:
        if s.shape[0] != s.shape[1]:
            raise DataError(f"exclude_self needs a square (n, n) score matrix; got shape {s.shape}.")
        s = s.copy()
        np.fill_diagonal(s, -np.inf)
    k = _check_k(k, s.shape[1] - int(exclude_self))
    top = _ranking(s)[:, :k]
    return np.bincount(top.ravel(), minlength=s.shape[1]).astype(np.int64)


def k_occurrence_skewness(scores: ArrayLike, k: int, *, exclude_self: bool = False) -> float:
    """Hubness: the skewness of the k-occurrence distribution (Radovanović et al., 2010, eq. 2).

    Args:
        scores: (n_q, n_items) scores, higher = ranked earlier.
        k: Cut-off, see :func:`k_occurrence`.
        exclude_self: See :func:`k_occurrence`.

    Returns:
        Population skewness ``E[(N_k - mu)^3] / sigma^3`` (``scipy.stats.skew``); 0 when every item occurs
        equally often; large positive = a few hubs dominate.
    """
    counts = k_occurrence(scores, k, exclude_self=exclude_self).astype(np.float64)
    if np.all(counts == counts[0]):
        return 0.0
    return float(skew(counts))
