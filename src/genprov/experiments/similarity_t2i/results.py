"""The typed result of ``genprov reproduce similarity-t2i``; :meth:`SimilarityT2IResult.to_dict` is ``results.json``.

The retrieval, control, hubness, soft-attribution, tuning and claim rows are those of ``reproduce similarity``
(:mod:`genprov.experiments.similarity.results`); what is new is the pipeline (:class:`T2IBenchModel`), the
influence of each customization (:class:`CaseRow` for object cases, :class:`StyleCaseRow` for style cases) and each
kind of case on its own (:class:`KindRow`; its retrieval rows are the ``retrieval`` rows whose ``case`` is the kind).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from genprov.experiments.base import ExperimentResult, json_key
from genprov.experiments.similarity.results import (
    BenchmarkInfo,
    Claims,
    ControlRow,
    DataInfo,
    HubRow,
    InfluenceStrength,
    RetrievalMetrics,
    RetrievalRow,
    SoftRow,
    TuningRow,
    find_row,
)

__all__ = ["CaseRow", "KindRow", "SimilarityT2IResult", "StyleCaseRow", "T2IBenchModel"]


@dataclasses.dataclass(frozen=True)
class T2IBenchModel:
    """The base pipeline and how each customization was made."""

    base_pipeline: str
    #: Whether the base pipeline was trained by this run (``False``: ``base_pipeline`` was given).
    trained_here: bool
    token: str
    #: One customization's prompt (the others differ by the class noun unless ``object_prompt`` is fixed).
    example_prompt: str
    lora_rank: int
    lora_steps: int


@dataclasses.dataclass(frozen=True)
class CaseRow:
    """One customization's influence: how often its exemplar is its samples' nearest neighbour.

    Pixel figures compare the customized pipeline's samples with the base pipeline's paired samples (same seeds,
    the prompt without the token); ``feature_nn_rate`` is the same share in each extractor's untuned features
    (protocol A: pool + the case's exemplar).
    """

    id: str
    role: str
    class_: int = dataclasses.field(metadata=json_key("class"))
    prompt: str
    pixel_nn_rate: float
    base_pixel_nn_rate: float
    #: Median RMS pixel distance of the customized samples to the exemplar.
    to_exemplar: float
    #: The same for the base pipeline's paired samples.
    base_to_exemplar: float
    #: Extractor -> share of samples whose nearest neighbour (untuned features) is the exemplar.
    feature_nn_rate: Mapping[str, float]


@dataclasses.dataclass(frozen=True)
class StyleCaseRow:
    """One style customization's influence: as :class:`CaseRow`, for exemplars of several classes sharing a style.

    A sample's nearest neighbour counts when it is any of the case's exemplars; distances are to the nearest one.
    """

    id: str
    role: str
    style: str
    classes: tuple[int, ...]
    #: The prompts its samples cycle through (one per exemplar).
    prompts: tuple[str, ...]
    pixel_nn_rate: float
    base_pixel_nn_rate: float
    to_exemplar: float
    base_to_exemplar: float
    feature_nn_rate: Mapping[str, float]


@dataclasses.dataclass(frozen=True)
class KindRow:
    """One kind of customization (``"object"`` or ``"style"``) on its own; its retrieval rows are
    :meth:`SimilarityT2IResult.retrieval_row` with ``case=kind``."""

    kind: str
    cases: int
    #: Role -> customizations of this kind.
    roles: Mapping[str, int]
    #: The pixel influence strength of this kind's samples alone.
    influence_strength: InfluenceStrength
    #: Share of the paired base samples whose pixel nearest neighbour (pool + the case's exemplars) is an exemplar.
    base_pixel_nn_rate: float
    #: Extractor -> share of this kind's samples whose nearest neighbour (untuned features, protocol A) is an exemplar.
    feature_nn_rate: Mapping[str, float]
    #: The negative control restricted to this kind's unseen cases (empty without control samples).
    control: tuple[ControlRow, ...]


@dataclasses.dataclass(frozen=True)
class SimilarityT2IResult(ExperimentResult):
    """Everything ``genprov reproduce similarity-t2i`` measured (``results.json``)."""

    experiment: str
    config: Mapping[str, Any]
    data: DataInfo
    model: T2IBenchModel
    benchmark: BenchmarkInfo
    influence_strength: InfluenceStrength
    #: The object cases.
    cases: tuple[CaseRow, ...]
    style_cases: tuple[StyleCaseRow, ...]
    #: ``"object"`` (and ``"style"`` when there are style cases) -> that kind on its own.
    kinds: Mapping[str, KindRow]
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
