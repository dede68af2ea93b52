"""Scoring a large suspect set with a fitted model attributor (FLIPAD or a baseline), shard by shard on a backend.

:func:`score_collection` scores every image of an image collection (:mod:`genprov.data.collections`: a folder,
tar shards, parquet, an ``.npz``, an LMDB, a data set) with a detector saved by ``genprov flipad fit``. Each
shard task, :class:`ScoreShardTask`, reads its range of the collection itself (resized and converted to the
detector's input as ``genprov flipad score`` reads files), reopens the detector artefact (and its generator: the
checkpoint its ``config.json`` records, or a given GAN checkpoint or pipeline folder) once per worker process,
checks the detector's files against the driver's fingerprint, and returns the range's scores. The driver
(:func:`~genprov.storage.shards.run_shards`) writes them into a one-column feature store (a temporary one, or a
given folder, which makes the run resumable) and reads them back in order.

Scores are bit-identical to ``attributor.attribute(images)`` in one process: shards hold whole multiples of the
detector's ``batch_size`` (FISTA's batch inversion and the detector see the same batches), whatever the backend, the
number of workers and the order in which shards finish (given the same torch threads per worker as the driver).

The generator readers (:func:`load_gan_checkpoint`, :func:`open_generator`, :func:`open_detector`) are the ones
``genprov flipad`` uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from genprov.attribution.model.base import ModelAttributor
from genprov.data.collections import CollectionSpec, ImageCollection, open_collection, resolve_collection
from genprov.exceptions import CheckpointError, ConfigError, StoreMismatchError
from genprov.models.checkpoints import LoadedCheckpoint, load_checkpoint
from genprov.models.gans import GANConfig
from genprov.models.t2i import is_pipeline_folder, load_pipeline
from genprov.results import ModelAttributionResult
from genprov.storage import FeatureStore
from genprov.storage.shards import Backend, InProcessBackend, run_shards
from genprov.utils.checksums import file_sha256

__all__ = [
    "SCORE_SHARD_ROWS",
    "ScoreShardTask",
    "detector_fingerprint",
    "load_gan_checkpoint",
    "open_detector",
    "open_generator",
    "score_collection",
]

#: Images per scoring shard (rounded up to a multiple of the detector's batch size).
SCORE_SHARD_ROWS = 512

#: Detectors reopened in this (worker) process, keyed by folder, generator and fingerprint.
_WORKER_DETECTORS: dict[tuple[str, str | None, str], ModelAttributor] = {}


def load_gan_checkpoint(path: str | os.PathLike[str]) -> LoadedCheckpoint:
    """An image GAN checkpoint (what FLIPAD inverts).

    Raises:
        CheckpointError: The checkpoint holds another kind of model (names the command that trains a GAN).
    """
    ckpt = load_checkpoint(Path(path))
    if ckpt.kind != "gan" or not isinstance(ckpt.model_config, GANConfig):
        raise CheckpointError(
            f"{path} holds a {ckpt.kind!r} checkpoint; 'genprov flipad' works on image GANs (train one with "
            "'genprov train gan'). For tabular generators use the Python API "
            "(genprov.attribution.model.FinalLayerInversionAttributor)."
        )
    return ckpt


def open_generator(path: str | os.PathLike[str]) -> nn.Module:
    """The generator a detector studies: a GAN checkpoint's generator, or a text-to-image pipeline folder's VAE."""
    if is_pipeline_folder(path):
        vae: nn.Module = load_pipeline(path).vae
        return vae
    return load_gan_checkpoint(path).model


def open_detector(folder: str | os.PathLike[str], generator: str | os.PathLike[str] | None = None) -> ModelAttributor:
    """A fitted model attributor (``genprov flipad fit``), its generator reopened from ``generator`` (a GAN checkpoint
    or pipeline folder, whose weights are checked) or, when ``None``, from the checkpoint its ``config.json`` records."""
    module = open_generator(generator) if generator is not None else None
    return ModelAttributor.from_pretrained(Path(folder), module)


def detector_fingerprint(folder: str | os.PathLike[str]) -> str:
    """16 hex digits of SHA-256 over the names and bytes of a detector folder's files (small: config + state)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".")):
        digest.update(f"{file.name}\0".encode())
        file_sha256(file, digest)
    return digest.hexdigest()[:16]


