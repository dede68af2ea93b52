"""Settings of ``genprov reproduce flipad-t2i``: :class:`FlipadT2IExperimentConfig` and its quick preset."""

from __future__ import annotations

import dataclasses
from typing import Any

from genprov.attribution.model import (
    MODEL_ATTRIBUTORS,
    AerobladeAttributorConfig,
    DeepSADConfig,
    FinalLayerInversionAttributorConfig,
)
from genprov.attribution.model.flipad import FLIPAD_IMAGE_SETTINGS
from genprov.config import require, require_ints
from genprov.experiments.base import ExperimentConfig
from genprov.experiments.flipad.config import FlipadExperimentConfig

__all__ = ["METHODS", "FlipadT2IExperimentConfig"]

#: Methods compared: FLIPAD on the VAE decoder, the pixel / DCT baselines of Tables 1-3 and AEROBLADE.
METHODS = ("flipad", "raw-pixels", "dct", "aeroblade")

#: ``--quick``: 16x16 images, tiny pipelines (``genprov.models.t2i.tiny_pipeline_config``'s sizes) trained for a
#: few steps, small pools: one to three minutes on 2 cores.
_QUICK: dict[str, Any] = {
    "image_size": 16,
    "pipeline": {
        "vae_block_out_channels": [8, 16, 16],
        "unet_block_out_channels": [32, 64],
        "attention_heads": 4,
        "text_hidden_size": 32,
        "text_heads": 2,
        "max_length": 12,
        "vocab_size": 600,
        "vae_steps": 60,
        "unet_steps": 60,
        "batch_size": 32,
        "checkpoint_every": 0,
    },
    "other_vae_steps": 60,
    "n_pipeline_train": 400,
    "n_train": 60,
    "n_holdout": 30,
    "n_test": 40,
    "n_resamples": 1,
    "sample_steps": 8,
    "flipad": FinalLayerInversionAttributorConfig(**{**FLIPAD_IMAGE_SETTINGS, "max_iter": 100}).to_dict(),
    "detector": DeepSADConfig(n_epochs=10, lr_milestones=(8,)).to_dict(),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlipadT2IExperimentConfig(ExperimentConfig):
    """What ``run_flipad_t2i`` trains and measures (the constructor's defaults: the full 32x32 run).

    Attributes:
        data: A labelled dataset (captions from the labels, e.g. ``"a handwritten seven"``): ``"digits"``
            (built in), ``"cifar10"`` / ``"mnist"`` (need ``data_root``), or a path.
        data_root: Folder of the dataset files (``None``: ``$GENPROV_DATA``).
        seed: Seed of the data choice, the pipelines (own: ``seed``, other: ``seed + 1``, shared VAE:
            ``seed + 2``), the samples, resamples and detectors.
        quick: A few-minute smoke run.
        image_size: Side of the images and pipelines (a multiple of the VAE's downsampling factor 4).
        base_pipeline: The owner's pipeline folder instead of training one (``None``: train it).
        other_pipeline: The other pipeline's folder (another seed, or other data) instead of training one.
        pipeline: ``T2IConfig`` / ``T2ITrainConfig`` values of the pipelines trained here (their defaults, with
            ``vae_steps`` / ``unet_steps`` below: the 32x32 run).
        other_vae_steps: VAE steps of the other pipeline (it shares nothing with the own pipeline but the
            architecture and the data).
        n_pipeline_train: Training images of the pipelines (a seeded subset; ``None``: all).
        n_train: Own samples and real images each method is fitted on.
        n_holdout: Held-out own samples that set the 0.5% FNR threshold.
        n_test: Samples per source in each balanced test set.
        n_resamples: Random resamples of every split (metrics are averaged).
        methods: Methods compared (``MODEL_ATTRIBUTORS`` names; see :data:`METHODS`).
        flipad: FLIPAD settings (final layer ``decoder.conv_out``, identity activation: found from the VAE).
        aeroblade: AEROBLADE settings (also reported with ``distance="l2"``).
        detector: Deep SAD settings shared by every feature method.
        sample_steps: DDIM steps of every sample.
        guidance_scale: Classifier-free guidance of the samples.
    """

    data: str = "digits"
    data_root: str | None = None
    image_size: int = 32
    base_pipeline: str | None = None
    other_pipeline: str | None = None
    pipeline: dict[str, Any] = dataclasses.field(default_factory=lambda: {"vae_steps": 400, "unet_steps": 800})
    other_vae_steps: int = 400
    n_pipeline_train: int | None = 2000
    n_train: int = 200
    n_holdout: int = 100
    n_test: int = 150
    n_resamples: int = 3
    methods: tuple[str, ...] = METHODS
    flipad: FinalLayerInversionAttributorConfig = dataclasses.field(
        default_factory=lambda: FinalLayerInversionAttributorConfig(**FLIPAD_IMAGE_SETTINGS)
    )
    aeroblade: AerobladeAttributorConfig = dataclasses.field(default_factory=AerobladeAttributorConfig)
    detector: DeepSADConfig = dataclasses.field(default_factory=lambda: DeepSADConfig(n_epochs=20, lr_milestones=(15,)))
    sample_steps: int = 25
    guidance_scale: float = 7.5

    def validate(self) -> None:
        super().validate()
        require_ints(self, ("image_size", "n_train", "n_holdout", "n_test", "n_resamples", "sample_steps"), minimum=1)
        require_ints(self, ("other_vae_steps",), minimum=0)
        require(
            self.image_size % 4 == 0, "image_size", "a multiple of 4 (the VAE's downsampling factor)", self.image_size
        )
        require(self.n_train >= 2, "n_train", "at least 2", self.n_train)
        if self.n_pipeline_train is not None:
            require_ints(self, ("n_pipeline_train",), minimum=1)
        require(len(self.methods) >= 1, "methods", "at least one method", self.methods)
        for method in self.methods:
            require(method in MODEL_ATTRIBUTORS, "methods", f"names among {MODEL_ATTRIBUTORS.names()}", method)
        require(self.guidance_scale >= 1, "guidance_scale", "a number >= 1 (1: no guidance)", self.guidance_scale)

    @classmethod
    def preset_values(cls, data: str, quick: bool) -> dict[str, Any]:
        """With ``quick``, the few-minute sizes."""
        return dict(_QUICK) if quick else {}

    def protocol(self) -> FlipadExperimentConfig:
        """The evaluation protocol of ``genprov reproduce flipad`` (resamples, split sizes, seed, detector) at
        this run's sizes: what its shared evaluation code reads."""
        return FlipadExperimentConfig(
            seed=self.seed,
            n_train=self.n_train,
            n_holdout=self.n_holdout,
            n_test=self.n_test,
            n_resamples=self.n_resamples,
            methods=tuple(m for m in self.methods if m != "aeroblade"),
            flipad=self.flipad,
            detector=self.detector,
        )
