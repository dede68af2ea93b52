"""Image collections read by range: the training or suspect images of a long sharded computation.

A shard task (:mod:`genprov.storage.shards`) computes rows ``[start, stop)`` of a result; with a collection it
reads exactly those images itself, on whichever worker it runs, so the driver never holds the images. One
interface for every format:

* :class:`CollectionSpec`: what to read and how (kind, files, split, subset, resize, channels); small, frozen and
  picklable, it travels with the task. :func:`collection_spec` builds it from what a user types.
* :func:`open_collection` ``(spec)`` -> :class:`ImageCollection`: ``len(c)``, ``c.read(start, stop)`` (float32
  (n, C, H, W) in [-1, 1], decoded, resized and channel-converted by :mod:`genprov.data.images` exactly as
  :func:`~genprov.data.load_dataset` / :func:`~genprov.data.load_images` do) and ``c.names(start, stop)``. Opened
  collections are cached per process, so a worker lists a folder or a tar shard once.
* :func:`resolve_collection`: the spec with what the driver learns once and every worker checks: the length, the
  images per file of a shard list, the channels and image shape (from the first image when not given) and a
  cheap content fingerprint (names and byte sizes of the files, never their pixels), recorded by stores and index
  folders so a resumed run is refused on another collection.
* :func:`collection_key`: the data fingerprint a store or index of a collection records in its spec (the pixels'
  fingerprint for a built-in data set, as an in-memory fit records, else ``collection:`` and the cheap fingerprint);
  :func:`is_collection_key` tells such a key from a pixels' fingerprint.

Kinds (:data:`COLLECTION_KINDS`):

``dataset``  a built-in data set (``digits``, ``mnist``, ...): loaded whole in each process (they fit in memory);
             its fingerprint is the pixels' (:func:`~genprov.data.dataset.fingerprint_arrays`), as in-memory fits record.
``folder``   a folder of image files in :func:`~genprov.data.image_folder_files` order (sorted; class sub-folders
             as ``load_dataset`` reads them; ``train`` / ``test`` sub-folders are splits).
``tar``      a WebDataset-style list of tar shards (``.tar``, ``.tar.gz``, ``.tgz``; stdlib :mod:`tarfile`): a brace
             pattern ``shards/a-{000..009}.tar``, one shard, or a list file (``.txt``: one shard per line, relative
             to the list file; ``#`` comments). Every member with an image suffix is one image, in tar order.
``parquet``  parquet files (one, a brace pattern, or a list file) with a column of encoded image bytes (binary,
             or a struct with a ``bytes`` field as Hugging Face ``datasets`` writes); needs ``pyarrow``.
``npz``      an ``.npz`` / ``.npy`` array file (or a ``genprov sample`` folder), read as ``load_dataset`` reads it.
``lmdb``     an LSUN-style LMDB folder (``data.mdb``; keys in cursor order); needs the ``lmdb`` package.

``n`` and ``seed`` keep the same seeded subset as ``load_dataset(..., n=n, seed=seed)``, so a collection reads the
pixels ``load_dataset`` returns for the same arguments (for ``folder``, ``npz``, ``lmdb`` and ``dataset``; where an
image folder mixes grey and colour images, ``channels=None`` follows the first image instead of the whole set).

Example:
    >>> spec = resolve_collection(collection_spec("shards/laion-{0000..0099}.tar", size=256))  # doctest: +SKIP
    >>> images = open_collection(spec).read(1000, 1064)  # (64, 3, 256, 256), from shards 0 and 1  # doctest: +SKIP
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import tarfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genprov.data.dataset import fingerprint_arrays, sample_indices
from genprov.data.images import IMAGE_EXTENSIONS, ImageSource, resize_images, stack_images, uint8_to_model
from genprov.data.sources import _SAMPLES_FILE, _read_array_file, image_folder_files, list_datasets, load_dataset
from genprov.exceptions import ConfigError, DataError, MissingDependencyError

__all__ = [
    "COLLECTION_KEY_PREFIX",
    "COLLECTION_KINDS",
    "CollectionSpec",
    "ImageCollection",
    "collection_key",
    "collection_spec",
    "expand_braces",
    "is_collection_key",
    "is_collection_only",
    "open_collection",
    "resolve_collection",
]

#: Prefix of the data fingerprint of a store or index of a collection other than a built-in data set.
COLLECTION_KEY_PREFIX = "collection:"
#: The formats :func:`open_collection` reads.
COLLECTION_KINDS = ("dataset", "folder", "tar", "parquet", "npz", "lmdb")
#: Suffixes of tar shards and of list files (one shard or parquet file per line).
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
LIST_SUFFIXES = (".txt", ".list", ".shards")
#: Columns tried, in order, for a parquet file's image bytes when none is named.
PARQUET_IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp", "image_bytes", "bytes")
#: Bytes at each end of a large file hashed into its fingerprint (with its size).
_EDGE_BYTES = 1 << 16
#: Opened collections kept per process (a worker reads many shards of one collection).
_CACHE_SIZE = 4
_OPEN: dict[CollectionSpec, ImageCollection] = {}


@dataclasses.dataclass(frozen=True)
class CollectionSpec:
    """Where a collection's images are and how they are read: small, picklable, hashable.

    Attributes:
        kind: One of :data:`COLLECTION_KINDS`.
        source: What the user gave (a data set name, a path, a brace pattern, a list file), for messages and names.
        paths: Absolute paths: the folder, array file or LMDB folder, or the tar shards / parquet files in order
            (``()`` for a built-in data set).
        split: ``"train"`` or ``"test"`` (built-in sets, split folders, ``.npz`` split keys).
        n: Keep the seeded subset of ``n`` images ``load_dataset`` keeps (``None``: all).
        seed: Seed of that subset.
        size: Resize every image to ``size`` x ``size`` (``None``: as stored; then all must share one size).
        channels: 1 or 3 (``None``: the first image's, fixed by :func:`resolve_collection`).
        column: A parquet file's image column (``None``: the first of :data:`PARQUET_IMAGE_COLUMNS` present).
        data_root: Folder of a built-in data set's files.
        counts: Images in each of ``paths`` (tar and parquet; set by :func:`resolve_collection`).
        length: Number of images (set by :func:`resolve_collection`; checked by every reader).
        shape: ``(C, H, W)`` of every image (set by :func:`resolve_collection`; checked by every read).
        fingerprint: Content fingerprint (set by :func:`resolve_collection`).
    """

    kind: str
    source: str
    paths: tuple[str, ...] = ()
    split: str = "train"
    n: int | None = None
    seed: int = 0
    size: int | None = None
    channels: int | None = None
    column: str | None = None
    data_root: str | None = None
    counts: tuple[int, ...] | None = None
    length: int | None = None
    shape: tuple[int, int, int] | None = None
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in COLLECTION_KINDS:
            raise ConfigError(f"collection kind must be one of {COLLECTION_KINDS}; got {self.kind!r}.")
        for name in ("n", "size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"collection {name} must be a positive integer or None; got {value!r}.")
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"collection channels must be 1, 3 or None; got {self.channels!r}.")

    @property
    def resolved(self) -> bool:
        """Whether :func:`resolve_collection` filled in length, shape and fingerprint."""
        return self.length is not None and self.shape is not None and self.fingerprint is not None

    def reading(self) -> dict[str, Any]:
        """The settings that change the pixels read (part of the fingerprint)."""
        return {
            "kind": self.kind,
            "split": self.split,
            "n": self.n,
            "seed": self.seed,
            "size": self.size,
            "channels": self.channels,
            "column": self.column,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CollectionSpec:
        """Inverse of :meth:`to_dict`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"a collection spec has no fields {unknown}; it has {sorted(known)}.")
        data = dict(values)
        for name in ("paths", "counts", "shape"):
            if data.get(name) is not None:
                data[name] = tuple(data[name])
        return cls(**data)


