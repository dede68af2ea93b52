"""The one on-disk format of every fitted object, and its one reader and writer.

Model attributors, keyed families, data attributors (TRAK, D-TRAK, similarity), inversion attacks and
defenses are saved with ``save_pretrained(folder)`` and reopened with ``Class.from_pretrained(folder)``.
An artefact is a folder::

    config.json        {"format": "genprov-artifact", "format_version": 2, "kind": "model-attributor",
                        "method": "flipad", "class": "FinalLayerInversionAttributor", "genprov_version": "...",
                        "config": {...the method's Config...},
                        "wraps": {"generator": {"checkpoint": "../gan", "module": "generator",
                                                "sha256": "...", "fingerprint": "..."}},
                        "state": {...JSON-able fitted state...}, "tensors": "state.safetensors" | null}
    state.safetensors  fitted tensors, signed with their SHA-256 (:func:`save_tensors`); attacks and
                       defenses name it model.safetensors, as before

``wraps`` names the modules the object studies (a generator, a classifier, a diffusion model): the
checkpoint folder they were loaded from, relative to the artefact, the SHA-256 of its weights file and
the fingerprint of the weights. ``from_pretrained`` reopens that checkpoint itself; a module passed to it
overrides the record and must have the recorded fingerprint.

Artefacts written before this format (``format`` ``genprov-model-attributor-v1``,
``genprov-inversion-attack-v2``, ``genprov-explanation-defense-v2``) are read through the upgrade function
their family passes to :func:`read_artifact`; layouts without a ``config.json`` (a keyed family's
``manifest.json``, a similarity index's ``similarity.json``, a SimCLR encoder or feature mapper saved as one
safetensors file) through the family's *legacy layout* reader. Any other format or version is refused
with a message naming it and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from genprov.config import Config
from genprov.exceptions import CheckpointError
from genprov.models.checkpoints import (
    WEIGHTS_FILE,
    checkpoint_source,
    genprov_version,
    load_checkpoint,
    load_tensors,
    save_tensors,
)
from genprov.utils.artifacts import ARTIFACT_FORMAT, artifact_label, check_output_folder, refuse_pickle
from genprov.utils.checksums import sha256_hex
from genprov.utils.io import atomic_write_json, read_json

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "ARTIFACT_FORMAT",
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "STATE_FILE",
    "ArtifactPayload",
    "ArtifactRecord",
    "LegacyLayout",
    "Pretrained",
    "module_fingerprint",
    "read_artifact",
    "write_artifact",
]

CONFIG_FILE = "config.json"
STATE_FILE = "state.safetensors"
#: Version of the layout above (1: the per-family formats before it).
FORMAT_VERSION = 2

#: ``old config.json -> config.json of this format`` for a family's legacy format strings.
Upgrade = Callable[[dict[str, Any]], dict[str, Any]]
#: ``path -> (config.json of this format, tensors)`` of a family's layout without a ``config.json``, or
#: ``None`` when ``path`` does not hold that layout either.
LegacyLayout = Callable[[Path], "tuple[dict[str, Any], dict[str, Tensor]] | None"]


def module_fingerprint(module: nn.Module | None) -> str | None:
    """Hex digest of a module's parameters and buffers (names, shapes, values), or ``None`` for no module."""
    if module is None:
        return None
    h = hashlib.blake2b(digest_size=12)
    for name, tensor in sorted(module.state_dict().items()):
        arr = np.ascontiguousarray(tensor.detach().to("cpu").to(torch.float32).numpy())
        h.update(f"{name}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class ArtifactPayload:
    """What a fitted object hands to :func:`write_artifact`.

    Attributes:
        config: The method's config.
        state: JSON-able fitted state.
        tensors: Fitted tensors (may be empty).
        wraps: ``{role: module}`` the object studies (``None`` entries are skipped).
    """

    config: Config
    state: dict[str, Any] = dataclasses.field(default_factory=dict)
    tensors: Mapping[str, Tensor] = dataclasses.field(default_factory=dict)
    wraps: Mapping[str, nn.Module | None] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ArtifactRecord:
    """A ``config.json`` read back by :func:`read_artifact` (upgraded when it had a legacy format).

    Attributes:
        folder: The artefact folder.
        kind: The family, e.g. ``"model-attributor"``.
        method: The registry name, e.g. ``"flipad"``.
        config: The method's config as a dict.
        state: The JSON fitted state.
        wraps: ``{role: {"checkpoint", "module", "sha256", "fingerprint"}}`` (entries may be ``None``).
        format_version: Version found on disk (1 for legacy formats).
    """

    folder: Path
    kind: str
    method: str
    config: dict[str, Any]
    state: dict[str, Any]
    wraps: dict[str, dict[str, Any]]
    format_version: int

    def wrapped(self, role: str, given: nn.Module | None, *, device: str | torch.device = "cpu") -> nn.Module | None:
        """The module recorded under ``role``: ``given`` (checked against the fingerprint) or reopened.

        Returns:
            The module, or ``None`` when nothing is recorded under ``role`` and nothing is given.

        Raises:
            CheckpointError: ``given`` has other weights than recorded; the recorded checkpoint is missing,
                changed (another SHA-256) or not recorded at all (then pass the module).
        """
        ref = self.wraps.get(role) or {}
        expected = ref.get("fingerprint")
        if given is not None:
            if expected is not None and module_fingerprint(given) != expected:
                raise CheckpointError(
                    f"The {role} passed to from_pretrained differs from the one the {self.method} artefact at "
                    f"{self.folder} was fitted for (its weights have another fingerprint). Pass the same {role}, "
                    "or fit again."
                )
            return given
        if not ref:
            return None
        if not ref.get("checkpoint"):
            raise CheckpointError(
                f"The {self.method} artefact at {self.folder} needs the {role} it was fitted for and records no "
                f"checkpoint of it (it was not loaded from one); pass it: from_pretrained(folder, {role})."
            )
        path = (self.folder / str(ref["checkpoint"])).resolve()
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(
                f"The {self.method} artefact at {self.folder} wraps the {role} checkpoint {path}, which is missing; "
                f"restore it there or pass the {role}: from_pretrained(folder, {role})."
            )
        if ref.get("sha256") and sha256_hex(weights.read_bytes()) != ref["sha256"]:
            raise CheckpointError(
                f"{weights} changed since the {self.method} artefact at {self.folder} was saved (another SHA-256); "
                f"restore the original {role} checkpoint, or fit again."
            )
        modules = load_checkpoint(path, device=device).modules
        name = str(ref.get("module", role))
        if name not in modules:
            raise CheckpointError(f"Checkpoint {path} holds no {name!r} module (it holds {sorted(modules)}).")
        return modules[name]


def _module_ref(module: nn.Module, folder: Path) -> dict[str, Any]:
    ref: dict[str, Any] = {
        "checkpoint": None,
        "module": None,
        "sha256": None,
        "fingerprint": module_fingerprint(module),
    }
    source = checkpoint_source(module)
    if source is not None:
        checkpoint, name = source
        weights = checkpoint / WEIGHTS_FILE
        if weights.is_file():
            ref.update(
                checkpoint=os.path.relpath(checkpoint, folder.resolve()),
                module=name,
                sha256=sha256_hex(weights.read_bytes()),
            )
    return ref


def write_artifact(
    folder: str | Path,
    *,
    kind: str,
    method: str,
    class_name: str,
    payload: ArtifactPayload,
    tensors_file: str = STATE_FILE,
    accept: Collection[str] = (),
) -> Path:
    """Write an artefact folder (``config.json`` + ``tensors_file`` when there are tensors), atomically.

    ``accept`` names further artefact kinds the folder may hold already (a similarity index's record is
    written into the feature index it describes).

    Raises:
        ConfigError: ``folder`` is a file or holds another artefact than one of this kind and method (or
            of a kind in ``accept``).
    """
    folder = Path(folder)
    check_output_folder(folder, accept={artifact_label(kind, method), *accept})
    folder.mkdir(parents=True, exist_ok=True)
    if payload.tensors:
        save_tensors(folder / tensors_file, payload.tensors, metadata={"kind": kind, "method": method})
    atomic_write_json(
        folder / CONFIG_FILE,
        {
            "format": ARTIFACT_FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "method": method,
            "class": class_name,
            "genprov_version": genprov_version(),
            "config": payload.config.to_dict(),
            "wraps": {role: _module_ref(m, folder) for role, m in payload.wraps.items() if m is not None},
            "state": payload.state,
            "tensors": tensors_file if payload.tensors else None,
        },
    )
    return folder


def read_artifact(
    folder: str | Path,
    kind: str,
    *,
    legacy: Mapping[str, Upgrade] | None = None,
    legacy_layout: LegacyLayout | None = None,
) -> tuple[ArtifactRecord, dict[str, Tensor]]:
    """Read an artefact of family ``kind``: its record and its tensors (checksum verified).

    Args:
        folder: The artefact folder.
        kind: The family expected, e.g. ``"defense"``.
        legacy: ``{old format string: upgrade}`` of the family's formats from before this one.
        legacy_layout: Reader of the family's layout without a ``config.json`` (used when ``folder`` has none).

    Raises:
        CheckpointError: Missing or unreadable files, another family, or a format or version this genprov
            does not read (the message names it and the fix).
    """
    folder = Path(folder)
    refuse_pickle(folder, f"a {kind} folder")
    path = folder / CONFIG_FILE
    old = legacy_layout(folder) if legacy_layout is not None and not path.is_file() else None
    if old is not None:
        raw, tensors = old
        return _record(folder, kind, {**raw, "format_version": 1}, path), tensors
    if not path.is_file():
        raise CheckpointError(
            f"No saved {kind} at {folder}: {path} is missing. Fit one and save it with .save_pretrained(folder)."
        )
    try:
        raw = read_json(path)
    except ValueError as err:  # unreadable (OSError) is no corruption: reported as such
        raise CheckpointError(f"Cannot read {path}: {err}. Re-create it by fitting again.") from err
    fmt = raw.get("format") if isinstance(raw, dict) else None
    if fmt != ARTIFACT_FORMAT and legacy and fmt in legacy:
        raw = {**legacy[str(fmt)](raw), "format_version": 1}
    elif fmt != ARTIFACT_FORMAT:
        raise CheckpointError(
            f"{path} is not a genprov {kind} artefact: it has format {fmt!r}, and this genprov reads "
            f"{ARTIFACT_FORMAT!r} version {FORMAT_VERSION}"
            + (f" or {', '.join(map(repr, legacy))}" if legacy else "")
            + ". Re-fit and save it with this genprov's save_pretrained."
        )
    elif raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has artefact format_version {raw.get('format_version')!r}; this genprov reads version "
            f"{FORMAT_VERSION}. Open it with the genprov that wrote it (genprov_version "
            f"{raw.get('genprov_version', 'unknown')!r}) or re-fit and save it again."
        )
    record = _record(folder, kind, raw, path)
    tensors = load_tensors(folder / str(raw["tensors"])) if raw.get("tensors") else {}
    return record, tensors


