"""Settings of ``genprov reproduce similarity``: :class:`SimilarityExperimentConfig` and its data / quick presets."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

from genprov.attribution.data import FEATURE_EXTRACTORS, TuningConfig
from genprov.config import is_int, require, require_choices, require_ints
from genprov.eval.customization import N_VAL_CLASSES, TUNING_GRID
from genprov.experiments.base import ExperimentConfig
from genprov.experiments.similarity.customization import CustomizationConfig
from genprov.models.diffusion import DDPM_PRESETS

__all__ = [
    "EXTRACTOR_NAMES",
    "ExtractorSettings",
    "SimilarityExperimentConfig",
    "check_extractor_settings",
    "mapper_tuning_config",
]

#: Extractors a run evaluates by default (``efficientnet-lite0`` is skipped when its packages are missing).
EXTRACTOR_NAMES = ("pixels", "classifier", "simclr", "random-cnn", "efficientnet-lite0")


class ExtractorSettings(Protocol):
    """The fields an experiment on a customization benchmark shares for its extractors and their tuning
    (``reproduce similarity`` and ``reproduce similarity-t2i``; see :class:`SimilarityExperimentConfig`)."""

    @property
    def seed(self) -> int: ...
    @property
    def image_size(self) -> int: ...
    @property
    def extractors(self) -> tuple[str, ...]: ...
    @property
    def classifier_steps(self) -> int: ...
    @property
    def simclr_steps(self) -> int: ...
    @property
    def effnet_image_size(self) -> int: ...
    @property
    def tuning(self) -> dict[str, Any]: ...
    @property
    def tuning_grid(self) -> tuple[dict[str, Any], ...]: ...
    @property
    def soft_top_n(self) -> int: ...

    def tuning_config(self, change: Mapping[str, Any] | None = None) -> TuningConfig:
        """The mappers' :class:`TuningConfig` (with one ``tuning_grid`` ``change``)."""
        ...


def check_extractor_settings(cfg: ExtractorSettings) -> None:
    """Validate ``extractors``, ``tuning`` and ``tuning_grid`` (a :class:`ConfigError` naming the field)."""
    require(len(cfg.extractors) >= 1, "extractors", "at least one extractor name", cfg.extractors)
    for name in cfg.extractors:
        require(
            name in FEATURE_EXTRACTORS and name != "local-weights",
            "extractors",
            f"names among {[n for n in FEATURE_EXTRACTORS.names() if n != 'local-weights']}",
            name,
        )
    require(isinstance(cfg.tuning, dict), "tuning", "a dict of TuningConfig changes", cfg.tuning)
    TuningConfig().replace(**cfg.tuning)  # unknown keys raise with a suggestion
    for change in cfg.tuning_grid:
        require(isinstance(change, Mapping), "tuning_grid", "dicts of TuningConfig changes", change)
        TuningConfig().replace(**{**cfg.tuning, **change})


def mapper_tuning_config(cfg: ExtractorSettings, change: Mapping[str, Any] | None = None) -> TuningConfig:
    """``cfg``'s :class:`TuningConfig` (its seed is the run's) with one ``tuning_grid`` ``change``."""
    return TuningConfig(seed=cfg.seed).replace(**{**cfg.tuning, **dict(change or {})})


