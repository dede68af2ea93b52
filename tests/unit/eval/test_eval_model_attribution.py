"""Model-attribution metrics against sklearn and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sklearn.metrics as skm
import torch

from genprov.eval import (
    accuracy_at_threshold,
    attributability,
    roc_auc,
    roc_curve,
    tpr_at_fpr,
)
from genprov.exceptions import DataError


def _scores(seed: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pos, neg = rng.normal(1.0, 1.0, size=37), rng.normal(0.0, 1.0, size=23)
    if ties:
        pos, neg = np.round(pos), np.round(neg)
    return pos, neg


def _labels(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.r_[np.ones(pos.size), np.zeros(neg.size)], np.r_[pos, neg]


@pytest.mark.parametrize("ties", [False, True])
def test_roc_auc_and_curve_match_sklearn(ties: bool) -> None:
    pos, neg = _scores(0, ties)
    y, s = _labels(pos, neg)
    assert roc_auc(pos, neg) == pytest.approx(skm.roc_auc_score(y, s))
    assert roc_auc(torch.from_numpy(pos), list(neg)) == pytest.approx(skm.roc_auc_score(y, s))
    fpr, tpr, thr = roc_curve(pos, neg)
    ref_fpr, ref_tpr, ref_thr = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    np.testing.assert_allclose(thr[1:], ref_thr[1:])
    assert thr[0] == math.inf
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(pos, neg))


def test_roc_auc_hand_made() -> None:
    assert roc_auc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert roc_auc([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert roc_auc([1.0], [1.0]) == 0.5


def test_accuracy_at_threshold_matches_balanced_accuracy() -> None:
    pos, neg = _scores(2, ties=True)
    y, s = _labels(pos, neg)
    for t in (-1.0, 0.0, 0.5, 1.0, 2.0):
        assert accuracy_at_threshold(pos, neg, t) == pytest.approx(skm.balanced_accuracy_score(y, s >= t))


@pytest.mark.parametrize("fpr", [0.0, 0.01, 0.1, 0.5, 1.0])
def test_tpr_at_fpr_brute_force(fpr: float) -> None:
    pos, neg = _scores(3, ties=True)
    best = max(float((pos >= t).mean()) for t in [*pos, *neg, math.inf] if (neg >= t).mean() <= fpr)
    assert tpr_at_fpr(pos, neg, fpr) == pytest.approx(best)


def test_attributability_hand_made() -> None:
    scores = np.array(
        [
            [1.0, -1.0, -1.0],  # model 0, attributed
            [1.0, 0.5, -1.0],  # model 0, also claimed by model 1
            [-1.0, 2.0, -3.0],  # model 1, attributed
            [-1.0, -1.0, 0.0],  # model 2, attributed (own score == threshold counts)
        ]
    )
    source = np.array([0, 0, 1, 2])
    assert attributability(scores, source) == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    assert attributability(scores, source, threshold=0.6) == pytest.approx((1.0 + 1.0 + 0.0) / 3)
    with pytest.raises(DataError, match="model indices"):
        attributability(scores, np.array([0, 0, 1, 3]))
    with pytest.raises(DataError, match="one entry per row"):
        attributability(scores, np.array([0, 1]))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: roc_auc([], [1.0]), "empty"),
        (lambda: roc_auc([1.0, float("nan")], [1.0]), "NaN"),
        (lambda: roc_auc([[1.0]], [1.0]), "shape"),
        (lambda: tpr_at_fpr([1.0], [0.0], -0.1), "fpr"),
        (lambda: accuracy_at_threshold([1.0], [0.0], float("nan")), "threshold"),
        (lambda: roc_auc("abc", [1.0]), "torch.Tensor"),
    ],
)
def test_bad_inputs_raise(call: object, match: str) -> None:
    with pytest.raises(DataError, match=match):
        call()  # type: ignore[operator]
