"""Explanation privacy at small scale (``genprov reproduce gnime``): Jeong et al., "Learning to Generate
Inversion-Resistant Model Explanations" (GNIME), NeurIPS 2022, Sec. 5 (Tables 1-2 and Fig. 3 in spirit).

Protocol (what differs from the paper is marked *genprov*):

1. **Data and splits.** The pooled dataset (digits: all 1,797 images at 8x8; MNIST: a seeded subset at
   28x28; Olivetti: 40 identities x 10 faces, resized to ``image_size``) is split by
   :func:`~genprov.privacy.privacy_splits` into the defender's half, the attacker's part (80% training,
   20% early stopping) and a held-out **test** split that gives every reported figure (*genprov*: the
   original reported on the attacker's early-stopping split). Splits are stratified by class; for
   Olivetti that is a per-identity split, 5 / 3 / 1 / 1 images of every person.
2. **Classifiers.** The victim CNN and a separate evaluation CNN (another seed and width) are trained on
   the defender's half; the evaluation classifier's accuracy on reconstructions is the TCA (for faces:
   identity leakage). Both are cached in ``out/models``.
3. **Attacks.** ExpMI (U-Net decoder from explanation + prediction vector) and PredMI (prediction vector
   only) are trained on the attacker's observations with MSE and early stopping.
4. **Defenses.** GNIME (learned noise, trained on the defender's half against a surrogate inverter) at
   every weight ``a`` of the sweep, and for each one the RND whose Gaussian noise has the same
   distortion, measured on the defender's half (equal utility cost).
5. **Threat models**, both reported: *non-adaptive* (the ExpMI trained on clean explanations meets the
   defended ones) and *adaptive* (a fresh ExpMI trained on defended explanations: the paper's setting).
6. **Metrics** on the test split, with 95% percentile-bootstrap intervals over test images: MSE, PSNR, SSIM
   on images in [0, 1] (the paper's range), TCA, victim re-classification accuracy, feature similarity,
   and the explanation distortion (MSE of defended vs clean maps) and top-10% pixel overlap. At every
   sweep point GNIME and its matched RND are compared with paired-bootstrap intervals over the same test
   images; PredMI is the floor no explanation defense can push the attacker below while predictions are
   released unaltered.

Everything derives from ``seed``; nothing is selected on test numbers. Trained attacks and defenses are
cached in ``out/cache`` (keyed by their settings), so a second run only re-evaluates. ``results.json`` holds
every number; ``report.html`` shows the paper-shaped tables, the privacy-utility curves, the sweep table
with the paired comparisons, and a grid of originals, explanations, defended explanations and
reconstructions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import numpy as np
import torch
from matplotlib.figure import Figure as MplFigure
from torch import Tensor, nn

from genprov.config import is_positive_int, require
from genprov.data import load_dataset
from genprov.eval.reconstruction import (
    classification_hits,
    explanation_distortion,
    mse,
    reconstruction_summary,
    ssim,
    top_pixel_overlap,
)
from genprov.eval.stats import MeanCI, paired_difference_ci, summarize
from genprov.exceptions import CheckpointError, ConfigError, DataError
from genprov.experiments.base import EXPERIMENTS, ExperimentConfig, start_run
from genprov.experiments.quickstart import DemoContext, grid_image
from genprov.models.classifiers import ClassifierConfig, CNNClassifier
from genprov.models.training import default_train_config, train_classifier
from genprov.privacy import (
    EXPLAINERS,
    AttackConfig,
    Defense,
    Explainer,
    ExpMIAttack,
    GNIMEConfig,
    GNIMEDefense,
    InversionAttack,
    Observations,
    PredMIAttack,
    matched_gaussian_noise,
    privacy_splits,
)
from genprov.privacy.defenses import GaussianNoiseDefense
from genprov.report import Figure, KeyValue, Report, Section, Table, Text
from genprov.report.figures import PALETTE, training_curves
from genprov.utils.io import atomic_write_json, json_safe
from genprov.utils.seeding import derive_seed

__all__ = [
    "DATASETS",
    "EXPERIMENT_EXPLAINERS",
    "GNIMEExperimentConfig",
    "attack_metrics",
    "classifier_config",
    "defend_observations",
    "evaluate_defense",
    "fit_attack",
    "fit_gnime",
    "privacy_section",
    "run_gnime",
]

logger = logging.getLogger(__name__)

#: Datasets of the reproduction and their native image size.
DATASETS: dict[str, int] = {"digits": 8, "mnist": 28, "olivetti": 64}
#: Explainers the reproduction accepts (registry names of :data:`genprov.privacy.EXPLAINERS`).
EXPERIMENT_EXPLAINERS = ("gradient", "grad-cam", "lrp", "lrp-epsilon")
_SPLITS = ("defender", "attacker_train", "attacker_val", "test")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GNIMEExperimentConfig(ExperimentConfig):
    """What :func:`run_gnime` trains and measures.

    :meth:`from_dict` (what ``genprov reproduce`` uses) starts from the dataset's preset and, when
    ``quick`` is true, the quick preset; explicit values override both (nested ``attack`` / ``gnime``
    dicts are merged field by field).

    Attributes:
        data: ``"digits"`` (built in), ``"mnist"`` or ``"olivetti"`` (need ``data_root``).
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
    attack: AttackConfig = dataclasses.field(default_factory=lambda: AttackConfig(width=16))
    gnime: GNIMEConfig = dataclasses.field(
        default_factory=lambda: GNIMEConfig(width=16, inverter_width=16, n_epochs=20)
    )
    rnd_clamp: bool = False
    top_q: float = 0.1
    n_grid: int = 10
    n_boot: int = 2000

    def validate(self) -> None:
        super().validate()
        require(self.data in DATASETS, "data", f"one of {', '.join(DATASETS)}", self.data)
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
        for name in ("classifier_steps", "classifier_width", "n_grid", "n_boot"):
            require(is_positive_int(getattr(self, name)), name, "a positive integer", getattr(self, name))
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
        require(isinstance(self.rnd_clamp, bool), "rnd_clamp", "True or False", self.rnd_clamp)
        require(
            isinstance(self.top_q, (int, float)) and 0 < self.top_q <= 1, "top_q", "a fraction in (0, 1]", self.top_q
        )

    @classmethod
    def preset_values(cls, data: str, quick: bool) -> dict[str, Any]:
        """Per-dataset settings (sized for a few minutes to a quarter hour on 2 CPU cores), then the quick ones."""
        values: dict[str, Any] = {}
        if data == "mnist":
            values.update(n_data=3000, a_sweep=[1.0, 10.0, 100.0], classifier_steps=1500)
        elif data == "olivetti":
            values.update(
                image_size=32,
                a_sweep=[3.0, 30.0, 500.0],
                classifier_steps=800,
                classifier_width=16,
                classifier_n_conv=4,
                classifier_n_pool=3,
                attack={"width": 16, "batch_size": 32, "patience": 15},
                gnime={"width": 16, "inverter_width": 16, "n_epochs": 100, "train_batch_size": 32},
            )
        if quick:
            values.update(
                classifier_steps=400,
                a_sweep=[3.0],
                attack={**values.get("attack", {}), "width": 16, "max_epochs": 40, "patience": 6},
                gnime={**values.get("gnime", {}), "width": 8, "inverter_width": 8, "n_epochs": 8},
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
        return self.image_size if self.image_size is not None else DATASETS[self.data]

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


# ---------------------------------------------------------------------------------------------- helpers


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


def defend_observations(observations: Observations, defense: Defense) -> Observations:
    """The same observations with the defense applied to their (clean) explanation maps."""
    if observations.explanations is None:
        raise DataError("defend_observations needs observations with explanation maps; these hold predictions only.")
    return observations.with_explanations(defense.defend(observations.explanations))


def _key(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def fit_attack(
    kind: type[InversionAttack],
    config: AttackConfig,
    train: tuple[Observations, Tensor],
    val: tuple[Observations, Tensor],
    *,
    cache: Path | None = None,
    show_progress: bool | None = None,
) -> InversionAttack:
    """Fit ``kind`` (ExpMI or PredMI) on ``train`` with early stopping on ``val``; reuse ``cache`` if fitted.

    Args:
        kind: :class:`ExpMIAttack` or :class:`PredMIAttack`.
        config: Its config.
        train: ``(observations, inputs)`` of the attacker's training split.
        val: ``(observations, inputs)`` of the attacker's early-stopping split.
        cache: Folder to save the fitted attack in and load it from on the next run (the caller makes
            the folder name unique to the settings and data).
        show_progress: Progress bars.
    """
    return _cached(
        cache,
        kind.load,
        lambda: kind(config).fit(train[0], train[1], validation=val, show_progress=show_progress),
        "attack",
    )


def fit_gnime(
    explainer: Explainer,
    config: GNIMEConfig,
    x: Tensor,
    *,
    cache: Path | None = None,
    show_progress: bool | None = None,
) -> GNIMEDefense:
    """Fit GNIME on the defender's images ``x``; reuse ``cache`` if already fitted there."""
    return _cached(
        cache,
        lambda folder: cast(GNIMEDefense, GNIMEDefense.load(folder, explainer)),
        lambda: GNIMEDefense(explainer, config).fit(x, show_progress=show_progress),
        "defense",
    )


class _Saveable(Protocol):
    def save(self, folder: str | Path) -> Any: ...


_S = TypeVar("_S", bound=_Saveable)


def _cached(cache: Path | None, load: Callable[[Path], _S], fit: Callable[[], _S], what: str) -> _S:
    """``load(cache)`` when a fitted ``what`` is saved there (a broken one is refitted), else ``fit()`` and save."""
    if cache is not None and (cache / "config.json").is_file():
        try:
            return load(cache)
        except CheckpointError as err:
            logger.warning("ignoring the cached %s at %s: %s", what, cache, err)
    fitted = fit()
    if cache is not None:
        fitted.save(cache)
    return fitted


def attack_metrics(
    reconstructions: Tensor,
    originals: Tensor,
    labels: Tensor,
    *,
    victim: nn.Module,
    evaluator: nn.Module,
    seed: int,
    n_boot: int,
) -> dict[str, Any]:
    """Every reconstruction metric with intervals, plus the per-image values the paired comparisons need.

    Returns:
        ``{"summary": {metric: MeanCI}, "per_image": {"mse", "ssim", "tca"}}`` (MSE and SSIM on images in
        [0, 1]; ``tca`` the evaluation classifier's hits).
    """
    summary = reconstruction_summary(
        reconstructions, originals, labels=labels, victim=victim, evaluator=evaluator, seed=seed, n_boot=n_boot
    )
    r01, x01 = (reconstructions + 1) / 2, (originals + 1) / 2
    per_image = {
        "mse": mse(r01, x01).numpy(),
        "ssim": ssim(r01, x01, data_range=1.0).numpy(),
        "tca": classification_hits(evaluator, reconstructions, labels).numpy(),
    }
    return {"summary": summary, "per_image": per_image}


def evaluate_defense(
    defense: Defense,
    observations: Mapping[str, Observations],
    data: Mapping[str, tuple[Tensor, Tensor]],
    clean_attack: InversionAttack,
    attack_config: AttackConfig,
    *,
    victim: nn.Module,
    evaluator: nn.Module,
    seed: int,
    n_boot: int,
    top_q: float = 0.1,
    cache: Path | None = None,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """One defense against both threat models, on the test split.

    Args:
        defense: The (fitted) defense.
        observations: Clean observations of ``"attacker_train"``, ``"attacker_val"`` and ``"test"``.
        data: ``{split: (images, labels)}`` of those splits.
        clean_attack: The ExpMI trained on clean explanations (the non-adaptive attacker).
        attack_config: Config of the fresh, adaptive ExpMI.
        victim: The explained classifier (re-classification accuracy).
        evaluator: The evaluation classifier (TCA, feature similarity).
        seed: Bootstrap seed.
        n_boot: Bootstrap resamples.
        top_q: Fraction of pixels of the top-pixel overlap.
        cache: Folder of the adaptive attack (see :func:`fit_attack`).
        show_progress: Progress bars.

    Returns:
        ``{"distortion": MeanCI, "top_overlap": MeanCI, "distortion_per_image", "defended_test",
        "non-adaptive": {...}, "adaptive": {...}, "reconstructions": {threat model: tensor}}``.
    """
    defended = {k: defend_observations(observations[k], defense) for k in ("attacker_train", "attacker_val", "test")}
    test_x, test_y = data["test"]
    clean_maps = cast(Tensor, observations["test"].explanations)
    test_maps = cast(Tensor, defended["test"].explanations)
    dist = explanation_distortion(test_maps, clean_maps)
    overlap = top_pixel_overlap(test_maps, clean_maps, q=top_q)
    adaptive = fit_attack(
        ExpMIAttack,
        attack_config,
        (defended["attacker_train"], data["attacker_train"][0]),
        (defended["attacker_val"], data["attacker_val"][0]),
        cache=cache,
        show_progress=show_progress,
    )
    recs = {
        "non-adaptive": clean_attack.reconstruct(defended["test"]),
        "adaptive": adaptive.reconstruct(defended["test"]),
    }
    out: dict[str, Any] = {
        "distortion": summarize(dist.numpy(), seed=seed, n_boot=n_boot),
        "top_overlap": summarize(overlap.numpy(), seed=seed, n_boot=n_boot),
        "distortion_per_image": dist.numpy(),
        "defended_test": test_maps,
        "reconstructions": recs,
        "adaptive_attack": adaptive.describe(),
    }
    for threat, rec in recs.items():
        out[threat] = attack_metrics(rec, test_x, test_y, victim=victim, evaluator=evaluator, seed=seed, n_boot=n_boot)
    return out


# ------------------------------------------------------------------------------------------------ data


def _load(config: GNIMEExperimentConfig) -> tuple[Tensor, Tensor, tuple[str, ...] | None]:
    """Pooled images and labels of the experiment (identities for Olivetti)."""
    size = config.size
    if config.data == "mnist":
        ds = load_dataset(
            "mnist", split="train", data_root=config.data_root, resize=size, n=config.n_data, seed=config.seed
        )
        if ds.labels is None:
            raise DataError("MNIST came without labels; check the data files.")
        return ds.images, ds.labels, ds.class_names
    parts = [load_dataset(config.data, split=s, data_root=config.data_root, resize=size) for s in ("train", "test")]
    x = torch.cat([p.images for p in parts])
    labels = [p.labels for p in parts]
    if any(lab is None for lab in labels):
        raise DataError(f"{config.data} came without labels; the experiment needs classes (identities).")
    y = torch.cat([cast(Tensor, lab) for lab in labels])
    if config.n_data is not None and config.n_data < len(x):
        order = torch.randperm(
            len(x), generator=torch.Generator().manual_seed(derive_seed(config.seed, "gnime-subset"))
        )
        keep = order[: config.n_data].sort().values
        x, y = x[keep], y[keep]
    return x, y, parts[0].class_names


def _fractions(config: GNIMEExperimentConfig) -> dict[str, float]:
    if config.data == "olivetti":  # 5 / 3 / 1 / 1 images of every identity
        return {"defender": 0.5, "attacker_train": 0.3, "attacker_val": 0.1, "test": 0.1}
    return {"defender": 0.5, "attacker_train": 0.32, "attacker_val": 0.08, "test": 0.1}


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return float(classification_hits(model, x, y).mean())


# ---------------------------------------------------------------------------------------------- runner


@EXPERIMENTS.register("gnime", config=GNIMEExperimentConfig)
def run_gnime(
    config: GNIMEExperimentConfig,
    out_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """Run the explanation-privacy experiment; write ``results.json`` and ``report.html`` into ``out_dir``.

    Returns:
        The ``results.json`` content.
    """
    config, out = start_run(config, out_dir, data_root)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    seed = config.seed
    x_all, y_all, class_names = _load(config)
    n_classes = int(y_all.max()) + 1
    splits = privacy_splits(len(x_all), seed=derive_seed(seed, "gnime-splits"), labels=y_all, **_fractions(config))
    data = {name: (x_all[idx], y_all[idx]) for name, idx in splits.as_dict().items()}

    t = time.perf_counter()
    models = out / "models"
    arch: dict[str, Any] = {"n_conv": config.classifier_n_conv, "n_pool": config.classifier_n_pool}
    victim_cfg = classifier_config(config.size, int(x_all.shape[1]), n_classes, config.classifier_width, **arch)
    evaluator_cfg = classifier_config(
        config.size, int(x_all.shape[1]), n_classes, max(1, round(config.classifier_width * 1.5)), **arch
    )
    trained = {}
    for name, model_cfg in (("victim", victim_cfg), ("evaluator", evaluator_cfg)):
        result = train_classifier(
            model_cfg,
            default_train_config(model_cfg, n_steps=config.classifier_steps, seed=derive_seed(seed, name)),
            data["defender"],
            models / name,
            show_progress=show_progress,
        )
        trained[name] = cast(CNNClassifier, result.model).eval()
    victim, evaluator = trained["victim"], trained["evaluator"]
    timings["classifiers"] = time.perf_counter() - t
    accuracy = {name: _accuracy(m, *data["test"]) for name, m in trained.items()}

    explainer = EXPLAINERS.create(config.explainer, victim)
    observations = {k: explainer.observe(data[k][0]) for k in ("attacker_train", "attacker_val", "test")}
    attack_cfg = config.attack.replace(seed=derive_seed(seed, "gnime-attack") % 2**31)
    key_base = {
        "data": config.data,
        "size": config.size,
        "n_data": config.n_data,
        "seed": seed,
        "explainer": config.explainer,
        "classifier": [config.classifier_steps, victim_cfg.to_dict()],
        "attack": attack_cfg.to_dict(),
    }
    cache = out / "cache"

    def train_val(obs: Mapping[str, Observations]) -> tuple[tuple[Observations, Tensor], tuple[Observations, Tensor]]:
        return (obs["attacker_train"], data["attacker_train"][0]), (obs["attacker_val"], data["attacker_val"][0])

    t = time.perf_counter()
    clean_expmi = fit_attack(
        ExpMIAttack,
        attack_cfg,
        *train_val(observations),
        cache=cache / f"exp-mi-{_key(key_base)}",
        show_progress=show_progress,
    )
    predmi = fit_attack(
        PredMIAttack,
        attack_cfg,
        *train_val(observations),
        cache=cache / f"pred-mi-{_key(key_base)}",
        show_progress=show_progress,
    )
    timings["clean attacks"] = time.perf_counter() - t
    test_x, test_y = data["test"]
    common: dict[str, Any] = {"victim": victim, "evaluator": evaluator, "seed": seed, "n_boot": config.n_boot}
    recs: dict[str, Tensor] = {
        "exp-mi": clean_expmi.reconstruct(observations["test"]),
        "pred-mi": predmi.reconstruct(observations["test"]),
    }
    baseline = {name: attack_metrics(rec, test_x, test_y, **common) for name, rec in recs.items()}

    sweep: list[dict[str, Any]] = []
    main_point: dict[str, Any] = {}
    gnime_defenses: dict[float, GNIMEDefense] = {}
    for a in config.sweep:
        t = time.perf_counter()
        gnime_cfg = config.gnime.replace(a=a, seed=derive_seed(seed, "gnime-defense") % 2**31)
        gnime = fit_gnime(
            explainer,
            gnime_cfg,
            data["defender"][0],
            cache=cache / f"gnime-a{a:g}-{_key({**key_base, 'gnime': gnime_cfg.to_dict()})}",
            show_progress=show_progress,
        )
        gnime_defenses[a] = gnime
        rnd = matched_gaussian_noise(
            gnime, data["defender"][0], clamp=config.rnd_clamp, seed=derive_seed(seed, "gnime-rnd", f"{a:g}") % 2**31
        )
        point: dict[str, Any] = {"a": a, "matched_distortion_defender": rnd.matched_distortion}
        for name, defense in (("gnime", gnime), ("rnd", rnd)):
            point[name] = evaluate_defense(
                defense,
                observations,
                data,
                clean_expmi,
                attack_cfg,
                top_q=config.top_q,
                cache=cache / f"adaptive-{name}-a{a:g}-{_key({**key_base, 'defense': defense.describe()})}",
                show_progress=show_progress,
                **common,
            )
        point["rnd_sigma"] = rnd.config.sigma
        point["gnime_history"] = gnime.history_
        point["comparison"] = _compare(point, baseline["pred-mi"], seed=seed, n_boot=config.n_boot)
        sweep.append(point)
        if a == config.main_a:
            main_point = point
        timings[f"sweep a={a:g}"] = time.perf_counter() - t
    extra_rnd: list[dict[str, Any]] = []
    for sigma in config.rnd_sigmas:
        t = time.perf_counter()
        rnd = GaussianNoiseDefense.for_distortion(
            explainer,
            float(sigma) ** 2,
            explanations=explainer.explain(data["defender"][0]) if config.rnd_clamp else None,
            clamp=config.rnd_clamp,
            seed=derive_seed(seed, "gnime-rnd-extra", f"{sigma:g}") % 2**31,
        )
        rnd_result = evaluate_defense(
            rnd,
            observations,
            data,
            clean_expmi,
            attack_cfg,
            top_q=config.top_q,
            cache=cache / f"adaptive-rnd-sigma{sigma:g}-{_key({**key_base, 'defense': rnd.describe()})}",
            show_progress=show_progress,
            **common,
        )
        extra_rnd.append({"sigma": float(sigma), "rnd": rnd_result})
        timings[f"rnd sigma={sigma:g}"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    finding = _finding(sweep, baseline)
    tables = {threat: _table_rows(baseline, main_point, threat) for threat in ("non-adaptive", "adaptive")}
    results: dict[str, Any] = {
        "experiment": "gnime",
        "paper": "Jeong et al., Learning to Generate Inversion-Resistant Model Explanations, NeurIPS 2022",
        "config": config.to_dict(),
        "splits": splits.sizes(),
        "image_size": config.size,
        "n_classes": n_classes,
        "classifier_test_accuracy": accuracy,
        "main_a": config.main_a,
        "baseline": {name: _plain_metrics(m) for name, m in baseline.items()},
        "table": {threat: [_plain_row(r) for r in rows] for threat, rows in tables.items()},
        "sweep": [_plain_point(p) for p in sweep],
        "rnd_extra": [{"sigma": e["sigma"], **_plain_defense(e["rnd"])} for e in extra_rnd],
        "finding": finding,
        "attacks": {"exp-mi": clean_expmi.describe(), "pred-mi": predmi.describe()},
        "timings_seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    report = _report(
        config,
        results,
        tables,
        sweep,
        extra_rnd,
        baseline,
        grid=_grid(config, data, observations, recs, main_point),
        class_names=class_names,
    )
    results["report"] = str(report.write(out, filename="report.html"))
    atomic_write_json(out / "results.json", json_safe(results))
    return results


# ------------------------------------------------------------------------------------------ comparisons


def _compare(point: Mapping[str, Any], predmi: Mapping[str, Any], *, seed: int, n_boot: int) -> dict[str, Any]:
    """Paired comparisons of GNIME and its matched RND at one sweep point (positive = GNIME more private)."""
    out: dict[str, Any] = {}
    for threat in ("non-adaptive", "adaptive"):
        g, r = point["gnime"][threat]["per_image"], point["rnd"][threat]["per_image"]
        out[threat] = {
            "mse_gain": paired_difference_ci(g["mse"], r["mse"], seed=seed, n_boot=n_boot),
            "ssim_gain": paired_difference_ci(r["ssim"], g["ssim"], seed=seed, n_boot=n_boot),
            "tca_gain": paired_difference_ci(r["tca"], g["tca"], seed=seed, n_boot=n_boot),
            # at the floor: the attacker's MSE is not below PredMI's (interval of PredMI - attack reaches 0)
            "gnime_at_floor": paired_difference_ci(predmi["per_image"]["mse"], g["mse"], seed=seed, n_boot=n_boot).low
            <= 0,
            "rnd_at_floor": paired_difference_ci(predmi["per_image"]["mse"], r["mse"], seed=seed, n_boot=n_boot).low
            <= 0,
        }
    return out


def _a_list(rows: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{r['a']:g}" for r in rows)


def _finding(sweep: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """Where GNIME beats noise at equal distortion, per threat model, in words and numbers."""
    out: dict[str, Any] = {}
    texts = []
    exp = baseline["exp-mi"]["summary"]["mse"].mean
    pred = baseline["pred-mi"]["summary"]["mse"].mean
    if exp < pred:
        texts.append(f"Explanations leak more than predictions: ExpMI MSE {exp:.4f} < PredMI {pred:.4f}.")
    else:
        texts.append(f"Here explanations did not leak more than predictions: ExpMI MSE {exp:.4f} >= PredMI {pred:.4f}.")
    for threat in ("adaptive", "non-adaptive"):
        rows = []
        for p in sweep:
            c = p["comparison"][threat]
            rows.append(
                {
                    "a": p["a"],
                    "distortion": p["gnime"]["distortion"].mean,
                    "gnime_mse": p["gnime"][threat]["summary"]["mse"].mean,
                    "rnd_mse": p["rnd"][threat]["summary"]["mse"].mean,
                    "mse_gain": c["mse_gain"],
                    "tca_gain": c["tca_gain"],
                    "gnime_wins_mse": c["mse_gain"].low > 0,
                    "rnd_wins_mse": c["mse_gain"].high < 0,
                    "gnime_wins_tca": c["tca_gain"].low > 0,
                    "gnime_at_floor": bool(c["gnime_at_floor"]),
                    "rnd_at_floor": bool(c["rnd_at_floor"]),
                }
            )
        wins = [r for r in rows if r["gnime_wins_mse"]]
        losses = [r for r in rows if r["rnd_wins_mse"]]
        sentence = f"{threat.capitalize()} attacker: "
        if wins:
            w = wins[0]
            sentence += (
                f"GNIME's error is above RND's at the same distortion (95% paired CI above 0) at a = "
                f"{_a_list(wins)}; the smallest such distortion is {w['distortion']:.4g} "
                f"(a = {w['a']:g}: MSE {w['gnime_mse']:.4f} vs {w['rnd_mse']:.4f})."
            )
        else:
            sentence += "at no swept distortion is GNIME's error above RND's with 95% confidence."
        if losses:
            sentence += f" RND's error is above GNIME's at a = {_a_list(losses)}."
        for name, key in (("RND", "rnd_at_floor"), ("GNIME", "gnime_at_floor")):
            floor = [r for r in rows if r[key]]
            if floor:
                sentence += (
                    f" {name} reaches the PredMI floor (attacker MSE not below PredMI's) from distortion "
                    f"{floor[0]['distortion']:.4g} (a = {floor[0]['a']:g})."
                )
            elif exp < pred:
                sentence += f" {name} stays below the PredMI floor at every swept distortion."
        tca_wins = [r for r in rows if r["gnime_wins_tca"]]
        if tca_wins:
            sentence += f" GNIME cuts TCA more than RND at a = {_a_list(tca_wins)}."
        texts.append(sentence)
        out[threat] = [{k: (v.to_dict() if isinstance(v, MeanCI) else v) for k, v in r.items()} for r in rows]
    out["text"] = " ".join(texts)
    return out


# ------------------------------------------------------------------------------------------- JSON shape

_COLUMNS = ("mse", "ssim", "psnr", "tca", "reclassification_accuracy", "feature_similarity")


def _table_rows(baseline: Mapping[str, Any], main: Mapping[str, Any], threat: str) -> list[dict[str, Any]]:
    """The paper's table for one threat model: ExpMI no defense, RND, GNIME, PredMI."""

    def row(name: str, metrics: Mapping[str, Any], defense: Mapping[str, Any] | None) -> dict[str, Any]:
        s = metrics["summary"]
        r: dict[str, Any] = {"attack": name}
        r.update({c: s.get(c) for c in _COLUMNS})
        r["distortion"] = defense["distortion"] if defense is not None else (0.0 if name.startswith("ExpMI") else None)
        r["top_overlap"] = (
            defense["top_overlap"] if defense is not None else (1.0 if name.startswith("ExpMI") else None)
        )
        return r

    return [
        row("ExpMI (no defense)", baseline["exp-mi"], None),
        row("RND", main["rnd"][threat], main["rnd"]),
        row("GNIME", main["gnime"][threat], main["gnime"]),
        row("PredMI", baseline["pred-mi"], None),
    ]


def _plain_value(v: Any) -> Any:
    if isinstance(v, MeanCI):
        return v.to_dict()
    if isinstance(v, np.ndarray):
        return [round(float(x), 6) for x in v]
    return v


def _plain_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _plain_value(v) for k, v in row.items()}


def _plain_metrics(m: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _plain_value(v) for k, v in m["summary"].items()}


def _plain_defense(d: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "distortion": _plain_value(d["distortion"]),
        "top_overlap": _plain_value(d["top_overlap"]),
        "non-adaptive": _plain_metrics(d["non-adaptive"]),
        "adaptive": _plain_metrics(d["adaptive"]),
        "adaptive_attack": d["adaptive_attack"],
    }


def _plain_point(p: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "a": p["a"],
        "matched_distortion_defender": p["matched_distortion_defender"],
        "rnd_sigma": p["rnd_sigma"],
        "gnime": _plain_defense(p["gnime"]),
        "rnd": _plain_defense(p["rnd"]),
        "comparison": {threat: {k: _plain_value(v) for k, v in c.items()} for threat, c in p["comparison"].items()},
        "gnime_history": p["gnime_history"],
    }


# ---------------------------------------------------------------------------------------------- report


def _as_image(maps: Tensor) -> Tensor:
    """[0, 1] explanation maps (defended ones clipped for display) as [-1, 1] images."""
    return maps.clamp(0, 1) * 2 - 1


def _grid(
    config: GNIMEExperimentConfig,
    data: Mapping[str, tuple[Tensor, Tensor]],
    observations: Mapping[str, Observations],
    recs: Mapping[str, Tensor],
    main: Mapping[str, Any],
) -> Tensor:
    """Rows: originals, clean maps, GNIME maps, RND maps, ExpMI (clean), adaptive vs GNIME / RND,
    non-adaptive vs GNIME, PredMI; ``n_grid`` test images each (the first of each class, then the rest)."""
    x, y = data["test"]
    n = min(config.n_grid, len(x))
    first: list[int] = []
    for c in torch.unique(y).tolist():
        first.append(int(torch.nonzero(y == c)[0]))
    order = first + [i for i in range(len(x)) if i not in set(first)]
    idx = torch.tensor(sorted(order[:n]))
    rows = [
        x[idx],
        _as_image(cast(Tensor, observations["test"].explanations)[idx]),
        _as_image(main["gnime"]["defended_test"][idx]),
        _as_image(main["rnd"]["defended_test"][idx]),
        recs["exp-mi"][idx],
        main["gnime"]["reconstructions"]["adaptive"][idx],
        main["rnd"]["reconstructions"]["adaptive"][idx],
        main["gnime"]["reconstructions"]["non-adaptive"][idx],
        recs["pred-mi"][idx],
    ]
    return torch.cat(rows)


_GRID_ROWS = (
    "originals",
    "clean explanations",
    "GNIME-defended explanations",
    "RND-defended explanations (same distortion)",
    "ExpMI on clean explanations",
    "adaptive ExpMI vs GNIME",
    "adaptive ExpMI vs RND",
    "non-adaptive ExpMI vs GNIME",
    "PredMI (predictions only)",
)


def _curves(
    sweep: Sequence[Mapping[str, Any]],
    extra_rnd: Sequence[Mapping[str, Any]],
    baseline: Mapping[str, Any],
) -> MplFigure:
    """Attacker MSE / SSIM / TCA against explanation distortion; rows: adaptive, non-adaptive attacker."""
    metrics = (("mse", "attacker MSE (higher = more private)"), ("ssim", "attacker SSIM"), ("tca", "TCA"))
    fig = MplFigure(figsize=(12.0, 7.0), layout="constrained", facecolor="white")
    axes = fig.subplots(2, 3, squeeze=False)
    for r, threat in enumerate(("adaptive", "non-adaptive")):
        for c, (metric, label) in enumerate(metrics):
            ax = axes[r][c]
            series: dict[str, list[tuple[float, MeanCI]]] = {"GNIME": [], "RND": []}
            for p in sweep:
                series["GNIME"].append((p["gnime"]["distortion"].mean, p["gnime"][threat]["summary"][metric]))
                series["RND"].append((p["rnd"]["distortion"].mean, p["rnd"][threat]["summary"][metric]))
            for e in extra_rnd:
                series["RND"].append((e["rnd"]["distortion"].mean, e["rnd"][threat]["summary"][metric]))
            for i, (name, pts) in enumerate(series.items()):
                pts = sorted((d, m) for d, m in pts if d > 0)
                if not pts:
                    continue
                xs = np.array([d for d, _ in pts])
                ys = np.array([m.mean for _, m in pts])
                err = np.array([[m.mean - m.low for _, m in pts], [m.high - m.mean for _, m in pts]])
                ax.errorbar(xs, ys, yerr=err, color=PALETTE[i], marker="o", ms=4, lw=1.6, capsize=2, label=name)
            if sweep:
                for a_pt in sweep:
                    ax.annotate(
                        f"a={a_pt['a']:g}",
                        (a_pt["gnime"]["distortion"].mean, a_pt["gnime"][threat]["summary"][metric].mean),
                        xytext=(3, 3),
                        textcoords="offset points",
                        fontsize=7,
                        color=PALETTE[0],
                    )
            pred = baseline["pred-mi"]["summary"][metric]
            ax.axhline(pred.mean, color="#4b5563", ls="--", lw=1.2, label="PredMI (floor)")
            ax.axhspan(pred.low, pred.high, color="#4b5563", alpha=0.12)
            ax.axhline(baseline["exp-mi"]["summary"][metric].mean, color=PALETTE[2], ls=":", lw=1.2, label="no defense")
            ax.set_xscale("log")
            ax.set_xlabel("explanation distortion (MSE of maps in [0, 1])", fontsize=9)
            ax.set_ylabel(label, fontsize=9)
            ax.set_title(f"{threat} attacker", fontsize=10, loc="left")
            ax.grid(True, color="#e5e7eb", lw=0.8)
            if r == 0 and c == 0:
                ax.legend(frameon=False, fontsize=8)
    return fig


def _sweep_rows(sweep: Sequence[Mapping[str, Any]], threat: str) -> list[dict[str, Any]]:
    rows = []
    for p in sweep:
        c = p["comparison"][threat]
        rows.append(
            {
                "a": p["a"],
                "distortion GNIME": p["gnime"]["distortion"],
                "distortion RND": p["rnd"]["distortion"],
                "top-q overlap GNIME": p["gnime"]["top_overlap"].mean,
                "top-q overlap RND": p["rnd"]["top_overlap"].mean,
                "MSE GNIME": p["gnime"][threat]["summary"]["mse"],
                "MSE RND": p["rnd"][threat]["summary"]["mse"],
                "MSE gain of GNIME": c["mse_gain"],
                "TCA GNIME": p["gnime"][threat]["summary"]["tca"].mean,
                "TCA RND": p["rnd"][threat]["summary"]["tca"].mean,
                "TCA cut of GNIME": c["tca_gain"],
                "both at floor": bool(c["gnime_at_floor"] and c["rnd_at_floor"]),
            }
        )
    return rows


def _report(
    config: GNIMEExperimentConfig,
    results: Mapping[str, Any],
    tables: Mapping[str, list[dict[str, Any]]],
    sweep: Sequence[Mapping[str, Any]],
    extra_rnd: Sequence[Mapping[str, Any]],
    baseline: Mapping[str, Any],
    *,
    grid: Tensor,
    class_names: tuple[str, ...] | None,
) -> Report:
    report = Report(
        "Explanation privacy: inversion attacks and the GNIME defense",
        subtitle="Jeong et al., NeurIPS 2022, at small scale",
        meta={
            "dataset": config.data,
            "explainer": config.explainer,
            "seed": config.seed,
            "image size": config.size,
            "quick": config.quick,
        },
    )
    sizes = results["splits"]
    overview = Section(
        "overview",
        "Headline",
        intro=f"A victim CNN on {config.data} ({config.size}x{config.size}) releases `{config.explainer}` "
        "explanations and its prediction vector. An attacker trains decoders (ExpMI: explanation + prediction; "
        "PredMI: prediction only) on their own data to rebuild private inputs. GNIME adds learned noise to the "
        "explanations; RND adds Gaussian noise of the same distortion. Splits: "
        f"defender {sizes['defender']}, attacker {sizes['attacker_train']} + {sizes['attacker_val']} "
        f"(early stopping), held-out test {sizes['test']} (every figure below). Intervals: 95% bootstrap over "
        "test images.",
    )
    if config.quick:
        overview.add(Text("Quick run: less data, fewer epochs and one sweep point; numbers are rough.", tone="note"))
    acc = results["classifier_test_accuracy"]
    overview.add(
        KeyValue(
            {
                "victim test accuracy": acc["victim"],
                "evaluation classifier test accuracy": acc["evaluator"],
                "ExpMI MSE (no defense)": baseline["exp-mi"]["summary"]["mse"],
                "PredMI MSE (floor)": baseline["pred-mi"]["summary"]["mse"],
            },
            float_format=".4f",
        ),
        Text("**Finding.** " + results["finding"]["text"]),
    )
    report.add(overview)
    fmt = {"mse": ".4f", "distortion": ".4f", "psnr": ".2f"}
    columns = ["attack", "mse", "ssim", "psnr", "tca", "distortion", "top_overlap", "reclassification_accuracy"]
    tables_section = Section(
        "tables",
        f"The paper's table (GNIME a = {config.main_a:g})",
        intro="MSE, SSIM, PSNR on images in [0, 1] (lower MSE, higher SSIM / PSNR / TCA = more leakage); TCA: "
        "accuracy of the independent evaluation classifier on the reconstructions; distortion: MSE between "
        f"defended and clean maps; top_overlap: share of the clean map's top {config.top_q:.0%} pixels kept. "
        "RND has GNIME's distortion (matched on the defender's data).",
    )
    for threat, rows in tables.items():
        what = (
            "the attacker's ExpMI was trained on clean explanations and meets defended ones"
            if threat == "non-adaptive"
            else "a fresh ExpMI is trained on the defended explanations (the paper's setting)"
        )
        tables_section.add(
            Table(rows, caption=f"{threat.capitalize()} attacker: {what}.", columns=columns, float_format=fmt)
        )
    report.add(tables_section)

    curves = Section(
        "curves",
        "Privacy-utility curves",
        intro="Each GNIME point is one weight a; each RND point has the distortion of the GNIME point of the same "
        "a (plus any extra noise levels). Higher MSE / lower SSIM / lower TCA at the same distortion = more "
        "privacy for the same utility cost. The grey band is PredMI (the floor while predictions are "
        "released), the dotted line the undefended ExpMI.",
    )
    curves.add(Figure(_curves(sweep, extra_rnd, baseline), caption="Attacker success against explanation distortion."))
    for threat in ("adaptive", "non-adaptive"):
        curves.add(
            Table(
                _sweep_rows(sweep, threat),
                caption=f"{threat.capitalize()} attacker at every sweep point. Gains are paired differences over "
                "the same test images (positive = GNIME more private than RND), with 95% intervals.",
                float_format={
                    "a": "g",
                    "MSE gain of GNIME": ".4f",
                    "MSE GNIME": ".4f",
                    "MSE RND": ".4f",
                    "distortion GNIME": ".4g",
                    "distortion RND": ".4g",
                },
            )
        )
    report.add(curves)

    grid_section = Section(
        "grid",
        "Originals, explanations and reconstructions",
        intro=f"Test images (columns); rows, top to bottom: {'; '.join(_GRID_ROWS)}. Defense rows use a = "
        f"{config.main_a:g}. Maps are shown in [0, 1] (defended maps clipped for display).",
    )
    n = len(grid) // len(_GRID_ROWS)
    grid_section.add(grid_image(grid, "Rows as listed above.", nrow=n, width_px=640))
    report.add(grid_section)

    training = Section("training", "Training details", intro="GNIME's losses per epoch at the main weight.")
    main = next((p for p in sweep if p["a"] == config.main_a), None)
    if main is not None and main["gnime_history"]:
        training.add(
            Figure(
                training_curves(
                    main["gnime_history"],
                    ["distortion", "inverter_mse_defended", "inverter_mse_clean"],
                    x="epoch",
                ),
                caption=f"GNIME (a = {config.main_a:g}): distortion and the surrogate inverter's errors.",
            )
        )
    training.add(
        Table(
            [{"step": k, "seconds": v} for k, v in results["timings_seconds"].items()],
            caption="Wall-clock time per step.",
            float_format=".1f",
        )
    )
    report.add(training)
    return report


# --------------------------------------------------------------------------------------------- demo section


def privacy_section(ctx: DemoContext) -> Section:
    """The demo's explanation-privacy story on digits: explanations, an inversion attack, and GNIME.

    Uses the demo classifier as the victim (trained on the whole training split). GNIME is fitted on the
    first 600 training images (the defender's); the attacker owns the other training images (80/20 for
    training and early stopping); every number comes from the held-out test split. Small decoders and few
    epochs keep it well under a minute; fitted attacks and the defense are cached in
    ``ctx.models_dir / "privacy"``.
    """
    seed = ctx.config.seed
    clf = ctx.classifier()
    victim = clf.model.eval()
    train, test = ctx.train, ctx.test
    if train.labels is None or test.labels is None:
        raise ConfigError("The privacy section needs labelled data.")
    explainer = EXPLAINERS.create("gradient", victim)
    n_def = min(600, len(train) // 2)
    rest = n_def + torch.randperm(
        len(train) - n_def, generator=torch.Generator().manual_seed(derive_seed(seed, "privacy-demo"))
    )
    n_val = max(1, len(rest) // 5)
    data = {
        "attacker_train": (train.images[rest[n_val:]], train.labels[rest[n_val:]]),
        "attacker_val": (train.images[rest[:n_val]], train.labels[rest[:n_val]]),
        "test": (test.images, test.labels),
    }
    obs = {k: explainer.observe(v[0]) for k, v in data.items()}
    epochs = 6 if ctx.config.quick else 20
    attack_cfg = AttackConfig(width=8, depth=2, max_epochs=epochs, patience=5, lr=2e-3, seed=seed)
    gnime_cfg = GNIMEConfig(a=100.0, width=8, inverter_width=8, n_epochs=epochs, seed=seed)
    folder = (
        ctx.models_dir
        / "privacy"
        / _key(
            {"clf": str(clf.checkpoint), "step": clf.step, "attack": attack_cfg.to_dict(), "gnime": gnime_cfg.to_dict()}
        )
    )
    tv = (obs["attacker_train"], data["attacker_train"][0]), (obs["attacker_val"], data["attacker_val"][0])
    expmi = fit_attack(ExpMIAttack, attack_cfg, *tv, cache=folder / "exp-mi", show_progress=ctx.show_progress)
    predmi = fit_attack(PredMIAttack, attack_cfg, *tv, cache=folder / "pred-mi", show_progress=ctx.show_progress)
    gnime = fit_gnime(
        explainer, gnime_cfg, train.images[:n_def], cache=folder / "gnime", show_progress=ctx.show_progress
    )
    test_x, test_y = data["test"]
    common: dict[str, Any] = {"victim": victim, "evaluator": victim, "seed": seed, "n_boot": 500}
    base = {
        "ExpMI (no defense)": attack_metrics(expmi.reconstruct(obs["test"]), test_x, test_y, **common),
        "PredMI": attack_metrics(predmi.reconstruct(obs["test"]), test_x, test_y, **common),
    }
    g = evaluate_defense(
        gnime, obs, data, expmi, attack_cfg, cache=folder / "adaptive-gnime", show_progress=ctx.show_progress, **common
    )
    rows = []
    for name, m, dist in (
        ("ExpMI (no defense)", base["ExpMI (no defense)"], 0.0),
        ("GNIME, non-adaptive attacker", g["non-adaptive"], g["distortion"].mean),
        ("GNIME, adaptive attacker", g["adaptive"], g["distortion"].mean),
        ("PredMI", base["PredMI"], None),
    ):
        s = m["summary"]
        rows.append(
            {
                "attack": name,
                "MSE": s["mse"],
                "SSIM": s["ssim"].mean,
                "re-classified": s["tca"].mean,
                "distortion": dist,
            }
        )
    ctx.results["privacy"] = {
        r["attack"]: {k: (v.to_dict() if isinstance(v, MeanCI) else v) for k, v in r.items() if k != "attack"}
        for r in rows
    }
    idx = torch.arange(min(10, len(test_x)))
    grid = torch.cat(
        [
            test_x[idx],
            _as_image(cast(Tensor, obs["test"].explanations)[idx]),
            expmi.reconstruct(obs["test"][idx]),
            _as_image(g["defended_test"][idx]),
            g["reconstructions"]["adaptive"][idx],
            predmi.reconstruct(obs["test"][idx]),
        ]
    )
    section = Section(
        "privacy",
        "What do explanations leak? (model inversion and GNIME)",
        intro="A service explains the demo classifier's predictions with input-gradient maps. An attacker who "
        "queries it with their own images trains a decoder from (map, prediction vector) back to the image "
        "(ExpMI) and one from the prediction alone (PredMI). GNIME (Jeong et al., NeurIPS 2022) adds learned "
        "noise to the maps; an adaptive attacker retrains on defended maps. MSE on images in [0, 1]; "
        "re-classified: share of reconstructions the classifier assigns the original's class. Full study "
        "with matched Gaussian noise and privacy-utility curves: `genprov reproduce gnime`.",
    )
    if ctx.config.quick:
        section.add(Text(f"Quick mode: {epochs} attack epochs, so reconstructions are rough.", tone="note"))
    section.add(
        Table(
            rows,
            caption="Attacks on held-out digits (95% intervals on MSE).",
            float_format={"MSE": ".4f", "distortion": ".4f"},
        ),
        grid_image(
            grid,
            "Rows: originals; gradient maps; ExpMI reconstructions; GNIME-defended maps; adaptive ExpMI "
            "reconstructions; PredMI reconstructions.",
            nrow=len(idx),
            width_px=480,
        ),
    )
    return section
