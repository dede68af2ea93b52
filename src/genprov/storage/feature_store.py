"""Sharded, resumable feature stores: ``.npy`` memmaps plus a JSON manifest.

A :class:`FeatureStore` is a folder::

    store/
      manifest.json      spec (config, seeds, projector, dims, dtype, fingerprints), shard status, info
      features.npy       (n_rows, dim) memmap, one file per named array (np.lib.format.open_memmap)
      cache/NAME.safetensors   optional arrays derived from the features (e.g. TRAK's kernel), tagged with the
                         store's fingerprint and what else they depend on; a stale one is never read

Rows are written shard by shard (shard ``i`` holds rows ``[i * shard_size, (i + 1) * shard_size)``). A
shard is recorded as done only after its rows are flushed to disk, so a featurization killed at any
point resumes by recomputing only the shards not marked done. Reopening a store with a different spec
raises :class:`~genprov.exceptions.StoreMismatchError` naming the fields (see
:func:`genprov.storage.manifest.check_spec`).

Disk space: creating a store first checks that the file system has room for it, then reserves every
data block (``posix_fallocate``), and shards are written with ordinary file writes (never through a
writable memory map), so a full disk or a file-size limit is a one-line :class:`DataError`, not a
``SIGBUS``; the store stays resumable. Each finished shard's SHA-256 is recorded in the manifest and
checked, once per shard and :class:`FeatureStore` object, when the array is read.

Several processes may fill different shards of one store at once: the manifest update re-reads the
manifest under an exclusive lock (``fcntl.flock`` on ``.lock``) before it marks a shard done. Only
writers take the lock: opening and reading a finished store needs no write access.

:func:`read_raw_features` reads the headerless float32 ``(n, k)`` memmaps that D-TRAK's original code
writes (Zheng et al., 2024), so its users can score their existing features with genprov.

Example:
    >>> store = FeatureStore.create(tmp, n_rows=10, arrays={"features": 4}, spec={"seed": 0}, shard_size=4)  # doctest: +SKIP
    >>> for i in store.missing_shards():  # doctest: +SKIP
    ...     start, stop = store.shard_bounds(i)
    ...     store.write_shard(i, {"features": compute(start, stop)})
    >>> phi = store.read("features")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as st_save_numpy
from torch import Tensor

from genprov.exceptions import CheckpointError, ConfigError, DataError, StoreMismatchError
from genprov.storage.manifest import (
    MANIFEST_FILE,
    Manifest,
    check_spec,
    read_manifest,
    write_manifest,
)
from genprov.utils.artifacts import INCOMPLETE_STORE, check_output_folder, ensure_free_space, storage_error
from genprov.utils.checksums import sha256_hex, sign_safetensors, verify_safetensors
from genprov.utils.io import atomic_write_bytes

__all__ = ["STORE_DTYPES", "FeatureStore", "allocate_npy", "read_raw_features"]

#: Storage dtypes a store accepts (never float16: features are computed and solved in float32/64).
STORE_DTYPES = ("float32", "float64")
_KIND = "features"
_LOCK_FILE = ".lock"
_ARRAY_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
#: Sub-folder of derived arrays (:meth:`FeatureStore.write_cache`) and the metadata key recording what they were
#: computed from.
_CACHE_DIR = "cache"
_CACHE_KEY = "genprov_cache"
logger = logging.getLogger(__name__)


def _cache_record(fingerprint: str, key: Mapping[str, Any]) -> str:
    return json.dumps({"store": fingerprint, "key": dict(key)}, sort_keys=True, separators=(",", ":"))


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Exclusive lock on ``folder/.lock`` for read-modify-write of the manifest (no-op where unsupported)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: single writer only
        yield
        return
    with open(folder / _LOCK_FILE, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _reserve(fd: int, size: int) -> None:
    """Give the open file ``size`` bytes with every block reserved (a sparse file where that is unsupported)."""
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
    os.ftruncate(fd, size)


def allocate_npy(
    file: Path, shape: tuple[int, int], dtype: np.dtype, *, what: str = "the feature store's data file"
) -> None:
    """Create a zero-filled ``.npy`` file of ``shape`` with its blocks reserved; a full disk fails here (a
    :class:`DataError` naming ``what``), not later as a ``SIGBUS`` of a memory map."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    try:
        with open(file, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, header)
            _reserve(handle.fileno(), handle.tell() + shape[0] * shape[1] * dtype.itemsize)
    except OSError as err:
        file.unlink(missing_ok=True)
        raise storage_error(err, file, what) from err


