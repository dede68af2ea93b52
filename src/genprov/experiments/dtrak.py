"""``genprov reproduce dtrak``: D-TRAK vs TRAK on a small DDPM, with LDS and counterfactual evaluation.

Reproduces the key experiment of Zheng et al., "Intriguing properties of data attribution on diffusion
models" (ICLR 2024): attribution with the D-TRAK output (``squared-l2-norm``) against TRAK (``loss``),
measured by the linear datamodeling score (LDS, sec. 4 / app. B of the paper; Park et al., 2023, def. 2.3)
and by counterfactual retraining (sec. 5.2).

What a run does (every model, store and measurement is cached under ``--out``; a re-run reuses them):

1. Trains the DDPM on ``n_train`` images and draws generated queries from it; real queries are held-out
   test images.
2. Featurizes the training set with TRAK and D-TRAK (:class:`~genprov.attribution.data.TRAKAttributor`,
   stores under ``stores/``) and computes the scores of every query over the lambda grid
   ``{1, 2, 5} x 10^j`` (relative to ``trace(Phi^T Phi) / k``), plus TracIn / Grad-Dot, relative and
   renormalized influence, raw-pixel similarity (``-||x_q - x_i||^2``) and classifier-feature cosine.
3. LDS benchmark: trains ``n_seeds`` models on each of ``n_subsets`` random halves of the training set
   (the same recipe and step count as the full model), and measures every query's diffusion loss
   averaged over ``eval_draws`` fixed (timestep, noise) pairs. The model output is ``-loss`` (positive
   influence lowers the loss), averaged over seeds; LDS is the Spearman correlation across subsets of the
   subset-summed scores with it, per query.
4. lambda is chosen on a validation half of each query set (real, generated) and every reported LDS is
   measured on the other half, with bootstrap 95% intervals over queries and over subsets, paired
   differences, and the noise ceiling (the LDS one training seed's losses reach against another's).
5. Counterfactual: for a few generated images, remove each method's top-k positive influencers (or k
   random images), retrain with the same recipe, regenerate from the same noise, and measure the pixel
   l2 distance and classifier-feature cosine to the original.

Writes ``results.json``, ``report.html`` and ``lds_benchmark.npz`` (masks, losses and queries, readable by
``genprov trak lds``). The benchmark, the LDS evaluation and the counterfactual measures are library code in
:mod:`genprov.eval.lds`; this module trains the models they need. The demo section :func:`trak_section`
lives here too.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure as MplFigure
from torch import Tensor

from genprov.attribution.data.trak import DAMPING_GRID, TRAKAttributor, TRAKConfig
from genprov.config import is_int, require
from genprov.data import ImageDataset, load_dataset, random_subsets
from genprov.eval.lds import (
    EvalDraws,
    LDSBenchmark,
    counterfactual_metrics,
    counterfactual_removals,
    evaluate_lds,
    lds_vs_benchmark_size,
    measure_losses,
    pixel_similarity,
)
from genprov.eval.stats import MeanCI
from genprov.exceptions import DataError
from genprov.experiments.base import EXPERIMENTS, ExperimentConfig, start_run
from genprov.experiments.quickstart import DEMO_SECTIONS, DemoContext, grid_image
from genprov.models.checkpoints import load_checkpoint
from genprov.models.classifiers import ClassifierConfig, CNNClassifier
from genprov.models.diffusion import DDPM, DDPM_PRESETS, DDPMConfig, ddpm_sample
from genprov.models.training import default_train_config, train_classifier, train_ddpm
from genprov.report import Figure, Gallery, KeyValue, Report, Section, Table, Text
from genprov.report.figures import metric_bars
from genprov.utils.io import atomic_save_npz, atomic_write_json
from genprov.utils.progress import progress
from genprov.utils.seeding import derive_seed, numpy_rng

__all__ = ["BENCHMARK_FILE", "DTRAKExperimentConfig", "run_dtrak", "trak_section"]

log = logging.getLogger(__name__)

BENCHMARK_FILE = "lds_benchmark.npz"
#: The demo's TRAK training images (``{"images": (n, C, H, W) float32}``), for the service's workspace.
_DEMO_TRAIN = "trak-store/train-images.npz"
_LOSS_CACHE = "query_losses.npz"
#: Per-dataset field values (CPU-sized: MNIST and CIFAR-2 are resized to 16x16).
_DATA_PRESETS: dict[str, dict[str, Any]] = {
    "digits": {"image_size": 8, "preset": "small"},
    "mnist": {"image_size": 16, "preset": "base"},
    "fashion-mnist": {"image_size": 16, "preset": "base"},
    "cifar2": {"image_size": 16, "preset": "base"},
}
_QUICK: dict[str, Any] = {
    "preset": "tiny",
    "n_train": 100,
    "train_steps": 150,
    "n_subsets": 8,
    "n_seeds": 2,
    "n_real_queries": 16,
    "n_gen_queries": 16,
    "eval_draws": 16,
    "proj_dim": 256,
    "counterfactual_queries": 2,
    "counterfactual_k": 10,
    "classifier_steps": 100,
    "n_boot": 200,
    "gallery_queries": 2,
    "n_workers": 1,
    "study": [],
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DTRAKExperimentConfig(ExperimentConfig):
    """What ``run_dtrak`` trains and measures.

    The constructor's defaults are the full digits run (about 30 minutes on 2 cores); :meth:`from_dict`
    (what ``genprov reproduce`` uses) starts from the dataset's preset and, with ``quick``, the
    few-minute sizes, then applies the keys given.

    Attributes:
        data: ``"digits"`` (built in), ``"mnist"``, ``"fashion-mnist"`` or ``"cifar2"`` (need ``data_root``).
        data_root: Folder of the dataset files (``None``: ``$GENPROV_DATA``).
        seed: Seed of the data choice, every model, the noise and the projections.
        quick: A few-minute smoke run.
        image_size: Side the images are resized to.
        preset: DDPM size (``DDPMConfig.preset``).
        n_train: Training images (a seeded random subset of the train split).
        train_steps: Training steps of every DDPM (full model, subset models, counterfactual retrains).
        batch_size: Training batch size.
        n_subsets: LDS subsets (random halves).
        subset_fraction: Fraction of the training set in each subset (alpha).
        n_seeds: Training seeds per subset; outputs are averaged over them, and two or more give the
            noise ceiling.
        n_real_queries: Held-out real query images (half choose lambda, half are reported).
        n_gen_queries: Generated query images (same split).
        eval_draws: (timestep, noise) pairs per query for the measured loss.
        n_timesteps: K, timesteps per example in the features.
        proj_dim: Projection dimension k.
        projector: Projector (``sjlt`` default; ``gaussian`` for TRAK's reference).
        relative_dampings: lambda grid, relative to ``trace(Phi^T Phi) / k``.
        counterfactual_queries: Generated images tested by retraining.
        counterfactual_k: Training images removed per counterfactual retrain.
        classifier_steps: Steps of the classifier whose features give the feature similarity baseline
            and the counterfactual cosine.
        gallery_queries: Queries shown with their top influencers.
        study: Attribution variants measured on the same benchmark, each a dict of ``TRAKConfig`` changes
            (e.g. ``{"proj_dim": 4096}``); TRAK and D-TRAK are run with each.
        n_workers: Processes training the subset models (each single-threaded).
        n_boot: Bootstrap resamples of the confidence intervals.
    """

    data: str = "digits"
    data_root: str | None = None
    image_size: int = 8
    preset: str = "small"
    n_train: int = 400
    train_steps: int = 600
    batch_size: int = 32
    n_subsets: int = 32
    subset_fraction: float = 0.5
    n_seeds: int = 2
    n_real_queries: int = 64
    n_gen_queries: int = 64
    eval_draws: int = 48
    n_timesteps: int = 10
    proj_dim: int = 1024
    projector: str = "sjlt"
    relative_dampings: tuple[float, ...] = DAMPING_GRID
    counterfactual_queries: int = 4
    counterfactual_k: int = 40
    classifier_steps: int = 400
    gallery_queries: int = 4
    study: tuple[dict[str, Any], ...] = (
        {"proj_dim": 4096},
        {"n_timesteps": 50},
        {"n_timesteps": 100},
        {"projector": "gaussian"},
    )
    n_workers: int = 2
    n_boot: int = 1000

    def validate(self) -> None:
        super().validate()
        require(self.data in _DATA_PRESETS, "data", f"one of {', '.join(_DATA_PRESETS)}", self.data)
        require(self.preset in DDPM_PRESETS, "preset", f"one of {', '.join(DDPM_PRESETS)}", self.preset)
        for name in (
            "image_size",
            "n_train",
            "train_steps",
            "batch_size",
            "n_subsets",
            "n_seeds",
            "eval_draws",
            "n_timesteps",
            "proj_dim",
            "counterfactual_k",
            "classifier_steps",
            "n_workers",
            "n_boot",
        ):
            value = getattr(self, name)
            require(is_int(value) and value >= 1, name, "a positive integer", value)
        for name in ("n_real_queries", "n_gen_queries", "counterfactual_queries", "gallery_queries"):
            value = getattr(self, name)
            require(is_int(value) and value >= 0, name, "a non-negative integer", value)
        require(self.n_real_queries + self.n_gen_queries >= 4, "n_real_queries + n_gen_queries", "at least 4", 0)
        require(self.n_subsets >= 3, "n_subsets", "at least 3 (LDS ranks subsets)", self.n_subsets)
        require(0 < self.subset_fraction < 1, "subset_fraction", "a number in (0, 1)", self.subset_fraction)
        require(self.counterfactual_k < self.n_train, "counterfactual_k", f"less than n_train={self.n_train}", 0)
        require(self.counterfactual_queries <= self.n_gen_queries, "counterfactual_queries", "<= n_gen_queries", 0)
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
        """The dataset's preset (:data:`_DATA_PRESETS`) and, with ``quick``, the few-minute sizes."""
        return {**_DATA_PRESETS.get(data, {}), **(_QUICK if quick else {})}


# ------------------------------------------------------------------------------------------ measuring


def _feature_cosine(features: Callable[[Tensor], Tensor], queries: Tensor, train: Tensor) -> np.ndarray:
    with torch.no_grad():
        fq = torch.nn.functional.normalize(features(queries).flatten(1).double(), dim=1)
        ft = torch.nn.functional.normalize(features(train).flatten(1).double(), dim=1)
    return (fq @ ft.T).numpy()


# ------------------------------------------------------------------------------------------ training jobs


@dataclasses.dataclass
class _Job:
    """One DDPM to train (cached in ``out_dir``), then measure and/or sample."""

    out_dir: str
    model_config: dict[str, Any]
    train_config: dict[str, Any]
    images: Tensor
    draws: EvalDraws | None = None
    sample_indices: tuple[int, ...] = ()
    sample_seed: int = 0


def _run_job(job: _Job) -> dict[str, Any]:
    """Train (or reuse) the job's model; return its query losses and requested samples."""
    torch.set_num_threads(1)
    from genprov.models.train_config import TrainConfig

    model_cfg = DDPMConfig.from_dict(job.model_config)
    result = train_ddpm(
        model_cfg, TrainConfig.from_dict(job.train_config), job.images, job.out_dir, show_progress=False
    )
    model = result.model
    assert isinstance(model, DDPM)
    out: dict[str, Any] = {"losses": None, "samples": None}
    if job.draws is not None:
        cache = Path(job.out_dir) / _LOSS_CACHE
        key = job.draws.fingerprint()
        if cache.is_file():
            with np.load(cache, allow_pickle=False) as npz:
                if str(npz["key"]) == key:
                    out["losses"] = npz["losses"]
        if out["losses"] is None:
            losses = measure_losses(model, job.draws)
            atomic_save_npz(cache, {"losses": losses, "key": np.array(key)})
            out["losses"] = losses
    if job.sample_indices:
        out["samples"] = torch.cat(
            [ddpm_sample(model, 1, seed=job.sample_seed, start=i, show_progress=False) for i in job.sample_indices]
        )
    return out


def _run_jobs(jobs: Sequence[_Job], n_workers: int, desc: str, show: bool | None) -> list[dict[str, Any]]:
    """Run jobs in order (``n_workers`` spawned single-threaded processes when > 1)."""
    if n_workers <= 1 or len(jobs) <= 1:
        return [_run_job(job) for job in progress(jobs, desc=desc, total=len(jobs), show=show)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=context) as pool:
        return list(progress(pool.map(_run_job, jobs), desc=desc, total=len(jobs), show=show))


# ------------------------------------------------------------------------------------------ LDS


# ------------------------------------------------------------------------------------------ the run


def _train_recipe(cfg: DTRAKExperimentConfig, channels: int, seed: int) -> tuple[DDPMConfig, dict[str, Any]]:
    model_cfg = DDPMConfig.preset(cfg.preset, image_size=cfg.image_size, channels=channels)
    train_cfg = default_train_config(
        model_cfg, n_steps=cfg.train_steps, batch_size=cfg.batch_size, seed=seed, checkpoint_every=0
    )
    return model_cfg, train_cfg.to_dict()


def _load(cfg: DTRAKExperimentConfig) -> tuple[ImageDataset, ImageDataset]:
    root = cfg.data_root
    train = load_dataset(cfg.data, split="train", data_root=root, resize=cfg.image_size, n=cfg.n_train, seed=cfg.seed)
    test_all = load_dataset(cfg.data, split="test", data_root=root, resize=cfg.image_size)
    n_real = min(cfg.n_real_queries, len(test_all))
    test = test_all.subset(np.sort(numpy_rng(cfg.seed, "real-queries").choice(len(test_all), n_real, replace=False)))
    return train, test


def _seed_of(cfg: DTRAKExperimentConfig, j: int) -> int:
    return int(derive_seed(cfg.seed, "lds-seed", j) % (2**31))


@EXPERIMENTS.register("dtrak", config=DTRAKExperimentConfig)
def run_dtrak(
    config: DTRAKExperimentConfig,
    out_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """Run the D-TRAK reproduction; write ``results.json``, ``report.html`` and ``lds_benchmark.npz``.

    Args:
        config: What to run (see :class:`DTRAKExperimentConfig`).
        out_dir: Output folder (models, stores and measurements are cached there).
        data_root: Folder of dataset files (overrides ``config.data_root``).
        show_progress: Progress bars.

    Returns:
        The ``results.json`` content.
    """
    cfg, out = start_run(config, out_dir, data_root)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 2)
        clock = now

    train, test = _load(cfg)
    channels = train.n_channels
    model_cfg, train_cfg = _train_recipe(cfg, channels, cfg.seed)
    _run_job(_Job(str(out / "models" / "main"), model_cfg.to_dict(), train_cfg, train.images))  # trains or reuses
    model = load_checkpoint(out / "models" / "main").model
    assert isinstance(model, DDPM)
    n_gen = cfg.n_gen_queries
    generated = ddpm_sample(model, n_gen, seed=cfg.seed, show_progress=show_progress) if n_gen else train.images[:0]
    lap("train model + sample")

    # queries: real (held-out) then generated; half of each kind chooses lambda
    queries = torch.cat([test.images, generated])
    kinds = np.array(["real"] * len(test) + ["generated"] * n_gen)
    val = LDSBenchmark.empty(queries.numpy(), kinds).with_validation_split(cfg.seed).val

    # classifier (feature-similarity baseline, counterfactual cosine)
    classifier = _classifier(cfg, train, out, show_progress)
    lap("classifier")

    # features and scores
    base = TRAKConfig(n_timesteps=cfg.n_timesteps, proj_dim=cfg.proj_dim, projector=cfg.projector, seed=cfg.seed)
    method_scores: dict[str, np.ndarray] = {}
    feature_seconds = {}
    for label, output_function in (("TRAK", "loss"), ("D-TRAK", "squared-l2-norm")):
        t0 = time.perf_counter()
        attributor = TRAKAttributor(model, config=base.replace(output_function=output_function))
        attributor.fit(train, store=out / "stores" / _store_name(attributor.config), show_progress=show_progress)
        phi_q = attributor.featurize_queries(queries)
        feature_seconds[label] = round(time.perf_counter() - t0, 2)
        dampings = [attributor.absolute_damping(r) for r in cfg.relative_dampings]
        method_scores[label] = attributor.scores_sweep(phi_q, dampings)
        assert attributor.train_features_ is not None
        if output_function == "loss":
            for name, scoring in (
                ("TracIn / Grad-Dot", "grad-dot"),
                ("Relative IF", "relative-if"),
                ("Renormalized IF", "renormalized-if"),
            ):
                variant = TRAKAttributor(model, config=attributor.config.replace(scoring=scoring))
                variant.fit_features(attributor.train_features_)
                method_scores[name] = variant.scores_sweep(phi_q, dampings if scoring.endswith("if") else [0.0])
    method_scores["pixel similarity"] = pixel_similarity(queries, train.images)[None]
    method_scores["feature similarity"] = _feature_cosine(classifier.features, queries, train.images)[None]
    lap("features + scores")

    # LDS benchmark
    draws = EvalDraws.make(queries, cfg.eval_draws, model_cfg.num_train_timesteps, cfg.seed)
    subsets = random_subsets(len(train), cfg.n_subsets, cfg.subset_fraction, seed=cfg.seed)
    masks = np.zeros((cfg.n_subsets, len(train)), dtype=bool)
    for s, rows in enumerate(subsets):
        masks[s, rows] = True
    jobs = [
        _Job(
            str(out / "models" / f"subset-{s:03d}-seed-{j}"),
            model_cfg.to_dict(),
            _train_recipe(cfg, channels, _seed_of(cfg, j))[1],
            train.images[torch.as_tensor(subsets[s])],
            draws=draws,
        )
        for s in range(cfg.n_subsets)
        for j in range(cfg.n_seeds)
    ]
    measured = _run_jobs(jobs, cfg.n_workers, "LDS models", show_progress)
    losses = np.stack([m["losses"] for m in measured]).reshape(cfg.n_subsets, cfg.n_seeds, len(queries))
    bench = LDSBenchmark(masks, losses, queries.numpy(), kinds, val)
    bench.save(out / BENCHMARK_FILE)
    lap("LDS models")
    lds = evaluate_lds(method_scores, bench, dampings=cfg.relative_dampings, seed=cfg.seed, n_boot=cfg.n_boot)
    size_curve = lds_vs_benchmark_size(method_scores, bench, dampings=cfg.relative_dampings, seed=cfg.seed)
    lap("LDS evaluation")
    study = _variant_study(
        cfg, model, base, train, queries, bench, method_scores["pixel similarity"], out, show_progress
    )
    lap("variant study")

    # counterfactual
    chosen = {m: _best_scores(method_scores[m], lds, m) for m in ("TRAK", "D-TRAK")}
    counterfactual = _counterfactual(
        cfg, train, generated, chosen, kinds, model_cfg, train_cfg, classifier, out, show_progress
    )
    lap("counterfactual")

    results = {
        "experiment": "dtrak",
        "config": cfg.to_dict(),
        "data": {
            "name": train.name,
            "n_train": len(train),
            "image_size": cfg.image_size,
            "fingerprint": train.fingerprint(),
        },
        "model": {"preset": cfg.preset, "n_params": int(sum(p.numel() for p in model.parameters()))},
        "lds": lds,
        "counterfactual": {k: v for k, v in counterfactual.items() if k != "images"},
        "featurization_seconds": feature_seconds,
        "claim": _claim(lds),
        "lds_vs_benchmark_size": size_curve,
        "variant_study": study,
        "timings_seconds": timings,
        "benchmark": str(out / BENCHMARK_FILE),
    }
    report = _report(cfg, results, queries, kinds, val, train, method_scores, lds, counterfactual)
    report.add(_study_section(size_curve, study), before="influencers")
    report.write(out, filename="report.html")
    atomic_write_json(out / "results.json", results)
    return results


def _store_name(config: TRAKConfig) -> str:
    """Folder name of a feature store: output function, projector, k and K (one store per feature setting)."""
    k = "all" if config.projector == "identity" else str(config.proj_dim)
    steps = f"t{len(config.timesteps)}" if config.timesteps else f"K{config.n_timesteps}-{config.schedule}"
    return f"{config.output_function}-{config.projector}-k{k}-{steps}"


def _variant_study(
    cfg: DTRAKExperimentConfig,
    model: DDPM,
    base: TRAKConfig,
    train: ImageDataset,
    queries: Tensor,
    bench: LDSBenchmark,
    pixel: np.ndarray,
    out: Path,
    show: bool | None,
) -> list[dict[str, Any]]:
    """TRAK and D-TRAK with each ``cfg.study`` change, on the same benchmark (lambda chosen on validation),
    with paired differences against each other and against pixel similarity."""
    rows = []
    for change in cfg.study:
        setting = ", ".join(f"{k}={v}" for k, v in change.items())
        scores: dict[str, np.ndarray] = {"pixel similarity": pixel}
        seconds = {}
        for label, output_function in (("TRAK", "loss"), ("D-TRAK", "squared-l2-norm")):
            config = base.replace(output_function=output_function, **change)
            attributor = TRAKAttributor(model, config=config)
            start = time.perf_counter()
            attributor.fit(train, store=out / "stores" / _store_name(config), show_progress=show)
            phi_q = attributor.featurize_queries(queries)
            seconds[label] = round(time.perf_counter() - start, 1)
            dampings = [attributor.absolute_damping(r) for r in cfg.relative_dampings]
            scores[label] = attributor.scores_sweep(phi_q, dampings)
        ev = evaluate_lds(scores, bench, dampings=cfg.relative_dampings, seed=cfg.seed, n_boot=cfg.n_boot)
        for label in ("TRAK", "D-TRAK"):
            row: dict[str, Any] = {"setting": setting, "method": label, "featurize seconds": seconds[label]}
            for kind, per_method in ev["methods"].items():
                row[f"LDS {kind}"] = per_method[label]["lds"]
            rows.append(row)
        for kind, pairs in ev["paired"].items():
            for name, ci in pairs.items():
                rows.append({"setting": setting, "method": f"{name} ({kind})", "paired difference": ci})
    return rows


def _study_section(size_curve: Sequence[Mapping[str, Any]], study: Sequence[Mapping[str, Any]]) -> Section:
    section = Section(
        "scale",
        "How the comparison depends on the benchmark and the features",
        intro="Left out of the headline table: the same LDS with fewer subsets or one training seed per subset "
        "(ground truth noise), and TRAK / D-TRAK with other feature settings (k, K, projector) on the same "
        "benchmark.",
    )
    section.add(Table(list(size_curve), caption="Mean test LDS vs benchmark size (subsets x seeds averaged)."))
    if study:
        rows = [{k: (_fmt(v) if isinstance(v, Mapping) else v) for k, v in row.items()} for row in study]
        section.add(Table(rows, caption="Feature variants (lambda chosen on validation queries)."))
    return section


def _classifier(cfg: DTRAKExperimentConfig, train: ImageDataset, out: Path, show: bool | None) -> CNNClassifier:
    if train.labels is None:
        raise DataError(f"{train.name} has no labels; the feature-similarity baseline needs a classifier.")
    clf_cfg = ClassifierConfig(
        image_size=cfg.image_size, channels=train.n_channels, n_classes=int(train.labels.max()) + 1
    )
    clf_train = default_train_config(clf_cfg, n_steps=cfg.classifier_steps, seed=cfg.seed, checkpoint_every=0)
    result = train_classifier(clf_cfg, clf_train, train, out / "models" / "classifier", show_progress=show)
    assert isinstance(result.model, CNNClassifier)
    return result.model.eval()


def _best_scores(sweep: np.ndarray, lds: Mapping[str, Any], method: str) -> np.ndarray:
    """The method's scores at the lambda chosen on the generated validation queries (else the real ones)."""
    for kind in ("generated", "real"):
        row = lds["methods"].get(kind, {}).get(method)
        if row is not None:
            return np.asarray(sweep[int(row["lambda_index"])])
    return np.asarray(sweep[0])


def _counterfactual(
    cfg: DTRAKExperimentConfig,
    train: ImageDataset,
    generated: Tensor,
    chosen: Mapping[str, np.ndarray],
    kinds: np.ndarray,
    model_cfg: DDPMConfig,
    train_cfg: dict[str, Any],
    classifier: CNNClassifier,
    out: Path,
    show: bool | None,
) -> dict[str, Any]:
    """Remove the top-k influencers (or k random images) of a few generated images, retrain, regenerate."""
    n_cf = cfg.counterfactual_queries
    if n_cf == 0:
        return {"n_queries": 0}
    gen_cols = np.flatnonzero(kinds == "generated")
    picked = list(range(n_cf))  # generated image g is query column gen_cols[g]
    removals = counterfactual_removals(
        chosen, gen_cols[picked].tolist(), k=cfg.counterfactual_k, n_train=len(train), seed=cfg.seed
    )
    jobs, keys = [], []
    for method, per_query in removals.items():
        for g, removed in zip(picked, per_query, strict=True):
            keep = np.setdiff1d(np.arange(len(train)), removed)
            slug = method.lower().replace(" ", "-")
            jobs.append(
                _Job(
                    str(out / "models" / f"counterfactual-{slug}-{g:03d}"),
                    model_cfg.to_dict(),
                    train_cfg,
                    train.images[torch.as_tensor(keep)],
                    sample_indices=(g,),
                    sample_seed=cfg.seed,
                )
            )
            keys.append((method, g))
    done = _run_jobs(jobs, cfg.n_workers, "counterfactual models", show)
    regenerated = {key: d["samples"][0] for key, d in zip(keys, done, strict=True)}
    originals = generated[picked]
    metrics: dict[str, Any] = {
        "n_queries": n_cf,
        "k_removed": cfg.counterfactual_k,
        "methods": counterfactual_metrics(
            originals,
            {method: torch.stack([regenerated[(method, g)] for g in picked]) for method in removals},
            classifier.features,
            seed=cfg.seed,
            n_boot=cfg.n_boot,
        ),
    }
    shown = ["TRAK", "D-TRAK", "random"]
    metrics["images"] = torch.stack(
        [img for g in picked for img in (generated[g], *(regenerated[(m, g)] for m in shown))]
    )
    metrics["columns"] = ["original", *[f"without top-{cfg.counterfactual_k} {m}" for m in shown[:2]], "without random"]
    return metrics


def _claim(lds: Mapping[str, Any]) -> dict[str, Any]:
    """Whether D-TRAK beats TRAK and pixel similarity (paired 95% intervals above 0), per query kind."""
    out = {}
    for kind, pairs in lds["paired"].items():
        out[kind] = {name: bool(ci["low"] > 0) for name, ci in pairs.items()}
    return out


# ------------------------------------------------------------------------------------------ report


def _fmt(ci: Mapping[str, Any] | None) -> str:
    return "n/a" if ci is None else MeanCI(**ci).format(".3f")


def _lds_rows(lds: Mapping[str, Any]) -> list[dict[str, Any]]:
    kinds = list(lds["methods"])
    methods = list(next(iter(lds["methods"].values()))) if kinds else []
    rows = []
    for method in methods:
        row: dict[str, Any] = {"method": method}
        for kind in kinds:
            r = lds["methods"][kind][method]
            row[f"LDS {kind} [95% CI queries]"] = _fmt(r["lds"])
            lo, hi = r["ci_over_subsets"]
            row[f"{kind}: CI over subsets"] = f"[{lo:.3f}, {hi:.3f}]"
            if r["relative_damping"] is not None:
                row[f"{kind}: lambda / (tr/k)"] = f"{r['relative_damping']:g}"
        rows.append(row)
    rows.append(
        {
            "method": "noise ceiling (seed vs seed)",
            **{f"LDS {k} [95% CI queries]": _fmt(lds["noise_ceiling"][k]) for k in kinds},
        }
    )
    return rows


def _sweep_figure(lds: Mapping[str, Any]) -> MplFigure:
    fig = MplFigure(figsize=(4.2 * max(1, len(lds["sweep"])), 4.2))
    kinds = list(lds["sweep"])
    axes = fig.subplots(1, max(1, len(kinds)), squeeze=False)[0]
    for ax, kind in zip(axes, kinds, strict=False):
        for i, (method, curve) in enumerate(lds["sweep"][kind].items()):
            color = f"C{i}"
            ax.plot(curve["relative_damping"], curve["val"], color=color, label=f"{method} (val)")
            ax.plot(curve["relative_damping"], curve["test"], color=color, linestyle="--", label=f"{method} (test)")
        ax.set_xscale("log")
        ax.set_xlabel("lambda / (trace(Phi^T Phi) / k)")
        ax.set_ylabel("mean LDS")
        ax.set_title(f"{kind} queries", loc="left", fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.18, 1, 1))
    return fig


