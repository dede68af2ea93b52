"""Reproduce FLIPAD's single-model attribution tables at small scale (``genprov reproduce flipad``).

Laszkiewicz et al., "Single-Model Attribution of Generative Models Through Final-Layer Inversion",
ICML 2024, Sec. 5. Small-scale analogues of:

* **Table 1**: DCGAN, WGAN-GP, LSGAN and EBGAN trained on the dataset (digits resized to 16x16, or
  MNIST / Fashion-MNIST at 28x28); each in turn is the owner's model, tested against real test images
  and the other three.
* **Table 2**: the same detectors tested against the owner's architecture trained with other seeds.
* **Table 3**: every split perturbed (Gaussian noise with sigma 5% and 10% of the value range, Gaussian
  blur, centre crops of about 94% and 86% resized back, JPEG quality 90 and 80).
* **Table 5**: MLP GANs on scikit-learn's bundled tabular data (wine, breast cancer, ...).
* Table 4 (Stable Diffusion) needs downloaded weights; the VAE-decoder path is unit-tested and the report
  says how to run it.

Protocol (as the paper's code): the owner fits each method on ``n_train`` of its own samples (label +1)
and ``n_train`` real training images (label -1); the threshold is set at 0.5% FNR on ``n_holdout`` held-out
own samples; the test sets are balanced (``n_test`` own samples vs ``n_test`` of one other source), the
metrics are accuracy at that threshold and AUC, averaged over ``n_resamples`` random resamples of every
split. Every image passes an 8-bit PNG round trip (after any perturbation) before features are computed.
The inversion-based baseline (latent inversion) runs on one resample with ``latent_inversion_n_test``
samples per source, as the paper runs its inversion baselines once.

Choices (FLIPAD's saturation handling, alpha, iteration budget, normalisation, detector capacity) are
studied on a validation split only: the owner DCGAN against held-out real training images and a GAN
trained with a seed used nowhere else; the best setting by mean validation AUC is then used for every
table. Trained models are cached in ``out_dir/models``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from genprov.attribution.model import (
    MODEL_ATTRIBUTORS,
    DCTAttributorConfig,
    DeepSADConfig,
    FeatureAttributor,
    FinalLayerInversionAttributorConfig,
    LatentInversionAttributorConfig,
    ModelAttributor,
    PRNUAttributorConfig,
    RawPixelAttributorConfig,
)
from genprov.attribution.model.flipad import FLIPAD_IMAGE_SETTINGS
from genprov.config import Config, is_positive_int, require
from genprov.data import PERTURBATIONS, load_dataset, load_tabular, perturb, png_roundtrip
from genprov.eval import accuracy_at_threshold, roc_auc, roc_curve
from genprov.exceptions import ConfigError
from genprov.experiments.base import EXPERIMENTS, ExperimentConfig, start_run
from genprov.experiments.quickstart import DEMO_SECTIONS, DemoContext
from genprov.models.gans import GANConfig, Generator
from genprov.models.sampling import sample
from genprov.models.tabular import TabularGANConfig
from genprov.models.training import default_train_config, train_gan, train_tabular_gan
from genprov.report import Figure, KeyValue, Report, Section, Table, Text
from genprov.report.figures import roc_curves, score_histograms
from genprov.utils.io import atomic_write_json, json_safe
from genprov.utils.progress import progress
from genprov.utils.seeding import derive_seed, numpy_rng

__all__ = [
    "FlipadExperimentConfig",
    "flipad_demo_section",
    "reproduce_flipad",
    "run_flipad",
]

logger = logging.getLogger(__name__)

METHODS = ("flipad", "raw-pixels", "dct", "prnu", "latent-inversion")
_DATA_SIZES = {"digits": 16, "mnist": 28, "fashion-mnist": 28}


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlipadExperimentConfig(ExperimentConfig):
    """What ``run_flipad`` trains and measures.

    The constructor's defaults are the full run on digits; :meth:`from_dict` (what ``genprov reproduce``
    uses) and :meth:`preset` start from the quick preset when ``quick`` is true, and from the data's
    preset (MNIST-sized GAN training sets) for other data, then apply the keys given.

    Attributes:
        data: ``"digits"`` (built in, resized to 16x16), ``"mnist"`` or ``"fashion-mnist"`` (28x28; need
            ``data_root``).
        data_root: Folder with the dataset files (``None``: ``$GENPROV_DATA``).
        seed: Seed of everything (GAN training, samples, resamples, detectors).
        quick: A few-minute smoke run (with :meth:`from_dict` / :meth:`preset`, the quick sizes).
        archs: Table 1 architectures; the first is the owner used for the study, Table 3 and the demo.
        gan_width: Feature maps of the generators' penultimate layer (under-determination of the last
            layer = ``4 * gan_width / channels``).
        latent_dim: GAN latent dimension.
        gan_steps: Generator updates (DCGAN, LSGAN, EBGAN).
        wgan_steps: Generator updates of WGAN-GP (5 critic steps each).
        n_gan_train: Real training images the GANs see (``None``: the whole train split).
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
        perturbations: Table 3 perturbations (keys of :data:`PERTURBATIONS`).
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
    data_root: str | None = None
    seed: int = 0
    quick: bool = False
    archs: tuple[str, ...] = ("dcgan", "wgan-gp", "lsgan", "ebgan")
    gan_width: int = 16
    latent_dim: int = 32
    gan_steps: int = 1000
    wgan_steps: int = 400
    n_gan_train: int | None = None
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
    perturbations: tuple[str, ...] = tuple(PERTURBATIONS)
    tabular: tuple[str, ...] = ("wine", "breast-cancer")
    tabular_archs: tuple[str, ...] = ("wgan-gp", "dcgan", "lsgan")
    tabular_steps: int = 1500
    tabular_alpha: float = 1e-3
    study: bool = True
    study_widths: tuple[int, ...] = (8, 32)
    study_grid: tuple[dict[str, Any], ...] = (
        {"label": "paper: clip, alpha 5e-4, 300 it", "saturation": "clip"},
        {"label": "censor, alpha 5e-4, 300 it"},
        {"label": "censor, alpha 5e-2", "alpha": 5e-2},
        {"label": "censor, 100 it", "max_iter": 100},
        {"label": "censor, 1000 it", "max_iter": 1000},
        {"label": "censor, no standardisation", "standardize": False},
        {"label": "censor, wider detector (64, 128)", "detector": {"widths": [64, 128]}},
    )

    def validate(self) -> None:
        super().validate()
        require(self.data in _DATA_SIZES, "data", f"one of {', '.join(_DATA_SIZES)}", self.data)
        require(len(self.archs) >= 2, "archs", "at least two architectures", self.archs)
        for arch in (*self.archs, *self.table2_archs):
            require(arch in ("dcgan", "wgan-gp", "lsgan", "ebgan"), "archs", "GAN architectures", arch)
        for method in self.methods:
            require(method in MODEL_ATTRIBUTORS, "methods", f"names among {MODEL_ATTRIBUTORS.names()}", method)
        for name in self.perturbations:
            require(name in PERTURBATIONS, "perturbations", f"names among {list(PERTURBATIONS)}", name)
        for field in ("gan_width", "latent_dim", "gan_steps", "wgan_steps", "n_train", "n_holdout", "n_test"):
            require(is_positive_int(getattr(self, field)), field, "a positive integer", getattr(self, field))
        require(is_positive_int(self.n_resamples), "n_resamples", "a positive integer", self.n_resamples)
        require(self.n_train >= 2, "n_train", "at least 2", self.n_train)
        for label in self.study_grid:
            require(isinstance(label, Mapping) and "label" in label, "study_grid", "dicts with a 'label'", label)

    @classmethod
    def preset_values(cls, data: str, quick: bool) -> dict[str, Any]:
        """Sizes for non-digits data and, with ``quick``, the few-minute run."""
        return _preset_values(data, quick)