def _allocated(file: Path) -> int:
    """Bytes already allocated to ``file`` on disk (0 when it does not exist)."""
    try:
        return int(getattr(file.stat(), "st_blocks", 0)) * 512
    except OSError:
        return 0


def _layout(n_rows: int, arrays: Mapping[str, int], dtype: str, shard_size: int) -> dict[str, Any]:
    return {"n_rows": n_rows, "arrays": dict(arrays), "dtype": dtype, "shard_size": shard_size}


def _check_layout(n_rows: int, arrays: Mapping[str, int], dtype: str, shard_size: int) -> None:
    def positive(value: object) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and bool(value >= 1)

    if not positive(n_rows):
        raise ConfigError(f"n_rows must be a positive integer (the number of examples); got {n_rows!r}.")
    if not positive(shard_size):
        raise ConfigError(f"shard_size must be a positive integer; got {shard_size!r}.")
    if dtype not in STORE_DTYPES:
        raise ConfigError(f"dtype must be one of {STORE_DTYPES}; got {dtype!r}.")
    if not arrays:
        raise ConfigError("arrays must name at least one array, e.g. {'features': 2048}.")
    for name, dim in arrays.items():
        if not _ARRAY_NAME.match(str(name)):
            raise ConfigError(f"array names must be lower case letters, digits, '_' or '-'; got {name!r}.")
        if not positive(dim):
            raise ConfigError(f"array {name!r} must have a positive number of columns; got {dim!r}.")


class FeatureStore:
    """A folder of ``(n_rows, dim)`` ``.npy`` memmaps filled shard by shard, with a manifest.

    Build one with :meth:`create` (creates or resumes) or :meth:`open` (an existing store). The
    constructor only records the path.

    Args:
        path: The store folder.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._manifest: Manifest | None = None
        self._maps: dict[str, np.memmap] = {}
        self._verified: set[tuple[str, int]] = set()

    def __repr__(self) -> str:
        state = "unopened"
        if self._manifest is not None:
            state = f"{self.n_done}/{self.n_shards} shards done"
        return f"FeatureStore({str(self.path)!r}, {state})"

    # ------------------------------------------------------------------------------------ creating

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        n_rows: int,
        arrays: Mapping[str, int],
        spec: Mapping[str, Any],
        dtype: str = "float32",
        shard_size: int = 1024,
        info: Mapping[str, Any] | None = None,
        resume: bool = True,
    ) -> FeatureStore:
        """Create a store, or reopen an existing one written with the same spec and layout.

        Args:
            path: Store folder (created).
            n_rows: Number of rows (examples).
            arrays: ``{array name: number of columns}``, e.g. ``{"features": 2048}``.
            spec: Settings that determine the numbers (JSON values); compared on reopen.
            dtype: Storage dtype, ``"float32"`` (default) or ``"float64"``.
            shard_size: Rows per shard (the unit of resumption).
            info: Free-form facts stored in the manifest (merged into an existing one).
            resume: Keep the finished shards of an existing store with the same spec; ``False`` clears
                them (the data files are rewritten).

        A finished store with the same spec whose manifest already holds ``info`` is opened without any
        write (and without the lock), so it may live on a read-only file system.

        Raises:
            StoreMismatchError: The folder holds a store with another spec or layout (names the fields).
            ConfigError: On an invalid layout, or a path that is a file or holds another kind of artefact.
            DataError: The file system has too little free space for the store, or is full (names both).
        """
        _check_layout(n_rows, arrays, dtype, shard_size)
        store = cls(path)
        layout = _layout(int(n_rows), {str(k): int(v) for k, v in arrays.items()}, dtype, int(shard_size))
        full_spec = {"layout": layout, **dict(spec)}
        n_shards = -(-int(n_rows) // int(shard_size))
        facts = dict(info or {})
        check_output_folder(store.path, accept={"feature store", INCOMPLETE_STORE}, option="--store")
        manifest = store._reusable(full_spec, resume=resume)
        if manifest is not None and all(manifest.info.get(k) == v for k, v in facts.items()):
            store._manifest = manifest
            return store
        store.path.mkdir(parents=True, exist_ok=True)
        with _locked(store.path):
            manifest = store._reusable(full_spec, resume=resume)
            if manifest is not None:
                manifest.info.update(facts)
                write_manifest(store.path, manifest)
                store._manifest = manifest
                return store
            itemsize = np.dtype(dtype).itemsize
            files = {name: store.path / f"{name}.npy" for name in layout["arrays"]}
            needed = sum(
                int(n_rows) * dim * itemsize - _allocated(files[name]) for name, dim in layout["arrays"].items()
            )
            ensure_free_space(store.path, needed, f"A feature store of {int(n_rows)} rows")
            # no manifest while the files are re-created: a failure midway leaves an incomplete store
            (store.path / MANIFEST_FILE).unlink(missing_ok=True)
            for name, dim in layout["arrays"].items():
                allocate_npy(files[name], (int(n_rows), dim), np.dtype(dtype))
            manifest = Manifest(
                kind=_KIND,
                spec=full_spec,
                shards=["pending"] * n_shards,
                info=facts,
                checksums={name: [None] * n_shards for name in layout["arrays"]},
            )
            write_manifest(store.path, manifest)
            store._manifest = manifest
        return store

    def _reusable(self, full_spec: Mapping[str, Any], *, resume: bool) -> Manifest | None:
        """The existing manifest when the folder holds a store of ``full_spec`` to resume, else ``None``.

        Raises:
            StoreMismatchError: The folder holds another kind of store or one with another spec.
        """
        if not (self.path / MANIFEST_FILE).is_file():
            return None
        manifest = read_manifest(self.path)
        if manifest.kind != _KIND:
            raise StoreMismatchError(
                f"{self.path} holds a {manifest.kind!r} store, not a feature store; use another folder."
            )
        check_spec(manifest.spec, full_spec, where=str(self.path))
        return manifest if resume and self._files_ok(full_spec["layout"]) else None

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> FeatureStore:
        """Open an existing store (complete or not) for reading or for filling its missing shards.

        Raises:
            DataError: If ``path`` holds no store or its data files do not match the manifest.
        """
        store = cls(path)
        manifest = read_manifest(store.path)
        if manifest.kind != _KIND:
            raise DataError(f"{store.path} holds a {manifest.kind!r} store, not a feature store.")
        store._manifest = manifest
        if not store._files_ok(store.layout):
            raise DataError(
                f"{store.path}: the .npy files do not match the manifest (missing, or of another shape or dtype). "
                "Delete the folder and featurize again."
            )
        return store

    def _files_ok(self, layout: Mapping[str, Any]) -> bool:
        for name, dim in layout["arrays"].items():
            file = self.path / f"{name}.npy"
            try:
                mm = np.load(file, mmap_mode="r")
            except (OSError, ValueError):
                return False
            if mm.shape != (layout["n_rows"], dim) or mm.dtype != np.dtype(layout["dtype"]):
                return False
        return True

    # ------------------------------------------------------------------------------------ state

    @property
    def manifest(self) -> Manifest:
        """The manifest as last read or written by this object."""
        if self._manifest is None:
            raise DataError(f"FeatureStore {self.path} is not opened; use FeatureStore.create or FeatureStore.open.")
        return self._manifest

    @property
    def layout(self) -> dict[str, Any]:
        """``{"n_rows", "arrays": {name: dim}, "dtype", "shard_size"}``."""
        layout: dict[str, Any] = self.manifest.spec["layout"]
        return layout

    @property
    def spec(self) -> dict[str, Any]:
        """The compared settings, without the layout."""
        return {k: v for k, v in self.manifest.spec.items() if k != "layout"}

    @property
    def info(self) -> dict[str, Any]:
        """Free-form facts stored with the features."""
        return self.manifest.info

    @property
    def n_rows(self) -> int:
        """Number of rows (examples)."""
        return int(self.layout["n_rows"])

    @property
    def shard_size(self) -> int:
        """Rows per shard."""
        return int(self.layout["shard_size"])

    @property
    def n_shards(self) -> int:
        """Number of shards."""
        return len(self.manifest.shards)

    @property
    def n_done(self) -> int:
        """Number of shards marked done."""
        return sum(s == "done" for s in self.manifest.shards)

    @property
    def is_complete(self) -> bool:
        """Whether every shard is done."""
        return self.n_done == self.n_shards

    def dim(self, name: str = "features") -> int:
        """Columns of array ``name``."""
        return int(self._array_dim(name))

    def _array_dim(self, name: str) -> int:
        arrays = self.layout["arrays"]
        if name not in arrays:
            raise DataError(f"{self.path} has no array {name!r}; it has {sorted(arrays)}.")
        return int(arrays[name])

    def shard_bounds(self, shard: int) -> tuple[int, int]:
        """Rows ``[start, stop)`` of ``shard``."""
        if not 0 <= shard < self.n_shards:
            raise DataError(f"shard must be in [0, {self.n_shards}); got {shard}.")
        start = shard * self.shard_size
        return start, min(self.n_rows, start + self.shard_size)

    def missing_shards(self) -> list[int]:
        """Shards not yet marked done (re-read from disk, so other writers' progress counts)."""
        self.refresh()
        return [i for i, s in enumerate(self.manifest.shards) if s != "done"]

    def refresh(self) -> None:
        """Re-read the manifest from disk."""
        self._manifest = read_manifest(self.path)

    # ------------------------------------------------------------------------------------ writing

    def write_shard(self, shard: int, data: Mapping[str, np.ndarray | Tensor]) -> None:
        """Write the rows of ``shard`` for every array, flush them, then mark the shard done.

        Args:
            shard: Shard index.
            data: ``{array name: (stop - start, dim) values}`` for every array of the store.

        Raises:
            DataError: On a missing array, a wrong shape, non-finite values, or a failed write (a full disk).
        """
        start, stop = self.shard_bounds(shard)
        names = set(self.layout["arrays"])
        if set(data) != names:
            raise DataError(f"write_shard needs exactly the arrays {sorted(names)}; got {sorted(data)}.")
        dtype = np.dtype(self.layout["dtype"])
        sums: dict[str, str] = {}
        for name, values in data.items():
            array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
            expected = (stop - start, self._array_dim(name))
            if array.shape != expected:
                raise DataError(f"shard {shard} of {name!r} must have shape {expected}; got {array.shape}.")
            if not np.isfinite(array).all():
                raise DataError(f"shard {shard} of {name!r} has NaN or infinite values; refusing to store them.")
            rows = np.ascontiguousarray(array, dtype=dtype)
            self._write_rows(name, start, rows)
            sums[name] = sha256_hex(rows)
        with _locked(self.path):
            manifest = read_manifest(self.path)
            manifest.shards[shard] = "done"
            for name, digest in sums.items():
                manifest.checksums.setdefault(name, [None] * len(manifest.shards))[shard] = digest
            write_manifest(self.path, manifest)
            self._manifest = manifest

    def _write_rows(self, name: str, start: int, rows: np.ndarray) -> None:
        """Write ``rows`` at row ``start`` of ``name.npy`` with ordinary file writes, then fsync."""
        file = self.path / f"{name}.npy"
        offset = int(self._map(name).offset) + start * rows.shape[1] * rows.itemsize
        try:
            with open(file, "r+b") as handle:
                handle.seek(offset)
                handle.write(rows.data.cast("B"))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as err:
            raise storage_error(err, file, f"rows {start}..{start + len(rows) - 1}") from err

    def update_info(self, **facts: Any) -> None:
        """Merge ``facts`` into the manifest's ``info`` (atomically)."""
        with _locked(self.path):
            manifest = read_manifest(self.path)
            manifest.info.update(facts)
            write_manifest(self.path, manifest)
            self._manifest = manifest

    # ------------------------------------------------------------------------------------ derived-array cache

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the spec, the layout and every shard's recorded checksum: equal for equal features,
        whatever folder the store is in (a copy keeps its caches)."""
        facts = {"spec": self.manifest.spec, "shards": self.manifest.shards, "checksums": self.manifest.checksums}
        return hashlib.sha256(json.dumps(facts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def _cache_file(self, name: str) -> Path:
        if not _ARRAY_NAME.match(name):
            raise ConfigError(f"cache name must match {_ARRAY_NAME.pattern}; got {name!r}.")
        return self.path / _CACHE_DIR / f"{name}.safetensors"

    def read_cache(self, name: str, key: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
        """Arrays derived from this store's features (e.g. TRAK's kernel) written by :meth:`write_cache`.

        Args:
            name: The cache's name (a file ``cache/NAME.safetensors`` in the store).
            key: What else the arrays depend on (JSON values, e.g. a damping); compared exactly.

        Returns:
            The arrays, or ``None`` when there is no cache, or it is stale (other features, another key),
            unreadable or corrupted: it is then never used.
        """
        file = self._cache_file(name)
        try:
            data = file.read_bytes()
            verify_safetensors(data, file)
            with safe_open(str(file), framework="numpy") as handle:
                recorded = (handle.metadata() or {}).get(_CACHE_KEY)
                if recorded != _cache_record(self.fingerprint, key):
                    return None
                return {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 - safe_open is not iterable
        except FileNotFoundError:
            return None
        except (OSError, ValueError, CheckpointError, SafetensorError) as err:
            logger.warning("%s: ignoring an unreadable cache (%s); it is recomputed.", file, err)
            return None

    def write_cache(self, name: str, key: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> bool:
        """Write arrays derived from the features as ``cache/NAME.safetensors`` (atomically, signed), tagged
        with :attr:`fingerprint` and ``key`` so a stale one is never read back.

        A store on a read-only file system is left as it is (reading a store never requires write access).

        Returns:
            Whether the cache was written.
        """
        file = self._cache_file(name)
        tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        data = st_save_numpy(tensors, metadata={_CACHE_KEY: _cache_record(self.fingerprint, key)})
        try:
            atomic_write_bytes(file, sign_safetensors(data))
        except (OSError, DataError) as err:
            logger.info("%s: cache not written (%s); it will be recomputed next time.", file, err)
            return False
        return True

    def _map(self, name: str) -> np.memmap:
        """The read-only memory map of array ``name`` (opened once; rows written later are visible in it)."""
        self._array_dim(name)
        if name not in self._maps:
            self._maps[name] = np.lib.format.open_memmap(self.path / f"{name}.npy", mode="r")
        return self._maps[name]

    def _verify(self, name: str, array: np.ndarray) -> None:
        """Check every finished shard of ``name`` not checked yet against its recorded SHA-256."""
        recorded = self.manifest.checksums.get(name) or []
        for shard, digest in enumerate(recorded):
            if digest is None or self.manifest.shards[shard] != "done" or (name, shard) in self._verified:
                continue
            start, stop = self.shard_bounds(shard)
            if sha256_hex(np.ascontiguousarray(array[start:stop])) != digest:
                raise DataError(
                    f"{self.path / f'{name}.npy'} rows {start}..{stop - 1} (shard {shard}) do not match their recorded "
                    f"SHA-256: the file is corrupted; restore the store from a copy, or delete {self.path} and "
                    "featurize again."
                )
            self._verified.add((name, shard))

    # ------------------------------------------------------------------------------------ reading

    def read(self, name: str = "features", *, allow_incomplete: bool = False) -> np.ndarray:
        """The array ``name`` as a read-only memmap of shape ``(n_rows, dim)``.

        Args:
            name: Array name.
            allow_incomplete: Return it even if shards are missing (their rows are zeros).

        Raises:
            DataError: If shards are missing and ``allow_incomplete`` is false, or a finished shard does not
                match its recorded SHA-256 (names the file and rows).
        """
        self.refresh()
        if not allow_incomplete and not self.is_complete:
            missing = [i for i, s in enumerate(self.manifest.shards) if s != "done"]
            raise DataError(
                f"{self.path} is incomplete: {len(missing)} of {self.n_shards} shards are missing "
                f"(e.g. {missing[:5]}). Run the featurization again to resume it."
            )
        self._maps.pop(name, None)  # reopen: another writer may have re-created the file since
        array = self._map(name)
        self._verify(name, array)
        return array

    def read_tensor(self, name: str = "features", *, rows: slice | None = None) -> Tensor:
        """Rows of a complete array as a float32 torch tensor (a copy)."""
        array = self.read(name)
        part = array[rows] if rows is not None else array
        return torch.from_numpy(np.array(part, dtype=np.float32))

    def close(self) -> None:
        """Drop the open memmaps (data is already flushed)."""
        self._maps.clear()


def read_raw_features(path: str | os.PathLike[str], dim: int, *, dtype: str = "float32") -> np.ndarray:
    """Read a headerless ``(n, dim)`` feature memmap such as D-TRAK's original code writes.

    D-TRAK (Zheng et al., 2024; ``grad.py`` of its repository) stores projected gradients with
    ``np.memmap(path, dtype=np.float32, mode="w+", shape=(n, k))``: raw values, no header. ``n`` is
    inferred from the file size.

    Args:
        path: The memmap file.
        dim: The projection dimension ``k`` it was written with.
        dtype: Its dtype (``"float32"`` in D-TRAK).

    Returns:
        A read-only ``(n, dim)`` memmap.

    Raises:
        DataError: If the file is missing or its size is not a multiple of ``dim`` values.
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file} does not exist; pass the path of a raw (n, {dim}) feature memmap.")
    if dim < 1:
        raise ConfigError(f"dim must be a positive integer; got {dim!r}.")
    item = np.dtype(dtype).itemsize
    size = file.stat().st_size
    if size == 0 or size % (dim * item):
        raise DataError(
            f"{file} has {size} bytes, not a whole number of rows of {dim} {dtype} values ({dim * item} bytes); "
            "check the projection dimension and dtype it was written with."
        )
    return np.memmap(file, dtype=np.dtype(dtype), mode="r", shape=(size // (dim * item), dim))
