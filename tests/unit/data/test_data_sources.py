"""load_dataset on the embedded digits and on image folders, array files and LMDBs written in the tests."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genprov.data import DatasetInfo, dataset_info, list_datasets, load_dataset, missing_files, resolve_data_root
from genprov.data.dataset import sample_indices
from genprov.exceptions import ConfigError, DataError, MissingDependencyError

# ----------------------------------------------------------------------------------------- digits, registry


def test_digits_shape_range_labels_and_split() -> None:
    train = load_dataset("digits")
    test = load_dataset("digits", split="test")
    assert (len(train), len(test)) == (1437, 360)
    assert train.images.shape == (1437, 1, 8, 8)
    assert train.images.dtype == torch.float32
    assert float(train.images.min()) == -1.0
    assert float(train.images.max()) == 1.0
    assert train.labels is not None
    assert test.labels is not None
    assert sorted(set(train.labels.tolist())) == list(range(10))
    assert train.labels.dtype == torch.int64
    assert torch.bincount(test.labels).min() >= 33  # the fixed split is class-balanced
    assert train.class_names == tuple(str(d) for d in range(10))
    assert train.name == "digits"
    # 0..16 is mapped linearly: x / 8 - 1 (exact on the 1/8 grid)
    assert torch.equal(train.images * 8, torch.round(train.images * 8))


def test_n_and_seed_give_a_deterministic_sorted_subset() -> None:
    full = load_dataset("digits")
    a = load_dataset("digits", n=50, seed=3)
    b = load_dataset("digits", n=50, seed=3)
    c = load_dataset("digits", n=50, seed=4)
    assert len(a) == 50
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)
    assert a.labels is not None
    assert full.labels is not None
    matches = [int(((full.images - img).abs().flatten(1).sum(1) == 0).nonzero()[0]) for img in a.images]
    assert matches == sorted(matches)
    assert torch.equal(full.labels[matches], a.labels)
    with pytest.raises(DataError, match="only 1437"):
        load_dataset("digits", n=5000)
    with pytest.raises(ConfigError, match="n must be"):
        load_dataset("digits", n=0)


def test_resize_applies_to_registered_sets() -> None:
    ds = load_dataset("digits", n=10, resize=16)
    assert ds.images.shape == (10, 1, 16, 16)
    assert ds.image_size == 16
    assert float(ds.images.min()) >= -1
    assert float(ds.images.max()) <= 1


def test_list_and_info() -> None:
    infos = list_datasets()
    names = [i.name for i in infos]
    assert names[0] == "digits"
    assert {"mnist", "fashion-mnist", "cifar10", "cifar2", "olivetti"} <= set(names)
    for info in infos:
        assert isinstance(info, DatasetInfo)
        assert set(info.splits) == set(info.n_examples) == set(info.split_files)
        assert set(info.files) == {f for files in info.split_files.values() for f in files}
        assert len(info.class_names) == info.n_classes
        assert info.license
    mnist = dataset_info("mnist")
    assert (mnist.image_size, mnist.channels, mnist.needs_files, mnist.downloadable) == (28, 1, True, True)
    assert mnist.to_dict()["files"][0] == "mnist/train-images-idx3-ubyte.gz"
    assert not dataset_info("digits").needs_files
    assert dataset_info("cifar10").channels == 3


def test_unknown_name_and_split_suggest_a_fix() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'mnist'"):
        dataset_info("mnst")
    with pytest.raises(ConfigError, match="Did you mean 'fashion-mnist'"):
        load_dataset("fashion_mnist")
    with pytest.raises(ConfigError, match="Did you mean 'test'"):
        load_dataset("digits", split="tset")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("no/such/folder")


def test_missing_data_root_says_how_to_set_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GENPROV_DATA", raising=False)
    with pytest.raises(DataError, match=r"--data-root.*GENPROV_DATA"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="not a folder"):
        load_dataset("mnist", data_root=tmp_path / "nope")
    monkeypatch.setenv("GENPROV_DATA", str(tmp_path))
    assert resolve_data_root(None) == tmp_path
    assert missing_files("cifar2", None) == ["cifar10_convnetjs/cifar2_auto_horse.npz"]
    assert missing_files("digits", None) == []
    with pytest.raises(DataError, match=r"cifar10_batch_50\.png.*shared data folder"):
        load_dataset("cifar10", split="test")


# ----------------------------------------------------------------------------------------- image folders


def test_folder_with_class_subfolders(tmp_path: Path, write_png: Callable[..., Path]) -> None:
    for i, cls in enumerate(["zebra", "ant", "ant", "bee"]):
        write_png(tmp_path / "imgs" / cls / f"{i}.png", seed=i)
    (tmp_path / "imgs" / "ant" / "notes.txt").write_text("not an image; ignored")
    (tmp_path / "imgs" / ".hidden").mkdir()
    ds = load_dataset(tmp_path / "imgs")
    assert ds.class_names == ("ant", "bee", "zebra")
    assert ds.labels is not None
    assert ds.labels.tolist() == [0, 0, 1, 2]
    assert ds.images.shape == (4, 1, 8, 8)
    assert ds.name == str(tmp_path / "imgs")
    with pytest.raises(DataError, match="single set"):
        load_dataset(tmp_path / "imgs", split="test")


def test_flat_folder_rgb_has_no_labels(tmp_path: Path, write_png: Callable[..., Path]) -> None:
    write_png(tmp_path / "a.png", mode="RGB")
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "b.jpg")
    ds = load_dataset(tmp_path)
    assert ds.labels is None
    assert ds.class_names is None
    assert ds.images.shape == (2, 3, 8, 8)
    assert float(ds.images[1, 0].mean()) > 0.9
    assert float(ds.images[1, 2].mean()) < -0.9


def test_folder_with_split_subfolders(tmp_path: Path, write_png: Callable[..., Path]) -> None:
    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            write_png(tmp_path / split / ("cat" if i % 2 else "dog") / f"{i}.png", seed=i)
    assert len(load_dataset(tmp_path)) == 3
    assert len(load_dataset(tmp_path, split="test")) == 2
    with pytest.raises(DataError, match="no 'val' folder"):
        load_dataset(tmp_path, split="val")


def test_folder_errors(tmp_path: Path, write_png: Callable[..., Path]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no images here")
    with pytest.raises(DataError, match="No images found"):
        load_dataset(empty)
    mixed = tmp_path / "mixed"
    write_png(mixed / "a.png", size=(8, 8))
    write_png(mixed / "b.png", size=(10, 10))
    with pytest.raises(DataError, match=r"b\.png is 10x10.*images of one size"):
        load_dataset(mixed)
    assert load_dataset(mixed, resize=6).images.shape == (2, 1, 6, 6)
    broken = tmp_path / "broken"
    write_png(broken / "ok.png")
    (broken / "fake.png").write_text("text with an image suffix")
    with pytest.raises(DataError, match=r"fake\.png is not an image"):
        load_dataset(broken)
    cut = tmp_path / "cut"
    png = write_png(cut / "big.png", size=(64, 64))
    png.write_bytes(png.read_bytes()[:300])
    with pytest.raises(DataError, match=r"big\.png.*truncated"):
        load_dataset(cut)
    loose = tmp_path / "loose"
    write_png(loose / "a.png")
    write_png(loose / "cls" / "b.png")
    with pytest.raises(DataError, match="mixes image files"):
        load_dataset(loose)
    empty_class = tmp_path / "emptyclass"
    write_png(empty_class / "a" / "1.png")
    (empty_class / "b").mkdir()
    with pytest.raises(DataError, match=r"Class folder .*b holds no images"):
        load_dataset(empty_class)


def test_folder_n_decodes_only_the_chosen_files(tmp_path: Path, write_png: Callable[..., Path]) -> None:
    for i in range(6):
        write_png(tmp_path / f"{i}.png", seed=i)
    full = load_dataset(tmp_path)
    (tmp_path / "6.png").write_text("broken, but never chosen")
    seed = next(s for s in range(100) if 6 not in sample_indices(7, 3, s))  # type: ignore[operator]
    sub = load_dataset(tmp_path, n=3, seed=seed)
    assert torch.equal(sub.images, full.images[sample_indices(7, 3, seed)])


# ----------------------------------------------------------------------------------------- npz / npy


def _images(n: int, shape: tuple[int, ...], dtype: type = np.uint8) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, *shape)).astype(dtype)


@pytest.mark.parametrize(
    ("keys", "images", "channels"),
    [
        (("x", "y"), _images(4, (8, 8, 3)), 3),  # uint8 NHWC
        (("images", "labels"), _images(4, (1, 8, 8)).astype(np.float32) / 255, 1),  # float [0, 1] NCHW
        (("X", "target"), _images(4, (8, 8)).astype(np.float64) / 127.5 - 1, 1),  # float [-1, 1] NHW
        (("data", "targets"), _images(4, (8, 8, 4)), 3),  # RGBA: alpha dropped
    ],
)
def test_npz_variants(tmp_path: Path, keys: tuple[str, str], images: np.ndarray, channels: int) -> None:
    labels = np.array([0, 1, 1, 0])
    np.savez(tmp_path / "d.npz", **{keys[0]: images, keys[1]: labels})
    ds = load_dataset(tmp_path / "d.npz")
    assert ds.images.shape == (4, channels, 8, 8)
    assert ds.labels is not None
    assert ds.labels.tolist() == labels.tolist()
    assert float(ds.images.min()) >= -1
    assert float(ds.images.max()) <= 1
    first = to_unit(images[:1], channels)
    np.testing.assert_allclose(ds.images[:1].numpy(), first, atol=1e-5)


def to_unit(batch: np.ndarray, channels: int) -> np.ndarray:
    """Reference conversion of one test batch to NCHW [-1, 1]."""
    if batch.ndim == 3:
        batch = batch[:, None]
    elif batch.shape[-1] in (3, 4):
        batch = batch.transpose(0, 3, 1, 2)[:, :channels]
    if batch.dtype == np.uint8:
        return batch / 127.5 - 1
    return batch * 2 - 1 if batch.min() >= 0 else batch


def test_npz_splits_class_names_and_npy(tmp_path: Path) -> None:
    np.savez(
        tmp_path / "s.npz",
        x_train=_images(5, (8, 8)),
        y_train=np.arange(5) % 2,
        x_test=_images(2, (8, 8)),
        y_test=np.array([1.0, 0.0]),
        class_names=np.array(["no", "yes"]),
    )
    train = load_dataset(tmp_path / "s.npz")
    test = load_dataset(tmp_path / "s.npz", split="test")
    assert (len(train), len(test)) == (5, 2)
    assert train.class_names == ("no", "yes")
    assert test.labels is not None
    assert test.labels.tolist() == [1, 0]
    np.save(tmp_path / "a.npy", _images(3, (8, 8, 1)))
    only = load_dataset(tmp_path / "a.npy")
    assert only.images.shape == (3, 1, 8, 8)
    assert only.labels is None


def test_npz_errors_name_file_and_key(tmp_path: Path) -> None:
    bad = _images(3, (8, 8)).astype(np.float32) / 255
    bad[1, 2, 3] = np.nan
    np.savez(tmp_path / "nan.npz", x=bad)
    with pytest.raises(DataError, match=r"nan\.npz\['x'\] contains 1 NaN"):
        load_dataset(tmp_path / "nan.npz")
    np.savez(tmp_path / "count.npz", x=_images(3, (8, 8)), y=np.zeros(4, dtype=np.int64))
    with pytest.raises(DataError, match="3 images but 'y' holds 4 labels"):
        load_dataset(tmp_path / "count.npz")
    np.savez(tmp_path / "range.npz", x=_images(2, (8, 8)).astype(np.float32))
    with pytest.raises(DataError, match=r"floats in \[.*uint8"):
        load_dataset(tmp_path / "range.npz")
    np.savez(tmp_path / "keys.npz", pixels=_images(2, (8, 8)))
    with pytest.raises(DataError, match=r"found keys \['pixels'\]"):
        load_dataset(tmp_path / "keys.npz")
    np.savez(tmp_path / "nosplit.npz", x=_images(2, (8, 8)))
    with pytest.raises(DataError, match="x_test"):
        load_dataset(tmp_path / "nosplit.npz", split="test")
    np.savez(tmp_path / "flabels.npz", x=_images(2, (8, 8)), y=np.array([0.5, 1.0]))
    with pytest.raises(DataError, match="non-integer labels"):
        load_dataset(tmp_path / "flabels.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"Cannot read .*junk\.npz"):
        load_dataset(tmp_path / "junk.npz")
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"expected a folder"):
        load_dataset(tmp_path / "table.csv")


# ----------------------------------------------------------------------------------------- LMDB


def _png(value: int, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (value, value, 255 - value)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_lmdb_round_trip(tmp_path: Path) -> None:
    lmdb = pytest.importorskip("lmdb")
    env = lmdb.open(str(tmp_path / "bedroom"), map_size=1 << 22)
    with env.begin(write=True) as txn:
        for i in range(5):
            txn.put(f"{i:04d}".encode(), _png(40 * i))
    env.close()
    ds = load_dataset(tmp_path / "bedroom")
    assert ds.images.shape == (5, 3, 8, 8)
    assert ds.labels is None
    np.testing.assert_allclose(ds.images[:, 0, 0, 0].numpy(), [40 * i / 127.5 - 1 for i in range(5)], atol=1e-6)
    assert len(load_dataset(tmp_path / "bedroom" / "data.mdb", n=2, seed=1, resize=4)) == 2
    with pytest.raises(DataError, match="single set"):
        load_dataset(tmp_path / "bedroom", split="test")


def test_lmdb_bad_value_and_missing_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lmdb = pytest.importorskip("lmdb")
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"good", _png(0))
        txn.put(b"oops", b"garbage")
    env.close()
    with pytest.raises(DataError, match="key 'oops'"):
        load_dataset(tmp_path / "db")
    monkeypatch.setitem(sys.modules, "lmdb", None)
    with pytest.raises(MissingDependencyError, match=r"genprov\[lmdb\]"):
        load_dataset(tmp_path / "db")
