"""The runner of ``genprov reproduce flipad`` (registered in :data:`~genprov.experiments.base.EXPERIMENTS`):
trains the GANs, runs the validation study and Tables 1, 2, 3 and 5, and returns a :class:`FlipadResult`."""

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
    FeatureAttributor,
    FinalLayerInversionAttributorConfig,
    LatentInversionAttributorConfig,
    ModelAttributor,
    PRNUAttributorConfig,
    RawPixelAttributorConfig,
)
from genprov.config import Config
from genprov.data import load_tabular, load_train_test, perturb, png_roundtrip
from genprov.eval import accuracy_at_threshold, roc_auc
from genprov.exceptions import ConfigError
from genprov.experiments.base import EXPERIMENTS, start_run
from genprov.experiments.flipad.config import PAPER_BLUR_STD_64, FlipadExperimentConfig
from genprov.experiments.flipad.report import METHOD_LABELS, build_report
from genprov.experiments.flipad.results import (
    AucAcc,
    FlipadResult,
    MethodSummary,
    Resamples,
    SourceMetrics,
    StudyRow,
    Summary,
    WidthRow,
)
from genprov.models.gans import GANConfig, Generator
from genprov.models.sampling import sample
from genprov.models.tabular import TabularGANConfig
from genprov.models.training import default_train_config, train_gan, train_tabular_gan
from genprov.utils.progress import progress
from genprov.utils.seeding import derive_seed, numpy_rng

__all__ = [
    "RealSplit",
    "SamplePools",
    "auc_acc",
    "draw_sample_pools",
    "evaluate_methods",
    "fourier_gaussian_blur",
    "method_configs",
    "own_pool",
    "perturb_images",
    "real_split",
    "reproduce_flipad",
    "run_flipad",
    "summarise",
]

logger = logging.getLogger(__name__)


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


def auc_acc(own: Tensor, other: Tensor, threshold: float) -> dict[str, float]:
    """AUC of own vs other scores and the balanced accuracy at ``threshold``."""
    return {"auc": roc_auc(own, other), "acc": accuracy_at_threshold(own, other, threshold)}


def _subset(rng: np.random.Generator, n_pool: int, n: int) -> np.ndarray:
    return np.sort(rng.permutation(n_pool)[: min(n, n_pool)])