# ============================================================================================ building a spec


def expand_braces(pattern: str) -> list[str]:
    """Expand WebDataset / shell brace patterns: ``a-{000..002}.tar`` -> ``a-000.tar, a-001.tar, a-002.tar``.

    ``{N..M}`` counts (zero-padded to the width of ``N`` when it has a leading zero), ``{x,y}`` lists; several
    braces give every combination, left to right.

    Raises:
        ConfigError: An empty brace, a descending range or an unclosed brace.
    """
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        if "{" in pattern or "}" in pattern:
            raise ConfigError(f"{pattern!r} has an unmatched brace; write shard lists as name-{{000..009}}.tar.")
        return [pattern]
    body = match.group(1)
    counted = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if counted:
        first, last = counted.groups()
        if int(last) < int(first):
            raise ConfigError(f"{pattern!r}: the range {{{body}}} counts down; write it as {{{last}..{first}}}.")
        width = len(first) if first.startswith("0") and len(first) > 1 else 0
        items = [str(i).zfill(width) for i in range(int(first), int(last) + 1)]
    elif "," in body:
        items = body.split(",")
    else:
        raise ConfigError(f"{pattern!r}: {{{body}}} is neither a range {{000..009}} nor a list {{a,b}}.")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [name for item in items for name in expand_braces(head + item + tail)]