_DATA_PRESETS: dict[str, dict[str, Any]] = {
    "digits": {"image_size": 8, "preset": "small"},
    "mnist": {"image_size": 16, "preset": "base", "n_pool": 2000, "n_heldout": 2000},
    "fashion-mnist": {"image_size": 16, "preset": "base", "n_pool": 2000, "n_heldout": 2000},
}
_QUICK: dict[str, Any] = {
    "n_pool": 300,
    "train_steps": 400,
    "n_object": 8,
    "n_style": 4,
    "finetune_steps": 60,
    "finetune_lr": 1e-3,
    "n_prior": 64,
    "n_samples": 8,
    "ddim_steps": 20,
    "n_control": 16,
    "classifier_steps": 150,
    "simclr_steps": 40,
    "tuning": {"max_steps": 100, "eval_every": 10},
    "tuning_grid": [{"lr": 1e-4}, {"lr": 1e-4, "two_towers": False}],
    "gallery_queries": 2,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimilarityExperimentConfig(ExperimentConfig):
    """What ``run_similarity`` builds and measures.

    The constructor's defaults are the full digits run (about 10-20 minutes on 2 shared cores); :meth:`from_dict`
    (what ``genprov reproduce`` uses) starts from the dataset's preset and, with ``quick``, the few-minute
    sizes, then applies the keys given.

    Attributes:
        data: ``"digits"`` (built in), ``"mnist"`` or ``"fashion-mnist"`` (need ``data_root``).
        data_root: Folder of the dataset files (``None``: ``$GENPROV_DATA``).
        image_size: Side the images are resized to.
        preset: Base DDPM size (``DDPMConfig.preset``).
        n_pool: Training images of the base DDPM (a seeded subset of the train split): the attribution pool.
        n_heldout: Held-out (test split) images the exemplars are drawn from (``None``: all). A source
            without a test split (a flat image folder, an ``.npz`` without ``x_test``) is split by the seed
            (:func:`genprov.data.load_train_test`).
        train_steps: Training steps of the base DDPM.
        batch_size: Its batch size.
        n_object, n_style, style_exemplars, styles, seen_classes, finetune_steps, finetune_lr, n_prior,
            n_samples, ddim_steps: The benchmark (see :class:`CustomizationConfig`). The default 300 steps at
            lr 2e-4 were chosen on a pilot with other cases (``seed=1``, 4 cases, influence strength only, no
            attribution metric): exemplar pixel-NN rate 52% with 4% near copies, against 54% with 15% near
            copies for 200 steps at lr 1e-3.
        n_val_classes: Seen classes whose object cases validate (early stopping, calibration) instead of tuning.
        n_control: Samples of the base (un-customized) model: the negative control queries.
        extractors: Feature extractors evaluated (names in ``FEATURE_EXTRACTORS``; not ``local-weights``).
        classifier_steps: Training steps of the classifier (its penultimate features are an extractor).
        simclr_steps: Training steps of the SimCLR encoder.
        effnet_image_size: Input side of EfficientNet-Lite0 (224 is native; smaller is faster on CPU).
        tuning: Changes to :class:`TuningConfig` shared by every candidate (its seed is the run's seed).
        tuning_grid: Candidate changes on top of ``tuning``; per extractor the mapper with the best validation
            mAP is kept (empty: ``tuning`` alone). A mapper never beats the identity on validation data it
            has not improved, so a grid can only help there.
        soft_top_n: N of the remaining influence ("outside the top N") and of the ECE.
        gallery_queries: Unseen queries shown with their top-k and soft shares.
        gallery_k: Training images per gallery row.
    """

    data: str = "digits"
    data_root: str | None = None
    image_size: int = 8
    preset: str = "small"
    n_pool: int = 1000
    n_heldout: int | None = None
    train_steps: int = 2000
    batch_size: int = 32
    n_object: int = 24
    n_style: int = 12
    style_exemplars: int = 3
    styles: tuple[str, ...] = ("thick", "thin", "shear")
    seen_classes: tuple[int, ...] = (0, 1, 2, 3, 4)
    finetune_steps: int = 300
    finetune_lr: float = 2e-4
    n_prior: int = 256
    n_samples: int = 24
    ddim_steps: int = 50
    n_val_classes: int = N_VAL_CLASSES
    n_control: int = 96
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
        require_choices(self, {"data": _DATA_PRESETS, "preset": DDPM_PRESETS})
        require_ints(
            self,
            (
                "image_size",
                "n_pool",
                "train_steps",
                "batch_size",
                "n_control",
                "classifier_steps",
                "soft_top_n",
                "gallery_k",
                "effnet_image_size",
            ),
            minimum=1,
        )
        require_ints(self, ("simclr_steps", "gallery_queries"), minimum=0)
        require(
            self.n_heldout is None or is_int(self.n_heldout, minimum=1),
            "n_heldout",
            "a positive integer or None",
            self.n_heldout,
        )
        require(
            is_int(self.n_val_classes, minimum=1) and self.n_val_classes < len(self.seen_classes),
            "n_val_classes",
            f"an integer in [1, {len(self.seen_classes) - 1}] (fewer than the seen classes)",
            self.n_val_classes,
        )
        check_extractor_settings(self)
        self.customization_config()  # checks the benchmark fields

    def customization_config(self) -> CustomizationConfig:
        """The benchmark's :class:`CustomizationConfig`."""
        return CustomizationConfig(
            n_object=self.n_object,
            n_style=self.n_style,
            styles=tuple(self.styles),
            style_exemplars=self.style_exemplars,
            seen_classes=tuple(self.seen_classes),
            finetune_steps=self.finetune_steps,
            finetune_lr=self.finetune_lr,
            batch_size=self.batch_size,
            n_prior=self.n_prior,
            n_samples=self.n_samples,
            ddim_steps=self.ddim_steps,
            seed=self.seed,
        )

    def tuning_config(self, change: Mapping[str, Any] | None = None) -> TuningConfig:
        """The mappers' :class:`TuningConfig` (with one ``tuning_grid`` ``change``)."""
        return mapper_tuning_config(self, change)

    @classmethod
    def preset_values(cls, data: str, quick: bool) -> dict[str, Any]:
        """The dataset's preset (:data:`_DATA_PRESETS`) and, with ``quick``, the few-minute sizes."""
        return {**_DATA_PRESETS.get(data, {}), **(_QUICK if quick else {})}
