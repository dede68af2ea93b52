"""Settings of ``genprov reproduce gnime``: :class:`GNIMEExperimentConfig` and its per-dataset / quick presets."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

from genprov.config import is_positive_int, require, require_ints
from genprov.eval.privacy_audit import GNIME_SIZES, QUICK_ATTACK_SIZES, QUICK_GNIME_SIZES, audit_configs
from genprov.experiments.base import ExperimentConfig
from genprov.models.classifiers import ClassifierConfig
from genprov.privacy import GNIME_VARIANTS, AttackConfig, GNIMEConfig

__all__ = ["DATASETS", "EXPERIMENT_EXPLAINERS", "GNIMEExperimentConfig", "classifier_config"]

#: Datasets of the reproduction and their native image size.
DATASETS: dict[str, int] = {"digits": 8, "mnist": 28, "olivetti": 64}
#: Side other datasets (any name or path) are resized to unless ``image_size`` says otherwise.
OTHER_DATA_SIZE = 32
#: Explainers the reproduction accepts (registry names of :data:`genprov.privacy.EXPLAINERS`).
EXPERIMENT_EXPLAINERS = ("gradient", "grad-cam", "lrp", "lrp-epsilon")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GNIMEExperimentConfig(ExperimentConfig):
    """What :func:`run_gnime` trains and measures.

    :meth:`from_dict` (what ``genprov reproduce`` uses) starts from the dataset's preset and, when
    ``quick`` is true, the quick preset; explicit values override both (nested ``attack`` / ``gnime``
    dicts are merged field by field).

    Attributes:
        data: ``"digits"`` (built in), ``"mnist"`` or ``"olivetti"`` (need ``data_root``), or any other
            labelled dataset name or path (an image folder with class sub-folders, an ``.npz`` with labels),
            resized to ``image_size`` (default :data:`OTHER_DATA_SIZE`); its train and test sets are pooled.
        data_root: Folder with the dataset files (``None``: ``$GENPROV_DATA``).
        seed: Seed of the splits, the classifiers, the attacks and the defenses.
        quick: A one-to-two-minute run (less data, fewer epochs, two sweep points); the report says so.
        explainer: ``"gradient"``, ``"grad-cam"``, ``"lrp"`` or ``"lrp-epsilon"``.
        image_size: Side the images are resized to (``None``: the dataset's native size).
        n_data: Seeded subset of the pooled data (``None``: all of it).
        classifier_steps: Training steps of each classifier.
        classifier_width: Width of the victim CNN (the evaluation CNN is 1.5x as wide, other seed).
        classifier_n_conv: Conv blocks of both CNNs.
        classifier_n_pool: Max-pooling steps (``None``: 1 up to 16 pixels, 2 up to 32, else 3).
        a: GNIME's weight of the main table (``None``: 100 for digits and MNIST, 500 for faces, as in the
            paper); it is always one of the sweep points.
        a_sweep: GNIME weights of the privacy-utility curves (RND is matched to each one's distortion).
        rnd_sigmas: Extra RND noise levels (standard deviations) for the curves, beyond the matched ones.
        attack: ExpMI / PredMI architecture and training (``seed`` is replaced by one derived from ``seed``).
        gnime: GNIME architecture and training (``a`` and ``seed`` are replaced).
        defense_variant: ``"unet"`` (the original's GNIME, the default) or ``"residual"`` (genprov's earlier
            variant): :data:`~genprov.privacy.GNIME_VARIANTS` sets those ``gnime`` fields (explicit
            ``gnime`` values still win).
        ablation: Also fit the other variant at the main weight and report both beside its matched RND.
        rnd_clamp: Clip RND's maps to [0, 1] (then sigma is calibrated by bisection).
        top_q: Fraction of pixels of the top-pixel overlap.
        n_grid: Test images in the grid figure.
        n_boot: Bootstrap resamples of every interval.
    """

    data: str = "digits"
    data_root: str | None = None
    seed: int = 0
    quick: bool = False
    explainer: str = "gradient"
    image_size: int | None = None
    n_data: int | None = None
    classifier_steps: int = 1500
    classifier_width: int = 32
    classifier_n_conv: int = 3
    classifier_n_pool: int | None = None
    a: float | None = None
    a_sweep: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0)
    rnd_sigmas: tuple[float, ...] = ()
    attack: AttackConfig = dataclasses.field(default_factory=lambda: audit_configs()[0])
    gnime: GNIMEConfig = dataclasses.field(default_factory=lambda: audit_configs()[1])
    defense_variant: str = "unet"
    preset_selectors: ClassVar[tuple[str, ...]] = ("defense_variant",)
    ablation: bool = False
    rnd_clamp: bool = False
    top_q: float = 0.1
    n_grid: int = 10
    n_boot: int = 2000

    def validate(self) -> None:
        super().validate()
        require(
            self.explainer in EXPERIMENT_EXPLAINERS,
            "explainer",
            f"one of {', '.join(EXPERIMENT_EXPLAINERS)}",
            self.explainer,
        )
        require(
            self.image_size is None or (is_positive_int(self.image_size) and self.image_size >= 8),
            "image_size",
            "an integer >= 8 or None (native size)",
            self.image_size,
        )
        require(
            self.n_data is None or (is_positive_int(self.n_data) and self.n_data >= 40),
            "n_data",
            "an integer >= 40 or None (all the data)",
            self.n_data,
        )
        require(
            is_positive_int(self.classifier_n_conv) and self.classifier_n_conv >= 2,
            "classifier_n_conv",
            "an integer >= 2",
            self.classifier_n_conv,
        )
        require(
            self.classifier_n_pool is None
            or (isinstance(self.classifier_n_pool, int) and 0 <= self.classifier_n_pool < self.classifier_n_conv),
            "classifier_n_pool",
            "None or an integer in [0, classifier_n_conv - 1]",
            self.classifier_n_pool,
        )
        require_ints(self, ("classifier_steps", "classifier_width", "n_grid", "n_boot"), minimum=1)
        require(
            self.a is None or (isinstance(self.a, (int, float)) and math.isfinite(self.a) and self.a >= 0),
            "a",
            "a number >= 0 or None (the paper's value for the dataset)",
            self.a,
        )
        require(
            isinstance(self.a_sweep, tuple)
            and all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in self.a_sweep),
            "a_sweep",
            "a tuple of numbers >= 0, e.g. (1, 10, 100)",
            self.a_sweep,
        )
        require(
            isinstance(self.rnd_sigmas, tuple)
            and all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in self.rnd_sigmas),
            "rnd_sigmas",
            "a tuple of positive numbers",
            self.rnd_sigmas,
        )
        require(
            isinstance(self.attack, AttackConfig), "attack", "an AttackConfig (or a dict of its fields)", self.attack
        )
        require(isinstance(self.gnime, GNIMEConfig), "gnime", "a GNIMEConfig (or a dict of its fields)", self.gnime)
        require(
            self.defense_variant in GNIME_VARIANTS,
            "defense_variant",
            f"one of {', '.join(GNIME_VARIANTS)}",
            self.defense_variant,
        )
        require(isinstance(self.ablation, bool), "ablation", "True or False", self.ablation)
        require(isinstance(self.rnd_clamp, bool), "rnd_clamp", "True or False", self.rnd_clamp)
        require(
            isinstance(self.top_q, (int, float)) and 0 < self.top_q <= 1, "top_q", "a fraction in (0, 1]", self.top_q
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GNIMEExperimentConfig:
        """As :meth:`ExperimentConfig.from_dict`, with ``defense_variant``'s GNIME fields between the preset's
        and the explicit ``gnime`` values."""
        variant = GNIME_VARIANTS.get(str(data.get("defense_variant", "unet")), {}) if isinstance(data, Mapping) else {}
        explicit = data.get("gnime") if isinstance(data, Mapping) else None
        if variant and (explicit is None or isinstance(explicit, Mapping)):
            data = {**data, "gnime": {**variant, **(explicit or {})}}
        return super().from_dict(data)

    def variant_gnime(self, variant: str) -> GNIMEConfig:
        """The GNIME config of ``variant`` (the run's own for :attr:`defense_variant`; the ablation's other)."""
        if variant == self.defense_variant:
            return self.gnime
        return self.gnime.replace(**GNIME_VARIANTS[variant])

    @classmethod
    def preset_values(cls, data: str, quick: bool) -> dict[str, Any]:
        """Per-dataset settings (sized for a few minutes to a quarter hour on 2 CPU cores), then the quick ones."""
        values: dict[str, Any] = {"gnime": dict(GNIME_SIZES)}  # digits: 200 epochs of 8 batches = 1,600 steps
        if data == "mnist":
            # GNIME: 134 epochs of 12 batches = 1,608 steps, the digits budget
            values.update(n_data=3000, a_sweep=[1.0, 10.0, 100.0], classifier_steps=1500)
            values["gnime"].update(n_epochs=134)
        elif data == "olivetti":
            values.update(
                image_size=32,
                a_sweep=[3.0, 30.0, 500.0],
                classifier_steps=800,
                classifier_width=16,
                classifier_n_conv=4,
                classifier_n_pool=3,
                attack={"width": 16, "batch_size": 32, "patience": 15},
            )
            # 230 epochs of 7 batches = 1,610 steps, the digits budget
            values["gnime"].update(n_epochs=230, train_batch_size=32)
        if quick:
            values.update(
                classifier_steps=400,
                a_sweep=[3.0],
                attack={**values.get("attack", {}), **QUICK_ATTACK_SIZES},
                gnime={**values["gnime"], **QUICK_GNIME_SIZES},
                n_boot=500,
            )
            if data == "digits":
                values["n_data"] = 900
            elif data == "mnist":
                values["n_data"] = 800
        return values

    @property
    def size(self) -> int:
        """Side of the images the experiment works on."""
        return self.image_size if self.image_size is not None else DATASETS.get(self.data, OTHER_DATA_SIZE)

    @property
    def main_a(self) -> float:
        """GNIME's weight of the main table (the paper's value for the dataset unless set)."""
        if self.a is not None:
            return float(self.a)
        return 500.0 if self.data == "olivetti" else 100.0

    @property
    def sweep(self) -> tuple[float, ...]:
        """Sorted sweep weights, always including :attr:`main_a`."""
        return tuple(sorted({float(v) for v in self.a_sweep} | {self.main_a}))


def classifier_config(
    size: int, channels: int, n_classes: int, width: int, *, n_conv: int = 3, n_pool: int | None = None
) -> ClassifierConfig:
    """The CNN of the reproduction: ``n_conv`` conv blocks, by default pooled so that Grad-CAM's map is 4-8
    pixels wide."""
    if n_pool is None:
        n_pool = min(n_conv - 1, 1 if size <= 16 else 2 if size <= 32 else 3)
    return ClassifierConfig(
        image_size=size,
        channels=channels,
        n_classes=n_classes,
        width=width,
        n_conv=n_conv,
        n_pool=n_pool,
        feature_dim=64,
    )