def evaluate_methods(
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
                m = auc_acc(own_scores, scores, threshold)
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


def summarise(result: Mapping[str, Any]) -> dict[str, MethodSummary]:
    """Per method: mean and standard deviation over resamples per source, and the mean over sources."""
    summary: dict[str, MethodSummary] = {}
    for method, res in result.items():
        rows = {
            source: SourceMetrics(
                auc=_mean(m["auc"]), acc=_mean(m["acc"]), auc_sd=float(np.std(m["auc"])), acc_sd=float(np.std(m["acc"]))
            )
            for source, m in res["per_source"].items()
        }
        mean = AucAcc(auc=_mean([v.auc for v in rows.values()]), acc=_mean([v.acc for v in rows.values()]))
        summary[method] = MethodSummary(per_source=rows, mean=mean)
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
    # GANs trained without the held-out validation reals get their own folders (the earlier ones keep theirs)
    data_tag = "" if cfg.val_reals == "gan-train" else f"-n{len(images)}"
    folder = models / f"{arch}-w{width}-s{train_seed}-{steps}{data_tag}"
    return train_gan(model_cfg, train_cfg, images, folder, show_progress=show).model.eval()


def own_pool(generator: nn.Module, n: int, seed: int, key: str) -> Tensor:
    """``n`` seeded samples of ``generator`` after the 8-bit PNG round trip."""
    return png_roundtrip(sample(generator, n, seed=derive_seed(seed, "samples", key), show_progress=False))


@dataclasses.dataclass(frozen=True)
class RealSplit:
    """Indices into the loaded train split.

    Attributes:
        gan: The images every GAN is trained on.
        neg: The real negatives every method is fitted on (GAN training images, as in the original).
        val: The validation study's real images.
    """

    gan: np.ndarray
    neg: np.ndarray
    val: np.ndarray


def real_split(cfg: FlipadExperimentConfig, n_images: int) -> RealSplit:
    """Split ``n_images`` train-split images by ``cfg.val_reals``.

    ``"held-out"``: ``n_test`` images are held out of the GANs' training for the validation study (so it
    tests against reals no GAN saw, as Table 1 does with the test split); the rest train the GANs and are
    the negatives pool. ``"gan-train"`` (the earlier protocol): the GANs train on all images, which are cut
    into negatives (about 75%) and validation reals.

    Raises:
        ConfigError: Too few images for ``n_train`` negatives and the held-out validation reals.
    """
    if cfg.val_reals == "gan-train":
        order = numpy_rng(cfg.seed, "real-split").permutation(n_images)
        n_neg = min(n_images - 50, max(cfg.n_train, round(0.75 * n_images)))
        return RealSplit(gan=np.arange(n_images), neg=order[:n_neg], val=order[n_neg:])
    if n_images - cfg.n_test < cfg.n_train:
        raise ConfigError(
            f"val_reals='held-out' holds n_test={cfg.n_test} of the {n_images} training images out of the GANs' "
            f"training, leaving fewer than n_train={cfg.n_train} real negatives; lower n_test or n_train "
            "(--set), or use --set val_reals=gan-train."
        )
    held = numpy_rng(cfg.seed, "real-val-split").permutation(n_images)
    gan = np.sort(held[cfg.n_test :])
    return RealSplit(gan=gan, neg=gan[numpy_rng(cfg.seed, "real-split").permutation(len(gan))], val=held[: cfg.n_test])


@dataclasses.dataclass(frozen=True)
class SamplePools:
    """Generated samples of a run, each drawn under its own seed key.

    Attributes:
        own: Per owner (``"arch@seed"``), the pool Tables 1-3 split into fit, threshold and test samples.
        study_own: The first owner's pool for the validation study, disjoint from ``own`` (other latents),
            so no sample the study tests on is a Table 1 test sample.
        sources: Per trained GAN, the samples it contributes as another source.
    """

    own: dict[str, Tensor]
    study_own: Tensor
    sources: dict[str, Tensor]


def draw_sample_pools(
    cfg: FlipadExperimentConfig, gens: Mapping[str, nn.Module], owners: Sequence[str], study_owner: str
) -> SamplePools:
    """Sample every pool of a run: ``n_train + n_holdout + n_test`` per owner (and for the study's owner
    again, under the ``study-own`` key), ``1.2 n_test`` per GAN as a source."""
    n_pool = cfg.n_train + cfg.n_holdout + cfg.n_test
    n_src = max(cfg.n_test, round(1.2 * cfg.n_test))
    return SamplePools(
        own={name: own_pool(gens[name], n_pool, cfg.seed, f"own:{name}") for name in owners},
        study_own=own_pool(gens[study_owner], n_pool, cfg.seed, f"study-own:{study_owner}"),
        sources={name: own_pool(g, n_src, cfg.seed, f"src:{name}") for name, g in gens.items()},
    )


def fourier_gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of (n, C, H, W) images by its exact frequency response ``exp(-sigma^2 |w|^2 / 2)``.

    Works for any ``sigma``, also below half a pixel where a sampled kernel degenerates to the identity (its
    side taps vanish); the image is extended by mirroring (half-sample symmetric, as a DCT) so the borders
    do not wrap around.
    """
    if sigma <= 0:
        return x
    h, w = x.shape[-2:]
    ext = torch.cat([x, x.flip(-1)], -1)
    ext = torch.cat([ext, ext.flip(-2)], -2)
    wy = 2 * math.pi * torch.fft.fftfreq(2 * h, dtype=torch.float64)
    wx = 2 * math.pi * torch.fft.rfftfreq(2 * w, dtype=torch.float64)
    response = torch.exp(-(sigma**2) * (wy[:, None] ** 2 + wx[None, :] ** 2) / 2)
    out = torch.fft.irfft2(torch.fft.rfft2(ext.to(torch.float64)) * response, s=(2 * h, 2 * w))
    return out[..., :h, :w].to(x.dtype)


def perturb_images(x: Tensor, name: str, *, seed: int) -> Tensor:
    """A Table 3 perturbation: ``genprov.data.perturb``'s, or ``"blur-paper"`` (the original's blur strength
    relative to the image size: std ``PAPER_BLUR_STD_64 * side / 64`` pixels)."""
    if name == "blur-paper":
        return fourier_gaussian_blur(x, PAPER_BLUR_STD_64 * x.shape[-1] / 64).clamp(-1, 1)
    return perturb(x, name, seed=seed)


# ------------------------------------------------------------------------------------------------- the run


def method_configs(cfg: FlipadExperimentConfig, flipad: FinalLayerInversionAttributorConfig) -> dict[str, Config]:
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
) -> FlipadResult:
    """Run the experiment and write ``results.json`` and ``report.html`` into ``out_dir``.

    Registered as the ``"flipad"`` experiment (``genprov reproduce flipad``).

    Args:
        config: What to run (see :meth:`FlipadExperimentConfig.preset`).
        out_dir: Output folder; trained models are cached in ``out_dir/models``.
        show_progress: Progress bars (default: on for a terminal).
        data_root: Folder holding MNIST / Fashion-MNIST (overrides ``config.data_root``).

    Returns:
        The typed results (``to_dict()`` is ``results.json``).
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
    train_set, test_set = load_train_test(
        cfg.data, data_root=cfg.data_root, resize=cfg.side, n_train=cfg.n_gan_train, seed=cfg.seed
    )
    split = real_split(cfg, len(train_set.images))
    real_train = train_set.images[torch.from_numpy(split.gan)]
    real_neg = png_roundtrip(train_set.images[torch.from_numpy(split.neg)])
    real_val = png_roundtrip(train_set.images[torch.from_numpy(split.val)])
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

    main = {a: f"{a}@{cfg.seed}" for a in cfg.archs}
    owner0 = main[cfg.archs[0]]
    sample_pools = draw_sample_pools(cfg, gens, list(main.values()), owner0)
    own_pools, src_pools = sample_pools.own, sample_pools.sources
    t = lap("sample", t)

    # ---------------------------------------------------------------- validation study
    flipad_cfg = cfg.flipad.replace(detector=cfg.detector)
    study_rows: list[StudyRow] = []
    best_label: str | None = None
    if cfg.study and "flipad" in cfg.methods:
        val_key = f"{val_arch}@{cfg.seed + 1000}"
        pools = {
            "own": sample_pools.study_own,
            "neg": real_neg,
            "real (val)": real_val,
            f"{val_arch} seed {cfg.seed + 1000} (val)": src_pools[val_key],
        }
        val_sources = [s for s in pools if s not in ("own", "neg")]
        candidates = [(entry["label"], _apply_grid_entry(flipad_cfg, entry)) for entry in cfg.study_grid]
        base_configs = method_configs(cfg, flipad_cfg)
        reference = summarise(
            evaluate_methods(
                gens[owner0], pools, val_sources, ["raw-pixels"], base_configs, cfg, "study", n_resamples=1
            )
        )
        study_rows.append(_study_row("raw pixels (reference)", reference["raw-pixels"], val_sources))
        best_auc = -1.0
        for label, candidate in progress(candidates, desc="study", show=show_progress):
            candidate_summary = summarise(
                evaluate_methods(
                    gens[owner0], pools, val_sources, ["flipad"], {"flipad": candidate}, cfg, "study", n_resamples=1
                )
            )
            row = _study_row(label, candidate_summary["flipad"], val_sources)
            study_rows.append(row)
            if row.mean_auc > best_auc + 1e-9:
                best_auc, flipad_cfg, best_label = row.mean_auc, candidate, label
        study_rows = [dataclasses.replace(row, chosen=row.setting == best_label) for row in study_rows]
    t = lap("study", t)
    width_rows = _width_study(cfg, flipad_cfg, real_train, real_neg, real_val, val_arch, models, show_progress)
    t = lap("width_study", t)
    configs = method_configs(cfg, flipad_cfg)

    # ---------------------------------------------------------------- Tables 1 and 2
    table1: dict[str, Summary] = {}
    table1_per_resample: dict[str, dict[str, dict[str, Resamples]]] = {}
    table2: dict[str, Summary] = {}
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
        res = evaluate_methods(
            gens[owner], pools, t1_sources + t2_sources, cfg.methods, configs, cfg, f"t1:{arch}", keep_scores=True
        )
        table1[arch] = summarise(
            {m: {"per_source": {s: v["per_source"][s] for s in t1_sources}} for m, v in res.items()}
        )
        table1_per_resample[arch] = {
            m: {s: Resamples(auc=tuple(r["auc"]), acc=tuple(r["acc"])) for s, r in v["per_source"].items()}
            for m, v in res.items()
        }
        raw1[arch] = {m: v["scores"] for m, v in res.items()}
        if t2_sources:
            table2[arch] = summarise(
                {m: {"per_source": {s: v["per_source"][s] for s in t2_sources}} for m, v in res.items()}
            )
    t = lap("tables_1_2", t)

    # ---------------------------------------------------------------- Table 3
    table3: dict[str, Summary] = {}
    arch0 = cfg.archs[0]
    t3_methods = [m for m in cfg.methods if m != "latent-inversion"]
    t1_sources0 = ["real"] + [a for a in cfg.archs if a != arch0]
    for name in progress(cfg.perturbations, desc="table 3", show=show_progress):
        seed = derive_seed(cfg.seed, "perturb", name)

        def pert(x: Tensor, key: str, name: str = name, seed: int = seed) -> Tensor:
            return png_roundtrip(perturb_images(x, name, seed=derive_seed(seed, key)))

        pools = {
            "own": pert(own_pools[main[arch0]], "own"),
            "neg": pert(real_neg, "neg"),
            "real": pert(real_test, "real"),
        }
        pools.update({a: pert(src_pools[main[a]], a) for a in t1_sources0[1:]})
        res = evaluate_methods(
            gens[main[arch0]], pools, t1_sources0, t3_methods, configs, cfg, f"t3:{name}", n_resamples=1
        )
        table3[name] = summarise(res)
    t = lap("table_3", t)

    # ---------------------------------------------------------------- Table 5 (tabular)
    table5 = _run_tabular(cfg, models, show_progress)
    t = lap("table_5", t)

    # ---------------------------------------------------------------- outputs
    timings["total"] = round(time.perf_counter() - t_start, 1)
    result = FlipadResult(
        experiment="flipad",
        config=cfg.to_dict(),
        flipad_config_used=flipad_cfg.to_dict(),
        study=tuple(study_rows),
        width_study=tuple(width_rows),
        table1=table1,
        table1_per_resample=table1_per_resample,
        table2=table2,
        table3=table3,
        table5=table5,
        headline=_headline(table1, cfg.methods),
        table_means=_table_means(table1, table2, table3, table5),
        timings_s=timings,
    )
    out.mkdir(parents=True, exist_ok=True)
    result.write_json(out / "results.json")
    build_report(cfg, result, raw1, flipad_cfg).write(out, filename="report.html")
    return result


