"""Settings of ``genprov reproduce flipad``: :class:`FlipadExperimentConfig` and its data / quick presets."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from genprov.attribution.model import MODEL_ATTRIBUTORS, DeepSADConfig, FinalLayerInversionAttributorConfig
from genprov.attribution.model.flipad import FLIPAD_IMAGE_SETTINGS
from genprov.config import is_positive_int, require
from genprov.data import PERTURBATIONS
from genprov.experiments.base import GAN_DATA_SIZES, ExperimentConfig, gan_preset_values, gan_side
from genprov.models.gans import GAN_SIZES

__all__ = [
    "DATA_SIZES",
    "EXPERIMENT_PERTURBATIONS",
    "METHODS",
    "PAPER_BLUR_STD_64",
    "VAL_REALS",
    "FlipadExperimentConfig",
]

#: Methods compared: FLIPAD and the baselines (registry names of ``MODEL_ATTRIBUTORS``).
METHODS = ("flipad", "raw-pixels", "dct", "prnu", "latent-inversion")
#: Supported data and the image side the GANs work on.
DATA_SIZES = GAN_DATA_SIZES
#: Where the validation study's real images come from: ``"held-out"`` (train-split images the GANs never
#: see, as Table 1's real test images; the default) or ``"gan-train"`` (images the GANs were trained on:
#: genprov's earlier protocol, and the original's, whose real train/test/val images all come from the GANs'
#: training split, MikeLasz/flipad ``scripts/sampling/sample_gans.py:61-73`` with
#: ``src/flipad/data_utils.py:82-116``).
VAL_REALS = ("held-out", "gan-train")
#: Standard deviation (pixels) of the original's Table 3 blur on its 64x64 images: torchvision's
#: ``GaussianBlur(kernel_size=3, sigma=3)`` (MikeLasz/flipad ``src/flipad/perturbations.py:50-53``, kernel
#: sizes 1 and 3 in ``scripts/single_model_attribution/gans_perturbation.sh:10``; size 1 is the identity)
#: has taps (.327, .346, .327), i.e. sqrt(2 * .327) = 0.81 px.
PAPER_BLUR_STD_64 = 0.809
#: Table 3 perturbations defined by this experiment (besides ``genprov.data.PERTURBATIONS``):
#: ``blur-paper`` is a Gaussian blur of std ``PAPER_BLUR_STD_64 * size / 64`` pixels (0.20 px at 16 px), the
#: original's strength relative to the image size; ``blur`` (1 px at any size, about 5x the paper's at
#: 16 px) stays as the earlier, harsher test.
EXPERIMENT_PERTURBATIONS = ("blur-paper",)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlipadExperimentConfig(ExperimentConfig):
    """What ``run_flipad`` trains and measures.

    The constructor's defaults are the full run on digits; :meth:`from_dict` (what ``genprov reproduce``
    uses) and :meth:`preset` start from the quick preset when ``quick`` is true, and from the data's
    preset (MNIST-sized GAN training sets) for other data, then apply the keys given.

    Attributes:
        data: ``"digits"`` (built in, resized to 16x16), ``"mnist"`` or ``"fashion-mnist"`` (28x28; need
            ``data_root``), any other dataset name or a path (an image folder, ``.npz`` or ``.npy``; one
            without a test split is split by the seed), resized to ``image_size``.
        image_size: Side of the images and GANs (8, 16, 28, 32 or 64; ``None``: 16 for digits and other
            data, 28 for MNIST-like data).
        data_root: Folder with the dataset files (``None``: ``$GENPROV_DATA``).
        seed: Seed of everything (GAN training, samples, resamples, detectors).
        quick: A few-minute smoke run (with :meth:`from_dict` / :meth:`preset`, the quick sizes).
        archs: Table 1 architectures; the first is the owner used for the study, Table 3 and the demo.
        gan_width: Feature maps of the generators' penultimate layer (under-determination of the last
            layer = ``4 * gan_width / channels``).
        latent_dim: GAN latent dimension.
        gan_steps: Generator updates (DCGAN, LSGAN, EBGAN).
        wgan_steps: Generator updates of WGAN-GP (5 critic steps each).
        n_gan_train: Real training images the GANs see (``None``: the whole train split, less the
            validation reals when ``val_reals="held-out"``).
        val_reals: Real images of the validation study (see :data:`VAL_REALS`): ``"held-out"`` holds
            ``n_test`` train-split images out of the GANs' training, ``"gan-train"`` (the earlier protocol)
            takes them from the GANs' training images.
        table2_archs: Architectures trained with extra seeds for Table 2.
        table2_seeds: Number of extra training seeds per Table 2 architecture.
        n_train: Own and real samples each method is fitted on.
        n_holdout: Held-out own samples that set the threshold.
        n_test: Samples per source in each balanced test set.
        n_resamples: Random resamples of every split (metrics are averaged over them).
        methods: Methods compared (``"flipad"`` and the baselines).
        flipad: FLIPAD settings for images (the study may replace the searched fields).
        detector: Deep SAD settings shared by every feature method.
        latent_inversion_n_test: Test samples per source for latent inversion (one resample).
        latent_inversion_steps: Adam steps per restart of latent inversion.
        perturbations: Table 3 perturbations (keys of ``genprov.data.PERTURBATIONS`` or
            :data:`EXPERIMENT_PERTURBATIONS`).
        tabular: Table 5 datasets (``genprov.data.TABULAR_DATASETS``).
        tabular_archs: Tabular GAN objectives (Table 5 owners and sources).
        tabular_steps: Tabular GAN generator updates.
        tabular_alpha: FLIPAD's alpha for tabular generators (paper: 1e-3 .. 1e-5 outside images).
        study: Run the validation study and use its best FLIPAD setting for the tables.
        study_grid: Settings tried by the study, each a dict of FLIPAD config changes (``"label"`` names it).
        study_widths: Other generator widths at which the chosen FLIPAD setting and raw pixels are compared
            on the validation split (training the owner and the validation GAN at that width).
    """

    data: str = "digits"
    image_size: int | None = None
    data_root: str | None = None
    seed: int = 0
    quick: bool = False
    archs: tuple[str, ...] = ("dcgan", "wgan-gp", "lsgan", "ebgan")
    gan_width: int = 16
    latent_dim: int = 32
    gan_steps: int = 1000
    wgan_steps: int = 400
    n_gan_train: int | None = None
    val_reals: str = "held-out"
    table2_archs: tuple[str, ...] = ("dcgan", "lsgan", "ebgan")
    table2_seeds: int = 1
    n_train: int = 700
    n_holdout: int = 250
    n_test: int = 300
    n_resamples: int = 3
    methods: tuple[str, ...] = METHODS
    flipad: FinalLayerInversionAttributorConfig = dataclasses.field(
        default_factory=lambda: FinalLayerInversionAttributorConfig(**FLIPAD_IMAGE_SETTINGS)
    )
    detector: DeepSADConfig = dataclasses.field(default_factory=lambda: DeepSADConfig(n_epochs=20, lr_milestones=(15,)))
    latent_inversion_n_test: int = 100
    latent_inversion_steps: int = 100
    perturbations: tuple[str, ...] = (*PERTURBATIONS, *EXPERIMENT_PERTURBATIONS)
    tabular: tuple[str, ...] = ("wine", "breast-cancer")
    tabular_archs: tuple[str, ...] = ("wgan-gp", "dcgan", "lsgan")
    tabular_steps: int = 1500
    tabular_alpha: float = 1e-3
    study: bool = True
    study_widths: tuple[int, ...] = (8, 32)
    study_grid: tuple[dict[str, Any], ...] = (
        {
            "label": "paper: clip, alpha 5e-4, 300 it, FISTA from the anchor",
            "saturation": "clip",
            "fista_init": "anchor",
        },
        {"label": "censor, alpha 5e-4, 300 it"},
        {"label": "censor, FISTA from the anchor (original)", "fista_init": "anchor"},
        {"label": "censor, alpha 5e-2", "alpha": 5e-2},
        {"label": "censor, 100 it", "max_iter": 100},
        {"label": "censor, 1000 it", "max_iter": 1000},
        {"label": "censor, no standardisation", "standardize": False},
        {"label": "censor, wider detector (64, 128)", "detector": {"widths": [64, 128]}},
    )

    def validate(self) -> None:
        super().validate()
        require(
            self.image_size is None or self.image_size in GAN_SIZES,
            "image_size",
            f"one of {sorted(GAN_SIZES)} or None (the data's default side)",
            self.image_size,
        )
        require(len(self.archs) >= 2, "archs", "at least two architectures", self.archs)
        for arch in (*self.archs, *self.table2_archs):
            require(arch in ("dcgan", "wgan-gp", "lsgan", "ebgan"), "archs", "GAN architectures", arch)
        for method in self.methods:
            require(method in MODEL_ATTRIBUTORS, "methods", f"names among {MODEL_ATTRIBUTORS.names()}", method)
        known = [*PERTURBATIONS, *EXPERIMENT_PERTURBATIONS]
        for name in self.perturbations:
            require(name in known, "perturbations", f"names among {known}", name)
        require(self.val_reals in VAL_REALS, "val_reals", f"one of {', '.join(VAL_REALS)}", self.val_reals)
        for field in ("gan_width", "latent_dim", "gan_steps", "wgan_steps", "n_train", "n_holdout", "n_test"):
            require(is_positive_int(getattr(self, field)), field, "a positive integer", getattr(self, field))
        require(is_positive_int(self.n_resamples), "n_resamples", "a positive integer", self.n_resamples)
        require(self.n_train >= 2, "n_train", "at least 2", self.n_train)
        for label in self.study_grid:
            require(isinstance(label, Mapping) and "label" in label, "study_grid", "dicts with a 'label'", label)

    @property
    def side(self) -> int:
        """Image side of the run (``image_size`` or the data's default)."""
        return gan_side(self.data, self.image_size)

    @classmethod
    def preset_values(cls, data: str, quick: bool) -> dict[str, Any]:
        """Sizes for non-digits data and, with ``quick``, the few-minute run."""
        return gan_preset_values(data, quick, _quick_values())


def _quick_values() -> dict[str, Any]:
    """Field values of the few-minute run that differ from the constructor defaults."""
    return {
        "gan_steps": 300,
        "wgan_steps": 100,
        "table2_archs": ["dcgan"],
        "n_train": 300,
        "n_holdout": 100,
        "n_test": 100,
        "n_resamples": 1,
        "flipad": FinalLayerInversionAttributorConfig(**{**FLIPAD_IMAGE_SETTINGS, "max_iter": 100}).to_dict(),
        "detector": DeepSADConfig(n_epochs=10, lr_milestones=(8,)).to_dict(),
        "latent_inversion_n_test": 30,
        "latent_inversion_steps": 40,
        "perturbations": ["noise-0.1", "jpeg-80"],
        "tabular": ["wine"],
        "tabular_archs": ["wgan-gp", "dcgan"],
        "tabular_steps": 400,
        "study_widths": [],
        "study_grid": [
            {"label": "paper: clip, alpha 5e-4, FISTA from the anchor", "saturation": "clip", "fista_init": "anchor"},
            {"label": "censor, alpha 5e-4"},
        ],
    }
