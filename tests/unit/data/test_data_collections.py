"""Image collections (genprov.data.collections): every format reads the pixels the files hold, by range."""

from __future__ import annotations

import builtins
import dataclasses
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from genprov.data import load_dataset, load_images, save_images
from genprov.data.collections import (
    CollectionSpec,
    collection_spec,
    expand_braces,
    is_collection_only,
    open_collection,
    resolve_collection,
)
from genprov.exceptions import ConfigError, DataError, MissingDependencyError


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    """11 digits as PNG files (8x8 grey) in tmp/folder."""
    return save_images(load_dataset("digits", n=11, seed=3).images, tmp_path / "folder")


@pytest.fixture
def one_by_one(files: list[Path]) -> torch.Tensor:
    """The reference: each file loaded on its own."""
    return torch.cat([load_images([f]) for f in files])


def _tar_shards(files: list[Path], folder: Path, sizes: list[int]) -> list[Path]:
    """Tar shards of ``files`` (``sizes`` images each) with a non-image member beside every image."""
    shards, start = [], 0
    for s, size in enumerate(sizes):
        shard = folder / f"part-{s:03d}.tar"
        with tarfile.open(shard, "w") as tar:
            for file in files[start : start + size]:
                tar.add(file, arcname=f"{file.stem}.png")
                caption = folder / f"{file.stem}.txt"
                caption.write_text("a digit")
                tar.add(caption, arcname=f"{file.stem}.txt")
        shards.append(shard)
        start += size
    return shards


def test_brace_patterns_expand_like_webdataset() -> None:
    assert expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_braces("{x,y}-{8..10}") == ["x-8", "x-9", "x-10", "y-8", "y-9", "y-10"]
    with pytest.raises(ConfigError, match="counts down"):
        expand_braces("a-{3..1}.tar")
    with pytest.raises(ConfigError, match="unmatched brace"):
        expand_braces("a-{3..1.tar")


def test_a_folder_reads_what_loading_the_files_one_by_one_gives(files, one_by_one, tmp_path) -> None:
    spec = resolve_collection(str(tmp_path / "folder"))
    images = open_collection(spec)
    assert spec.kind == "folder" and spec.length == 11 and spec.shape == (1, 8, 8)
    torch.testing.assert_close(images.read(0, 11), one_by_one, rtol=0, atol=0)
    torch.testing.assert_close(images.read(4, 9), one_by_one[4:9], rtol=0, atol=0)
    assert images.names(0, 2) == [str(tmp_path / "folder" / f.name) for f in files[:2]]
    # the seeded subset and the resize of load_dataset
    spec = resolve_collection(collection_spec(tmp_path / "folder", n=5, seed=1, size=4))
    torch.testing.assert_close(
        open_collection(spec).read(0, 5), load_dataset(str(tmp_path / "folder"), n=5, seed=1, resize=4).images
    )


def test_a_range_of_a_tar_shard_list_crosses_shard_boundaries(files, one_by_one, tmp_path) -> None:
    shards = _tar_shards(files, tmp_path, [4, 3, 4])
    spec = resolve_collection(str(tmp_path / "part-{000..002}.tar"))
    assert spec.kind == "tar" and spec.counts == (4, 3, 4) and spec.length == 11
    images = open_collection(spec)
    torch.testing.assert_close(images.read(2, 9), one_by_one[2:9], rtol=0, atol=0)  # shards 0, 1 and 2
    torch.testing.assert_close(images.read(0, 11), one_by_one, rtol=0, atol=0)
    assert images.names(3, 5) == [f"{shards[0]}:{files[3].stem}.png", f"{shards[1]}:{files[4].stem}.png"]
    # a list file names the same shards (relative to itself, braces allowed): the same collection
    (tmp_path / "shards.txt").write_text("# the shards\npart-000.tar\npart-{001..002}.tar\n")
    assert resolve_collection(str(tmp_path / "shards.txt")).fingerprint == spec.fingerprint
    assert is_collection_only(str(tmp_path / "part-{000..002}.tar")) and not is_collection_only(tmp_path / "folder")
    # a worker given the resolved spec only reads the shards it needs, and notices a shard that changed
    shards[2].write_bytes(shards[1].read_bytes())
    with pytest.raises(DataError, match="changed since the run started"):
        open_collection(dataclasses.replace(spec, size=8)).read(8, 10)