def _is_tar(name: str) -> bool:
    return name.lower().endswith(TAR_SUFFIXES)


def _is_parquet(name: str) -> bool:
    return name.lower().endswith(".parquet")


def _listed(path: Path) -> list[str]:
    """The shard or parquet files a list file names (relative to its folder; braces expanded)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"Cannot read the list file {path}: {err}.") from None
    entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not entries:
        raise DataError(f"The list file {path} names no files; put one tar shard or parquet file per line.")
    return [str(path.parent / name) for entry in entries for name in expand_braces(entry)]


def _files_of(source: str) -> list[str] | None:
    """The tar shards or parquet files ``source`` names (a brace pattern, one file, a list file), else ``None``."""
    if "{" in source:
        return expand_braces(source)
    path = Path(source).expanduser()
    if path.is_file() and (_is_tar(path.name) or _is_parquet(path.name)):
        return [str(path)]
    if path.is_file() and path.name.lower().endswith(LIST_SUFFIXES):
        return _listed(path)
    return None


def _sharded_kind(source: str, files: Sequence[str]) -> str:
    if all(_is_tar(f) for f in files):
        return "tar"
    if all(_is_parquet(f) for f in files):
        return "parquet"
    raise DataError(
        f"{source} names {len(files)} files that are not all tar shards ({', '.join(TAR_SUFFIXES)}) or all parquet "
        f"files (e.g. {files[0]}); a collection is one or the other."
    )


def collection_spec(
    source: str | os.PathLike[str],
    *,
    split: str = "train",
    n: int | None = None,
    seed: int = 0,
    size: int | None = None,
    channels: int | None = None,
    column: str | None = None,
    data_root: str | os.PathLike[str] | None = None,
) -> CollectionSpec:
    """The :class:`CollectionSpec` of what a user gave (``--data``, an IMAGES argument); nothing is read yet.

    Args:
        source: A built-in data set name, an image folder, an ``.npz`` / ``.npy`` file, an LMDB folder, a tar shard,
            a parquet file, a brace pattern of either (``a-{000..009}.tar``) or a list file of them (``.txt``).
        split, n, seed, size, channels, column, data_root: See :class:`CollectionSpec`.

    Raises:
        DataError: A path that does not exist, or a list mixing tar and parquet files.
        ConfigError: A malformed brace pattern.
    """
    text = os.fspath(source)
    common: dict[str, Any] = {"split": split, "n": n, "seed": seed, "size": size, "channels": channels}
    files = _files_of(text)
    if files is not None:
        missing = [f for f in files if not Path(f).expanduser().is_file()]
        if missing:
            raise DataError(
                f"{text} names {len(files)} files, {len(missing)} of which do not exist (e.g. {missing[0]}); check the "
                "pattern or the list file (relative entries are read from the list file's folder)."
            )
        kind = _sharded_kind(text, files)
        absolute = tuple(str(Path(f).expanduser().resolve()) for f in files)
        return CollectionSpec(kind, text, absolute, column=column, **common)
    path = Path(text).expanduser()
    if not path.exists():
        if text in {info.name for info in list_datasets()} or not ("/" in text or os.sep in text or path.suffix):
            root = str(data_root) if data_root is not None else None
            return CollectionSpec(
                "dataset", text, (), data_root=root, **common
            )  # an unknown name: load_dataset says so
        raise DataError(f"{path} does not exist. Check the path (relative paths start from {Path.cwd()}).")
    if path.is_dir() and (path / _SAMPLES_FILE).is_file():
        path = path / _SAMPLES_FILE
    if path.is_dir():
        kind = "lmdb" if (path / "data.mdb").is_file() else "folder"
    elif path.name == "data.mdb":
        kind, path = "lmdb", path.parent
    elif path.suffix.lower() in (".npz", ".npy"):
        kind = "npz"
    else:
        raise DataError(
            f"Cannot read {path} as an image collection: expected an image folder, an .npz/.npy file, an LMDB folder, "
            f"tar shards ({', '.join(TAR_SUFFIXES)}), parquet files, a brace pattern of them or a list file "
            f"({', '.join(LIST_SUFFIXES)})."
        )
    return CollectionSpec(kind, text, (str(path.resolve()),), **common)


def is_collection_only(source: str | os.PathLike[str]) -> bool:
    """Whether only the collection readers open ``source`` (tar shards, parquet files, their patterns or lists),
    not :func:`~genprov.data.load_dataset` / :func:`~genprov.data.load_images`."""
    text = os.fspath(source)
    try:
        return _files_of(text) is not None
    except (ConfigError, DataError):
        return "{" in text


def collection_key(spec: CollectionSpec) -> str:
    """The data fingerprint a store or index of the resolved collection ``spec`` records: the pixels' fingerprint
    for a built-in data set (the key an in-memory fit records, so such a store is the one ``fit`` writes), else
    :data:`COLLECTION_KEY_PREFIX` and the collection's cheap fingerprint.

    Raises:
        ConfigError: ``spec`` is not resolved (:func:`resolve_collection`).
    """
    if spec.fingerprint is None:
        raise ConfigError(f"The collection {spec.source} is not resolved; pass resolve_collection(spec).")
    return spec.fingerprint if spec.kind == "dataset" else f"{COLLECTION_KEY_PREFIX}{spec.fingerprint}"


def is_collection_key(data_fingerprint: str | None) -> bool:
    """Whether a store or index with this recorded data fingerprint was built from an image collection (its key
    names the collection's files, not the pixels: a fit over images in memory cannot check it)."""
    return str(data_fingerprint or "").startswith(COLLECTION_KEY_PREFIX)


# ============================================================================================ collections


class ImageCollection(ABC):
    """Images read by index range. Build with :func:`open_collection`; subclasses read one kind.

    Attributes:
        spec: The spec it was opened from (resolved by :func:`resolve_collection`).
    """

    def __init__(self, spec: CollectionSpec) -> None:
        self.spec = spec
        self._total = self._count()
        self._chosen = self._subset()
        self._first_channels: int | None = None
        if spec.length is not None and spec.length != len(self):
            raise DataError(
                f"The collection {spec.source} now holds {len(self)} images but was recorded with {spec.length}: it "
                "changed since the run started. Restore it, or start a new run (another output folder)."
            )

    def __len__(self) -> int:
        return self._total if self._chosen is None else len(self._chosen)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.source!r}, {len(self)} images)"

    # ------------------------------------------------------------------------------------ subclass hooks

    @abstractmethod
    def _count(self) -> int:
        """Images before the subset."""

    def _subset(self) -> np.ndarray | None:
        """The underlying indices of the subset ``n`` (``load_dataset``'s choice), or ``None`` for all."""
        return sample_indices(self._total, self.spec.n, self.spec.seed)

    @abstractmethod
    def _name(self, index: int) -> str:
        """The name of underlying image ``index`` (a path, ``shard:member``, ``file[row]``)."""

    def _sources(self, indices: np.ndarray) -> list[tuple[str, ImageSource]]:
        """``(name, path or encoded bytes)`` of underlying images ``indices`` (the encoded kinds)."""
        raise NotImplementedError  # pragma: no cover - the array kinds override _pixels

    def _pixels(self, indices: np.ndarray, channels: int | None) -> Tensor:
        """(n, C, H, W) float32 in [-1, 1] of underlying images ``indices``: decoded as ``load_images`` does."""
        return stack_images(self._sources(indices), size=self.spec.size, channels=channels)

    def _content(self, digest: Any) -> None:
        """Feed what identifies the files (names, sizes; never all their bytes) into ``digest``."""
        raise NotImplementedError  # pragma: no cover - every kind but dataset overrides it

    # ------------------------------------------------------------------------------------ reading

    def _indices(self, start: int, stop: int) -> np.ndarray:
        if not (isinstance(start, (int, np.integer)) and isinstance(stop, (int, np.integer))):
            raise ConfigError(f"read takes integer bounds; got {start!r}, {stop!r}.")
        if not 0 <= start < stop <= len(self):
            raise DataError(
                f"Rows {start}..{stop - 1} are outside the collection {self.spec.source} of {len(self)} images."
            )
        rows = np.arange(start, stop, dtype=np.int64)
        return rows if self._chosen is None else self._chosen[rows]

    def read(self, start: int, stop: int) -> Tensor:
        """Images ``[start, stop)``: float32 (stop - start, C, H, W) in [-1, 1].

        Raises:
            DataError: Bounds outside the collection, an unreadable image (named), or an image whose shape differs
                from the collection's (pass a size to resize them all).
        """
        out = self._pixels(self._indices(start, stop), self._channels())
        shape = self.spec.shape
        if shape is not None and tuple(out.shape[1:]) != tuple(shape):
            raise DataError(
                f"Images {start}..{stop - 1} of {self.spec.source} have shape {tuple(out.shape[1:])} (C, H, W) but the "
                f"collection's first image has {tuple(shape)}; resize them all (--resize SIZE) or use images of one size."
            )
        return out.contiguous()

    def _channels(self) -> int:
        """The channels every read gives: the spec's, else the first image's."""
        if self.spec.channels is not None:
            return self.spec.channels
        if self._first_channels is None:
            if not len(self):
                raise DataError(f"The collection {self.spec.source} holds no images.")
            self._first_channels = int(self._pixels(self._indices(0, 1), None).shape[1])
        return self._first_channels

    def names(self, start: int = 0, stop: int | None = None) -> list[str]:
        """The names of images ``[start, stop)`` (default: all)."""
        stop = len(self) if stop is None else stop
        if start == stop:
            return []
        return [self._name(int(i)) for i in self._indices(start, stop)]

    def fingerprint(self) -> str:
        """16 hex digits of SHA-256 over the reading settings, the length and the files' names and sizes."""
        digest = hashlib.sha256()
        digest.update(json.dumps({**self.spec.reading(), "length": len(self)}, sort_keys=True).encode())
        self._content(digest)
        return digest.hexdigest()[:16]

    def counts(self) -> tuple[int, ...] | None:
        """Images per file of a shard list (``None`` for the other kinds)."""
        return None

    def resolved_spec(self) -> CollectionSpec:
        """The spec with channels, shape, length, counts and fingerprint filled in (reads the first image)."""
        spec = self.spec
        if spec.resolved:
            return spec
        channels = self._channels()
        first = self._pixels(self._indices(0, 1), channels)
        pinned = dataclasses.replace(spec, channels=channels, counts=self.counts(), length=len(self))
        self.spec = pinned
        return dataclasses.replace(
            pinned, shape=(channels, int(first.shape[2]), int(first.shape[3])), fingerprint=self.fingerprint()
        )


