"""Image value ranges, quantisation, resizing and image-file I/O."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genprov.data import (
    load_image,
    load_images,
    make_grid,
    png_roundtrip,
    resize_images,
    save_image_grid,
    save_images,
    to_model_range,
    to_uint8,
)
from genprov.exceptions import ConfigError, DataError


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_to_model_range_uint8_and_unit_floats() -> None:
    pixels = np.array([[0, 128, 255]], dtype=np.uint8)
    out = to_model_range(pixels)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[-1.0, 128 / 127.5 - 1, 1.0]]))
    torch.testing.assert_close(to_model_range(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([-1.0, 0.0, 1.0]))


@pytest.mark.parametrize(
    "bad", [torch.tensor([-0.5, 0.5]), torch.tensor([300, 2]), torch.tensor([float("nan")]), torch.tensor([True])]
)
def test_to_model_range_rejects_other_ranges(bad: torch.Tensor) -> None:
    with pytest.raises(DataError, match="to_model_range"):
        to_model_range(bad)


def test_to_uint8_rounds_and_moves_channels_last() -> None:
    x = torch.tensor([-1.0, -0.999, 0.0, 1.0, 2.0]).reshape(1, 1, 1, 5).expand(2, 3, 1, 5)
    out = to_uint8(x)
    assert out.shape == (2, 1, 5, 3)
    assert out.dtype == np.uint8
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]  # 127.5 rounds half to even -> 128
    assert to_uint8(x[0]).shape == (1, 5, 3)
    with pytest.raises(DataError, match="shape"):
        to_uint8(torch.zeros(5))


def test_png_roundtrip_is_idempotent_and_matches_a_saved_png(tmp_path: Path) -> None:
    x = _rand(3, 3, 5, 5)
    once = png_roundtrip(x)
    assert once.shape == x.shape
    assert once.dtype == torch.float32
    assert torch.equal(png_roundtrip(once), once)
    assert float((once - x).abs().max()) <= 1 / 127.5 / 2 + 1e-6
    paths = save_images(x, tmp_path)
    assert torch.equal(load_image(paths[1]), once[1])


def test_resize_down_up_and_crop() -> None:
    x = _rand(2, 1, 8, 8)
    down = resize_images(x, 4)
    torch.testing.assert_close(down, torch.nn.functional.avg_pool2d(x, 2))
    up = resize_images(x, 16)
    assert up.shape == (2, 1, 16, 16)
    assert float(up.abs().max()) <= 1
    assert resize_images(x, 8) is not None
    assert torch.equal(resize_images(x, 8), x)
    wide = _rand(1, 3, 6, 10)
    torch.testing.assert_close(resize_images(wide, 6), wide[..., 2:8])
    with pytest.raises(ConfigError, match="resize"):
        resize_images(x, 0)


def test_load_image_gray_rgb_and_conversion(tmp_path: Path, write_png: Callable[..., Path]) -> None:
    gray = write_png(tmp_path / "g.png", size=(6, 4))
    rgb = write_png(tmp_path / "c.png", size=(6, 4), mode="RGB")
    g = load_image(gray)
    assert g.shape == (1, 4, 6)
    assert float(g.min()) >= -1
    assert float(g.max()) <= 1
    expected = torch.from_numpy(np.asarray(Image.open(gray), dtype=np.float32) / 127.5 - 1)
    torch.testing.assert_close(g[0], expected)
    assert load_image(rgb).shape == (3, 4, 6)
    assert load_image(rgb, channels=1).shape == (1, 4, 6)
    assert load_image(gray, channels=3, size=4).shape == (3, 4, 4)
    with pytest.raises(ConfigError, match="channels"):
        load_image(gray, channels=2)


def test_load_image_16_bit(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)).save(path)
    torch.testing.assert_close(load_image(path), torch.tensor([[[-1.0, 1.0]]]))


def test_load_image_errors_name_the_file(tmp_path: Path, write_png: Callable[..., Path]) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    with pytest.raises(DataError, match=r"fake\.png"):
        load_image(fake)
    good = write_png(tmp_path / "cut.png", size=(32, 32), mode="RGB")
    good.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DataError, match=r"cut\.png.*truncated"):
        load_image(good)


def test_load_images_stacks_and_reports_mixed_sizes(tmp_path: Path, write_png: Callable[..., Path]) -> None:
    a = write_png(tmp_path / "a.png", size=(8, 8))
    b = write_png(tmp_path / "b.png", size=(8, 8), mode="RGB", seed=1)
    c = write_png(tmp_path / "c.png", size=(12, 10), seed=2)
    assert load_images([a, b]).shape == (2, 3, 8, 8)  # any colour file makes the batch RGB
    assert load_images([a, a]).shape == (2, 1, 8, 8)
    with pytest.raises(DataError, match=r"c\.png is 12x10"):
        load_images([a, c])
    assert load_images([a, c], size=4).shape == (2, 1, 4, 4)
    with pytest.raises(DataError, match="no paths"):
        load_images([])


def test_make_grid_layout() -> None:
    x = torch.stack([torch.full((1, 2, 2), v) for v in (-1.0, 0.0, 0.5)])
    grid = make_grid(x, nrow=2, padding=1, pad_value=1.0)
    assert grid.shape == (1, 2 * 3 + 1, 2 * 3 + 1)
    assert float(grid[0, 1, 1]) == -1.0
    assert float(grid[0, 1, 4]) == 0.0
    assert float(grid[0, 4, 1]) == 0.5
    assert float(grid[0, 0, 0]) == 1.0
    assert float(grid[0, 4, 4]) == 1.0


def test_save_image_grid_writes_png(tmp_path: Path) -> None:
    x = _rand(5, 3, 4, 4)
    path = save_image_grid(x, tmp_path / "sub" / "grid.png", nrow=5, padding=0, scale=2)
    with Image.open(path) as image:
        assert image.mode == "RGB"
        assert image.size == (40, 8)
        pixels = np.asarray(image)
    np.testing.assert_array_equal(pixels[::2, ::2][:, :4], to_uint8(x)[0])
    assert not list(path.parent.glob(".*tmp"))  # the atomic write left no temp file
    with pytest.raises(ConfigError, match="scale"):
        save_image_grid(x, tmp_path / "g.png", scale=0)


def test_save_images_one_png_each(tmp_path: Path) -> None:
    x = _rand(3, 1, 4, 4)
    paths = save_images(x, tmp_path / "out", prefix="sample")
    assert [p.name for p in paths] == ["sample_00000.png", "sample_00001.png", "sample_00002.png"]
    torch.testing.assert_close(load_images(paths), png_roundtrip(x))
    with pytest.raises(DataError, match="channels"):
        save_images(_rand(1, 2, 4, 4), tmp_path / "bad")