def _preset_values(data: str, quick: bool) -> dict[str, Any]:
    """Field values that differ from the constructor defaults for ``data`` / ``quick``."""
    values: dict[str, Any] = {}
    if data != "digits":
        values["n_gan_train"] = 10_000
    if quick:
        values.update(
            gan_steps=300,
            wgan_steps=100,
            table2_archs=["dcgan"],
            n_train=300,
            n_holdout=100,
            n_test=100,
            n_resamples=1,
            flipad=FinalLayerInversionAttributorConfig(max_iter=100, saturation="censor").to_dict(),
            detector=DeepSADConfig(n_epochs=10, lr_milestones=(8,)).to_dict(),
            latent_inversion_n_test=30,
            latent_inversion_steps=40,
            perturbations=["noise-0.1", "jpeg-80"],
            tabular=["wine"],
            tabular_archs=["wgan-gp", "dcgan"],
            tabular_steps=400,
            study_widths=[],
            study_grid=[
                {"label": "paper: clip, alpha 5e-4", "saturation": "clip"},
                {"label": "censor, alpha 5e-4"},
            ],
        )
    return values


# ----------------------------------------------------------------------------------------------- scoring


class _Scorer:
    """One method for one owner: caches features (feature methods) across resamples; fits and scores."""

    def __init__(self, method: str, generator: nn.Module, config: Config, pools: Mapping[str, Tensor]) -> None:
        self.method = method
        self.pools = pools
        self.att: ModelAttributor = MODEL_ATTRIBUTORS.create(method, generator, config=config)
        self.features: dict[str, Tensor] | None = None
        if isinstance(self.att, FeatureAttributor):
            self.att.prepare(pools["own"])
            self.features = {name: self.att.features(x) for name, x in pools.items()}

    def fit(self, train: np.ndarray, hold: np.ndarray, neg: np.ndarray) -> float:
        """Fit on own[train] vs neg[neg]; threshold on own[hold]. Returns the threshold."""
        if self.features is not None:
            assert isinstance(self.att, FeatureAttributor)
            f = self.features
            self.att.fit_features(f["own"][train], f["own"][hold], f["neg"][neg])
        else:
            own = self.pools["own"]
            self.att.fit_split(own[train], own[hold], negatives=self.pools["neg"][neg])
        return float(self.att.threshold_)

    def score(self, pool: str, idx: np.ndarray) -> Tensor:
        if self.features is not None:
            assert isinstance(self.att, FeatureAttributor)
            return self.att.score_features(self.features[pool][idx])
        return self.att.score_samples(self.pools[pool][idx])


def _metrics(own: Tensor, other: Tensor, threshold: float) -> dict[str, float]:
    return {"auc": roc_auc(own, other), "acc": accuracy_at_threshold(own, other, threshold)}


def _subset(rng: np.random.Generator, n_pool: int, n: int) -> np.ndarray:
    return np.sort(rng.permutation(n_pool)[: min(n, n_pool)])


