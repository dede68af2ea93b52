"""The HTML report of ``genprov reproduce dtrak-t2i``, built from its typed :class:`DTRAKT2IResult` (the LDS table
and the lambda sweeps are ``reproduce dtrak``'s)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor

from genprov.eval.stats import MeanCI
from genprov.experiments.dtrak.report import fmt_ci, lds_rows, sweep_figure
from genprov.experiments.dtrak.results import VariantLDSRow
from genprov.experiments.dtrak_t2i.config import DTRAKT2IExperimentConfig
from genprov.experiments.dtrak_t2i.results import DTRAKT2IResult
from genprov.experiments.quickstart import grid_image
from genprov.report import Figure, Gallery, Image, KeyValue, Report, Section, Table, Text
from genprov.report.figures import metric_bars

__all__ = ["build_report", "influencer_galleries", "prompt_grids"]


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def prompt_grids(images: Tensor, prompts: Sequence[str], per_prompt: int) -> list[Image]:
    """One grid image per prompt of ``images`` (``per_prompt`` images per prompt, prompt by prompt)."""
    return [
        grid_image(images[i * per_prompt : (i + 1) * per_prompt], f'"{prompt}"', nrow=per_prompt, width_px=480)
        for i, prompt in enumerate(prompts)
    ]


def influencer_galleries(
    queries: Tensor,
    columns: Sequence[int],
    train: Tensor,
    scores: Mapping[str, np.ndarray],
    captions: Sequence[str],
) -> list[Gallery]:
    """Per query column, per method: the query beside its top positive and negative training images."""
    return [
        Gallery.influence(
            queries[col],
            train,
            np.asarray(method_scores)[col],
            caption=f"{method}, {captions[i]}",
            query_caption=f"query #{col}",
        )
        for i, col in enumerate(columns)
        for method, method_scores in scores.items()
    ]


def build_report(
    cfg: DTRAKT2IExperimentConfig,
    result: DTRAKT2IResult,
    *,
    grid: Tensor,
    queries: Tensor,
    kinds: np.ndarray,
    val: np.ndarray,
    train: Tensor,
    method_scores: Mapping[str, np.ndarray],
) -> Report:
    """The report of ``result``: the LoRA's sample ``grid`` (``grid_per_prompt`` per prompt), the LDS tables and
    the top influencers of generated test ``queries`` (images; ``kinds``, validation mask ``val``) among the
    LoRA's ``train`` images under every method's ``(n_lambda, n_q, n_train)`` scores."""
    lds, data, model = result.lds, result.data, result.model
    report = Report(
        "D-TRAK vs TRAK on a LoRA of a text-to-image model (the ArtBench-2 setting)",
        subtitle="Zheng et al., ICLR 2024, sec. 5, at small scale on a CPU",
        meta={"data": cfg.data, "seed": cfg.seed, "run": "quick" if cfg.quick else "full", "n_train": data.n_train},
    )
    summary = Section(
        "summary",
        "Summary",
        intro=f"A latent diffusion pipeline ({cfg.image_size}x{cfg.image_size}, U-Net of {model.unet_params:,} "
        f"parameters) trained on {data.n_base} {data.name} images of the other classes, then a rank-{model.lora_rank} "
        f"LoRA ({model.lora_params:,} parameters, {model.lora_steps} steps) on {data.n_train} images of "
        f'{data.lora_classes[0]} and {data.lora_classes[1]} captioned "{data.prompts[0]}" / "{data.prompts[1]}". '
        f"TRAK (loss) and D-TRAK (squared l2 norm) differentiate the LoRA parameters only, K={cfg.n_timesteps} "
        f"timesteps, k={cfg.proj_dim} ({cfg.projector}). LDS: {cfg.n_subsets} random halves x {cfg.n_seeds} seeds, "
        "each retraining the LoRA only on the same base for the same epochs; lambda chosen on half of each query "
        "set, every LDS shown is on the other half.",
    )
    if cfg.quick:
        summary.add(Text("Quick mode: a tiny pipeline and few subsets; the numbers are a smoke test.", tone="note"))
    headline: dict[str, Any] = {}
    for kind in lds.methods:
        for method in ("TRAK", "D-TRAK"):
            headline[f"LDS {method} ({kind})"] = lds.methods[kind][method].lds.mean
        ceiling = lds.noise_ceiling.get(kind)
        if ceiling:
            headline[f"noise ceiling ({kind})"] = ceiling.mean
    summary.add(KeyValue(headline))
    summary.add(*prompt_grids(grid, data.prompts, cfg.grid_per_prompt))
    report.add(summary)

    section = Section(
        "lds",
        "Linear datamodeling score",
        intro="Spearman correlation, across the subset LoRAs, between the summed scores of a subset and the model "
        "output (minus the query's conditional latent diffusion loss given its prompt, over fixed draws), per "
        "query; mean over test queries with 95% bootstrap intervals over queries and over subsets. Real queries "
        "are held-out images of the two classes (the paper's validation set), generated ones come from the LoRA. "
        "Latent similarity (cosine of the VAE latents) stands in for the paper's CLIP similarity, which cannot be "
        "loaded here.",
    )
    section.add(Table(lds_rows(lds), caption="LDS (test queries, lambda chosen on validation queries)."))
    section.add(
        Table(
            [
                {
                    "K": row.timesteps,
                    "method": row.method,
                    "paper (ArtBench-2, validation)": row.paper_lds,
                    "ours (real)": _num(row.lds_real),
                    "ours (generated)": _num(row.lds_generated),
                }
                for row in result.paper
            ],
            caption="The paper's ArtBench-2 LDS (LoRA on miniSD, 5,000 images, 256x256) beside ours.",
        )
    )
    paired = [
        {"query kind": kind, "difference": name, "mean [95% CI]": fmt_ci(ci)}
        for kind, pairs in lds.paired.items()
        for name, ci in pairs.items()
    ]
    if paired:
        section.add(Table(paired, caption="Paired differences of per-query LDS (CI above 0: the first is better)."))
    for kind in lds.methods:
        bars = {m: r.lds for m, r in lds.methods[kind].items()}
        section.add(Figure(metric_bars(bars, ylabel="LDS", title=f"{kind} queries"), caption=f"LDS, {kind} queries."))
    section.add(Figure(sweep_figure(lds), caption="lambda sweeps: validation (solid) and test (dashed) LDS."))
    study_rows = [
        {k: (fmt_ci(v) if isinstance(v, MeanCI) else v) for k, v in row.to_dict().items()}
        if isinstance(row, VariantLDSRow)
        else {"setting": row.setting, "method": row.method, "paired difference": fmt_ci(row.paired_difference)}
        for row in result.variant_study
    ]
    if study_rows:
        section.add(Table(study_rows, caption="Feature variants on the same benchmark (e.g. K = 100)."))
    size_rows = [{"subsets": r.subsets, "seeds": r.seeds, **r.mean_lds} for r in result.lds_vs_benchmark_size]
    section.add(Table(size_rows, caption="Mean test LDS vs benchmark size (subsets x seeds averaged)."))
    report.add(section)

    gallery = Section(
        "influencers",
        "Top influencers of generated images",
        intro="For generated test queries: the 5 most positive and 3 most negative LoRA training images under TRAK "
        "and D-TRAK (at the lambda chosen on validation queries).",
    )
    cols = np.flatnonzero((kinds == "generated") & ~val)[: cfg.gallery_queries].tolist()
    chosen = {m: np.asarray(method_scores[m][lds.chosen_index(m)]) for m in ("TRAK", "D-TRAK")}
    gallery.add(*influencer_galleries(queries, cols, train, chosen, [f"query #{c}" for c in cols]))
    report.add(gallery)

    setup = Section("setup", "Setup and timings")
    setup.add(
        Text(
            f"Command: `genprov reproduce dtrak-t2i --data {cfg.data} --seed {cfg.seed}"
            f"{' --quick' if cfg.quick else ''} --out DIR`. The LDS benchmark (masks, losses, query latents) is in "
            "`lds_benchmark.npz`."
        ),
        KeyValue(dict(result.timings_seconds), caption="seconds per stage"),
        Table([{"field": k, "value": str(v)} for k, v in cfg.to_dict().items()], caption="configuration"),
    )
    report.add(setup)
    return report
