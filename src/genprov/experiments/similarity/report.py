"""The HTML report of ``genprov reproduce similarity``, built from its typed :class:`SimilarityResult`, and the
soft-attribution gallery it (and the demo) shows."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genprov.attribution.data.similarity import SimilarityConfig, SoftCalibration, soft_attribution
from genprov.eval.customization import BenchFeatures, CustomizationBench, similarity_scores
from genprov.experiments.quickstart import grid_image
from genprov.experiments.similarity.config import SimilarityExperimentConfig
from genprov.experiments.similarity.results import SimilarityResult, SoftRow
from genprov.report import Figure, Gallery, GalleryRow, KeyValue, Report, Section, Table, Text
from genprov.report.figures import metric_bars

__all__ = ["build_report", "soft_gallery"]


def soft_gallery(
    query: Tensor,
    candidates: Tensor,
    scores: np.ndarray | Tensor,
    exemplar_rows: Sequence[int],
    calibration: SoftCalibration,
    *,
    k: int = 8,
    caption: str = "",
    label: str = "top-k",
    extra: Sequence[tuple[str, np.ndarray | Tensor, SoftCalibration]] = (),
) -> Gallery:
    """A query beside its exemplars and its top-k candidates with their soft shares of influence.

    Args:
        query: (C, H, W) the generated image.
        candidates: (n, C, H, W) the images ranked (pool + exemplars).
        scores: (n,) similarities of the query to the candidates.
        exemplar_rows: Rows of the query's exemplars in ``candidates`` (captioned "exemplar").
        calibration: The soft attribution's scalars.
        k: Candidates shown.
        caption: Shown under the gallery.
        label: Heading of the top-k row.
        extra: More ``(label, scores, calibration)`` rankings of the same candidates (e.g. tuned features).
    """
    ex = {int(r) for r in exemplar_rows}
    ex_idx = torch.as_tensor(sorted(ex), dtype=torch.long)
    rows = [GalleryRow.from_tensors("exemplars (ground truth)", candidates[ex_idx], captions=["exemplar"] * len(ex))]
    for row_label, s, cal in ((label, scores, calibration), *extra):
        row = torch.as_tensor(np.asarray(s, dtype=np.float64)).reshape(1, -1)
        shares = soft_attribution(row, cal.inv_tau, cal.bias)[0]
        top = torch.sort(shares, descending=True, stable=True).indices[: min(k, len(shares))]
        captions = [("exemplar ✓ " if int(i) in ex else "") + f"#{int(i)}" for i in top]
        rows.append(
            GalleryRow.from_tensors(
                f"{row_label} (soft share)", candidates[top], scores=shares[top], captions=captions, tone="positive"
            )
        )
    return Gallery(rows, query=query, query_caption="generated", caption=caption)


# ------------------------------------------------------------------------------------------ report


def build_report(
    cfg: SimilarityExperimentConfig,
    result: SimilarityResult,
    bench: CustomizationBench,
    shown: tuple[BenchFeatures, BenchFeatures, dict[str, SoftRow]],
    out: Path,
) -> Report:
    """The report of ``result``; ``bench`` gives the images, ``shown`` the gallery extractor's untuned and
    tuned features with their soft-attribution rows (``"untuned"``, ``"tuned"``), ``out`` the run folder."""
    shown_name = result.gallery_extractor
    report = Report(
        "Feature-similarity data attribution on a customization benchmark",
        subtitle="Wang et al., ICCV 2023 (Evaluating data attribution for text-to-image models), at small scale",
        meta={"dataset": cfg.data, "seed": cfg.seed, "quick": cfg.quick, "pool": len(bench.pool)},
    )
    claims = result.claims
    chance = result.chance_unseen
    strength = result.influence_strength
    summary = Section(
        "summary",
        "Summary",
        intro="A base DDPM is trained on the pool; each customized copy is fine-tuned on exemplars that are not in "
        "the pool, so its samples are influenced by them by construction. Attribution = retrieving the exemplars "
        "among the pool by feature similarity. Headline numbers: unseen-class queries, protocol A (pool + the "
        "query's own exemplars).",
    )
    if cfg.quick:
        summary.add(Text("Quick mode: small pool, few cases and short training; numbers are rough.", tone="note"))
    summary.add(
        KeyValue(
            {
                "exemplar is the pixel NN": strength.exemplar_nn_rate,
                "near copies": strength.near_copy_rate,
                "chance mAP": chance["A"].mean_ap,
                "every method > 3x chance": claims.every_method_far_above_chance,
                "control < 3x chance": claims.control_near_chance,
                "calibration lowers NLL": claims.calibration_lowers_nll,
            },
            notes={
                "exemplar is the pixel NN": "share of samples whose nearest pool+exemplar image (pixels) is an exemplar",
                "near copies": "samples closer to an exemplar than 1/4 of the held-out-to-pool distance",
            },
        )
    )
    head = []
    for name in result.tuning:
        row: dict[str, Any] = {"extractor": name}
        for variant in ("untuned", "tuned"):
            columns = result.retrieval_row(name, variant).metrics.columns()
            row.update({f"{variant} {metric}": value for metric, value in columns.items()})
        head.append(row)
    head.append({"extractor": "chance", **{f"untuned {m}": v for m, v in chance["A"].columns().items()}})
    summary.add(
        Table(head, caption="Unseen classes, protocol A: untuned vs tuned features.", highlight={"tuned mAP": "max"})
    )
    bars = {}
    for name in result.tuning:
        for variant in ("untuned", "tuned"):
            bars[f"{name} ({variant})"] = float(result.retrieval_row(name, variant).metrics.mean_ap)
    bars["chance"] = chance["A"].mean_ap
    summary.add(Figure(metric_bars(bars, ylabel="mAP"), caption="mAP on unseen-class queries, protocol A."))
    report.add(summary)

    bench_section = Section(
        "benchmark",
        "The customization benchmark",
        intro=f"{result.benchmark.cases} customized models ({cfg.n_object} object, {cfg.n_style} style), "
        f"{cfg.finetune_steps} fine-tuning steps at lr {cfg.finetune_lr:g} with prior preservation (half of each batch "
        f"is base-model samples), {cfg.n_samples} samples each. Roles: {dict(result.benchmark.roles)}.",
    )
    bench_section.add(KeyValue(dataclasses.asdict(strength)))
    folder = out / "customizations"
    for i in [j for j, r in enumerate(bench.roles) if r == "unseen"][:3]:
        case = bench.cases[i]
        grid = torch.cat([case.exemplar_images(folder), bench.samples[i][:12]])
        bench_section.add(
            grid_image(
                grid,
                f"{case.id} ({case.kind}{', ' + case.style if case.style else ''}): exemplar(s), then samples.",
                nrow=len(grid),
                width_px=min(900, 60 * len(grid)),
            )
        )
    report.add(bench_section)

    full = Section(
        "retrieval",
        "Retrieval metrics, every split",
        intro="Protocol A: candidates = pool + the query's "
        "own exemplars; B: pool + every exemplar. 'tune' cases trained the mapper (optimistic for tuned), "
        "'val' chose its early stop and the calibration, 'unseen' is the test.",
    )
    retrieval_rows = [
        {
            "extractor": r.extractor,
            "features": r.features,
            "protocol": r.protocol,
            "split": r.split,
            "case": r.case,
            "queries": r.queries,
            **r.metrics.columns(),
        }
        for r in result.retrieval
    ]
    full.add(Table(retrieval_rows, caption="All retrieval rows."))
    full.add(
        Table(
            [
                {"extractor": r.extractor, "features": r.features, "protocol": r.protocol, **r.metrics.columns()}
                for r in result.control
            ],
            caption="Negative control: samples of the un-customized base model, positives = an unseen case's "
            f"exemplars (chance mAP: A {chance['A'].mean_ap:.4f}, B {chance['B'].mean_ap:.4f}).",
        )
    )
    report.add(full)

    hub = Section(
        "hubness",
        "Hubness and tuning",
        intro="Hub statistics of the unseen queries' protocol-B rankings "
        "(k = 10). items_top1_share: share of unseen queries whose top-1 is one of the exemplars the mapper "
        "was tuned on (the failure mode where tuned exemplars become hubs). The tuning procedure is reconstructed: "
        "the paper's code (PeterWang512/GenDataAttribution) ships the tuned weights and the mapper's form (a linear "
        "layer initialised to the identity, one for real and one for synthetic images, networks.py:4-7, 46-56) but "
        "not its training (no training loop; README.md:80, train and validation sets not released). The "
        "contrastive objective, optimiser and schedule here are genprov's reading of the paper, and two parts are "
        "genprov's additions: the penalty toward the identity (identity_weight) and early stopping on validation "
        "mAP with step 0 (the identity, i.e. the untuned features) as a candidate, so a mapper that does not beat "
        "the untuned features on validation is not kept.",
    )
    hub.add(
        Table(
            [{"extractor": h.extractor, "features": h.features, **h.stats} for h in result.hubness],
            caption="Hub statistics.",
        )
    )
    hub.add(
        Table(
            [
                {
                    "extractor": n,
                    "dim": t.dim,
                    "chosen": t.chosen,
                    "best_step": t.best_step,
                    "untuned_val_mAP": t.untuned_val_map,
                    "tuned_val_mAP": t.tuned_val_map,
                }
                for n, t in result.tuning.items()
            ],
            caption="Tuning: validation mAP at the identity (step 0) and of the kept mapper.",
        )
    )
    report.add(hub)

    soft_rows = [
        {"extractor": r.extractor, "features": r.features, "calibration": when, **dataclasses.asdict(metrics)}
        for r in result.soft_attribution
        for when, metrics in (("before", r.before), ("after", r.after))
    ]
    soft_section = Section(
        "soft",
        "Soft attribution",
        intro="p_i ∝ relu(exp(inv_tau (s_i - max s)) + bias), the two scalars fitted on the validation cases by the "
        "multi-positive likelihood of their exemplars; measured on the unseen cases (protocol B). 'before' uses the "
        f"defaults (inv_tau {SimilarityConfig().inv_tau:g}, bias 0). remaining_influence: share outside the top "
        f"{cfg.soft_top_n}.",
    )
    soft_section.add(Table(soft_rows, caption="Soft attribution on unseen queries.", float_format=".4g"))
    report.add(soft_section)

    raw, tuned, soft_by = shown
    gallery = Section(
        "gallery",
        f"Top-k with soft shares ({shown_name})",
        intro=f"Unseen queries, protocol B candidates (pool + all exemplars), {shown_name} features (the extractor "
        "with the best tuned validation mAP); shares from the calibrated soft attribution.",
    )
    candidates = torch.cat([bench.pool, bench.exemplars])
    n_pool = len(bench.pool)
    cal = {v: SoftCalibration(soft_by[v].after.inv_tau, soft_by[v].after.bias) for v in soft_by}
    unseen = [i for i, r in enumerate(bench.roles) if r == "unseen"]
    for i in unseen[: cfg.gallery_queries]:
        q = 0
        s_raw = similarity_scores(raw.samples[i][q : q + 1], torch.cat([raw.pool, raw.exemplars]))[0]
        s_tuned = similarity_scores(tuned.samples[i][q : q + 1], torch.cat([tuned.pool, tuned.exemplars]))[0]
        gallery.add(
            soft_gallery(
                bench.samples[i][q],
                candidates,
                s_raw,
                [n_pool + int(r) for r in bench.ex_rows[i]],
                cal["untuned"],
                k=cfg.gallery_k,
                label="untuned",
                extra=[("tuned", s_tuned, cal["tuned"])],
                caption=f"{bench.cases[i].id} ({bench.cases[i].kind}), sample {q}",
            )
        )
    report.add(gallery)

    setup = Section("setup", "Setup and timings")
    setup.add(
        KeyValue(dict(result.timings_seconds), caption="seconds per stage"),
        Table([{"field": k, "value": str(v)} for k, v in cfg.to_dict().items()], caption="configuration"),
    )
    if result.skipped_extractors:
        setup.add(Text(f"Skipped extractors: {dict(result.skipped_extractors)}", tone="warning"))
    report.add(setup)
    return report
