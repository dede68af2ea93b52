"""Settings of ``genprov reproduce keyed``: :class:`KeyedExperimentConfig` and its data / quick presets."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from genprov.attribution.model.keyed import KeyedGeneratorsConfig
from genprov.attribution.model.keyed_postprocess import POST_PROCESSES, REFERENCE_SIZE, check_post_process_names
from genprov.config import require, require_ints
from genprov.experiments.base import GAN_DATA_SIZES, ExperimentConfig, gan_preset_values, gan_side
from genprov.models.gans import GAN_SIZES

__all__ = ["DATA_SIZES", "MILD_COMBINATION", "PROTOCOLS", "STRENGTH_SCALINGS", "VARIANTS", "KeyedExperimentConfig"]

#: Supported data and the image side the root DCGAN works on by default.
DATA_SIZES = GAN_DATA_SIZES
#: Robust-training and test protocols (``--set protocol=...``), applied over the data preset (explicit keys
#: win): ``original``, the paper's code (the defaults of :class:`KeyedGeneratorsConfig` and of this config);
#: ``genprov-v1``, genprov's earlier protocol kept for the ablation: unscaled test strengths, 1,000 robust
#: steps at batch 64, Adam (0.5, 0.999) at a constant 2e-4, training blur sigma 0.5-3 px with a 9-tap cap.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "original": {},
    "genprov-v1": {
        "strengths": "absolute",
        "family": {
            "robust_steps": 1000,
            "robust_batch_size": 64,
            "robust_lr": 2e-4,
            "robust_betas": [0.5, 0.999],
            "robust_lr_gamma": 1.0,
            "post_process": {"blur_sigma": [0.5, 3.0], "blur_kernel": "capped-9"},
        },
    },
}
#: Ablations beside the paper's plain and robust families.
VARIANTS = ("alternating", "robust-keys", "noise-margin", "compliance-margin")
#: How test (and training) blur strengths meet the image side (see ``KeyedExperimentConfig.strengths``).
STRENGTH_SCALINGS = ("matched", "absolute")
#: genprov's earlier, milder combination test (pixels at any size), measured as ``combination-mild``.
MILD_COMBINATION: tuple[tuple[str, float], ...] = (("blur", 1.0), ("crop", 0.9), ("noise", 0.1), ("jpeg", 80.0))


@dataclasses.dataclass(frozen=True, kw_only=True)
class KeyedExperimentConfig(ExperimentConfig):
    """What ``run_keyed`` trains and measures.

    :meth:`from_dict` (what ``genprov reproduce`` uses) starts from the quick preset when ``quick`` is true.

    Attributes:
        data: ``"digits"`` (built in, 16x16), ``"mnist"`` or ``"fashion-mnist"`` (28x28; need ``data_root``),
            any other dataset name or a path (an image folder, ``.npz`` or ``.npy``; one without a test
            split is split by the seed), resized to ``image_size``.
        image_size: Side the images are resized to and the root DCGAN works on (8, 16, 28, 32 or 64;
            ``None``: 16 for digits and other data, 28 for MNIST-like data). ``32`` on MNIST measures how the robustness
            results depend on resolution.
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
        protocol: ``"original"`` or ``"genprov-v1"`` (:data:`PROTOCOLS`; applied by :meth:`from_dict`).
        strengths: ``"matched"``: blur sigmas (test ones and the family's training range) are given at
            ``reference_size`` and scaled by ``image_size / reference_size``, so a test removes the same
            share of image directions as the paper's at 64x64 (sigma 3 there = 0.75 at 16 px);
            ``"absolute"``: sigmas are pixels at any size (genprov's earlier protocol, 4x harsher at 16 px).
            Every run also measures its families at the other scaling (conditions ``NAME@absolute`` or
            ``NAME@matched``) wherever the two differ.
        reference_size: Image side the test strengths refer to (the paper's MNIST: 64, data_prepare.py:60-65).
        test_blur_sigma: Blur sigma of the blur test condition (paper: kernel size 9 = sigma 3 with 25
            taps, attack_methods/Gaussian_blur.py:15-19; scaled with ``strengths``).
        test_crop_ratio: Crop ratio of the crop test condition (paper: 0.8, Crop.py:86-87; a ratio, the
            same at every size).
        test_noise_sigma: Noise sigma of the noise test condition ([-1, 1] images; paper: 0.3).
        test_jpeg_quality: Quality of the real JPEG test condition, in [1, 95].
        test_combination: Strengths of the combination test condition, as the original tests it: all four
            steps at their test strength, with the combination's noise of 0.1 (Combination.py:15-16,
            attack_initializer.py:28-31); blur scaled with ``strengths``. genprov's earlier, milder
            combination (:data:`MILD_COMBINATION`, pixels) is measured beside it as ``combination-mild``.
        n_grid: Samples per row in the G0-vs-G_i grids.
    """

    data: str = "digits"
    image_size: int | None = None
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
    protocol: str = "original"
    strengths: str = "matched"
    reference_size: int = REFERENCE_SIZE
    test_blur_sigma: float = 3.0
    test_crop_ratio: float = 0.8
    test_noise_sigma: float = 0.3
    test_jpeg_quality: int = 80
    test_combination: tuple[tuple[str, float], ...] = (("blur", 3.0), ("crop", 0.8), ("noise", 0.1), ("jpeg", 80.0))
    n_grid: int = 8

    def validate(self) -> None:
        super().validate()
        require(
            self.image_size is None or self.image_size in GAN_SIZES,
            "image_size",
            f"one of {sorted(GAN_SIZES)} or None (the data's default side)",
            self.image_size,
        )
        require(self.protocol in PROTOCOLS, "protocol", f"one of {tuple(PROTOCOLS)}", self.protocol)
        require(self.strengths in STRENGTH_SCALINGS, "strengths", f"one of {STRENGTH_SCALINGS}", self.strengths)
        require_ints(self, ("reference_size",), minimum=1)
        require_ints(self, ("n_keys", "gan_steps", "gan_width", "latent_dim", "classifier_steps", "n_grid"), minimum=1)
        require_ints(self, ("n_eval", "n_real_eval"), minimum=2)
        check_post_process_names(self.post_processes)
        for variant in self.variants:
            require(variant in VARIANTS, "variants", f"names among {VARIANTS}", variant)
        require(1 <= self.test_jpeg_quality <= 95, "test_jpeg_quality", "an integer in [1, 95]", self.test_jpeg_quality)
        require(0 < self.test_crop_ratio <= 1, "test_crop_ratio", "a fraction in (0, 1]", self.test_crop_ratio)
        require(self.test_blur_sigma >= 0 and self.test_noise_sigma >= 0, "test strengths", "non-negative", self)
        check_post_process_names(tuple(k for k, _ in self.test_combination), allow_combination=False)

    @property
    def side(self) -> int:
        """Image side of the run (``image_size`` or the data's default)."""
        return gan_side(self.data, self.image_size)

    def condition_strengths(self, condition: str) -> dict[str, float]:
        """Test strengths of a condition in pixels: ``{step: value}`` for each step it applies.

        ``condition`` is a post-process name (at this run's ``strengths`` scaling), ``NAME@matched`` or
        ``NAME@absolute`` (at that scaling), or ``combination-mild`` (:data:`MILD_COMBINATION`).
        """
        name, _, scaling = condition.partition("@")
        if name == "combination-mild":
            return dict(MILD_COMBINATION)
        single = {
            "blur": self.test_blur_sigma,
            "crop": self.test_crop_ratio,
            "noise": self.test_noise_sigma,
            "jpeg": float(self.test_jpeg_quality),
        }
        values = {k: float(v) for k, v in self.test_combination} if name == "combination" else {name: single[name]}
        if (scaling or self.strengths) == "matched" and "blur" in values:
            values["blur"] *= self.side / self.reference_size
        return values

    def test_conditions(self) -> tuple[str, ...]:
        """``"clean"``, the post-processes, ``combination-mild`` (with ``combination``), then each
        post-process at the other scaling where its strengths differ."""
        other = "absolute" if self.strengths == "matched" else "matched"
        extra = ("combination-mild",) if "combination" in self.post_processes else ()
        alternates = tuple(
            f"{p}@{other}"
            for p in self.post_processes
            if self.condition_strengths(f"{p}@{other}") != self.condition_strengths(p)
        )
        return ("clean", *self.post_processes, *extra, *alternates)

    def family_config(self) -> KeyedGeneratorsConfig:
        """The plain family's config (experiment seed; data settings of the experiment; training blur
        scaled as ``strengths`` says)."""
        reference = self.reference_size if self.strengths == "matched" else None
        return self.family.replace(
            seed=self.seed,
            data=self.data,
            n_real=self.n_gan_train,
            post_process=self.family.post_process.replace(reference_size=reference),
        )

    preset_selectors: ClassVar[tuple[str, ...]] = ("protocol",)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KeyedExperimentConfig:
        """As :meth:`ExperimentConfig.from_dict`, with the ``protocol``'s values between the data preset and
        the keys given (nested ``family`` settings merge key by key)."""
        if isinstance(data, Mapping):
            data = _deep_merge(PROTOCOLS.get(str(data.get("protocol", "original")), {}), data)
        return super().from_dict(data)

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


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``top``'s keys over it, merging nested mappings key by key."""
    out = dict(base)
    for key, value in top.items():
        out[key] = (
            _deep_merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
        )
    return out
