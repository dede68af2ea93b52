"""Means with bootstrap confidence intervals.

Every headline number genprov reports (mean SSIM of a reconstruction attack, mean LDS of an attributor, the
gain of method A over method B) comes with a percentile-bootstrap confidence interval computed here, from
a seed, so that reports are reproducible.

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

__all__ = ["MeanCI", "paired_difference_ci", "summarize"]

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