def _study_row(label: str, summary: MethodSummary, sources: Sequence[str]) -> StudyRow:
    return StudyRow(
        setting=label,
        per_source={s: AucAcc(auc=summary.per_source[s].auc, acc=summary.per_source[s].acc) for s in sources},
        mean_auc=summary.mean.auc,
        mean_acc=summary.mean.acc,
    )


def _width_study(
    cfg: FlipadExperimentConfig,
    flipad_cfg: FinalLayerInversionAttributorConfig,
    real_train: Tensor,
    real_neg: Tensor,
    real_val: Tensor,
    val_arch: str,
    models: Path,
    show: bool | None,
) -> list[WidthRow]:
    """FLIPAD (chosen setting) vs raw pixels on the validation split at other generator widths."""
    rows: list[WidthRow] = []
    if not cfg.study or "flipad" not in cfg.methods:
        return rows
    configs = method_configs(cfg, flipad_cfg)
    n_pool = cfg.n_train + cfg.n_holdout + cfg.n_test
    for width in progress(cfg.study_widths, desc="width study", show=show):
        owner = _train_image_gan(cfg, cfg.archs[0], cfg.seed, real_train, models, show, width=width)
        val_gan = _train_image_gan(cfg, val_arch, cfg.seed + 1000, real_train, models, show, width=width)
        val_name = f"{val_arch} seed {cfg.seed + 1000} (val)"
        pools = {
            "own": own_pool(owner, n_pool, cfg.seed, f"width-own:{width}"),
            "neg": real_neg,
            "real (val)": real_val,
            val_name: own_pool(val_gan, max(cfg.n_test, round(1.2 * cfg.n_test)), cfg.seed, f"width-val:{width}"),
        }
        sources = ["real (val)", val_name]
        res = summarise(
            evaluate_methods(
                owner, pools, sources, ["flipad", "raw-pixels"], configs, cfg, f"width:{width}", n_resamples=1
            )
        )
        channels = owner.config.channels if isinstance(owner, Generator) else 1
        for method in ("flipad", "raw-pixels"):
            row = _study_row(METHOD_LABELS[method], res[method], sources)
            rows.append(WidthRow(width=width, unknowns_per_output=4 * width // channels, row=row))
    return rows


def _headline(table1: Mapping[str, Summary], methods: Sequence[str]) -> dict[str, AucAcc]:
    """Mean over owners (and their sources) of AUC and accuracy per method (Table 1)."""
    return {
        method: AucAcc(
            auc=_mean([v[method].mean.auc for v in table1.values()]),
            acc=_mean([v[method].mean.acc for v in table1.values()]),
        )
        for method in methods
    }


def _table_means(
    table1: Mapping[str, Summary],
    table2: Mapping[str, Summary],
    table3: Mapping[str, Summary],
    table5: Mapping[str, Mapping[str, Summary]],
) -> dict[str, dict[str, dict[str, float]]]:
    """``{table: {method: {"acc", "auc"}}}``: each table's mean over owners (perturbations, datasets)."""
    groups: dict[str, list[Summary]] = {
        "Table 1": list(table1.values()),
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
                "acc": _mean([s[m].mean.acc for s in summaries]),
                "auc": _mean([s[m].mean.auc for s in summaries]),
            }
            for m in methods
        }
    return out


# ----------------------------------------------------------------------------------------------- tabular


def _run_tabular(cfg: FlipadExperimentConfig, models: Path, show: bool | None) -> dict[str, dict[str, Summary]]:
    """Table 5: each tabular GAN as the owner vs real test rows and the other tabular GANs."""
    methods = [m for m in cfg.methods if m in ("flipad", "raw-pixels", "latent-inversion")]
    results: dict[str, dict[str, Summary]] = {}
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
        base = method_configs(sub, cfg.flipad.replace(alpha=cfg.tabular_alpha, saturation="clip", pool_to=None))
        base["flipad"] = base["flipad"].replace(detector=cfg.detector.replace(widths=(32, 16), rep_dim=16))
        for name in ("raw-pixels",):
            base[name] = base[name].replace(detector=cfg.detector.replace(widths=(32, 16), rep_dim=16))
        per_owner: dict[str, Summary] = {}
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
            per_owner[arch] = summarise(evaluate_methods(g, pools, sources, methods, base, sub, f"t5:{dataset}:{arch}"))
        results[dataset] = per_owner
    return results


# ------------------------------------------------------------------------------------------------ report


def reproduce_flipad(
    data: str = "digits",
    seed: int = 0,
    out: str | Path = "flipad-results",
    *,
    quick: bool = False,
    data_root: str | Path | None = None,
    show_progress: bool | None = None,
) -> FlipadResult:
    """Run the FLIPAD reproduction from plain arguments (a Python shortcut for notebooks and scripts).

    ``genprov reproduce flipad`` does not call this: it builds :class:`FlipadExperimentConfig` through the
    experiment registry and calls :func:`run_flipad`, which this wraps with the same dataset preset.

    Args:
        data: ``"digits"``, ``"mnist"`` or ``"fashion-mnist"``.
        seed: Seed of the whole run.
        out: Output folder (``results.json``, ``report.html``, ``models/``).
        quick: A few-minute smoke run instead of the full one (about 35 minutes on 2 cores).
        data_root: Folder holding MNIST / Fashion-MNIST files.
        show_progress: Progress bars.

    Returns:
        The typed results (``to_dict()`` is ``out/results.json``).
    """
    config = FlipadExperimentConfig.preset_for(
        data, seed=seed, quick=quick, data_root=str(data_root) if data_root is not None else None
    )
    return run_flipad(config, out, show_progress=show_progress)
