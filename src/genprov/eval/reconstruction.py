"""Per-image reconstruction quality: MSE, PSNR and SSIM.

Used to measure how well an inversion attack rebuilds private inputs from explanations (ExpMI, PredMI) and
how much a defense (GNIME) degrades that. Every metric takes two image batches of the same shape
(n, C, H, W), computes in float64 and returns a float64 tensor of shape (n,) with one value per image;
:func:`summarize` turns that into a mean with a bootstrap confidence interval.

genprov images live in [-1, 1], so the default ``data_range`` (max - min of the value range) is 2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from genprov.eval._checks import to_tensor
from genprov.eval.stats import summarize
from genprov.exceptions import DataError
from genprov.utils.validation import check_images

__all__ = ["mse", "psnr", "ssim", "summarize"]


def _pair(x: object, y: object) -> tuple[Tensor, Tensor]:
    """Check two image batches of the same shape and return them as float64 tensors."""
    tx = check_images(to_tensor(x, "x"), "x", value_range=None)
    ty = check_images(to_tensor(y, "y"), "y", value_range=None)
    if tx.shape != ty.shape:
        raise DataError(
            f"x and y must have the same shape (n, C, H, W); got {tuple(tx.shape)} and {tuple(ty.shape)}. "
            "Pair each reconstruction with its original."
        )
    if tx.shape[0] == 0:
        raise DataError("x and y are empty; pass at least one image pair.")
    return tx.detach().to("cpu", torch.float64), ty.detach().to("cpu", torch.float64)


def _check_data_range(data_range: float) -> float:
    if not (isinstance(data_range, (int, float)) and math.isfinite(data_range) and data_range > 0):
        raise DataError(f"data_range must be a positive number (2 for images in [-1, 1]); got {data_range!r}.")
    return float(data_range)


def mse(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error per image.

    Args:
        x: (n, C, H, W) reconstructions.
        y: (n, C, H, W) originals.

    Returns:
        (n,) float64; lower = better reconstruction.
    """
    tx, ty = _pair(x, y)
    return (tx - ty).pow(2).mean(dim=(1, 2, 3))


def psnr(x: Tensor, y: Tensor, *, data_range: float = 2.0) -> Tensor:
    """Peak signal-to-noise ratio per image, ``10 log10(data_range^2 / MSE)`` in dB.

    Args:
        x: (n, C, H, W) reconstructions.
        y: (n, C, H, W) originals.
        data_range: Width of the value range: 2 for [-1, 1] images, 1 for [0, 1], 255 for uint8.

    Returns:
        (n,) float64; higher = better reconstruction; ``+inf`` where an image is reproduced exactly.
    """
    peak = _check_data_range(data_range)
    err = mse(x, y)
    return 10.0 * torch.log10(peak**2 / err)


def _gaussian_window(size: int, sigma: float) -> Tensor:
    """(size, size) float64 Gaussian window that sums to 1."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def _window_size(window_size: int | None, height: int, width: int) -> int:
    fits = min(height, width)
    if window_size is None:
        largest_odd = fits if fits % 2 == 1 else fits - 1
        if largest_odd < 1:
            raise DataError(f"Images of {height}x{width} pixels are too small for SSIM.")
        return min(11, largest_odd)
    if not isinstance(window_size, int) or window_size < 1 or window_size % 2 == 0:
        raise DataError(f"window_size must be a positive odd integer (e.g. 11); got {window_size!r}.")
    if window_size > fits:
        raise DataError(
            f"window_size={window_size} does not fit {height}x{width} images; pass window_size <= {fits} "
            "or window_size=None to use the largest odd window up to 11."
        )
    return window_size


def ssim(
    x: Tensor,
    y: Tensor,
    *,
    data_range: float = 2.0,
    window_size: int | None = None,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Structural similarity per image (Wang et al., 2004, "Image quality assessment: from error visibility
    to structural similarity", eq. 13 with a Gaussian window).

    Local means, variances and the covariance are Gaussian-weighted over each window position that fits
    entirely inside the image ("valid" filtering, as in the paper and ``skimage`` after its border crop);
    the SSIM map is averaged over positions and then over channels.

    Args:
        x: (n, C, H, W) reconstructions.
        y: (n, C, H, W) originals.
        data_range: Width of the value range (2 for [-1, 1] images).
        window_size: Odd side of the Gaussian window. ``None`` (default) uses 11, or the largest odd size
            that fits for smaller images (7 for 8x8 digits).
        sigma: Standard deviation of the Gaussian window, in pixels.
        k1: Stabiliser of the luminance term, ``C1 = (k1 * data_range)^2``.
        k2: Stabiliser of the contrast-structure term, ``C2 = (k2 * data_range)^2``.

    Returns:
        (n,) float64 in [-1, 1]; 1 for identical images, higher = better reconstruction.
    """
    tx, ty = _pair(x, y)
    peak = _check_data_range(data_range)
    if not sigma > 0:
        raise DataError(f"sigma must be positive (1.5 in the SSIM paper); got {sigma!r}.")
    _, channels, height, width = tx.shape
    size = _window_size(window_size, height, width)
    window = _gaussian_window(size, sigma).expand(channels, 1, size, size)

    def blur(z: Tensor) -> Tensor:
        return F.conv2d(z, window, groups=channels)

    mu_x, mu_y = blur(tx), blur(ty)
    var_x = blur(tx * tx) - mu_x**2
    var_y = blur(ty * ty) - mu_y**2
    cov = blur(tx * ty) - mu_x * mu_y
    c1, c2 = (k1 * peak) ** 2, (k2 * peak) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3))
