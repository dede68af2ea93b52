"""The demo's text-to-image section (``genprov demo --only t2i``): a LoRA's samples and their top influencers."""

from __future__ import annotations

import time
from typing import Any

import torch

from genprov.attribution.data.trak import TRAKAttributor, TRAKConfig
from genprov.experiments.dtrak_t2i.config import DTRAKT2IExperimentConfig
from genprov.experiments.dtrak_t2i.report import influencer_galleries, prompt_grids
from genprov.experiments.dtrak_t2i.run import base_pipeline, load_t2i_data
from genprov.experiments.quickstart import DEMO_SECTIONS, DemoContext
from genprov.models.t2i import LORA_PARAMETER_GLOBS, encode_examples, load_pipeline, sample_pipeline, train_lora
from genprov.report import Section

__all__ = ["DEMO_SAMPLES_PER_PROMPT", "t2i_section"]

#: Samples per class prompt in the grid; the first of each prompt is explained.
DEMO_SAMPLES_PER_PROMPT = 6
#: Base-pipeline steps and LoRA settings of the demo (``genprov demo --quick``: the quick reproduction's). The
#: LoRA trains 500 steps at 10x the reproduction's learning rate, so that its samples visibly turn into the new
#: classes within the demo's minute (at the reproduction's 3e-4 the tiny LoRA barely moves the base).
_DEMO_BASE_STEPS = {"vae_steps": 200, "unet_steps": 600}
_DEMO_LORA = {"lora_epochs": 100, "lora_lr": 3e-3, "lora_rank": 8}


@DEMO_SECTIONS.register("t2i")
def t2i_section(ctx: DemoContext) -> Section:
    """Demo: a tiny text-to-image pipeline trained on the other classes, a LoRA on two classes (digits: 0 and 1),
    a sample grid per prompt, and each prompt's first sample beside its top D-TRAK influencers among the LoRA's
    training images (gradients of the LoRA parameters only)."""
    t0 = time.perf_counter()
    root = None if ctx.data_root is None else str(ctx.data_root)
    cfg = DTRAKT2IExperimentConfig.preset_for(ctx.config.data, seed=ctx.config.seed, quick=True, data_root=root)
    if not ctx.config.quick:  # the quick reproduction's sizes, with a base and a LoRA trained longer
        cfg = cfg.replace(base={**cfg.base, **_DEMO_BASE_STEPS}, **_DEMO_LORA)
    data = load_t2i_data(cfg)
    folder = ctx.models_dir / "t2i"
    base_dir, _ = base_pipeline(cfg, data, folder, ctx.show_progress)
    lora = train_lora(
        load_pipeline(base_dir),
        data.train.images,
        data.captions,
        cfg.lora_config(len(data.train), cfg.seed),
        folder / "lora",
        show_progress=ctx.show_progress,
    )
    pipe = lora.pipeline
    n = DEMO_SAMPLES_PER_PROMPT
    samples = sample_pipeline(
        pipe, data.prompts, n, seed=cfg.seed, steps=cfg.sample_steps, guidance_scale=cfg.guidance_scale
    )
    queries = samples[[0, n]]
    train_ex = encode_examples(pipe, data.train.images, data.captions)
    query_ex = encode_examples(pipe, queries, list(data.prompts), option="prompts")
    config = TRAKConfig(
        output_function="squared-l2-norm", proj_dim=cfg.proj_dim, include=LORA_PARAMETER_GLOBS, seed=cfg.seed
    )
    dtrak = TRAKAttributor.for_pipeline(pipe, config).fit(
        train_ex, store=folder / "dtrak-store", show_progress=ctx.show_progress
    )
    scores = dtrak.scores_from_features(dtrak.featurize_queries(query_ex)).numpy()
    section = Section(
        "t2i",
        "A LoRA of a text-to-image model: which training images shaped its samples?",
        intro=f"A tiny latent diffusion pipeline (VAE, text encoder and U-Net, diffusers' StableDiffusionPipeline) "
        f"trained on {len(data.base)} {data.name} images of the other classes, then a LoRA on {len(data.train)} "
        f"images of {data.names[0]} and {data.names[1]} ({lora.step} steps, learning rate {cfg.lora_lr:g}). Each prompt's first sample is shown beside its most "
        "positive and negative D-TRAK influencers among the LoRA's training images (gradients of the LoRA "
        "parameters only). `genprov reproduce dtrak-t2i` measures TRAK vs D-TRAK by retraining the LoRA (LDS).",
    )
    section.add(*prompt_grids(samples, data.prompts, n))
    section.add(*influencer_galleries(queries, [0, 1], data.train.images, {"D-TRAK": scores}, data.prompts))
    results: dict[str, Any] = {
        "prompts": list(data.prompts),
        "n_base": len(data.base),
        "n_train": len(data.train),
        "lora_steps": lora.step,
        "top5": {
            prompt: torch.argsort(torch.from_numpy(scores[i]), descending=True, stable=True)[:5].tolist()
            for i, prompt in enumerate(data.prompts)
        },
        "seconds": round(time.perf_counter() - t0, 2),
    }
    ctx.results["t2i"] = results
    return section
