"""Where an opened pipeline came from: the folders an artefact records and reopens (as ``checkpoint_source`` for
a DDPM checkpoint).

:func:`open_pipeline` opens a pipeline folder and a LoRA folder and remembers both for the pipeline's U-Net;
:func:`pipeline_record` gives them with the SHA-256 of their files (what a TRAK artefact of the pipeline saves)
and :func:`reopen_pipeline` opens them again after checking the hashes. Hashing reads every file of the
pipeline: for a real Stable Diffusion folder that is about 4 GB at each save and reopen.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from genprov.exceptions import CheckpointError
from genprov.utils.checksums import file_sha256

__all__ = ["open_pipeline", "pipeline_record", "reopen_pipeline"]

#: The pipeline folder and LoRA folder each U-Net was opened from by :func:`open_pipeline`.
_SOURCES: weakref.WeakKeyDictionary[nn.Module, tuple[Path, Path | None]] = weakref.WeakKeyDictionary()


def open_pipeline(folder: str | Path, lora: str | Path | None = None) -> Any:
    """Open a text-to-image pipeline folder and load a LoRA folder into it, remembering both folders (so that an
    artefact of it, e.g. ``TRAKAttributor.for_pipeline(...).save_pretrained``, records them).

    Args:
        folder: A diffusers ``StableDiffusionPipeline`` folder (:func:`~genprov.models.t2i.load_pipeline`).
        lora: A LoRA folder (:func:`~genprov.models.t2i.load_lora`), or ``None``.

    Returns:
        The pipeline, with the LoRA loaded.

    Raises:
        PipelineError: Not a pipeline folder, a missing component, pickled weights (see ``load_pipeline``).
        CheckpointError: A missing or pickled LoRA, or a LoRA for another base model (each tensor named).
    """
    from genprov.models.t2i.lora import load_lora
    from genprov.models.t2i.pipeline import load_pipeline

    pipe = load_pipeline(folder)
    if lora is not None:
        load_lora(pipe, lora)
    _SOURCES[pipe.unet] = (Path(folder).resolve(), None if lora is None else Path(lora).resolve())
    return pipe


def _pipeline_files(folder: Path) -> list[Path]:
    """The files that make a pipeline: ``model_index.json`` and every file of its components."""
    from genprov.models.t2i.pipeline import MODEL_INDEX, PIPELINE_COMPONENTS

    parts = [p for name in PIPELINE_COMPONENTS for p in sorted((folder / name).rglob("*")) if p.is_file()]
    return [folder / MODEL_INDEX, *parts]


def _lora_files(folder: Path) -> list[Path]:
    """The weight files of a LoRA folder (the adapter and, for a customization, the new token's embedding)."""
    from genprov.models.t2i.lora import LORA_WEIGHTS, TOKEN_WEIGHTS

    return [folder / name for name in (LORA_WEIGHTS, TOKEN_WEIGHTS) if (folder / name).is_file()]


def _files_sha256(folder: Path, files: Sequence[Path]) -> str:
    """SHA-256 over the files' paths (relative to ``folder``) and contents, read in blocks."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        file_sha256(path, digest)
    return digest.hexdigest()


def pipeline_record(unet: nn.Module | None) -> dict[str, Any]:
    """``{"folder", "sha256", "lora": {"folder", "sha256"} | None}`` of the folders ``unet`` was opened from
    (``{}`` when it was not opened by :func:`open_pipeline`, e.g. built in memory)."""
    source = _SOURCES.get(unet) if unet is not None else None
    if source is None:
        return {}
    folder, lora = source
    record: dict[str, Any] = {"folder": str(folder), "sha256": _files_sha256(folder, _pipeline_files(folder))}
    record["lora"] = None if lora is None else {"folder": str(lora), "sha256": _files_sha256(lora, _lora_files(lora))}
    return record


def reopen_pipeline(record: Mapping[str, Any], where: str | Path) -> Any:
    """The pipeline (and LoRA) of a :func:`pipeline_record`, after checking that their files are the recorded ones.

    Args:
        record: What :func:`pipeline_record` returned when the artefact was saved.
        where: The artefact that recorded it (named in errors).

    Raises:
        CheckpointError: Nothing recorded (a pipeline built in memory), a recorded folder is missing, or its files
            changed (another SHA-256).
    """
    if not record:
        raise CheckpointError(
            f"The artefact at {where} attributes a text-to-image pipeline built in memory (no folder recorded); "
            "pass it: from_pretrained(folder, pipeline)."
        )
    lora = record.get("lora")
    for what, part, files in (("pipeline", record, _pipeline_files), ("LoRA", lora, _lora_files)):
        if not part:
            continue
        folder = Path(str(part["folder"]))
        if not folder.is_dir():
            raise CheckpointError(
                f"The artefact at {where} was fitted on the {what} {folder}, which is missing; restore it there, or "
                "pass the pipeline: from_pretrained(folder, pipeline)."
            )
        if _files_sha256(folder, [f for f in files(folder) if f.is_file()]) != part["sha256"]:
            raise CheckpointError(
                f"The {what} {folder} changed since the artefact at {where} was saved (another SHA-256 of its "
                f"files); restore the original {what}, or fit again."
            )
    return open_pipeline(Path(str(record["folder"])), None if not lora else Path(str(lora["folder"])))
