"""The runner of ``genprov reproduce dtrak`` (registered in :data:`~genprov.experiments.base.EXPERIMENTS`):
trains the DDPM and the counterfactual retrains, builds the LDS benchmark with the library's
:func:`~genprov.eval.lds_benchmark.build_lds_benchmark` (the one ``genprov trak lds-benchmark`` runs), scores every
method and returns a :class:`DTRAKResult`."""

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
from torch import Tensor

from genprov.attribution.data.trak import TRAKAttributor, TRAKConfig, unrelated_feature_cosine
from genprov.data import ConditionedExamples, ImageDataset, load_train_test
from genprov.eval.lds import (
    LDSBenchmark,
    counterfactual_metrics,
    counterfactual_removals,
    evaluate_lds,
    lds_vs_benchmark_size,
    pixel_similarity,
)
from genprov.eval.lds_benchmark import (
    BENCHMARK_FILE,
    LOG_POINTS,
    LDSBenchmarkConfig,
    LDSPlan,
    build_lds_benchmark,
)
from genprov.eval.stats import MeanCI
from genprov.exceptions import DataError
from genprov.experiments.base import EXPERIMENTS, Laps, start_run
from genprov.experiments.dtrak.config import DTRAKExperimentConfig, train_config_values
from genprov.experiments.dtrak.report import build_report
from genprov.experiments.dtrak.results import (
    BenchmarkSizeRow,
    ChosenSetting,
    CounterfactualMetrics,
    CounterfactualResult,
    DataInfo,
    DTRAKResult,
    LDSResult,
    ModelInfo,
    TrainingCurve,
    VariantLDSRow,
    VariantPairedRow,
)
from genprov.models.checkpoints import load_checkpoint
from genprov.models.classifiers import ClassifierConfig, CNNClassifier
from genprov.models.diffusion import DDPM, DDPMConfig, ddpm_sample
from genprov.models.train_config import TrainConfig
from genprov.models.training import default_train_config, train_classifier, train_ddpm
from genprov.storage.shards import Backend, InProcessBackend, ProcessBackend
from genprov.utils.progress import progress
from genprov.utils.seeding import numpy_rng

__all__ = [
    "BENCHMARK_FILE",
    "METHODS",
    "FittedScores",
    "claim",
    "featurize_and_score",
    "run_dtrak",
    "store_name",
    "variant_study",
]

log = logging.getLogger(__name__)

#: The two methods compared, with their output functions.
METHODS = (("TRAK", "loss"), ("D-TRAK", "squared-l2-norm"))
#: The recipe of the earlier genprov runs, whose caches (``models/``, ``stores/``) are reused where they lie.
_EARLIER_TAG = "genprov-v1-ema-s600-b32"
#: Training state is saved every this many steps, so a killed run resumes its models mid-training.
_CHECKPOINT_EVERY = 500
#: The loss has plateaued when the mean of its last tenth of the log is within this fraction of the tenth before.
PLATEAU_TOLERANCE = 0.02


# ------------------------------------------------------------------------------------------ measuring


def _feature_cosine(features: Callable[[Tensor], Tensor], queries: Tensor, train: Tensor) -> np.ndarray:
    with torch.no_grad():
        fq = torch.nn.functional.normalize(features(queries).flatten(1).double(), dim=1)
        ft = torch.nn.functional.normalize(features(train).flatten(1).double(), dim=1)
    return (fq @ ft.T).numpy()


# ------------------------------------------------------------------------------------------ training jobs


@dataclasses.dataclass
class _Job:
    """One DDPM to train (cached in ``out_dir``), then sample."""

    out_dir: str
    model_config: dict[str, Any]
    train_config: dict[str, Any]
    images: Tensor
    sample_indices: tuple[int, ...] = ()
    sample_seed: int = 0


def _run_job(job: _Job) -> dict[str, Any]:
    """Train (or reuse) the job's model; return its training log and requested samples."""
    torch.set_num_threads(1)
    model_cfg = DDPMConfig.from_dict(job.model_config)
    result = train_ddpm(
        model_cfg, TrainConfig.from_dict(job.train_config), job.images, job.out_dir, show_progress=False
    )
    model = result.model
    assert isinstance(model, DDPM)
    out: dict[str, Any] = {"samples": None, "log": result.log}
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