def _channels_as(images: Tensor, channels: int | None, where: str) -> Tensor:
    """Arrays with ``channels``: grey replicated to RGB; RGB arrays are not turned grey (no luminance is defined)."""
    if channels is None or images.shape[1] == channels:
        return images
    if channels == 3 and images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    raise DataError(f"{where} holds {images.shape[1]}-channel images; they cannot be read as {channels}-channel ones.")


class _DatasetCollection(ImageCollection):
    """A built-in data set, loaded whole in each process."""

    def _count(self) -> int:
        s = self.spec
        self._images = load_dataset(s.source, split=s.split, data_root=s.data_root, resize=s.size, n=s.n, seed=s.seed)
        return len(self._images)

    def _subset(self) -> np.ndarray | None:
        return None  # load_dataset took the subset

    def _name(self, index: int) -> str:
        return f"{self.spec.source}[{index}]"

    def _pixels(self, indices: np.ndarray, channels: int | None) -> Tensor:
        rows = self._images.images[int(indices[0]) : int(indices[-1]) + 1]  # always a range: a view, as fit slices
        return _channels_as(rows, channels, self.spec.source)

    def fingerprint(self) -> str:
        """The pixels' :func:`~genprov.data.dataset.fingerprint_arrays` (what an in-memory fit records)."""
        images = _channels_as(self._images.images, self.spec.channels, self.spec.source)
        return fingerprint_arrays(images.detach().cpu().contiguous().numpy())


