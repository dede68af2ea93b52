"""Similarity index folders: featurize a training set once, record how to rebuild the attributor, reopen it.

An index folder holds the :class:`~genprov.storage.FeatureIndex` of a :class:`SimilarityAttributor` and its
one record, the artefact ``config.json`` (kind ``similarity-index``, written by
:meth:`SimilarityAttributor.save_pretrained`): the extractor's name and config, where its weights are
(relative to the folder) and their content fingerprint, the tuned mapper (saved in ``mapper/``) and its
calibration, the search config, the image shape, the training data's :func:`~genprov.data.load_dataset`
arguments and fingerprint. ``SimilarityAttributor.from_pretrained(folder)`` reopens it without the training
data; :func:`open_similarity_index` also reloads the training images (and checks their fingerprint).
Folders written before the artefact format (``similarity.json``) are read the same way.
``genprov similarity index`` / ``tune`` / ``query`` and the service's ``similarity`` entries use the
functions here.

:func:`index_collection` builds the same folder from an image collection (:mod:`genprov.data.collections`: a
data set, an image folder, tar shards, parquet, an ``.npz``, an LMDB) shard by shard on a backend (in this process
or Ray tasks, :mod:`genprov.storage.shards`): the shard tasks read their images themselves, so this process never
holds them; the features are bit-identical to :func:`build_similarity_index`'s. The index records the
``load_dataset``-style arguments of the collection and, as its data fingerprint, the collection's key
(:func:`~genprov.data.collections.collection_key`), which a resumed build and
:func:`open_similarity_index` check.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from genprov.attribution.data.extractors import ClassifierExtractor, FeatureExtractor, SimCLRConfig, SimCLRExtractor
from genprov.attribution.data.mapper import FeatureMapper
from genprov.attribution.data.similarity import (
    ARTIFACT_KIND,
    LEGACY_INFO,
    SimilarityAttributor,
    SimilarityConfig,
    SoftCalibration,
    extractor_from_spec,
    legacy_index_layout,
)
from genprov.attribution.data.similarity_shards import SimilarityShardTask
from genprov.data import ImageDataset, load_dataset
from genprov.data.collections import (
    ImageCollection,
    collection_key,
    collection_spec,
    is_collection_key,
    open_collection,
    resolve_collection,
)
from genprov.exceptions import DataError, StoreMismatchError
from genprov.models.artifact import CONFIG_FILE, ArtifactRecord, read_artifact
from genprov.storage import FAISS_KINDS, FeatureIndex
from genprov.storage.shards import Backend, InProcessBackend, run_index_shards

__all__ = [
    "build_similarity_index",
    "index_collection",
    "open_similarity_index",
    "read_index_info",
]

#: The sub-folder of an index holding the SimCLR encoder trained for it (an extractor artefact).
SIMCLR_DIR = "simclr"


def read_index_info(store: str | Path) -> ArtifactRecord:
    """The record of a similarity index folder (its ``config.json``, or an upgraded ``similarity.json``).

    ``record.state`` holds ``extractor`` (``name``, ``config``, ``weights``), ``mapper``, ``calibration``,
    ``image_shape``, ``n_train``, ``data``, ``data_fingerprint`` and ``spec``; ``record.config`` the
    :class:`SimilarityConfig`.

    Raises:
        DataError: The folder or its record is missing (names the fix).
        CheckpointError: An unreadable record, or one of a format or version this genprov does not read.
    """
    folder = Path(store)
    if not folder.is_dir():
        raise DataError(f"Similarity index {folder} does not exist; build it with 'genprov similarity index'.")
    if not (folder / CONFIG_FILE).is_file() and not (folder / LEGACY_INFO).is_file():
        raise DataError(
            f"{folder} is not a similarity index or is empty ({CONFIG_FILE} is missing); build it with "
            "'genprov similarity index --extractor NAME --data DATA --store DIR'."
        )
    return read_artifact(folder, ARTIFACT_KIND, legacy_layout=legacy_index_layout)[0]


def _load_training_data(spec: Mapping[str, Any]) -> ImageDataset:
    return load_dataset(
        spec["name"],
        split=spec.get("split", "train"),
        data_root=spec.get("data_root"),
        resize=spec.get("resize"),
        n=spec.get("n"),
        seed=int(spec.get("seed", 0)),
    )


def _collection(spec: Mapping[str, Any]) -> ImageCollection:
    """The (resolved) collection of the training data arguments ``spec`` (``load_dataset``'s)."""
    return open_collection(
        resolve_collection(
            collection_spec(
                str(spec["name"]),
                split=spec.get("split", "train"),
                n=spec.get("n"),
                seed=int(spec.get("seed", 0)),
                size=spec.get("resize"),
                data_root=spec.get("data_root"),
            )
        )
    )


def _data_spec(data: Mapping[str, Any]) -> dict[str, Any]:
    """The training data arguments with their defaults."""
    return {"split": "train", "n": None, "seed": 0, "resize": None, "data_root": None, **dict(data)}


def _extractor(
    extractor: str,
    folder: Path,
    spec: dict[str, Any],
    config: dict[str, Any],
    weights: str | None,
    training_images: Callable[[], Any],
    show_progress: bool | None,
) -> tuple[FeatureExtractor, str | None]:
    """The extractor and its weights' place; a ``simclr`` one without weights is trained on ``training_images()``
    first (saved as ``folder/simclr``); a classifier's image size becomes ``spec["resize"]`` when none is given."""
    if extractor == "simclr" and not weights:
        folder.mkdir(parents=True, exist_ok=True)
        trained = folder / SIMCLR_DIR
        if not (trained / CONFIG_FILE).is_file():
            encoder = SimCLRExtractor(SimCLRConfig.from_dict(config)).fit(
                training_images(), show_progress=show_progress
            )
            encoder.save_pretrained(trained)
        weights = str(trained)
    ext = extractor_from_spec(extractor, config, weights=weights)
    if isinstance(ext, ClassifierExtractor) and spec["resize"] is None:
        model_cfg = getattr(ext._model(), "config", None)
        spec["resize"] = getattr(model_cfg, "image_size", None)
    return ext, weights


def _finish_index(
    attributor: SimilarityAttributor,
    folder: Path,
    spec: Mapping[str, Any],
    mapper: str | None,
    sim_cfg: SimilarityConfig,
    faiss: bool,
) -> ArtifactRecord:
    """Calibration from the mapper's sidecar, the FAISS index when asked for, then the record ``config.json``."""
    sidecar = Path(f"{mapper}.json")
    calibration = json.loads(sidecar.read_text()).get("calibration") if mapper and sidecar.is_file() else None
    if calibration:
        attributor.calibration_ = SoftCalibration(
            float(calibration["inv_tau"]),
            float(calibration["bias"]),
            calibration.get("nll"),
            int(calibration.get("n_queries") or 0),
        )
    kind = sim_cfg.search if sim_cfg.search in FAISS_KINDS else "hnsw"
    if (faiss or sim_cfg.search in FAISS_KINDS) and attributor.index_ is not None:
        probe: dict[str, Any] = {} if sim_cfg.n_probe is None else {"n_probe": sim_cfg.n_probe}
        attributor.index_.build_faiss(kind, seed=int(spec["seed"]), **probe)
    data_root = spec["data_root"]
    attributor.save_pretrained(folder, data={**spec, "data_root": str(data_root) if data_root is not None else None})
    return read_index_info(folder)


def build_similarity_index(
    extractor: str,
    store: str | Path,
    data: Mapping[str, Any],
    *,
    extractor_config: Mapping[str, Any] | None = None,
    weights: str | None = None,
    mapper: str | None = None,
    similarity_config: Mapping[str, Any] | None = None,
    faiss: bool = False,
    show_progress: bool | None = None,
) -> tuple[SimilarityAttributor, ImageDataset, ArtifactRecord]:
    """Featurize a training set into a (resumable) index folder and record how to rebuild it.

    Args:
        extractor: A :data:`FEATURE_EXTRACTORS` name.
        store: The index folder.
        data: The training data: ``{"name", "split", "n", "seed", "resize", "data_root"}`` (``load_dataset``
            arguments); a ``classifier`` without ``resize`` uses the classifier's image size.
        extractor_config: The extractor's config changes.
        weights: See :func:`~genprov.attribution.data.similarity.extractor_from_spec`; a ``simclr``
            extractor without weights is trained on the training set first (saved as the artefact
            ``store/simclr``).
        mapper: A tuned :class:`FeatureMapper` (``genprov similarity tune``: an artefact folder, or a file of
            the format before), copied into ``store/mapper``; its ``.json`` sidecar's calibration, if any, is
            recorded.
        similarity_config: :class:`SimilarityConfig` changes.
        faiss: Also build (and save) a FAISS index for interactive search: of the kind ``search`` names in
            ``similarity_config`` (``"hnsw"`` or ``"ivfpq"``), HNSW otherwise. ``search`` ``"hnsw"`` or
            ``"ivfpq"`` builds it without ``faiss`` (a saved one with the same settings and rows is reused).
        show_progress: Progress bars.

    Returns:
        ``(attributor, training data, record)``: the record is ``store/config.json`` (see :func:`read_index_info`).
    """
    folder = Path(store)
    spec = _data_spec(data)
    config = dict(extractor_config or {})
    ext, weights = _extractor(
        extractor, folder, spec, config, weights, lambda: _load_training_data(spec).images, show_progress
    )
    train = _load_training_data(spec)
    tuned = FeatureMapper.from_pretrained(mapper) if mapper else None
    sim_cfg = SimilarityConfig.from_dict(dict(similarity_config or {}))
    attributor = SimilarityAttributor(ext, sim_cfg, mapper=tuned, weights=weights)
    attributor.fit(train, store=folder, show_progress=show_progress)
    return attributor, train, _finish_index(attributor, folder, spec, mapper, sim_cfg, faiss)


def index_collection(
    extractor: str,
    store: str | Path,
    data: Mapping[str, Any],
    backend: Backend | None = None,
    *,
    extractor_config: Mapping[str, Any] | None = None,
    weights: str | None = None,
    mapper: str | None = None,
    similarity_config: Mapping[str, Any] | None = None,
    faiss: bool = False,
    show_progress: bool | None = None,
) -> tuple[SimilarityAttributor, ImageCollection, ArtifactRecord]:
    """:func:`build_similarity_index` over an image collection, shard by shard on ``backend``; resumable.

    The shard tasks (:class:`~genprov.attribution.data.similarity_shards.SimilarityShardTask`) read their images
    from the collection and rebuild the extractor (and mapper) in their worker; this process reads one image (for
    the feature dimension) and writes the rows as shards finish (:func:`~genprov.storage.shards.run_index_shards`,
    one driver per index). A build killed midway resumes with the missing shards only; one on another collection
    (another length or fingerprint) is refused. The features are bit-identical to :func:`build_similarity_index`'s.

    Args:
        extractor, store, extractor_config, weights, mapper, similarity_config, faiss, show_progress: As
            :func:`build_similarity_index` (a ``simclr`` extractor without weights is trained on the whole
            collection in this process first: pass trained weights for a large one).
        data: ``{"name", "split", "n", "seed", "resize", "data_root"}``, ``name`` any collection source
            (:func:`~genprov.data.collections.collection_spec`: a data set name, an image folder, tar shards as
            ``a-{000..009}.tar`` or a list file, parquet files, an ``.npz``, an LMDB folder).
        backend: Where the shards run (default :class:`~genprov.storage.shards.InProcessBackend`).

    Returns:
        ``(attributor, collection, record)``.

    Raises:
        StoreLockedError: Another driver is filling the index.
        StoreMismatchError: The index holds features of another extractor, mapper or collection.
    """
    folder = Path(store)
    spec = _data_spec(data)
    config = dict(extractor_config or {})

    def whole() -> Any:
        images = _collection(spec)
        return images.read(0, len(images))

    ext, weights = _extractor(extractor, folder, spec, config, weights, whole, show_progress)
    images = _collection(spec)
    key, n = collection_key(images.spec), len(images)
    tuned = FeatureMapper.from_pretrained(mapper) if mapper else None
    sim_cfg = SimilarityConfig.from_dict(dict(similarity_config or {}))
    attributor = SimilarityAttributor(ext, sim_cfg, mapper=tuned, weights=weights)
    assert images.spec.shape is not None
    shape = images.spec.shape
    dim = int(attributor.featurize(images.read(0, 1)).shape[1])
    index_spec = attributor.store_spec(torch.empty(0, *shape))
    index = FeatureIndex.create(folder, dim=dim, metric=sim_cfg.metric, spec=index_spec)
    segments = index.segments
    if segments and (segments[0]["key"] != key or int(segments[0]["n_rows"]) != n):
        raise StoreMismatchError(
            f"{index.path} holds (or was started on) features of another training set ({segments[0]['n_rows']} images, "
            f"data fingerprint {segments[0]['key']}); the collection {images.spec.source} has {n} images, {key}. Use "
            "another folder, or restore the collection it was started on."
        )
    if not segments or not index.is_complete:
        task = SimilarityShardTask(
            extractor=extractor,
            extractor_config=config,
            weights=str(Path(weights).resolve()) if weights else None,
            mapper=str(Path(mapper).resolve()) if mapper else None,
            similarity_config=sim_cfg.to_dict(),
            collection=images.spec,
            spec=index_spec,
            local=attributor if backend is None or isinstance(backend, InProcessBackend) else None,
        )
        run_index_shards(
            index,
            n,
            task,
            backend,
            key=key,
            shard_size=sim_cfg.shard_size,
            desc=f"{attributor.method} features",
            show_progress=show_progress,
        )
    attributor.image_shape_ = (int(shape[0]), int(shape[1]), int(shape[2]))
    attributor.data_fingerprint_ = key
    attributor.calibration_ = SoftCalibration(sim_cfg.inv_tau, sim_cfg.bias)
    attributor.index_ = index
    attributor.train_features_ = None
    attributor.n_train_ = index.n_rows
    return attributor, images, _finish_index(attributor, folder, spec, mapper, sim_cfg, faiss)


def open_similarity_index(
    store: str | Path, *, similarity_config: Mapping[str, Any] | None = None
) -> tuple[SimilarityAttributor, ImageDataset, ArtifactRecord]:
    """Reopen the attributor of an index folder and reload its training images (no featurizing).

    Args:
        store: The index folder.
        similarity_config: Search-time :class:`SimilarityConfig` changes (e.g. ``{"search": "faiss"}``).

    Returns:
        ``(attributor, training data, record)`` (see :func:`read_index_info`).

    Raises:
        DataError: No index there, an empty or unfinished one, or training data that no longer matches.
        CheckpointError: Its extractor weights or mapper are missing or changed.
    """
    record = read_index_info(store)
    attributor = SimilarityAttributor.from_pretrained(store)
    if similarity_config:
        attributor.config = attributor.config.replace(**similarity_config)
    data = record.state.get("data")
    if not data:
        raise DataError(
            f"{store} does not record its training data; reopen it with SimilarityAttributor.from_pretrained."
        )
    if is_collection_key(attributor.data_fingerprint_):
        return attributor, _collection_training_data(store, data, attributor), record
    train = _load_training_data(data)
    if attributor.n_train_ != len(train):
        raise DataError(
            f"{store} holds {attributor.n_train_} rows but its training data {data} now has {len(train)} images; "
            "rebuild the index."
        )
    attributor.fit(train, store=attributor.index_, show_progress=False)  # reuses the index; checks spec and data
    return attributor, train, record


def _collection_training_data(
    store: str | Path, data: Mapping[str, Any], attributor: SimilarityAttributor
) -> ImageDataset:
    """The images of an index built from a collection (:func:`index_collection`), after checking that the
    collection is still the one indexed (its length and fingerprint); read whole (for galleries)."""
    images = _collection(_data_spec(data))
    key = collection_key(images.spec)
    if len(images) != attributor.n_train_ or key != attributor.data_fingerprint_:
        raise DataError(
            f"{store} indexes the collection {data.get('name')} ({attributor.n_train_} images, fingerprint "
            f"{attributor.data_fingerprint_}) but it now holds {len(images)} images with fingerprint {key}; restore it "
            "or rebuild the index."
        )
    return ImageDataset(images.read(0, len(images)), None, str(data.get("name")))
