"""Bootstrap means and paired differences: determinism, coverage, and agreement with the normal approximation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genprov.eval import MeanCI, paired_difference_ci, summarize
from genprov.exceptions import DataError


def test_summarize_is_seeded_and_close_to_normal_interval() -> None:
    x = np.random.default_rng(0).normal(1.0, 2.0, size=400)
    ci = summarize(x, seed=1, n_boot=4000)
    assert ci == summarize(x, seed=1, n_boot=4000)
    assert ci != summarize(x, seed=2, n_boot=4000)
    half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert ci.mean == pytest.approx(x.mean())
    assert ci.high - ci.low == pytest.approx(2 * half, rel=0.1)
    assert ci.low == pytest.approx(x.mean() - half, abs=0.1 * half)


def test_summarize_edge_cases() -> None:
    one = summarize([0.3])
    assert (one.mean, one.low, one.high, one.n) == pytest.approx((0.3, 0.3, 0.3, 1))
    wide = summarize(torch.arange(10.0), confidence=0.99)
    narrow = summarize(torch.arange(10.0), confidence=0.5)
    assert wide.low <= narrow.low <= narrow.high <= wide.high
    assert str(MeanCI(0.5, 0.25, 0.75, 3)) == "0.500 [0.250, 0.750]"
    assert MeanCI(0.5, 0.25, 0.75, 3).to_dict()["n"] == 3


@pytest.mark.parametrize(
    ("values", "kwargs", "match"),
    [
        ([], {}, "empty"),
        ([1.0, float("nan")], {}, "NaN"),
        ([[1.0, 2.0]], {}, "shape"),
        ([1.0, 2.0], {"confidence": 1.0}, "confidence"),
        ([1.0, 2.0], {"n_boot": 0}, "n_boot"),
    ],
)
def test_summarize_bad_inputs(values: list[float], kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(DataError, match=match):
        summarize(values, **kwargs)  # type: ignore[arg-type]


def test_paired_difference_ci() -> None:
    rng = np.random.default_rng(3)
    difficulty = rng.normal(size=200)
    a = difficulty + 0.1 + 0.05 * rng.normal(size=200)
    b = difficulty + 0.05 * rng.normal(size=200)
    ci = paired_difference_ci(a, b, seed=0)
    assert ci == summarize(a - b, seed=0)
    assert ci.low > 0  # pairing removes the shared difficulty
    with pytest.raises(DataError, match="same shape"):
        paired_difference_ci(a, b[:-1])