def _evaluate(
    generator: nn.Module,
    pools: Mapping[str, Tensor],
    sources: Sequence[str],
    methods: Sequence[str],
    configs: Mapping[str, Config],
    cfg: FlipadExperimentConfig,
    key: str,
    *,
    n_resamples: int | None = None,
    keep_scores: bool = False,
) -> dict[str, Any]:
    """Fit every method on resamples of ``pools`` and measure it against every source.

    ``pools`` holds ``"own"`` (at least n_train + n_holdout + n_test own samples), ``"neg"`` (real training
    images) and one pool per source. Returns ``{method: {"per_source": {src: {"auc": [..], "acc": [..]}},
    "scores": {...} (first resample, if keep_scores)}}``.
    """
    n_res = n_resamples or cfg.n_resamples
    out: dict[str, Any] = {}
    for method in methods:
        t0 = time.perf_counter()
        scorer = _Scorer(method, generator, configs[method], pools)
        li = method == "latent-inversion"
        per_source: dict[str, dict[str, list[float]]] = {s: {"auc": [], "acc": []} for s in sources}
        kept: dict[str, Any] = {}
        for r in range(1 if li else n_res):
            rng = numpy_rng(cfg.seed, key, "resample", r)
            order = rng.permutation(len(pools["own"]))
            n_tr, n_ho, n_te = cfg.n_train, cfg.n_holdout, cfg.n_test
            if li:
                n_tr, n_ho, n_te = 2, min(cfg.n_holdout, cfg.latent_inversion_n_test), cfg.latent_inversion_n_test
            train, hold = order[:n_tr], order[n_tr : n_tr + n_ho]
            test = order[cfg.n_train + cfg.n_holdout :][:n_te]
            threshold = scorer.fit(train, hold, _subset(rng, len(pools["neg"]), cfg.n_train))
            own_scores = scorer.score("own", test)
            if r == 0 and keep_scores:
                kept = {"threshold": threshold, "own": own_scores}
            for source in sources:
                idx = _subset(rng, len(pools[source]), n_te)
                scores = scorer.score(source, idx)
                m = _metrics(own_scores, scores, threshold)
                per_source[source]["auc"].append(m["auc"])
                per_source[source]["acc"].append(m["acc"])
                if r == 0 and keep_scores:
                    kept[source] = scores
        out[method] = {"per_source": per_source, "seconds": round(time.perf_counter() - t0, 2)}
        if keep_scores:
            out[method]["scores"] = kept
        logger.info("%s %s: %.1fs", key, method, time.perf_counter() - t0)
    return out


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def _summarise(result: Mapping[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """``{method: {source: {"auc", "acc", "auc_sd", "acc_sd"}}}`` plus a ``"mean"`` source."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for method, res in result.items():
        rows: dict[str, dict[str, float]] = {}
        for source, m in res["per_source"].items():
            rows[source] = {
                "auc": _mean(m["auc"]),
                "acc": _mean(m["acc"]),
                "auc_sd": float(np.std(m["auc"])),
                "acc_sd": float(np.std(m["acc"])),
            }
        rows["mean"] = {
            "auc": _mean([v["auc"] for v in rows.values()]),
            "acc": _mean([v["acc"] for v in rows.values()]),
        }
        summary[method] = rows
    return summary


# ------------------------------------------------------------------------------------------------ models


def _train_image_gan(
    cfg: FlipadExperimentConfig,
    arch: str,
    train_seed: int,
    images: Tensor,
    models: Path,
    show: bool | None,
    width: int | None = None,
) -> nn.Module:
    width = cfg.gan_width if width is None else width
    model_cfg = GANConfig(
        arch=arch, image_size=images.shape[-1], channels=images.shape[1], width=width, latent_dim=cfg.latent_dim
    )
    steps = cfg.wgan_steps if arch == "wgan-gp" else cfg.gan_steps
    train_cfg = default_train_config(model_cfg, n_steps=steps, seed=train_seed, checkpoint_every=0, log_every=50)
    folder = models / f"{arch}-w{width}-s{train_seed}-{steps}"
    return train_gan(model_cfg, train_cfg, images, folder, show_progress=show).model.eval()


def _own_pool(generator: nn.Module, n: int, seed: int, key: str) -> Tensor:
    return png_roundtrip(sample(generator, n, seed=derive_seed(seed, "samples", key), show_progress=False))


# ------------------------------------------------------------------------------------------------- the run


def _method_configs(cfg: FlipadExperimentConfig, flipad: FinalLayerInversionAttributorConfig) -> dict[str, Config]:
    """The config of every method: same seed, FNR and Deep SAD settings for all feature methods."""
    shared: dict[str, Any] = {"fnr": 0.005, "seed": cfg.seed}
    return {
        "flipad": flipad.replace(seed=cfg.seed),
        "raw-pixels": RawPixelAttributorConfig(**shared, detector=cfg.detector),
        "dct": DCTAttributorConfig(**shared, detector=cfg.detector),
        "prnu": PRNUAttributorConfig(**shared),
        "latent-inversion": LatentInversionAttributorConfig(**shared, n_steps=cfg.latent_inversion_steps),
    }


def _apply_grid_entry(
    base: FinalLayerInversionAttributorConfig, entry: Mapping[str, Any]
) -> FinalLayerInversionAttributorConfig:
    changes = {k: v for k, v in entry.items() if k != "label"}
    if "detector" in changes:
        det = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.pop("detector").items()}
        changes["detector"] = base.detector.replace(**det)
    return base.replace(**changes)


@EXPERIMENTS.register("flipad", config=FlipadExperimentConfig)
def run_flipad(
    config: FlipadExperimentConfig,
    out_dir: str | Path,
    show_progress: bool | None = None,
    *,
    data_root: str | Path | None = None,
) -> dict[str, Any]:
    """Run the experiment and write ``results.json`` and ``report.html`` into ``out_dir``.

    Registered as the ``"flipad"`` experiment (``genprov reproduce flipad``).

    Args:
        config: What to run (see :meth:`FlipadExperimentConfig.preset`).
        out_dir: Output folder; trained models are cached in ``out_dir/models``.
        show_progress: Progress bars (default: on for a terminal).
        data_root: Folder holding MNIST / Fashion-MNIST (overrides ``config.data_root``).

    Returns:
        The results (also in ``results.json``).
    """
    t_start = time.perf_counter()
    if not isinstance(config, FlipadExperimentConfig):
        raise ConfigError(f"run_flipad takes a FlipadExperimentConfig; got {type(config).__name__}.")
    cfg, out = start_run(config, out_dir, data_root)
    models = out / "models"
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 1)
        return now

    # ---------------------------------------------------------------- data and GANs
    size = _DATA_SIZES[cfg.data]
    resize = size if cfg.data == "digits" else None
    train_set = load_dataset(
        cfg.data, split="train", data_root=cfg.data_root, resize=resize, n=cfg.n_gan_train, seed=cfg.seed
    )
    test_set = load_dataset(cfg.data, split="test", data_root=cfg.data_root, resize=resize)
    real_train = train_set.images
    order = torch.from_numpy(numpy_rng(cfg.seed, "real-split").permutation(len(real_train)))
    n_neg = min(len(real_train) - 50, max(cfg.n_train, round(0.75 * len(real_train))))
    real_neg, real_val = png_roundtrip(real_train[order[:n_neg]]), png_roundtrip(real_train[order[n_neg:]])
    real_test = png_roundtrip(test_set.images[: max(cfg.n_test, round(1.2 * cfg.n_test))])
    t = time.perf_counter()
    gens: dict[str, nn.Module] = {}
    jobs = [(a, cfg.seed) for a in cfg.archs]
    jobs += [(a, cfg.seed + 1 + k) for a in cfg.table2_archs for k in range(cfg.table2_seeds)]
    val_arch = "lsgan" if "lsgan" in cfg.archs and cfg.archs[0] != "lsgan" else cfg.archs[1]
    jobs.append((val_arch, cfg.seed + 1000))
    for arch, train_seed in progress(jobs, desc="train GANs", show=show_progress):
        gens[f"{arch}@{train_seed}"] = _train_image_gan(cfg, arch, train_seed, real_train, models, show_progress)
    t = lap("train_gans", t)

    n_pool = cfg.n_train + cfg.n_holdout + cfg.n_test
    n_src = max(cfg.n_test, round(1.2 * cfg.n_test))
    main = {a: f"{a}@{cfg.seed}" for a in cfg.archs}
    own_pools = {name: _own_pool(gens[name], n_pool, cfg.seed, f"own:{name}") for name in main.values()}
    src_pools = {name: _own_pool(g, n_src, cfg.seed, f"src:{name}") for name, g in gens.items()}
    owner0 = main[cfg.archs[0]]
    t = lap("sample", t)

    # ---------------------------------------------------------------- validation study
    flipad_cfg = cfg.flipad.replace(detector=cfg.detector)
    study_rows: list[dict[str, Any]] = []
    best_label: str | None = None
    if cfg.study and "flipad" in cfg.methods:
        val_key = f"{val_arch}@{cfg.seed + 1000}"
        pools = {
            "own": own_pools[owner0],
            "neg": real_neg,
            "real (val)": real_val,
            f"{val_arch} seed {cfg.seed + 1000} (val)": src_pools[val_key],
        }
        val_sources = [s for s in pools if s not in ("own", "neg")]
        candidates = [(entry["label"], _apply_grid_entry(flipad_cfg, entry)) for entry in cfg.study_grid]
        base_configs = _method_configs(cfg, flipad_cfg)
        reference = _summarise(
            _evaluate(gens[owner0], pools, val_sources, ["raw-pixels"], base_configs, cfg, "study", n_resamples=1)
        )
        study_rows.append(_study_row("raw pixels (reference)", reference["raw-pixels"], val_sources))
        best_auc = -1.0
        for label, candidate in progress(candidates, desc="study", show=show_progress):
            res = _summarise(
                _evaluate(
                    gens[owner0], pools, val_sources, ["flipad"], {"flipad": candidate}, cfg, "study", n_resamples=1
                )
            )
            row = _study_row(label, res["flipad"], val_sources)
            study_rows.append(row)
            if row["mean AUC"] > best_auc + 1e-9:
                best_auc, flipad_cfg, best_label = row["mean AUC"], candidate, label
        for row in study_rows:
            row["chosen"] = row["setting"] == best_label
    t = lap("study", t)
    width_rows = _width_study(cfg, flipad_cfg, real_train, real_neg, real_val, val_arch, models, show_progress)
    t = lap("width_study", t)
    configs = _method_configs(cfg, flipad_cfg)

    # ---------------------------------------------------------------- Tables 1 and 2
    table1: dict[str, Any] = {}
    table2: dict[str, Any] = {}
    raw1: dict[str, Any] = {}
    for arch in progress(cfg.archs, desc="tables 1-2", show=show_progress):
        owner = main[arch]
        t1_sources = ["real"] + [a for a in cfg.archs if a != arch]
        t2_sources = (
            [f"{arch} seed {cfg.seed + 1 + k}" for k in range(cfg.table2_seeds)] if arch in cfg.table2_archs else []
        )
        pools = {"own": own_pools[owner], "neg": real_neg, "real": real_test}
        pools.update({a: src_pools[main[a]] for a in t1_sources[1:]})
        pools.update({s: src_pools[f"{arch}@{cfg.seed + 1 + k}"] for k, s in enumerate(t2_sources)})
        res = _evaluate(
            gens[owner], pools, t1_sources + t2_sources, cfg.methods, configs, cfg, f"t1:{arch}", keep_scores=True
        )
        summary = _summarise({m: {"per_source": {s: v["per_source"][s] for s in t1_sources}} for m, v in res.items()})
        table1[arch] = {"summary": summary, "per_resample": {m: v["per_source"] for m, v in res.items()}}
        table1[arch]["seconds"] = {m: v["seconds"] for m, v in res.items()}
        raw1[arch] = {m: v["scores"] for m, v in res.items()}
        if t2_sources:
            table2[arch] = _summarise(
                {m: {"per_source": {s: v["per_source"][s] for s in t2_sources}} for m, v in res.items()}
            )
    t = lap("tables_1_2", t)

    # ---------------------------------------------------------------- Table 3
    table3: dict[str, Any] = {}
    arch0 = cfg.archs[0]
    t3_methods = [m for m in cfg.methods if m != "latent-inversion"]
    t1_sources0 = ["real"] + [a for a in cfg.archs if a != arch0]
    for name in progress(cfg.perturbations, desc="table 3", show=show_progress):
        seed = derive_seed(cfg.seed, "perturb", name)

        def pert(x: Tensor, key: str, name: str = name, seed: int = seed) -> Tensor:
            return png_roundtrip(perturb(x, name, seed=derive_seed(seed, key)))

        pools = {
            "own": pert(own_pools[main[arch0]], "own"),
            "neg": pert(real_neg, "neg"),
            "real": pert(real_test, "real"),
        }
        pools.update({a: pert(src_pools[main[a]], a) for a in t1_sources0[1:]})
        res = _evaluate(gens[main[arch0]], pools, t1_sources0, t3_methods, configs, cfg, f"t3:{name}", n_resamples=1)
        table3[name] = _summarise(res)
    t = lap("table_3", t)

    # ---------------------------------------------------------------- Table 5 (tabular)
    table5 = _run_tabular(cfg, models, show_progress)
    t = lap("table_5", t)

    # ---------------------------------------------------------------- outputs
    timings["total"] = round(time.perf_counter() - t_start, 1)
    results: dict[str, Any] = {
        "experiment": "flipad",
        "config": cfg.to_dict(),
        "flipad_config_used": flipad_cfg.to_dict(),
        "study": study_rows,
        "width_study": width_rows,
        "table1": {a: v["summary"] for a, v in table1.items()},
        "table1_per_resample": {a: v["per_resample"] for a, v in table1.items()},
        "table2": table2,
        "table3": table3,
        "table5": table5,
        "headline": _headline(table1, cfg.methods),
        "table_means": _table_means(table1, table2, table3, table5),
        "timings_s": timings,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", json_safe(results))
    report = _report(cfg, results, raw1, flipad_cfg)
    report.write(out, filename="report.html")
    return results


def _study_row(label: str, summary: Mapping[str, Mapping[str, float]], sources: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"setting": label}
    for s in sources:
        row[f"AUC {s}"] = summary[s]["auc"]
        row[f"acc {s}"] = summary[s]["acc"]
    row["mean AUC"] = summary["mean"]["auc"]
    row["mean acc"] = summary["mean"]["acc"]
    return row


def _width_study(
    cfg: FlipadExperimentConfig,
    flipad_cfg: FinalLayerInversionAttributorConfig,
    real_train: Tensor,
    real_neg: Tensor,
    real_val: Tensor,
    val_arch: str,
    models: Path,
    show: bool | None,
) -> list[dict[str, Any]]:
    """FLIPAD (chosen setting) vs raw pixels on the validation split at other generator widths."""
    rows: list[dict[str, Any]] = []
    if not cfg.study or "flipad" not in cfg.methods:
        return rows
    configs = _method_configs(cfg, flipad_cfg)
    n_pool = cfg.n_train + cfg.n_holdout + cfg.n_test
    for width in progress(cfg.study_widths, desc="width study", show=show):
        owner = _train_image_gan(cfg, cfg.archs[0], cfg.seed, real_train, models, show, width=width)
        val_gan = _train_image_gan(cfg, val_arch, cfg.seed + 1000, real_train, models, show, width=width)
        val_name = f"{val_arch} seed {cfg.seed + 1000} (val)"
        pools = {
            "own": _own_pool(owner, n_pool, cfg.seed, f"width-own:{width}"),
            "neg": real_neg,
            "real (val)": real_val,
            val_name: _own_pool(val_gan, max(cfg.n_test, round(1.2 * cfg.n_test)), cfg.seed, f"width-val:{width}"),
        }
        sources = ["real (val)", val_name]
        res = _summarise(
            _evaluate(owner, pools, sources, ["flipad", "raw-pixels"], configs, cfg, f"width:{width}", n_resamples=1)
        )
        channels = owner.config.channels if isinstance(owner, Generator) else 1
        for method in ("flipad", "raw-pixels"):
            row = _study_row(_METHOD_LABELS[method], res[method], sources)
            rows.append({"width": width, "unknowns per output": 4 * width // channels, **row})
    return rows


def _headline(table1: Mapping[str, Any], methods: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean over owners (and their sources) of AUC and accuracy per method (Table 1)."""
    out: dict[str, dict[str, float]] = {}
    for method in methods:
        out[method] = {
            "auc": _mean([v["summary"][method]["mean"]["auc"] for v in table1.values()]),
            "acc": _mean([v["summary"][method]["mean"]["acc"] for v in table1.values()]),
        }
    return out


def _table_means(
    table1: Mapping[str, Any], table2: Mapping[str, Any], table3: Mapping[str, Any], table5: Mapping[str, Any]
) -> dict[str, dict[str, dict[str, float]]]:
    """``{table: {method: {"acc", "auc"}}}``: each table's mean over owners (perturbations, datasets)."""
    groups: dict[str, list[Mapping[str, Any]]] = {
        "Table 1": [v["summary"] for v in table1.values()],
        "Table 2": list(table2.values()),
        "Table 3": list(table3.values()),
        "Table 5": [per_owner for per_dataset in table5.values() for per_owner in per_dataset.values()],
    }
    out: dict[str, dict[str, dict[str, float]]] = {}
    for table, summaries in groups.items():
        if not summaries:
            continue
        methods = [m for m in summaries[0] if all(m in s for s in summaries)]
        out[table] = {
            m: {
                "acc": _mean([s[m]["mean"]["acc"] for s in summaries]),
                "auc": _mean([s[m]["mean"]["auc"] for s in summaries]),
            }
            for m in methods
        }
    return out


# ----------------------------------------------------------------------------------------------- tabular


def _run_tabular(cfg: FlipadExperimentConfig, models: Path, show: bool | None) -> dict[str, Any]:
    """Table 5: each tabular GAN as the owner vs real test rows and the other tabular GANs."""
    methods = [m for m in cfg.methods if m in ("flipad", "raw-pixels", "latent-inversion")]
    results: dict[str, Any] = {}
    for dataset in progress(cfg.tabular, desc="table 5", show=show):
        data = load_tabular(dataset)
        order = torch.from_numpy(numpy_rng(cfg.seed, "tabular-split", dataset).permutation(len(data)))
        n_test_real = max(10, round(0.3 * len(data)))
        rows_test, rows_train = data.features[order[:n_test_real]], data.features[order[n_test_real:]]
        gens: dict[str, nn.Module] = {}
        for arch in cfg.tabular_archs:
            model_cfg = TabularGANConfig(n_features=data.n_features, arch=arch, latent_dim=16, hidden=(64, 16))
            train_cfg = default_train_config(
                model_cfg, n_steps=cfg.tabular_steps, seed=cfg.seed, checkpoint_every=0, batch_size=64, log_every=50
            )
            folder = models / f"tabular-{dataset}-{arch}-s{cfg.seed}-{cfg.tabular_steps}"
            gens[arch] = train_tabular_gan(model_cfg, train_cfg, rows_train, folder, show_progress=show).model.eval()
        n_test = min(cfg.n_test, n_test_real)
        sub = dataclasses.replace(cfg, n_test=n_test, n_train=min(cfg.n_train, len(rows_train)))
        base = _method_configs(sub, cfg.flipad.replace(alpha=cfg.tabular_alpha, saturation="clip", pool_to=None))
        base["flipad"] = base["flipad"].replace(detector=cfg.detector.replace(widths=(32, 16), rep_dim=16))
        for name in ("raw-pixels",):
            base[name] = base[name].replace(detector=cfg.detector.replace(widths=(32, 16), rep_dim=16))
        per_owner: dict[str, Any] = {}
        for arch, g in gens.items():
            sources = ["real"] + [a for a in gens if a != arch]
            with torch.no_grad():
                pools = {
                    "own": sample(
                        g, sub.n_train + sub.n_holdout + n_test, seed=derive_seed(cfg.seed, "tab-own", dataset, arch)
                    ),
                    "neg": rows_train,
                    "real": rows_test,
                }
                for other in sources[1:]:
                    pools[other] = sample(gens[other], n_test, seed=derive_seed(cfg.seed, "tab-src", dataset, other))
            per_owner[arch] = _summarise(_evaluate(g, pools, sources, methods, base, sub, f"t5:{dataset}:{arch}"))
        results[dataset] = per_owner
    return results


# ------------------------------------------------------------------------------------------------ report


_METHOD_LABELS = {
    "flipad": "FLIPAD",
    "raw-pixels": "raw pixels",
    "dct": "DCT",
    "prnu": "PRNU",
    "latent-inversion": "latent inversion",
}


def _owner_table(summary: Mapping[str, Mapping[str, Mapping[str, float]]], caption: str) -> Table:
    """One owner's results: a row per method, ``acc / AUC`` per source, then the means."""
    rows = []
    for method, per_source in summary.items():
        row: dict[str, Any] = {"method": _METHOD_LABELS.get(method, method)}
        for source, m in per_source.items():
            if source != "mean":
                row[source] = f"{m['acc']:.3f} / {m['auc']:.3f}"
        row["mean acc"] = per_source["mean"]["acc"]
        row["mean AUC"] = per_source["mean"]["auc"]
        rows.append(row)
    return Table(rows, caption=caption, highlight={"mean acc": "max", "mean AUC": "max"})


def _report(
    cfg: FlipadExperimentConfig,
    results: Mapping[str, Any],
    raw1: Mapping[str, Any],
    flipad_cfg: FinalLayerInversionAttributorConfig,
) -> Report:
    size = _DATA_SIZES[cfg.data]
    report = Report(
        "FLIPAD: single-model attribution by final-layer inversion",
        subtitle=f"Small-scale reproduction of Laszkiewicz et al. (ICML 2024) on {cfg.data} {size}x{size}",
        meta={
            "data": cfg.data,
            "seed": cfg.seed,
            "run": "quick" if cfg.quick else "full",
            "GAN width": cfg.gan_width,
            "total time": f"{results['timings_s']['total']:.0f} s",
        },
    )
    head = results["headline"]
    items = {f"{_METHOD_LABELS[m]} acc / AUC": f"{v['acc']:.3f} / {v['auc']:.3f}" for m, v in head.items()}
    summary = Section("summary", "Summary", intro=_summary_text(cfg, head))
    summary.add(KeyValue(items, caption="Table 1 means over owners and sources (accuracy at 0.5% FNR / AUC)"))
    means_rows = []
    for table, per_method in results["table_means"].items():
        row: dict[str, Any] = {"table": table}
        row.update({_METHOD_LABELS[m]: f"{v['acc']:.3f} / {v['auc']:.3f}" for m, v in per_method.items()})
        means_rows.append(row)
    summary.add(
        Table(
            means_rows,
            caption="Mean accuracy at 0.5% FNR / mean AUC per table (over owners, sources, perturbations, datasets).",
            columns=["table", *[_METHOD_LABELS[m] for m in cfg.methods]],
        )
    )
    report.add(summary)

    if results["study"]:
        chosen = next((row["setting"] for row in results["study"] if row.get("chosen")), None)
        intro = _STUDY_TEXT + (f" **Chosen by mean validation AUC: {chosen}.**" if chosen else "")
        study = Section("study", "What it takes: validation study", intro=intro)
        study.add(
            Table(
                list(results["study"]),
                caption="Owner: the first architecture; validation sources only (held-out real training images, a GAN "
                "trained with a seed used nowhere else). The chosen setting is used for every table.",
                highlight={"mean AUC": "max", "mean acc": "max"},
            )
        )
        if results["width_study"]:
            study.add(
                Text(_WIDTH_TEXT.format(width=cfg.gan_width, ratio=4 * cfg.gan_width)),
                Table(
                    list(results["width_study"]),
                    caption="Validation split at other generator widths (owner and validation GAN retrained at that width).",
                ),
            )
        report.add(study)

    t1 = Section("table-1", "Table 1: other architectures and real data", intro=_TABLE1_TEXT)
    for arch, summary_ in results["table1"].items():
        t1.add(
            _owner_table(
                summary_, f"Owner {arch}: accuracy at the 0.5% FNR threshold / AUC per source, mean over resamples."
            )
        )
    arch0 = cfg.archs[0]
    curves = {}
    for method, scores in raw1[arch0].items():
        others = [s for s in scores if s not in ("threshold", "own") and "seed" not in s]
        neg = torch.cat([scores[s] for s in others])
        fpr, tpr, _ = roc_curve(scores["own"], neg)
        curves[_METHOD_LABELS[method]] = (fpr, tpr, roc_auc(scores["own"], neg))
    t1.add(
        Figure(
            roc_curves(curves, title=f"owner {arch0}: own vs all Table 1 sources"),
            caption="ROC curves (first resample).",
        )
    )
    if "flipad" in raw1[arch0]:
        s = raw1[arch0]["flipad"]
        hist = {"own": s["own"], **{k: v for k, v in s.items() if k not in ("threshold", "own")}}
        t1.add(
            Figure(
                score_histograms(hist, threshold=s["threshold"], xlabel="FLIPAD score (-Deep SAD distance)"),
                caption=f"FLIPAD scores of owner {arch0}'s test samples and of each source; dashed: 0.5% FNR threshold.",
            )
        )
    report.add(t1)

    if results["table2"]:
        t2 = Section("table-2", "Table 2: same architecture, other seeds", intro=_TABLE2_TEXT)
        for arch, summary_ in results["table2"].items():
            t2.add(_owner_table(summary_, f"Owner {arch} vs its architecture trained with other seeds (acc / AUC)."))
        report.add(t2)
    if results["table3"]:
        t3 = Section("table-3", "Table 3: perturbed data", intro=_TABLE3_TEXT.format(owner=arch0))
        rows = []
        for name, summary_ in results["table3"].items():
            for method, per_source in summary_.items():
                rows.append(
                    {
                        "perturbation": name,
                        "method": _METHOD_LABELS[method],
                        "mean acc": per_source["mean"]["acc"],
                        "mean AUC": per_source["mean"]["auc"],
                    }
                )
        t3.add(Table(rows, caption=f"Owner {arch0}; mean over real and the other architectures (one resample)."))
        report.add(t3)
    if results["table5"]:
        t5 = Section("table-5", "Table 5: tabular generators", intro=_TABLE5_TEXT.format(alpha=cfg.tabular_alpha))
        for dataset, per_owner in results["table5"].items():
            for arch, summary_ in per_owner.items():
                t5.add(_owner_table(summary_, f"{dataset}, owner {arch}: accuracy at 0.5% FNR / AUC."))
        report.add(t5)
    report.add(Section("table-4", "Table 4: Stable Diffusion (not run here)", intro=_TABLE4_TEXT))
    setup = Section("setup", "Set-up and reproduction")
    setup.add(
        Text(_setup_text(cfg, flipad_cfg)),
        KeyValue({k: f"{v:.0f} s" for k, v in results["timings_s"].items()}, caption="Wall time per phase"),
    )
    report.add(setup)
    return report


def _summary_text(cfg: FlipadExperimentConfig, head: Mapping[str, Mapping[str, float]]) -> str:
    if "flipad" not in head:
        return "FLIPAD was not among the methods run."
    flip = head["flipad"]
    others = {m: v for m, v in head.items() if m != "flipad"}
    best = max(others, key=lambda m: others[m]["auc"]) if others else None
    text = (
        f"Over the Table 1 owners and sources FLIPAD reaches a mean accuracy of **{flip['acc']:.3f}** at the "
        f"0.5% false-negative threshold and a mean AUC of **{flip['auc']:.3f}**."
    )
    if best is not None:
        text += (
            f" The strongest baseline by AUC is {_METHOD_LABELS[best]} ({others[best]['acc']:.3f} / "
            f"{others[best]['auc']:.3f})."
        )
    text += (
        " These are small models (16x16 digits or 28x28 MNIST, GANs trained for minutes on a CPU); the "
        "numbers are what this run measured, not the paper's."
    )
    return text


_STUDY_TEXT = (
    "Each setting is one FLIPAD configuration fitted on the owner's samples vs real training images and "
    "evaluated on **validation** sources that appear in no table. *clip* is the paper's target "
    "``atanh(clip(x, ±(1 - 1e-4)))``; *censor* treats pixels at the 8-bit ends of the range (codes 0 and "
    "255) as bounds rather than values: a saturated pixel only says that the pre-activation lies beyond "
    "``atanh`` of the value half a quantisation step inside the range. With ``tanh`` generators most "
    "background pixels of digits are saturated, and after the 8-bit round trip the clipped target "
    "(about ±4.95) is far from the generator's true pre-activation, which corrupts the inversion of the "
    "owner's own samples. Alpha is on the unnormalised objective (sum over pixels)."
)
_WIDTH_TEXT = (
    "The last layer of a width-w generator maps w x (H/2) x (W/2) activations to C x H x W pixels, so it is "
    "under-determined by 4 w / C. The tables use width {width} ({ratio}x for grey images). The rows below "
    "repeat the chosen FLIPAD setting and the raw-pixel baseline on the validation split with narrower and "
    "wider generators: the more unknowns per pixel, the less the recovered activations are pinned down by "
    "the image, and the closer FLIPAD gets to a linear re-parametrisation of the pixels."
)
_TABLE1_TEXT = (
    "Each architecture in turn is the owner. Every method is fitted on own samples (label +1) and real "
    "training images (label -1) only; the other generators are never seen in training (open world)."
)
_TABLE2_TEXT = (
    "The detectors of Table 1 against the owner's architecture trained on the same data with another "
    "seed: the hardest case, since architecture and objective are shared."
)
_TABLE3_TEXT = (
    "Every split (own training, held-out and test samples, real training images, every test source) is "
    "perturbed before the 8-bit round trip and the detectors are re-fitted on perturbed data, as in the "
    "paper's immunisation setting. Owner: {owner}."
)
_TABLE5_TEXT = (
    "MLP GANs on scikit-learn's bundled tables (features scaled to [-1, 1]); the final layer is a plain "
    "``nn.Linear`` with identity activation, alpha = {alpha}. Methods: FLIPAD, raw features (Deep SAD on the "
    "rows) and latent inversion."
)
_TABLE4_TEXT = (
    "Stable Diffusion's VAE decoder ends in ``decoder.conv_out`` (a 3x3 ``Conv2d``) with no output "
    "activation; ``FinalLayerInversionAttributor`` recognises a diffusers ``AutoencoderKL`` and inverts that "
    "layer (unit-tested on a randomly initialised small ``AutoencoderKL``, since no weights can be "
    "downloaded here). With the weights of a Stable Diffusion model:\n\n"
    "```python\n"
    "from diffusers import AutoencoderKL\n"
    "from genprov.attribution.model import FinalLayerInversionAttributor, FinalLayerInversionAttributorConfig\n"
    "vae = AutoencoderKL.from_pretrained('<model>', subfolder='vae').eval()\n"
    "cfg = FinalLayerInversionAttributorConfig(alpha=5e-4, pool_to=128, n_channels=64, batch_size=8)\n"
    "flipad = FinalLayerInversionAttributor(vae, cfg).fit(sd_images, negatives=real_images)  # [-1, 1]\n"
    "flipad.predict(other_images)\n"
    "```\n\n"
    "The anchor is the mean decoder activation over the encoded own images; ``pool_to=128`` max-pools the "
    "128x512x512 activations as in the paper."
)


def _setup_text(cfg: FlipadExperimentConfig, flipad_cfg: FinalLayerInversionAttributorConfig) -> str:
    quick = " --quick" if cfg.quick else ""
    root = f" --data-root {cfg.data_root}" if cfg.data_root else ""
    return (
        f"Command: `genprov reproduce flipad --data {cfg.data} --seed {cfg.seed}{quick}{root} --out DIR`. "
        f"GANs: DCGAN-style generator, width {cfg.gan_width}, latent {cfg.latent_dim}; {cfg.gan_steps} generator "
        f"steps ({cfg.wgan_steps} for WGAN-GP). Per owner: {cfg.n_train} own + {cfg.n_train} real training "
        f"samples, {cfg.n_holdout} held-out own samples for the threshold, {cfg.n_test} test samples per "
        f"source, {cfg.n_resamples} resample(s). FLIPAD used: alpha {flipad_cfg.alpha}, {flipad_cfg.max_iter} "
        f"FISTA iterations (tol {flipad_cfg.tol}), saturation '{flipad_cfg.saturation}', standardise "
        f"{flipad_cfg.standardize} (eps {flipad_cfg.std_eps}), Deep SAD widths {list(flipad_cfg.detector.widths)}, "
        f"{flipad_cfg.detector.n_epochs} epochs. Baselines use the same Deep SAD settings "
        f"({cfg.detector.n_epochs} epochs); latent inversion: 4 restarts x {cfg.latent_inversion_steps} Adam steps "
        f"on {cfg.latent_inversion_n_test} samples per source. All images pass an 8-bit PNG round trip."
    )


# --------------------------------------------------------------------------------------------- front ends


def reproduce_flipad(
    data: str = "digits",
    seed: int = 0,
    out: str | Path = "flipad-results",
    *,
    quick: bool = False,
    data_root: str | Path | None = None,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """Run the FLIPAD reproduction from plain arguments (a Python shortcut for notebooks and scripts).

    ``genprov reproduce flipad`` does not call this: it builds :class:`FlipadExperimentConfig` through the
    experiment registry and calls :func:`run_flipad`, which this wraps with the same dataset preset.

    Args:
        data: ``"digits"``, ``"mnist"`` or ``"fashion-mnist"``.
        seed: Seed of the whole run.
        out: Output folder (``results.json``, ``report.html``, ``models/``).
        quick: A few-minute smoke run instead of the full one (about 30 minutes on 2 cores).
        data_root: Folder holding MNIST / Fashion-MNIST files.
        show_progress: Progress bars.

    Returns:
        The results dict (also written to ``out/results.json``).
    """
    config = FlipadExperimentConfig.preset_for(
        data, seed=seed, quick=quick, data_root=str(data_root) if data_root is not None else None
    )
    return run_flipad(config, out, show_progress=show_progress)


def flipad_demo_section(
    owner: nn.Module,
    other: nn.Module,
    real: Tensor,
    *,
    n_fit: int = 300,
    n_test: int = 100,
    seed: int = 0,
    config: FinalLayerInversionAttributorConfig | None = None,
    save_to: Path | None = None,
) -> Section:
    """A report section for ``genprov demo``: "was this made by my generator?" with FLIPAD.

    Fits FLIPAD on ``owner``'s samples against real images, then scores held-out own samples, real
    images and samples of ``other`` (a generator FLIPAD never saw). Runs in seconds on small models.

    Args:
        owner: The owner's trained image generator (genprov GAN).
        other: Another trained generator of the same image size.
        real: (n, C, H, W) real images in [-1, 1] at the generators' size (at least ``n_fit + 20``).
        n_fit: Own samples and real images to fit on.
        n_test: Test samples per source.
        seed: Seed of samples and detector.
        config: FLIPAD settings (default: a fast one, 100 FISTA iterations, censored saturation).
        save_to: Folder to save the fitted detector to (for the service's workspace).

    Returns:
        A :class:`~genprov.report.Section` with headline metrics, a table and a score histogram.
    """
    cfg = config or FinalLayerInversionAttributorConfig(
        max_iter=100, saturation="censor", seed=seed, detector=DeepSADConfig(n_epochs=10, lr_milestones=(8,))
    )
    real_q = png_roundtrip(real)
    n_real_test = min(n_test, max(1, len(real_q) - n_fit))
    own = _own_pool(owner, n_fit + n_fit // 4 + n_test, seed, "demo-own")
    flipad = MODEL_ATTRIBUTORS.create("flipad", owner, config=cfg)
    assert isinstance(flipad, FeatureAttributor)
    flipad.fit_split(own[:n_fit], own[n_fit : n_fit + n_fit // 4], negatives=real_q[:n_fit])
    if save_to is not None:
        flipad.save_pretrained(save_to)
    test = {
        "own (held out)": own[-n_test:],
        "real (held out)": real_q[n_fit : n_fit + n_real_test],
        "other GAN": _own_pool(other, n_test, seed, "demo-other"),
    }
    scores = {name: flipad.score_samples(x) for name, x in test.items()}
    rows = []
    for name, s in scores.items():
        claimed = float((s >= flipad.threshold_).float().mean())
        row: dict[str, Any] = {"source": name, "claimed as own": claimed}
        if name != "own (held out)":
            m = _metrics(scores["own (held out)"], s, flipad.threshold_)
            row.update({"AUC vs own": m["auc"], "accuracy vs own": m["acc"]})
        rows.append(row)
    section = Section(
        "flipad",
        "Which model made this? (FLIPAD)",
        intro=(
            "FLIPAD (Laszkiewicz et al., ICML 2024) inverts the generator's last layer by a lasso and asks an "
            "anomaly detector (Deep SAD) whether the recovered activations look like the owner's. It was fitted "
            "on the owner's samples against real images only; the other GAN is unseen. The threshold keeps 99.5% "
            "of held-out own samples."
        ),
    )
    section.add(
        KeyValue(
            {r["source"]: r["claimed as own"] for r in rows},
            caption="Share of each source claimed as made by the owner's generator",
            float_format=".2f",
        ),
        Table(rows, caption="Claimed share at the 0.5% FNR threshold; AUC and balanced accuracy against own samples."),
        Figure(
            score_histograms(scores, threshold=flipad.threshold_, xlabel="FLIPAD score"),
            caption="Scores (higher = more likely the owner's); dashed line: threshold.",
        ),
    )
    return section


@DEMO_SECTIONS.register("flipad")
def _demo_section(ctx: DemoContext) -> Section:
    """The demo's FLIPAD section: the demo DCGAN is the owner, the demo LSGAN the unseen other generator."""
    detector = ctx.out / "flipad-detector"
    section = flipad_demo_section(
        ctx.dcgan().model, ctx.model("lsgan").model, ctx.train.images, seed=ctx.config.seed, save_to=detector
    )
    ctx.servable.append(
        {"name": "demo-dcgan", "kind": "flipad", "detector": str(detector), "generator": str(ctx.models_dir / "dcgan")}
    )
    return section
