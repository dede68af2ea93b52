"""Fetch the official MNIST and Fashion-MNIST files, with checksums.

Files go to ``DATA_ROOT/mnist/`` and ``DATA_ROOT/fashion_mnist/`` under their official names. Each file is
streamed to a temporary file beside its destination, its MD5 is compared with the official one, and only
then is it renamed into place, so an interrupted or corrupt download never replaces anything. Files
already present with the right checksum (whole, in ``.partNN`` byte parts, or as MNIST's losslessly
rebuilt ``train-images-idx3-ubyte.recon.gz``) are skipped without touching the network.

Other built-in datasets are not downloadable: ``digits`` is bundled with scikit-learn and the CIFAR and
Olivetti files ship in the project's shared data folder.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import math
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from genprov.data.idx import read_bytes
from genprov.data.sources import DATA_ENV, dataset_info, locate_file
from genprov.exceptions import ConfigError, DataError
from genprov.utils.io import atomic_open
from genprov.utils.progress import progress

__all__ = ["DOWNLOADABLE", "download"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 16
_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class _Remote:
    """Where a dataset's files live and their MD5 sums (official names plus accepted local variants)."""

    mirrors: tuple[str, ...]
    md5: dict[str, str]


_REMOTES: dict[str, _Remote] = {
    "mnist": _Remote(
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
            # Same pixels as the official file, rebuilt losslessly (only the gzip header differs).
            "train-images-idx3-ubyte.recon.gz": "a11c6790f49b5683e318ba384e84bc2e",
        },
    ),
    "fashion-mnist": _Remote(
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
}

#: Names :func:`download` can fetch.
DOWNLOADABLE: tuple[str, ...] = tuple(_REMOTES)


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _chunks(stream: IO[bytes] | Any) -> Iterator[bytes]:
    while chunk := stream.read(_CHUNK):
        yield chunk


def _fetch(urls: list[str], dest: Path, expected_md5: str, show_progress: bool | None) -> None:
    """Stream the first reachable URL to ``dest`` atomically, checking its MD5 before the rename."""
    failures = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
                size = int(response.headers.get("Content-Length") or 0)
                digest = hashlib.md5(usedforsecurity=False)
                with atomic_open(dest, "wb") as handle:
                    chunks = progress(
                        _chunks(response), desc=dest.name, total=math.ceil(size / _CHUNK) or None, show=show_progress
                    )
                    for chunk in chunks:
                        digest.update(chunk)
                        handle.write(chunk)
                    got = digest.hexdigest()
                    if got != expected_md5:
                        raise DataError(
                            f"Checksum mismatch for {dest.name} downloaded from {url}: expected MD5 {expected_md5}, "
                            f"got {got}. The download is corrupt or the server holds a different file; it was not "
                            f"saved and files already in {dest.parent} are untouched. Try again or another --base-url."
                        )
            logger.info("downloaded %s from %s", dest, url)
            return
        except DataError:
            raise
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
            detail = (
                f"HTTP {err.code} {err.reason}"
                if isinstance(err, urllib.error.HTTPError)
                else getattr(err, "reason", err)
            )
            failures.append(f"{url} ({detail})")
    raise DataError(
        f"Could not download {dest.name}: {'; '.join(failures)}. Check the network connection, or pass "
        "--base-url (base_url=) pointing at a server or folder (file://...) holding the official files."
    )


def download(
    name: str,
    data_root: str | os.PathLike[str] | None,
    *,
    base_url: str | None = None,
    show_progress: bool | None = None,
    split: str | None = None,
) -> list[Path]:
    """Download a dataset's official files into the data root, verifying their MD5 checksums.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
        data_root: Folder to write into (created if needed); files go to ``DATA_ROOT/mnist/`` or
            ``DATA_ROOT/fashion_mnist/``. ``None`` uses ``$GENPROV_DATA``.
        base_url: Fetch ``{base_url}/{file name}`` instead of the official mirrors (any ``http(s)://`` or
            ``file://`` URL).
        show_progress: Draw progress bars (default: when stderr is a terminal).
        split: Only this split's files (``"train"`` or ``"test"``); ``None`` = all.

    Returns:
        Paths of the files downloaded by this call (empty when every file was already present and valid).

    Raises:
        ConfigError: If ``name`` is not downloadable or ``split`` is unknown.
        DataError: On a checksum mismatch (naming the file, expected and actual MD5) or when no mirror
            answers. Files already present and valid are never removed.
    """
    info = dataset_info(name)
    if name not in _REMOTES:
        why = "it is bundled with scikit-learn" if not info.needs_files else "its files ship in the shared data folder"
        raise ConfigError(
            f"Dataset {name!r} cannot be downloaded ({why}). Downloadable datasets: {', '.join(DOWNLOADABLE)}."
        )
    if split is not None and split not in info.splits:
        raise ConfigError(f"Dataset {name!r} has no split {split!r}; choose one of: {', '.join(info.splits)}.")
    if data_root is None or str(data_root) == "":
        data_root = os.environ.get(DATA_ENV) or None
    if data_root is None:
        raise DataError(f"download needs a folder to write to: pass --data-root DIR (data_root=DIR) or set {DATA_ENV}.")
    root = Path(data_root).expanduser()
    remote = _REMOTES[name]
    mirrors = (base_url,) if base_url else remote.mirrors
    written = []
    for rel in info.split_files[split] if split is not None else info.files:
        existing = locate_file(root, rel)
        if existing is not None and _md5(read_bytes(existing)) == remote.md5.get(existing.name):
            logger.info("%s is present with the right checksum; skipping", existing)
            continue
        dest = root / rel
        _fetch([mirror.rstrip("/") + "/" + dest.name for mirror in mirrors], dest, remote.md5[dest.name], show_progress)
        written.append(dest)
    return written
