"""The runner of ``genprov reproduce similarity-t2i`` (registered in :data:`~genprov.experiments.base.EXPERIMENTS`):
trains (or opens) the base pipeline, customizes it once per case with a DreamBooth LoRA, and measures feature
similarity attribution of the customized samples with the code of ``reproduce similarity``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from genprov.data import ImageDataset
from genprov.eval.customization import (
    BenchFeatures,
    Customization,
    CustomizationBench,
    case_roles,
    exemplar_nn_rates,
)
from genprov.exceptions import DataError
from genprov.experiments.base import EXPERIMENTS, Laps, start_run
from genprov.experiments.similarity.customization import influence_strength
from genprov.experiments.similarity.results import (
    BenchmarkInfo,
    ControlRow,
    DataInfo,
    InfluenceStrength,
    RetrievalMetrics,
)
from genprov.experiments.similarity.run import (
    PROTOCOLS,
    ExtractorRows,
    chance_unseen,
    check_claims,
    evaluate_extractors,
    load_pool_and_heldout,
    protocol_scores,
    retrieval_metrics,
)
from genprov.experiments.similarity_t2i.config import SimilarityT2IExperimentConfig
from genprov.experiments.similarity_t2i.customization import (
    build_t2i_customizations,
    case_influence,
    control_samples,
    exemplar_prompts,
    object_prompts,
)
from genprov.experiments.similarity_t2i.report import build_report
from genprov.experiments.similarity_t2i.results import (
    CaseRow,
    KindRow,
    SimilarityT2IResult,
    StyleCaseRow,
    T2IBenchModel,
)
from genprov.models.t2i import captions_for, captions_from_labels, load_sized_pipeline, quick_configs, train_t2i

__all__ = ["kind_control", "run_similarity_t2i"]

#: Case kinds, in the order their rows are reported.
KINDS = ("object", "style")


def _base_pipeline(
    cfg: SimilarityT2IExperimentConfig, pool: ImageDataset, out: Path, show: bool | None
) -> tuple[Path, bool]:
    """The base pipeline's folder and whether this run trained it (on the pool, resumably)."""
    if cfg.base_pipeline is not None:
        folder = Path(cfg.base_pipeline)
        load_sized_pipeline(folder, cfg.image_size, option="base_pipeline")
        return folder, False
    model_cfg, train_cfg = quick_configs(cfg.base, image_size=cfg.image_size, channels=pool.n_channels)
    captions = captions_for(cfg.captions, pool)
    return train_t2i(model_cfg, train_cfg, pool.images, captions, out / "base", show_progress=show).folder, True


def kind_control(feats: BenchFeatures, bench: CustomizationBench, kind: str) -> dict[str, RetrievalMetrics]:
    """The negative control of ``kind``'s cases alone: per protocol, the mean metrics of the control queries paired
    with a case of that kind (positives: its exemplars; candidates as ``reproduce similarity``'s control rows:
    pool + the case's exemplars under ``"A"``, pool + every exemplar under ``"B"``). Empty without such queries."""
    picked = [j for j, c in enumerate(bench.control_case.tolist()) if bench.cases[c].kind == kind]
    if not picked:
        return {}
    out = {}
    for protocol in PROTOCOLS:
        per_query: dict[str, list[np.ndarray]] = {}
        for j in picked:
            scores, positives = protocol_scores(
                feats, bench, int(bench.control_case[j]), feats.control[j : j + 1], protocol
            )
            for name, values in retrieval_metrics(scores, positives).items():
                per_query.setdefault("mAP" if name == "ap" else name, []).append(values)
        out[protocol] = RetrievalMetrics.from_dict({k: float(np.concatenate(v).mean()) for k, v in per_query.items()})
    return out


def _kind_rows(
    bench: CustomizationBench,
    folder: Path,
    heldout: Tensor,
    influence: Sequence[tuple[float, float, float, float]],
    feature_rates: Mapping[str, Sequence[float]],
    extractor_rows: ExtractorRows,
) -> dict[str, KindRow]:
    """Each kind of case present, on its own (``influence``: :func:`case_influence` of every case)."""
    out = {}
    for kind in KINDS:
        idx = [j for j, c in enumerate(bench.cases) if c.kind == kind]
        if not idx:
            continue
        base_rates = [influence[j][1] for j in idx if not np.isnan(influence[j][1])]
        control = [
            ControlRow(extractor=name, features=variant, protocol=protocol, metrics=metrics)
            for name, (raw, tuned, _) in extractor_rows.features.items()
            for variant, feats in (("untuned", raw), ("tuned", tuned))
            for protocol, metrics in kind_control(feats, bench, kind).items()
        ]
        out[kind] = KindRow(
            kind=kind,
            cases=len(idx),
            roles={r: sum(bench.roles[j] == r for j in idx) for r in ("tune", "val", "unseen")},
            influence_strength=InfluenceStrength(
                **influence_strength(bench.pool, [bench.cases[j] for j in idx], folder, heldout)
            ),
            base_pixel_nn_rate=float(np.mean(base_rates)) if base_rates else float("nan"),
            feature_nn_rate={name: float(np.mean([rates[j] for j in idx])) for name, rates in feature_rates.items()},
            control=tuple(control),
        )
    return out