def _edges(path: Path, digest: Any) -> None:
    """Feed a file's name, size and first and last :data:`_EDGE_BYTES` into ``digest``."""
    size = path.stat().st_size
    digest.update(f"{path.name}\0{size}\0".encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(_EDGE_BYTES))
        if size > 2 * _EDGE_BYTES:
            handle.seek(size - _EDGE_BYTES)
        digest.update(handle.read(_EDGE_BYTES))


class _FolderCollection(ImageCollection):
    """Image files in ``load_dataset`` order."""

    def _count(self) -> int:
        self._root = Path(self.spec.paths[0])
        self._files = image_folder_files(self._root, self.spec.split)
        return len(self._files)

    def _name(self, index: int) -> str:
        return str(Path(self.spec.source) / self._files[index].relative_to(self._root))

    def _sources(self, indices: np.ndarray) -> list[tuple[str, ImageSource]]:
        return [(self._name(int(i)), self._files[int(i)]) for i in indices]

    def _content(self, digest: Any) -> None:
        for file in self._files:
            digest.update(f"{file.relative_to(self._root).as_posix()}\0{file.stat().st_size}\n".encode())


class _NpzCollection(ImageCollection):
    """An ``.npz`` / ``.npy`` array file, read once per process as ``load_dataset`` reads it."""

    def _count(self) -> int:
        self._file = Path(self.spec.paths[0])
        self._arrays = _read_array_file(self._file, self.spec.split)
        return len(self._arrays)

    def _name(self, index: int) -> str:
        return f"{self.spec.source}[{index}]"

    def _pixels(self, indices: np.ndarray, channels: int | None) -> Tensor:
        stored = self._arrays.images
        if isinstance(stored, np.ndarray):
            images = uint8_to_model(torch.from_numpy(np.ascontiguousarray(stored[indices])))
        else:
            images = stored[torch.from_numpy(indices)]
        if self.spec.size is not None:
            images = resize_images(images, self.spec.size)
        return _channels_as(images, channels, self.spec.source)

    def _content(self, digest: Any) -> None:
        _edges(self._file, digest)


