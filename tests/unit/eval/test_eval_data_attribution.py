"""LDS against scipy.stats.spearmanr, and its summary."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from genprov.eval import lds_summary, linear_datamodeling_score, summarize
from genprov.exceptions import DataError


def _case(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_q, n_train, n_subsets = 4, 25, 20
    true = rng.normal(size=(n_q, n_train))
    masks = rng.random((n_subsets, n_train)) < 0.5
    outputs = masks @ true.T + rng.normal(scale=2.0, size=(n_subsets, n_q))
    scores = true + rng.normal(scale=0.5, size=true.shape)
    return scores, masks, outputs


def test_lds_matches_scipy_spearman() -> None:
    scores, masks, outputs = _case()
    lds = linear_datamodeling_score(scores, masks, outputs)
    assert lds.shape == (4,)
    for q in range(4):
        predicted = np.array([scores[q, m].sum() for m in masks])
        assert lds[q] == pytest.approx(scipy.stats.spearmanr(predicted, outputs[:, q]).statistic)
    # tensors and 0/1 masks work the same
    same = linear_datamodeling_score(torch.from_numpy(scores), torch.from_numpy(masks.astype(np.int64)), outputs)
    np.testing.assert_allclose(same, lds)


def test_lds_hand_made() -> None:
    scores, masks, _ = _case(1)
    exact = masks @ scores.T
    np.testing.assert_allclose(linear_datamodeling_score(scores, masks, exact), 1.0)
    np.testing.assert_allclose(linear_datamodeling_score(-scores, masks, exact), -1.0)
    np.testing.assert_allclose(linear_datamodeling_score(scores, masks, np.exp(exact)), 1.0)  # rank-based


def test_lds_constant_outputs_are_nan_and_summary_refuses_them() -> None:
    scores, masks, outputs = _case(2)
    outputs[:, 1] = 3.0
    lds = linear_datamodeling_score(scores, masks, outputs)
    assert np.isnan(lds[1])
    assert not np.isnan(lds[[0, 2, 3]]).any()
    with pytest.raises(DataError, match="ignore_nan"):
        lds_summary(lds)
    assert lds_summary(lds, ignore_nan=True, seed=1) == summarize(lds[[0, 2, 3]], seed=1)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda s, m, o: (s, m[:, :-1], o), "one column per training example"),
        (lambda s, m, o: (s, m, o.T), "Transpose"),
        (lambda s, m, o: (s, m[:2], o[:2]), "at least 3 subsets"),
        (lambda s, m, o: (s, m * 2.0, o), "boolean mask"),
        (lambda s, m, o: (s * np.nan, m, o), "NaN"),
    ],
)
def test_bad_inputs_raise(change: object, match: str) -> None:
    args = change(*_case())  # type: ignore[operator]
    with pytest.raises(DataError, match=match):
        linear_datamodeling_score(*args)
