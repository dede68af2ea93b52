"""The runner of ``genprov reproduce flipad-t2i`` (registered in :data:`~genprov.experiments.base.EXPERIMENTS`):
trains (or opens) the pipelines, samples them, and measures FLIPAD, the baselines and AEROBLADE with the
evaluation code of ``genprov reproduce flipad``."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genprov.config import Config
from genprov.data import load_train_test, png_roundtrip
from genprov.exceptions import ConfigError
from genprov.experiments.base import EXPERIMENTS, Laps, start_run
from genprov.experiments.flipad.results import MethodSummary
from genprov.experiments.flipad.run import evaluate_methods, method_configs, summarise
from genprov.experiments.flipad_t2i.config import FlipadT2IExperimentConfig
from genprov.experiments.flipad_t2i.report import AEROBLADE_L2, build_report
from genprov.experiments.flipad_t2i.results import FlipadT2IResult, PipelineInfo
from genprov.models.t2i import captions_for, load_sized_pipeline, quick_configs, sample_pipeline, train_t2i
from genprov.utils.progress import progress
from genprov.utils.seeding import derive_seed, numpy_rng

__all__ = ["SOURCES", "run_flipad_t2i"]

#: The test sources: the Table 4 analogue's two, then the hard case.
SOURCES = {"real": "real", "other": "other pipeline", "shared-vae": "same VAE, other U-Net"}


def _pipeline(
    cfg: FlipadT2IExperimentConfig,
    role: str,
    given: str | None,
    images: Tensor,
    captions: list[str],
    out: Path,
    show: bool | None,
    *,
    vae_from: Path | None = None,
) -> tuple[Any, PipelineInfo]:
    """A given pipeline folder (its image size checked), or one trained (resumably, cached in ``out/pipelines``)."""
    if given is not None:
        pipe = load_sized_pipeline(given, cfg.image_size, option=f"{role}_pipeline")
        return pipe, PipelineInfo(role=role, folder=str(given), seed=None, shares_own_vae=False, train_seconds=0.0)
    seed = cfg.seed + {"own": 0, "other": 1, "shared-vae": 2}[role]
    values = {**cfg.pipeline, "seed": seed}
    if role == "other":
        values["vae_steps"] = cfg.other_vae_steps
    model_cfg, train_cfg = quick_configs(values, image_size=cfg.image_size, channels=int(images.shape[1]))
    result = train_t2i(
        model_cfg, train_cfg, images, captions, out / "pipelines" / role, vae_from=vae_from, show_progress=show
    )
    info = PipelineInfo(
        role=role,
        folder=str(result.folder),
        seed=seed,
        shares_own_vae=vae_from is not None,
        train_seconds=round(result.seconds if result.resumed_from < result.step else 0.0, 1),
    )
    return result.pipeline, info


def _samples(cfg: FlipadT2IExperimentConfig, pipe: Any, prompts: list[str], n: int, key: str) -> Tensor:
    """At least ``n`` 8-bit samples of ``pipe``, cycling through ``prompts``, under their own seed key."""
    per_prompt = math.ceil(n / len(prompts))
    x = sample_pipeline(
        pipe,
        prompts,
        per_prompt,
        seed=derive_seed(cfg.seed, "flipad-t2i", key),
        steps=cfg.sample_steps,
        guidance_scale=cfg.guidance_scale,
        show_progress=False,
    )
    return png_roundtrip(x)


@EXPERIMENTS.register("flipad-t2i", config=FlipadT2IExperimentConfig)
def run_flipad_t2i(
    config: FlipadT2IExperimentConfig,
    out_dir: str | Path,
    show_progress: bool | None = None,
    *,
    data_root: str | Path | None = None,
) -> FlipadT2IResult:
    """Run the Table 4 analogue and the shared-VAE case; write ``results.json`` and ``report.html``.

    Registered as the ``"flipad-t2i"`` experiment (``genprov reproduce flipad-t2i``).

    Args:
        config: What to run (see :class:`FlipadT2IExperimentConfig`).
        out_dir: Output folder; trained pipelines are cached in ``out_dir/pipelines``.
        show_progress: Progress bars (default: on for a terminal).
        data_root: Folder of dataset files (overrides ``config.data_root``).

    Returns:
        The typed results (``to_dict()`` is ``results.json``).
    """
    t_start = time.perf_counter()
    if not isinstance(config, FlipadT2IExperimentConfig):
        raise ConfigError(f"run_flipad_t2i takes a FlipadT2IExperimentConfig; got {type(config).__name__}.")
    cfg, out = start_run(config, out_dir, data_root)
    lap = Laps()
    train_set, test_set = load_train_test(cfg.data, data_root=cfg.data_root, resize=cfg.image_size, seed=cfg.seed)
    captions = list(captions_for("labels", train_set))
    rows = np.arange(len(train_set.images))
    if cfg.n_pipeline_train is not None and cfg.n_pipeline_train < len(rows):
        rows = np.sort(numpy_rng(cfg.seed, "flipad-t2i-train").choice(rows, cfg.n_pipeline_train, replace=False))
    images = train_set.images[torch.from_numpy(rows)]
    texts = [captions[i] for i in rows.tolist()]
    prompts = sorted(set(texts))

    own, own_info = _pipeline(cfg, "own", cfg.base_pipeline, images, texts, out, show_progress)
    other, other_info = _pipeline(cfg, "other", cfg.other_pipeline, images, texts, out, show_progress)
    shared, shared_info = _pipeline(
        cfg, "shared-vae", None, images, texts, out, show_progress, vae_from=Path(own_info.folder)
    )
    lap("pipelines")

    n_pool = cfg.n_train + cfg.n_holdout + cfg.n_test
    n_src = max(cfg.n_test, round(1.2 * cfg.n_test))
    # the real negatives: a seeded 1.5 n_train of the pipelines' training images (resamples draw n_train of them)
    neg_rows = numpy_rng(cfg.seed, "flipad-t2i-neg").permutation(len(images))[
        : max(cfg.n_train, round(1.5 * cfg.n_train))
    ]
    pools = {
        "own": _samples(cfg, own, prompts, n_pool, "own"),
        "neg": png_roundtrip(images[torch.from_numpy(neg_rows)]),
        "real": png_roundtrip(test_set.images[:n_src]),
    }
    for key, pipe in progress((("other", other), ("shared-vae", shared)), desc="sample", show=show_progress):
        pools[key] = _samples(cfg, pipe, prompts, n_src, key)
    lap("sample")

    protocol = cfg.protocol()
    configs: dict[str, Config] = {
        **method_configs(protocol, cfg.flipad.replace(detector=cfg.detector)),
        "aeroblade": cfg.aeroblade.replace(seed=cfg.seed, fnr=0.005),
    }
    variants: list[tuple[list[str], dict[str, Config], dict[str, str]]] = [(list(cfg.methods), configs, {})]
    if "aeroblade" in cfg.methods:
        l2: dict[str, Config] = {"aeroblade": cfg.aeroblade.replace(seed=cfg.seed, fnr=0.005, distance="l2")}
        variants.append((["aeroblade"], l2, {"aeroblade": AEROBLADE_L2}))
    table4: dict[str, MethodSummary] = {}
    shared_vae: dict[str, MethodSummary] = {}
    raw: dict[str, Any] = {}
    for methods, variant_configs, rename in variants:
        res = evaluate_methods(
            own.vae, pools, list(SOURCES), methods, variant_configs, protocol, "flipad-t2i", keep_scores=True
        )
        for method, value in res.items():
            name = rename.get(method, method)
            per_source = value["per_source"]
            table4[name] = summarise({name: {"per_source": {SOURCES[s]: per_source[s] for s in ("real", "other")}}})[
                name
            ]
            shared_vae[name] = summarise({name: {"per_source": {SOURCES["shared-vae"]: per_source["shared-vae"]}}})[
                name
            ]
            raw[name] = value["scores"]
    lap("evaluate")
    timings = {**lap.timings, "total": round(time.perf_counter() - t_start, 1)}
    result = FlipadT2IResult(
        experiment="flipad-t2i",
        config=cfg.to_dict(),
        pipelines=(own_info, other_info, shared_info),
        table4=table4,
        shared_vae=shared_vae,
        headline={name: summary.mean for name, summary in table4.items()},
        timings_s=timings,
    )
    result.write_json(out / "results.json")
    build_report(cfg, result, raw, {k: v[:8] for k, v in pools.items() if k != "neg"}).write(
        out, filename="report.html"
    )
    return result
