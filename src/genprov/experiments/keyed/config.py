"""Settings of ``genprov reproduce keyed``: :class:`KeyedExperimentConfig` and its data / quick presets."""

from __future__ import annotations

import dataclasses
from typing import Any

from genprov.attribution.model.keyed import KeyedGeneratorsConfig
from genprov.attribution.model.keyed_postprocess import POST_PROCESSES, check_post_process_names
from genprov.config import require, require_ints
from genprov.experiments.base import GAN_DATA_SIZES, ExperimentConfig, gan_preset_values

__all__ = ["DATA_SIZES", "VARIANTS", "KeyedExperimentConfig"]

#: Supported data and the image side the root DCGAN works on.
DATA_SIZES = GAN_DATA_SIZES
#: Ablations beside the paper's plain and robust families.
VARIANTS = ("alternating", "robust-keys", "noise-margin", "compliance-margin")


@dataclasses.dataclass(frozen=True, kw_only=True)
class KeyedExperimentConfig(ExperimentConfig):
    """What ``run_keyed`` trains and measures.

    :meth:`from_dict` (what ``genprov reproduce`` uses) starts from the quick preset when ``quick`` is true.

    Attributes:
        data: ``"digits"`` (built in, 16x16), ``"mnist"`` or ``"fashion-mnist"`` (28x28; need ``data_root``).
        data_root: Folder with the dataset files (``None``: ``$GENPROV_DATA``).
        seed: Seed of everything (root GAN, keys, user models; the evaluation seed derives from it).
        quick: A few-minute run (fewer keys and steps); the report says so.
        n_keys: Keys / user models per family.
        gan_steps: Root DCGAN generator updates.
        gan_width: Root DCGAN width (penultimate feature maps).
        latent_dim: Root DCGAN latent dimension.
        n_gan_train: Authentic training images the root GAN and the keys see (``None``: the whole split).
        classifier_steps: Training steps of the Fréchet-distance classifier.
        family: Key and user-model training (its ``seed`` is replaced by ``seed``).
        post_processes: Robust families to train and test conditions to measure.
        variants: Ablations among :data:`VARIANTS`.
        n_eval: Samples per user model (and of ``G0``) for every metric.
        n_real_eval: Authentic test images for distinguishability and the Fréchet reference (at most; the
            digits test split has 360).
        test_blur_sigma: Blur sigma of the blur test condition (kernel capped at 9 taps).
        test_crop_ratio: Crop ratio of the crop test condition.
        test_noise_sigma: Noise sigma of the noise test condition ([-1, 1] images).
        test_jpeg_quality: Quality of the real JPEG test condition, in [1, 95].
        test_combination: Strengths of the combination test condition (blur, crop, noise, jpeg).
        n_grid: Samples per row in the G0-vs-G_i grids.
    """

    data: str = "digits"
    data_root: str | None = None
    seed: int = 0
    quick: bool = False
    n_keys: int = 10
    gan_steps: int = 2000
    gan_width: int = 32
    latent_dim: int = 32
    n_gan_train: int | None = None
    classifier_steps: int = 1000
    family: KeyedGeneratorsConfig = dataclasses.field(default_factory=KeyedGeneratorsConfig)
    post_processes: tuple[str, ...] = POST_PROCESSES
    variants: tuple[str, ...] = VARIANTS
    n_eval: int = 1000
    n_real_eval: int = 1000
    test_blur_sigma: float = 3.0
    test_crop_ratio: float = 0.8
    test_noise_sigma: float = 0.3
    test_jpeg_quality: int = 80
    test_combination: tuple[tuple[str, float], ...] = (("blur", 1.0), ("crop", 0.9), ("noise", 0.1), ("jpeg", 80.0))
    n_grid: int = 8

    def validate(self) -> None:
        super().validate()
        require(self.data in DATA_SIZES, "data", f"one of {', '.join(DATA_SIZES)}", self.data)
        require_ints(self, ("n_keys", "gan_steps", "gan_width", "latent_dim", "classifier_steps", "n_grid"), minimum=1)
        require_ints(self, ("n_eval", "n_real_eval"), minimum=2)
        check_post_process_names(self.post_processes)
        for variant in self.variants:
            require(variant in VARIANTS, "variants", f"names among {VARIANTS}", variant)
        require(1 <= self.test_jpeg_quality <= 95, "test_jpeg_quality", "an integer in [1, 95]", self.test_jpeg_quality)
        require(0 < self.test_crop_ratio <= 1, "test_crop_ratio", "a fraction in (0, 1]", self.test_crop_ratio)
        require(self.test_blur_sigma >= 0 and self.test_noise_sigma >= 0, "test strengths", "non-negative", self)
        check_post_process_names(tuple(k for k, _ in self.test_combination), allow_combination=False)

    def strengths(self, name: str) -> dict[str, float]:
        """Test strengths of the condition ``name``: ``{step: value}`` for each step it applies."""
        single = {
            "blur": self.test_blur_sigma,
            "crop": self.test_crop_ratio,
            "noise": self.test_noise_sigma,
            "jpeg": float(self.test_jpeg_quality),
        }
        if name == "combination":
            return {k: float(v) for k, v in self.test_combination}
        return {name: single[name]}

    def family_config(self) -> KeyedGeneratorsConfig:
        """The plain family's config (experiment seed; data settings of the experiment)."""
        return self.family.replace(seed=self.seed, data=self.data, n_real=self.n_gan_train)

    @classmethod
    def preset_values(cls, data: str, quick: bool) -> dict[str, Any]:
        """Sizes for non-digits data and, with ``quick``, the few-minute run (family settings merge)."""
        quick_values = {
            "n_keys": 3,
            "gan_steps": 1000,
            "classifier_steps": 400,
            "family": {"user_steps": 600, "robust_steps": 300},
            "n_eval": 300,
            "n_real_eval": 300,
        }
        return gan_preset_values(data, quick, quick_values)
