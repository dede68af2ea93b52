"""Metrics for model attribution: "was this sample made by my generator?".

Conventions, shared with :class:`~genprov.attribution.model.base.ModelAttributor`: ``scores_pos`` are the
scores of samples the model studied did make ("own" samples), ``scores_neg`` those of samples it did not
make (real images, other generators); higher score = more likely own; a sample is claimed as own when
``score >= threshold``. Inputs may be torch tensors, numpy arrays or lists; scalars come back as ``float``,
curves as float64 numpy arrays.

References: FLIPAD (Laszkiewicz et al., 2024, "Single-model attribution of generative models through final
layer inversion", sec. 5) reports AUC and accuracy at a threshold fixed from own samples only;
decentralized attribution (Kim et al., 2021, "Decentralized attribution of generative models", def. 1)
defines attributability.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.stats import rankdata

from genprov.exceptions import DataError
from genprov.utils.arrays import ArrayLike, as_float_array, check_fraction

__all__ = [
    "RocCurve",
    "accuracy_at_threshold",
    "attributability",
    "distinguishability",
    "roc_auc",
    "roc_curve",
    "tpr_at_fpr",
]


class RocCurve(NamedTuple):
    """Points of a ROC curve, from the strictest threshold (``inf``: nothing claimed) down.

    Attributes:
        fpr: (m,) false-positive rate at each threshold, non-decreasing, from 0 to 1.
        tpr: (m,) true-positive rate at each threshold, non-decreasing, from 0 to 1.
        thresholds: (m,) decreasing; point i claims the samples with ``score >= thresholds[i]``.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


