"""TRAK / D-TRAK featurization shard by shard on a backend (:mod:`genprov.storage.shards`): here or on Ray.

:func:`featurize_sharded` fills the same feature store :meth:`TRAKAttributor.fit` fills, through
:func:`~genprov.storage.shards.run_shards` (one driver per store, the missing shards only), then fits the
attributor on it. Its task, :class:`TRAKShardTask`, computes rows ``[start, stop)`` with
:meth:`TRAKAttributor.featurize` keyed by the example indices, so the features are bit-identical to
``fit(train, store)`` in one process, whatever the backend, the number of workers and the order in which shards
finish (given the same torch threads per worker as the driver).

On a Ray worker the task rebuilds the attributor once per worker process: from the model's checkpoint folder
(:func:`genprov.models.checkpoints.checkpoint_source`) or pipeline folder (:class:`ModelSource`), or, for a model
built in memory, from the module carried in the task through Ray's object store; it then checks the model's
fingerprint against the store's, so a checkpoint changed since the driver opened it is refused.

:func:`featurize_collection` featurizes an image collection (:mod:`genprov.data.collections`: an image folder, tar
shards, parquet, an ``.npz``, an LMDB, a built-in data set) without holding it: each task reads its own range of
images (the task's examples are the resolved :class:`~genprov.data.collections.CollectionSpec`), and the driver
reads one image, for the shape. The store records the collection: its key
(:func:`~genprov.data.collections.collection_key`: the pixels' fingerprint for a built-in data set,
as :meth:`TRAKAttributor.fit` records, else ``collection:`` and the cheap fingerprint of the files) as the spec's
``data_fingerprint``, and the resolved spec (paths, length, fingerprint) as ``info["collection"]``; a resumed run on
another or a changed collection is refused. :func:`fit_collection_store` reopens such a store without featurizing
or reading its images (:func:`recorded_collection` gives the collection, to read the few images a report shows).
The features are bit-identical to ``fit`` over the same images in one process.

Example:
    >>> ddpm = load_checkpoint("runs/ddpm").model  # doctest: +SKIP
    >>> attributor = TRAKAttributor(ddpm, config=TRAKConfig(output_function="squared-l2-norm"))  # doctest: +SKIP
    >>> featurize_sharded(attributor, train, "runs/dtrak", RayBackend(address="auto", workers=8))  # doctest: +SKIP
    >>> featurize_collection(attributor, "laion/part-{0000..0099}.tar", "runs/dtrak-laion", RayBackend())  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from genprov.attribution.data.base import StoreLike, TrainingSet, training_images
from genprov.attribution.data.trak import Examples, TRAKAttributor, TRAKConfig
from genprov.data.collections import (
    CollectionSpec,
    ImageCollection,
    collection_key,
    open_collection,
    resolve_collection,
)
from genprov.data.conditioned import ConditionedExamples
from genprov.exceptions import ConfigError, DataError, StoreMismatchError
from genprov.models.checkpoints import checkpoint_source, load_checkpoint
from genprov.storage import MANIFEST_FILE, FeatureStore, fingerprint_state, read_manifest
from genprov.storage.shards import Backend, InProcessBackend, run_shards

__all__ = [
    "COLLECTION_INFO",
    "ModelSource",
    "TRAKShardTask",
    "featurize_collection",
    "featurize_sharded",
    "fit_collection_store",
    "fit_recorded_store",
    "open_recorded_collection",
    "recorded_collection",
    "started_from_collection",
]

#: The manifest ``info`` key of the collection a store was featurized from (:func:`featurize_collection`).
COLLECTION_INFO = "collection"

#: Attributors rebuilt in this (worker) process, keyed by model source, config and fingerprint.
_WORKER_ATTRIBUTORS: dict[tuple[Any, ...], TRAKAttributor] = {}


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a worker reopens the attributed model.

    Attributes:
        kind: ``"checkpoint"`` (a genprov checkpoint folder) or ``"pipeline"`` (a text-to-image pipeline folder).
        folder: The folder (absolute).
        module: The checkpoint's module (``"ddpm"``); ``None`` for a pipeline.
        lora: The pipeline's LoRA folder, or ``None``.
    """

    kind: Literal["checkpoint", "pipeline"]
    folder: str
    module: str | None = None
    lora: str | None = None

    @classmethod
    def of(cls, model: nn.Module) -> ModelSource | None:
        """The checkpoint a model was loaded from by ``load_checkpoint`` (``None`` for any other model)."""
        source = checkpoint_source(model)
        return None if source is None else cls("checkpoint", str(source[0]), source[1])

    @classmethod
    def pipeline(cls, folder: str | os.PathLike[str], lora: str | os.PathLike[str] | None = None) -> ModelSource:
        """A text-to-image pipeline folder and its LoRA folder (as ``genprov.models.t2i.open_pipeline`` takes)."""
        return cls("pipeline", str(Path(folder).resolve()), None, None if lora is None else str(Path(lora).resolve()))

    def attributor(self, config: TRAKConfig, scheduler: Any) -> TRAKAttributor:
        """A new attributor of the model reopened from this source."""
        if self.kind == "pipeline":
            from genprov.models.t2i import open_pipeline  # the t2i extra, imported only for a pipeline

            return TRAKAttributor.for_pipeline(open_pipeline(self.folder, self.lora), config)
        modules = load_checkpoint(self.folder).modules
        return TRAKAttributor(modules[str(self.module)], scheduler, config)