def _backend(n_workers: int) -> Backend:
    """Where the LDS models train: here with one worker, else in ``n_workers`` spawned processes."""
    return InProcessBackend() if n_workers <= 1 else ProcessBackend(n_workers)


# ------------------------------------------------------------------------------------------ the run


def _train_recipe(
    cfg: DTRAKExperimentConfig, channels: int, seed: int, n_images: int
) -> tuple[DDPMConfig, dict[str, Any]]:
    """The DDPM and training config of a model on ``n_images`` images (same epochs for every model)."""
    model_cfg = DDPMConfig.preset(cfg.preset, image_size=cfg.image_size, channels=channels)
    values = train_config_values(cfg, n_images, seed)
    steps = values["n_steps"]
    train_cfg = TrainConfig(**values, checkpoint_every=_CHECKPOINT_EVERY, log_every=max(1, steps // LOG_POINTS))
    return model_cfg, train_cfg.to_dict()


def lds_benchmark_config(cfg: DTRAKExperimentConfig, recipe: TrainConfig) -> LDSBenchmarkConfig:
    """The LDS benchmark of a run's config: its subsets, seeds, epochs (or steps), draws and seed, every model
    trained with ``recipe``."""
    return LDSBenchmarkConfig(
        n_subsets=cfg.n_subsets,
        n_seeds=cfg.n_seeds,
        subset_fraction=cfg.subset_fraction,
        train_epochs=cfg.train_epochs,
        train_steps=cfg.train_steps,
        eval_draws=cfg.eval_draws,
        seed=cfg.seed,
        training=recipe,
    )


def _lds_benchmark(
    cfg: DTRAKExperimentConfig,
    train: ImageDataset,
    queries: Tensor,
    kinds: np.ndarray,
    models: Path,
    stores: Path,
    show: bool | None,
) -> LDSBenchmark:
    """The run's LDS benchmark, built by the library (:func:`~genprov.eval.lds_benchmark.build_lds_benchmark`):
    ``n_seeds`` models on each of ``n_subsets`` random subsets with the run's recipe and epochs, trained and cached
    in ``models/subset-SSS-seed-J`` (:func:`~genprov.eval.lds_benchmark.model_name`), their losses in a store of
    ``stores`` named after the plan (so runs of other settings in the same ``--out`` keep theirs)."""
    model_cfg, recipe = _train_recipe(cfg, train.n_channels, cfg.seed, len(train))
    config = lds_benchmark_config(cfg, TrainConfig.from_dict(recipe))
    plan = LDSPlan.make(config, model_cfg, train.images, queries, kinds=kinds)
    return build_lds_benchmark(
        plan, stores / f"lds-losses-{plan.fingerprint()}", _backend(cfg.n_workers), train_dir=models, show_progress=show
    )


def _recipe_tag(cfg: DTRAKExperimentConfig) -> str:
    """Folder of the models and stores of one training recipe, so that runs of another recipe in the same
    ``--out`` keep their caches instead of clashing with them."""
    length = f"s{cfg.train_steps}" if cfg.train_steps else f"e{cfg.train_epochs}"
    tag = f"{cfg.train_recipe}-{cfg.featurize_weights}-{length}-b{cfg.batch_size}"
    return "" if tag == _EARLIER_TAG else tag  # the earlier run's models and stores lay directly in models/, stores/


def _loss_curve(log: Sequence[Mapping[str, float]]) -> TrainingCurve:
    """The main model's loss curve and whether it reached a plateau (:data:`PLATEAU_TOLERANCE`)."""
    steps = tuple(int(e["step"]) for e in log)
    losses = tuple(float(e["loss"]) for e in log)
    tail = max(1, len(losses) // 10)
    last, before = losses[-tail:], losses[-2 * tail : -tail]
    change = (float(np.mean(before)) - float(np.mean(last))) / float(np.mean(before)) if before else float("nan")
    return TrainingCurve(
        steps=steps,
        loss=losses,
        last_tenth_drop=change,
        plateau=bool(abs(change) <= PLATEAU_TOLERANCE),
    )


def _load(cfg: DTRAKExperimentConfig) -> tuple[ImageDataset, ImageDataset]:
    root = cfg.data_root
    train, test_all = load_train_test(
        cfg.data, data_root=root, resize=cfg.image_size, n_train=cfg.n_train, seed=cfg.seed
    )
    n_real = min(cfg.n_real_queries, len(test_all))
    test = test_all.subset(np.sort(numpy_rng(cfg.seed, "real-queries").choice(len(test_all), n_real, replace=False)))
    return train, test


@EXPERIMENTS.register("dtrak", config=DTRAKExperimentConfig)
def run_dtrak(
    config: DTRAKExperimentConfig,
    out_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    show_progress: bool | None = None,
) -> DTRAKResult:
    """Run the D-TRAK reproduction; write ``results.json``, ``report.html`` and ``lds_benchmark.npz``.

    Registered as the ``"dtrak"`` experiment (``genprov reproduce dtrak``).

    Args:
        config: What to run (see :class:`DTRAKExperimentConfig`).
        out_dir: Output folder (models, stores and measurements are cached there).
        data_root: Folder of dataset files (overrides ``config.data_root``).
        show_progress: Progress bars.

    Returns:
        The typed results (``to_dict()`` is ``results.json``).
    """
    cfg, out = start_run(config, out_dir, data_root)
    lap = Laps()
    train, test = _load(cfg)
    channels = train.n_channels
    models, stores = out / "models" / _recipe_tag(cfg), out / "stores" / _recipe_tag(cfg)
    model_cfg, train_cfg = _train_recipe(cfg, channels, cfg.seed, len(train))
    main = _run_job(_Job(str(models / "main"), model_cfg.to_dict(), train_cfg, train.images))  # trains or reuses
    curve = _loss_curve(main["log"])
    model = load_checkpoint(models / "main").model
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
    feature_seconds, unrelated = {}, {}
    for label, output_function in METHODS:
        fitted = featurize_and_score(
            TRAKAttributor(model, config=base.replace(output_function=output_function)),
            train,
            queries,
            cfg.relative_dampings,
            stores,
            show_progress,
        )
        attributor, phi_q, dampings = fitted.attributor, fitted.query_features, fitted.dampings
        feature_seconds[label], unrelated[label] = fitted.seconds, fitted.unrelated_cosine
        method_scores[label] = fitted.scores
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

    # LDS benchmark (the validation split is the same: half of each query kind drawn from the seed)
    bench = _lds_benchmark(cfg, train, queries, kinds, models, stores, show_progress)
    bench.save(out / BENCHMARK_FILE)
    lap("LDS models")
    lds = LDSResult.from_evaluation(
        evaluate_lds(method_scores, bench, dampings=cfg.relative_dampings, seed=cfg.seed, n_boot=cfg.n_boot)
    )
    size_curve = lds_vs_benchmark_size(method_scores, bench, dampings=cfg.relative_dampings, seed=cfg.seed)
    lap("LDS evaluation")
    study, study_lds = variant_study(
        lambda config: TRAKAttributor(model, config=config),
        base,
        cfg.study,
        train,
        queries,
        bench,
        method_scores["pixel similarity"],
        relative_dampings=cfg.relative_dampings,
        seed=cfg.seed,
        n_boot=cfg.n_boot,
        stores=stores,
        show=show_progress,
    )
    lap("variant study")

    # counterfactual
    chosen = {m: method_scores[m][lds.chosen_index(m)] for m in ("TRAK", "D-TRAK")}
    counterfactual, cf_images = _counterfactual(
        cfg, train, generated, chosen, kinds, val, model_cfg, models, classifier, show_progress
    )
    lap("counterfactual")

    result = DTRAKResult(
        experiment="dtrak",
        config=cfg.to_dict(),
        data=DataInfo(name=train.name, n_train=len(train), image_size=cfg.image_size, fingerprint=train.fingerprint()),
        model=ModelInfo(preset=cfg.preset, n_params=int(sum(p.numel() for p in model.parameters()))),
        lds=lds,
        counterfactual=counterfactual,
        featurization_seconds=feature_seconds,
        training=curve,
        unrelated_feature_cosine=unrelated,
        chosen_on_validation=_choose_on_validation({"base": lds, **study_lds}),
        claim=claim(lds),
        lds_vs_benchmark_size=tuple(
            BenchmarkSizeRow(
                subsets=row["subsets"],
                seeds=row["seeds"],
                mean_lds={k: v for k, v in row.items() if k not in ("subsets", "seeds")},
            )
            for row in size_curve
        ),
        variant_study=study,
        timings_seconds=lap.timings,
        benchmark=str(out / BENCHMARK_FILE),
    )
    result.write_json(out / "results.json")
    build_report(
        cfg,
        result,
        queries=queries,
        kinds=kinds,
        val=val,
        train=train,
        method_scores=method_scores,
        counterfactual_images=cf_images,
    ).write(out, filename="report.html")
    return result


def store_name(config: TRAKConfig) -> str:
    """Folder name of a feature store: output function, projector, k, K and noise (one store per feature
    setting)."""
    k = "all" if config.projector == "identity" else str(config.proj_dim)
    steps = f"t{len(config.timesteps)}" if config.timesteps else f"K{config.n_timesteps}-{config.schedule}"
    noise = "" if config.noise == "per-example" else f"-{config.noise}{config.noise_batch}"
    return f"{config.output_function}-{config.projector}-k{k}-{steps}{noise}"


@dataclasses.dataclass
class FittedScores:
    """One feature setting, featurized and scored over the lambda grid."""

    attributor: TRAKAttributor
    query_features: Tensor
    dampings: list[float]
    scores: np.ndarray
    seconds: float
    unrelated_cosine: float


def featurize_and_score(
    attributor: TRAKAttributor,
    train: ImageDataset | ConditionedExamples,
    queries: Tensor | ConditionedExamples,
    relative_dampings: Sequence[float],
    stores: Path,
    show: bool | None,
) -> FittedScores:
    """Featurize the training set (cached in the store ``stores / store_name(config)``) and the queries; score
    them at every relative lambda (shared by ``reproduce dtrak`` and ``reproduce dtrak-t2i``)."""
    start = time.perf_counter()
    attributor.fit(train, store=stores / store_name(attributor.config), show_progress=show)
    phi_q = attributor.featurize_queries(queries)
    seconds = round(time.perf_counter() - start, 2)
    assert attributor.train_features_ is not None
    dampings = [attributor.absolute_damping(r) for r in relative_dampings]
    return FittedScores(
        attributor=attributor,
        query_features=phi_q,
        dampings=dampings,
        scores=attributor.scores_sweep(phi_q, dampings),
        seconds=seconds,
        unrelated_cosine=unrelated_feature_cosine(attributor.train_features_),
    )


def variant_study(
    make_attributor: Callable[[TRAKConfig], TRAKAttributor],
    base: TRAKConfig,
    study: Sequence[Mapping[str, Any]],
    train: ImageDataset | ConditionedExamples,
    queries: Tensor | ConditionedExamples,
    bench: LDSBenchmark,
    pixel: np.ndarray,
    *,
    relative_dampings: Sequence[float],
    seed: int,
    n_boot: int,
    stores: Path,
    show: bool | None,
) -> tuple[tuple[VariantLDSRow | VariantPairedRow, ...], dict[str, LDSResult]]:
    """TRAK and D-TRAK (attributors from ``make_attributor``) with each ``study`` change of ``base``, on the
    same benchmark (lambda chosen on validation), with paired differences against each other and against pixel
    similarity.

    Returns the rows and each setting's evaluation (for :func:`_choose_on_validation`)."""
    rows: list[VariantLDSRow | VariantPairedRow] = []
    evaluations: dict[str, LDSResult] = {}
    for change in study:
        setting = ", ".join(f"{k}={v}" for k, v in change.items())
        scores: dict[str, np.ndarray] = {"pixel similarity": pixel}
        fitted = {
            label: featurize_and_score(
                make_attributor(base.replace(output_function=f, **change)),
                train,
                queries,
                relative_dampings,
                stores,
                show,
            )
            for label, f in METHODS
        }
        scores.update({label: f.scores for label, f in fitted.items()})
        ev = LDSResult.from_evaluation(
            evaluate_lds(scores, bench, dampings=relative_dampings, seed=seed, n_boot=n_boot)
        )
        evaluations[setting] = ev
        for label, f in fitted.items():
            rows.append(
                VariantLDSRow(
                    setting=setting,
                    method=label,
                    featurize_seconds=f.seconds,
                    lds={kind: per_method[label].lds for kind, per_method in ev.methods.items()},
                    val_lds={kind: per_method[label].val_lds for kind, per_method in ev.methods.items()},
                    unrelated_cosine=f.unrelated_cosine,
                )
            )
        for kind, pairs in ev.paired.items():
            for name, ci in pairs.items():
                rows.append(VariantPairedRow(setting=setting, method=f"{name} ({kind})", paired_difference=ci))
    return tuple(rows), evaluations


def _choose_on_validation(evaluations: Mapping[str, LDSResult]) -> dict[str, dict[str, ChosenSetting]]:
    """Per query kind and method, the feature setting (``"base"`` or a study setting: K, k, projector, noise)
    with the highest validation LDS, and its test LDS: the study's honest pick (the study rows themselves
    show every setting's test LDS, which read as a choice would be post hoc)."""
    chosen: dict[str, dict[str, ChosenSetting]] = {}
    for kind in evaluations["base"].methods:
        for method in ("TRAK", "D-TRAK"):
            candidates = [
                (setting, ev.methods[kind][method])
                for setting, ev in evaluations.items()
                if method in ev.methods.get(kind, {})
            ]
            setting, row = max(candidates, key=lambda c: -np.inf if np.isnan(c[1].val_lds) else c[1].val_lds)
            chosen.setdefault(kind, {})[method] = ChosenSetting(setting=setting, val_lds=row.val_lds, lds=row.lds)
    return chosen


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


def _counterfactual(
    cfg: DTRAKExperimentConfig,
    train: ImageDataset,
    generated: Tensor,
    chosen: Mapping[str, np.ndarray],
    kinds: np.ndarray,
    val: np.ndarray,
    model_cfg: DDPMConfig,
    models: Path,
    classifier: CNNClassifier,
    show: bool | None,
) -> tuple[CounterfactualResult, Tensor | None]:
    """Remove the top-k influencers (or k random images) of a few generated test queries (never the
    validation queries that chose lambda), retrain for the same epochs, regenerate.

    Returns the measures and the report's image grid (each row: the original, then each removal's)."""
    n_cf = cfg.counterfactual_queries
    if n_cf == 0:
        return CounterfactualResult(n_queries=0), None
    gen_cols = np.flatnonzero(kinds == "generated")  # generated image g is query column gen_cols[g]
    picked = np.flatnonzero(~val[gen_cols])[:n_cf].tolist()
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
                    str(models / f"counterfactual-{slug}-{g:03d}"),
                    model_cfg.to_dict(),
                    _train_recipe(cfg, train.n_channels, cfg.seed, len(keep))[1],
                    train.images[torch.as_tensor(keep)],
                    sample_indices=(g,),
                    sample_seed=cfg.seed,
                )
            )
            keys.append((method, g))
    done = _run_jobs(jobs, cfg.n_workers, "counterfactual models", show)
    regenerated = {key: d["samples"][0] for key, d in zip(keys, done, strict=True)}
    originals = generated[picked]
    measured = counterfactual_metrics(
        originals,
        {method: torch.stack([regenerated[(method, g)] for g in picked]) for method in removals},
        classifier.features,
        seed=cfg.seed,
        n_boot=cfg.n_boot,
    )
    shown = ["TRAK", "D-TRAK", "random"]
    images = torch.stack([img for g in picked for img in (generated[g], *(regenerated[(m, g)] for m in shown))])
    result = CounterfactualResult(
        n_queries=n_cf,
        k_removed=cfg.counterfactual_k,
        methods={
            method: CounterfactualMetrics(
                pixel_l2=MeanCI(**m["pixel_l2"]),
                feature_cosine=MeanCI(**m["feature_cosine"]),
                per_query_l2=tuple(m["per_query_l2"]),
            )
            for method, m in measured.items()
        },
        columns=("original", *[f"without top-{cfg.counterfactual_k} {m}" for m in shown[:2]], "without random"),
    )
    return result, images


def claim(lds: LDSResult) -> dict[str, dict[str, bool]]:
    """Whether D-TRAK beats TRAK and pixel similarity (paired 95% intervals above 0), per query kind."""
    return {kind: {name: bool(ci.low > 0) for name, ci in pairs.items()} for kind, pairs in lds.paired.items()}
