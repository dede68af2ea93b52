"""MSE, PSNR and SSIM against explicit float64 references and hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genprov.eval import mse, psnr, ssim, summarize
from genprov.exceptions import DataError


def _images(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _ssim_reference(x: np.ndarray, y: np.ndarray, size: int, sigma: float = 1.5, data_range: float = 2.0) -> float:
    """Slow SSIM of one (C, H, W) pair: explicit loop over channels and window positions, float64."""
    half = (size - 1) / 2.0
    g = np.array([math.exp(-((i - half) ** 2) / (2 * sigma**2)) for i in range(size)])
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - size + 1):
            for j in range(x.shape[2] - size + 1):
                px, py = x[c, i : i + size, j : j + size], y[c, i : i + size, j : j + size]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cxy = (w * (px - mx) * (py - my)).sum()
                values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_mse_and_psnr_match_formulas() -> None:
    x, y = _images(0, (3, 2, 5, 5)), _images(1, (3, 2, 5, 5))
    expected = ((x.double() - y.double()) ** 2).reshape(3, -1).mean(1)
    torch.testing.assert_close(mse(x, y), expected)
    torch.testing.assert_close(psnr(x, y), 10 * torch.log10(4.0 / expected))
    torch.testing.assert_close(psnr(x, y, data_range=1.0), 10 * torch.log10(1.0 / expected))
    assert mse(x, y).shape == (3,)
    assert mse(x, y).dtype == torch.float64
    assert math.isinf(float(psnr(x, x)[0]))


@pytest.mark.parametrize(
    ("shape", "window", "ref_size"), [((2, 3, 13, 12), None, 11), ((3, 1, 8, 8), None, 7), ((2, 2, 9, 9), 5, 5)]
)
def test_ssim_matches_slow_reference(shape: tuple[int, ...], window: int | None, ref_size: int) -> None:
    x = _images(2, shape)
    y = (0.6 * x + 0.4 * _images(3, shape)).clamp(-1, 1)
    got = ssim(x, y, window_size=window)
    expected = [_ssim_reference(x[i].double().numpy(), y[i].double().numpy(), ref_size) for i in range(shape[0])]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_ssim_hand_made_cases() -> None:
    x = _images(4, (2, 1, 8, 8))
    torch.testing.assert_close(ssim(x, x), torch.ones(2, dtype=torch.float64))
    flat = torch.full((1, 1, 8, 8), 0.25)
    assert float(ssim(flat, flat)[0]) == pytest.approx(1.0)
    bright = (x + 1) / 2  # in [0, 1]: positive means, so only the structure term changes sign
    assert bool((ssim(bright, 1 - bright) < 0).all())  # inverted structure
    torch.testing.assert_close(ssim(x, x * 0.5), ssim(x * 0.5, x))  # symmetric
    noisy = (x + 0.3 * _images(5, (2, 1, 8, 8))).clamp(-1, 1)
    noisier = (x + 0.9 * _images(5, (2, 1, 8, 8))).clamp(-1, 1)
    assert bool((ssim(noisy, x) > ssim(noisier, x)).all())


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "match"),
    [
        (torch.zeros(2, 1, 8, 8), torch.zeros(3, 1, 8, 8), {}, "same shape"),
        (torch.zeros(1, 8, 8), torch.zeros(1, 8, 8), {}, "unsqueeze"),
        (torch.full((1, 1, 8, 8), float("nan")), torch.zeros(1, 1, 8, 8), {}, "NaN"),
        (torch.zeros(0, 1, 8, 8), torch.zeros(0, 1, 8, 8), {}, "empty"),
        (torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), {"window_size": 11}, "does not fit"),
        (torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), {"window_size": 4}, "odd"),
        (torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), {"data_range": 0}, "data_range"),
    ],
)
def test_ssim_bad_inputs_raise(x: torch.Tensor, y: torch.Tensor, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(DataError, match=match):
        ssim(x, y, **kwargs)  # type: ignore[arg-type]


def test_summarize_per_image_metrics() -> None:
    x, y = _images(6, (40, 1, 8, 8)), _images(7, (40, 1, 8, 8))
    values = ssim(x, y)
    ci = summarize(values, seed=3)
    assert ci.mean == pytest.approx(float(values.mean()))
    assert ci.low < ci.mean < ci.high
    assert ci.n == 40
    assert summarize(values, seed=3) == ci
