"""The one implementation of the metrics shared by methods and evaluation, against sklearn and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sklearn.metrics as skm
import torch

from genprov.exceptions import DataError
from genprov.metrics import average_precision, threshold_at_fnr


@pytest.mark.parametrize("fnr", [0.0, 0.005, 0.05, 0.1, 0.29, 0.5, 0.99, 1.0])
def test_threshold_at_fnr_is_the_largest_admissible_threshold(fnr: float) -> None:
    own = np.round(np.random.default_rng(1).normal(size=100), 1)  # with ties
    got = threshold_at_fnr(own, fnr)
    candidates = [t for t in [*own, math.inf] if (own < t).mean() <= fnr + 1e-12]
    assert got == max(candidates)
    assert (own < got).mean() <= fnr + 1e-12


def test_threshold_at_fnr_accepts_tensors_of_any_float_dtype() -> None:
    own = torch.round(torch.randn(101, generator=torch.Generator().manual_seed(5)), decimals=1)
    expected = threshold_at_fnr(own.numpy(), 0.05)
    assert threshold_at_fnr(own, 0.05) == expected
    assert threshold_at_fnr(own.to(torch.bfloat16), 0.05) == pytest.approx(expected, abs=0.02)
    assert threshold_at_fnr(own.tolist(), 0.0) == float(own.min())


@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_matches_sklearn(ties: bool) -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(6, 30))
    if ties:
        scores = np.round(scores)
    positives = [rng.choice(30, size=rng.integers(1, 5), replace=False) for _ in range(6)]
    ap = average_precision(scores, positives)
    assert ap.dtype == np.float64 and ap.shape == (6,)
    for q in range(scores.shape[0]):
        y = np.zeros(30, dtype=int)
        y[positives[q]] = 1
        assert ap[q] == pytest.approx(skm.average_precision_score(y, scores[q]), rel=1e-12)
    np.testing.assert_array_equal(average_precision(torch.from_numpy(scores), positives), ap)


def test_average_precision_hand_made() -> None:
    # ranking 0, 1, 2, 3; positives at ranks 1 and 3: AP = (1/1 + 2/3) / 2
    scores = np.array([[4.0, 3.0, 2.0, 1.0]])
    assert average_precision(scores, [[0, 2]])[0] == pytest.approx((1 + 2 / 3) / 2)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: threshold_at_fnr([1.0, 2.0], 1.5), "fnr"),
        (lambda: threshold_at_fnr([], 0.1), "own_scores.*empty"),
        (lambda: threshold_at_fnr([1.0, float("nan")], 0.1), "NaN"),
        (lambda: average_precision([[1.0, 2.0]], [[]]), r"positives\[0\] is empty"),
        (lambda: average_precision([[1.0, 2.0]], [[0, 0]]), "more than once"),
        (lambda: average_precision([[1.0, 2.0]], [[2]]), "outside"),
        (lambda: average_precision([[1.0, 2.0]], [[0], [1]]), "one entry per query"),
        (lambda: average_precision(np.zeros((1, 0)), [[0]]), "no items"),
    ],
)
def test_bad_inputs_raise(call: object, match: str) -> None:
    with pytest.raises(DataError, match=match):
        call()  # type: ignore[operator]
