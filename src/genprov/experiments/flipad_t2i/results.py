"""The typed result of ``genprov reproduce flipad-t2i``; :meth:`FlipadT2IResult.to_dict` is ``results.json``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from genprov.experiments.base import ExperimentResult
from genprov.experiments.flipad.results import AucAcc, Summary

__all__ = ["FlipadT2IResult", "PipelineInfo"]


@dataclasses.dataclass(frozen=True)
class PipelineInfo:
    """One pipeline of the run."""

    #: ``"own"``, ``"other"`` or ``"shared-vae"``.
    role: str
    folder: str
    #: Training seed (``None``: a given folder).
    seed: int | None
    #: Whether its VAE is the own pipeline's (only the U-Net and text encoder were trained).
    shares_own_vae: bool
    #: Training time of this run (0 for a given or cached pipeline).
    train_seconds: float


@dataclasses.dataclass(frozen=True)
class FlipadT2IResult(ExperimentResult):
    """Everything ``genprov reproduce flipad-t2i`` measured (``results.json``)."""

    experiment: str
    config: Mapping[str, Any]
    pipelines: tuple[PipelineInfo, ...]
    #: The Table 4 analogue: method -> own samples vs real test images and the other pipeline's samples.
    table4: Summary
    #: The hard case: method -> own samples vs a pipeline with the same VAE (only the U-Net differs).
    shared_vae: Summary
    #: Method -> mean over the Table 4 sources.
    headline: Mapping[str, AucAcc]
    #: Phase -> seconds.
    timings_s: Mapping[str, float]