def test_npz_and_data_sets_read_as_load_dataset(files, tmp_path) -> None:
    pixels = np.stack([np.asarray(load_images([f])[0].add(1).mul(127.5).round().to(torch.uint8)) for f in files])
    np.savez(tmp_path / "x.npz", x=pixels)
    spec = resolve_collection(collection_spec(tmp_path / "x.npz", size=16, n=7, seed=2))
    expected = load_dataset(str(tmp_path / "x.npz"), resize=16, n=7, seed=2).images
    torch.testing.assert_close(open_collection(spec).read(2, 7), expected[2:7], rtol=0, atol=0)
    digits = resolve_collection(collection_spec("digits", n=20, seed=4))
    assert digits.kind == "dataset"
    torch.testing.assert_close(open_collection(digits).read(5, 20), load_dataset("digits", n=20, seed=4).images[5:20])


def test_an_lmdb_reads_its_encoded_images(files, one_by_one, tmp_path) -> None:
    lmdb = pytest.importorskip("lmdb")
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, file in enumerate(files):
            txn.put(f"{i:05d}".encode(), file.read_bytes())
    env.close()
    spec = resolve_collection(str(tmp_path / "db"))
    assert spec.kind == "lmdb"
    torch.testing.assert_close(open_collection(spec).read(3, 11), one_by_one[3:], rtol=0, atol=0)
    torch.testing.assert_close(open_collection(spec).read(0, 11), load_dataset(str(tmp_path / "db")).images)


def test_parquet_with_image_bytes_reads_its_images(files, one_by_one, tmp_path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    raw = [f.read_bytes() for f in files]
    pq.write_table(pa.table({"image": raw[:7], "label": list(range(7))}), tmp_path / "p0.parquet", row_group_size=3)
    structs = [{"bytes": data, "path": f.name} for data, f in zip(raw[7:], files[7:], strict=True)]
    pq.write_table(pa.table({"image": structs}), tmp_path / "p1.parquet")  # Hugging Face datasets' Image column
    spec = resolve_collection(str(tmp_path / "p{0..1}.parquet"))
    assert spec.kind == "parquet" and spec.counts == (7, 4)
    torch.testing.assert_close(open_collection(spec).read(2, 10), one_by_one[2:10], rtol=0, atol=0)
    with pytest.raises(DataError, match="no image column"):
        resolve_collection(collection_spec(tmp_path / "p0.parquet", column="pixels"))


def test_parquet_without_pyarrow_names_the_extra(files, tmp_path, monkeypatch) -> None:
    (tmp_path / "p.parquet").write_bytes(b"PAR1")
    real_import = builtins.__import__

    def no_pyarrow(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(MissingDependencyError, match=r"pip install 'genprov\[parquet\]'"):
        open_collection(collection_spec(tmp_path / "p.parquet"))


def test_a_spec_is_small_picklable_and_fingerprints_the_collection(files, tmp_path) -> None:
    spec = resolve_collection(str(tmp_path / "folder"))
    assert len(pickle.dumps(spec)) < 1000
    assert CollectionSpec.from_dict(spec.to_dict()) == spec
    assert resolve_collection(collection_spec(tmp_path / "folder", size=4)).fingerprint != spec.fingerprint
    save_images(load_dataset("digits", n=1).images, tmp_path / "folder", prefix="zz")  # one image more
    with pytest.raises(DataError, match="now holds 12 images but was recorded with 11"):
        open_collection(dataclasses.replace(spec, size=8))
    assert resolve_collection(str(tmp_path / "folder")).fingerprint != spec.fingerprint


def test_images_of_another_size_are_refused_unless_resized(tmp_path, write_png) -> None:
    write_png(tmp_path / "mixed" / "a.png", size=(8, 8))
    write_png(tmp_path / "mixed" / "b.png", size=(12, 12))
    images = open_collection(resolve_collection(str(tmp_path / "mixed")))
    with pytest.raises(DataError, match="resize them all"):
        images.read(1, 2)
    resized = open_collection(resolve_collection(collection_spec(tmp_path / "mixed", size=8)))
    assert resized.read(0, 2).shape == (2, 1, 8, 8)
    with pytest.raises(DataError, match="do not exist"):
        collection_spec(str(tmp_path / "part-{000..001}.tar"))
