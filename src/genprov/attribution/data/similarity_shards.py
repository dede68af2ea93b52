"""Similarity embedding of an image collection shard by shard on a backend (:mod:`genprov.storage.shards`).

:class:`SimilarityShardTask` computes the index rows ``[start, stop)``: it reads those images from the collection
itself (:func:`genprov.data.collections.open_collection`) and embeds them with a :class:`SimilarityAttributor`
rebuilt in the worker from the extractor's name, config and weights (a checkpoint folder, weights file or saved
extractor artefact such as a trained SimCLR encoder) and the tuned mapper's folder, once per worker process. The
rebuilt attributor's store spec (the extractor's and mapper's weight fingerprints) is checked against the one the
index was created with, so weights changed since the driver opened them are refused. The driver
(:func:`genprov.attribution.data.index_folder.index_collection`) writes the rows with
:func:`~genprov.storage.shards.run_index_shards`, so they are bit-identical to ``SimilarityAttributor.fit`` in one
process, whatever the backend, the number of workers and the order in which shards finish (given the same torch
threads per worker as the driver).

The index's segment key (its data fingerprint) is :func:`~genprov.data.collections.collection_key`: the pixels' fingerprint for a
built-in data set (the key an in-memory fit records, so such an index is the one ``fit`` builds), else ``collection:`` and
the collection's cheap fingerprint (names and byte sizes of its files, its length and reading settings).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from genprov.attribution.data.mapper import FeatureMapper
from genprov.attribution.data.similarity import SimilarityAttributor, SimilarityConfig, extractor_from_spec
from genprov.data.collections import CollectionSpec, open_collection
from genprov.exceptions import StoreMismatchError
from genprov.storage import spec_differences

__all__ = ["SimilarityShardTask"]

#: Attributors rebuilt in this (worker) process, keyed by the task's rebuild settings.
_WORKER_ATTRIBUTORS: dict[str, SimilarityAttributor] = {}


@dataclasses.dataclass
class SimilarityShardTask:
    """Similarity features of images ``[start, stop)`` of a collection: ``{"features": (stop - start, d) float32}``.

    Picklable and small: the collection travels as its spec, the extractor as its name, config and weights place.

    Attributes:
        extractor: A ``FEATURE_EXTRACTORS`` name.
        extractor_config: Its config (``to_dict()`` form, weights places included).
        weights: Its weights (see :func:`~genprov.attribution.data.similarity.extractor_from_spec`), absolute.
        mapper: The tuned mapper's folder (absolute), or ``None``.
        similarity_config: The :class:`SimilarityConfig` (``to_dict()``).
        collection: The resolved collection.
        spec: The index's spec (``SimilarityAttributor.store_spec``), checked on the worker.
    """

    extractor: str
    extractor_config: dict[str, Any]
    weights: str | None
    mapper: str | None
    similarity_config: dict[str, Any]
    collection: CollectionSpec
    spec: dict[str, Any]
    local: SimilarityAttributor | None = dataclasses.field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the driver's own attributor (workers rebuild theirs)."""
        return {**self.__dict__, "local": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def attributor(self) -> SimilarityAttributor:
        """The driver's attributor, else this worker's, rebuilt once and checked against the index's spec.

        Raises:
            StoreMismatchError: The extractor's or mapper's weights are not those the index was created with.
        """
        if self.local is not None:
            return self.local
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("collection", "local")}
        key = json.dumps(fields, sort_keys=True, default=str)
        attributor = _WORKER_ATTRIBUTORS.get(key)
        if attributor is None:
            ext = extractor_from_spec(self.extractor, self.extractor_config, weights=self.weights)
            mapper = FeatureMapper.from_pretrained(self.mapper) if self.mapper else None
            config = SimilarityConfig.from_dict(self.similarity_config)
            attributor = SimilarityAttributor(ext, config, mapper=mapper, weights=self.weights)
            found = attributor.store_spec(_empty(self.spec))
            differences = spec_differences(self.spec, found)
            if differences:
                raise StoreMismatchError(
                    f"The {self.extractor} extractor (weights {self.weights}, mapper {self.mapper}) rebuilt on the worker "
                    f"differs from the one the index was created with ({', '.join(differences)} differ): the files "
                    "changed since the driver opened them; restore them, or build a new index."
                )
            _WORKER_ATTRIBUTORS[key] = attributor
        return attributor

    def __call__(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """The features of images ``[start, stop)`` (read here from the collection)."""
        images = open_collection(self.collection).read(start, stop)
        return {"features": self.attributor().featurize(images).numpy()}


def _empty(spec: dict[str, Any]) -> Any:
    """An empty image batch of the spec's image shape (what ``store_spec`` reads of its argument)."""
    import torch

    return torch.empty(0, *(int(v) for v in spec["image_shape"]))