class _ShardedCollection(ImageCollection):
    """Images spread over several files (tar shards, parquet files): located by the images per file."""

    def _count(self) -> int:
        recorded = self.spec.counts
        if recorded is not None and len(recorded) != len(self.spec.paths):
            raise DataError(
                f"The collection {self.spec.source} records {len(recorded)} counts for {len(self.spec.paths)} files."
            )
        self._counts: list[int | None] = list(recorded) if recorded is not None else [None] * len(self.spec.paths)
        for i, count in enumerate(self._counts):
            if count is None:
                self._counts[i] = self._file_count(i)
        self._starts = [0, *np.cumsum([int(c or 0) for c in self._counts]).tolist()]
        return int(self._starts[-1])

    @abstractmethod
    def _file_count(self, file: int) -> int:
        """Images in file ``file`` (reads its index)."""

    def counts(self) -> tuple[int, ...]:
        return tuple(int(c) for c in self._counts if c is not None)

    def _locate(self, index: int) -> tuple[int, int]:
        """``(file, position in the file)`` of underlying image ``index``."""
        file = bisect.bisect_right(self._starts, index) - 1
        return file, index - int(self._starts[file])

    def _checked_count(self, file: int, found: int) -> None:
        if found != self._counts[file]:
            raise DataError(
                f"{self.spec.paths[file]} now holds {found} images but the collection {self.spec.source} recorded "
                f"{self._counts[file]}: it changed since the run started. Restore it, or start a new run."
            )

    def _content(self, digest: Any) -> None:
        for path, count in zip(self.spec.paths, self.counts(), strict=True):
            digest.update(f"{Path(path).name}\0{Path(path).stat().st_size}\0{count}\n".encode())


