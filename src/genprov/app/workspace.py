"""A workspace: the folder of everything ``genprov serve`` answers with.

Layout::

    WORKSPACE/workspace.json            manifest: one entry per registered item (name, kind, info, file hashes)
    WORKSPACE/entries/<name>/...        a self-contained copy of the item's files
    WORKSPACE/results/<id>/             answers the service gave (result.json + the query image)
    WORKSPACE/examples/*.png            example images the page offers (optional)

Entry kinds (:data:`ENTRY_KINDS`):

* ``flipad``: a fitted single-model attributor (``genprov flipad fit``) and the generator it is for (a GAN
  checkpoint, or the text-to-image pipeline folder whose VAE it was fitted on);
* ``keyed``: a keyed model family (``genprov keyed create``);
* ``trak``: a TRAK / D-TRAK feature store (``genprov trak featurize``), its DDPM (or its text-to-image pipeline
  folder, LoRA folder and training captions) and its training images;
* ``similarity``: a feature-similarity index (``genprov similarity index``) and its training images.

Adding copies the files into the workspace (into a temporary folder first, renamed when complete, so a
failed add leaves nothing behind) and records the SHA-256 of every file. Opening a workspace refuses
entries whose files are missing, changed, or unreadable as their kind, naming the entry and the file;
the service never reads files outside the workspace.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genprov.exceptions import CheckpointError, ConfigError, DataError
from genprov.utils.artifacts import check_output_folder
from genprov.utils.checksums import file_sha256
from genprov.utils.io import atomic_save_npz, atomic_write_json, open_npz, read_json

__all__ = [
    "ENTRY_KINDS",
    "MANIFEST",
    "Entry",
    "Workspace",
    "check_name",
    "check_outside",
]

MANIFEST = "workspace.json"
_FORMAT = "genprov-workspace"
_VERSION = 1
#: What a workspace can hold.
ENTRY_KINDS = ("flipad", "keyed", "trak", "similarity")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TRAIN_IMAGES = "train.npz"
#: The training images' captions of a text-to-image entry (a JSON list, one per image of ``train.npz``).
TRAIN_CAPTIONS = "captions.json"


def check_name(name: str) -> str:
    """An entry or result name: letters, digits, ``_ . -``, at most 64 characters, no path parts."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ConfigError(
            f"Invalid entry name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit."
        )
    return name


def check_outside(folder: str | Path, source: str | Path, name: str) -> None:
    """Refuse to copy ``source`` into the workspace ``folder`` when the workspace lies inside it.

    Copying a folder into a place inside itself never ends (every copy holds the copy), so the workspace
    must live outside every item it holds.

    Raises:
        ConfigError: Naming both folders and the fix.
    """
    workspace, item = Path(folder).resolve(), Path(source).resolve()
    if workspace == item or workspace.is_relative_to(item):
        raise ConfigError(
            f"Cannot add {name!r}: the workspace {folder} is inside {source}, which would be copied into itself. "
            "Put the workspace outside the item, e.g. next to it."
        )


def _copy_part(source: Path, target: Path) -> None:
    """Copy a file or folder (without training state) to ``target``; a failed write raises the ``OSError`` of
    the first file that failed, naming the target (``shutil.copytree`` would only gather their texts)."""
    failed: list[OSError] = []

    def copy(src: str, dst: str) -> object:
        try:
            return shutil.copy2(src, dst)
        except OSError as err:
            failed.append(OSError(err.errno, err.strerror, dst))
            raise

    try:
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("state", "*.tmp"), copy_function=copy)
        else:
            copy(str(source), str(target))
    except shutil.Error:
        if failed:
            raise failed[0] from None
        raise


def _file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Entry:
    """One registered item.

    Attributes:
        name: Its name in the workspace (also its folder under ``entries/``).
        kind: One of :data:`ENTRY_KINDS`.
        info: Kind-specific facts the service needs before loading (image size, channels, method, ...).
        files: SHA-256 of every file of the entry, by path relative to the entry folder.
    """

    name: str
    kind: str
    info: dict[str, Any]
    files: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """The manifest record."""
        return dataclasses.asdict(self)


