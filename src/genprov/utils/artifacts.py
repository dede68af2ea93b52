"""What an output folder already holds, and the checks every writer makes before it writes anything.

genprov's artefacts are folders recognised by their marker files: a checkpoint's ``config.json``
(``kind``), a fitted object's ``config.json`` (``format`` ``genprov-artifact``, ``kind`` and ``method``:
attributors, keyed families, similarity indexes, extractors, mappers, attacks, defenses), a feature
store's ``manifest.json``, the layouts before that format (a keyed family's ``manifest.json``, a
similarity index's ``similarity.json``), a feature index's ``index.json``, a diffusers pipeline's
``model_index.json``, a workspace's
``workspace.json``, samples, a command's ``results.json``. :func:`identify_artifact` names what a folder holds; :func:`check_output_folder`
refuses, before anything is written, a path that is a file or a folder holding an artefact the writer
may not replace, naming what is there. Writers that resume their own runs accept their own kind and then
check that it is the same run.

:func:`refuse_pickle` explains that a ``.pt`` / ``.pth`` / ``.ckpt`` / ``.bin`` file is a pickle genprov
never reads, and :func:`ensure_free_space` refuses to start a large write that the disk cannot hold.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

from genprov.exceptions import CheckpointError, ConfigError, DataError

__all__ = [
    "ARTIFACT_FORMAT",
    "INCOMPLETE_CHECKPOINT",
    "INCOMPLETE_INDEX",
    "INCOMPLETE_STORE",
    "PICKLE_SUFFIXES",
    "PIPELINE_KIND",
    "Artifact",
    "artifact_label",
    "check_output_file",
    "check_output_folder",
    "ensure_free_space",
    "format_bytes",
    "identify_artifact",
    "is_pickle_file",
    "refuse_pickle",
    "storage_error",
]

#: Kind of a folder with checkpoint files but no ``config.json`` (a training run killed while saving).
INCOMPLETE_CHECKPOINT = "incomplete checkpoint"
#: Kind of a folder with a store's data files but no ``manifest.json`` (featurizing killed while creating).
INCOMPLETE_STORE = "incomplete feature store"
#: Kind of a folder with a similarity index's parts but no ``index.json`` (an index build killed early).
INCOMPLETE_INDEX = "incomplete similarity index"
#: Kind of a diffusers pipeline folder (``model_index.json``: a text-to-image pipeline, genprov's or Stable Diffusion's).
PIPELINE_KIND = "text-to-image pipeline"
#: ``format`` of a fitted object's ``config.json`` (:mod:`genprov.models.artifact`).
ARTIFACT_FORMAT = "genprov-artifact"
# what a fitted object of each artefact kind is called in messages (and in check_output_folder's accept)
_KIND_LABELS = {
    "model-attributor": "detector",
    "keyed-family": "family",
    "data-attributor": "data attributor",
    "similarity-index": "index",
    "feature-extractor": "feature extractor",
    "feature-mapper": "feature mapper",
    "inversion-attack": "inversion attack",
    "defense": "defense",
}
#: File suffixes of pickled PyTorch / Lightning / transformers weights.
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
# files a genprov writer may leave without its main marker (a run interrupted while saving)
_CHECKPOINT_LEFTOVERS = ("model.safetensors", "train_log.jsonl", "state")
_STORE_LEFTOVERS = ("features.npy",)
_INDEX_LEFTOVERS = ("simclr/config.json", "simclr.safetensors", "segments")
# files genprov commands write; a folder holding one is somebody's output
_OUTPUT_FILES = (
    "report.html",
    "index.html",
    "attribution.npz",
    "explanations.npz",
    "scores.npy",
    "grid.png",
    "state.safetensors",
    "cli.json",
)


@dataclasses.dataclass(frozen=True)
class Artifact:
    """What a folder holds.

    Attributes:
        kind: e.g. ``"gan checkpoint"``, ``"flipad detector"``, ``"feature store"``, ``"similarity index"``.
        marker: The evidence, e.g. ``"config.json kind 'gan'"``.
    """

    kind: str
    marker: str

    def describe(self) -> str:
        """``"a gan checkpoint (config.json kind 'gan')"``."""
        article = "an" if self.kind[:1] in "aeiou" else "a"
        return f"{article} {self.kind} ({self.marker})"


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def artifact_label(kind: str, method: str) -> str:
    """What :func:`identify_artifact` calls a fitted object: ``"flipad detector"``, ``"gnime defense"``."""
    return f"{method} {_KIND_LABELS.get(kind, kind)}"


def _from_config(path: Path) -> Artifact:
    data = _json(path)
    if data is None:
        return Artifact("genprov output", "an unreadable config.json")
    fmt, method, kind = str(data.get("format", "")), data.get("method"), data.get("kind")
    if fmt == ARTIFACT_FORMAT:
        return Artifact(artifact_label(str(kind), str(method)), f"config.json kind {kind!r} method {method!r}")
    if "attributor" in fmt:
        return Artifact(f"{method} detector", f"config.json method {method!r}")
    if "attack" in fmt:
        return Artifact(f"{method} inversion attack", f"config.json method {method!r}")
    if "defense" in fmt:
        return Artifact(f"{method} defense", f"config.json method {method!r}")
    if kind is not None and "model" in data:
        return Artifact(f"{kind} checkpoint", f"config.json kind {kind!r}")
    return Artifact("config of unknown kind", "config.json")


def _from_manifest(path: Path) -> Artifact:
    data = _json(path) or {}
    if data.get("kind") == "features":
        return Artifact("feature store", "manifest.json kind 'features'")
    if "keyed" in str(data.get("format", "")):
        return Artifact("keyed family", f"manifest.json format {data['format']!r}")
    return Artifact("genprov output", "manifest.json")


def _from_results(path: Path) -> Artifact:
    command = (_json(path) or {}).get("command")
    if command:
        return Artifact(f"output of 'genprov {command}'", "results.json")
    return Artifact("run output", "results.json")


def identify_artifact(folder: str | os.PathLike[str]) -> Artifact | None:
    """What genprov artefact ``folder`` holds, by its marker files (``None``: none, or not a folder)."""
    path = Path(folder)
    if not path.is_dir():
        return None
    if (path / "workspace.json").is_file():
        return Artifact("workspace", "workspace.json")
    if (path / "similarity.json").is_file():
        return Artifact("similarity index", "similarity.json")
    if (path / "lora.json").is_file():
        return Artifact("lora adapter", "lora.json")
    if (path / "model_index.json").is_file():
        cls = (_json(path / "model_index.json") or {}).get("_class_name")
        return Artifact(PIPELINE_KIND, f"model_index.json _class_name {cls!r}")
    if (path / "config.json").is_file() and (_json(path / "config.json") or {}).get("format") == ARTIFACT_FORMAT:
        return _from_config(path / "config.json")  # before index.json: a similarity index holds both
    if (path / "index.json").is_file():
        return Artifact("feature index", "index.json")
    if (path / "manifest.json").is_file():
        return _from_manifest(path / "manifest.json")
    if (path / "config.json").is_file():
        return _from_config(path / "config.json")
    if (path / "samples.npz").is_file():
        return Artifact("set of samples", "samples.npz")
    if (path / "results.json").is_file():
        return _from_results(path / "results.json")
    for name in _CHECKPOINT_LEFTOVERS:
        if (path / name).exists():
            return Artifact(INCOMPLETE_CHECKPOINT, f"{name} without config.json")
    for name in _STORE_LEFTOVERS:
        if (path / name).exists():
            return Artifact(INCOMPLETE_STORE, f"{name} without manifest.json")
    for name in _INDEX_LEFTOVERS:
        if (path / name).exists():
            return Artifact(INCOMPLETE_INDEX, f"{name} without index.json")
    for name in _OUTPUT_FILES:
        if (path / name).exists():
            return Artifact("genprov output", name)
    return None


def check_output_folder(
    folder: str | os.PathLike[str], *, accept: Collection[str] = (), option: str = "--out"
) -> Artifact | None:
    """Refuse an output path that is a file, or a folder holding an artefact of a kind not in ``accept``.

    Call it before writing anything, so that a refused write leaves every byte where it was.

    Args:
        folder: Where the writer will write.
        accept: Artefact kinds the writer may update (its own kind when it resumes or refreshes a run;
            it then checks that the run is the same).
        option: The option or argument that named ``folder``, for the message.

    Returns:
        What the folder holds (of an accepted kind), or ``None`` for a new or artefact-free folder.

    Raises:
        ConfigError: ``folder`` is an existing file, or holds an artefact of another kind (named).
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} is an existing file, not a folder; choose another {option} (a new or empty folder).")
    found = identify_artifact(path)
    if found is not None and found.kind not in accept:
        raise ConfigError(
            f"{path} already holds {found.describe()}; choose another {option} (genprov never overwrites "
            "another artefact; delete the folder yourself to replace it)."
        )
    return found