def _report(
    cfg: DTRAKExperimentConfig,
    results: Mapping[str, Any],
    queries: Tensor,
    kinds: np.ndarray,
    val: np.ndarray,
    train: ImageDataset,
    method_scores: Mapping[str, np.ndarray],
    lds: Mapping[str, Any],
    counterfactual: Mapping[str, Any],
) -> Report:
    report = Report(
        "D-TRAK vs TRAK: data attribution for a diffusion model",
        subtitle="Zheng et al., ICLR 2024, at small scale on a CPU",
        meta={"data": cfg.data, "seed": cfg.seed, "run": "quick" if cfg.quick else "full", "n_train": len(train)},
    )
    headline: dict[str, Any] = {}
    for kind in lds["methods"]:
        for method in ("TRAK", "D-TRAK", "pixel similarity"):
            if method in lds["methods"][kind]:
                headline[f"LDS {method} ({kind})"] = lds["methods"][kind][method]["lds"]["mean"]
        if lds["noise_ceiling"].get(kind):
            headline[f"noise ceiling ({kind})"] = lds["noise_ceiling"][kind]["mean"]
    summary = Section(
        "summary",
        "Summary",
        intro=f"{len(train)} {cfg.data} images ({cfg.image_size}x{cfg.image_size}), DDPM preset `{cfg.preset}` "
        f"({results['model']['n_params']:,} parameters), K={cfg.n_timesteps} timesteps, k={cfg.proj_dim} "
        f"({cfg.projector}), {cfg.n_subsets} subsets x {cfg.n_seeds} seeds. lambda is chosen on half of each "
        "query set; every LDS shown is on the other half.",
    )
    if cfg.quick:
        summary.add(Text("Quick mode: tiny models and few subsets; the numbers are a smoke test.", tone="note"))
    summary.add(KeyValue(headline))
    report.add(summary)
    lds_section = Section(
        "lds",
        "Linear datamodeling score",
        intro="Spearman correlation, across retrained subset models, between the summed scores of a subset and "
        "the model output (minus the query's diffusion loss), per query; mean over test queries with 95% "
        "bootstrap intervals over queries and over subsets. The noise ceiling is the LDS that one training "
        "seed's measured losses reach against another seed's.",
    )
    lds_section.add(Table(_lds_rows(lds), caption="LDS (test queries, lambda chosen on validation queries)."))
    paired_rows = [
        {"query kind": kind, "difference": name, "mean [95% CI]": _fmt(ci)}
        for kind, pairs in lds["paired"].items()
        for name, ci in pairs.items()
    ]
    if paired_rows:
        lds_section.add(
            Table(paired_rows, caption="Paired differences of per-query LDS (CI above 0: the first is better).")
        )
    for kind in lds["methods"]:
        bars = {m: MeanCI(**r["lds"]) for m, r in lds["methods"][kind].items()}
        lds_section.add(
            Figure(metric_bars(bars, ylabel="LDS", title=f"{kind} queries"), caption=f"LDS, {kind} queries.")
        )
    lds_section.add(Figure(_sweep_figure(lds), caption="lambda sweeps: validation (solid) and test (dashed) LDS."))
    report.add(lds_section)
    report.add(_gallery_section(cfg, queries, kinds, val, train, method_scores, lds))
    if counterfactual.get("n_queries"):
        report.add(_counterfactual_section(counterfactual))
    setup = Section("setup", "Setup and timings")
    setup.add(
        Text(
            f"Command: `genprov reproduce dtrak --data {cfg.data} --seed {cfg.seed}{' --quick' if cfg.quick else ''} "
            "--out DIR`. The LDS benchmark (masks, losses, queries) is in `lds_benchmark.npz`; score any method "
            "against it with `genprov trak lds`."
        ),
        KeyValue({k: v for k, v in results["timings_seconds"].items()}, caption="seconds per stage"),
        Table([{"field": k, "value": str(v)} for k, v in cfg.to_dict().items()], caption="configuration"),
    )
    report.add(setup)
    return report


