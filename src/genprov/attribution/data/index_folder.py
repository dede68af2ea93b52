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
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from genprov.attribution.data.extractors import ClassifierExtractor, SimCLRConfig, SimCLRExtractor
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
from genprov.data import ImageDataset, load_dataset
from genprov.exceptions import DataError
from genprov.models.artifact import CONFIG_FILE, ArtifactRecord, read_artifact
from genprov.storage import FAISS_KINDS

__all__ = [
    "build_similarity_index",
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
    spec = {"split": "train", "n": None, "seed": 0, "resize": None, "data_root": None, **dict(data)}
    config = dict(extractor_config or {})
    if extractor == "simclr" and not weights:
        train = _load_training_data(spec)
        folder.mkdir(parents=True, exist_ok=True)
        trained = folder / SIMCLR_DIR
        if not (trained / CONFIG_FILE).is_file():
            encoder = SimCLRExtractor(SimCLRConfig.from_dict(config)).fit(train.images, show_progress=show_progress)
            encoder.save_pretrained(trained)
        weights = str(trained)
    ext = extractor_from_spec(extractor, config, weights=weights)
    if isinstance(ext, ClassifierExtractor) and spec["resize"] is None:
        model_cfg = getattr(ext._model(), "config", None)
        spec["resize"] = getattr(model_cfg, "image_size", None)
    train = _load_training_data(spec)
    tuned = FeatureMapper.from_pretrained(mapper) if mapper else None
    sim_cfg = SimilarityConfig.from_dict(dict(similarity_config or {}))
    attributor = SimilarityAttributor(ext, sim_cfg, mapper=tuned, weights=weights)
    attributor.fit(train, store=folder, show_progress=show_progress)
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
    return attributor, train, read_index_info(folder)


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
    train = _load_training_data(data)
    if attributor.n_train_ != len(train):
        raise DataError(
            f"{store} holds {attributor.n_train_} rows but its training data {data} now has {len(train)} images; "
            "rebuild the index."
        )
    attributor.fit(train, store=attributor.index_, show_progress=False)  # reuses the index; checks spec and data
    return attributor, train, record