class _TarCollection(_ShardedCollection):
    """WebDataset-style tar shards: every member with an image suffix is one image, in tar order."""

    _members: dict[int, list[tarfile.TarInfo]]

    def _file_count(self, file: int) -> int:
        return len(self._index(file))

    def _index(self, file: int) -> list[tarfile.TarInfo]:
        """The image members of shard ``file`` (listed once per process; the two last shards kept)."""
        if not hasattr(self, "_members"):
            self._members = {}
        if file not in self._members:
            path = self.spec.paths[file]
            try:
                with tarfile.open(path, "r:*") as tar:
                    members = [m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(IMAGE_EXTENSIONS)]
            except (OSError, tarfile.TarError, EOFError) as err:
                raise DataError(f"Cannot read the tar shard {path}: {err}. Copy it again.") from None
            if self._counts[file] is not None:
                self._checked_count(file, len(members))
            while len(self._members) >= 2:
                self._members.pop(next(iter(self._members)))
            self._members[file] = members
        return self._members[file]

    def _name(self, index: int) -> str:
        file, position = self._locate(index)
        return f"{self.spec.paths[file]}:{self._index(file)[position].name}"

    def _sources(self, indices: np.ndarray) -> list[tuple[str, ImageSource]]:
        wanted: dict[int, list[tuple[int, int]]] = {}
        for k, index in enumerate(indices):
            file, position = self._locate(int(index))
            wanted.setdefault(file, []).append((k, position))
        out: list[tuple[str, ImageSource] | None] = [None] * len(indices)
        for file, items in wanted.items():
            members = self._index(file)
            path = self.spec.paths[file]
            try:
                with tarfile.open(path, "r:*") as tar:
                    for k, position in items:
                        member = members[position]
                        handle = tar.extractfile(member)
                        if handle is None:  # pragma: no cover - only regular files are listed
                            raise DataError(f"{path}: {member.name} is not a regular file.")
                        out[k] = (f"{path}:{member.name}", handle.read())
            except (OSError, tarfile.TarError, EOFError) as err:
                raise DataError(f"Cannot read the tar shard {path}: {err}. Copy it again.") from None
        return [item for item in out if item is not None]