@dataclasses.dataclass
class TRAKShardTask:
    """Features of training examples ``[start, stop)``: ``{"features": (stop - start, k) float32}``.

    Picklable: a Ray worker rebuilds the attributor from ``source`` (or from ``model``, carried in the task)
    once per process. In the driver's process :func:`featurize_sharded` hands it the driver's attributor.

    Attributes:
        config: The attributor's config.
        examples: The training examples (images, or latents with contexts), indexed by position; or a resolved image
            collection the task reads its range of (``genprov.data.collections``).
        fingerprint: The model fingerprint the store was created for (checked on the worker).
        source: Where workers reopen the model; ``None``: use ``model``.
        model: The model itself, when it has no source (sent through Ray's object store).
        scheduler: The attributor's noise scheduler (``None``: the model config's; a pipeline's own).
    """

    config: TRAKConfig
    examples: Examples | CollectionSpec
    fingerprint: str
    source: ModelSource | None = None
    model: nn.Module | None = None
    scheduler: Any = None
    local: TRAKAttributor | None = dataclasses.field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the driver's own attributor (workers rebuild theirs)."""
        return {**self.__dict__, "local": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def attributor(self) -> TRAKAttributor:
        """The driver's attributor, else this worker's, rebuilt once and checked against the store's fingerprint.

        Raises:
            StoreMismatchError: The reopened model's weights are not those the store was created for.
        """
        if self.local is not None:
            return self.local
        key = (self.source, json.dumps(self.config.to_dict(), sort_keys=True), self.fingerprint)
        attributor = _WORKER_ATTRIBUTORS.get(key) if self.source is not None else None
        if attributor is None:
            if self.source is not None:
                attributor = self.source.attributor(self.config, self.scheduler)
            else:
                attributor = TRAKAttributor(self.model, self.scheduler, self.config)  # type: ignore[arg-type]
            found = fingerprint_state(attributor.model)
            if found != self.fingerprint:
                where, cause = (
                    (f"The model reopened from {self.source.folder}", "that folder changed since the driver opened it")
                    if self.source is not None
                    else ("The model sent to the worker", "the model changed after the driver created the store")
                )
                raise StoreMismatchError(
                    f"{where} has fingerprint {found} but the store was created for {self.fingerprint}: {cause}; "
                    "restore it, or featurize into a new store."
                )
            if self.source is not None:
                _WORKER_ATTRIBUTORS[key] = attributor
        return attributor

    def __call__(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """The features of examples ``[start, stop)``, their noise keyed by the example indices."""
        examples = self.examples
        batch = (
            open_collection(examples).read(start, stop)
            if isinstance(examples, CollectionSpec)
            else examples[start:stop]
        )
        features = self.attributor().featurize(batch, torch.arange(start, stop))
        return {"features": features.numpy()}


def featurize_sharded(
    attributor: TRAKAttributor,
    train: TrainingSet,
    store: StoreLike,
    backend: Backend | None = None,
    *,
    source: ModelSource | None = None,
    show_progress: bool | None = None,
) -> TRAKAttributor:
    """Featurize the training set into ``store`` on ``backend``, resuming it, then fit ``attributor`` on it.

    Equivalent to ``attributor.fit(train, store=store)`` (same store, bit-identical features), with the shards
    computed on ``backend`` under the store's driver lock.

    Args:
        attributor: The attributor (its model opened from a checkpoint or pipeline folder, for Ray workers to
            reopen; a model built in memory is sent to them through Ray's object store).
        train: An ``ImageDataset`` or (n, C, H, W) tensor (a conditional model's: ``ConditionedExamples``).
        store: The store folder (or :class:`FeatureStore`); an unfinished one with the same spec is resumed.
        backend: Where the shards run (default :class:`InProcessBackend`).
        source: Where workers reopen the model (default: the checkpoint it was loaded from, if any); a
            pipeline's is ``ModelSource.pipeline(folder, lora)``.
        show_progress: Progress bar over shards.

    Returns:
        ``attributor``, fitted on the store.

    Raises:
        StoreLockedError: Another driver is filling the store.
        StoreMismatchError: The store holds features of another config, model or data.
    """
    images: Examples = train if isinstance(train, ConditionedExamples) else training_images(train)
    spec = attributor.store_spec(images)
    path = store if isinstance(store, FeatureStore) else Path(str(store))
    fs = attributor.create_store(path, images, spec)  # the one fit fills, so fit below only reads it
    task = _task(attributor, images, spec, backend, source)
    run_shards(fs, task, backend, desc=f"{attributor.method} features", show_progress=show_progress)
    return attributor.fit(train, store=fs.path, show_progress=False)


def _task(
    attributor: TRAKAttributor,
    examples: Examples | CollectionSpec,
    spec: dict[str, Any],
    backend: Backend | None,
    source: ModelSource | None,
) -> TRAKShardTask:
    """The shard task of ``attributor`` over ``examples`` (the driver's attributor itself when in process)."""
    source = source if source is not None else ModelSource.of(attributor.model)
    return TRAKShardTask(
        config=attributor.config,
        examples=examples,
        fingerprint=str(spec["model_fingerprint"]),
        source=source,
        model=attributor.model if source is None else None,
        scheduler=None if source is not None and source.kind == "pipeline" else attributor.scheduler,
        local=attributor if backend is None or isinstance(backend, InProcessBackend) else None,
    )


def _describe(data_key: str, n_rows: int, recorded: CollectionSpec | None) -> str:
    """What a store was started on, for messages."""
    if recorded is not None:
        return f"the collection {recorded.source} ({n_rows} images, data fingerprint {data_key})"
    return f"{n_rows} images with pixel fingerprint {data_key} (not a collection: featurized from images in memory)"


def _check_started_on(path: Path, key: str, collection: CollectionSpec) -> None:
    """Refuse, naming both, a store at ``path`` started on other data than ``collection`` (nothing there: pass)."""
    if not (path / MANIFEST_FILE).is_file():
        return
    manifest = read_manifest(path)
    saved_key = manifest.spec.get("data_fingerprint")
    saved_rows = (manifest.spec.get("layout") or {}).get("n_rows")
    if saved_key is None or (saved_key == key and saved_rows == collection.length):
        return  # not a TRAK store (FeatureStore.create says so), or the same data
    recorded = manifest.info.get(COLLECTION_INFO)
    started = _describe(str(saved_key), int(saved_rows or 0), _spec_or_none(recorded))
    raise StoreMismatchError(
        f"{path} holds (or was started on) features of {started}; the collection {collection.source} has "
        f"{collection.length} images, data fingerprint {key}. It changed since the store was started, or is another "
        "one: restore the collection the store was started on, or featurize into another store."
    )


def _spec_or_none(recorded: Any) -> CollectionSpec | None:
    return CollectionSpec.from_dict(recorded) if isinstance(recorded, dict) else None


def _resolved(collection: CollectionSpec | str | os.PathLike[str]) -> CollectionSpec:
    if isinstance(collection, CollectionSpec) and collection.resolved:
        return collection
    return resolve_collection(collection)


def featurize_collection(
    attributor: TRAKAttributor,
    collection: CollectionSpec | str | os.PathLike[str],
    store: StoreLike,
    backend: Backend | None = None,
    *,
    source: ModelSource | None = None,
    show_progress: bool | None = None,
) -> TRAKAttributor:
    """Featurize an image collection into ``store`` on ``backend``, each shard task reading its own images; resume
    an unfinished store; then fit ``attributor`` on the store.

    This process reads one image (for the shape); the workers read the rest, range by range. The features are
    bit-identical to ``attributor.fit(images, store=...)`` over the same images in one process; the store's data
    fingerprint is the collection's key (see the module docstring), so for a built-in data set the store is the one
    ``fit`` writes. A finished store is neither locked nor featurized again (its kernel is cached in it, as ``fit``
    caches it).

    Args:
        attributor: The attributor of an unconditional model (a DDPM); its model opened from a checkpoint folder
            for workers to reopen (one built in memory is sent to them).
        collection: A collection spec (:func:`~genprov.data.collections.collection_spec`; resolved here if it is
            not) or what ``collection_spec`` takes (an image folder, ``a-{000..009}.tar``, parquet files, ...).
            Its images must have the model's shape (give the spec ``size`` and ``channels``).
        store: The store folder (or :class:`FeatureStore`).
        backend: Where the shards run (default :class:`InProcessBackend`).
        source: Where workers reopen the model (default: the checkpoint it was loaded from).
        show_progress: Progress bar over shards.

    Returns:
        ``attributor``, fitted on the store.

    Raises:
        ConfigError: A text-to-image model (its examples need captions: encode them and use
            :func:`featurize_sharded`).
        DataError: An unreadable collection, or images of another shape than the model's.
        StoreMismatchError: The store holds features of another config or model, or was started on another (or a
            since changed) collection.
        StoreLockedError: Another driver is filling the store.
    """
    if attributor.requires_context:
        raise ConfigError(
            "featurize_collection reads images for an unconditional model; a text-to-image model's examples need "
            "their captions: encode them (genprov.models.t2i.encode_examples) and call featurize_sharded."
        )
    spec_c = _resolved(collection)
    assert spec_c.length is not None
    key = collection_key(spec_c)
    probe = open_collection(spec_c).read(0, 1)
    spec = attributor.store_spec(probe, data_fingerprint=key)
    path = store.path if isinstance(store, FeatureStore) else Path(str(store))
    _check_started_on(path, key, spec_c)
    fs = attributor.create_store(path, probe, spec, n_rows=spec_c.length, info={COLLECTION_INFO: spec_c.to_dict()})
    if fs.missing_shards():
        task = _task(attributor, spec_c, spec, backend, source)
        run_shards(fs, task, backend, desc=f"{attributor.method} features", show_progress=show_progress)
    return _fit_on(attributor, fs)


def _fit_on(attributor: TRAKAttributor, fs: FeatureStore) -> TRAKAttributor:
    """Fit on the finished store's features, as :meth:`TRAKAttributor.fit` does (kernel cached in the store)."""
    attributor.store_ = fs
    return attributor.fit_features(fs.read("features"), write_cache=True)


def recorded_collection(store: StoreLike) -> CollectionSpec | None:
    """The collection a store was featurized from by :func:`featurize_collection` (``None`` for a store of images
    in memory)."""
    fs = store if isinstance(store, FeatureStore) else FeatureStore.open(Path(str(store)))
    return _spec_or_none(fs.info.get(COLLECTION_INFO))


def _finished_collection_store(store: StoreLike) -> tuple[FeatureStore, CollectionSpec]:
    """The finished store of :func:`featurize_collection` at ``store`` and the collection it records."""
    fs = store if isinstance(store, FeatureStore) else FeatureStore.open(Path(str(store)))
    recorded = recorded_collection(fs)
    if recorded is None or recorded.shape is None or recorded.length is None:
        raise DataError(
            f"{fs.path} records no image collection (it was featurized from images in memory); reopen it with "
            "TRAKAttributor.fit(train, store=...)."
        )
    if not fs.is_complete:
        raise DataError(
            f"{fs.path} is unfinished ({fs.n_done} of {fs.n_shards} shards); finish it first: run the same "
            "'genprov trak featurize' command again (or featurize_collection)."
        )
    return fs, recorded


def open_recorded_collection(store: StoreLike) -> ImageCollection:
    """The image collection a finished store of :func:`featurize_collection` was featurized from, opened and checked
    unchanged (its length and cheap fingerprint); read the images a report shows with ``read(i, i + 1)``.

    Raises:
        DataError: No store there, one without a recorded collection or unfinished, or a collection that moved or
            changed since.
    """
    fs, recorded = _finished_collection_store(store)
    images = open_collection(recorded, refresh=True)  # listed again: refuses another length
    found = images.fingerprint()
    if found != recorded.fingerprint:
        raise DataError(
            f"{fs.path} was featurized from the collection {recorded.source} (fingerprint {recorded.fingerprint}) but "
            f"its files now have fingerprint {found}: they changed since. Restore them, or featurize again into "
            "another store."
        )
    return images


def fit_recorded_store(attributor: TRAKAttributor, store: StoreLike) -> CollectionSpec:
    """Fit ``attributor`` on a finished store of :func:`featurize_collection` without opening its collection: for a
    store whose images were checked when they were copied beside it (a service workspace entry); elsewhere use
    :func:`fit_collection_store`, which checks the collection.

    Returns:
        The collection the store records (its ``length`` is the number of training images).

    Raises:
        DataError: No store there, one without a recorded collection, or unfinished.
        StoreMismatchError: The store holds features of another config or model.
    """
    fs, recorded = _finished_collection_store(store)
    assert recorded.shape is not None and recorded.length is not None  # checked by _finished_collection_store
    probe = torch.zeros(1, *recorded.shape)
    spec = attributor.store_spec(probe, data_fingerprint=collection_key(recorded))
    info = {COLLECTION_INFO: recorded.to_dict()}
    checked = attributor.create_store(fs.path, probe, spec, n_rows=recorded.length, info=info)  # no write
    _fit_on(attributor, checked)
    return recorded


def fit_collection_store(attributor: TRAKAttributor, store: StoreLike) -> ImageCollection:
    """Fit ``attributor`` on a finished store of :func:`featurize_collection` without featurizing or reading its
    images; the recorded collection must still be there, unchanged (its length and cheap fingerprint).

    Args:
        attributor: An attributor of the store's model and config (scoring settings may differ).
        store: The store folder (or :class:`FeatureStore`).

    Returns:
        The collection, opened (read the images a report shows with ``read(i, i + 1)``).

    Raises:
        DataError: No store there, one without a recorded collection or unfinished, or a collection that moved or
            changed since.
        StoreMismatchError: The store holds features of another config or model.
    """
    images = open_recorded_collection(store)
    fit_recorded_store(attributor, store)
    return images


def started_from_collection(store: str | os.PathLike[str]) -> bool | None:
    """Whether the (finished or not) store at ``store`` was started by :func:`featurize_collection` (``True``) or
    from images in memory (``False``); ``None`` when no store is there yet."""
    path = Path(store)
    if not (path / MANIFEST_FILE).is_file():
        return None
    return COLLECTION_INFO in read_manifest(path).info
