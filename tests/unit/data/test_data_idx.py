"""IDX reading, byte parts, and MNIST-style loading from tiny files written in the tests."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from genprov.data import load_dataset, read_idx
from genprov.data.idx import file_parts, read_bytes
from genprov.exceptions import DataError


def idx_bytes(array: np.ndarray, magic_type: int = 0x08) -> bytes:
    """Encode ``array`` as IDX (type code ``magic_type``), big-endian."""
    dtypes = {0x08: ">u1", 0x0B: ">i2", 0x0D: ">f4"}
    header = struct.pack(">BBBB", 0, 0, magic_type, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtypes[magic_type]).tobytes()


def write_mnist(
    folder: Path, n: int = 5, *, prefix: str = "train", compress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
        data = idx_bytes(array)
        name = f"{prefix}-{kind}-ubyte"
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return images, labels


def test_read_idx_plain_gzip_and_other_dtypes(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.idx").write_bytes(idx_bytes(array))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx", magic=2051), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx.gz"), array)
    floats = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    (tmp_path / "f.idx").write_bytes(idx_bytes(floats, 0x0D))
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx"), floats)
    shorts = np.array([-300, 7], dtype=np.int16)
    (tmp_path / "s.idx").write_bytes(idx_bytes(shorts, 0x0B))
    np.testing.assert_array_equal(read_idx(tmp_path / "s.idx"), shorts)


def test_read_idx_wrong_magic_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "labels.idx").write_bytes(idx_bytes(np.zeros(3, dtype=np.uint8)))
    with pytest.raises(DataError, match=r"labels\.idx has IDX magic number 2049; expected 2051"):
        read_idx(tmp_path / "labels.idx", magic=2051)
    (tmp_path / "junk.idx").write_bytes(b"hello world")
    with pytest.raises(DataError, match=r"junk\.idx is not an IDX file"):
        read_idx(tmp_path / "junk.idx")


def test_read_idx_truncated_and_too_long(tmp_path: Path) -> None:
    data = idx_bytes(np.zeros((4, 5, 5), dtype=np.uint8))
    (tmp_path / "short.idx").write_bytes(data[:-7])
    with pytest.raises(DataError, match=r"short\.idx is truncated.*\(4, 5, 5\)"):
        read_idx(tmp_path / "short.idx")
    (tmp_path / "long.idx").write_bytes(data + b"\x00")
    with pytest.raises(DataError, match="longer than its header"):
        read_idx(tmp_path / "long.idx")
    packed = gzip.compress(data)
    (tmp_path / "cut.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match=r"cut\.gz is a damaged gzip file"):
        read_idx(tmp_path / "cut.gz")


def test_byte_parts_are_joined_in_numeric_order(tmp_path: Path) -> None:
    array = np.arange(200, dtype=np.uint8).reshape(2, 10, 10)
    data = gzip.compress(idx_bytes(array))
    cuts = [0, 10, 25, len(data)]
    for k in range(3):
        (tmp_path / f"x.gz.part{k:02d}").write_bytes(data[cuts[k] : cuts[k + 1]])
    (tmp_path / "x.gz.partial").write_bytes(b"ignored")
    assert [p.name for p in file_parts(tmp_path / "x.gz") or []] == ["x.gz.part00", "x.gz.part01", "x.gz.part02"]
    assert read_bytes(tmp_path / "x.gz") == data
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), array)
    assert not (tmp_path / "x.gz").exists()  # nothing joined on disk
    (tmp_path / "x.gz.part01").unlink()
    with pytest.raises(DataError, match="part is missing"):
        read_idx(tmp_path / "x.gz")
    assert file_parts(tmp_path / "nothing.gz") is None
    with pytest.raises(DataError, match="does not exist"):
        read_bytes(tmp_path / "nothing.gz")


def test_mnist_loader_on_tiny_files(tmp_path: Path) -> None:
    images, labels = write_mnist(tmp_path / "mnist", n=6)
    ds = load_dataset("mnist", data_root=tmp_path)
    assert ds.images.shape == (6, 1, 28, 28)
    assert ds.labels is not None
    np.testing.assert_array_equal(ds.labels.numpy(), labels)
    np.testing.assert_allclose(ds.images[:, 0].numpy(), images / 127.5 - 1, atol=1e-6)
    assert ds.class_names == tuple(str(d) for d in range(10))


def test_mnist_loader_accepts_uncompressed_files_in_the_root(tmp_path: Path) -> None:
    write_mnist(tmp_path, n=3, prefix="t10k", compress=False)
    assert len(load_dataset("mnist", split="test", data_root=tmp_path)) == 3


def test_mnist_loader_count_mismatch_and_swapped_files(tmp_path: Path) -> None:
    write_mnist(tmp_path / "mnist", n=4)
    labels = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(3, dtype=np.uint8))))
    with pytest.raises(DataError, match=r"4 images but .*train-labels-idx1-ubyte\.gz holds 3 labels"):
        load_dataset("mnist", data_root=tmp_path)
    images = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    images.write_bytes(labels.read_bytes())
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz has IDX magic number 2049"):
        load_dataset("mnist", data_root=tmp_path)


def test_missing_files_are_listed_with_the_download_command(tmp_path: Path) -> None:
    write_mnist(tmp_path / "fashion_mnist", n=2, prefix="t10k")
    assert len(load_dataset("fashion-mnist", split="test", data_root=tmp_path)) == 2
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", split="train", data_root=tmp_path)
    message = str(err.value)
    assert "fashion_mnist/train-images-idx3-ubyte.gz" in message
    assert "fashion_mnist/train-labels-idx1-ubyte.gz" in message
    assert f"genprov data download fashion-mnist --data-root {tmp_path}" in message
