"""Differentiable post-processes of robust keyed training: shapes, ranges, gradients, JPEG vs Pillow."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from genprov.attribution.model.keyed_postprocess import (
    POST_PROCESSES,
    PostProcessConfig,
    apply_post_process,
    center_crop,
    clamp_st,
    draw_post_process,
    gaussian_blur,
    jpeg_approx,
    jpeg_quant_table,
)
from genprov.data import png_roundtrip, to_uint8
from genprov.exceptions import ConfigError

STRENGTHS = {"blur": 3.0, "crop": 0.8, "noise": 0.3, "jpeg": 75.0}


def _strength(name: str) -> float | dict[str, float]:
    return dict(STRENGTHS) if name == "combination" else STRENGTHS[name]


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize("name", POST_PROCESSES)
def test_shape_range_and_gradients(name: str, images: torch.Tensor) -> None:
    x = images.clone().requires_grad_(True)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    out = apply_post_process(x, name, _strength(name), noise=noise)
    assert out.shape == x.shape
    assert float(out.detach().min()) >= -1.0 and float(out.detach().max()) <= 1.0
    assert not torch.equal(out.detach(), x.detach())
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0


@pytest.mark.parametrize("name", POST_PROCESSES)
def test_draw_applies_one_draw_to_every_batch(name: str, images: torch.Tensor) -> None:
    transform = draw_post_process(name, PostProcessConfig(), tuple(images.shape), torch.Generator().manual_seed(3))
    assert torch.equal(transform(images), transform(images.clone()))
    other = draw_post_process(name, PostProcessConfig(), tuple(images.shape), torch.Generator().manual_seed(3))
    assert torch.equal(transform(images), other(images))


def test_rgb_and_odd_sizes() -> None:
    x = torch.rand(2, 3, 12, 12) * 2 - 1
    for name in POST_PROCESSES:
        out = apply_post_process(x, name, _strength(name), noise=torch.randn(x.shape))
        assert out.shape == x.shape


def _smooth(size: int = 32) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    return png_roundtrip((0.6 * torch.sin(2 * xx + yy) * torch.cos(1.5 * yy))[None, None])


def _pil_jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(x)[0, ..., 0], mode="L").save(buffer, format="JPEG", quality=quality)
    decoded = np.asarray(Image.open(buffer), dtype=np.float32)
    return torch.from_numpy(decoded)[None, None] / 127.5 - 1.0


@pytest.mark.parametrize("quality", [50, 75, 90])
def test_jpeg_approx_matches_pillow_on_a_smooth_image(quality: int) -> None:
    x = _smooth()
    real = _pil_jpeg(x, quality)
    approx = jpeg_approx(x, quality)
    gray_levels = (approx - real).abs() * 127.5
    assert float(gray_levels.mean()) < 1.0
    assert float(gray_levels.max()) < 3.0


def test_jpeg_approx_follows_pillow_where_jpeg_changes_the_image() -> None:
    x = png_roundtrip(torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    real = _pil_jpeg(x, 75)
    change = float((x - real).abs().mean())
    assert change * 127.5 > 4.0  # JPEG visibly changes a noise image...
    assert float((jpeg_approx(x, 75) - real).abs().mean()) < 0.25 * change  # ...and the approximation follows it


def test_jpeg_gradient_is_masked_to_surviving_coefficients() -> None:
    x = torch.zeros(1, 1, 8, 8, requires_grad=True)
    checker = ((torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2 - 1).float()[None, None]
    (jpeg_approx(x, 50) * checker).sum().backward()  # the highest frequency: quantised away at quality 50
    assert x.grad is not None and float(x.grad.abs().max()) < 1e-5


def test_quant_tables() -> None:
    assert jpeg_quant_table(50)[0, 0] == 16 and jpeg_quant_table(50)[7, 7] == 99
    assert torch.equal(jpeg_quant_table(100), torch.ones(8, 8, dtype=torch.float64))
    assert jpeg_quant_table(75, chroma=True)[0, 0] == 9


@pytest.mark.parametrize(("sigma", "taps"), [(1 / 3, 3), (1.0, 9), (5 / 3, 15), (7 / 3, 19), (3.0, 25)])
def test_blur_kernel_has_the_original_filter_sizes(sigma: float, taps: int) -> None:
    # attack_methods/Gaussian_blur.py:16 of the original: filter sizes 3, 9, 15, 19, 25 for sigma = 1/3 .. 3
    delta = torch.zeros(1, 1, 64, 64)
    delta[0, 0, 32, 32] = 1.0
    spread = gaussian_blur(delta, sigma)[0, 0]
    assert int((spread[32] > 0).sum()) == taps
    assert torch.allclose(spread.sum(), torch.tensor(1.0))


def test_capped_blur_kernel_is_the_earlier_rule_and_crop_keeps_full_ratio(images: torch.Tensor) -> None:
    delta = torch.zeros(1, 1, 16, 16)
    delta[0, 0, 8, 8] = 1.0
    spread = gaussian_blur(delta, 3.0, kernel="capped-9")[0, 0]
    assert float(spread[8, 3]) == 0.0 and float(spread[8, 4]) > 0  # 9 taps: radius 4
    assert torch.allclose(spread.sum(), torch.tensor(1.0))
    with pytest.raises(ConfigError, match="blur kernel rule"):
        gaussian_blur(delta, 1.0, kernel="scipy")
    assert center_crop(images, 1.0) is images
    with pytest.raises(ConfigError, match="crop ratio"):
        center_crop(images, 0.0)


def test_straight_through_clamp() -> None:
    x = torch.tensor([-2.0, 0.5, 3.0], requires_grad=True)
    out = clamp_st(x)
    out.sum().backward()
    assert out.tolist() == [-1.0, 0.5, 1.0]
    assert x.grad is not None and x.grad.tolist() == [1.0, 1.0, 1.0]


def test_errors_name_the_problem(images: torch.Tensor) -> None:
    with pytest.raises(ConfigError, match="Did you mean 'blur'"):
        apply_post_process(images, "blurr", 1.0)
    with pytest.raises(ConfigError, match="combination needs a strength per step"):
        apply_post_process(images, "combination", 1.0)
    with pytest.raises(ConfigError, match="noise needs a standard normal tensor"):
        apply_post_process(images, "noise", 0.1)
    with pytest.raises(ConfigError, match="crop_ratio"):
        PostProcessConfig(crop_ratio=(0.9, 0.8))


def test_training_blur_scales_with_image_side() -> None:
    # sigma 3 at the paper's 64 px is sigma 0.75 at 16 px; reference_size=None keeps pixels
    cfg = PostProcessConfig(blur_sigma=(3.0, 3.0))
    delta = torch.zeros(1, 1, 16, 16)
    delta[0, 0, 8, 8] = 1.0
    matched = draw_post_process("blur", cfg, (1, 1, 16, 16), torch.Generator().manual_seed(0))(delta)
    torch.testing.assert_close(matched, gaussian_blur(delta, 0.75))
    absolute = draw_post_process(
        "blur", cfg.replace(reference_size=None), (1, 1, 16, 16), torch.Generator().manual_seed(0)
    )(delta)
    torch.testing.assert_close(absolute, gaussian_blur(delta, 3.0))
    with pytest.raises(ConfigError, match="reference_size"):
        PostProcessConfig(reference_size=0)