def _record(folder: Path, kind: str, raw: dict[str, Any], path: Path) -> ArtifactRecord:
    """The record of a ``config.json`` (of this format, or upgraded) after checking its family."""
    if raw.get("kind") != kind:
        raise CheckpointError(f"{folder} holds a {raw.get('kind')!r} artefact, not a {kind}.")
    try:
        return ArtifactRecord(
            folder=folder,
            kind=kind,
            method=str(raw["method"]),
            config=dict(raw["config"]),
            state=dict(raw.get("state") or {}),
            wraps={str(k): dict(v) for k, v in dict(raw.get("wraps") or {}).items() if v},
            format_version=int(raw["format_version"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path} lacks its entries ({err!r}); re-fit and save it again.") from err


class Pretrained(ABC):
    """``save_pretrained`` / ``from_pretrained`` for a family of fitted objects.

    A family base sets :attr:`artifact_kind` (and :attr:`legacy_formats` for its older formats) and
    implements :meth:`_payload` (what to save) and :meth:`_from_record` (rebuild an object of the class
    that was saved, a subclass of ``cls``); a family whose older layout had no ``config.json`` sets
    :attr:`legacy_layout`.
    """

    artifact_kind: ClassVar[str] = ""
    legacy_formats: ClassVar[Mapping[str, Upgrade]] = {}
    #: reader of the family's layout from before this format that has no ``config.json`` (see :func:`read_artifact`)
    legacy_layout: ClassVar[LegacyLayout | None] = None
    #: name of the tensors file (the families that named it ``model.safetensors`` before keep that name)
    tensors_file: ClassVar[str] = STATE_FILE

    @abstractmethod
    def _payload(self) -> ArtifactPayload:
        """Config, fitted state and wrapped modules (raises ``NotFittedError`` before fitting)."""

    @classmethod
    @abstractmethod
    def _from_record(cls, record: ArtifactRecord, tensors: dict[str, Tensor], wrapped: Any) -> Self:
        """Rebuild the saved object; ``wrapped`` is the module / explainer passed to :meth:`from_pretrained`."""

    def _method_name(self) -> str:
        return str(getattr(self, "name", "") or getattr(self, "method", ""))

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write this fitted object as an artefact folder (see :mod:`genprov.models.artifact`); returns it.

        Raises:
            NotFittedError: Before fitting.
            ConfigError: ``folder`` is a file or holds another artefact.
        """
        return write_artifact(
            folder,
            kind=self.artifact_kind,
            method=self._method_name(),
            class_name=type(self).__name__,
            payload=self._payload(),
            tensors_file=self.tensors_file,
        )

    @classmethod
    def from_pretrained(cls, folder: str | Path, wrapped: Any = None) -> Self:
        """Reopen an object saved by :meth:`save_pretrained` (or in its family's older format).

        Args:
            folder: The artefact folder.
            wrapped: The module (generator, model) or explainer it wraps, overriding the recorded checkpoint
                (checked against the recorded fingerprint); needed only when none is recorded.

        Raises:
            CheckpointError: See :func:`read_artifact` and :meth:`ArtifactRecord.wrapped`; or the folder holds
                another class than ``cls``.
        """
        record, tensors = read_artifact(
            folder, cls.artifact_kind, legacy=cls.legacy_formats, legacy_layout=cls.legacy_layout
        )
        return cls._from_record(record, tensors, wrapped)
