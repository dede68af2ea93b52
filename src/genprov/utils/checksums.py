"""SHA-256 checksums recorded when genprov writes weights and features, and verified when it reads them.

* Safetensors files (checkpoints, training states, fitted attributors, attacks, defenses, encoders,
  mappers): :func:`sign_safetensors` records the SHA-256 of the file's tensor data in its own header
  metadata (key ``genprov_sha256``), so every weights file carries its checksum wherever it is copied;
  :func:`verify_safetensors` checks it on load. Files written before checksums existed have none and load
  unchecked.
* Feature stores record one SHA-256 per shard and array in their manifest (see
  ``genprov.storage.feature_store``), computed with :func:`sha256_hex`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from genprov.exceptions import CheckpointError

__all__ = ["SAFETENSORS_SHA256_KEY", "file_sha256", "sha256_hex", "sign_safetensors", "verify_safetensors"]

#: Metadata key of the tensor-data checksum in genprov's safetensors files.
SAFETENSORS_SHA256_KEY = "genprov_sha256"
_HEADER_ALIGN = 8


def file_sha256(path: str | os.PathLike[str], digest: Any = None) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks; with ``digest`` (a ``hashlib`` object), the bytes
    are fed into it instead (to hash several files as one) and its hex digest so far is returned."""
    h = digest if digest is not None else hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return str(h.hexdigest())


def sha256_hex(data: Any) -> str:
    """Hex SHA-256 of a bytes-like object (bytes, memoryview, C-contiguous numpy array)."""
    return hashlib.sha256(memoryview(data).cast("B")).hexdigest()


def _split(data: bytes) -> tuple[dict[str, Any], memoryview] | None:
    """``(header, tensor data)`` of a safetensors file, or ``None`` when the header cannot be parsed."""
    if len(data) < 8:
        return None
    size = int.from_bytes(data[:8], "little")
    if size <= 0 or 8 + size > len(data):
        return None
    try:
        header = json.loads(data[8 : 8 + size])
    except ValueError:
        return None
    if not isinstance(header, dict):
        return None
    return header, memoryview(data)[8 + size :]


def sign_safetensors(data: bytes) -> bytes:
    """``data`` (a serialised safetensors file) with the SHA-256 of its tensor data added to its metadata.

    The tensor data is unchanged; the header is re-encoded (metadata keys sorted, the checksum last, so the bytes
    do not depend on the process that wrote them) and padded to 8 bytes as safetensors does.
    """
    parts = _split(data)
    if parts is None:
        raise ValueError("sign_safetensors needs a serialised safetensors file (safetensors.torch.save output).")
    header, payload = parts
    # the writer's metadata keys sorted (safetensors writes them in hash-map order, which differs between
    # processes), the checksum last: the same tensors and metadata always give the same bytes
    metadata = dict(sorted((header.get("__metadata__") or {}).items()))
    metadata.pop(SAFETENSORS_SHA256_KEY, None)
    metadata[SAFETENSORS_SHA256_KEY] = sha256_hex(payload)
    header["__metadata__"] = metadata
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-(8 + len(encoded)) % _HEADER_ALIGN)
    return len(encoded).to_bytes(8, "little") + encoded + payload.tobytes()


def verify_safetensors(data: bytes, path: str | os.PathLike[str]) -> None:
    """Check the tensor data of a safetensors file against the SHA-256 recorded in its header.

    A file without a recorded checksum (written before genprov recorded them, or by another program)
    passes; an unparsable header is left to the safetensors reader to report.

    Raises:
        CheckpointError: The recorded checksum differs from the data's (names the file).
    """
    parts = _split(data)
    if parts is None:
        return
    header, payload = parts
    expected = (header.get("__metadata__") or {}).get(SAFETENSORS_SHA256_KEY)
    if expected is not None and sha256_hex(payload) != expected:
        raise CheckpointError(
            f"{Path(path)} does not match its recorded SHA-256: the file is corrupted; restore it from a copy or "
            "re-create it (retrain or refit)."
        )
