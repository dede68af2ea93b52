"""The HTML report of ``genprov reproduce dtrak``, built from its typed :class:`DTRAKResult`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure as MplFigure
from torch import Tensor

from genprov.data import ImageDataset
from genprov.eval.stats import MeanCI
from genprov.experiments.dtrak.config import DTRAKExperimentConfig
from genprov.experiments.dtrak.results import CounterfactualResult, DTRAKResult, LDSResult, VariantLDSRow
from genprov.experiments.quickstart import grid_image
from genprov.report import Figure, Gallery, KeyValue, Report, Section, Table, Text
from genprov.report.figures import metric_bars, training_curves

__all__ = ["build_report", "fmt_ci", "lds_rows", "sweep_figure"]


def fmt_ci(ci: MeanCI | None) -> str:
    """``mean [low, high]`` to 3 decimals, or ``n/a``."""
    return "n/a" if ci is None else ci.format(".3f")


def lds_rows(lds: LDSResult) -> list[dict[str, Any]]:
    """The LDS table: one row per method (LDS per query kind with both intervals and the chosen lambda), then
    the noise ceiling."""
    kinds = list(lds.methods)
    methods = list(next(iter(lds.methods.values()))) if kinds else []
    rows = []
    for method in methods:
        row: dict[str, Any] = {"method": method}
        for kind in kinds:
            r = lds.methods[kind][method]
            row[f"LDS {kind} [95% CI queries]"] = fmt_ci(r.lds)
            lo, hi = r.ci_over_subsets
            row[f"{kind}: CI over subsets"] = f"[{lo:.3f}, {hi:.3f}]"
            if r.relative_damping is not None:
                row[f"{kind}: lambda / (tr/k)"] = f"{r.relative_damping:g}"
        rows.append(row)
    rows.append(
        {
            "method": "noise ceiling (seed vs seed)",
            **{f"LDS {k} [95% CI queries]": fmt_ci(lds.noise_ceiling[k]) for k in kinds},
        }
    )
    return rows


def sweep_figure(lds: LDSResult) -> MplFigure:
    """Validation (solid) and test (dashed) LDS over the lambda grid, one panel per query kind."""
    fig = MplFigure(figsize=(4.2 * max(1, len(lds.sweep)), 4.2))
    kinds = list(lds.sweep)
    axes = fig.subplots(1, max(1, len(kinds)), squeeze=False)[0]
    for ax, kind in zip(axes, kinds, strict=False):
        for i, (method, curve) in enumerate(lds.sweep[kind].items()):
            color = f"C{i}"
            ax.plot(curve.relative_damping, curve.val, color=color, label=f"{method} (val)")
            ax.plot(curve.relative_damping, curve.test, color=color, linestyle="--", label=f"{method} (test)")
        ax.set_xscale("log")
        ax.set_xlabel("lambda / (trace(Phi^T Phi) / k)")
        ax.set_ylabel("mean LDS")
        ax.set_title(f"{kind} queries", loc="left", fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.18, 1, 1))
    return fig


def build_report(
    cfg: DTRAKExperimentConfig,
    result: DTRAKResult,
    *,
    queries: Tensor,
    kinds: np.ndarray,
    val: np.ndarray,
    train: ImageDataset,
    method_scores: Mapping[str, np.ndarray],
    counterfactual_images: Tensor | None,
) -> Report:
    """The report of ``result``; ``queries`` (real then generated, their ``kinds`` and validation mask
    ``val``), the training set and every method's ``(n_lambda, n_q, n_train)`` scores give the influencer
    galleries, ``counterfactual_images`` the retraining grid."""
    lds = result.lds
    report = Report(
        "D-TRAK vs TRAK: data attribution for a diffusion model",
        subtitle="Zheng et al., ICLR 2024, at small scale on a CPU",
        meta={"data": cfg.data, "seed": cfg.seed, "run": "quick" if cfg.quick else "full", "n_train": len(train)},
    )
    headline: dict[str, Any] = {}
    for kind in lds.methods:
        for method in ("TRAK", "D-TRAK", "pixel similarity"):
            if method in lds.methods[kind]:
                headline[f"LDS {method} ({kind})"] = lds.methods[kind][method].lds.mean
        ceiling = lds.noise_ceiling.get(kind)
        if ceiling:
            headline[f"noise ceiling ({kind})"] = ceiling.mean
    summary = Section(
        "summary",
        "Summary",
        intro=f"{len(train)} {cfg.data} images ({cfg.image_size}x{cfg.image_size}), DDPM preset `{cfg.preset}` "
        f"({result.model.n_params:,} parameters), K={cfg.n_timesteps} timesteps, k={cfg.proj_dim} "
        f"({cfg.projector}), {cfg.n_subsets} subsets x {cfg.n_seeds} seeds. lambda is chosen on half of each "
        "query set; every LDS shown is on the other half.",
    )
    if cfg.quick:
        summary.add(Text("Quick mode: tiny models and few subsets; the numbers are a smoke test.", tone="note"))
    summary.add(KeyValue(headline))
    curve = result.training
    summary.add(
        Figure(
            training_curves([{"step": s, "loss": v} for s, v in zip(curve.steps, curve.loss, strict=True)], ["loss"]),
            caption=f"Training loss of the attributed DDPM ({cfg.train_recipe} recipe, "
            + (f"{cfg.train_steps} steps" if cfg.train_steps else f"{cfg.train_epochs} epochs")
            + f"; the last tenth is {100 * curve.last_tenth_drop:.1f}% below the tenth before: "
            + ("plateau" if curve.plateau else "not yet a plateau")
            + f"). Features at the {cfg.featurize_weights} weights.",
        )
    )
    report.add(summary)
    lds_section = Section(
        "lds",
        "Linear datamodeling score",
        intro="Spearman correlation, across retrained subset models, between the summed scores of a subset and "
        "the model output (minus the query's diffusion loss), per query; mean over test queries with 95% "
        "bootstrap intervals over queries and over subsets. The noise ceiling is the LDS that one training "
        "seed's measured losses reach against another seed's.",
    )
    lds_section.add(Table(lds_rows(lds), caption="LDS (test queries, lambda chosen on validation queries)."))
    paired_rows = [
        {"query kind": kind, "difference": name, "mean [95% CI]": fmt_ci(ci)}
        for kind, pairs in lds.paired.items()
        for name, ci in pairs.items()
    ]
    if paired_rows:
        lds_section.add(
            Table(paired_rows, caption="Paired differences of per-query LDS (CI above 0: the first is better).")
        )
    for kind in lds.methods:
        bars = {m: r.lds for m, r in lds.methods[kind].items()}
        lds_section.add(
            Figure(metric_bars(bars, ylabel="LDS", title=f"{kind} queries"), caption=f"LDS, {kind} queries.")
        )
    lds_section.add(Figure(sweep_figure(lds), caption="lambda sweeps: validation (solid) and test (dashed) LDS."))
    report.add(lds_section)
    report.add(_study_section(result))
    report.add(_gallery_section(cfg, queries, kinds, val, train, method_scores, lds))
    if result.counterfactual.n_queries and counterfactual_images is not None:
        report.add(_counterfactual_section(result.counterfactual, counterfactual_images))
    setup = Section("setup", "Setup and timings")
    setup.add(
        Text(
            f"Command: `genprov reproduce dtrak --data {cfg.data} --seed {cfg.seed}{' --quick' if cfg.quick else ''} "
            "--out DIR`. The LDS benchmark (masks, losses, queries) is in `lds_benchmark.npz`; score any method "
            "against it with `genprov trak lds`."
        ),
        KeyValue(dict(result.timings_seconds), caption="seconds per stage"),
        Table([{"field": k, "value": str(v)} for k, v in cfg.to_dict().items()], caption="configuration"),
    )
    report.add(setup)
    return report


def _study_section(result: DTRAKResult) -> Section:
    section = Section(
        "scale",
        "How the comparison depends on the benchmark and the features",
        intro="Left out of the headline table: the same LDS with fewer subsets or one training seed per subset "
        "(ground truth noise), and TRAK / D-TRAK with other feature settings (k, K, projector) on the same "
        "benchmark.",
    )
    size_rows = [{"subsets": r.subsets, "seeds": r.seeds, **r.mean_lds} for r in result.lds_vs_benchmark_size]
    section.add(Table(size_rows, caption="Mean test LDS vs benchmark size (subsets x seeds averaged)."))
    if result.variant_study:
        rows = []
        for row in result.variant_study:
            if isinstance(row, VariantLDSRow):
                rows.append({k: (fmt_ci(v) if isinstance(v, MeanCI) else v) for k, v in row.to_dict().items()})
            else:
                rows.append(
                    {"setting": row.setting, "method": row.method, "paired difference": fmt_ci(row.paired_difference)}
                )
        section.add(
            Table(
                rows,
                caption="Feature variants (lambda chosen on validation queries). Every setting's test LDS is shown: "
                "picking the best row by it would be post hoc (chosen on test); the pick below is made on the "
                "validation queries. 'unrelated feature cosine': mean cosine between distinct training examples' "
                "features (shared noise raises it).",
            )
        )
    chosen_rows = [
        {"query kind": kind, "method": method, "setting": c.setting, "val LDS": c.val_lds, "test LDS": fmt_ci(c.lds)}
        for kind, per_method in result.chosen_on_validation.items()
        for method, c in per_method.items()
    ]
    section.add(Table(chosen_rows, caption="Feature setting (K, k, projector, noise) chosen on validation queries."))
    return section


def _gallery_section(
    cfg: DTRAKExperimentConfig,
    queries: Tensor,
    kinds: np.ndarray,
    val: np.ndarray,
    train: ImageDataset,
    method_scores: Mapping[str, np.ndarray],
    lds: LDSResult,
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
            scores = np.asarray(method_scores[method][lds.chosen_index(method)])[col]
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


def _counterfactual_section(cf: CounterfactualResult, images: Tensor) -> Section:
    rows = [
        {
            "removed": method,
            "pixel l2 [95% CI]": fmt_ci(m.pixel_l2),
            "feature cosine [95% CI]": fmt_ci(m.feature_cosine),
        }
        for method, m in cf.methods.items()
    ]
    columns = " | ".join(cf.columns)
    return Section(
        "counterfactual",
        "Counterfactual retraining",
        intro=f"Remove the top-{cf.k_removed} positive influencers of a generated image (or as many random "
        "images), retrain with the same recipe and regenerate from the same noise. A larger change (pixel l2 up, "
        "classifier-feature cosine down) than random removal means the attribution found images the generation "
        "depends on.",
    ).add(
        Table(rows, caption="Change of the regenerated image (mean over queries)."),
        grid_image(images, f"Each row: {columns}.", nrow=len(cf.columns), width_px=360),
    )