class Workspace:
    """A workspace folder (see the module docstring). Open with :meth:`open`, create with :meth:`create`."""

    def __init__(self, folder: Path, entries: dict[str, Entry]) -> None:
        self.folder = folder
        self._entries = entries

    # ------------------------------------------------------------------------------- open / create

    @classmethod
    def create(cls, folder: str | Path, *, exist_ok: bool = True) -> Workspace:
        """Create an empty workspace (or open an existing one when ``exist_ok``).

        Raises:
            ConfigError: ``folder`` is a file, holds another artefact (a checkpoint, a store, ...) or lies
                inside another workspace.
        """
        folder = Path(folder)
        if (folder / MANIFEST).is_file():
            if not exist_ok:
                raise ConfigError(f"{folder} is already a workspace.")
            return cls.open(folder)
        check_output_folder(folder, option="--workspace")
        for parent in folder.resolve().parents:
            if (parent / MANIFEST).is_file():
                raise ConfigError(
                    f"{folder} lies inside the workspace {parent}; put the new workspace outside it (a workspace's "
                    "folders belong to its entries)."
                )
        folder.mkdir(parents=True, exist_ok=True)
        ws = cls(folder, {})
        ws._write()
        return ws

    @classmethod
    def open(cls, folder: str | Path, *, verify: bool = True, strict: bool = True) -> Workspace:
        """Open a workspace.

        Args:
            folder: The workspace folder.
            verify: Check every entry's files against their recorded SHA-256 (else only that they exist).
            strict: Refuse entries with missing or changed files; ``False`` opens the workspace anyway (for
                reporting them with :meth:`all_problems`).

        Raises:
            CheckpointError: Not a workspace, an unreadable manifest, or (``strict``) an entry with missing
                or changed files (the message names the entry and the file and says how to fix it).
        """
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise CheckpointError(
                f"{folder} is not a genprov workspace ({MANIFEST} is missing); create one with "
                "'genprov workspace add ...' or 'genprov demo'."
            )
        try:
            data = read_json(path)
        except (ValueError, UnicodeDecodeError) as err:  # edited by hand, or overwritten by another program
            raise CheckpointError(
                f"Cannot read {path}: {err}. The workspace manifest is corrupted; restore it from a copy, or "
                "re-create the workspace with 'genprov workspace add ...'."
            ) from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT or data.get("version") != _VERSION:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise CheckpointError(f"{path} is not a genprov workspace manifest (format {found!r}).")
        entries: dict[str, Entry] = {}
        for record in data.get("entries", []):
            try:
                entry = Entry(name=record["name"], kind=record["kind"], info=record["info"], files=record["files"])
                check_name(entry.name)  # a crafted name must never lead outside the workspace
            except (KeyError, TypeError, ConfigError) as err:
                raise CheckpointError(f"{path} has a malformed entry {record!r}: {err}.") from None
            entries[entry.name] = entry
        ws = cls(folder, entries)
        problems = ws.all_problems(verify=verify) if strict else []
        if problems:
            raise CheckpointError(
                f"The workspace {folder} has entries whose files are missing or changed: {'; '.join(problems)}. "
                "Re-add them ('genprov workspace add ...') or remove them ('genprov workspace remove NAME')."
            )
        return ws

    def _write(self) -> None:
        atomic_write_json(
            self.folder / MANIFEST,
            {"format": _FORMAT, "version": _VERSION, "entries": [e.to_dict() for e in self._entries.values()]},
        )

    # --------------------------------------------------------------------------------------- entries

    @property
    def entries(self) -> list[Entry]:
        """Registered entries, in the order they were added."""
        return list(self._entries.values())

    def entry(self, name: str) -> Entry:
        """The entry ``name``; an unknown name raises :class:`ConfigError` naming the known ones."""
        if name not in self._entries:
            known = ", ".join(self._entries) or "none"
            raise ConfigError(
                f"The workspace {self.folder} has no entry named {name!r} (registered: {known}); "
                f"'genprov workspace list --workspace {self.folder}' lists them."
            )
        return self._entries[name]

    def entry_dir(self, name: str) -> Path:
        """The folder of entry ``name``."""
        return self.folder / "entries" / check_name(name)

    def problems(self, name: str, *, verify: bool = True) -> list[str]:
        """What is wrong with entry ``name``'s files (empty when nothing is)."""
        entry = self.entry(name)
        base = self.entry_dir(name)
        out = []
        if entry.kind not in ENTRY_KINDS:
            out.append(f"{name}: unknown kind {entry.kind!r} (this genprov knows {', '.join(ENTRY_KINDS)})")
        for rel, digest in entry.files.items():
            path = base / rel
            if not path.is_file():
                out.append(f"{name}: file {rel} is missing")
            elif verify and file_sha256(path) != digest:
                out.append(f"{name}: file {rel} changed since it was added (SHA-256 mismatch)")
        return out

    def all_problems(self, *, verify: bool = True) -> list[str]:
        """What is wrong with every entry's files (see :meth:`problems`), entry by entry."""
        return [p for name in self._entries for p in self.problems(name, verify=verify)]

    def remove(self, name: str) -> None:
        """Unregister entry ``name`` and delete its copy."""
        self.entry(name)
        del self._entries[name]
        self._write()
        shutil.rmtree(self.entry_dir(name), ignore_errors=True)

    def add(
        self, name: str, kind: str, parts: dict[str, Path], info: dict[str, Any], *, replace: bool = False
    ) -> Entry:
        """Register an entry by copying ``parts`` (sub-folder or file name -> source) into the workspace.

        Args:
            name: Entry name (see :func:`check_name`).
            kind: One of :data:`ENTRY_KINDS`.
            parts: What to copy: ``{"detector": Path(...), "generator": Path(...)}``; folders are copied whole.
            info: Kind-specific facts (stored in the manifest).
            replace: Overwrite an existing entry of that name (else it is an error).

        Returns:
            The new entry.
        """
        check_name(name)
        if kind not in ENTRY_KINDS:
            raise ConfigError(f"Unknown entry kind {kind!r}; choose one of {', '.join(ENTRY_KINDS)}.")
        if name in self._entries and not replace:
            raise ConfigError(
                f"The workspace {self.folder} already has an entry named {name!r}; pick another --name, or remove "
                f"it first ('genprov workspace remove {name} --workspace {self.folder}')."
            )
        for part, source in parts.items():
            check_name(part)
            if not Path(source).exists():
                raise DataError(f"Cannot add {name!r}: {source} does not exist.")
            check_outside(self.folder, Path(source), name)
        target = self.entry_dir(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            for part, source in parts.items():
                _copy_part(Path(source), staging / part)
            files = _file_hashes(staging)
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        entry = Entry(name=name, kind=kind, info=info, files=files)
        self._entries[name] = entry
        self._write()
        return entry

    # ------------------------------------------------------------------------------ training images

    @staticmethod
    def save_train_images(images: torch.Tensor, path: Path) -> Path:
        """Write training images (n, C, H, W) float32 in [-1, 1] exactly (the stores fingerprint them)."""
        atomic_save_npz(path, {"images": images.detach().cpu().numpy().astype(np.float32)})
        return path

    @staticmethod
    def save_train_captions(captions: Sequence[str], path: Path) -> Path:
        """Write the training images' captions (a JSON list in the images' order)."""
        atomic_write_json(path, list(captions))
        return path

    def train_captions(self, name: str) -> list[str]:
        """The training captions saved with entry ``name`` (a text-to-image entry)."""
        path = self.entry_dir(name) / TRAIN_CAPTIONS
        if not path.is_file():
            raise CheckpointError(f"Entry {name!r} has no training captions ({TRAIN_CAPTIONS}); re-add it.")
        captions = read_json(path)
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise CheckpointError(f"{path} is not a JSON list of captions; re-add entry {name!r}.")
        return captions

    def train_images(self, name: str) -> torch.Tensor:
        """The training images saved with entry ``name``."""
        path = self.entry_dir(name) / TRAIN_IMAGES
        if not path.is_file():
            raise CheckpointError(f"Entry {name!r} has no training images ({TRAIN_IMAGES}); re-add it.")
        with open_npz(path, f"the training images of entry {name!r}") as data:
            return torch.from_numpy(np.ascontiguousarray(data["images"]))

    # ----------------------------------------------------------------------------------- results / examples

    @property
    def results_dir(self) -> Path:
        """Where the service keeps its answers."""
        return self.folder / "results"

    def examples(self) -> list[Path]:
        """Example images offered on the page (``examples/*.png``), sorted by name."""
        folder = self.folder / "examples"
        return sorted(p for p in folder.glob("*.png") if p.is_file() and _NAME.match(p.stem)) if folder.is_dir() else []

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self._entries)
