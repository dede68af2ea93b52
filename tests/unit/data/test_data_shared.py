"""The built-in datasets on the project's real files in ../shared/data (skipped when absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from genprov.data import load_dataset, missing_files
from genprov.exceptions import DataError


def test_mnist_train_from_byte_parts(shared_data: Path) -> None:
    ds = load_dataset("mnist", data_root=shared_data)
    assert ds.images.shape == (60000, 1, 28, 28)
    assert ds.labels is not None
    assert torch.bincount(ds.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert ds.labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert float(ds.images.min()) == -1.0
    assert float(ds.images.max()) == 1.0


def test_mnist_test_and_subset(shared_data: Path) -> None:
    test = load_dataset("mnist", split="test", data_root=shared_data)
    assert len(test) == 10000
    assert test.labels is not None
    assert test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    small = load_dataset("mnist", split="test", data_root=shared_data, n=100, seed=5, resize=32)
    assert small.images.shape == (100, 1, 32, 32)
    assert (
        small.fingerprint()
        == load_dataset("mnist", split="test", data_root=shared_data, n=100, seed=5, resize=32).fingerprint()
    )


def test_fashion_mnist_test_only(shared_data: Path) -> None:
    test = load_dataset("fashion-mnist", split="test", data_root=shared_data)
    assert len(test) == 10000
    assert test.labels is not None
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert test.class_names is not None
    assert test.class_names[9] == "Ankle boot"
    assert missing_files("fashion-mnist", shared_data, split="test") == []
    with pytest.raises(DataError, match="genprov data download fashion-mnist --data-root"):
        load_dataset("fashion-mnist", split="train", data_root=shared_data)


def _js_labels(shared_data: Path) -> np.ndarray:
    text = (shared_data / "cifar10_convnetjs" / "cifar10_labels.js").read_text()
    return np.array(json.loads(text[text.index("[") : text.rindex("]") + 1]))


def test_cifar10_train_and_test_labels_match_the_js(shared_data: Path) -> None:
    train = load_dataset("cifar10", data_root=shared_data)
    test = load_dataset("cifar10", split="test", data_root=shared_data)
    labels = _js_labels(shared_data)
    assert train.images.shape == (4000, 3, 32, 32)
    assert test.images.shape == (1000, 3, 32, 32)
    assert train.labels is not None
    assert test.labels is not None
    np.testing.assert_array_equal(train.labels.numpy(), labels[:4000])
    np.testing.assert_array_equal(test.labels.numpy(), labels[50000:51000])
    assert train.class_names is not None
    assert train.class_names[7] == "horse"


def test_cifar2_matches_the_cifar10_strips(shared_data: Path) -> None:
    cifar2 = load_dataset("cifar2", data_root=shared_data)
    cifar10 = load_dataset("cifar10", data_root=shared_data)
    with np.load(shared_data / "cifar10_convnetjs" / "cifar2_auto_horse.npz") as npz:
        index = npz["idx_train"]
        labels = npz["y_train"]
    assert len(cifar2) == 751
    assert cifar2.class_names == ("automobile", "horse")
    assert cifar2.labels is not None
    np.testing.assert_array_equal(cifar2.labels.numpy(), labels)
    # The npz was cut from the same PNG strips: equal pixels confirm the strip decoding (row -> 32x32x3).
    assert torch.equal(cifar2.images, cifar10.images[torch.from_numpy(index)])
    assert len(load_dataset("cifar2", split="test", data_root=shared_data)) == 191


def test_olivetti_split_per_person(shared_data: Path) -> None:
    train = load_dataset("olivetti", data_root=shared_data)
    test = load_dataset("olivetti", split="test", data_root=shared_data)
    assert train.images.shape == (320, 1, 64, 64)
    assert test.images.shape == (80, 1, 64, 64)
    assert train.labels is not None
    assert test.labels is not None
    assert torch.bincount(train.labels).tolist() == [8] * 40
    assert torch.bincount(test.labels).tolist() == [2] * 40
