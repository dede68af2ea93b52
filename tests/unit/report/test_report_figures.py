"""Figure helpers and image encoding: shapes, pixel values, and no leaked figures."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure as MplFigure
from PIL import Image as PILImage

from genprov.eval import MeanCI, roc_curve
from genprov.exceptions import DataError
from genprov.report import Figure
from genprov.report.figures import (
    figure_to_png_bytes,
    image_grid,
    make_grid,
    metric_bars,
    roc_curves,
    score_histograms,
    to_png_bytes,
    to_uint8,
    training_curves,
)


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(png)))


def test_to_png_bytes_upscales_with_nearest_neighbour() -> None:
    image = torch.tensor([[[-1.0, 1.0], [0.0, 2.0]]])  # 2 is clipped to white
    pixels = _decode(to_png_bytes(image, scale=4))
    assert pixels.shape == (8, 8)
    np.testing.assert_array_equal(pixels[:4, :4], 0)
    np.testing.assert_array_equal(pixels[:4, 4:], 255)
    np.testing.assert_array_equal(pixels[4:, :4], 128)
    np.testing.assert_array_equal(pixels[4:, 4:], 255)
    rgb = _decode(to_png_bytes(torch.zeros(3, 5, 4), scale=3))
    assert rgb.shape == (15, 12, 3)
    assert to_uint8(np.zeros((4, 4)), value_range=(0.0, 1.0)).dtype == np.uint8
    with pytest.raises(DataError, match="shape"):
        to_png_bytes(torch.zeros(2, 4, 4))
    with pytest.raises(DataError, match="scale"):
        to_png_bytes(torch.zeros(1, 4, 4), scale=0)


def test_make_grid_places_images() -> None:
    images = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 1, 2, 3) / 10
    grid = make_grid(images, nrow=2, padding=1, pad_value=-1.0)
    assert grid.shape == (1, 3 * 3 + 1, 2 * 4 + 1)
    assert float(grid[0, 1, 1]) == 0.0
    assert float(grid[0, 1, 5]) == pytest.approx(0.1)
    assert float(grid[0, 7, 1]) == pytest.approx(0.4)
    assert float(grid[0, 0, 0]) == -1.0
    assert float(grid[0, 7, 5]) == -1.0  # empty slot
    with pytest.raises(DataError, match="empty batch"):
        make_grid(torch.zeros(0, 1, 2, 2))


def _figures() -> list[MplFigure]:
    images = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    curve = roc_curve([1.0, 2.0, 3.0], [0.0, 1.5])
    return [
        image_grid(images, 5, title="grid"),
        training_curves([{"step": i, "loss": 1 / (i + 1)} for i in range(5)] + [{"step": 5}], ["loss"], logy=True),
        roc_curves({"m": (curve.fpr, curve.tpr, 0.8)}, log_x=True),
        score_histograms(
            {"own": np.random.default_rng(1).normal(size=50), "real": np.random.default_rng(0).normal(size=40)},
            threshold=0.1,
        ),
        metric_bars({"a": MeanCI(0.3, 0.2, 0.4, 10), "b": -0.1}, ylabel="LDS"),
    ]


def test_helpers_return_figures_without_pyplot() -> None:
    before = set(plt.get_fignums())
    figures = _figures()
    assert all(isinstance(f, MplFigure) for f in figures)
    assert set(plt.get_fignums()) == before  # not registered in pyplot, so nothing to leak
    for fig in figures:
        png = figure_to_png_bytes(fig, dpi=50)
        assert png.startswith(b"\x89PNG")
        assert not fig.axes  # closed (cleared) after rendering


def test_figure_block_closes_pyplot_figures() -> None:
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    number = fig.number
    block = Figure(fig, dpi=40)
    assert number not in plt.get_fignums()
    assert block.context(_Sink(), "k")["src"] == "k"


class _Sink:
    def add(self, name: str, png: bytes) -> str:
        assert png.startswith(b"\x89PNG")
        return name


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: training_curves([{"step": 0, "a": 1.0}], ["b"]), "no log entry has"),
        (lambda: training_curves([{"a": 1.0}], []), "at least one key"),
        (lambda: roc_curves({}), "at least one curve"),
        (lambda: score_histograms({"x": []}), "non-empty"),
        (lambda: metric_bars({}), "at least one value"),
    ],
)
def test_helper_input_errors(call: object, match: str) -> None:
    with pytest.raises(DataError, match=match):
        call()  # type: ignore[operator]
