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
fingerprint against the store's, so a checkpoint changed since the driver opened it is refused. A task's examples
may be a resolved :class:`~genprov.data.collections.CollectionSpec` instead of the images: each task then reads
its own range of the collection (an image folder, tar shards, parquet, ...), and the images never travel to the
workers.

Example:
    >>> ddpm = load_checkpoint("runs/ddpm").model  # doctest: +SKIP
    >>> attributor = TRAKAttributor(ddpm, config=TRAKConfig(output_function="squared-l2-norm"))  # doctest: +SKIP
    >>> featurize_sharded(attributor, train, "runs/dtrak", RayBackend(address="auto", workers=8))  # doctest: +SKIP
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
from genprov.data.collections import CollectionSpec, open_collection
from genprov.data.conditioned import ConditionedExamples
from genprov.exceptions import StoreMismatchError
from genprov.models.checkpoints import checkpoint_source, load_checkpoint
from genprov.storage import FeatureStore, fingerprint_state
from genprov.storage.shards import Backend, InProcessBackend, run_shards

__all__ = ["ModelSource", "TRAKShardTask", "featurize_sharded"]

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
    cfg = attributor.config
    path = store if isinstance(store, FeatureStore) else Path(str(store))
    fs = attributor.create_store(path, images, spec)  # the one fit fills, so fit below only reads it
    source = source if source is not None else ModelSource.of(attributor.model)
    task = TRAKShardTask(
        config=cfg,
        examples=images,
        fingerprint=str(spec["model_fingerprint"]),
        source=source,
        model=attributor.model if source is None else None,
        scheduler=None if source is not None and source.kind == "pipeline" else attributor.scheduler,
        local=attributor if backend is None or isinstance(backend, InProcessBackend) else None,
    )
    run_shards(fs, task, backend, desc=f"{attributor.method} features", show_progress=show_progress)
    return attributor.fit(train, store=fs.path, show_progress=False)
