"""Input checks with messages that name the input, what was expected, what came, and the fix."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from genprov.exceptions import DataError

__all__ = ["check_finite", "check_images", "check_matrix", "check_range"]


def check_finite(x: Tensor, name: str) -> None:
    """Raise :class:`DataError` if ``x`` has NaN or infinite values.

    One ``aminmax`` pass (NaN and inf propagate to the extremes) is several times faster than
    ``isfinite(x).all()`` on large single-threaded tensors; the slow count runs only on failure.
    """
    if not x.is_floating_point() or x.numel() == 0:
        return
    lo, hi = torch.aminmax(x.detach())
    if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
        n_bad = int((~torch.isfinite(x)).sum())
        raise DataError(f"{name} contains {n_bad} NaN or infinite values; clean or drop those entries first.")


def check_range(x: Tensor, name: str, low: float = -1.0, high: float = 1.0, *, tol: float = 1e-4) -> None:
    """Raise :class:`DataError` unless every value of ``x`` lies in ``[low, high]`` (up to ``tol``)."""
    if x.numel() == 0:
        return
    lo_t, hi_t = torch.aminmax(x.detach())
    lo, hi = float(lo_t), float(hi_t)
    if lo < low - tol or hi > high + tol:
        raise DataError(
            f"{name} must have values in [{low}, {high}]; got values in [{lo:.4g}, {hi:.4g}]. "
            "genprov's images are float tensors scaled to [-1, 1]: use genprov.data.to_model_range on "
            "uint8 or [0, 1] images."
        )


def check_images(
    x: object,
    name: str = "images",
    *,
    channels: int | None = None,
    size: int | Sequence[int] | None = None,
    value_range: tuple[float, float] | None = (-1.0, 1.0),
) -> Tensor:
    """Check that ``x`` is a finite float image batch of shape (n, C, H, W) and return it.

    Args:
        x: The batch to check.
        name: How the error message refers to it.
        channels: Required C, if any.
        size: Required H (=W) as an int, or (H, W).
        value_range: Required value range, or ``None`` to skip the range check.
    """
    if not isinstance(x, Tensor):
        raise DataError(f"{name} must be a torch.Tensor of shape (n, C, H, W); got {type(x).__name__}.")
    if x.ndim != 4:
        hint = " Add a batch dimension with x.unsqueeze(0)." if x.ndim == 3 else ""
        raise DataError(f"{name} must have shape (n, C, H, W); got shape {tuple(x.shape)}.{hint}")
    if not x.is_floating_point():
        raise DataError(f"{name} must be a float tensor in [-1, 1]; got dtype {x.dtype}.")
    if channels is not None and x.shape[1] != channels:
        raise DataError(f"{name} must have {channels} channel(s); got shape {tuple(x.shape)} with {x.shape[1]}.")
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(x.shape[2:]) != tuple(hw):
            raise DataError(
                f"{name} must be {hw[0]}x{hw[1]} pixels; got {x.shape[2]}x{x.shape[3]}. "
                "Resize them to the model's size first (genprov.data.resize_images; commands that offer it take --resize)."
            )
    check_finite(x, name)
    if value_range is not None:
        check_range(x, name, *value_range)
    return x


def check_matrix(x: object, name: str, *, n_cols: int | None = None) -> Tensor:
    """Check that ``x`` is a finite 2-D float tensor (optionally with ``n_cols`` columns) and return it."""
    if not isinstance(x, Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise DataError(f"{name} must be a 2-D tensor (n, d); got {shape}.")
    if n_cols is not None and x.shape[1] != n_cols:
        raise DataError(f"{name} must have {n_cols} columns; got shape {tuple(x.shape)}.")
    check_finite(x, name)
    return x
