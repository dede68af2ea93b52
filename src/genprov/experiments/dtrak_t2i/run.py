"""The runner of ``genprov reproduce dtrak-t2i`` (registered in :data:`~genprov.experiments.base.EXPERIMENTS`):
trains the base pipeline, the LoRA and the LDS subset LoRAs, scores every method and returns a
:class:`DTRAKT2IResult`."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genprov.attribution.data.trak import TRAKAttributor, TRAKConfig
from genprov.data import ConditionedExamples, ImageDataset, load_train_test, random_subsets
from genprov.data.dataset import fingerprint_arrays
from genprov.eval.lds import (
    EvalDraws,
    LDSBenchmark,
    evaluate_lds,
    lds_vs_benchmark_size,
    measure_conditional_losses,
    pixel_similarity,
)
from genprov.exceptions import ConfigError, DataError
from genprov.experiments.base import EXPERIMENTS, Laps, start_run
from genprov.experiments.dtrak.results import BenchmarkSizeRow, LDSResult
from genprov.experiments.dtrak.run import METHODS, claim, featurize_and_score, variant_study
from genprov.experiments.dtrak_t2i.config import PAPER_ARTBENCH2, DTRAKT2IExperimentConfig
from genprov.experiments.dtrak_t2i.report import build_report
from genprov.experiments.dtrak_t2i.results import DTRAKT2IResult, PaperRow, T2IDataInfo, T2IModelInfo
from genprov.models.t2i import (
    LORA_PARAMETER_GLOBS,
    LatentDenoiser,
    captions_for,
    captions_from_labels,
    encode_examples,
    load_pipeline,
    load_sized_pipeline,
    lora_parameter_names,
    quick_configs,
    sample_pipeline,
    train_lora,
    train_t2i,
)
from genprov.models.t2i.lora import LORA_WEIGHTS
from genprov.utils.io import atomic_save_npz
from genprov.utils.progress import progress
from genprov.utils.seeding import derive_seed, numpy_rng

__all__ = [
    "BENCHMARK_FILE",
    "T2IData",
    "base_pipeline",
    "latent_similarity",
    "load_t2i_data",
    "run_dtrak_t2i",
]

log = logging.getLogger(__name__)

#: The LDS benchmark a run writes (masks, losses and the queries' latents).
BENCHMARK_FILE = "lds_benchmark.npz"


# ------------------------------------------------------------------------------------------ data


class T2IData:
    """The run's images and captions: the base pipeline's classes, the LoRA's two, and the held-out queries.

    Attributes:
        name: The dataset.
        classes: The LoRA's two classes (label indices) and their names.
        prompts: The two class prompts.
        base: Images of the other classes (the base pipeline's training set) and ``base_captions``.
        train: The LoRA's training images (half of each class, seeded) and ``captions``.
        real: Held-out test images of the two classes (the real queries) and ``real_prompts``.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        test: ImageDataset,
        captions: Sequence[str],
        classes: tuple[int, int],
        names: tuple[str, str],
        prompts: tuple[str, str],
        *,
        n_base: int | None,
        n_train: int,
        n_real: int,
        seed: int,
    ) -> None:
        assert dataset.labels is not None and test.labels is not None
        labels, test_labels = dataset.labels.numpy(), test.labels.numpy()
        self.name, self.classes, self.names, self.prompts = dataset.name, classes, names, prompts
        base_rows = np.flatnonzero(~np.isin(labels, classes))
        if n_base is not None and n_base < len(base_rows):
            base_rows = np.sort(numpy_rng(seed, "t2i-base").choice(base_rows, n_base, replace=False))
        train_rows = _balanced(labels, classes, n_train, numpy_rng(seed, "t2i-lora-train"), "n_train", dataset.name)
        real_rows = _balanced(test_labels, classes, n_real, numpy_rng(seed, "t2i-real"), "n_real_queries", test.name)
        self.base = dataset.images[torch.as_tensor(base_rows)]
        self.base_captions = [captions[i] for i in base_rows.tolist()]
        self.train = dataset.subset(train_rows)
        self.captions = [captions[i] for i in train_rows.tolist()]
        self.real = test.images[torch.as_tensor(real_rows)]
        self.real_prompts = [prompts[classes.index(int(test_labels[i]))] for i in real_rows.tolist()]


