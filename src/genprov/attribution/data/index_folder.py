"""Similarity index folders: featurize a training set once, record how to rebuild the attributor, reopen it.

An index folder holds the :class:`~genprov.storage.FeatureIndex` of a :class:`SimilarityAttributor` and
:data:`INDEX_INFO` (``similarity.json``): the extractor's name, config and weights file, the tuned mapper and
its calibration, the search config, the image size and channels, and the training data's
:func:`~genprov.data.load_dataset` arguments. ``genprov similarity index`` / ``query`` and the service's
``similarity`` entries read and write it through the functions here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from genprov.attribution.data.extractors import (
    FEATURE_EXTRACTORS,
    ClassifierExtractor,
    FeatureExtractor,
    SimCLRConfig,
    SimCLRExtractor,
)
from genprov.attribution.data.mapper import FeatureMapper
from genprov.attribution.data.similarity import SimilarityAttributor, SimilarityConfig, SoftCalibration
from genprov.data import ImageDataset, load_dataset
from genprov.exceptions import ConfigError, DataError
from genprov.storage import INDEX_FILE, FeatureIndex
from genprov.utils.io import atomic_write_json

__all__ = [
    "INDEX_INFO",
    "attributor_from_info",
    "build_similarity_index",
    "extractor_from_spec",
    "open_similarity_index",
    "read_index_info",
]

#: The file in a similarity index folder that says how to rebuild its attributor (CLI and service).
INDEX_INFO = "similarity.json"
_INFO_FORMAT = 1


def extractor_from_spec(
    name: str, config: Mapping[str, Any] | None = None, *, weights: str | None = None
) -> FeatureExtractor:
    """Build a registered extractor from its name, config dict and weights file.

    Args:
        name: A :data:`FEATURE_EXTRACTORS` name.
        config: Its config as a dict (``to_dict()`` form).
        weights: ``classifier``: a classifier checkpoint folder; ``simclr``: a saved encoder
            (``SimCLRExtractor.save``); ``local-weights`` / ``efficientnet-lite0``: a weights file.

    Raises:
        ConfigError: Unknown name or config key; ``simclr`` without weights.
    """
    values = dict(config or {})
    if name == "simclr":
        if not weights:
            raise ConfigError("the simclr extractor needs its trained encoder: pass --checkpoint FILE.safetensors.")
        return SimCLRExtractor.load(weights)
    if weights:
        key = {"classifier": "checkpoint", "local-weights": "path", "efficientnet-lite0": "weights"}.get(name)
        if key is None:
            raise ConfigError(f"the {name} extractor takes no weights file; drop --checkpoint.")
        values[key] = str(weights)
    return FEATURE_EXTRACTORS.create(name, config=values)


def read_index_info(store: str | Path) -> dict[str, Any]:
    """The :data:`INDEX_INFO` of a similarity index folder.

    Raises:
        DataError: The folder or its info file is missing or unreadable (names the fix).
    """
    folder = Path(store)
    file = folder / INDEX_INFO
    if not folder.is_dir():
        raise DataError(f"Similarity index {folder} does not exist; build it with 'genprov similarity index'.")
    if not file.is_file():
        raise DataError(
            f"{folder} is not a similarity index or is empty ({INDEX_INFO} is missing); build it with "
            "'genprov similarity index --extractor NAME --data DATA --store DIR'."
        )
    try:
        info = json.loads(file.read_text())
    except ValueError as err:  # unreadable (OSError) is no corruption: reported as such
        raise DataError(f"Cannot read {file}: {err}. Rebuild the index.") from err
    for key in ("extractor", "extractor_config", "image_size", "channels", "data"):
        if key not in info:
            raise DataError(f"{file} lacks {key!r}; it was not written by 'genprov similarity index'. Rebuild it.")
    return dict(info)


def attributor_from_info(info: Mapping[str, Any]) -> SimilarityAttributor:
    """An unfitted attributor from an index's info (extractor, weights, mapper, calibration, search config)."""
    extractor = extractor_from_spec(info["extractor"], info["extractor_config"], weights=info.get("weights"))
    mapper = FeatureMapper.load(info["mapper"]) if info.get("mapper") else None
    attributor = SimilarityAttributor(
        extractor, SimilarityConfig.from_dict(info.get("similarity_config", {})), mapper=mapper
    )
    if info.get("calibration"):
        cal = info["calibration"]
        attributor.calibration_ = SoftCalibration(
            float(cal["inv_tau"]), float(cal["bias"]), cal.get("nll"), int(cal.get("n_queries", 0))
        )
    return attributor


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
) -> tuple[SimilarityAttributor, ImageDataset, dict[str, Any]]:
    """Featurize a training set into a (resumable) index folder and record how to rebuild it.

    Args:
        extractor: A :data:`FEATURE_EXTRACTORS` name.
        store: The index folder.
        data: The training data: ``{"name", "split", "n", "seed", "resize", "data_root"}`` (``load_dataset``
            arguments); a ``classifier`` without ``resize`` uses the classifier's image size.
        extractor_config: The extractor's config changes.
        weights: See :func:`extractor_from_spec`; a ``simclr`` extractor without weights is trained on the
            training set first (saved as ``store/simclr.safetensors``).
        mapper: A tuned :class:`FeatureMapper` file (``genprov similarity tune``); its ``.json`` sidecar's
            calibration, if any, is recorded.
        similarity_config: :class:`SimilarityConfig` changes.
        faiss: Also build (and save) a FAISS HNSW index for interactive search.
        show_progress: Progress bars.

    Returns:
        ``(attributor, training data, info)``; ``info`` is also written to ``store/similarity.json``.
    """
    folder = Path(store)
    spec = {"split": "train", "n": None, "seed": 0, "resize": None, "data_root": None, **dict(data)}
    config = dict(extractor_config or {})
    if extractor == "simclr" and not weights:
        train = _load_training_data(spec)
        folder.mkdir(parents=True, exist_ok=True)
        file = folder / "simclr.safetensors"
        if not file.is_file():
            SimCLRExtractor(SimCLRConfig.from_dict(config)).fit(train.images, show_progress=show_progress).save(file)
        weights = str(file)
    ext = extractor_from_spec(extractor, config, weights=weights)
    if isinstance(ext, ClassifierExtractor) and spec["resize"] is None:
        model_cfg = getattr(ext._model(), "config", None)
        spec["resize"] = getattr(model_cfg, "image_size", None)
    train = _load_training_data(spec)
    tuned = FeatureMapper.load(mapper) if mapper else None
    sim_cfg = SimilarityConfig.from_dict(dict(similarity_config or {}))
    attributor = SimilarityAttributor(ext, sim_cfg, mapper=tuned).fit(train, store=folder, show_progress=show_progress)
    calibration = None
    if mapper:
        sidecar = Path(f"{mapper}.json")
        if sidecar.is_file():
            calibration = json.loads(sidecar.read_text()).get("calibration")
    if calibration:
        attributor.calibration_ = SoftCalibration(float(calibration["inv_tau"]), float(calibration["bias"]))
    if faiss and attributor.index_ is not None:
        attributor.index_.build_faiss("hnsw")
    info = {
        "format": _INFO_FORMAT,
        "extractor": extractor,
        "extractor_config": ext.config.to_dict(),
        "weights": str(Path(weights).resolve()) if weights else None,
        "mapper": str(Path(mapper).resolve()) if mapper else None,
        "calibration": calibration,
        "similarity_config": sim_cfg.to_dict(),
        "image_size": int(train.image_size),
        "channels": int(train.n_channels),
        "n_train": len(train),
        "data": {**spec, "data_root": str(spec["data_root"]) if spec["data_root"] is not None else None},
        "method": attributor.method,
    }
    atomic_write_json(folder / INDEX_INFO, info)
    return attributor, train, info


