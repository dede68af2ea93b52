"""Pure metric functions that both the methods and the evaluation protocols use (no training, no I/O).

This module sits low in the layer contract (beside ``config``, ``registry`` and ``results``) so that the
methods in :mod:`genprov.attribution` (a detector fixing its threshold, a feature mapper scoring its
validation split) and the protocols in :mod:`genprov.eval` compute a metric with ONE implementation.
Evaluation protocols (ROC curves, Recall@K, LDS, ...) stay in :mod:`genprov.eval`, which re-exports these.

Inputs may be torch tensors, numpy arrays or lists; scalars come back as ``float``, per-query values as
float64 numpy arrays. Bad input raises :class:`~genprov.exceptions.DataError` naming the argument.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from genprov.exceptions import DataError
from genprov.utils.arrays import ArrayLike, as_float_array, as_index_list, check_fraction

__all__ = ["average_precision", "scores_and_positives", "threshold_at_fnr"]


def threshold_at_fnr(own_scores: ArrayLike, fnr: float) -> float:
    """The largest threshold that rejects at most a fraction ``fnr`` of own samples.

    A sample is claimed when ``score >= threshold``; with the returned value at most ``floor(fnr * n)`` of
    the ``n`` own scores fall strictly below it. This is how an owner who only has their own samples fixes
    the decision rule (FLIPAD, Laszkiewicz et al., 2024, sec. 5: threshold at a 5% false-negative rate on
    own samples).

    Args:
        own_scores: (n,) scores of own samples, n >= 1, finite.
        fnr: Allowed false-negative rate in [0, 1]; 1 returns ``+inf`` (claim nothing).

    Returns:
        One of the own scores (or ``+inf``).

    Raises:
        DataError: If ``own_scores`` is empty, not 1-D or not finite, or ``fnr`` is outside [0, 1].
    """
    own = np.sort(as_float_array(own_scores, "own_scores", ndim=1))
    rate = check_fraction(fnr, "fnr")
    allowed = math.floor(rate * own.size + 1e-9)
    return float(own[allowed]) if allowed < own.size else math.inf


def scores_and_positives(scores: ArrayLike, positives: Sequence[ArrayLike]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Check a retrieval problem: an (n_q, n_items) score matrix and one index array of positives per query.

    Args:
        scores: (n_q, n_items) scores, higher = ranked earlier; at least one item.
        positives: ``n_q`` index arrays, each non-empty, unique, in ``[0, n_items)``.

    Returns:
        ``(scores as float64, positives as int64 arrays)``.

    Raises:
        DataError: Naming the argument and what is wrong with it.
    """
    s = as_float_array(scores, "scores", ndim=2)
    if s.shape[1] == 0:
        raise DataError("scores has no items (0 columns).")
    return s, as_index_list(positives, "positives", n_rows=s.shape[0], n_items=s.shape[1])


def _average_precision_row(scores: np.ndarray, relevant: np.ndarray) -> float:
    """AP of one ranking as a step function over distinct score thresholds (sklearn's definition)."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores, hits = scores[order], relevant[order].astype(np.float64)
    last_of_value = np.r_[np.flatnonzero(np.diff(sorted_scores)), scores.size - 1]
    tps = np.cumsum(hits)[last_of_value]
    precision = tps / (last_of_value + 1)
    recall = tps / hits.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def average_precision(scores: ArrayLike, positives: Sequence[ArrayLike]) -> np.ndarray:
    """Average precision of each query's full ranking, with any number of positives.

    AP = sum over score thresholds of (gain in recall) x (precision at that threshold); items with tied
    scores are counted together at one threshold, which makes it independent of how ties are ordered
    and equal to ``sklearn.metrics.average_precision_score``. Without ties it is the mean, over the
    positives, of the precision at each positive's rank.

    Args:
        scores: (n_q, n_items) scores, higher = ranked earlier.
        positives: ``n_q`` index arrays, each non-empty, unique, in ``[0, n_items)``.

    Returns:
        (n_q,) float64 in (0, 1]; higher = better.

    Raises:
        DataError: See :func:`scores_and_positives`.
    """
    s, pos = scores_and_positives(scores, positives)
    out = np.empty(s.shape[0])
    for q, p in enumerate(pos):
        relevant = np.zeros(s.shape[1], dtype=bool)
        relevant[p] = True
        out[q] = _average_precision_row(s[q], relevant)
    return out
