"""Fixtures shared by the similarity-index shard tests (in-process and Ray): 30 digits as an image folder and as
3 tar shards, and the features of the in-process index (``build_similarity_index``) they must equal bit for bit."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch

from genprov.attribution.data.index_folder import build_similarity_index
from genprov.data import load_dataset, save_images
from genprov.storage import FeatureIndex

__all__ = ["EXTRACTOR", "SIMILARITY", "digits_folder", "digits_tars", "reference"]

#: A network extractor rebuilt from its config on every worker, and shards of 7 rows (5 shards for 30 images).
EXTRACTOR = "random-cnn"
SIMILARITY = {"shard_size": 7}


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("digits") / "images"
    save_images(load_dataset("digits", n=30, seed=2).images, folder)
    return folder


@pytest.fixture(scope="module")
def digits_tars(digits_folder: Path) -> str:
    """The folder's images in 3 tar shards of 12, 10 and 8 (folder order): the brace pattern naming them."""
    files = sorted(digits_folder.iterdir())
    start = 0
    for s, size in enumerate((12, 10, 8)):
        with tarfile.open(digits_folder.parent / f"part-{s:02d}.tar", "w") as tar:
            for file in files[start : start + size]:
                tar.add(file, arcname=file.name)
        start += size
    return str(digits_folder.parent / "part-{00..02}.tar")


@pytest.fixture(scope="module")
def reference(digits_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> torch.Tensor:
    """Features of the in-process index of the folder."""
    store = tmp_path_factory.mktemp("ref") / "index"
    build_similarity_index(EXTRACTOR, store, {"name": str(digits_folder)}, similarity_config=SIMILARITY)
    return FeatureIndex.open(store).features()
