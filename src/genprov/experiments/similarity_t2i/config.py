"""Settings of ``genprov reproduce similarity-t2i``: :class:`SimilarityT2IExperimentConfig` and its presets."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from genprov.attribution.data import TuningConfig
from genprov.config import require, require_ints
from genprov.eval.customization import DEFAULT_SEEN_CLASSES, N_VAL_CLASSES, TUNING_GRID
from genprov.experiments.base import ExperimentConfig
from genprov.experiments.similarity.config import EXTRACTOR_NAMES, check_extractor_settings, mapper_tuning_config
from genprov.experiments.similarity.customization import STYLES
from genprov.models.t2i import LoRAConfig

__all__ = ["SimilarityT2IExperimentConfig"]

#: A tiny pipeline (16x16 images, 4x4x4 latents; ``genprov.models.t2i.tiny_pipeline_config``'s sizes): keys of
#: ``T2IConfig`` / ``T2ITrainConfig`` (``genprov.models.t2i.quick_configs``).
_TINY_BASE: dict[str, Any] = {
    "vae_block_out_channels": [8, 16, 16],
    "unet_block_out_channels": [32, 64],
    "attention_heads": 4,
    "text_hidden_size": 32,
    "text_heads": 2,
    "max_length": 12,
    "vocab_size": 600,
}
#: The full run's base pipeline: the ``T2IConfig`` defaults (32x32 images, 8x8x4 latents) trained 400 VAE and
#: 1,000 U-Net steps (keys of ``quick_configs``).
_FULL_BASE: dict[str, Any] = {"vae_steps": 400, "unet_steps": 1000, "checkpoint_every": 100}
#: ``--quick``: a few-minute smoke run (tiny pipeline on 16x16 images, 4 object and 2 style customizations of few
#: steps).
_QUICK: dict[str, Any] = {
    "image_size": 16,
    "base": {**_TINY_BASE, "vae_steps": 200, "unet_steps": 500, "batch_size": 32, "checkpoint_every": 0},
    "n_pool": 300,
    "n_object": 4,
    "n_style_cases": 2,
    "lora_steps": 100,
    "lora_lr": 1e-2,
    "n_class_images": 8,
    "class_sample_steps": 10,
    "n_samples": 6,
    "n_control_per_case": 3,
    "sample_steps": 10,
    "classifier_steps": 100,
    "simclr_steps": 20,
    "extractors": ("pixels", "classifier", "random-cnn"),
    "tuning": {"max_steps": 40, "eval_every": 10},
    "tuning_grid": ({"lr": 1e-4},),
    "gallery_queries": 2,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimilarityT2IExperimentConfig(ExperimentConfig):
    """What ``run_similarity_t2i`` trains and measures.

    The constructor's defaults are the full run (MNIST at 32x32: about an hour on one core, see the package
    docstring); :meth:`from_dict` (what ``genprov reproduce`` uses) applies, with ``quick``, the few-minute sizes,
    then the keys given.

    Attributes:
        data: A labelled dataset: ``"digits"`` (built in, 8x8 upsampled), ``"mnist"`` (the full run's; needs
            ``data_root``), or any other dataset name or path.
        data_root: Folder of the dataset files (``None``: ``$GENPROV_DATA``).
        image_size: Side the images are resized to (a multiple of the VAE's downsampling factor 4).
        captions: ``"labels"`` (``"a handwritten seven"``) or a captions file for the train split
            (``genprov.models.t2i.read_captions_file``); the exemplars' class nouns come from their labels.
        base_pipeline: A pipeline folder to use as the base instead of training one (``None``: train it). Its
            training set must be this run's pool (the same ``data``, ``n_pool`` and ``seed``): it is the pool the
            exemplars are retrieved from.
        base: ``T2IConfig`` / ``T2ITrainConfig`` values of the base pipeline (their defaults: the 32x32 run).
        n_pool: Training images of the base pipeline (a seeded subset of the train split): the attribution pool.
        n_heldout: Held-out (test split) images the exemplars are drawn from (``None``: all).
        n_object: Customizations (object cases, one held-out exemplar each; classes alternate seen / unseen).
        n_style_cases: Style customizations, after the object cases (0: none, the object-only benchmark): each takes
            ``style_exemplars`` held-out images of distinct classes, all seen or all unseen (cases alternate),
            transformed by one of ``styles``, and learns the token as their shared style from one prompt per
            exemplar naming its class (``style_prompt``); its samples cycle through those prompts.
        styles: Style transforms (names of ``reproduce similarity``'s ``STYLES``), used in turn. The default,
            ``"shear"``, is the one a VAE keeps (see ``genprov.experiments.similarity_t2i.customization``).
        style_exemplars: Exemplars per style case (distinct classes of one side of ``seen_classes``).
        style_prompt: The style cases' prompt. ``None``: the token after the class caption's first word, as a
            modifier of the whole (``"a handwritten seven"`` -> ``"a <v1> handwritten seven"``, where an object case
            reads ``"a handwritten <v1> seven"``): the token is what the exemplars of different classes share, the
            class word what differs. Or a template holding ``{caption}`` and the token, e.g. ``"{caption} in <v1>
            style"``, the issue's wording, for a base that knows the words: a base trained here from captions never
            saw ``in`` or ``style``, which the tokenizer spells in 2 and 5 untrained byte tokens (13 tokens for
            ``"a handwritten seven in <v1> style"``, past the quick base's 12). The class prompt of prior
            preservation is each caption.
        seen_classes: Classes whose cases may tune features; the others are the unseen test classes.
        n_val_classes: Seen classes whose cases validate (early stopping, calibration) instead of tuning.
        object_prompt: The customization's prompt. ``None``: DreamBooth's ``"a [V] [class noun]"`` built from the
            exemplar's class caption, the token before its last word (``"a handwritten <v1> seven"``; the class
            prompt of prior preservation is the class caption, which the base pipeline learnt); or a fixed prompt
            holding the token, e.g. ``"a photo of <v1> digit"`` (class prompt: the prompt without the token; its
            words need not be in the base's captions, then the token must carry the class too).
        new_token: The identifier: a new token added to the tokenizer and trained with the LoRA.
        lora_rank: Rank of each customization's LoRA.
        lora_lr: Its learning rate (constant). A pilot on digits at 16x16 (the quick base; ``seed=0``, two exemplars
            of one class, 8 samples each, influence strength only): lr 1e-2 for 100 steps made the exemplar the pixel
            nearest neighbour of 50% of the samples (base pipeline: 0%), 3e-3 for 200 steps 38% with samples closer
            to it (RMS 0.42 vs the base's 0.57), 1e-3 for 40 steps changed nothing measurable.
        lora_steps: Its training steps.
        lora_batch_size: Exemplar images per step (repeated when there are fewer), plus as many class images.
        prior_loss_weight: Weight of prior preservation's loss (0: none).
        n_class_images: Class images sampled from the base pipeline for prior preservation (per class prompt).
        class_sample_steps: Denoising steps of the class images.
        n_samples: Samples of each customized pipeline from its prompt (the queries).
        n_control_per_case: Samples of the base pipeline from each unseen case's class prompt with the same seeds
            as the case's first samples (the negative control queries; also the paired base of the influence).
        sample_steps: DDIM steps of every sample.
        guidance_scale: Classifier-free guidance of every sample.
        extractors, classifier_steps, simclr_steps, effnet_image_size, tuning, tuning_grid, soft_top_n,
            gallery_queries, gallery_k: As in ``SimilarityExperimentConfig`` (the extractors, their tuning, the
            soft attribution and the report's gallery).
    """

    data: str = "digits"
    data_root: str | None = None
    image_size: int = 32
    captions: str = "labels"
    base_pipeline: str | None = None
    base: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(_FULL_BASE))
    n_pool: int = 2000
    n_heldout: int | None = None
    n_object: int = 20
    n_style_cases: int = 6
    styles: tuple[str, ...] = ("shear",)
    style_exemplars: int = 3
    style_prompt: str | None = None
    seen_classes: tuple[int, ...] = DEFAULT_SEEN_CLASSES
    n_val_classes: int = N_VAL_CLASSES
    object_prompt: str | None = None
    new_token: str = "<v1>"
    lora_rank: int = 4
    lora_lr: float = 5e-3
    lora_steps: int = 200
    lora_batch_size: int = 2
    prior_loss_weight: float = 1.0
    n_class_images: int = 16
    class_sample_steps: int = 20
    n_samples: int = 16
    n_control_per_case: int = 8
    sample_steps: int = 20
    guidance_scale: float = 7.5
    extractors: tuple[str, ...] = EXTRACTOR_NAMES
    classifier_steps: int = 1000
    simclr_steps: int = 300
    effnet_image_size: int = 112
    tuning: dict[str, Any] = dataclasses.field(default_factory=lambda: {"eval_every": 10})
    tuning_grid: tuple[dict[str, Any], ...] = TUNING_GRID
    soft_top_n: int = 100
    gallery_queries: int = 3
    gallery_k: int = 8

    def validate(self) -> None:
        super().validate()
        require_ints(
            self,
            (
                "image_size",
                "n_pool",
                "n_object",
                "lora_rank",
                "lora_steps",
                "lora_batch_size",
                "n_class_images",
                "class_sample_steps",
                "n_samples",
                "sample_steps",
                "classifier_steps",
                "soft_top_n",
                "gallery_k",
                "effnet_image_size",
            ),
            minimum=1,
        )
        require_ints(self, ("simclr_steps", "gallery_queries", "n_control_per_case", "n_style_cases"), minimum=0)
        require(
            self.n_heldout is None or self.n_heldout >= 1, "n_heldout", "a positive integer or None", self.n_heldout
        )
        require(self.n_object >= 3, "n_object", "at least 3 (tuning, validation and unseen cases)", self.n_object)
        require(
            self.n_control_per_case <= self.n_samples,
            "n_control_per_case",
            f"at most n_samples ({self.n_samples}): control samples pair with a case's first samples",
            self.n_control_per_case,
        )
        require(
            isinstance(self.n_val_classes, int) and 1 <= self.n_val_classes < len(self.seen_classes),
            "n_val_classes",
            f"an integer in [1, {len(self.seen_classes) - 1}] (fewer than the seen classes)",
            self.n_val_classes,
        )
        require(
            bool(self.new_token.strip()) and not any(ch.isspace() for ch in self.new_token),
            "new_token",
            "one word without spaces, e.g. <v1>",
            self.new_token,
        )
        require(
            self.object_prompt is None or self.new_token in self.object_prompt.split(),
            "object_prompt",
            f"a prompt holding the token {self.new_token!r} as a word (e.g. 'a photo of {self.new_token} digit'), or null",
            self.object_prompt,
        )
        require(
            bool(self.styles) and all(s in STYLES for s in self.styles),
            "styles",
            f"a non-empty list of style names from {sorted(STYLES)}",
            self.styles,
        )
        require(
            isinstance(self.style_exemplars, int) and 2 <= self.style_exemplars <= len(self.seen_classes),
            "style_exemplars",
            f"an integer in [2, {len(self.seen_classes)}] (a style is shared by exemplars of distinct seen classes)",
            self.style_exemplars,
        )
        require(
            self.style_prompt is None
            or ("{caption}" in self.style_prompt and self.new_token in self.style_prompt.split()),
            "style_prompt",
            f"a template holding {{caption}} and the token {self.new_token!r} as a word (e.g. "
            f"'{{caption}} in {self.new_token} style'), or null",
            self.style_prompt,
        )
        require(self.lora_lr > 0, "lora_lr", "a positive number", self.lora_lr)
        require(self.prior_loss_weight >= 0, "prior_loss_weight", "a non-negative number", self.prior_loss_weight)
        require(self.guidance_scale >= 1, "guidance_scale", "a number >= 1 (1: no guidance)", self.guidance_scale)
        check_extractor_settings(self)

    def lora_config(self, seed: int) -> LoRAConfig:
        """The :class:`LoRAConfig` of one customization trained with ``seed``."""
        return LoRAConfig(
            rank=self.lora_rank,
            lr=self.lora_lr,
            steps=self.lora_steps,
            batch_size=self.lora_batch_size,
            seed=seed,
            prior_loss_weight=self.prior_loss_weight,
            n_class_images=self.n_class_images,
            class_sample_steps=self.class_sample_steps,
            checkpoint_every=0,
            log_every=max(1, self.lora_steps // 20),
        )

    def tuning_config(self, change: Mapping[str, Any] | None = None) -> TuningConfig:
        """The mappers' :class:`TuningConfig` (with one ``tuning_grid`` ``change``)."""
        return mapper_tuning_config(self, change)

    @classmethod
    def preset_values(cls, data: str, quick: bool) -> dict[str, Any]:
        """The full run's base pipeline or, with ``quick``, the few-minute sizes (the same for every dataset; a
        ``base`` given with ``--set`` merges key by key with the preset's)."""
        return dict(_QUICK) if quick else {"base": dict(_FULL_BASE)}
