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


def test_holm_adjust_matches_the_step_down_definition() -> None:
    from genprov.eval.stats import holm_adjust

    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(holm_adjust(p), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm_adjust([0.2]), [0.2])
    np.testing.assert_allclose(holm_adjust([0.6, 0.5]), [1.0, 1.0])  # capped at 1
    adjusted = holm_adjust(np.random.default_rng(0).uniform(size=20))
    assert (adjusted >= 0).all() and (adjusted <= 1).all()
    for bad, match in (([1.5], r"\[0, 1\]"), ([], "empty"), ([float("nan")], "NaN")):
        with pytest.raises(DataError, match=match):
            holm_adjust(bad)


def test_paired_sign_flip_p_value() -> None:
    from genprov.eval.stats import paired_sign_flip_p_value

    rng = np.random.default_rng(0)
    base = rng.normal(size=150)
    shifted = base + 0.5 + rng.normal(scale=0.1, size=150)
    assert paired_sign_flip_p_value(shifted, base, n_perm=2000) == pytest.approx(1 / 2001)  # never 0
    same = paired_sign_flip_p_value(base + rng.normal(scale=0.1, size=150), base, seed=1)
    assert 0.01 < same <= 1.0
    assert paired_sign_flip_p_value(shifted, base, seed=3) == paired_sign_flip_p_value(shifted, base, seed=3)
    assert paired_sign_flip_p_value(base, base) == 1.0  # no difference: every flip ties
    # under the null (symmetric differences) about 5% of p-values fall below 0.05
    null = [paired_sign_flip_p_value(rng.normal(size=30), np.zeros(30), seed=i, n_perm=400) for i in range(200)]
    assert 0.01 < np.mean(np.array(null) < 0.05) < 0.11
    with pytest.raises(DataError, match="n_perm"):
        paired_sign_flip_p_value(base, base, n_perm=0)
