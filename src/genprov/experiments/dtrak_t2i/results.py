"""The typed result of ``genprov reproduce dtrak-t2i``; :meth:`DTRAKT2IResult.to_dict` is ``results.json``.

The LDS evaluation, its rows, the benchmark-size curve and the feature-variant rows are ``reproduce dtrak``'s
(:mod:`genprov.experiments.dtrak.results`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from genprov.experiments.base import ExperimentResult
from genprov.experiments.dtrak.results import BenchmarkSizeRow, LDSResult, VariantLDSRow, VariantPairedRow

__all__ = ["DTRAKT2IResult", "PaperRow", "T2IDataInfo", "T2IModelInfo"]


@dataclasses.dataclass(frozen=True)
class T2IDataInfo:
    """The base pipeline's and the LoRA's data."""

    name: str
    #: The two classes the LoRA learns (names as the dataset calls them).
    lora_classes: tuple[str, str]
    #: The two class prompts (the LoRA training captions and the generated queries' prompts).
    prompts: tuple[str, str]
    #: Images of the other classes the base pipeline was trained on (0: a given ``base_pipeline``).
    n_base: int
    #: LoRA training images (half of each class).
    n_train: int
    n_real_queries: int
    n_gen_queries: int
    image_size: int
    #: Fingerprint of the LoRA training images.
    fingerprint: str


@dataclasses.dataclass(frozen=True)
class T2IModelInfo:
    """The attributed model: a LoRA on a base pipeline trained here (or given)."""

    #: The base pipeline folder.
    base_pipeline: str
    #: Parameters of the base U-Net (without the LoRA).
    unet_params: int
    #: Parameters of the LoRA (the only ones differentiated and retrained).
    lora_params: int
    lora_rank: int
    #: Optimiser steps of the full LoRA (each subset LoRA trains as many epochs, hence about half the steps).
    lora_steps: int
    #: Mean training loss of the full LoRA over the last log interval.
    lora_final_loss: float


@dataclasses.dataclass(frozen=True)
class PaperRow:
    """The paper's ArtBench-2 validation LDS beside ours (real held-out queries, lambda chosen on validation)."""

    timesteps: int
    method: str
    paper_lds: float
    #: Our LDS on the real test queries (``None`` when this K was not measured).
    lds_real: float | None
    #: Our LDS on the generated test queries.
    lds_generated: float | None


@dataclasses.dataclass(frozen=True)
class DTRAKT2IResult(ExperimentResult):
    """Everything ``genprov reproduce dtrak-t2i`` measured (``results.json``)."""

    experiment: str
    config: Mapping[str, Any]
    data: T2IDataInfo
    model: T2IModelInfo
    #: LDS per query kind at K = ``n_timesteps`` (TRAK, D-TRAK, pixel and latent similarity).
    lds: LDSResult
    #: The paper's figures beside ours, per K.
    paper: tuple[PaperRow, ...]
    #: ``"TRAK"`` / ``"D-TRAK"`` -> seconds to featurize the training set and the queries.
    featurization_seconds: Mapping[str, float]
    #: ``"TRAK"`` / ``"D-TRAK"`` -> mean cosine between the training features of distinct examples.
    unrelated_feature_cosine: Mapping[str, float]
    #: Kind -> ``"A - B"`` -> whether the paired 95% interval lies above 0.
    claim: Mapping[str, Mapping[str, bool]]
    lds_vs_benchmark_size: tuple[BenchmarkSizeRow, ...]
    #: TRAK and D-TRAK with each ``study`` setting (e.g. K = 100) on the same benchmark.
    variant_study: tuple[VariantLDSRow | VariantPairedRow, ...]
    timings_seconds: Mapping[str, float]
    #: Path of ``lds_benchmark.npz`` (queries as latents).
    benchmark: str
