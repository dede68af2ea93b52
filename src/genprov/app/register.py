"""Registering items in a workspace: copy, record, and prove they load (``genprov workspace add``).

Each ``add_*`` function reads what the item's own command wrote, copies the files the service needs into
the workspace, and then loads the new entry once; if that fails (a mismatched model and store, a missing
checkpoint, ...) the entry is removed again and the error names the problem. Existing entries are never
touched by a failed add.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from genprov.app.engine import ANALYZERS
from genprov.app.workspace import TRAIN_CAPTIONS, TRAIN_IMAGES, Entry, Workspace
from genprov.attribution.data.index_folder import open_similarity_index, read_index_info
from genprov.attribution.data.similarity import recorded_parts
from genprov.attribution.data.trak_shards import open_recorded_collection, recorded_collection
from genprov.attribution.model import KeyedGenerators, ModelAttributor
from genprov.data import ImageDataset, load_dataset
from genprov.data.collections import is_collection_key
from genprov.exceptions import CheckpointError, ConfigError, DataError, GenprovError
from genprov.models.artifact import module_fingerprint, read_artifact
from genprov.models.checkpoints import load_checkpoint
from genprov.models.t2i import captions_for, is_pipeline_folder, load_pipeline
from genprov.storage import FeatureStore
from genprov.utils.artifacts import identify_artifact
from genprov.utils.io import read_json

__all__ = ["add_flipad", "add_keyed", "add_similarity", "add_trak"]


def _verified(ws: Workspace, entry: Entry) -> Entry:
    """Load ``entry`` once; on failure unregister it and re-raise with the entry named."""
    try:
        ANALYZERS[entry.kind](ws, entry)
    except (GenprovError, OSError, KeyError, ValueError) as err:
        ws.remove(entry.name)
        raise CheckpointError(f"Could not add {entry.name!r}: it does not load ({err}).") from err
    return entry


def add_flipad(ws: Workspace, name: str, detector: str | Path, *, generator: str | Path | None = None) -> Entry:
    """Register a detector written by ``genprov flipad fit`` (or ``save_pretrained``) and its generator.

    The generator is a GAN checkpoint, or, for a detector of a text-to-image pipeline (FLIPAD on its VAE's
    decoder, AEROBLADE), the pipeline folder: the detector records only the VAE's fingerprint, so the pipeline
    must be given, and its VAE must be the one the detector was fitted on (checked before anything is copied).
    The whole pipeline folder is copied, as every entry is self-contained: for a real Stable Diffusion folder
    that is several GB. A LoRA is not needed: it changes the U-Net, not the VAE the detector tests.

    Args:
        ws: The workspace.
        name: Entry name.
        detector: The detector folder.
        generator: The GAN checkpoint folder (default: the one the detector's config.json records) or the
            pipeline folder (required for a detector of a pipeline).

    Raises:
        DataError: ``detector`` is not a detector, or a pipeline detector comes without its pipeline.
        CheckpointError: The pipeline's VAE is not the one the detector was fitted on (nothing is written).
    """
    detector = Path(detector)
    found = identify_artifact(detector)
    if found is None or not found.kind.endswith(" detector"):
        holds = f"it holds {found.describe()}" if found else "no detector config.json in it"
        raise DataError(f"{detector} is not a detector ({holds}); fit one with 'genprov flipad fit'.")
    if generator is None:
        generator = _recorded_generator(detector)
    generator = Path(generator)
    if is_pipeline_folder(generator):
        info = _pipeline_detector_facts(name, detector, generator)
    else:
        cfg = load_checkpoint(generator).model_config
        info = {"image_size": int(cfg.image_size), "channels": int(cfg.channels), "generator": str(generator)}  # type: ignore[attr-defined]
    entry = ws.add(name, "flipad", {"detector": detector, "generator": generator}, info)
    return _verified(ws, entry)


def _pipeline_detector_facts(name: str, detector: Path, pipeline: Path) -> dict[str, Any]:
    """The entry facts of a detector of ``pipeline``'s VAE (its input shape: the VAE's image size and channels),
    after checking that the detector was fitted on that VAE."""
    record, _ = read_artifact(detector, ModelAttributor.artifact_kind, legacy=ModelAttributor.legacy_formats)
    expected = (record.wraps.get("generator") or {}).get("fingerprint")
    if expected is not None and module_fingerprint(load_pipeline(pipeline).vae) != expected:
        raise CheckpointError(
            f"Cannot add {name!r}: the detector {detector} was not fitted on the VAE of {pipeline} (its weights have "
            "another fingerprint); pass the pipeline the detector was fitted on with --generator."
        )
    channels, size = (int(record.state["input_shape"][i]) for i in (0, -1))
    return {"image_size": size, "channels": channels, "generator": str(pipeline), "pipeline": True}


def _recorded_generator(detector: Path) -> Path:
    """The generator checkpoint a detector's config.json records (or, fitted before it did, its cli.json)."""
    legacy = detector / "cli.json"
    if legacy.is_file():
        return Path(read_json(legacy)["generator"])
    record, _ = read_artifact(detector, ModelAttributor.artifact_kind, legacy=ModelAttributor.legacy_formats)
    checkpoint = (record.wraps.get("generator") or {}).get("checkpoint")
    if not checkpoint:
        raise DataError(
            f"{detector} does not say which generator it is for (no checkpoint recorded: it was fitted on a generator "
            "in memory or on a text-to-image pipeline's VAE); pass its GAN checkpoint or pipeline folder with --generator."
        )
    return (detector / str(checkpoint)).resolve()