def open_similarity_index(
    store: str | Path, *, similarity_config: Mapping[str, Any] | None = None
) -> tuple[SimilarityAttributor, ImageDataset, dict[str, Any]]:
    """Rebuild the attributor of an index folder written by :func:`build_similarity_index` (no featurizing).

    Args:
        store: The index folder.
        similarity_config: Search-time :class:`SimilarityConfig` changes (e.g. ``{"search": "faiss"}``).

    Raises:
        DataError: No index there, an empty or unfinished one, or training data that no longer matches.
    """
    info = read_index_info(store)
    if similarity_config:
        info["similarity_config"] = {**info.get("similarity_config", {}), **dict(similarity_config)}
    if not (Path(store) / INDEX_FILE).is_file():
        raise DataError(
            f"The similarity index at {store} has no features yet (an interrupted build?); run the same "
            "'genprov similarity index' command again to finish it."
        )
    index = FeatureIndex.open(store)
    if not index.segments or not index.is_complete:
        raise DataError(
            f"The similarity index at {store} is empty or unfinished ({index.n_rows} rows ready); run the same "
            "'genprov similarity index' command again to finish it."
        )
    train = _load_training_data(info["data"])
    if index.n_rows != len(train):
        raise DataError(
            f"{store} holds {index.n_rows} rows but its training data {info['data']} now has {len(train)} images; "
            "rebuild the index."
        )
    attributor = attributor_from_info(info)
    calibration = attributor.calibration_
    attributor.fit(train, store=index, show_progress=False)  # reuses the finished index (checks the spec)
    if calibration is not None:
        attributor.calibration_ = calibration
    return attributor, train, info