def _gallery_section(
    cfg: DTRAKExperimentConfig,
    queries: Tensor,
    kinds: np.ndarray,
    val: np.ndarray,
    train: ImageDataset,
    method_scores: Mapping[str, np.ndarray],
    lds: Mapping[str, Any],
) -> Section:
    section = Section(
        "influencers",
        "Top influencers",
        intro="For generated test queries: the 5 most positive and 3 most negative training images under TRAK and "
        "D-TRAK (at the lambda chosen on validation queries), with their scores.",
    )
    cols = np.flatnonzero((kinds == "generated") & ~val)[: cfg.gallery_queries]
    if len(cols) == 0:
        cols = np.flatnonzero(~val)[: cfg.gallery_queries]
    for col in cols:
        for method in ("TRAK", "D-TRAK"):
            scores = _best_scores(method_scores[method], lds, method)[col]
            section.add(
                Gallery.influence(
                    queries[col],
                    train.images,
                    scores,
                    caption=f"{method}, {kinds[col]} query #{col}",
                    query_caption=f"query #{col}",
                )
            )
    return section


def _counterfactual_section(cf: Mapping[str, Any]) -> Section:
    rows = [
        {
            "removed": method,
            "pixel l2 [95% CI]": _fmt(m["pixel_l2"]),
            "feature cosine [95% CI]": _fmt(m["feature_cosine"]),
        }
        for method, m in cf["methods"].items()
    ]
    columns = " | ".join(cf["columns"])
    return Section(
        "counterfactual",
        "Counterfactual retraining",
        intro=f"Remove the top-{cf['k_removed']} positive influencers of a generated image (or as many random "
        "images), retrain with the same recipe and regenerate from the same noise. A larger change (pixel l2 up, "
        "classifier-feature cosine down) than random removal means the attribution found images the generation "
        "depends on.",
    ).add(
        Table(rows, caption="Change of the regenerated image (mean over queries)."),
        grid_image(cf["images"], f"Each row: {columns}.", nrow=len(cf["columns"]), width_px=360),
    )