def add_keyed(ws: Workspace, name: str, family: str | Path) -> Entry:
    """Register a keyed family folder (``genprov keyed create``)."""
    loaded = KeyedGenerators.from_pretrained(family)
    gan = loaded.root.config
    info = {"image_size": int(gan.image_size), "channels": int(gan.channels), "n_keys": loaded.n_keys}
    entry = ws.add(name, "keyed", {"family": Path(family)}, info)
    return _verified(ws, entry)


def _recorded_data(spec: dict[str, Any] | None, data_root: str | Path | None, what: str) -> ImageDataset:
    """The training images a store recorded (``load_dataset`` arguments), optionally from another data root."""
    if not spec:
        raise DataError(f"{what} does not record its training data; pass the training images.")
    values = dict(spec)
    if data_root is not None:
        values["data_root"] = str(data_root)
    return load_dataset(**values)


def _add_with_images(
    ws: Workspace,
    name: str,
    kind: str,
    parts: dict[str, Path],
    info: dict[str, Any],
    images: torch.Tensor | None,
    data_root: str | Path | None,
    store: str | Path,
    captions: str | list[str] | None = None,
) -> Entry:
    """Add an entry whose training images (``train.npz``) and, for a text-to-image entry, their captions
    (``captions.json``) travel with it, then prove it loads.

    ``images``: the training images; ``None`` reloads the data ``info["data"]`` records (the store's), from
    ``data_root`` when given. ``captions``: one per image, or where the store took them from (``"labels"`` or a
    captions file, read for the recorded data); ``None`` for an entry without captions.
    """
    texts = None if isinstance(captions, str) else captions
    if images is not None:
        train = images
    else:
        data = _recorded_data(info.get("data"), data_root, str(store))
        train = data.images
        if isinstance(captions, str):
            texts = list(captions_for(captions, data))
    if isinstance(captions, str) and texts is None:
        raise ConfigError(
            f"{store} attributes a text-to-image pipeline: pass the training images' captions (captions=[...], one "
            "per image) with the training images."
        )
    staged: dict[str, Path] = {}
    try:
        staged[TRAIN_IMAGES] = Workspace.save_train_images(train, ws.folder / f".{name}-{TRAIN_IMAGES}")
        if texts is not None:
            staged[TRAIN_CAPTIONS] = Workspace.save_train_captions(texts, ws.folder / f".{name}-{TRAIN_CAPTIONS}")
        entry = ws.add(name, kind, {**parts, **staged}, {**info, "n_train": len(train)})
    finally:
        for path in staged.values():
            path.unlink(missing_ok=True)
    return _verified(ws, entry)


