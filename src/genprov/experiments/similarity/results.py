"""The typed result of ``genprov reproduce similarity``; :meth:`SimilarityResult.to_dict` is ``results.json``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from genprov.experiments.base import ExperimentResult, json_key

__all__ = [
    "BenchmarkInfo",
    "Claims",
    "ControlRow",
    "DataInfo",
    "ExtractorClaim",
    "HubRow",
    "InfluenceStrength",
    "RetrievalMetrics",
    "RetrievalRow",
    "SimilarityResult",
    "SoftMetrics",
    "SoftRow",
    "TuningRow",
    "find_row",
]

_R = TypeVar("_R")


def find_row(rows: Iterable[_R], **match: Any) -> _R:
    """The first row whose fields equal ``match`` (e.g. ``extractor="pixels", protocol="A"``)."""
    for row in rows:
        if all(getattr(row, k) == v for k, v in match.items()):
            return row
    raise KeyError(f"no row with {match}")


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """The pool (the base model's training images) and the held-out images exemplars come from."""

    name: str
    n_pool: int
    n_heldout: int
    image_size: int
    pool_fingerprint: str


@dataclasses.dataclass(frozen=True)
class BenchmarkInfo:
    """The customization benchmark: its folder and sizes."""

    folder: str
    cases: int
    #: Role (``"tune"``, ``"val"``, ``"unseen"``) -> customized models.
    roles: Mapping[str, int]
    #: Role -> generated queries.
    queries: Mapping[str, int]
    exemplars: int
    control_queries: int


@dataclasses.dataclass(frozen=True)
class InfluenceStrength:
    """Does customization matter (exemplar is the pixel nearest neighbour), and does it copy?

    See :func:`~genprov.experiments.similarity.customization.influence_strength`.
    """

    exemplar_nn_rate: float
    median_sample_to_exemplar: float
    median_heldout_to_pool: float
    near_copy_rate: float


@dataclasses.dataclass(frozen=True)
class RetrievalMetrics:
    """Mean Recall@5/10/100, Recall@|exemplars| and mAP over some queries (or chance level)."""

    recall_5: float = dataclasses.field(metadata=json_key("recall@5"))
    recall_10: float = dataclasses.field(metadata=json_key("recall@10"))
    recall_100: float = dataclasses.field(metadata=json_key("recall@100"))
    recall_e: float = dataclasses.field(metadata=json_key("recall@|E|"))
    mean_ap: float = dataclasses.field(metadata=json_key("mAP"))

    @classmethod
    def from_dict(cls, values: Mapping[str, float]) -> RetrievalMetrics:
        """From ``{"recall@5", "recall@10", "recall@100", "recall@|E|", "mAP"}``."""
        return cls(
            recall_5=values["recall@5"],
            recall_10=values["recall@10"],
            recall_100=values["recall@100"],
            recall_e=values["recall@|E|"],
            mean_ap=values["mAP"],
        )

    def columns(self) -> dict[str, float]:
        """The report's columns, mAP first."""
        return {
            "mAP": self.mean_ap,
            "recall@5": self.recall_5,
            "recall@10": self.recall_10,
            "recall@100": self.recall_100,
            "recall@|E|": self.recall_e,
        }


@dataclasses.dataclass(frozen=True)
class RetrievalRow:
    """One extractor's retrieval of the exemplars for one split and case kind under one protocol."""

    extractor: str
    #: ``"untuned"`` or ``"tuned"`` (mapped by the tuned :class:`~genprov.attribution.data.FeatureMapper`).
    features: str
    #: ``"A"`` (pool + the query's own exemplars) or ``"B"`` (pool + every exemplar).
    protocol: str
    #: ``"tune"``, ``"val"``, ``"seen"`` or ``"unseen"``.
    split: str
    #: ``"object"``, ``"style"`` or ``"all"``.
    case: str
    queries: int
    metrics: RetrievalMetrics = dataclasses.field(metadata=json_key(inline=True))


@dataclasses.dataclass(frozen=True)
class ControlRow:
    """The negative control (samples of the un-customized base model) for one extractor and protocol."""

    extractor: str
    features: str
    protocol: str
    metrics: RetrievalMetrics = dataclasses.field(metadata=json_key(inline=True))


@dataclasses.dataclass(frozen=True)
class HubRow:
    """Hub statistics of the unseen queries' protocol-B rankings (:func:`~genprov.attribution.data.hub_statistics`)."""

    extractor: str
    features: str
    stats: Mapping[str, float] = dataclasses.field(metadata=json_key(inline=True))


@dataclasses.dataclass(frozen=True)
class SoftMetrics:
    """A soft attribution's calibration scalars and its quality on the unseen queries."""

    inv_tau: float
    bias: float
    nll: float
    ece: float
    #: Mean share of influence outside the top N.
    remaining_influence: float
    #: Mean share of influence given to the exemplars.
    exemplar_mass: float


@dataclasses.dataclass(frozen=True)
class SoftRow:
    """Soft attribution of one extractor's features before and after calibration on the validation cases."""

    extractor: str
    features: str
    before: SoftMetrics
    after: SoftMetrics
    fitted_on_val_queries: int
    val_nll: float | None
    test_queries: int


@dataclasses.dataclass(frozen=True)
class TuningRow:
    """The feature mapper kept for one extractor."""

    dim: int
    #: The chosen candidate's ``lr``, ``two_towers`` and ``mapper``.
    chosen: Mapping[str, Any]
    best_step: int | None
    untuned_val_map: float | None = dataclasses.field(metadata=json_key("untuned_val_mAP"))
    tuned_val_map: float | None = dataclasses.field(metadata=json_key("tuned_val_mAP"))
    #: Validation records of the kept candidate's training.
    history: tuple[Mapping[str, float], ...]


@dataclasses.dataclass(frozen=True)
class ExtractorClaim:
    """One extractor's unseen-class numbers (protocol A) behind the claims."""

    untuned_map: float = dataclasses.field(metadata=json_key("untuned_mAP"))
    tuned_map: float = dataclasses.field(metadata=json_key("tuned_mAP"))
    tuned_minus_untuned: float
    untuned_over_chance: float
    control_map: float = dataclasses.field(metadata=json_key("control_mAP"))
    control_over_chance: float
    calibration_lowers_nll: bool


@dataclasses.dataclass(frozen=True)
class Claims:
    """The paper's claims checked on unseen queries under protocol A (control and chance likewise)."""

    chance_map: float = dataclasses.field(metadata=json_key("chance_mAP"))
    per_extractor: Mapping[str, ExtractorClaim]
    every_method_far_above_chance: bool
    tuned_beats_untuned: Mapping[str, bool]
    tuned_gain_at_least_0_1: Mapping[str, bool] = dataclasses.field(metadata=json_key("tuned_gain_at_least_0.1"))
    control_near_chance: bool
    calibration_lowers_nll: bool


@dataclasses.dataclass(frozen=True)
class SimilarityResult(ExperimentResult):
    """Everything ``genprov reproduce similarity`` measured (``results.json``)."""

    experiment: str
    config: Mapping[str, Any]
    data: DataInfo
    benchmark: BenchmarkInfo
    influence_strength: InfluenceStrength
    #: Protocol -> chance level of the unseen queries.
    chance_unseen: Mapping[str, RetrievalMetrics]
    retrieval: tuple[RetrievalRow, ...]
    control: tuple[ControlRow, ...]
    hubness: tuple[HubRow, ...]
    soft_attribution: tuple[SoftRow, ...]
    #: Extractor -> its tuned mapper.
    tuning: Mapping[str, TuningRow]
    #: Extractor -> why it was skipped (a missing optional package).
    skipped_extractors: Mapping[str, str]
    #: The extractor shown in the report's gallery (best tuned validation mAP).
    gallery_extractor: str
    claims: Claims
    timings_seconds: Mapping[str, float]

    def retrieval_row(
        self, extractor: str, features: str, *, protocol: str = "A", split: str = "unseen", case: str = "all"
    ) -> RetrievalRow:
        """The retrieval row of ``extractor``'s ``features`` (default: the headline, unseen queries, protocol A)."""
        return find_row(
            self.retrieval, extractor=extractor, features=features, protocol=protocol, split=split, case=case
        )
