"""Evaluation of data attribution: the linear datamodeling score (LDS).

LDS (Park et al., 2023, "TRAK: attributing model behavior at scale", sec. 2.2 / def. 2.3; used for
diffusion models by Zheng et al., 2024, "Intriguing properties of data attribution on diffusion models",
D-TRAK, sec. 4) asks whether attribution scores, added up over a random training subset, predict how a
model retrained on that subset behaves on a query. The experiments layer trains the subset models and
records their outputs; this module only compares numbers.

Sign convention: ``outputs`` must be the quantity the scores are meant to predict, oriented so that a
higher total score should mean a higher output (for a diffusion loss, where positive influence lowers
the loss on the query, pass ``-loss``).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from genprov.eval.stats import MeanCI, paired_difference_ci, summarize
from genprov.exceptions import DataError
from genprov.utils.arrays import ArrayLike, as_bool_matrix, as_float_array

__all__ = ["MeanCI", "lds_summary", "linear_datamodeling_score", "paired_difference_ci"]

_MIN_SUBSETS = 3


def _spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation between matching columns of ``a`` and ``b`` (both (n, m)); NaN for constant columns."""
    ra = rankdata(a, axis=0)
    rb = rankdata(b, axis=0)
    ra -= ra.mean(axis=0)
    rb -= rb.mean(axis=0)
    num = (ra * rb).sum(axis=0)
    den = np.sqrt((ra * ra).sum(axis=0) * (rb * rb).sum(axis=0))
    out = np.full(a.shape[1], np.nan)
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return np.clip(out, -1.0, 1.0)


def linear_datamodeling_score(scores: ArrayLike, subset_masks: ArrayLike, outputs: ArrayLike) -> np.ndarray:
    """Per-query LDS: Spearman correlation, across subsets, of predicted and actual model outputs.

    For query ``j`` and subset ``s`` the prediction is ``sum(scores[j, i] for i in subset s)``; LDS of the
    query is the Spearman rank correlation between those predictions and ``outputs[:, j]`` over subsets.

    Args:
        scores: (n_q, n_train) attribution scores, higher = more positive influence on the query.
        subset_masks: (n_subsets, n_train) bool (or 0/1), True where a training example is in the subset.
        outputs: (n_subsets, n_q) output on each query of the model trained on each subset.

    Returns:
        (n_q,) float64 in [-1, 1]; higher = better. NaN for a query whose predictions or outputs are
        constant across subsets (the correlation is undefined).

    Raises:
        DataError: On mismatched shapes, fewer than 3 subsets, non-boolean masks, or NaN.
    """
    s = as_float_array(scores, "scores", ndim=2)
    masks = as_bool_matrix(subset_masks, "subset_masks")
    out = as_float_array(outputs, "outputs", ndim=2)
    n_q, n_train = s.shape
    if masks.shape[1] != n_train:
        raise DataError(
            f"subset_masks must have one column per training example ({n_train}, the columns of scores); "
            f"got shape {masks.shape}."
        )
    if out.shape != (masks.shape[0], n_q):
        raise DataError(
            f"outputs must have shape (n_subsets, n_q) = ({masks.shape[0]}, {n_q}); got {out.shape}. "
            "Transpose it if it is (n_q, n_subsets)."
        )
    if masks.shape[0] < _MIN_SUBSETS:
        raise DataError(
            f"LDS needs at least {_MIN_SUBSETS} subsets to rank; got {masks.shape[0]} (TRAK uses 50 or more)."
        )
    predicted = masks.astype(np.float64) @ s.T
    return _spearman_columns(predicted, out)


def lds_summary(
    lds: ArrayLike,
    *,
    seed: int = 0,
    n_boot: int = 2000,
    confidence: float = 0.95,
    ignore_nan: bool = False,
) -> MeanCI:
    """Mean LDS over queries with a bootstrap confidence interval (see :func:`~genprov.eval.stats.summarize`).

    Args:
        lds: (n_q,) per-query LDS from :func:`linear_datamodeling_score`.
        seed: Seed of the bootstrap.
        n_boot: Number of bootstrap resamples.
        confidence: Coverage of the interval.
        ignore_nan: Drop queries whose LDS is undefined (NaN) instead of raising.

    Raises:
        DataError: If ``lds`` has NaN entries and ``ignore_nan`` is false, or nothing is left.
    """
    values = as_float_array(lds, "lds", ndim=1, allow_nan=True)
    nan = np.isnan(values)
    if nan.any():
        if not ignore_nan:
            raise DataError(
                f"{int(nan.sum())} of {values.size} queries have an undefined LDS (constant predictions or "
                "outputs across subsets); pass ignore_nan=True to summarize the rest."
            )
        values = values[~nan]
    return summarize(values, seed=seed, n_boot=n_boot, confidence=confidence)