def _balanced(
    labels: np.ndarray, classes: tuple[int, int], n: int, rng: np.random.Generator, option: str, where: str
) -> np.ndarray:
    """``n`` rows, half of each class (the first takes the odd one), chosen by ``rng``, sorted."""
    rows = []
    for k, c in enumerate(classes):
        want = n // 2 + (n % 2 if k == 0 else 0)
        pool = np.flatnonzero(labels == c)
        if want > len(pool):
            raise DataError(
                f"{where} has {len(pool)} images of class {c}, fewer than the {want} that {option}={n} needs; "
                f"lower {option} (--set {option}=...)."
            )
        rows.append(rng.choice(pool, want, replace=False))
    return np.sort(np.concatenate(rows))


def _class_index(value: str | int, names: Sequence[str], where: str) -> int:
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit() and value not in names):
        index = int(value)
        if 0 <= index < len(names):
            return index
    elif value in names:
        return list(names).index(value)
    raise ConfigError(
        f"lora_classes: {value!r} is not a class of {where}; its classes are {', '.join(map(str, names))} "
        "(names or indices)."
    )


def load_t2i_data(cfg: DTRAKT2IExperimentConfig) -> T2IData:
    """The run's data (see :class:`T2IData`).

    Raises:
        DataError: The dataset has no labels, fewer than 3 classes, or too few images of the LoRA classes.
        ConfigError: A ``lora_classes`` entry is not a class of the dataset.
    """
    train, test = load_train_test(cfg.data, data_root=cfg.data_root, resize=cfg.image_size, seed=cfg.seed)
    if train.labels is None or test.labels is None:
        raise DataError(f"{train.name} has no labels; the LoRA classes and their captions need a labelled dataset.")
    n_classes = int(max(int(train.labels.max()), int(test.labels.max()))) + 1
    names = train.class_names or tuple(str(i) for i in range(n_classes))
    if len(names) < 3:
        raise DataError(
            f"{train.name} has {len(names)} classes; this experiment needs at least 3 (two for the LoRA, the others "
            "for the base pipeline): use cifar10 (automobile vs horse over the 8 other classes) instead of cifar2."
        )
    c0, c1 = (_class_index(v, names, train.name) for v in cfg.lora_classes)
    if c0 == c1:
        raise ConfigError(f"lora_classes {list(cfg.lora_classes)} name the same class twice; give two classes.")
    captions = captions_for(cfg.captions, train)
    labels = train.labels.numpy()
    prompts = tuple(captions_from_labels(train.subset([int(np.flatnonzero(labels == c)[0])]))[0] for c in (c0, c1))
    return T2IData(
        train,
        test,
        captions,
        (c0, c1),
        (names[c0], names[c1]),
        (prompts[0], prompts[1]),
        n_base=cfg.n_base,
        n_train=cfg.n_train,
        n_real=cfg.n_real_queries,
        seed=cfg.seed,
    )


# ------------------------------------------------------------------------------------------ caching


def _cached(path: Path, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """The array saved at ``path`` under ``key``, else ``compute()`` saved there."""
    if path.is_file():
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["key"]) == key:
                return np.asarray(npz["value"])
    value = compute()
    atomic_save_npz(path, {"value": value, "key": np.array(key)})
    return value


def _lora_key(folder: Path, *parts: Any) -> str:
    """A key of a LoRA's weights and ``parts`` (what a cached measurement of it depends on)."""
    h = hashlib.blake2b(digest_size=12)
    h.update((folder / LORA_WEIGHTS).read_bytes())
    h.update(json.dumps(parts, default=str).encode())
    return h.hexdigest()


def latent_similarity(queries: ConditionedExamples, train: ConditionedExamples) -> np.ndarray:
    """The feature-similarity baseline: cosine between the VAE latents the model denoises, (n_q, n_train)
    float64 (CLIP, the paper's, cannot be loaded here)."""
    q = torch.nn.functional.normalize(queries.latents.flatten(1).double(), dim=1)
    x = torch.nn.functional.normalize(train.latents.flatten(1).double(), dim=1)
    return (q @ x.T).numpy()


# ------------------------------------------------------------------------------------------ the run


def base_pipeline(
    cfg: DTRAKT2IExperimentConfig, data: T2IData, out: Path, show: bool | None
) -> tuple[Path, list[dict[str, float]]]:
    """The base pipeline's folder: ``cfg.base_pipeline``, or one trained (resumably) on the other classes."""
    if cfg.base_pipeline is not None:
        folder = Path(cfg.base_pipeline)
        load_sized_pipeline(folder, cfg.image_size, option="base_pipeline")
        return folder, []
    model_cfg, train_cfg = quick_configs(cfg.base, image_size=cfg.image_size, channels=data.train.n_channels)
    result = train_t2i(model_cfg, train_cfg, data.base, data.base_captions, out / "base", show_progress=show)
    return result.folder, result.log


