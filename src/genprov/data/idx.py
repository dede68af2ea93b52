"""IDX files (the MNIST format) and files stored as numbered byte parts.

An IDX file is a big-endian header -- two zero bytes, a type code, the number of dimensions, then one
uint32 per dimension -- followed by the values. MNIST images have magic number 2051 (uint8, 3 dims) and
labels 2049 (uint8, 1 dim). Files may be gzip-compressed.

Large files are sometimes shipped as byte parts ``NAME.part00``, ``NAME.part01``, ... that concatenate to
``NAME``. :func:`read_bytes` joins them in memory (nothing is written to disk).
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from genprov.exceptions import DataError

__all__ = ["IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC", "file_parts", "read_bytes", "read_idx"]

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_PART = re.compile(r"\.part(\d+)$")


def file_parts(path: str | Path) -> list[Path] | None:
    """The files that hold ``path``'s bytes, in order, or ``None`` when neither it nor its parts exist.

    Args:
        path: The logical file, e.g. ``mnist/train-images-idx3-ubyte.gz``.

    Returns:
        ``[path]`` when the file exists, else its parts ``path.part00``, ``path.part01``, ... sorted by
        number, else ``None``.

    Raises:
        DataError: If the part numbers have a gap (a part is missing).
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.parent.is_dir():
        return None
    numbered = []
    for candidate in path.parent.glob(f"{path.name}.part*"):
        match = _PART.search(candidate.name)
        if match and candidate.name[: match.start()] == path.name and candidate.is_file():
            numbered.append((int(match.group(1)), candidate))
    if not numbered:
        return None
    numbered.sort()
    numbers = [k for k, _ in numbered]
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))) or numbers[0] not in (0, 1):
        raise DataError(
            f"The byte parts of {path} are not numbered consecutively (found parts {numbers}); a part is "
            "missing. Restore the missing part or replace the parts with the whole file."
        )
    return [p for _, p in numbered]


def read_bytes(path: str | Path) -> bytes:
    """All bytes of ``path``, joining ``path.partNN`` byte parts in order when the file itself is absent.

    Raises:
        DataError: If neither the file nor its parts exist.
    """
    parts = file_parts(path)
    if parts is None:
        raise DataError(f"{path} does not exist (nor do byte parts {Path(path).name}.part00, ...).")
    return b"".join(p.read_bytes() for p in parts)


def read_idx(path: str | Path, *, magic: int | None = None) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed, optionally in byte parts).

    Args:
        path: The file, e.g. ``train-images-idx3-ubyte.gz``.
        magic: Required magic number (2051 for images, 2049 for labels); ``None`` accepts any valid one.

    Returns:
        The array with the shape stored in the header (e.g. (60000, 28, 28) uint8 for MNIST train images),
        in native byte order, without copying the data when it is uint8.

    Raises:
        DataError: Naming the file if it is missing, not gzip or not IDX, has the wrong magic number, or is
            truncated / longer than its header says.
    """
    raw = read_bytes(path)
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as err:
            raise DataError(
                f"{path} is a damaged gzip file ({err}); it is probably truncated. Download it again."
            ) from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(f"{path} is not an IDX file (its header is {raw[:4].hex() or 'empty'}); check the file name.")
    found = int.from_bytes(raw[:4], "big")
    if magic is not None and found != magic:
        raise DataError(
            f"{path} has IDX magic number {found}; expected {magic} "
            f"({'images' if magic == IDX_IMAGES_MAGIC else 'labels' if magic == IDX_LABELS_MAGIC else 'IDX'}). "
            "Are the image and label files swapped?"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its IDX header ({len(raw)} bytes).")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        kind = "truncated" if got < expected else "longer than its header says"
        raise DataError(
            f"{path} is {kind}: its header gives shape {tuple(dims)} ({expected} bytes of data) but it holds "
            f"{got} bytes. Download the file again."
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return array if dtype.itemsize == 1 else array.astype(dtype.newbyteorder("="))
