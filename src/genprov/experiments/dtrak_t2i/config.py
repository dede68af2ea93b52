"""Settings of ``genprov reproduce dtrak-t2i``: :class:`DTRAKT2IExperimentConfig` and its data / quick presets."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from genprov.attribution.data.trak import DAMPING_GRID, TRAKConfig
from genprov.config import require, require_ints
from genprov.experiments.base import ExperimentConfig
from genprov.models.t2i import LoRAConfig
from genprov.models.train_config import LR_SCHEDULES

__all__ = ["PAPER_ARTBENCH2", "DTRAKT2IExperimentConfig"]

#: The paper's ArtBench-2 validation LDS (Zheng et al., ICLR 2024, table 2: LoRA on miniSD, 5,000 images) by
#: the number of timesteps K: ``{K: {method: LDS}}``.
PAPER_ARTBENCH2: dict[int, dict[str, float]] = {
    10: {"TRAK": 0.124, "D-TRAK": 0.279},
    100: {"TRAK": 0.276, "D-TRAK": 0.327},
}

#: A tiny pipeline (16x16 images, 4x4x4 latents; ``genprov.models.t2i.tiny_pipeline_config``'s sizes) and a
#: short base training: keys of ``T2IConfig`` / ``T2ITrainConfig`` (``genprov.models.t2i.quick_configs``).
_TINY_BASE: dict[str, Any] = {
    "vae_block_out_channels": [8, 16, 16],
    "unet_block_out_channels": [32, 64],
    "attention_heads": 4,
    "text_hidden_size": 32,
    "text_heads": 2,
    "max_length": 12,
    "vocab_size": 600,
}
#: Per-dataset field values. ``cifar10`` is the ArtBench-2 analogue: the base pipeline learns the 8 other
#: CIFAR-10 classes (3,200 images of the shared subset) at 32x32 (8x8x4 latents; the ``T2IConfig`` defaults,
#: 600 VAE and 1,500 U-Net steps: about 25 minutes on one core), the LoRA learns automobile vs horse.
#: ``digits`` (built in): base on 2-9, LoRA on 0 vs 1 ("a handwritten zero"), 16x16 with the tiny pipeline.
_DATA_PRESETS: dict[str, dict[str, Any]] = {
    "digits": {"image_size": 16, "lora_classes": ("0", "1"), "base": {**_TINY_BASE, "unet_steps": 1500}},
    "mnist": {"image_size": 32, "lora_classes": ("0", "1")},
    "cifar10": {
        "image_size": 32,
        "lora_classes": ("automobile", "horse"),
        "base": {"vae_steps": 600, "unet_steps": 1500},
    },
}
#: ``--quick``: a one-to-three-minute smoke run (tiny pipeline, few images, 4 subsets x 2 seeds, short LoRAs).
_QUICK: dict[str, Any] = {
    "image_size": 16,
    "base": {**_TINY_BASE, "vae_steps": 60, "unet_steps": 120, "batch_size": 32, "checkpoint_every": 0},
    "n_base": 400,
    "n_train": 40,
    "lora_rank": 4,
    "lora_epochs": 4,
    "lora_batch_size": 8,
    "n_subsets": 4,
    "n_seeds": 2,
    "n_real_queries": 8,
    "n_gen_queries": 8,
    "eval_draws": 16,
    "proj_dim": 256,
    "sample_steps": 10,
    "grid_per_prompt": 4,
    "gallery_queries": 2,
    "study": ({"n_timesteps": 20},),
    "n_boot": 100,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DTRAKT2IExperimentConfig(ExperimentConfig):
    """What ``run_dtrak_t2i`` trains and measures.

    The constructor's defaults are the full run's sizes; :meth:`from_dict` (what ``genprov reproduce`` uses)
    starts from the dataset's preset (image size, LoRA classes, base pipeline) and, with ``quick``, the
    few-minute sizes, then applies the keys given.

    Attributes:
        data: A labelled dataset with at least 3 classes: ``"digits"`` (built in), ``"cifar10"`` (the ArtBench-2
            analogue; needs ``data_root``), ``"mnist"``, or any other dataset name or path.
        data_root: Folder of the dataset files (``None``: ``$GENPROV_DATA``).
        seed: Seed of the data choice, every model, the noise and the projections.
        quick: A few-minute smoke run.
        image_size: Side the images are resized to (a multiple of the VAE's downsampling factor 4).
        captions: ``"labels"`` (``"a handwritten zero"``, ``"a photo of a horse"``) or a captions file for the
            dataset's train split (``genprov.models.t2i.read_captions_file``; its test images are captioned
            from their labels).
        lora_classes: The two classes the LoRA learns (names or indices); the base pipeline learns the others.
        base_pipeline: A pipeline folder to use as the base instead of training one (``None``: train it).
        base: ``T2IConfig`` / ``T2ITrainConfig`` values of the base pipeline (their defaults: the 32x32 run).
        n_base: Base training images (a seeded subset of the other classes; ``None``: all of them).
        n_train: LoRA training images (half from each class, seeded; the paper's ArtBench-2 has 5,000).
        lora_rank: Rank of the LoRA (the paper's 128 is for miniSD's 320-1280 channels; the base here has 64-128).
        lora_lr: LoRA peak learning rate (``ArtBench2/scripts/run_train.sh``: 3e-4).
        lora_lr_schedule: ``"cosine"`` (``run_train.sh``'s ``--lr_scheduler="cosine"``) or ``"constant"``.
        lora_warmup_fraction: Linear warm-up fraction of the cosine schedule (the diffusers script's default 500
            warm-up steps of the original's about 7,800: 0.064).
        lora_weight_decay: AdamW weight decay (``run_train.sh``: 1e-6).
        lora_batch_size: LoRA training batch size.
        lora_epochs: Epochs of every LoRA (full and subsets): a LoRA on ``m`` images trains
            ``lora_epochs * ceil(m / lora_batch_size)`` steps, as the original's ``--num_train_epochs=100``.
        n_subsets: LDS subsets (random halves of the LoRA training set); each retrains the LoRA only.
        subset_fraction: Fraction of the LoRA training set in each subset.
        n_seeds: LoRA training seeds per subset (the original: 3); two or more give the noise ceiling.
        n_real_queries: Held-out real images of the two classes (half choose lambda, half are reported).
        n_gen_queries: Images generated by the LoRA'd pipeline from the two class prompts (same split).
        eval_draws: (timestep, noise) pairs per query for the measured loss (stratified over the T timesteps;
            the original uses each of the 1,000 timesteps once).
        n_timesteps: K, timesteps per example in the features (the paper: 10, and 100 in its K study).
        proj_dim: Projection dimension k.
        projector: Projector (``sjlt``).
        relative_dampings: lambda grid, relative to ``trace(Phi^T Phi) / k``.
        study: Feature variants measured on the same benchmark (``TRAKConfig`` changes; default K = 100).
        sample_steps: DDIM steps of generation (the original's ``gen_text_to_image_lora.py``: 50).
        guidance_scale: Classifier-free guidance of generation (the diffusers default the original keeps: 7.5).
        grid_per_prompt: Images per prompt in the report's sample grid.
        gallery_queries: Generated test queries shown with their top influencers.
        n_boot: Bootstrap resamples of the confidence intervals.
    """

    data: str = "digits"
    data_root: str | None = None
    image_size: int = 32
    captions: str = "labels"
    lora_classes: tuple[str | int, ...] = ("automobile", "horse")
    base_pipeline: str | None = None
    base: dict[str, Any] = dataclasses.field(default_factory=dict)
    n_base: int | None = None
    n_train: int = 200
    lora_rank: int = 8
    lora_lr: float = 3e-4
    lora_lr_schedule: str = "cosine"
    lora_warmup_fraction: float = 0.064
    lora_weight_decay: float = 1e-6
    lora_batch_size: int = 16
    lora_epochs: int = 20
    n_subsets: int = 16
    subset_fraction: float = 0.5
    n_seeds: int = 2
    n_real_queries: int = 32
    n_gen_queries: int = 32
    eval_draws: int = 100
    n_timesteps: int = 10
    proj_dim: int = 1024
    projector: str = "sjlt"
    relative_dampings: tuple[float, ...] = DAMPING_GRID
    study: tuple[dict[str, Any], ...] = ({"n_timesteps": 100},)
    sample_steps: int = 50
    guidance_scale: float = 7.5
    grid_per_prompt: int = 8
    gallery_queries: int = 4
    n_boot: int = 1000

    def validate(self) -> None:
        super().validate()
        require_ints(
            self,
            (
                "image_size",
                "n_train",
                "lora_rank",
                "lora_batch_size",
                "lora_epochs",
                "n_subsets",
                "n_seeds",
                "eval_draws",
                "n_timesteps",
                "proj_dim",
                "sample_steps",
                "grid_per_prompt",
                "n_boot",
            ),
            minimum=1,
        )
        require_ints(self, ("n_real_queries", "n_gen_queries", "gallery_queries"), minimum=0)
        if self.n_base is not None:
            require_ints(self, ("n_base",), minimum=1)
        require(
            len(self.lora_classes) == 2 and self.lora_classes[0] != self.lora_classes[1],
            "lora_classes",
            'two different classes (names or indices), e.g. ["automobile", "horse"]',
            self.lora_classes,
        )
        require(self.n_train >= 4, "n_train", "at least 4 (2 per class)", self.n_train)
        require(self.n_real_queries + self.n_gen_queries >= 4, "n_real_queries + n_gen_queries", "at least 4", 0)
        require(self.n_subsets >= 3, "n_subsets", "at least 3 (LDS ranks subsets)", self.n_subsets)
        require(0 < self.subset_fraction < 1, "subset_fraction", "a number in (0, 1)", self.subset_fraction)
        require(self.lora_lr > 0, "lora_lr", "a positive number", self.lora_lr)
        require(self.lora_weight_decay >= 0, "lora_weight_decay", "a non-negative number", self.lora_weight_decay)
        require(
            self.lora_lr_schedule in LR_SCHEDULES, "lora_lr_schedule", f"one of {LR_SCHEDULES}", self.lora_lr_schedule
        )
        require(0 <= self.lora_warmup_fraction < 1, "lora_warmup_fraction", "in [0, 1)", self.lora_warmup_fraction)
        require(self.guidance_scale >= 1, "guidance_scale", "a number >= 1 (1: no guidance)", self.guidance_scale)
        for change in self.study:
            require(
                isinstance(change, Mapping) and bool(change), "study", "non-empty dicts of TRAKConfig changes", change
            )
            TRAKConfig().replace(**change)  # raises with a suggestion on an unknown field
        require(
            len(self.relative_dampings) >= 1 and all(d > 0 for d in self.relative_dampings),
            "relative_dampings",
            "positive numbers",
            self.relative_dampings,
        )

    @classmethod
    def preset_values(cls, data: str, quick: bool) -> dict[str, Any]:
        """The dataset's preset and, with ``quick``, the few-minute sizes (a quick run keeps the data's
        ``lora_classes``)."""
        return {**_DATA_PRESETS.get(data, {}), **(_QUICK if quick else {})}

    def lora_config(self, n_images: int, seed: int) -> LoRAConfig:
        """The LoRA of ``n_images`` images trained with ``seed`` (same epochs for the full LoRA and the subsets)."""
        steps = self.lora_epochs * math.ceil(n_images / self.lora_batch_size)
        return LoRAConfig(
            rank=self.lora_rank,
            lr=self.lora_lr,
            lr_schedule=self.lora_lr_schedule,
            warmup_fraction=self.lora_warmup_fraction,
            weight_decay=self.lora_weight_decay,
            steps=steps,
            batch_size=self.lora_batch_size,
            seed=seed,
            checkpoint_every=0,
            log_every=max(1, steps // 50),
        )
