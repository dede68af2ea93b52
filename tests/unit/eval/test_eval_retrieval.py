"""Retrieval metrics against sklearn, scipy and explicit loops."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from genprov.eval import (
    k_occurrence,
    k_occurrence_skewness,
    mean_average_precision,
    recall_at_k,
    recall_per_query,
)
from genprov.exceptions import DataError


def _case(seed: int = 0, ties: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(6, 30))
    if ties:
        scores = np.round(scores)
    positives = [rng.choice(30, size=rng.integers(1, 5), replace=False) for _ in range(6)]
    return scores, positives


def test_recall_matches_explicit_loop() -> None:
    scores, positives = _case()
    got = recall_at_k(scores, positives, ks=(1, 3, 10, 30))
    for k, value in got.items():
        per_query = []
        for q in range(scores.shape[0]):
            ranked = sorted(range(30), key=lambda i, q=q: (-scores[q, i], i))[:k]
            per_query.append(len(set(ranked) & set(positives[q].tolist())) / len(positives[q]))
        assert value == pytest.approx(np.mean(per_query))
        np.testing.assert_allclose(recall_per_query(scores, positives, k), per_query)
    assert got[30] == 1.0


def test_recall_breaks_ties_by_lower_index() -> None:
    scores = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert recall_at_k(scores, [[1]], ks=[1, 2]) == {1: 0.0, 2: 1.0}


def test_mean_average_precision_is_the_mean_of_the_per_query_ap() -> None:
    # query 0: positives at ranks 1 and 3 -> (1 + 2/3) / 2; query 1: its positive ranked last of 4 -> 1/4
    scores = np.array([[4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 2.0, 1.0]])
    assert mean_average_precision(scores, [[0, 2], [3]]) == pytest.approx(((1 + 2 / 3) / 2 + 1 / 4) / 2)


def test_k_occurrence_and_skewness() -> None:
    scores = np.array([[3.0, 2.0, 1.0, 0.0], [3.0, 1.0, 2.0, 0.0], [3.0, 0.0, 1.0, 2.0]])
    np.testing.assert_array_equal(k_occurrence(scores, 2), [3, 1, 1, 1])
    assert k_occurrence_skewness(scores, 2) == pytest.approx(scipy.stats.skew([3, 1, 1, 1]))
    rng = np.random.default_rng(2)
    big = rng.normal(size=(50, 80)) + 3 * (np.arange(80) < 3)  # three hubs
    counts = k_occurrence(big, 5)
    assert counts.sum() == 250
    assert counts[:3].min() >= 35
    assert k_occurrence_skewness(big, 5) == pytest.approx(scipy.stats.skew(counts))
    assert k_occurrence_skewness(big, 5) > 3
    assert k_occurrence_skewness(np.eye(4), 4) == 0.0


def test_k_occurrence_exclude_self() -> None:
    x = np.random.default_rng(3).normal(size=(10, 3))
    sim = x @ x.T
    counts = k_occurrence(sim, 3, exclude_self=True)
    manual = np.zeros(10, dtype=int)
    for i in range(10):
        order = [j for j in np.argsort(-sim[i], kind="stable") if j != i][:3]
        manual[order] += 1
    np.testing.assert_array_equal(counts, manual)
    with pytest.raises(DataError, match="square"):
        k_occurrence(sim[:5], 3, exclude_self=True)


@pytest.mark.parametrize(
    ("positives", "kwargs", "match"),
    [
        ([[0]] * 5, {}, "one entry per query"),
        ([[0], [1], [], [2], [3], [4]], {}, "empty"),
        ([[0], [1], [30], [2], [3], [4]], {}, "outside"),
        ([[0], [1], [2, 2], [2], [3], [4]], {}, "more than once"),
        ([[0], [1], [0.5], [2], [3], [4]], {}, "integer"),
        ([[0]] * 6, {"ks": [0]}, "k must be"),
        ([[0]] * 6, {"ks": [31]}, "k must be"),
    ],
)
def test_bad_inputs_raise(positives: list[list[float]], kwargs: dict[str, object], match: str) -> None:
    scores, _ = _case()
    with pytest.raises(DataError, match=match):
        recall_at_k(scores, positives, **kwargs)  # type: ignore[arg-type]


def test_nan_scores_raise() -> None:
    scores, positives = _case()
    scores[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        mean_average_precision(scores, positives)
