"""The HTML report of ``genprov reproduce similarity-t2i``, built from its typed :class:`SimilarityT2IResult`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genprov.attribution.data.similarity import SoftCalibration
from genprov.eval.customization import BenchFeatures, CustomizationBench, similarity_scores
from genprov.experiments.quickstart import grid_image
from genprov.experiments.similarity.report import soft_gallery
from genprov.experiments.similarity.results import SoftRow
from genprov.experiments.similarity_t2i.config import SimilarityT2IExperimentConfig
from genprov.experiments.similarity_t2i.results import SimilarityT2IResult
from genprov.report import KeyValue, Report, Section, Table, Text

__all__ = ["build_report"]


def _kind_table(result: SimilarityT2IResult) -> list[dict[str, Any]]:
    """One row per kind of customization and extractor (see the summary's caption)."""
    table = []
    for kind, row in result.kinds.items():
        for name in result.tuning:
            entry: dict[str, Any] = {"kind": kind, "cases": row.cases, "extractor": name}
            for variant in ("untuned", "tuned"):
                try:
                    metrics = result.retrieval_row(name, variant, case=kind).metrics
                except KeyError:  # no unseen case of this kind
                    entry[f"{variant} mAP"] = entry[f"{variant} recall@10"] = float("nan")
                    continue
                entry[f"{variant} mAP"], entry[f"{variant} recall@10"] = metrics.mean_ap, metrics.recall_10
            control = [c for c in row.control if (c.extractor, c.features, c.protocol) == (name, "untuned", "A")]
            entry["control mAP"] = control[0].metrics.mean_ap if control else float("nan")
            entry["NN rate (pixels)"] = row.influence_strength.exemplar_nn_rate
            entry["base NN rate (pixels)"] = row.base_pixel_nn_rate
            entry["NN rate (features)"] = row.feature_nn_rate.get(name, float("nan"))
            table.append(entry)
    return table


def build_report(
    cfg: SimilarityT2IExperimentConfig,
    result: SimilarityT2IResult,
    bench: CustomizationBench,
    shown: tuple[BenchFeatures, BenchFeatures, dict[str, SoftRow]],
    control: Tensor,
    owner: Sequence[int],
) -> Report:
    """The report of ``result``: ``bench`` gives the images, ``shown`` the gallery extractor's untuned and tuned
    features with their soft rows, ``control`` / ``owner`` the base pipeline's paired samples and their cases."""
    report = Report(
        "Feature-similarity attribution on real text-to-image customizations",
        subtitle="Wang et al., ICCV 2023, with DreamBooth LoRA customizations of a small text-to-image pipeline",
        meta={"dataset": cfg.data, "seed": cfg.seed, "quick": cfg.quick, "pool": len(bench.pool)},
    )
    chance = result.chance_unseen
    summary = Section(
        "summary",
        "Summary",
        intro="A base text-to-image pipeline is trained on the pool; each customization adds a LoRA and the new token "
        f"{cfg.new_token!r} learnt from one held-out exemplar (object cases) or, as a style, from a few exemplars of "
        "different classes under one transform (style cases, one prompt per exemplar), with prior preservation, and "
        "its samples from the token's prompts are attributed by retrieving the exemplars among the pool. Headline: "
        "unseen-class queries of every case, protocol A; each kind on its own below.",
    )
    if cfg.quick:
        summary.add(Text("Quick mode: tiny pipeline, few cases and short training; numbers are rough.", tone="note"))
    strength = result.influence_strength
    summary.add(
        KeyValue(
            {
                "exemplar is the pixel NN": strength.exemplar_nn_rate,
                "near copies": strength.near_copy_rate,
                "chance mAP": chance["A"].mean_ap,
                "every method > 3x chance": result.claims.every_method_far_above_chance,
                "control < 3x chance": result.claims.control_near_chance,
                "calibration lowers NLL": result.claims.calibration_lowers_nll,
            }
        )
    )
    head: list[dict[str, Any]] = []
    for name in result.tuning:
        row: dict[str, Any] = {"extractor": name}
        for variant in ("untuned", "tuned"):
            row[f"{variant} mAP"] = result.retrieval_row(name, variant).metrics.mean_ap
            row[f"{variant} recall@10"] = result.retrieval_row(name, variant).metrics.recall_10
        row["control mAP"] = result.claims.per_extractor[name].control_map
        head.append(row)
    summary.add(Table(head, caption="Unseen classes, protocol A.", highlight={"tuned mAP": "max"}))
    summary.add(
        Table(
            _kind_table(result),
            caption="Each kind of customization on its own: unseen classes, protocol A (NaN: no unseen case of the "
            "kind); the control restricted to the kind's cases; the pixel influence of its samples and of the paired "
            "base samples; NN rate (features): in the extractor's untuned features.",
        )
    )
    report.add(summary)

    cases = Section(
        "cases",
        "Influence of each customization",
        intro="Share of a case's samples whose nearest neighbour among pool + exemplar is the exemplar (pixels, and "
        "each extractor's untuned features), beside the base pipeline's samples from the same seeds and the prompt "
        "without the token; distances are RMS in [-1, 1] pixels.",
    )
    cases.add(
        Table(
            [
                {
                    **{k: v for k, v in dataclasses.asdict(c).items() if k not in ("feature_nn_rate", "class_")},
                    "class": c.class_,
                    **{f"NN rate {n}": r for n, r in c.feature_nn_rate.items()},
                }
                for c in result.cases
            ],
            caption="Per object customization.",
        )
    )
    if result.style_cases:
        cases.add(
            Table(
                [
                    {
                        **{k: v for k, v in dataclasses.asdict(c).items() if k not in ("feature_nn_rate", "prompts")},
                        "prompts": " | ".join(c.prompts),
                        **{f"NN rate {n}": r for n, r in c.feature_nn_rate.items()},
                    }
                    for c in result.style_cases
                ],
                caption="Per style customization: exemplars of several classes under one style; a sample counts when "
                "its nearest neighbour is any of them.",
            )
        )
    owner_arr = np.asarray(owner, dtype=np.int64)
    objects = [i for i, c in enumerate(bench.cases) if c.kind == "object"]
    styles = [i for i, c in enumerate(bench.cases) if c.kind == "style"]
    for i in [*objects[:4], *styles[:2]]:
        paired = control[torch.as_tensor(np.flatnonzero(owner_arr == i))] if len(owner) else control[:0]
        grid = torch.cat([bench.exemplars[torch.as_tensor(bench.ex_rows[i])], paired, bench.samples[i][:8]])
        cases.add(
            grid_image(
                grid,
                f"{bench.cases[i].id} ({bench.roles[i]}, {bench.cases[i].prompt!r}): "
                + (
                    "exemplar"
                    if len(bench.ex_rows[i]) == 1
                    else f"{len(bench.ex_rows[i])} exemplars ({bench.cases[i].style})"
                )
                + f", {len(paired)} base samples, then customized samples.",
                nrow=len(grid),
                width_px=min(900, 60 * len(grid)),
            )
        )
    report.add(cases)

    full = Section("retrieval", "Retrieval metrics, every split")
    full.add(
        Table(
            [
                {
                    "extractor": r.extractor,
                    "features": r.features,
                    "protocol": r.protocol,
                    "split": r.split,
                    "queries": r.queries,
                    **r.metrics.columns(),
                }
                for r in result.retrieval
                if r.case == "all"
            ],
            caption="Protocol A: pool + the query's own exemplar; B: pool + every exemplar.",
        ),
        Table(
            [
                {"extractor": r.extractor, "features": r.features, "protocol": r.protocol, **r.metrics.columns()}
                for r in result.control
            ],
            caption="Negative control: the base pipeline's samples, positives = the paired case's exemplar.",
        ),
        Table(
            [
                {"extractor": r.extractor, "features": r.features, "calibration": when, **dataclasses.asdict(m)}
                for r in result.soft_attribution
                for when, m in (("before", r.before), ("after", r.after))
            ],
            caption="Soft attribution on unseen queries (protocol B), calibrated on the validation cases.",
            float_format=".4g",
        ),
    )
    report.add(full)

    raw, tuned, soft_by = shown
    gallery = Section("gallery", f"Top-k with soft shares ({result.gallery_extractor})")
    candidates = torch.cat([bench.pool, bench.exemplars])
    cal = {v: SoftCalibration(soft_by[v].after.inv_tau, soft_by[v].after.bias) for v in soft_by}
    for i in bench.role_cases("unseen")[: cfg.gallery_queries]:
        s_raw = similarity_scores(raw.samples[i][:1], torch.cat([raw.pool, raw.exemplars]))[0]
        s_tuned = similarity_scores(tuned.samples[i][:1], torch.cat([tuned.pool, tuned.exemplars]))[0]
        gallery.add(
            soft_gallery(
                bench.samples[i][0],
                candidates,
                s_raw,
                [len(bench.pool) + int(r) for r in bench.ex_rows[i]],
                cal["untuned"],
                k=cfg.gallery_k,
                label="untuned",
                extra=[("tuned", s_tuned, cal["tuned"])],
                caption=f"{bench.cases[i].id}: {bench.cases[i].prompt!r}, sample 0",
            )
        )
    report.add(gallery)

    setup = Section("setup", "Setup and timings")
    setup.add(
        KeyValue(dict(result.timings_seconds), caption="seconds per stage"),
        KeyValue(dataclasses.asdict(result.model), caption="pipeline and customizations"),
        Table([{"field": k, "value": str(v)} for k, v in cfg.to_dict().items()], caption="configuration"),
    )
    if result.skipped_extractors:
        setup.add(Text(f"Skipped extractors: {dict(result.skipped_extractors)}", tone="warning"))
    report.add(setup)
    return report
