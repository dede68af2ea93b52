"""Input conversion and checks shared by the metric functions (:mod:`genprov.metrics`, :mod:`genprov.eval`).

Metrics accept torch tensors, numpy arrays or plain sequences; these helpers turn them into float64 (or
bool / int64) numpy arrays and raise :class:`~genprov.exceptions.DataError` naming the argument, what
was expected and what came.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
import torch
from torch import Tensor

from genprov.exceptions import DataError

__all__ = [
    "ArrayLike",
    "as_bool_matrix",
    "as_float_array",
    "as_index_list",
    "check_fraction",
    "check_same_rows",
    "to_tensor",
]

ArrayLike: TypeAlias = "Tensor | np.ndarray | Sequence[Any]"
"""What metrics accept: a torch tensor (any device, detached here), a numpy array, or a nested sequence."""


def _to_numpy(x: object, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().to("cpu")
        return (x.to(torch.float64) if x.is_floating_point() else x).numpy()  # bfloat16 has no numpy dtype
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (list, tuple)):
        try:
            return np.asarray(x)
        except ValueError as err:  # ragged nested lists
            raise DataError(f"{name} must be a rectangular array; got a ragged sequence ({err}).") from None
    raise DataError(f"{name} must be a torch.Tensor, a numpy array or a list of numbers; got {type(x).__name__}.")


def as_float_array(x: object, name: str, *, ndim: int, min_len: int = 1, allow_nan: bool = False) -> np.ndarray:
    """Return ``x`` as a finite float64 array with ``ndim`` dimensions and at least ``min_len`` rows.

    Args:
        x: A tensor, array or sequence of numbers.
        name: How error messages refer to ``x``.
        ndim: Required number of dimensions.
        min_len: Required minimum size of the first dimension.
        allow_nan: Let NaN through (infinite values are still refused).

    Raises:
        DataError: On a wrong type, shape, a non-numeric dtype, too few rows, or NaN / infinite values.
    """
    arr = _to_numpy(x, name)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.number)):
        raise DataError(f"{name} must hold real numbers; got dtype {arr.dtype}.")
    if np.iscomplexobj(arr):
        raise DataError(f"{name} must hold real numbers; got complex dtype {arr.dtype}.")
    if arr.ndim != ndim:
        shape = "(n,)" if ndim == 1 else "(n, d)" if ndim == 2 else f"{ndim} dimensions"
        raise DataError(f"{name} must have shape {shape}; got shape {tuple(arr.shape)}.")
    if arr.shape[0] < min_len:
        what = "empty" if arr.shape[0] == 0 else f"only {arr.shape[0]} row(s)"
        raise DataError(f"{name} needs at least {min_len} row(s); it is {what}.")
    arr = arr.astype(np.float64, copy=False)
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if bad.any():
        raise DataError(f"{name} contains {int(bad.sum())} NaN or infinite values; clean or drop those entries first.")
    return arr


def as_bool_matrix(x: object, name: str) -> np.ndarray:
    """Return ``x`` as a 2-D bool array; accepts bool or 0/1 numbers.

    Raises:
        DataError: If ``x`` is not 2-D or holds values other than 0 and 1.
    """
    arr = _to_numpy(x, name)
    if arr.ndim != 2:
        raise DataError(f"{name} must be a 2-D boolean mask; got shape {tuple(arr.shape)}.")
    if arr.dtype != np.bool_:
        if not np.issubdtype(arr.dtype, np.number) or not np.isin(arr, (0, 1)).all():
            raise DataError(
                f"{name} must be a boolean mask (True/False or 0/1); got dtype {arr.dtype} with other values."
            )
        arr = arr.astype(bool)
    return arr


def as_index_list(positives: object, name: str, *, n_rows: int, n_items: int) -> list[np.ndarray]:
    """Return one int64 index array per row, each non-empty, unique and within ``[0, n_items)``.

    Args:
        positives: A sequence of ``n_rows`` index collections (lists, arrays or tensors).
        name: How error messages refer to it.
        n_rows: Required number of collections (one per query).
        n_items: Number of items the indices point into.
    """
    if isinstance(positives, (Tensor, np.ndarray)) and positives.ndim == 2:
        rows: Sequence[object] = list(positives)
    elif isinstance(positives, Sequence) and not isinstance(positives, str):
        rows = positives
    else:
        raise DataError(f"{name} must be a list with one array of indices per query; got {type(positives).__name__}.")
    if len(rows) != n_rows:
        raise DataError(f"{name} must have one entry per query ({n_rows}); got {len(rows)}.")
    out = []
    for q, row in enumerate(rows):
        idx = _to_numpy(row, f"{name}[{q}]") if not isinstance(row, (int, np.integer)) else np.asarray([row])
        idx = idx.reshape(-1)
        if idx.size == 0:
            raise DataError(
                f"{name}[{q}] is empty; every query needs at least one positive (drop the query otherwise)."
            )
        if not np.issubdtype(idx.dtype, np.integer):
            raise DataError(f"{name}[{q}] must hold integer indices; got dtype {idx.dtype}.")
        if idx.min() < 0 or idx.max() >= n_items:
            raise DataError(f"{name}[{q}] holds indices outside [0, {n_items}); got min {idx.min()}, max {idx.max()}.")
        if np.unique(idx).size != idx.size:
            raise DataError(f"{name}[{q}] lists an index more than once; pass each positive once.")
        out.append(idx.astype(np.int64))
    return out


def check_same_rows(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Raise :class:`DataError` unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise DataError(f"{name_a} and {name_b} must have the same shape; got {a.shape} and {b.shape}.")


def check_fraction(value: float, name: str, *, closed_high: bool = True) -> float:
    """Return ``value`` as float if it lies in [0, 1] (or [0, 1) when ``closed_high`` is false)."""
    v = float(value)
    ok = 0.0 <= v <= 1.0 if closed_high else 0.0 <= v < 1.0
    if not ok:
        interval = "[0, 1]" if closed_high else "[0, 1)"
        raise DataError(f"{name} must be a fraction in {interval}; got {value!r}.")
    return v


def to_tensor(x: object, name: str) -> Tensor:
    """Return ``x`` as a tensor (numpy arrays are wrapped without copying)."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    raise DataError(f"{name} must be a torch.Tensor or numpy array; got {type(x).__name__}.")
