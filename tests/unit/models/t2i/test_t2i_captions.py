"""Captions from labels and from captions files, and the one-line errors when they do not match the images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genprov.data import ImageDataset, load_dataset
from genprov.models.t2i.captions import CaptionsError, captions_for, captions_from_labels, read_captions_file


def test_captions_from_labels() -> None:
    digits = ImageDataset(torch.zeros(3, 1, 8, 8), torch.tensor([7, 1, 0]), "digits", tuple(str(d) for d in range(10)))
    assert captions_from_labels(digits) == ("a handwritten seven", "a handwritten one", "a handwritten zero")
    cifar = ImageDataset(torch.zeros(2, 3, 8, 8), torch.tensor([1, 0]), "cifar2", ("automobile", "horse"))
    assert captions_from_labels(cifar) == ("a photo of a horse", "a photo of an automobile")
    assert captions_for("labels", cifar) == captions_from_labels(cifar)
    with pytest.raises(CaptionsError, match="no labels"):
        captions_from_labels(ImageDataset(torch.zeros(2, 1, 8, 8), None, "flat"))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """An image folder with two classes of two images each."""
    root = tmp_path / "images"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(root / cls / f"{cls}{i}.png")
    return root


def test_captions_file_by_path_name_and_position(folder: Path, tmp_path: Path) -> None:
    dataset = load_dataset(folder)
    by_path = {"cat/cat0.png": "a tabby", "cat/cat1.png": "a kitten", "dog/dog0.png": "a puppy", "dog1.png": "a dog"}
    (tmp_path / "c.json").write_text(json.dumps(by_path))
    assert read_captions_file(tmp_path / "c.json", dataset) == ("a tabby", "a kitten", "a puppy", "a dog")
    (tmp_path / "c.csv").write_text(
        "image,caption\ncat/cat1.png,a kitten\ncat0.png,a tabby\ndog/dog0.png,a puppy\n3,a dog\n"
    )
    assert captions_for(tmp_path / "c.csv", dataset) == ("a tabby", "a kitten", "a puppy", "a dog")
    (tmp_path / "list.json").write_text(json.dumps(["1", "2", "3", "4"]))
    assert read_captions_file(tmp_path / "list.json", dataset) == ("1", "2", "3", "4")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("short.json", json.dumps(["a", "b"]), "lists 2 captions but"),
        ("unknown.json", json.dumps({"cat/cat0.png": "a", "bird/b.png": "b"}), "does not have: 'bird/b.png'"),
        ("missing.json", json.dumps({"cat/cat0.png": "a"}), "no caption for 3 of the 4 images"),
        ("empty.json", json.dumps(["a", "b", " ", "d"]), "empty captions"),
        (
            "twice.json",
            json.dumps({"cat/cat0.png": "a", "cat0.png": "b", "cat1.png": "c", "2": "d", "3": "e"}),
            "twice",
        ),
        ("bad.json", "{not json", "not valid JSON"),
        ("nohead.csv", "cat0.png,a\n", "needs a header"),
        ("captions.txt", "a\nb\n", "are .json or .csv"),
    ],
)
def test_captions_file_that_does_not_match_is_one_line(
    folder: Path, tmp_path: Path, name: str, content: str, message: str
) -> None:
    dataset = load_dataset(folder)
    (tmp_path / name).write_text(content)
    with pytest.raises(CaptionsError) as err:
        read_captions_file(tmp_path / name, dataset)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_captions_file(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(CaptionsError, match="does not exist"):
        captions_for(tmp_path / "nope.json", load_dataset(folder))
