"""JSON manifests of on-disk stores: what was computed, with which settings, and how far it got.

A store folder (see :mod:`genprov.storage.feature_store`) holds ``manifest.json`` next to its data files.
The manifest has three parts:

* ``spec``: everything that determines the numbers in the store (method config, seeds, projector type
  and dimension, dtype, model and dataset fingerprints, array layout). Reopening a store with a
  different spec raises :class:`~genprov.exceptions.StoreMismatchError` naming every field that differs
  (nested fields by dotted path, e.g. ``config.output_function``), so results are never mixed.
* ``shards``: the status of each block of rows; a shard is marked ``"done"`` only after its data was
  flushed to disk, so a crash at any point leaves a store that resumes correctly.
* ``info``: free-form facts that do not change the numbers (paths, timings, genprov version).
* ``checksums``: per array, the SHA-256 of each finished shard's rows as stored (``None`` while pending),
  verified when the store is read; stores written before checksums have none and are read unchecked.

Writes are atomic (temporary file, fsync, rename; :func:`genprov.utils.io.atomic_write_json`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from genprov.exceptions import DataError, StoreMismatchError
from genprov.utils.io import atomic_write_json, read_json

__all__ = [
    "MANIFEST_FILE",
    "MANIFEST_VERSION",
    "Manifest",
    "check_spec",
    "fingerprint_state",
    "read_manifest",
    "spec_differences",
    "write_manifest",
]

MANIFEST_FILE = "manifest.json"
#: Format version written into every manifest; a store with a newer version is refused.
MANIFEST_VERSION = 1
_MAX_SHOWN = 8


@dataclasses.dataclass
class Manifest:
    """The content of ``manifest.json``.

    Attributes:
        kind: What the store holds, e.g. ``"features"``.
        spec: Settings that determine the stored numbers (compared on reopen; JSON values only).
        shards: One status per shard, ``"pending"`` or ``"done"``.
        info: Free-form facts that do not change the numbers (not compared).
        version: Manifest format version.
        checksums: ``{array name: [hex SHA-256 of shard i's rows, or None]}`` (empty for older stores).
    """

    kind: str
    spec: dict[str, Any]
    shards: list[str]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    version: int = MANIFEST_VERSION
    checksums: dict[str, list[str | None]] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, as written to disk."""
        return {
            "version": self.version,
            "kind": self.kind,
            "spec": self.spec,
            "shards": self.shards,
            "info": self.info,
            "checksums": self.checksums,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "manifest") -> Manifest:
        """Parse :meth:`to_dict` output.

        Raises:
            DataError: On missing keys, wrong types, unknown shard states or a newer format version.
        """
        missing = [k for k in ("version", "kind", "spec", "shards") if k not in data]
        if missing:
            raise DataError(f"{where} is not a genprov store manifest: it lacks {missing}.")
        version = data["version"]
        if not isinstance(version, int) or version > MANIFEST_VERSION:
            raise DataError(
                f"{where} has format version {version!r}; this genprov reads versions <= {MANIFEST_VERSION}. "
                "Upgrade genprov or rebuild the store."
            )
        shards = data["shards"]
        if not isinstance(shards, list) or any(s not in ("pending", "done") for s in shards):
            raise DataError(f"{where}: 'shards' must be a list of 'pending' / 'done'; got {shards!r:.120}.")
        if not isinstance(data["spec"], dict) or not isinstance(data.get("info", {}), dict):
            raise DataError(f"{where}: 'spec' and 'info' must be JSON objects.")
        checksums = data.get("checksums", {})
        if not isinstance(checksums, dict) or any(
            not isinstance(v, list) or len(v) != len(shards) for v in checksums.values()
        ):
            raise DataError(f"{where}: 'checksums' must map array names to one entry per shard.")
        return cls(
            kind=str(data["kind"]),
            spec=dict(data["spec"]),
            shards=list(shards),
            info=dict(data.get("info", {})),
            version=version,
            checksums={str(k): list(v) for k, v in checksums.items()},
        )


def read_manifest(folder: str | Path) -> Manifest:
    """Read ``folder/manifest.json``.

    Raises:
        DataError: If the file is missing, not JSON, or not a manifest.
    """
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise DataError(f"{folder} is not a genprov store: {path} does not exist.")
    try:
        data = read_json(path)
    except ValueError as err:  # unreadable (OSError) is no corruption: reported as such
        raise DataError(f"Cannot read {path}: {err}. Delete the store folder to rebuild it.") from err
    if not isinstance(data, dict):
        raise DataError(f"{path} must hold a JSON object; got {type(data).__name__}.")
    return Manifest.from_dict(data, where=str(path))


def write_manifest(folder: str | Path, manifest: Manifest) -> None:
    """Write ``folder/manifest.json`` atomically."""
    atomic_write_json(Path(folder) / MANIFEST_FILE, manifest.to_dict())


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = list(value) if isinstance(value, tuple) else value


def spec_differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields that differ between two specs, by dotted path: ``{"config.seed": (saved, now)}``.

    Nested mappings are compared leaf by leaf; tuples equal lists (JSON has no tuples); a field present
    on one side only differs (its other side is ``None``).
    """
    flat_saved: dict[str, Any] = {}
    flat_now: dict[str, Any] = {}
    _flatten(dict(saved), "", flat_saved)
    _flatten(dict(now), "", flat_now)
    keys = sorted(set(flat_saved) | set(flat_now))
    return {k: (flat_saved.get(k), flat_now.get(k)) for k in keys if flat_saved.get(k) != flat_now.get(k)}


def check_spec(saved: Mapping[str, Any], now: Mapping[str, Any], *, where: str) -> None:
    """Raise :class:`StoreMismatchError` naming every field where ``now`` differs from ``saved``.

    Args:
        saved: The spec in the store's manifest.
        now: The spec asked for.
        where: The store's path, for the message.
    """
    diffs = spec_differences(saved, now)
    if not diffs:
        return
    shown = "; ".join(f"{k}: stored {a!r}, asked {b!r}" for k, (a, b) in list(diffs.items())[:_MAX_SHOWN])
    more = f" (and {len(diffs) - _MAX_SHOWN} more)" if len(diffs) > _MAX_SHOWN else ""
    raise StoreMismatchError(
        f"{where} was written with different settings: {shown}{more}. Use another store folder, delete "
        f"{where} to rebuild it, or ask for the stored settings."
    )


def fingerprint_state(source: nn.Module | Mapping[str, Tensor], length: int = 16) -> str:
    """Short hex SHA-256 of a module's parameters and buffers (names, dtypes, shapes and values).

    Args:
        source: A module (its ``state_dict``) or a ``{name: tensor}`` mapping.
        length: Number of hex digits to keep.

    Returns:
        A fingerprint that changes when any weight changes and is equal for equal weights.
    """
    named = source.state_dict() if isinstance(source, nn.Module) else source
    digest = hashlib.sha256()
    for name in sorted(named):
        tensor = named[name].detach().to("cpu")
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.to(torch.float32)
        array = np.ascontiguousarray(tensor.numpy())
        digest.update(f"{name}:{array.dtype.str}{array.shape};".encode())
        digest.update(array.data)
    return digest.hexdigest()[:length]