def _pos_neg(scores_pos: ArrayLike, scores_neg: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    return (
        as_float_array(scores_pos, "scores_pos", ndim=1),
        as_float_array(scores_neg, "scores_neg", ndim=1),
    )


def roc_auc(scores_pos: ArrayLike, scores_neg: ArrayLike) -> float:
    """Area under the ROC curve: the probability that an own sample outscores a foreign one (ties count 1/2).

    Computed from ranks (Mann-Whitney U), so it equals ``sklearn.metrics.roc_auc_score`` on the
    concatenated scores with labels 1 for own and 0 for foreign.

    Args:
        scores_pos: (n_pos,) scores of own samples.
        scores_neg: (n_neg,) scores of foreign samples.

    Returns:
        AUC in [0, 1]; 0.5 = chance, 1 = every own sample scores above every foreign one.
    """
    pos, neg = _pos_neg(scores_pos, scores_neg)
    ranks = rankdata(np.concatenate([pos, neg]))
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def roc_curve(scores_pos: ArrayLike, scores_neg: ArrayLike) -> RocCurve:
    """Every point of the ROC curve, one per distinct score (like ``sklearn`` with ``drop_intermediate=False``).

    Args:
        scores_pos: (n_pos,) scores of own samples.
        scores_neg: (n_neg,) scores of foreign samples.

    Returns:
        A :class:`RocCurve` ``(fpr, tpr, thresholds)`` with ``n_distinct + 1`` points, starting at (0, 0).
    """
    pos, neg = _pos_neg(scores_pos, scores_neg)
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tps = np.cumsum(labels)[last_of_value]
    fps = last_of_value + 1 - tps
    return RocCurve(
        fpr=np.r_[0.0, fps / neg.size],
        tpr=np.r_[0.0, tps / pos.size],
        thresholds=np.r_[np.inf, scores[last_of_value]],
    )


def accuracy_at_threshold(scores_pos: ArrayLike, scores_neg: ArrayLike, threshold: float) -> float:
    """Balanced accuracy of the rule ``score >= threshold``: the mean of TPR and TNR.

    Equals ``sklearn.metrics.balanced_accuracy_score`` with labels 1 for own and 0 for foreign samples.

    Args:
        scores_pos: (n_pos,) scores of own samples.
        scores_neg: (n_neg,) scores of foreign samples.
        threshold: Decision threshold, e.g. from :func:`genprov.metrics.threshold_at_fnr`.

    Returns:
        Balanced accuracy in [0, 1]; 0.5 = chance.
    """
    pos, neg = _pos_neg(scores_pos, scores_neg)
    if math.isnan(float(threshold)):
        raise DataError("threshold is NaN; fit the attributor (or pick a threshold) first.")
    tpr = float((pos >= threshold).mean())
    tnr = float((neg < threshold).mean())
    return (tpr + tnr) / 2.0


def tpr_at_fpr(scores_pos: ArrayLike, scores_neg: ArrayLike, fpr: float) -> float:
    """Highest true-positive rate among thresholds whose false-positive rate is at most ``fpr``.

    Read off the exact ROC curve (no interpolation between points), so it is conservative.

    Args:
        scores_pos: (n_pos,) scores of own samples.
        scores_neg: (n_neg,) scores of foreign samples.
        fpr: Allowed false-positive rate in [0, 1], e.g. 0.01.

    Returns:
        TPR in [0, 1]; higher = better.
    """
    rate = check_fraction(fpr, "fpr")
    curve = roc_curve(scores_pos, scores_neg)
    return float(curve.tpr[curve.fpr <= rate + 1e-12].max())


def attributability(scores: ArrayLike, source: ArrayLike, *, threshold: float = 0.0) -> float:
    """Attributability of a set of keyed generators (Kim et al., 2021, def. 1).

    Sample ``i`` made by model ``source[i]`` counts as attributed when its own model's attributor claims
    it (``scores[i, source[i]] >= threshold``) and every other attributor rejects it (``< threshold``).
    The rate is computed per source model and averaged over the models present in ``source``, so every
    model weighs the same whatever its number of samples.

    Args:
        scores: (n, n_models) score of every model's attributor on every sample; higher = claims it.
        source: (n,) integer index of the model that made each sample, in ``[0, n_models)``.
        threshold: Decision threshold shared by the attributors (0 for linear keys ``phi(x) = k.x + b``).

    Returns:
        Attributability in [0, 1]; 1 = every sample claimed by its own model only.
    """
    s = as_float_array(scores, "scores", ndim=2)
    src = as_float_array(source, "source", ndim=1)
    if src.shape[0] != s.shape[0]:
        raise DataError(f"source must have one entry per row of scores ({s.shape[0]}); got {src.shape[0]}.")
    if not np.all(src == np.round(src)) or src.min() < 0 or src.max() >= s.shape[1]:
        raise DataError(f"source must hold integer model indices in [0, {s.shape[1]}); got values {np.unique(src)}.")
    idx = src.astype(np.int64)
    claimed = s >= threshold
    rows = np.arange(s.shape[0])
    own = claimed[rows, idx]
    n_claims = claimed.sum(axis=1)
    correct = own & (n_claims == 1)
    per_model = [correct[idx == m].mean() for m in np.unique(idx)]
    return float(np.mean(per_model))


def distinguishability(real_responses: np.ndarray, user_responses: np.ndarray) -> float:
    """Distinguishability of one keyed user model (Kim et al., 2021, def. 1).

    Args:
        real_responses: (n_real,) ``phi_i^T x`` of authentic images.
        user_responses: (n_user,) ``phi_i^T x`` of the user model's samples.

    Returns:
        ``1/2 [P_real(phi^T x > 0) + P_user(phi^T x < 0)]`` in [0, 1]; 1 = perfectly separated, 0.5 = chance.
    """
    real = np.asarray(real_responses, dtype=np.float64)
    user = np.asarray(user_responses, dtype=np.float64)
    if real.ndim != 1 or user.ndim != 1 or real.size == 0 or user.size == 0:
        raise DataError(f"distinguishability needs two non-empty 1-D response arrays; got {real.shape}, {user.shape}.")
    return 0.5 * (float((real > 0).mean()) + float((user < 0).mean()))