@EXPERIMENTS.register("dtrak-t2i", config=DTRAKT2IExperimentConfig)
def run_dtrak_t2i(
    config: DTRAKT2IExperimentConfig,
    out_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    show_progress: bool | None = None,
) -> DTRAKT2IResult:
    """Run the ArtBench-2 analogue; write ``results.json``, ``report.html`` and ``lds_benchmark.npz``.

    Registered as the ``"dtrak-t2i"`` experiment (``genprov reproduce dtrak-t2i``).

    Args:
        config: What to run (see :class:`DTRAKT2IExperimentConfig`).
        out_dir: Output folder (``base/``, ``lora/``, ``stores/``, ``losses/`` and ``samples.npz`` are cached there).
        data_root: Folder of dataset files (overrides ``config.data_root``).
        show_progress: Progress bars.

    Returns:
        The typed results (``to_dict()`` is ``results.json``).
    """
    cfg, out = start_run(config, out_dir, data_root)
    lap = Laps()
    data = load_t2i_data(cfg)
    base_dir, _ = base_pipeline(cfg, data, out, show_progress)
    lap("base pipeline")

    # the LoRA, its samples (report grid + generated queries)
    n = len(data.train)
    full = train_lora(
        load_pipeline(base_dir),
        data.train.images,
        data.captions,
        cfg.lora_config(n, cfg.seed),
        out / "lora" / "full",
        show_progress=show_progress,
    )
    pipe = full.pipeline
    n_gen = cfg.n_gen_queries
    per_prompt = (cfg.grid_per_prompt, -(-n_gen // 2))
    settings = (data.prompts, per_prompt, cfg.seed, cfg.sample_steps, cfg.guidance_scale)

    def draw() -> np.ndarray:
        grid = sample_pipeline(
            pipe,
            data.prompts,
            per_prompt[0],
            seed=cfg.seed,
            steps=cfg.sample_steps,
            guidance_scale=cfg.guidance_scale,
            show_progress=show_progress,
        )
        gen = (
            sample_pipeline(
                pipe,
                data.prompts,
                per_prompt[1],
                seed=derive_seed(cfg.seed, "t2i-queries"),
                steps=cfg.sample_steps,
                guidance_scale=cfg.guidance_scale,
                show_progress=show_progress,
            )
            if n_gen
            else grid[:0]
        )
        return torch.cat([grid, gen]).numpy()

    drawn = torch.from_numpy(_cached(out / "samples.npz", _lora_key(full.folder, *settings), draw))
    grid, generated = drawn[: 2 * per_prompt[0]], drawn[2 * per_prompt[0] :][:n_gen]  # prompt by prompt
    gen_prompts = [data.prompts[i // per_prompt[1]] for i in range(len(generated))]
    lap("LoRA + samples")

    # queries (real, then generated; half of each kind chooses lambda), encoded once
    query_images = torch.cat([data.real, generated])
    kinds = np.array(["real"] * len(data.real) + ["generated"] * len(generated))
    train_ex = encode_examples(pipe, data.train.images, data.captions)
    query_ex = encode_examples(pipe, query_images, [*data.real_prompts, *gen_prompts], option="query prompts")
    val = LDSBenchmark.empty(query_ex.latents.numpy(), kinds).with_validation_split(cfg.seed).val

    # features and scores (LoRA parameters only)
    base = TRAKConfig(
        n_timesteps=cfg.n_timesteps,
        proj_dim=cfg.proj_dim,
        projector=cfg.projector,
        include=LORA_PARAMETER_GLOBS,
        seed=cfg.seed,
    )
    stores = out / "stores"
    method_scores: dict[str, np.ndarray] = {}
    feature_seconds, unrelated = {}, {}
    for label, output_function in METHODS:
        attributor = TRAKAttributor.for_pipeline(pipe, base.replace(output_function=output_function))
        fitted = featurize_and_score(attributor, train_ex, query_ex, cfg.relative_dampings, stores, show_progress)
        method_scores[label] = fitted.scores
        feature_seconds[label], unrelated[label] = fitted.seconds, fitted.unrelated_cosine
    method_scores["pixel similarity"] = pixel_similarity(query_images, data.train.images)[None]
    method_scores["latent similarity"] = latent_similarity(query_ex, train_ex)[None]
    lap("features + scores")

    # LDS benchmark: every subset retrains the LoRA only, on the same base, with the same epochs
    draws = EvalDraws.make(query_ex.latents, cfg.eval_draws, int(pipe.scheduler.config.num_train_timesteps), cfg.seed)
    subsets = random_subsets(n, cfg.n_subsets, cfg.subset_fraction, seed=cfg.seed)
    masks = np.zeros((cfg.n_subsets, n), dtype=bool)
    losses = np.zeros((cfg.n_subsets, cfg.n_seeds, len(query_images)))
    jobs = [(s, j) for s in range(cfg.n_subsets) for j in range(cfg.n_seeds)]
    context_key = fingerprint_arrays(query_ex.context.numpy())
    for s, j in progress(jobs, desc="LDS LoRAs", total=len(jobs), show=show_progress):
        rows = np.asarray(subsets[s])
        masks[s, rows] = True
        seed = int(derive_seed(cfg.seed, "lds-seed", j) % (2**31))
        sub = train_lora(
            load_pipeline(base_dir),
            data.train.images[torch.as_tensor(rows)],
            [data.captions[i] for i in rows.tolist()],
            cfg.lora_config(len(rows), seed),
            out / "lora" / f"subset-{s:03d}-seed-{j}",
            show_progress=False,
        )
        key = _lora_key(sub.folder, draws.fingerprint(), context_key)
        denoiser = LatentDenoiser(sub.pipeline.unet, sub.pipeline.scheduler)
        losses[s, j] = _cached(
            out / "losses" / f"subset-{s:03d}-seed-{j}.npz",
            key,
            functools.partial(measure_conditional_losses, denoiser, query_ex, draws, scheduler=sub.pipeline.scheduler),
        )
    bench = LDSBenchmark(masks, losses, query_ex.latents.numpy(), kinds, val)
    bench.save(out / BENCHMARK_FILE)
    lap("LDS LoRAs")
    lds = LDSResult.from_evaluation(
        evaluate_lds(method_scores, bench, dampings=cfg.relative_dampings, seed=cfg.seed, n_boot=cfg.n_boot)
    )
    size_curve = lds_vs_benchmark_size(method_scores, bench, dampings=cfg.relative_dampings, seed=cfg.seed)
    study, study_lds = variant_study(
        lambda trak_config: TRAKAttributor.for_pipeline(pipe, trak_config),
        base,
        cfg.study,
        train_ex,
        query_ex,
        bench,
        method_scores["pixel similarity"],
        relative_dampings=cfg.relative_dampings,
        seed=cfg.seed,
        n_boot=cfg.n_boot,
        stores=stores,
        show=show_progress,
    )
    lap("LDS evaluation + study")

    unet_params = sum(p.numel() for name, p in pipe.unet.named_parameters() if ".lora_" not in name)
    lora_params = sum(p.numel() for name, p in pipe.unet.named_parameters() if name in lora_parameter_names(pipe.unet))
    result = DTRAKT2IResult(
        experiment="dtrak-t2i",
        config=cfg.to_dict(),
        data=T2IDataInfo(
            name=data.name,
            lora_classes=data.names,
            prompts=data.prompts,
            n_base=0 if cfg.base_pipeline is not None else len(data.base),
            n_train=n,
            n_real_queries=len(data.real),
            n_gen_queries=len(generated),
            image_size=cfg.image_size,
            fingerprint=data.train.fingerprint(),
        ),
        model=T2IModelInfo(
            base_pipeline=str(base_dir),
            unet_params=int(unet_params),
            lora_params=int(lora_params),
            lora_rank=cfg.lora_rank,
            lora_steps=full.step,
            lora_final_loss=float(full.log[-1]["loss"]) if full.log else float("nan"),
        ),
        lds=lds,
        paper=_paper_rows(cfg, {f"n_timesteps={cfg.n_timesteps}": lds, **study_lds}),
        featurization_seconds=feature_seconds,
        unrelated_feature_cosine=unrelated,
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
        grid=grid,
        queries=query_images,
        kinds=kinds,
        val=val,
        train=data.train.images,
        method_scores=method_scores,
    ).write(out, filename="report.html")
    return result


def _paper_rows(cfg: DTRAKT2IExperimentConfig, evaluations: dict[str, LDSResult]) -> tuple[PaperRow, ...]:
    """The paper's ArtBench-2 figures per K beside ours where this run measured that K (base or study)."""
    rows = []
    for k, figures in PAPER_ARTBENCH2.items():
        ev = evaluations.get(f"n_timesteps={k}")
        for method, paper in figures.items():
            ours = {
                kind: (ev.methods[kind][method].lds.mean if ev is not None and kind in ev.methods else None)
                for kind in ("real", "generated")
            }
            rows.append(PaperRow(k, method, paper, ours["real"], ours["generated"]))
    return tuple(rows)
