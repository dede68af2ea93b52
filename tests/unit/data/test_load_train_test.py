"""``load_train_test``: every source a reproduction accepts yields a training and a test set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from genprov.data import has_split, load_dataset, load_train_test, save_images
from genprov.exceptions import ConfigError, DataError


def _npz(path: Path, n: int = 50, with_test: bool = False) -> Path:
    rng = np.random.default_rng(0)
    arrays = {"x": rng.integers(0, 256, (n, 8, 8), dtype=np.uint8), "y": np.arange(n) % 5}
    if with_test:
        arrays |= {"x_test": rng.integers(0, 256, (7, 8, 8), dtype=np.uint8), "y_test": np.arange(7) % 5}
    np.savez(path, **arrays)
    return path


def test_builtin_uses_its_own_test_split() -> None:
    train, test = load_train_test("digits", n_train=100, seed=0)
    assert has_split("digits", "test") and len(train) == 100
    assert torch.equal(test.images, load_dataset("digits", split="test").images)


def test_npz_with_test_keys_uses_them(tmp_path: Path) -> None:
    path = _npz(tmp_path / "d.npz", with_test=True)
    train, test = load_train_test(path)
    assert has_split(path, "test") and (len(train), len(test)) == (50, 7)


def test_single_set_is_split_disjointly_stratified_and_by_seed(tmp_path: Path) -> None:
    path = _npz(tmp_path / "d.npz")
    assert not has_split(path, "test")
    train, test = load_train_test(path, seed=1, test_fraction=0.2)
    assert (len(train), len(test)) == (40, 10)
    assert torch.bincount(test.labels).tolist() == [2] * 5  # every label's share
    rows = {tuple(r.flatten().tolist()) for r in train.images} & {tuple(r.flatten().tolist()) for r in test.images}
    assert not rows
    again, _ = load_train_test(path, seed=1)
    other, _ = load_train_test(path, seed=2)
    assert torch.equal(again.images, train.images) and not torch.equal(other.images, train.images)
    small, small_test = load_train_test(path, seed=1, n_train=5, n_test=3)
    assert (len(small), len(small_test)) == (5, 3)


def test_flat_and_split_image_folders(tmp_path: Path) -> None:
    images = torch.rand(12, 1, 8, 8) * 2 - 1
    save_images(images, tmp_path / "flat")
    train, test = load_train_test(tmp_path / "flat", test_fraction=0.25)
    assert (len(train), len(test)) == (9, 3) and train.labels is None
    save_images(images[:8], tmp_path / "split" / "train")
    save_images(images[8:], tmp_path / "split" / "test")
    train, test = load_train_test(tmp_path / "split")
    assert (len(train), len(test)) == (8, 4)


def test_bad_fraction_and_too_small_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="test_fraction"):
        load_train_test("digits", test_fraction=1.0)
    save_images(torch.zeros(1, 1, 8, 8), tmp_path / "one")
    with pytest.raises(DataError, match="too few to split"):
        load_train_test(tmp_path / "one")