def check_output_file(path: str | os.PathLike[str], *, option: str = "--out") -> None:
    """Refuse an output *file* path that already exists (as a file or a folder), before anything is written.

    Raises:
        ConfigError: Naming the path.
    """
    file = Path(path)
    if file.exists():
        what = "a folder" if file.is_dir() else "an existing file"
        raise ConfigError(
            f"{file} is {what}; choose another {option} (genprov never overwrites an existing file; delete it "
            "yourself to replace it)."
        )


def is_pickle_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file that looks pickled: a pickle suffix, or pickle / torch-zip magic bytes."""
    file = Path(path)
    if not file.is_file():
        return False
    if file.suffix.lower() in PICKLE_SUFFIXES:
        return True
    try:
        with open(file, "rb") as handle:
            head = handle.read(9)
        size = file.stat().st_size
    except OSError:
        return False
    if len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return False  # a safetensors header (its length can start with the pickle opcode byte 0x80)
    return head[:1] == b"\x80" or head[:4] == b"PK\x03\x04"


def refuse_pickle(path: str | os.PathLike[str], what: str = "a checkpoint") -> None:
    """Raise :class:`CheckpointError` explaining how to convert ``path`` when it is a pickle file.

    genprov reads weights from safetensors only and never unpickles (unpickling runs arbitrary code).
    """
    file = Path(path)
    if not is_pickle_file(file):
        return
    raise CheckpointError(
        f"{file} was given as {what} but is a pickle file; genprov reads safetensors only and never unpickles. "
        'Convert it: python -c "import torch; from safetensors.torch import save_file; '
        f"save_file(torch.load('{file}', weights_only=True), 'model.safetensors')\" (for diffusers / transformers "
        "models: save_pretrained(folder, safe_serialization=True)); genprov checkpoints are folders written by "
        "'genprov train' (config.json + model.safetensors)."
    )


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - loop always returns


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def ensure_free_space(folder: str | os.PathLike[str], needed: int, what: str) -> None:
    """Refuse to start writing ``needed`` bytes into ``folder`` when its file system has less free.

    Raises:
        DataError: Naming what is written, the bytes needed and the bytes free.
    """
    path = Path(folder)
    try:
        free = shutil.disk_usage(_existing(path.absolute())).free
    except OSError:  # pragma: no cover - no statvfs: the write itself reports a full disk
        return
    if needed > free:
        raise DataError(
            f"{what} needs {format_bytes(needed)} in {path} but its file system has only {format_bytes(free)} free; "
            "free some space or choose a folder on another disk."
        )


def storage_error(err: OSError, path: Path, what: str) -> DataError:
    """A one-line :class:`DataError` for an ``OSError`` raised while allocating or writing ``what`` at ``path``."""
    cause = {
        errno.ENOSPC: "the file system is full",
        errno.EFBIG: "the file is larger than the file-size limit allows",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
    }.get(err.errno or 0, err.strerror or str(err))
    return DataError(
        f"Cannot write {what} to {path}: {cause}. Free some space (or raise the limit), or choose a folder on "
        "another disk; then run the same command again to resume."
    )