@dataclasses.dataclass
class ScoreShardTask:
    """Scores of images ``[start, stop)`` of a collection: ``{"scores": (stop - start, 1) float32}``.

    Picklable and small: a worker reopens the detector from its folder (and generator) once per process.

    Attributes:
        detector: The detector folder (absolute).
        generator: The GAN checkpoint or pipeline folder to reopen its generator from (absolute), or ``None``: the
            checkpoint its ``config.json`` records.
        fingerprint: :func:`detector_fingerprint` of the detector the driver opened (checked on the worker).
        collection: The resolved collection, at the detector's image size and channels.
    """

    detector: str
    generator: str | None
    fingerprint: str
    collection: CollectionSpec
    local: ModelAttributor | None = dataclasses.field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the driver's own detector (workers reopen theirs)."""
        return {**self.__dict__, "local": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def attributor(self) -> ModelAttributor:
        """The driver's detector, else this worker's, reopened once after checking its files.

        Raises:
            StoreMismatchError: The detector folder changed since the driver opened it.
        """
        if self.local is not None:
            return self.local
        key = (self.detector, self.generator, self.fingerprint)
        attributor = _WORKER_DETECTORS.get(key)
        if attributor is None:
            found = detector_fingerprint(self.detector)
            if found != self.fingerprint:
                raise StoreMismatchError(
                    f"The detector {self.detector} has fingerprint {found} on this worker but {self.fingerprint} where "
                    "the run started: it changed since; restore it, or score again into a new store."
                )
            attributor = _WORKER_DETECTORS[key] = open_detector(self.detector, self.generator)
        return attributor

    def __call__(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """The scores of images ``[start, stop)`` (read here from the collection)."""
        images = open_collection(self.collection).read(start, stop)
        return {"scores": self.attributor().score_samples(images).numpy()[:, None]}


def score_collection(
    detector: str | os.PathLike[str],
    collection: CollectionSpec,
    backend: Backend | None = None,
    *,
    generator: str | os.PathLike[str] | None = None,
    store: str | os.PathLike[str] | None = None,
    shard_size: int = SCORE_SHARD_ROWS,
    attributor: ModelAttributor | None = None,
    show_progress: bool | None = None,
) -> tuple[ModelAttributionResult, ImageCollection]:
    """Score every image of ``collection`` with a saved detector, shard by shard on ``backend``.

    Equivalent to ``open_detector(detector, generator).attribute(images)`` with the images read as
    ``genprov flipad score`` reads files (resized to the detector's size, converted to its channels), bit for bit.

    Args:
        detector: The detector folder (``genprov flipad fit --out``).
        collection: The suspect images (:func:`~genprov.data.collections.collection_spec`); its ``size`` and
            ``channels`` are set to the detector's input.
        backend: Where the shards run (default :class:`~genprov.storage.shards.InProcessBackend`).
        generator: See :class:`ScoreShardTask`.
        store: Folder keeping the scores shard by shard: a run killed midway resumes there (default: a temporary one).
        shard_size: Images per shard, rounded up to a multiple of the detector's batch size.
        attributor: The detector, already opened from ``detector`` (default: opened here).
        show_progress: Progress bar over shards.

    Returns:
        ``(result, collection)``: the :class:`~genprov.results.ModelAttributionResult` in collection order, and the
        opened collection (for its image names).

    Raises:
        ConfigError: A detector of rows rather than images, or a non-positive ``shard_size``.
        StoreMismatchError: ``store`` holds scores of another detector or collection.
        StoreLockedError: Another driver is filling ``store``.
    """
    opened = attributor if attributor is not None else open_detector(detector, generator)
    shape = tuple(opened.input_shape_)
    if len(shape) != 3:
        raise ConfigError(f"{detector} scores {shape} rows, not images; score them with the Python API.")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ConfigError(f"shard_size must be a positive integer; got {shard_size!r}.")
    spec = dataclasses.replace(
        collection, size=int(shape[-1]), channels=int(shape[0]), length=None, shape=None, fingerprint=None
    )
    images = open_collection(resolve_collection(spec))
    batch = opened.config.batch_size
    rows = math.ceil(shard_size / batch) * batch
    fingerprint = detector_fingerprint(detector)
    task = ScoreShardTask(
        detector=str(Path(detector).resolve()),
        generator=str(Path(generator).resolve()) if generator is not None else None,
        fingerprint=fingerprint,
        collection=images.spec,
        local=opened if backend is None or isinstance(backend, InProcessBackend) else None,
    )
    store_spec = {
        "method": "model-attribution-scores",
        "detector": fingerprint,
        "input_shape": list(shape),
        "data_fingerprint": images.spec.fingerprint,
    }
    with _scores_folder(store) as folder:
        fs = FeatureStore.create(
            folder,
            n_rows=len(images),
            arrays={"scores": 1},
            spec=store_spec,
            shard_size=rows,
            info={"method": opened.name, "detector": str(detector), "collection": images.spec.source},
        )
        run_shards(fs, task, backend, desc=f"{opened.name} scores", show_progress=show_progress)
        scores = np.array(fs.read("scores")[:, 0], dtype=np.float64)
    result = ModelAttributionResult(
        method=opened.name,
        config=opened.config.to_dict(),
        scores=scores,
        verdicts=scores >= opened.threshold_,
        threshold=float(opened.threshold_),
    )
    return result, images


@contextlib.contextmanager
def _scores_folder(store: str | os.PathLike[str] | None) -> Iterator[Path]:
    """``store``, or a temporary folder removed afterwards."""
    if store is not None:
        yield Path(store)
        return
    with tempfile.TemporaryDirectory(prefix="genprov-scores-") as folder:
        yield Path(folder) / "scores"
