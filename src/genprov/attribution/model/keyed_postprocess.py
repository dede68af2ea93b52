"""Differentiable post-processes for robust keyed generators (Kim, Ren & Yang, ICLR 2021, Sec. 5).

A keyed user model should stay attributable after its owner (or an adversary) post-processes its images.
Robust training (``genprov.attribution.model.keyed``) therefore applies the same random post-process
``T`` to ``G_i(z)`` and ``G0(z)`` during fine-tuning, which needs every ``T`` to pass gradients:

=========== ================================================== ================================ ==========
name        what                                               training strength (random)       test
=========== ================================================== ================================ ==========
blur        Gaussian blur, ``2 int(4 sigma + 0.5) + 1`` taps   sigma ~ U[1/3, 3] px at 64x64    sigma 3
crop        centre crop to ``round(r H)`` px, resized back     r ~ U[0.8, 1]                    r 0.8
noise       additive Gaussian noise (images in [-1, 1])        sigma ~ U[0, 0.3]                0.3
jpeg        JPEG approximation (below)                         quality ~ U[50, 95]              real JPEG
combination blur, crop, noise, jpeg in that order              each as above                    see below
=========== ================================================== ================================ ==========

The training ranges and test strengths are the original code's (attack_methods/attack_initializer.py:10-31
of decentralized_attribution_of_generative_models): blur kernel sizes 1..9 mean sigma = size / 3 with
filters of 3..25 taps (Gaussian_blur.py:15-16, scipy's ``truncate=4`` rule). Those strengths were set for
64x64 MNIST (data_prepare.py:60-65), so blur sigmas are given *at* ``reference_size`` (64) and scaled by
``H / reference_size`` for H x H images: sigma 3 at 64 px is sigma 0.75 at 16 px, the same share of the
image (``reference_size=None`` takes them as pixels at any size, genprov's earlier setting). Crop ratios
and noise levels are already relative to the image and JPEG works on fixed 8x8 blocks, so they do not scale.

**JPEG approximation.** Images go to 8-bit units, colour images to YCbCr (JFIF, no chroma subsampling),
each channel is split into 8x8 blocks (edge-replicated padding) and transformed with the orthonormal 2-D
DCT-II, the transform of the JPEG standard. Coefficients are quantised with the IJG tables at the given
quality, exactly as a JPEG encoder does; the gradient goes straight through the rounding but is *masked*
to the coefficients that survive quantisation (non-zero quantised value): coefficients JPEG deletes
contribute nothing and pass no gradient (the coefficient masking of Shin & Song, 2017, "JPEG-resistant
adversarial images", made data- and quality-dependent). The forward pass therefore matches a real
grayscale JPEG to about one grey level, which the tests check against Pillow.

Every output stays in [-1, 1]: clipping uses a straight-through clamp (forward clamps, backward passes
the gradient), so saturated pixels still receive gradients.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from genprov.attribution.model.baselines import dct_matrix
from genprov.config import Config, did_you_mean, is_positive_int, require
from genprov.data import resize_images
from genprov.data.perturb import gaussian_blur as _blur
from genprov.data.perturb import scipy_blur_radius
from genprov.exceptions import ConfigError
from genprov.utils.validation import check_images

__all__ = [
    "BASIC_POST_PROCESSES",
    "BLUR_KERNELS",
    "POST_PROCESSES",
    "REFERENCE_SIZE",
    "PostProcessConfig",
    "Strength",
    "apply_post_process",
    "center_crop",
    "check_post_process_names",
    "clamp_st",
    "draw_post_process",
    "gaussian_blur",
    "gaussian_noise",
    "jpeg_approx",
    "jpeg_quant_table",
]

#: The single post-processes, in the order ``combination`` applies them.
BASIC_POST_PROCESSES: tuple[str, ...] = ("blur", "crop", "noise", "jpeg")
#: Every post-process name robust training and the evaluation accept.
POST_PROCESSES: tuple[str, ...] = (*BASIC_POST_PROCESSES, "combination")

#: A strength: one number for a single post-process, ``{name: number}`` for ``combination``.
Strength = float | Mapping[str, float]

# IJG (libjpeg) standard tables, JPEG standard Annex K, row-major.
_LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    *((99,) * 8 for _ in range(4)),
)
_BLOCK = 8
#: Blur kernel size rules: ``"paper"`` ``2 int(4 sigma + 0.5) + 1`` taps (the original's 3..25-tap filters);
#: ``"capped-9"`` ``2 ceil(3 sigma) + 1`` taps capped at 9 (genprov's earlier rule, which truncates the
#: Gaussian above sigma 4/3; kept for the ablation).
BLUR_KERNELS: tuple[str, ...] = ("paper", "capped-9")
#: The image side the paper's blur strengths refer to (64x64 MNIST).
REFERENCE_SIZE = 64


def _range(value: object, name: str, low: float, high: float) -> None:
    ok = (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        and low <= value[0] <= value[1] <= high
    )
    require(ok, name, f"a pair (min, max) with {low} <= min <= max <= {high}", value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PostProcessConfig(Config):
    """Ranges the random training strengths are drawn from (uniformly).

    Attributes:
        blur_sigma: Gaussian blur standard deviation in pixels at ``reference_size`` (paper: the kernel
            sizes 1..9 of attack_initializer.py:18 as sigma = size / 3, i.e. 1/3 to 3); covers the test
            strength 3.
        blur_kernel: Kernel size rule, one of :data:`BLUR_KERNELS` (``"paper"``: 3..25 taps as the
            original; ``"capped-9"``: genprov's earlier 9-tap cap).
        reference_size: Image side ``blur_sigma`` refers to: sigmas are multiplied by ``H / reference_size``
            on H x H images (paper: 64, its MNIST side); ``None``: pixels at any size (genprov's earlier
            setting, which at 16 px blurs 4x harder than the paper).
        crop_ratio: Side of the centre crop as a fraction of the image side (paper: U[0.8, 1]).
        noise_sigma: Standard deviation of additive Gaussian noise on [-1, 1] images (paper: U[0, 0.3]).
        jpeg_quality: JPEG quality (IJG scale 1..100) of the approximation.
    """

    blur_sigma: tuple[float, float] = (1.0 / 3.0, 3.0)
    blur_kernel: str = "paper"
    reference_size: int | None = REFERENCE_SIZE
    crop_ratio: tuple[float, float] = (0.8, 1.0)
    noise_sigma: tuple[float, float] = (0.0, 0.3)
    jpeg_quality: tuple[float, float] = (50.0, 95.0)

    def validate(self) -> None:
        _range(self.blur_sigma, "blur_sigma", 0.0, 50.0)
        require(self.blur_kernel in BLUR_KERNELS, "blur_kernel", f"one of {BLUR_KERNELS}", self.blur_kernel)
        require(
            self.reference_size is None or is_positive_int(self.reference_size),
            "reference_size",
            "a positive image side in pixels or None (sigmas in pixels)",
            self.reference_size,
        )
        _range(self.crop_ratio, "crop_ratio", 0.05, 1.0)
        _range(self.noise_sigma, "noise_sigma", 0.0, 10.0)
        _range(self.jpeg_quality, "jpeg_quality", 1.0, 100.0)

    def bounds(self, name: str) -> tuple[float, float]:
        """The strength range of the single post-process ``name``."""
        field = {"blur": "blur_sigma", "crop": "crop_ratio", "noise": "noise_sigma", "jpeg": "jpeg_quality"}
        check_post_process_names((name,), allow_combination=False)
        low, high = getattr(self, field[name])
        return float(low), float(high)

    def blur_scale(self, image_size: int) -> float:
        """Factor from ``blur_sigma`` to pixels on ``image_size``-sided images (1 without a reference size)."""
        return 1.0 if self.reference_size is None else image_size / self.reference_size


def check_post_process_names(names: object, *, allow_combination: bool = True) -> tuple[str, ...]:
    """Return ``names`` as a tuple if each is a known post-process; else raise :class:`ConfigError`.

    Args:
        names: A sequence of post-process names.
        allow_combination: Whether ``"combination"`` is accepted.
    """
    valid = POST_PROCESSES if allow_combination else BASIC_POST_PROCESSES
    if isinstance(names, str) or not isinstance(names, (tuple, list)):
        raise ConfigError(f"post-processes must be a list of names among {', '.join(valid)}; got {names!r}.")
    for name in names:
        if name not in valid:
            hint = did_you_mean(str(name), valid)
            raise ConfigError(f"Unknown post-process {name!r}.{hint} Choose among: {', '.join(valid)}.")
    return tuple(names)


# ------------------------------------------------------------------------------------------- primitives


def clamp_st(x: Tensor, low: float = -1.0, high: float = 1.0) -> Tensor:
    """Clamp to ``[low, high]`` in the forward pass; pass the gradient unchanged (straight-through)."""
    return x + (x.clamp(low, high) - x).detach()


def gaussian_blur(x: Tensor, sigma: float, *, kernel: str = "paper") -> Tensor:
    """Separable Gaussian blur with reflect padding (differentiable; ``genprov.data.gaussian_blur``).

    Args:
        x: (n, C, H, W) images.
        sigma: Standard deviation in pixels (0 returns ``x``).
        kernel: Size rule, one of :data:`BLUR_KERNELS`: ``"paper"`` has ``2 int(4 sigma + 0.5) + 1`` taps
            (3, 9, 15, 19, 25 taps for sigma 1/3 .. 3, the original's filter sizes,
            attack_methods/Gaussian_blur.py:16); ``"capped-9"`` has ``2 ceil(3 sigma) + 1`` taps, at most
            9 (genprov's earlier rule). Either is capped by the image side (reflect padding).

    Returns:
        (n, C, H, W) blurred images.
    """
    if kernel not in BLUR_KERNELS:
        raise ConfigError(f"Unknown blur kernel rule {kernel!r}; choose one of {', '.join(BLUR_KERNELS)}.")
    if sigma <= 0:
        return x
    radius = scipy_blur_radius(sigma) if kernel == "paper" else min(math.ceil(3 * sigma), 4)
    return _blur(x, sigma, radius=radius)


def center_crop(x: Tensor, ratio: float) -> Tensor:
    """Centre crop to ``round(ratio * H)`` pixels and resize back (bilinear, differentiable).

    Args:
        x: (n, C, H, H) images.
        ratio: Side of the crop as a fraction of ``H``, in (0, 1].

    Returns:
        (n, C, H, H) images (``x`` itself when the crop keeps every pixel).
    """
    if not 0.0 < ratio <= 1.0:
        raise ConfigError(f"crop ratio must be in (0, 1]; got {ratio!r}.")
    size = int(x.shape[-1])
    side = max(1, round(ratio * size))
    if side == size:
        return x
    top = (size - side) // 2
    return resize_images(x[..., top : top + side, top : top + side], size)


def gaussian_noise(x: Tensor, sigma: float, noise: Tensor) -> Tensor:
    """``clamp_st(x + sigma * noise)``; ``noise`` is standard normal of ``x``'s shape (drawn by the caller)."""
    return clamp_st(x + sigma * noise) if sigma > 0 else x


def jpeg_quant_table(quality: float, *, chroma: bool = False) -> Tensor:
    """(8, 8) quantisation table of the IJG encoder at ``quality`` (libjpeg's ``jpeg_quality_scaling``).

    Args:
        quality: 1..100 (rounded to an integer, as encoders take it).
        chroma: The chrominance table instead of the luminance one.
    """
    q = min(100, max(1, round(quality)))
    scale = 5000 // q if q < 50 else 200 - 2 * q
    base = torch.tensor(_CHROMA_TABLE if chroma else _LUMA_TABLE, dtype=torch.float64)
    return torch.clamp(torch.floor((base * scale + 50) / 100), 1, 255)


def _to_blocks(x: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """(n, C, H, W) -> (n, C, H'/8, W'/8, 8, 8) after edge-replicated padding to multiples of 8."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    ph, pw = (-h) % _BLOCK, (-w) % _BLOCK
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    n, c, hp, wp = x.shape
    blocks = x.reshape(n, c, hp // _BLOCK, _BLOCK, wp // _BLOCK, _BLOCK).permute(0, 1, 2, 4, 3, 5)
    return blocks, (h, w)


def _from_blocks(blocks: Tensor, size: tuple[int, int]) -> Tensor:
    n, c, bh, bw = blocks.shape[:4]
    x = blocks.permute(0, 1, 2, 4, 3, 5).reshape(n, c, bh * _BLOCK, bw * _BLOCK)
    return x[..., : size[0], : size[1]]


_RGB_TO_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))


def jpeg_approx(x: Tensor, quality: float) -> Tensor:
    """Differentiable JPEG: 8x8 DCT, IJG quantisation, gradient masked to the surviving coefficients.

    Args:
        x: (n, C, H, W) images in [-1, 1], C in {1, 3} (any H, W; blocks are padded by edge replication).
        quality: JPEG quality 1..100.

    Returns:
        (n, C, H, W) decoded images in [-1, 1] (not rounded to 8 bits; ``png_roundtrip`` does that).
    """
    if x.shape[1] not in (1, 3):
        raise ConfigError(f"jpeg_approx needs 1- or 3-channel images; got shape {tuple(x.shape)}.")
    pixels = (x + 1.0) * 127.5
    matrix = torch.tensor(_RGB_TO_YCBCR, dtype=x.dtype, device=x.device)
    if x.shape[1] == 3:
        pixels = torch.einsum("ij,njhw->nihw", matrix, pixels)
        pixels = pixels + torch.tensor([0.0, 128.0, 128.0], dtype=x.dtype, device=x.device)[:, None, None]
    blocks, size = _to_blocks(pixels - 128.0)
    c = dct_matrix(_BLOCK, dtype=x.dtype).to(x.device)
    coeffs = c @ blocks @ c.T
    tables = [jpeg_quant_table(quality, chroma=k > 0) for k in range(x.shape[1])]
    q = torch.stack(tables).to(dtype=x.dtype, device=x.device)[None, :, None, None]
    levels = torch.round(coeffs.detach() / q)
    mask = (levels != 0).to(x.dtype)
    quantised = (levels * q) + mask * (coeffs - coeffs.detach())
    out = _from_blocks(c.T @ quantised @ c, size) + 128.0
    if x.shape[1] == 3:
        out = out - torch.tensor([0.0, 128.0, 128.0], dtype=x.dtype, device=x.device)[:, None, None]
        out = torch.einsum("ij,njhw->nihw", torch.linalg.inv(matrix), out)
    return clamp_st(out / 127.5 - 1.0)


# ----------------------------------------------------------------------------------------------- apply


def apply_post_process(
    x: Tensor, name: str, strength: Strength, *, noise: Tensor | None = None, blur_kernel: str = "paper"
) -> Tensor:
    """Apply one post-process at a fixed strength (differentiable in ``x``).

    Args:
        x: (n, C, H, W) images in [-1, 1].
        name: ``"blur"``, ``"crop"``, ``"noise"``, ``"jpeg"`` or ``"combination"``.
        strength: Blur sigma (px), crop ratio, noise sigma or JPEG quality; for ``"combination"`` a
            mapping with those four keys (applied in the order blur, crop, noise, jpeg; a missing key
            skips that step).
        noise: Standard normal (n, C, H, W) noise for ``"noise"`` / ``"combination"`` (so that two
            batches can get the same draw); required when a noise step has sigma > 0.
        blur_kernel: Blur kernel size rule (:func:`gaussian_blur`).

    Returns:
        (n, C, H, W) images in [-1, 1].
    """
    check_images(x, "images", value_range=None)
    check_post_process_names((name,))
    if name == "combination":
        if not isinstance(strength, Mapping):
            raise ConfigError(f"combination needs a strength per step, e.g. {{'blur': 1.0, ...}}; got {strength!r}.")
        check_post_process_names(tuple(strength), allow_combination=False)
        for step in BASIC_POST_PROCESSES:
            if step in strength:
                x = apply_post_process(x, step, float(strength[step]), noise=noise, blur_kernel=blur_kernel)
        return x
    if isinstance(strength, Mapping):
        raise ConfigError(f"{name} takes one number as strength; got {strength!r}.")
    value = float(strength)
    if name == "blur":
        return gaussian_blur(x, value, kernel=blur_kernel)
    if name == "crop":
        return center_crop(x, value)
    if name == "noise":
        if value <= 0:
            return x
        if noise is None or noise.shape != x.shape:
            raise ConfigError(f"noise needs a standard normal tensor of shape {tuple(x.shape)}; got {noise!r:.60}.")
        return gaussian_noise(x, value, noise)
    return jpeg_approx(x, value)


def draw_post_process(
    name: str, config: PostProcessConfig, shape: tuple[int, ...], generator: torch.Generator
) -> Callable[[Tensor], Tensor]:
    """Draw a random post-process of kind ``name`` (strength and noise) and return it as a function.

    The returned function applies the *same* draw to every batch it gets, which is what robust training
    needs for ``T(G_i(z))`` and ``T(G0(z))``. Blur sigmas are scaled to the batches' side
    (:meth:`PostProcessConfig.blur_scale`).

    Args:
        name: A name in :data:`POST_PROCESSES`.
        config: Strength ranges.
        shape: (n, C, H, W) of the batches it will get (for the noise draw).
        generator: Local CPU generator all draws come from.

    Returns:
        ``T``: (n, C, H, W) images in [-1, 1] -> (n, C, H, W) images in [-1, 1].
    """
    check_post_process_names((name,))
    steps = BASIC_POST_PROCESSES if name == "combination" else (name,)
    strengths: dict[str, float] = {}
    for step in steps:
        low, high = config.bounds(step)
        strengths[step] = low + (high - low) * float(torch.rand((), generator=generator))
    if "blur" in strengths:
        strengths["blur"] *= config.blur_scale(int(shape[-1]))
    noise = torch.randn(shape, generator=generator) if "noise" in strengths else None
    strength: Strength = strengths if name == "combination" else strengths[name]

    def transform(x: Tensor) -> Tensor:
        return apply_post_process(
            x,
            name,
            strength,
            noise=None if noise is None else noise.to(x.device, x.dtype),
            blur_kernel=config.blur_kernel,
        )

    return transform