def _import_parquet() -> Any:
    """``pyarrow.parquet``, or :class:`MissingDependencyError` naming the extra."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError("pyarrow", "parquet", "Reading parquet image collections") from None
    return pq


class _ParquetCollection(_ShardedCollection):
    """Parquet files with a column of encoded image bytes; only the row groups holding the rows asked for are read."""

    def _file(self, file: int) -> Any:
        """The opened parquet file ``file`` (the last few are kept open)."""
        if not hasattr(self, "_files"):
            self._files: dict[int, tuple[Any, list[int]]] = {}
        if file not in self._files:
            while len(self._files) >= _CACHE_SIZE:
                self._files.pop(next(iter(self._files)))
            pq = _import_parquet()
            path = self.spec.paths[file]
            try:
                handle = pq.ParquetFile(path)
            except (OSError, ValueError) as err:
                raise DataError(f"Cannot read the parquet file {path}: {err}.") from None
            sizes = [handle.metadata.row_group(g).num_rows for g in range(handle.num_row_groups)]
            self._files[file] = (handle, [0, *np.cumsum(sizes).tolist()])
            if self._counts[file] is not None:
                self._checked_count(file, int(handle.metadata.num_rows))
        return self._files[file][0]

    def _column(self, file: int) -> str:
        schema = self._file(file).schema_arrow
        names = list(schema.names)
        column = self.spec.column or next((c for c in PARQUET_IMAGE_COLUMNS if c in names), None)
        if column is None or column not in names:
            raise DataError(
                f"{self.spec.paths[file]} has no image column {self.spec.column or PARQUET_IMAGE_COLUMNS!r}; its columns are "
                f"{names}. Name the column of encoded image bytes (collection_spec(..., column=NAME))."
            )
        return column

    def _file_count(self, file: int) -> int:
        self._column(file)
        return int(self._file(file).metadata.num_rows)

    def _name(self, index: int) -> str:
        file, position = self._locate(index)
        return f"{self.spec.paths[file]}[{position}]"

    def _sources(self, indices: np.ndarray) -> list[tuple[str, ImageSource]]:
        out: list[tuple[str, ImageSource]] = []
        cached: tuple[int, int, list[Any]] | None = None
        for index in indices:
            file, position = self._locate(int(index))
            handle = self._file(file)
            starts = self._files[file][1]
            group = bisect.bisect_right(starts, position) - 1
            if cached is None or cached[:2] != (file, group):
                column = self._column(file)
                values = handle.read_row_group(group, columns=[column]).column(column).to_pylist()
                cached = (file, group, values)
            value = cached[2][position - int(starts[group])]
            if isinstance(value, dict):
                value = value.get("bytes")
            name = f"{self.spec.paths[file]}[{position}]"
            if not isinstance(value, (bytes, bytearray)):
                raise DataError(
                    f"{name} holds no image bytes ({type(value).__name__}); every row needs an encoded image."
                )
            out.append((name, bytes(value)))
        return out


def _import_lmdb() -> Any:
    try:
        import lmdb
    except ImportError:
        raise MissingDependencyError("lmdb", "lmdb", "Reading LSUN-style LMDB collections") from None
    return lmdb


class _LmdbCollection(ImageCollection):
    """An LSUN-style LMDB (keys in cursor order, values encoded images), as ``load_dataset`` reads it."""

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        """A read transaction; the environment is opened for it only (LMDB allows one open per process)."""
        lmdb = _import_lmdb()
        try:
            env = lmdb.open(str(self._path), readonly=True, lock=False, readahead=False, meminit=False)
        except lmdb.Error as err:
            raise DataError(f"Cannot open the LMDB {self._path}: {err}.") from None
        try:
            with env.begin() as txn:
                yield txn
        finally:
            env.close()

    def _count(self) -> int:
        self._path = Path(self.spec.paths[0])
        if self.spec.split != "train":
            raise DataError(
                f"The LMDB {self._path} holds a single set of images and so has no {self.spec.split!r} split."
            )
        with self._transaction() as txn:
            self._keys: list[bytes] = list(txn.cursor().iternext(keys=True, values=False))
        return len(self._keys)

    def _name(self, index: int) -> str:
        return f"{self._path} key {self._keys[index].decode(errors='replace')!r}"

    def _sources(self, indices: np.ndarray) -> list[tuple[str, ImageSource]]:
        with self._transaction() as txn:
            return [(self._name(int(i)), bytes(txn.get(self._keys[int(i)]) or b"")) for i in indices]

    def _content(self, digest: Any) -> None:
        digest.update(f"{(self._path / 'data.mdb').stat().st_size}\n".encode())
        for key in self._keys:
            digest.update(key + b"\n")


_KINDS: dict[str, Callable[[CollectionSpec], ImageCollection]] = {
    "dataset": _DatasetCollection,
    "folder": _FolderCollection,
    "tar": _TarCollection,
    "parquet": _ParquetCollection,
    "npz": _NpzCollection,
    "lmdb": _LmdbCollection,
}


def _cache(spec: CollectionSpec, collection: ImageCollection) -> ImageCollection:
    while len(_OPEN) >= _CACHE_SIZE:
        _OPEN.pop(next(iter(_OPEN)))
    _OPEN[spec] = collection
    return collection


def open_collection(spec: CollectionSpec | str | os.PathLike[str], *, refresh: bool = False) -> ImageCollection:
    """The collection ``spec`` describes (a string is passed to :func:`collection_spec` first). A resolved spec's is
    opened once per process (a worker lists a folder or reads a shard's index once); any other is opened afresh.

    Args:
        spec: The collection.
        refresh: Open a resolved spec's afresh too (list its files again, and check its length), replacing the one
            this process kept: to check that a recorded collection has not changed since it was opened here.

    Raises:
        DataError: Missing or unreadable files, or a resolved spec whose collection has changed (its length).
        MissingDependencyError: Parquet without ``pyarrow``, LMDB without ``lmdb`` (names the extra to install).
    """
    if not isinstance(spec, CollectionSpec):
        spec = collection_spec(spec)
    if not spec.resolved:
        return _KINDS[spec.kind](spec)
    found = None if refresh else _OPEN.get(spec)
    if found is not None:
        return found
    _OPEN.pop(spec, None)
    return _cache(spec, _KINDS[spec.kind](spec))


def resolve_collection(spec: CollectionSpec | str | os.PathLike[str]) -> CollectionSpec:
    """``spec`` with its length, images per file, channels, image shape and fingerprint: what a driver records and
    hands to its shard tasks (they then skip the listing of files they do not read, and check the rest).

    Raises:
        DataError: As :func:`open_collection`; an empty collection.
    """
    collection = open_collection(spec)
    resolved = collection.resolved_spec()
    if resolved not in _OPEN:  # what this process read to resolve it is reused by its readers
        collection.spec = resolved
        _cache(resolved, collection)
    return resolved