# ------------------------------------------------------------------------------------------ demo


#: Training images the demo section attributes to (a prefix of the demo's training split).
DEMO_TRAIN_IMAGES = 300
DEMO_QUERIES = 3


@DEMO_SECTIONS.register("trak")
def trak_section(ctx: DemoContext) -> Section:
    """Demo: for a few generated digits, the top training influencers under TRAK and D-TRAK."""
    t0 = time.perf_counter()
    ddpm = ctx.ddpm().model
    assert isinstance(ddpm, DDPM)
    size = ctx.image_size("ddpm")
    train = ctx.dataset("train", size).images[:DEMO_TRAIN_IMAGES]
    queries = ctx.samples("ddpm")[:DEMO_QUERIES]
    seed = ctx.config.seed
    section = Section(
        "trak",
        "Which training images shaped a generated digit?",
        intro=f"Data attribution with TRAK (gradient of the denoising loss) and D-TRAK (gradient of the squared norm "
        f"of the predicted noise; Zheng et al., ICLR 2024) for the DDPM, against the first {len(train)} training "
        "images: the most positive (proponents) and most negative (opponents) influencers of each sample, beside "
        "the nearest training images in pixels. `genprov reproduce dtrak` measures which method predicts "
        "retraining better (LDS).",
    )
    results: dict[str, Any] = {"n_train": len(train), "queries": len(queries)}
    scores_by_method = {}
    for label, output_function in (("TRAK", "loss"), ("D-TRAK", "squared-l2-norm")):
        config = TRAKConfig(output_function=output_function, proj_dim=512, seed=seed)
        attributor = TRAKAttributor(ddpm, config=config)
        store = ctx.out / "trak-store" / output_function
        attributor.fit(train, store=store, show_progress=ctx.show_progress)
        scores_by_method[label] = attributor.scores(queries)
        assert attributor.store_ is not None
        attributor.store_.update_info(
            model=str(ctx.models_dir / "ddpm"), trak_config=config.to_dict(), image_size=size, channels=train.shape[1]
        )
        ctx.servable.append(
            {"name": f"demo-{label.lower()}", "kind": "trak", "store": str(store), "train": str(ctx.out / _DEMO_TRAIN)}
        )
    atomic_save_npz(ctx.out / _DEMO_TRAIN, {"images": train.numpy()})
    scores_by_method["nearest pixels"] = torch.from_numpy(pixel_similarity(queries, train))
    for q in range(len(queries)):
        for label, scores in scores_by_method.items():
            k_negative = 0 if label == "nearest pixels" else 3
            section.add(
                Gallery.influence(
                    queries[q],
                    train,
                    scores[q],
                    k_negative=k_negative,
                    caption=f"{label}, sample {q}",
                    query_caption=f"sample {q}",
                )
            )
        results[f"sample {q}"] = {
            label: torch.argsort(s[q], descending=True, stable=True)[:5].tolist()
            for label, s in scores_by_method.items()
        }
    overlap = [
        len(set(results[f"sample {q}"]["TRAK"]) & set(results[f"sample {q}"]["D-TRAK"])) / 5
        for q in range(len(queries))
    ]
    results["top5_overlap_trak_dtrak"] = float(np.mean(overlap)) if overlap else None
    results["seconds"] = round(time.perf_counter() - t0, 2)
    ctx.results["trak"] = results
    section.add(grid_image(queries, "The samples explained.", nrow=len(queries), width_px=240))
    return section