def add_trak(
    ws: Workspace,
    name: str,
    store: str | Path,
    *,
    model: str | Path | None = None,
    lora: str | Path | None = None,
    train: torch.Tensor | None = None,
    captions: list[str] | None = None,
    data_root: str | Path | None = None,
) -> Entry:
    """Register a TRAK / D-TRAK store (``genprov trak featurize``) with its model and training images.

    The model is a DDPM checkpoint, or for a store of a text-to-image pipeline the pipeline folder, the LoRA
    folder (if any) and each training image's caption, all copied into the entry; the service then asks for
    each query's prompt.

    Args:
        ws: The workspace.
        name: Entry name.
        store: The feature store folder.
        model: The DDPM checkpoint or pipeline folder (default: the one the store recorded).
        lora: The LoRA folder of a pipeline store (default: the one the store recorded).
        train: The training images (default: reloaded from the data the store recorded, or read from the image
            collection a store of ``genprov trak featurize --data COLLECTION`` recorded, checked unchanged; the
            entry holds them, for the galleries).
        captions: A pipeline store's training captions, one per image of ``train`` (default: read as the store
            recorded, from the class names or its captions file; required with ``train``).
        data_root: Folder of dataset files, when the recorded training data is not built in.

    Raises:
        DataError: Not a store of ``genprov trak featurize``, or a model of another kind than the store's.
        ConfigError: ``lora`` or ``captions`` for a DDPM store, or ``train`` without ``captions`` for a pipeline.
    """
    fs = FeatureStore.open(store)
    info = fs.info
    if "trak_config" not in info or ("model" not in info and model is None):
        raise DataError(f"{store} was not written by 'genprov trak featurize'; it lacks the model and config it used.")
    model_path = Path(model) if model is not None else Path(info["model"])
    facts = {k: info.get(k) for k in ("image_size", "channels", "trak_config", "data")}
    parts = {"store": Path(store), "model": model_path}
    t2i = info.get("t2i")
    if (t2i is not None) != is_pipeline_folder(model_path):
        store_kind, model_kind = ("a text-to-image pipeline", "a DDPM") if t2i else ("a DDPM", "a pipeline folder")
        raise DataError(
            f"{store} attributes {store_kind} but the model {model_path} is {model_kind}; pass the store's own model."
        )
    if t2i is None:
        if lora is not None or captions is not None:
            raise ConfigError(
                f"{store} attributes a DDPM: a LoRA and captions are for text-to-image stores; drop them."
            )
        if train is None and recorded_collection(fs) is not None:
            collection = open_recorded_collection(fs)
            train = collection.read(0, len(collection))
        return _add_with_images(ws, name, "trak", parts, facts, train, data_root, store)
    lora_path = Path(lora) if lora is not None else (Path(t2i["lora"]) if t2i.get("lora") else None)
    if lora_path is not None:
        parts["lora"] = lora_path
    facts["t2i"] = {"lora": lora_path is not None}
    source = captions if captions is not None else str(t2i["captions"])
    return _add_with_images(ws, name, "trak", parts, facts, train, data_root, store, source)


def add_similarity(
    ws: Workspace,
    name: str,
    store: str | Path,
    *,
    train: torch.Tensor | None = None,
    data_root: str | Path | None = None,
) -> Entry:
    """Register a similarity index (``genprov similarity index``) with its extractor weights, mapper and images.

    Args:
        ws: The workspace.
        name: Entry name.
        store: The index folder.
        train: The training images (default: reloaded from the data the index recorded).
        data_root: Folder of dataset files, when the recorded training data is not built in.
    """
    store = Path(store)
    record = read_index_info(store)
    channels, image_size, _ = (int(v) for v in record.state["image_shape"])
    info: dict[str, Any] = {
        "method": record.state.get("name"),
        "extractor": record.state["extractor"]["name"],
        "image_size": image_size,
        "channels": channels,
        "calibrated": record.state.get("calibration") is not None,
        "data": record.state.get("data"),
    }
    parts: dict[str, Path] = {"index": store}
    for part, source in recorded_parts(record).items():  # where each part lies in the entry's folder
        if source.is_relative_to(store.resolve()):
            info[part] = str(source.relative_to(store.resolve()))  # copied with the index
            info[f"{part}_in_index"] = True
        else:
            parts[part] = source
            info[part] = part
    if train is None and is_collection_key(record.state.get("data_fingerprint")):
        train = open_similarity_index(store)[1].images  # read from the collection, checked against the index
    return _add_with_images(ws, name, "similarity", parts, info, train, data_root, store)