def _case_row(
    cfg: SimilarityT2IExperimentConfig,
    case: Customization,
    role: str,
    influence: tuple[float, float, float, float],
    feature_rates: Mapping[str, float],
    class_captions: Sequence[str],
) -> CaseRow | StyleCaseRow:
    """The row of one case: a :class:`StyleCaseRow` for a style case, else a :class:`CaseRow`."""
    nn_rate, base_rate, to_ex, base_to_ex = influence
    measured: dict[str, Any] = {
        "pixel_nn_rate": nn_rate,
        "base_pixel_nn_rate": base_rate,
        "to_exemplar": to_ex,
        "base_to_exemplar": base_to_ex,
        "feature_nn_rate": dict(feature_rates),
    }
    if case.kind == "style":
        prompts, _ = exemplar_prompts(cfg, case.kind, [class_captions[i] for i in case.source_indices])
        return StyleCaseRow(
            id=case.id, role=role, style=str(case.style), classes=case.classes, prompts=tuple(prompts), **measured
        )
    return CaseRow(id=case.id, role=role, class_=case.classes[0], prompt=case.prompt or "", **measured)


@EXPERIMENTS.register("similarity-t2i", config=SimilarityT2IExperimentConfig)
def run_similarity_t2i(
    config: SimilarityT2IExperimentConfig,
    out_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    show_progress: bool | None = None,
) -> SimilarityT2IResult:
    """Run similarity attribution on real text-to-image customizations; write ``results.json`` and ``report.html``.

    Registered as the ``"similarity-t2i"`` experiment (``genprov reproduce similarity-t2i``).

    Args:
        config: What to run (see :class:`SimilarityT2IExperimentConfig`).
        out_dir: Output folder (``base/``, ``customizations/``, ``control/``, ``models/`` and ``features/`` are cached
            there; a re-run resumes).
        data_root: Folder of dataset files (overrides ``config.data_root``).
        show_progress: Progress bars.

    Returns:
        The typed results (``to_dict()`` is ``results.json``).
    """
    cfg, out = start_run(config, out_dir, data_root)
    lap = Laps()
    pool, heldout = load_pool_and_heldout(cfg)
    assert heldout.labels is not None
    base_dir, trained = _base_pipeline(cfg, pool, out, show_progress)
    lap("base pipeline")

    folder = out / "customizations"
    class_captions = captions_from_labels(heldout)
    cases = build_t2i_customizations(
        cfg, base_dir, heldout.images, heldout.labels.numpy(), class_captions, folder, show_progress=show_progress
    )
    lap("customizations")
    control, owner = control_samples(cfg, base_dir, cases, class_captions, out)
    lap("control samples")
    roles = case_roles(cases, cfg.seen_classes, cfg.n_val_classes, cfg.seed)
    if "unseen" not in roles or "tune" not in roles or "val" not in roles:
        raise DataError(
            f"The benchmark needs tuning, validation and unseen cases; got roles {sorted(set(roles))}. Use more "
            "customizations (--set n_object=... or n_style_cases=...)."
        )
    keep = [k for k, j in enumerate(owner) if roles[j] == "unseen"]
    bench = CustomizationBench.from_folder(
        folder, pool.images, cases, roles, control=control[keep], control_case=[owner[k] for k in keep]
    )
    strength = influence_strength(bench.pool, bench.cases, folder, heldout.images)
    chance = chance_unseen(bench, cfg.seed)
    lap("influence strength")

    rows = evaluate_extractors(cfg, pool, bench, out, lap, show_progress)
    feature_rates = {name: exemplar_nn_rates(feats[0], bench) for name, feats in rows.features.items()}
    owner_arr = np.asarray(owner, dtype=np.int64)
    influence = [
        case_influence(pool.images, case, folder, control[np.flatnonzero(owner_arr == j)] if len(owner) else control)
        for j, case in enumerate(cases)
    ]
    case_rows = [
        _case_row(cfg, case, roles[j], influence[j], {n: r[j] for n, r in feature_rates.items()}, class_captions)
        for j, case in enumerate(cases)
    ]
    result = SimilarityT2IResult(
        experiment="similarity-t2i",
        config=cfg.to_dict(),
        data=DataInfo(
            name=pool.name,
            n_pool=len(pool),
            n_heldout=len(heldout),
            image_size=cfg.image_size,
            pool_fingerprint=pool.fingerprint(),
        ),
        model=T2IBenchModel(
            base_pipeline=str(base_dir),
            trained_here=trained,
            token=cfg.new_token,
            example_prompt=object_prompts(cfg, class_captions[cases[0].source_indices[0]])[0],
            lora_rank=cfg.lora_rank,
            lora_steps=cfg.lora_steps,
        ),
        benchmark=BenchmarkInfo(
            folder=str(folder),
            cases=len(cases),
            roles={r: roles.count(r) for r in ("tune", "val", "unseen")},
            queries={
                r: int(sum(len(s) for s, rr in zip(bench.samples, roles, strict=True) if rr == r))
                for r in ("tune", "val", "unseen")
            },
            exemplars=len(bench.exemplars),
            control_queries=len(bench.control),
        ),
        influence_strength=InfluenceStrength(**strength),
        cases=tuple(r for r in case_rows if isinstance(r, CaseRow)),
        style_cases=tuple(r for r in case_rows if isinstance(r, StyleCaseRow)),
        kinds=_kind_rows(bench, folder, heldout.images, influence, feature_rates, rows),
        chance_unseen=chance,
        retrieval=rows.retrieval,
        control=rows.control,
        hubness=rows.hubness,
        soft_attribution=rows.soft,
        tuning=rows.tuning,
        skipped_extractors=rows.skipped,
        gallery_extractor=rows.gallery_extractor,
        claims=check_claims(rows.retrieval, rows.control, rows.soft, chance),
        timings_seconds=dict(lap.timings),
    )
    report = build_report(cfg, result, bench, rows.features[result.gallery_extractor], control, owner)
    lap("report")
    result = dataclasses.replace(result, timings_seconds=dict(lap.timings))
    result.write_json(out / "results.json")
    report.write(out, filename="report.html")
    return result
