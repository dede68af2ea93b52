"""Means with bootstrap confidence intervals, paired tests and the Holm multiplicity correction.

Every headline number genprov reports (mean SSIM of a reconstruction attack, mean LDS of an attributor, the
gain of method A over method B) comes with a percentile-bootstrap confidence interval computed here, from
a seed, so that reports are reproducible. Where a report makes many comparisons (a sweep of settings,
several explainers or datasets), each one's paired p-value (:func:`paired_sign_flip_p_value`) is adjusted
with :func:`holm_adjust` over the whole family before a win is claimed.

Example:
    >>> ci = summarize([0.2, 0.4, 0.6, 0.8], seed=0)
    >>> round(ci.mean, 3), ci.low <= ci.mean <= ci.high
    (0.5, True)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from genprov.exceptions import DataError
from genprov.utils.arrays import ArrayLike, as_float_array, check_same_rows
from genprov.utils.seeding import numpy_rng

__all__ = ["MeanCI", "holm_adjust", "paired_difference_ci", "paired_sign_flip_p_value", "summarize"]

_MAX_DRAWS_PER_CHUNK = 4_000_000  # resampled values held in memory at once


@dataclasses.dataclass(frozen=True)
class MeanCI:
    """A sample mean with a two-sided percentile-bootstrap confidence interval.

    Attributes:
        mean: Mean of the values.
        low: Lower end of the interval.
        high: Upper end of the interval.
        n: Number of values the mean is over.
        confidence: Coverage of the interval, e.g. 0.95.
    """

    mean: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form: ``{"mean", "low", "high", "n", "confidence"}``."""
        return dataclasses.asdict(self)

    def format(self, spec: str = ".3f") -> str:
        """``"0.812 [0.790, 0.833]"`` with each number formatted by ``spec``."""
        return f"{self.mean:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"

    def __str__(self) -> str:
        return self.format()


def summarize(values: ArrayLike, *, seed: int = 0, n_boot: int = 2000, confidence: float = 0.95) -> MeanCI:
    """Mean of ``values`` with a percentile-bootstrap confidence interval.

    Resamples ``values`` with replacement ``n_boot`` times (from a local generator seeded by ``seed``) and
    takes the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the resampled means
    (Efron & Tibshirani, 1993, ch. 13).

    Args:
        values: (n,) finite numbers, e.g. per-image SSIM or per-query LDS.
        seed: Seed of the resampling; the same seed gives the same interval.
        n_boot: Number of bootstrap resamples.
        confidence: Coverage of the interval, in (0, 1).

    Returns:
        The mean and interval. With a single value the interval collapses to it.

    Raises:
        DataError: If ``values`` is empty, not 1-D, or contains NaN / infinite values.
    """
    x = as_float_array(values, "values", ndim=1)
    if not 0.0 < confidence < 1.0:
        raise DataError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence!r}.")
    if int(n_boot) < 1:
        raise DataError(f"n_boot must be a positive integer, e.g. 2000; got {n_boot!r}.")
    n = x.size
    rng = numpy_rng(seed, "bootstrap-mean")
    means = np.empty(int(n_boot))
    chunk = max(1, _MAX_DRAWS_PER_CHUNK // n)
    for start in range(0, int(n_boot), chunk):
        stop = min(int(n_boot), start + chunk)
        means[start:stop] = x[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return MeanCI(mean=float(x.mean()), low=float(low), high=float(high), n=n, confidence=float(confidence))


def paired_difference_ci(
    a: ArrayLike, b: ArrayLike, *, seed: int = 0, n_boot: int = 2000, confidence: float = 0.95
) -> MeanCI:
    """Mean of ``a - b`` over paired items with a paired-bootstrap confidence interval.

    Use it to compare two methods on the same queries (e.g. the per-query LDS of D-TRAK and TRAK): the
    items are resampled jointly, so the interval accounts for per-item difficulty. Method ``a`` is better
    at the stated confidence when the interval lies above 0 (for a higher-is-better metric).

    Args:
        a: (n,) per-item values of the first method.
        b: (n,) per-item values of the second method, same items in the same order.
        seed: Seed of the resampling.
        n_boot: Number of bootstrap resamples.
        confidence: Coverage of the interval, in (0, 1).

    Raises:
        DataError: If ``a`` and ``b`` differ in shape, are empty, or contain NaN.
    """
    xa = as_float_array(a, "a", ndim=1)
    xb = as_float_array(b, "b", ndim=1)
    check_same_rows(xa, xb, "a", "b")
    return summarize(xa - xb, seed=seed, n_boot=n_boot, confidence=confidence)


def paired_sign_flip_p_value(a: ArrayLike, b: ArrayLike, *, seed: int = 0, n_perm: int = 10_000) -> float:
    """Two-sided p-value of "the mean of ``a - b`` is 0" by a paired permutation (sign-flip) test.

    Under the null the sign of each paired difference is exchangeable; the p-value is the share of
    ``n_perm`` random sign flips (from a local generator seeded by ``seed``) whose mean difference is at
    least as far from 0 as the observed one, counting the observed one: ``(1 + hits) / (1 + n_perm)``
    (Phipson & Smyth, 2010), so it is never 0.

    Args:
        a: (n,) per-item values of the first method.
        b: (n,) per-item values of the second method, same items in the same order.
        seed: Seed of the sign flips.
        n_perm: Number of random sign flips.

    Returns:
        The p-value, in (0, 1].

    Raises:
        DataError: ``a`` and ``b`` differ in shape, are empty or hold NaN; ``n_perm`` below 1.
    """
    xa = as_float_array(a, "a", ndim=1)
    xb = as_float_array(b, "b", ndim=1)
    check_same_rows(xa, xb, "a", "b")
    if int(n_perm) < 1:
        raise DataError(f"n_perm must be a positive integer, e.g. 10000; got {n_perm!r}.")
    d = xa - xb
    n = d.size
    observed = abs(float(d.mean()))
    tol = 1e-12 * max(1.0, observed)  # flips that reproduce the observed mean up to rounding count as hits
    rng = numpy_rng(seed, "sign-flip")
    hits = 0
    chunk = max(1, _MAX_DRAWS_PER_CHUNK // n)
    for start in range(0, int(n_perm), chunk):
        stop = min(int(n_perm), start + chunk)
        signs = rng.integers(0, 2, size=(stop - start, n)) * 2 - 1
        hits += int((np.abs((signs * d).mean(axis=1)) >= observed - tol).sum())
    return (1 + hits) / (1 + int(n_perm))


def holm_adjust(p_values: ArrayLike) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (Holm, 1979): family-wise error control over all the comparisons.

    With the ``m`` p-values sorted, ``p_(1) <= ... <= p_(m)``, the adjusted value of ``p_(i)`` is
    ``max_{j <= i} min(1, (m - j + 1) * p_(j))``; a comparison is significant at level ``alpha`` with the
    family-wise error held at ``alpha`` when its adjusted p-value is below ``alpha``.

    Args:
        p_values: (m,) p-values in [0, 1], in any order.

    Returns:
        (m,) adjusted p-values, in the input's order.

    Raises:
        DataError: Values outside [0, 1], NaN, or an empty or non-1-D input.

    Example:
        >>> holm_adjust([0.01, 0.04, 0.03]).round(3).tolist()
        [0.03, 0.06, 0.06]
    """
    p = as_float_array(p_values, "p_values", ndim=1)
    if ((p < 0) | (p > 1)).any():
        raise DataError(f"p_values must lie in [0, 1]; got values in [{p.min():.4g}, {p.max():.4g}].")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted
