"""Atomic file writes.

Every file genprov writes goes through these helpers: the data is written to a temporary file in the
destination folder, flushed and fsynced, then renamed over the destination. A crash or an error midway
leaves the previous file (if any) intact and no partial file behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from genprov.exceptions import DataError

__all__ = [
    "atomic_open",
    "atomic_save_npz",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "json_safe",
    "open_npz",
    "read_json",
]

# the process's umask, read once at import (os.umask can only be read by setting it): atomic files get the
# permissions a plain open() would give them, not mkstemp's owner-only 0600
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically.

    Args:
        path: Destination. Its parent folders are created.
        mode: ``"wb"`` or ``"w"`` (text, UTF-8).

    If the ``with`` block raises, the temporary file is removed and ``path`` is untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open mode must be 'wb' or 'w'; got {mode!r}.")
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        handle: IO[Any]
        with os.fdopen(fd, mode, encoding="utf-8" if mode == "w" else None) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename is None:  # a failed write/fsync names no file: name it
            raise OSError(err.errno, err.strerror, str(dest)) from err
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (NaN/inf are refused)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False, default=_json_default) + "\n")


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN / infinite floats replaced by ``None`` (JSON ``null``), numpy scalars made Python
    scalars and mapping keys made strings, recursively: what results files write for undefined metrics."""
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file (UTF-8)."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@contextlib.contextmanager
def open_npz(path: str | os.PathLike[str], what: str = "an .npz archive") -> Iterator[Any]:
    """Open an ``.npz`` archive without unpickling; a file of another format is a one-line :class:`DataError`.

    Args:
        path: The file.
        what: What the caller expected, for the message (e.g. ``"an LDS benchmark"``).

    Yields:
        The open ``numpy.lib.npyio.NpzFile`` (closed on exit).
    """
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile):  # pickles, truncated or foreign files
        raise DataError(
            f"{path} is not {what}: it is no .npz archive of arrays (a pickle, a truncated file or another "
            "format; genprov never unpickles). Save one with numpy.savez."
        ) from None
    if not isinstance(npz, np.lib.npyio.NpzFile):  # a single .npy array
        raise DataError(f"{path} holds a single .npy array, not {what} (an .npz archive of named arrays).")
    with npz:
        yield npz


def atomic_save_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    """Save ``arrays`` to an uncompressed ``.npz`` at ``path`` atomically (loads with ``allow_pickle=False``)."""
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(path, buffer.getvalue())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")
