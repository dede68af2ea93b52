"""Post-processing perturbations of generated images: Gaussian blur, noise, centre crop, real JPEG.

Shared by the robustness tables of model attribution (FLIPAD's Table 3 perturbations and the keyed
generators' test-time post-processes): images are (n, C, H, W) tensors in [-1, 1] and every result is
clipped back to [-1, 1]. Noise takes a seed, so the same seed perturbs the same way.

Example:
    >>> import torch
    >>> x = torch.zeros(2, 1, 8, 8)
    >>> perturb(x, "blur", seed=0).shape
    torch.Size([2, 1, 8, 8])
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from genprov.data.images import resize_images, to_uint8
from genprov.exceptions import ConfigError
from genprov.utils.seeding import torch_generator

__all__ = ["PERTURBATIONS", "gaussian_blur", "jpeg_roundtrip", "perturb", "scipy_blur_radius"]

#: Named perturbations (FLIPAD's Table 3), ``name -> (kind, parameter)``.
PERTURBATIONS: dict[str, tuple[str, float]] = {
    "noise-0.05": ("noise", 0.05),
    "noise-0.1": ("noise", 0.1),
    "blur": ("blur", 1.0),
    "crop-0.94": ("crop", 0.94),
    "crop-0.86": ("crop", 0.86),
    "jpeg-90": ("jpeg", 90.0),
    "jpeg-80": ("jpeg", 80.0),
}


def scipy_blur_radius(sigma: float) -> int:
    """Kernel radius of the keyed-generators paper's blur: ``int(4 sigma + 0.5)`` (scipy's ``gaussian_filter``
    with ``truncate=4``), so sigma 1/3, 1, 5/3, 7/3, 3 give 3, 9, 15, 19, 25 taps, the filter sizes of the
    original code (decentralized_attribution_of_generative_models, attack_methods/Gaussian_blur.py:15-16)."""
    return int(4.0 * sigma + 0.5)


def gaussian_blur(x: Tensor, sigma: float, *, radius: int | None = None) -> Tensor:
    """Separable Gaussian blur of (n, C, H, W) images with reflect padding (differentiable).

    Args:
        x: Images.
        sigma: Standard deviation in pixels (0 returns ``x``).
        radius: Kernel radius (the kernel has ``2 radius + 1`` taps); default ``ceil(3 sigma)``, at least 1.
            Reflect padding needs it below the image side, so it is capped at ``min(H, W) - 1``.

    Returns:
        Blurred images of the same shape (``x`` itself when the radius is 0).
    """
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma)) if radius is None else int(radius)
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    if radius < 1:
        return x
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    out = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, kernel.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, kernel.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def jpeg_roundtrip(x: Tensor, quality: int) -> Tensor:
    """Encode (n, C, H, W) images in [-1, 1] as real JPEG files (Pillow) at ``quality`` and decode them.

    Args:
        x: Images (quantised to 8 bits on the way, as a saved file would be).
        quality: JPEG quality in [1, 95].

    Returns:
        The decoded images, float32 in [-1, 1].
    """
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 95:
        raise ConfigError(f"JPEG quality must be an integer in [1, 95]; got {quality!r}.")
    pixels = to_uint8(x)
    out = np.empty_like(pixels)
    for i, image in enumerate(pixels):
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=quality)
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert(pil.mode))
        out[i] = decoded.reshape(image.shape)
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0


def perturb(x: Tensor, name: str, *, seed: int) -> Tensor:
    """Apply a named perturbation to (n, C, H, W) images in [-1, 1] (result clipped to [-1, 1]).

    Args:
        x: Images.
        name: A key of :data:`PERTURBATIONS`: ``noise-s`` (Gaussian noise, sigma ``s`` times the value range
            of 2), ``blur`` (Gaussian blur, sigma 1 pixel), ``crop-f`` (centre crop to ``round(f H)`` pixels,
            resized back bilinearly), ``jpeg-q`` (JPEG at quality ``q``).
        seed: Seed of the noise.

    Returns:
        Perturbed images (not yet quantised, except JPEG).
    """
    if name not in PERTURBATIONS:
        raise ConfigError(f"Unknown perturbation {name!r}; choose one of {', '.join(PERTURBATIONS)}.")
    kind, value = PERTURBATIONS[name]
    if kind == "noise":
        noise = torch.randn(x.shape, generator=torch_generator(seed, "perturb", name))
        return (x + 2.0 * value * noise).clamp(-1, 1)
    if kind == "blur":
        return gaussian_blur(x, value).clamp(-1, 1)
    if kind == "crop":
        size = x.shape[-1]
        side = max(1, round(value * size))
        top = (size - side) // 2
        return resize_images(x[..., top : top + side, top : top + side], size).clamp(-1, 1)
    return jpeg_roundtrip(x, int(value))
