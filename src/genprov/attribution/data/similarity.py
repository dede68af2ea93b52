"""Data attribution by feature similarity, with calibrated soft attribution.

Method (Wang et al., ICCV 2023, "Evaluating data attribution for text-to-image models", sec. 4-6):

1. Features. A :class:`~genprov.attribution.data.extractors.FeatureExtractor` maps every training image to
   a feature vector (optionally through the training tower of a tuned
   :class:`~genprov.attribution.data.mapper.FeatureMapper`); the vectors go to a
   :class:`~genprov.storage.FeatureIndex` (sharded, resumable; a different extractor, mapper or data
   raises :class:`~genprov.exceptions.StoreMismatchError`) or stay in memory.
2. Scores. A query (generated image) is featurized the same way (query tower) and compared with every
   training image by cosine similarity: ``scores(queries)`` is the full exact (n_queries, n_train) matrix,
   higher = more similar = more influence. :meth:`SimilarityAttributor.attribute` searches the top-k
   exactly (chunked matmul over the memmap) or with FAISS candidates re-ranked exactly.
3. Soft attribution (sec. 6). Influence is shared among training images:
   ``p_i = w_i / sum_j w_j`` with ``w_i = relu(exp(inv_tau (s_i - max_j s_j)) + bias)``. The two scalars are
   fitted (:func:`fit_soft_calibration`, float64, grid search then L-BFGS) by the multi-positive likelihood
   of the exemplars of validation queries: ``NLL = mean_q mean_{i in P_q} -log p_i`` (each exemplar is
   treated as one draw from ``p``). Reported on held-out queries (:func:`evaluate_soft`): the NLL, the
   expected calibration error over each query's top N (confidence ``min(1, |P| p_i)`` against "is an
   exemplar"), and the "remaining influence" ``1 - sum of the top N shares``.

Higher scores mean more similar, read as more influence. The original code keeps the features of 1M LAION
images in memory and does one full matmul plus a full argsort per query; here search streams the memmap
in chunks and keeps a running top-k.

``fit(train, store=...)`` takes an index *folder* (or a :class:`~genprov.storage.FeatureIndex`) rather than
a fixed-size :class:`~genprov.storage.FeatureStore`, so that rows can be appended later
(:meth:`SimilarityAttributor.add`). There is no data-attributor registry, so the class is not registered
anywhere.

Saving (:mod:`genprov.models.artifact`, kind ``similarity-index``): ``save_pretrained(folder)`` writes the
one record ``config.json`` into the index folder the attributor was fitted on (an attributor fitted in
memory takes a new folder and its features as tensors): the :class:`SimilarityConfig`, the extractor's
name and config with the place of its weights relative to the folder (an extractor whose weights have no
file of their own is saved beside, as the artefact ``extractor/``), the feature mapper (saved beside, as
``mapper/``), the calibration, the image shape, the training data's ``load_dataset`` arguments and
fingerprint, and the store spec, whose weight fingerprints identify the extractor and mapper by content.
``SimilarityAttributor.from_pretrained(folder)`` reopens a queryable attributor from that alone (no
training data; its fingerprint is checked when :meth:`~SimilarityAttributor.fit` is given it). Index
folders of the layout before (``similarity.json``, format 1) are read through :func:`legacy_index_layout`;
other versions are refused, naming them. The CLI and the service reach index folders through
:mod:`~genprov.attribution.data.index_folder`.

Example:
    >>> ext = FEATURE_EXTRACTORS.create("pixels")  # doctest: +SKIP
    >>> sim = SimilarityAttributor(ext).fit(train, store="runs/sim-index")  # doctest: +SKIP
    >>> sim.calibrate(val_generated, val_exemplar_indices)  # doctest: +SKIP
    >>> result = sim.attribute(generated, k=20)  # result.soft: share of influence  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from genprov.attribution.data.base import DataAttributor, TrainingSet, training_images
from genprov.attribution.data.extractors import FEATURE_EXTRACTORS, FeatureExtractor, SimCLRExtractor
from genprov.attribution.data.mapper import FeatureMapper
from genprov.config import Config, is_int, is_positive_int, require
from genprov.data.dataset import fingerprint_arrays
from genprov.exceptions import CheckpointError, ConfigError, DataError, NotFittedError, StoreMismatchError
from genprov.models.artifact import ArtifactPayload, ArtifactRecord, Pretrained, write_artifact
from genprov.results import DataAttributionResult
from genprov.storage import (
    INDEX_FILE,
    FeatureIndex,
    FeatureStore,
    exact_search,
    normalize_rows,
    spec_differences,
)
from genprov.utils.artifacts import INCOMPLETE_INDEX, artifact_label, check_output_folder, identify_artifact

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "ARTIFACT_KIND",
    "LEGACY_INFO",
    "PARTS",
    "SEARCH_BACKENDS",
    "SimilarityAttributor",
    "SimilarityConfig",
    "SoftCalibration",
    "evaluate_soft",
    "expected_calibration_error",
    "extractor_from_spec",
    "fit_soft_calibration",
    "legacy_index_layout",
    "recorded_parts",
    "remaining_influence",
    "soft_attribution",
    "soft_nll",
]

logger = logging.getLogger(__name__)

#: How :meth:`SimilarityAttributor.attribute` finds the top-k: ``"exact"``, or FAISS candidates re-ranked exactly:
#: ``"faiss"`` (the index's saved FAISS index, HNSW when none), ``"hnsw"`` or ``"ivfpq"`` (compressed).
SEARCH_BACKENDS = ("exact", "faiss", "hnsw", "ivfpq")
_FORMAT = 1
#: Artefact kind of a saved :class:`SimilarityAttributor` (its folder is the similarity index).
ARTIFACT_KIND = "similarity-index"
#: The record of a similarity index folder in the layout before the artefact format (read, never written).
LEGACY_INFO = "similarity.json"
_LEGACY_INFO_FORMAT = 1
#: Sub-folders of a saved attributor: its extractor (when its weights have no file of their own), its mapper.
_EXTRACTOR_DIR = "extractor"
_MAPPER_DIR = "mapper"
#: What may be relocated when a saved attributor is opened (``from_pretrained(folder, {part: path})``).
PARTS = ("weights", "mapper")


# ============================================================================================ soft attribution


@dataclasses.dataclass(frozen=True)
class SoftCalibration:
    """The two scalars of the soft attribution ``p_i ∝ relu(exp(inv_tau (s_i - max s)) + bias)``.

    Attributes:
        inv_tau: Inverse temperature (> 0): larger = influence concentrated on the most similar images.
        bias: Added weight (> -1): negative cuts off images far below the best match, positive spreads a
            floor of influence over all.
        nll: Multi-positive NLL on the data it was fitted on (``None`` if set by hand).
        n_queries: Queries it was fitted on.
    """

    inv_tau: float
    bias: float
    nll: float | None = None
    n_queries: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"inv_tau": self.inv_tau, "bias": self.bias, "nll": self.nll, "n_queries": self.n_queries}


def _weights(scores: Tensor, inv_tau: Tensor | float, bias: Tensor | float, top: Tensor | None = None) -> Tensor:
    """``relu(exp(inv_tau (s - max s)) + bias)`` row by row (``top``: the row maxima if known)."""
    m = scores.max(dim=1, keepdim=True).values if top is None else top.reshape(-1, 1)
    return torch.relu(torch.exp(inv_tau * (scores - m)) + bias)


def soft_attribution(scores: Tensor | np.ndarray, inv_tau: float, bias: float = 0.0) -> Tensor:
    """Shares of influence ``p`` (n_q, n) float64, rows summing to 1.

    Args:
        scores: (n_q, n) similarities, higher = more influence.
        inv_tau: Inverse temperature (> 0).
        bias: Additive weight (> -1 keeps the best match's weight positive).
    """
    s = _score_matrix(scores)
    _check_params(inv_tau, bias)
    w = _weights(s, inv_tau, bias)
    return w / w.sum(dim=1, keepdim=True)


def _check_params(inv_tau: float, bias: float) -> None:
    if not (math.isfinite(inv_tau) and inv_tau > 0):
        raise ConfigError(f"inv_tau must be a positive finite number; got {inv_tau!r}.")
    if not (math.isfinite(bias) and bias > -1):
        raise ConfigError(f"bias must be a finite number > -1 (so the best match keeps weight); got {bias!r}.")


def _score_matrix(scores: Tensor | np.ndarray) -> Tensor:
    s = scores.detach().cpu() if isinstance(scores, Tensor) else torch.from_numpy(np.array(scores))
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise DataError(f"scores must be a non-empty (n_queries, n_items) matrix; got shape {tuple(s.shape)}.")
    s = s.to(torch.float64)
    if not bool(torch.isfinite(s).all()):
        raise DataError("scores contain NaN or infinite values.")
    return s


def _positive_weights(positives: Sequence[Any], n_q: int, n: int) -> Tensor:
    """(n_q, n) float64 matrix: 1/|P_q| at each positive (repeats add up), else 0."""
    if len(positives) != n_q:
        raise DataError(f"positives must list one index array per query ({n_q}); got {len(positives)}.")
    out = torch.zeros(n_q, n, dtype=torch.float64)
    for q, p in enumerate(positives):
        idx = np.asarray(p, dtype=np.int64).ravel()
        if idx.size == 0:
            raise DataError(f"query {q} has no positives; every query needs at least one exemplar.")
        if idx.min() < 0 or idx.max() >= n:
            raise DataError(f"positives of query {q} must be in [0, {n}); got {idx[:8].tolist()}.")
        out[q].index_add_(0, torch.from_numpy(idx), torch.full((idx.size,), 1.0 / idx.size, dtype=torch.float64))
    return out


def _nll(s: Tensor, pos_w: Tensor, inv_tau: Tensor | float, bias: Tensor | float) -> Tensor:
    w = _weights(s, inv_tau, bias)
    logp = torch.log(w.clamp_min(1e-300)) - torch.log(w.sum(dim=1, keepdim=True))
    return -(pos_w * logp).sum(dim=1).mean()


def soft_nll(scores: Tensor | np.ndarray, positives: Sequence[Any], inv_tau: float, bias: float = 0.0) -> float:
    """Multi-positive NLL ``mean_q mean_{i in P_q} -log p_i`` of the soft attribution; lower = better.

    Args:
        scores: (n_q, n) similarities.
        positives: Per query, the indices of its exemplars (repeats count as repeated draws).
        inv_tau, bias: The soft attribution's scalars.
    """
    s = _score_matrix(scores)
    _check_params(inv_tau, bias)
    return float(_nll(s, _positive_weights(positives, s.shape[0], s.shape[1]), inv_tau, bias))


def fit_soft_calibration(
    scores: Tensor | np.ndarray,
    positives: Sequence[Any],
    *,
    fit_bias: bool = True,
    max_iter: int = 200,
) -> SoftCalibration:
    """Fit ``inv_tau`` (and ``bias``) by maximum multi-positive likelihood of the exemplars.

    A grid over ``inv_tau`` in [0.1, 3000] (and ``bias``) picks the start, then L-BFGS (strong Wolfe line
    search, float64) refines ``log inv_tau`` and ``c`` with ``bias = softplus(c) - 1`` (so ``bias > -1``).

    Args:
        scores: (n_q, n) similarities of validation queries against the pool holding their exemplars.
        positives: Per query, its exemplars' indices.
        fit_bias: Fit the bias too; ``False`` keeps it at 0 (a plain softmax with temperature).
        max_iter: L-BFGS iterations.

    Returns:
        The fitted :class:`SoftCalibration` (``nll`` at the optimum).
    """
    s = _score_matrix(scores)
    pos_w = _positive_weights(positives, s.shape[0], s.shape[1])
    taus = np.logspace(-1, math.log10(3000), 25)
    biases = (-0.9, -0.6, -0.3, -0.1, 0.0, 1e-3, 1e-1) if fit_bias else (0.0,)
    best = (math.inf, 1.0, 0.0)
    with torch.no_grad():
        for tau in taus:
            for bias in biases:
                value = float(_nll(s, pos_w, float(tau), bias))
                if value < best[0]:
                    best = (value, float(tau), bias)
    log_tau = torch.tensor(math.log(best[1]), dtype=torch.float64, requires_grad=True)
    # softplus(c) - 1 = bias  ->  c = log(exp(bias + 1) - 1)
    c = torch.tensor(math.log(math.expm1(best[2] + 1.0)), dtype=torch.float64, requires_grad=fit_bias)
    params = [log_tau, c] if fit_bias else [log_tau]
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        bias_t = torch.nn.functional.softplus(c) - 1.0 if fit_bias else torch.zeros((), dtype=torch.float64)
        loss = _nll(s, pos_w, torch.exp(log_tau), bias_t)
        loss.backward()
        return loss

    optimizer.step(closure)
    inv_tau = float(torch.exp(log_tau.detach()))
    bias = float(torch.nn.functional.softplus(c.detach()) - 1.0) if fit_bias else 0.0
    value = float(_nll(s, pos_w, inv_tau, bias))
    if not math.isfinite(value) or value > best[0]:  # L-BFGS wandered off: keep the grid point
        value, inv_tau, bias = best
    return SoftCalibration(inv_tau=inv_tau, bias=bias, nll=value, n_queries=int(s.shape[0]))


def expected_calibration_error(
    probabilities: Tensor | np.ndarray, positives: Sequence[Any], *, top_n: int = 100, n_bins: int = 10
) -> float:
    """Expected calibration error of soft attributions over each query's top ``top_n`` items.

    Each listed item is one prediction with confidence ``min(1, |P_q| p_i)`` (the expected number of
    exemplar draws that land on it, capped at 1) and outcome "is an exemplar of q". Predictions are binned
    by confidence into ``n_bins`` equal-width bins; ECE = sum over bins of (bin share) x |mean confidence -
    mean outcome|. 0 = calibrated.

    Args:
        probabilities: (n_q, n) shares of influence (rows sum to 1).
        positives: Per query, its exemplars' indices.
        top_n: Items per query taken into account (the most influential).
        n_bins: Number of confidence bins.
    """
    p = _score_matrix(probabilities)
    if not is_positive_int(n_bins):
        raise ConfigError(f"n_bins must be a positive integer; got {n_bins!r}.")
    n = min(int(top_n), p.shape[1])
    if n < 1:
        raise ConfigError(f"top_n must be a positive integer; got {top_n!r}.")
    order = torch.sort(p, dim=1, descending=True, stable=True).indices[:, :n]
    conf_rows, hit_rows = [], []
    for q, pos in enumerate(positives):
        idx = torch.as_tensor(np.unique(np.asarray(pos, dtype=np.int64)))
        top = order[q]
        conf_rows.append((p[q, top] * len(idx)).clamp(max=1.0))
        hit_rows.append(torch.isin(top, idx).to(torch.float64))
    if len(conf_rows) != p.shape[0]:
        raise DataError(f"positives must list one index array per query ({p.shape[0]}); got {len(conf_rows)}.")
    conf, hit = torch.cat(conf_rows), torch.cat(hit_rows)
    bins = torch.clamp((conf * n_bins).long(), max=n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            total += float(mask.sum()) / conf.numel() * abs(float(conf[mask].mean()) - float(hit[mask].mean()))
    return total


def remaining_influence(probabilities: Tensor | np.ndarray, top_n: int) -> Tensor:
    """Per query, the share of influence outside its ``top_n`` most influential items: (n_q,) float64."""
    p = _score_matrix(probabilities)
    if not is_positive_int(top_n):
        raise ConfigError(f"top_n must be a positive integer; got {top_n!r}.")
    top = torch.topk(p, min(top_n, p.shape[1]), dim=1).values
    return (1.0 - top.sum(dim=1)).clamp_min(0.0)


def evaluate_soft(
    scores: Tensor | np.ndarray, positives: Sequence[Any], calibration: SoftCalibration, *, top_n: int = 100
) -> dict[str, float]:
    """NLL, ECE and mean remaining influence of a soft attribution on (held-out) queries.

    Returns:
        ``{"nll", "ece", "remaining_influence", "exemplar_mass"}``; ``exemplar_mass`` is the mean share of
        influence the soft attribution gives to the exemplars.
    """
    probs = soft_attribution(scores, calibration.inv_tau, calibration.bias)
    pos_w = _positive_weights(positives, probs.shape[0], probs.shape[1])
    mass = ((pos_w > 0).to(torch.float64) * probs).sum(dim=1).mean()
    return {
        "nll": soft_nll(scores, positives, calibration.inv_tau, calibration.bias),
        "ece": expected_calibration_error(probs, positives, top_n=top_n),
        "remaining_influence": float(remaining_influence(probs, top_n).mean()),
        "exemplar_mass": float(mass),
    }


# ============================================================================================ the attributor


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimilarityConfig(Config):
    """Settings of :class:`SimilarityAttributor`.

    Attributes:
        metric: ``"cosine"`` (default) or ``"inner-product"``.
        search: ``"exact"`` (chunked matmul), or FAISS candidates re-ranked exactly (needs a store and
            ``genprov[faiss]``): ``"faiss"`` (the store's saved FAISS index, HNSW when none), ``"hnsw"``, or
            ``"ivfpq"`` (compressed IVF-PQ codes: a small fraction of the features' memory).
        n_candidates: FAISS candidates re-ranked exactly per query (``None``: :func:`genprov.storage.index.default_candidates`).
        n_probe: IVF lists visited per query by ``"ivfpq"`` search (``None``: the saved index's, 16).
        chunk_rows: Training rows multiplied at once by exact search / scoring.
        shard_size: Training images per index shard (the unit of resumption).
        inv_tau: Soft-attribution inverse temperature until :meth:`SimilarityAttributor.calibrate` runs.
        bias: Soft-attribution bias until calibrated.
        top_n: N of the remaining influence and of the ECE.
    """

    metric: str = "cosine"
    search: str = "exact"
    n_candidates: int | None = None
    n_probe: int | None = None
    chunk_rows: int = 65536
    shard_size: int = 1024
    inv_tau: float = 20.0
    bias: float = 0.0
    top_n: int = 100

    def validate(self) -> None:
        require(self.metric in ("cosine", "inner-product"), "metric", "'cosine' or 'inner-product'", self.metric)
        require(self.search in SEARCH_BACKENDS, "search", f"one of {SEARCH_BACKENDS}", self.search)
        require(
            self.n_candidates is None or is_positive_int(self.n_candidates),
            "n_candidates",
            "a positive integer or None",
            self.n_candidates,
        )
        require(
            self.n_probe is None or is_positive_int(self.n_probe), "n_probe", "a positive integer or None", self.n_probe
        )
        require(is_positive_int(self.chunk_rows), "chunk_rows", "a positive integer", self.chunk_rows)
        require(is_positive_int(self.shard_size), "shard_size", "a positive integer", self.shard_size)
        require(
            isinstance(self.inv_tau, (int, float)) and math.isfinite(self.inv_tau) and self.inv_tau > 0,
            "inv_tau",
            "a positive number",
            self.inv_tau,
        )
        require(
            isinstance(self.bias, (int, float)) and math.isfinite(self.bias) and self.bias > -1,
            "bias",
            "a number > -1",
            self.bias,
        )
        require(is_int(self.top_n, minimum=1), "top_n", "a positive integer", self.top_n)


class SimilarityAttributor(DataAttributor, Pretrained):
    """Attribution by similarity in a (tuned) feature space, with calibrated soft shares.

    Args:
        extractor: A :class:`FeatureExtractor`, or a registry name built with its default config.
        config: Settings (default :class:`SimilarityConfig`).
        mapper: A fitted :class:`FeatureMapper` (training tower for training images, query tower for queries).
        weights: Where the extractor's weights were read from (a checkpoint folder, weights file or saved
            encoder), recorded by :meth:`save_pretrained`; default: the path in the extractor's config, else
            the extractor is saved beside the record.

    Attributes (after :meth:`fit`):
        n_train_: Number of indexed training images.
        image_shape_: (C, H, W) of the training images; queries must match it.
        index_: The :class:`FeatureIndex` (``None`` when fitted in memory).
        train_features_: (n_train, d) features when fitted in memory.
        calibration_: The :class:`SoftCalibration` in use (config defaults until :meth:`calibrate`).
        data_fingerprint_: Fingerprint of the training images it was fitted on.

    Saved with :meth:`save_pretrained` and reopened with ``SimilarityAttributor.from_pretrained(folder)``
    (or ``from_pretrained(folder, {"weights": path, "mapper": path})`` for parts moved since; their
    weights must be the recorded ones).
    """

    artifact_kind: ClassVar[str] = ARTIFACT_KIND

    def __init__(
        self,
        extractor: FeatureExtractor | str,
        config: SimilarityConfig | None = None,
        *,
        mapper: FeatureMapper | None = None,
        weights: str | os.PathLike[str] | None = None,
    ) -> None:
        self.extractor = extractor
        self.config: SimilarityConfig = config if config is not None else SimilarityConfig()
        self.mapper = mapper
        self.weights = weights
        name = extractor if isinstance(extractor, str) else extractor.name
        self.method = f"similarity[{name}{'+tuned' if mapper is not None else ''}]"
        self.n_train_: int | None = None
        self.image_shape_: tuple[int, int, int] | None = None
        self.index_: FeatureIndex | None = None
        self.train_features_: Tensor | None = None
        self.calibration_: SoftCalibration | None = None
        self.data_fingerprint_: str | None = None

    # ------------------------------------------------------------------------------------ features

    def _extractor(self) -> FeatureExtractor:
        if isinstance(self.extractor, str):
            self.extractor = FEATURE_EXTRACTORS.create(self.extractor)
        return self.extractor

    @property
    def feature_extractor(self) -> FeatureExtractor:
        """The extractor (built from the registry when a name was given)."""
        return self._extractor()

    def _normalise(self, feats: Tensor) -> Tensor:
        return normalize_rows(feats) if self.config.metric == "cosine" else feats

    def featurize(self, batch: Tensor, indices: Tensor | Sequence[int] | None = None) -> Tensor:
        """Features of training images (extractor, then the mapper's training tower): (b, d) float32.

        ``indices`` is unused (the features of an image do not depend on its position).
        """
        feats = self._extractor().extract(batch)
        if self.mapper is not None:
            feats = self.mapper.map_train(feats)
        return self._normalise(feats)

    def featurize_queries(self, queries: Tensor) -> Tensor:
        """Features of query images (extractor, then the mapper's query tower): (n_q, d) float32.

        Raises:
            DataError: If the queries' (C, H, W) differ from the training images' (names the fix).
        """
        self._check_fitted()
        if not isinstance(queries, Tensor) or queries.ndim != 4:
            shape = tuple(queries.shape) if isinstance(queries, Tensor) else type(queries).__name__
            raise DataError(f"queries must be a float (n, C, H, W) tensor of images in [-1, 1]; got {shape}.")
        if tuple(queries.shape[1:]) != self.image_shape_:
            raise DataError(
                f"queries must have the training images' shape (C, H, W) = {self.image_shape_}; got "
                f"{tuple(queries.shape[1:])}. Resize them (genprov.data.resize_images) and match the channels."
            )
        if queries.shape[0] == 0:
            raise DataError("queries is empty; pass at least one image.")
        feats = self._extractor().extract(queries)
        if self.mapper is not None:
            feats = self.mapper.map_queries(feats)
        return self._normalise(feats)

    def store_spec(self, train: Tensor) -> dict[str, Any]:
        """What an index of ``train`` must match: extractor (name, config, weights), mapper, image shape."""
        image_shape = train.shape[1:]
        return {
            "format": _FORMAT,
            "method": "similarity-features",
            "extractor": self._extractor().spec(),
            "mapper": self.mapper.fingerprint() if self.mapper is not None else None,
            "image_shape": [int(v) for v in image_shape],
        }

    def _with_recorded_locations(self, folder: Path, spec: dict[str, Any]) -> dict[str, Any]:
        """``spec`` with the weight paths an index built by an older genprov recorded in its extractor config.

        Such indexes named the weights by path as well as by content; the path is taken from the index
        (it says nothing about the features), while the content fingerprint still has to match.
        """
        if not (folder / INDEX_FILE).is_file():
            return spec
        saved = FeatureIndex.open(folder).spec.get("extractor")
        saved_config = saved.get("config") if isinstance(saved, dict) else None
        if not isinstance(saved_config, dict):
            return spec
        fields = self._extractor().config.location_fields
        recorded = {k: saved_config[k] for k in fields if k in saved_config}
        if not recorded:
            return spec
        extractor = spec["extractor"]
        return {**spec, "extractor": {**extractor, "config": {**extractor["config"], **recorded}}}

    # ------------------------------------------------------------------------------------ fitting

    def fit(
        self,
        train: TrainingSet,
        store: FeatureIndex | FeatureStore | str | os.PathLike[str] | None = None,
        *,
        show_progress: bool | None = None,
    ) -> SimilarityAttributor:
        """Featurize the training set into an index (resuming ``store``) or into memory.

        Args:
            train: An ``ImageDataset`` or (n, C, H, W) tensor of images in [-1, 1].
            store: Index folder (or :class:`FeatureIndex`); an unfinished build with the same settings and
                data resumes, a finished one is reused. ``None``: keep the features in memory.
            show_progress: Progress bar over shards.

        Returns:
            ``self``.

        Raises:
            StoreMismatchError: The index holds features of another extractor, mapper or training set.
            ConfigError: ``store`` is a FeatureStore (pass its folder instead) or FAISS search without a store.
        """
        images = training_images(train)
        n = len(images)
        shape = (int(images.shape[1]), int(images.shape[2]), int(images.shape[3]))
        if isinstance(store, FeatureStore):
            raise ConfigError("SimilarityAttributor.fit takes an index folder or a FeatureIndex, not a FeatureStore.")
        if store is None and self.config.search != "exact":
            raise ConfigError(
                f"search={self.config.search!r} needs a store folder (the FAISS index is saved next to the features)."
            )
        first = self.featurize(images[:1])
        dim = int(first.shape[1])
        key = fingerprint_arrays(images.detach().cpu().contiguous().numpy())
        self.image_shape_ = shape
        self.data_fingerprint_ = key
        self.calibration_ = self.calibration_ or SoftCalibration(self.config.inv_tau, self.config.bias)
        if store is None:
            chunks = [first]
            for start in range(1, n, self.config.shard_size):
                chunks.append(self.featurize(images[start : start + self.config.shard_size]))
            self.train_features_ = torch.cat(chunks)
            self.index_ = None
            self.n_train_ = n
            return self
        path = store.path if isinstance(store, FeatureIndex) else store
        spec = self._with_recorded_locations(Path(path), self.store_spec(images))
        index = FeatureIndex.create(path, dim=dim, metric=self.config.metric, spec=spec)
        segments = index.segments
        if segments and (segments[0]["key"] != key or int(segments[0]["n_rows"]) != n):
            raise StoreMismatchError(
                f"{index.path} holds features of another training set ({segments[0]['n_rows']} images, data "
                f"fingerprint {segments[0]['key']}; got {n} images, {key}). Use another folder."
            )
        if not segments or not index.is_complete:
            index.add_computed(
                n,
                lambda a, b: self.featurize(images[a:b]),
                key=key,
                shard_size=self.config.shard_size,
                show_progress=show_progress,
                desc=f"{self.method} features",
            )
        self.index_ = index
        self.train_features_ = None
        self.n_train_ = index.n_rows
        return self

    def add(self, images: Tensor, *, show_progress: bool | None = None) -> range:
        """Append training images to the index (or the in-memory features); returns their indices."""
        self._check_fitted()
        x = training_images(images, "images")
        if tuple(x.shape[1:]) != self.image_shape_:
            raise DataError(
                f"images must have the training images' shape {self.image_shape_}; got {tuple(x.shape[1:])}."
            )
        if self.index_ is not None:
            key = fingerprint_arrays(x.detach().cpu().contiguous().numpy())
            rows = self.index_.add_computed(
                len(x),
                lambda a, b: self.featurize(x[a:b]),
                key=key,
                shard_size=self.config.shard_size,
                show_progress=show_progress,
            )
            self.n_train_ = self.index_.n_rows
            return rows
        assert self.train_features_ is not None
        first = self.train_features_.shape[0]
        self.train_features_ = torch.cat([self.train_features_, self.featurize(x)])
        self.n_train_ = self.train_features_.shape[0]
        return range(first, self.n_train_)

    def _blocks(self) -> list[tuple[int, np.ndarray]]:
        self._check_fitted()
        if self.index_ is not None:
            return list(self.index_.blocks())
        assert self.train_features_ is not None
        return [(0, self.train_features_.numpy())]

    # ------------------------------------------------------------------------------------ scoring

    def scores_from_features(self, query_features: Tensor) -> Tensor:
        """Full exact (n_q, n_train) float32 similarities of query features; higher = more influence."""
        self._check_fitted()
        q = self._normalise(query_features.to(torch.float32))
        out = torch.empty(q.shape[0], int(self.n_train_ or 0))
        chunk = self.config.chunk_rows
        for offset, array in self._blocks():
            for start in range(0, array.shape[0], chunk):
                rows = torch.from_numpy(np.array(array[start : start + chunk], dtype=np.float32))
                out[:, offset + start : offset + start + rows.shape[0]] = q @ rows.T
        return out

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Top-k training indices and exact scores per query (exact, or FAISS + exact re-ranking)."""
        q = self.featurize_queries(queries)
        n = int(self.n_train_ or 0)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
            raise ConfigError(f"k must be an integer in [1, {n}] (the training set size); got {k!r}.")
        if self.config.search != "exact" and self.index_ is None:
            raise ConfigError(f"search={self.config.search!r} needs the attributor fitted with a store folder.")
        return self._top_k(q, k)

    def _top_k(self, q: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Top-k rows of query features: FAISS + exact re-ranking when configured (and stored), else exact."""
        search = self.config.search
        if search != "exact" and self.index_ is not None:
            return self.index_.search(
                q,
                k,
                backend="faiss",
                kind=None if search == "faiss" else search,
                n_probe=self.config.n_probe,
                n_candidates=self.config.n_candidates,
            )
        return exact_search(q, self._blocks(), k, chunk_rows=self.config.chunk_rows)

    def _denominator(self, q: Tensor, top: Tensor, calibration: SoftCalibration) -> Tensor:
        """``sum_j w_j`` per query, streaming the training features (float64)."""
        total = torch.zeros(q.shape[0], dtype=torch.float64)
        q64 = q.to(torch.float64)
        chunk = self.config.chunk_rows
        for _, array in self._blocks():
            for start in range(0, array.shape[0], chunk):
                rows = torch.from_numpy(np.array(array[start : start + chunk], dtype=np.float32))
                s = q64 @ rows.to(torch.float64).T
                total += _weights(s, calibration.inv_tau, calibration.bias, top).sum(dim=1)
        return total

    def attribute(self, queries: Tensor, *, k: int = 10) -> DataAttributionResult:
        """The ``k`` most similar training images per query, with their soft shares of influence.

        Returns:
            :class:`DataAttributionResult` with (n_q, k) ``indices``, ``scores`` (cosine, descending) and
            ``soft`` (share of influence among *all* training images, so a row sums to at most 1; the rest is
            the remaining influence outside the top k). With FAISS search the best re-ranked match stands in
            for the maximum score.
        """
        self._check_fitted()
        calibration = self.calibration_ or SoftCalibration(self.config.inv_tau, self.config.bias)
        q = self.featurize_queries(queries)
        n = int(self.n_train_ or 0)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
            raise ConfigError(f"k must be an integer in [1, {n}] (the training set size); got {k!r}.")
        indices, values = self._top_k(q, k)
        # exact float64 scores of the listed items, so shares and denominators agree
        listed = self._rows(indices)
        exact = torch.einsum("qd,qkd->qk", self._normalise(q).to(torch.float64), listed.to(torch.float64))
        top = exact[:, 0]
        weights = _weights(exact, calibration.inv_tau, calibration.bias, top)
        soft = weights / self._denominator(self._normalise(q), top, calibration)[:, None]
        config = {**self.config.to_dict(), "extractor": self._extractor().name, "calibration": calibration.to_dict()}
        return DataAttributionResult(
            method=self.method,
            config=config,
            indices=indices.numpy().astype(np.int64),
            scores=values.to(torch.float64).numpy(),
            soft=soft.numpy(),
        )

    def _rows(self, indices: Tensor) -> Tensor:
        if self.index_ is not None:
            return self.index_.features(indices)
        assert self.train_features_ is not None
        return self.train_features_[indices]

    # ------------------------------------------------------------------------------------ soft attribution

    def soft_scores(self, queries: Tensor) -> Tensor:
        """Full (n_q, n_train) float64 shares of influence under the current calibration (rows sum to 1)."""
        self._check_fitted()
        calibration = self.calibration_ or SoftCalibration(self.config.inv_tau, self.config.bias)
        return soft_attribution(self.scores(queries), calibration.inv_tau, calibration.bias)

    def calibrate(self, queries: Tensor, positives: Sequence[Any], *, fit_bias: bool = True) -> SoftCalibration:
        """Fit the soft attribution's ``inv_tau`` and ``bias`` on validation queries and keep them.

        Args:
            queries: (n_q, C, H, W) validation generated images.
            positives: Per query, the training indices of its exemplars.
            fit_bias: Also fit the bias (else 0).

        Returns:
            The :class:`SoftCalibration` (also stored as ``calibration_``).
        """
        self._check_fitted()
        self.calibration_ = fit_soft_calibration(self.scores(queries), positives, fit_bias=fit_bias)
        return self.calibration_

    def evaluate_soft(self, queries: Tensor, positives: Sequence[Any]) -> dict[str, float]:
        """NLL, ECE, remaining influence (outside ``config.top_n``) and exemplar mass on held-out queries."""
        self._check_fitted()
        calibration = self.calibration_ or SoftCalibration(self.config.inv_tau, self.config.bias)
        return evaluate_soft(self.scores(queries), positives, calibration, top_n=self.config.top_n)

    def _check_fitted(self) -> None:
        if self.n_train_ is None:
            raise NotFittedError(
                "SimilarityAttributor is not fitted; call fit(train) (or fit(train, store=...)) first."
            )

    # ------------------------------------------------------------------------------------ save / open

    def _method_name(self) -> str:
        return "similarity"

    def _payload(self) -> ArtifactPayload:
        """Config, calibration, image shape, data fingerprint, store spec, and (fitted in memory) the features.

        The places of the extractor's weights and of the mapper depend on the folder: :meth:`save_pretrained`
        adds them.
        """
        self._check_fitted()
        assert self.image_shape_ is not None
        extractor = self._extractor()
        default = SoftCalibration(self.config.inv_tau, self.config.bias)
        calibrated = self.calibration_ is not None and self.calibration_ != default
        state = {
            "name": self.method,
            "extractor": {
                "name": extractor.name,
                "config": {
                    k: v for k, v in extractor.config.to_dict().items() if k not in extractor.config.location_fields
                },
                "weights": None,
            },
            "mapper": None,
            "calibration": self.calibration_.to_dict() if calibrated and self.calibration_ is not None else None,
            "image_shape": list(self.image_shape_),
            "n_train": self.n_train_,
            "data": None,
            "data_fingerprint": self.data_fingerprint_,
            "index": "." if self.index_ is not None else None,
            "spec": self.store_spec(torch.empty(0, *self.image_shape_)),
        }
        tensors = {"train_features": self.train_features_} if self.train_features_ is not None else {}
        return ArtifactPayload(config=self.config, state=state, tensors=tensors)

    def _weights_location(self) -> Path | None:
        """The extractor's weights: ``weights`` as given, else the path in the extractor's config."""
        if self.weights is not None:
            return Path(self.weights).resolve()
        config = self._extractor().config
        for name in config.location_fields:
            value = getattr(config, name, None)
            if value:
                return Path(str(value)).resolve()
        return None

    def save_pretrained(self, folder: str | Path, *, data: Mapping[str, Any] | None = None) -> Path:
        """Write the record ``config.json`` (kind ``similarity-index``) into ``folder``; returns it.

        An attributor fitted on an index folder is saved into that folder (the record describes the index);
        one fitted in memory into a new folder, with its features as tensors. A mapper is saved beside the
        record (``mapper/``), and so is an extractor whose weights have no file of their own (``extractor/``).

        Args:
            folder: Where to save (see above).
            data: The training data's :func:`~genprov.data.load_dataset` arguments, recorded so that a reader
                can reload the images (``genprov similarity query`` shows them).

        Raises:
            NotFittedError: Before fitting.
            ConfigError: ``folder`` is not the index folder the attributor was fitted on (or holds another
                artefact, or a feature index when fitted in memory).
        """
        payload = self._payload()
        folder = Path(folder)
        if self.index_ is not None and folder.resolve() != self.index_.path.resolve():
            raise ConfigError(
                f"This similarity attributor's features live in the index {self.index_.path}; save it there "
                f"(save_pretrained({str(self.index_.path)!r})), or fit it with store={str(folder)!r}."
            )
        if self.index_ is None and (folder / INDEX_FILE).is_file():
            raise ConfigError(
                f"{folder} holds a feature index, but this similarity attributor was fitted in memory; choose a "
                f"new folder, or fit it with store={str(folder)!r}."
            )
        accept = {"feature index", INCOMPLETE_INDEX} if self.index_ is not None else set()
        check_output_folder(folder, accept={artifact_label(ARTIFACT_KIND, self._method_name()), *accept})
        state = dict(payload.state)
        extractor = self._extractor()
        weights = self._weights_location()
        if weights is None and extractor.weights_fingerprint() is not None:
            weights = extractor.save_pretrained(folder / _EXTRACTOR_DIR)
        state["extractor"] = {**state["extractor"], "weights": _relative(weights, folder) if weights else None}
        if self.mapper is not None:
            state["mapper"] = _relative(self.mapper.save_pretrained(folder / _MAPPER_DIR), folder)
        state["data"] = dict(data) if data is not None else None
        return write_artifact(
            folder,
            kind=ARTIFACT_KIND,
            method=self._method_name(),
            class_name=type(self).__name__,
            payload=dataclasses.replace(payload, state=state),
            tensors_file=self.tensors_file,
            accept=accept,
        )

    @classmethod
    def _from_record(cls, record: ArtifactRecord, tensors: dict[str, Tensor], wrapped: Any) -> Self:
        """Reopen the extractor, mapper, calibration and features (no training data needed).

        ``wrapped``: ``{part: new place}`` of the parts (:data:`PARTS`) moved since saving; they must hold
        the same weights (checked against the recorded store spec).
        """
        if wrapped is not None and not isinstance(wrapped, Mapping):
            raise ConfigError(
                f"from_pretrained of a similarity index takes {{part: path}} for moved parts {PARTS}; got "
                f"{type(wrapped).__name__}."
            )
        places = recorded_parts(record, wrapped)
        state = record.state
        try:
            spec = dict(state["extractor"])
            c, h, w = (int(v) for v in state["image_shape"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(
                f"{record.folder} records no valid extractor or image shape ({err!r}); rebuild it."
            ) from err
        extractor = _open_extractor(str(spec["name"]), spec.get("config"), places.get("weights"), record.folder)
        mapper = FeatureMapper.from_pretrained(places["mapper"]) if "mapper" in places else None
        config = SimilarityConfig.from_dict(record.config)
        attributor = cls(extractor, config, mapper=mapper, weights=places.get("weights"))
        attributor.image_shape_ = (c, h, w)
        saved = state.get("spec")
        differences = spec_differences(saved, attributor.store_spec(torch.empty(0, c, h, w))) if saved else {}
        if differences:
            raise CheckpointError(
                f"The extractor or mapper found for the similarity index at {record.folder} ({places}) has other "
                f"weights than it was built with ({', '.join(differences)} differ); restore the original files, "
                "or rebuild the index."
            )
        cal = state.get("calibration")
        attributor.calibration_ = (
            SoftCalibration(float(cal["inv_tau"]), float(cal["bias"]), cal.get("nll"), int(cal.get("n_queries") or 0))
            if cal
            else SoftCalibration(config.inv_tau, config.bias)
        )
        attributor.data_fingerprint_ = state.get("data_fingerprint")
        if state.get("index") is not None:
            attributor.index_ = _finished_index(record.folder / str(state["index"]))
            attributor.n_train_ = attributor.index_.n_rows
            return attributor
        features = tensors.get("train_features")
        if features is None:
            raise CheckpointError(f"{record.folder} records neither a feature index nor features; save it again.")
        attributor.train_features_ = features
        attributor.n_train_ = int(features.shape[0])
        return attributor


def _relative(path: str | os.PathLike[str], folder: Path) -> str:
    """``path`` relative to ``folder`` (both resolved), as recorded in a saved attributor."""
    return os.path.relpath(Path(path).resolve(), folder.resolve())


def recorded_parts(
    record: ArtifactRecord, moved: Mapping[str, str | os.PathLike[str]] | None = None
) -> dict[str, Path]:
    """Where a saved attributor's extractor weights and mapper are: ``{part: path}`` for the :data:`PARTS` it has.

    Recorded places are resolved against the record's folder (older records hold absolute paths);
    ``moved`` overrides them.

    Raises:
        ConfigError: ``moved`` names something other than :data:`PARTS`.
    """
    moved = dict(moved or {})
    unknown = sorted(set(moved) - set(PARTS))
    if unknown:
        raise ConfigError(f"A similarity index has no parts {unknown}; it has {list(PARTS)}.")
    recorded = {"weights": (record.state.get("extractor") or {}).get("weights"), "mapper": record.state.get("mapper")}
    places: dict[str, Path] = {}
    for part in PARTS:
        if moved.get(part):
            places[part] = Path(moved[part])
        elif recorded[part]:
            places[part] = (record.folder / str(recorded[part])).resolve()
    return places


def extractor_from_spec(
    name: str, config: Mapping[str, Any] | None = None, *, weights: str | None = None
) -> FeatureExtractor:
    """Build a registered extractor from its name, config dict and weights file.

    Args:
        name: A :data:`FEATURE_EXTRACTORS` name.
        config: Its config as a dict (``to_dict()`` form).
        weights: ``classifier``: a classifier checkpoint folder; ``simclr``: a saved encoder
            (``SimCLRExtractor.save_pretrained`` folder, or a ``.safetensors`` file of the format before);
            ``local-weights`` / ``efficientnet-lite0``: a weights file.

    Raises:
        ConfigError: Unknown name or config key; ``simclr`` without weights.
    """
    values = dict(config or {})
    if name == "simclr":
        if not weights:
            raise ConfigError("the simclr extractor needs its trained encoder: pass --checkpoint FILE.safetensors.")
        return SimCLRExtractor.from_pretrained(weights)
    if weights:
        key = {"classifier": "checkpoint", "local-weights": "path", "efficientnet-lite0": "weights"}.get(name)
        if key is None:
            raise ConfigError(f"the {name} extractor takes no weights file; drop --checkpoint.")
        values[key] = str(weights)
    return FEATURE_EXTRACTORS.create(name, config=values)


def _open_extractor(name: str, config: Any, weights: Path | None, folder: Path) -> FeatureExtractor:
    """The extractor of a saved attributor: a saved extractor artefact, or built from its spec and weights."""
    if weights is None:
        return extractor_from_spec(name, config)
    if not weights.exists():
        raise CheckpointError(
            f"The similarity index at {folder} reads its {name} extractor's weights from {weights}, which is missing; "
            "restore it there, pass its new place (from_pretrained(folder, {'weights': path})), or rebuild the index."
        )
    found = identify_artifact(weights)
    if found is not None and found.kind == artifact_label(FeatureExtractor.artifact_kind, name):
        return FeatureExtractor.from_pretrained(weights)
    return extractor_from_spec(name, config, weights=str(weights))


def _finished_index(folder: Path) -> FeatureIndex:
    """The finished feature index in ``folder`` (a similarity index's features)."""
    if not (folder / INDEX_FILE).is_file():
        raise DataError(
            f"The similarity index at {folder} has no features yet (an interrupted build?); run the same "
            "'genprov similarity index' command again to finish it."
        )
    index = FeatureIndex.open(folder)
    if not index.segments or not index.is_complete:
        raise DataError(
            f"The similarity index at {folder} is empty or unfinished ({index.n_rows} rows ready); run the same "
            "'genprov similarity index' command again to finish it."
        )
    return index


def legacy_index_layout(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
    """An index folder with ``similarity.json`` (the layout before the artefact format) as a record.

    Returns:
        ``None`` when ``path`` holds no ``similarity.json``.

    Raises:
        CheckpointError: An unreadable ``similarity.json``, or one of another format than 1 (named).
    """
    file = Path(path) / LEGACY_INFO
    if not file.is_file():
        return None
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as err:  # unreadable (OSError) is no corruption: reported as such
        raise CheckpointError(f"Cannot read {file}: {err}. Rebuild the index with 'genprov similarity index'.") from err
    found = info.get("format") if isinstance(info, dict) else None
    if found != _LEGACY_INFO_FORMAT:
        raise CheckpointError(
            f"{file} has similarity index format {found!r}; this genprov reads format {_LEGACY_INFO_FORMAT} of "
            f"{LEGACY_INFO} (and the artefact config.json). Rebuild the index with this genprov's 'genprov "
            "similarity index'."
        )
    try:
        size, channels = int(info["image_size"]), int(info["channels"])
        state = {
            "name": info.get("method"),
            "extractor": {
                "name": info["extractor"],
                "config": info["extractor_config"],
                "weights": info.get("weights"),
            },
            "mapper": info.get("mapper"),
            "calibration": info.get("calibration"),
            "image_shape": [channels, size, size],
            "n_train": info.get("n_train"),
            "data": info["data"],
            "data_fingerprint": None,
            "index": ".",
            "spec": None,
        }
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{file} lacks its entries ({err!r}); it was not written by 'genprov similarity index'. Rebuild it."
        ) from err
    raw = {"kind": ARTIFACT_KIND, "method": "similarity", "config": info.get("similarity_config") or {}, "state": state}
    return raw, {}


SimilarityAttributor.legacy_layout = legacy_index_layout
