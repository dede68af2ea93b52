"""download() against a local http.server serving copies of the shared MNIST test files."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from genprov.data import download, load_dataset
from genprov.exceptions import ConfigError, DataError

TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _serve_mnist_test(shared_data: Path, folder: Path) -> None:
    for name in TEST_FILES:
        shutil.copy(shared_data / "mnist" / name, folder / name)


def test_download_verifies_and_skips_valid_files(
    shared_data: Path, http_folder: tuple[Path, str], tmp_path: Path
) -> None:
    served, url = http_folder
    _serve_mnist_test(shared_data, served)
    root = tmp_path / "root"
    written = download("mnist", root, base_url=url, split="test", show_progress=False)
    assert [p.name for p in written] == list(TEST_FILES)
    for name in TEST_FILES:
        assert (root / "mnist" / name).read_bytes() == (served / name).read_bytes()
    assert len(load_dataset("mnist", split="test", data_root=root)) == 10000
    (served / TEST_FILES[0]).unlink()  # a second call must not need the server
    assert download("mnist", root, base_url=url, split="test") == []
    assert not list((root / "mnist").glob(".*tmp"))


def test_corrupt_download_raises_and_keeps_valid_files(
    shared_data: Path, http_folder: tuple[Path, str], tmp_path: Path
) -> None:
    served, url = http_folder
    _serve_mnist_test(shared_data, served)
    labels = served / TEST_FILES[1]
    data = bytearray(labels.read_bytes())
    data[100] ^= 0xFF
    labels.write_bytes(bytes(data))
    root = tmp_path / "root"
    with pytest.raises(DataError) as err:
        download("mnist", root, base_url=url, split="test", show_progress=False)
    message = str(err.value)
    assert TEST_FILES[1] in message
    assert "ec29112dd5afa0611ce80d1b7f02629c" in message  # expected
    assert hashlib.md5(bytes(data), usedforsecurity=False).hexdigest() in message  # got
    images = root / "mnist" / TEST_FILES[0]
    assert images.read_bytes() == (shared_data / "mnist" / TEST_FILES[0]).read_bytes()
    assert not (root / "mnist" / TEST_FILES[1]).exists()
    assert sorted(p.name for p in (root / "mnist").iterdir()) == [TEST_FILES[0]]


def test_a_corrupt_local_file_is_replaced(shared_data: Path, http_folder: tuple[Path, str], tmp_path: Path) -> None:
    served, url = http_folder
    _serve_mnist_test(shared_data, served)
    local = tmp_path / "mnist" / TEST_FILES[1]
    local.parent.mkdir()
    local.write_bytes(b"garbage")
    written = download("mnist", tmp_path, base_url=url, split="test", show_progress=False)
    assert local in written
    assert local.read_bytes() == (served / TEST_FILES[1]).read_bytes()


def test_unreachable_server_and_missing_file(http_folder: tuple[Path, str], tmp_path: Path) -> None:
    _, url = http_folder
    with pytest.raises(DataError, match=r"Could not download t10k-images-idx3-ubyte\.gz.*404"):
        download("fashion-mnist", tmp_path, base_url=url, split="test", show_progress=False)
    with pytest.raises(DataError, match="Could not download"):
        download("mnist", tmp_path, base_url="http://127.0.0.1:9", split="test", show_progress=False)


def test_shared_files_count_as_present_without_network(shared_data: Path) -> None:
    # train images exist only as the rebuilt .recon.gz parts; their own checksum is accepted.
    assert download("mnist", shared_data, base_url="http://127.0.0.1:9") == []
    assert download("fashion-mnist", shared_data, base_url="http://127.0.0.1:9", split="test") == []


def test_not_downloadable_and_no_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be downloaded"):
        download("cifar10", tmp_path)
    with pytest.raises(ConfigError, match="bundled with scikit-learn"):
        download("digits", tmp_path)
    with pytest.raises(ConfigError, match="no split"):
        download("mnist", tmp_path, split="val")
    monkeypatch.delenv("GENPROV_DATA", raising=False)
    with pytest.raises(DataError, match="--data-root"):
        download("mnist", None)
