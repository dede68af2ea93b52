"""The runner of ``genprov reproduce similarity`` (registered in :data:`~genprov.experiments.base.EXPERIMENTS`):
trains the base DDPM, builds the customization benchmark, featurizes it with every extractor, tunes a mapper
per extractor and returns a :class:`SimilarityResult`."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from genprov.attribution.data import (
    FEATURE_EXTRACTORS,
    ClassifierExtractor,
    FeatureExtractor,
    SimCLRConfig,
    SimCLRExtractor,
    hub_statistics,
)
from genprov.attribution.data.similarity import (
    SimilarityConfig,
    SoftCalibration,
    evaluate_soft,
    fit_soft_calibration,
)
from genprov.data import ImageDataset, load_images, load_train_test, save_images
from genprov.eval.customization import (
    BenchFeatures,
    CustomizationBench,
    case_roles,
    protocol_b_scores,
    similarity_scores,
    tune_mapper,
)
from genprov.eval.retrieval import recall_per_query
from genprov.exceptions import DataError, MissingDependencyError
from genprov.experiments.base import EXPERIMENTS, Laps, start_run
from genprov.experiments.similarity.config import ExtractorSettings, SimilarityExperimentConfig
from genprov.experiments.similarity.customization import build_customizations, influence_strength
from genprov.experiments.similarity.report import build_report
from genprov.experiments.similarity.results import (
    BenchmarkInfo,
    Claims,
    ControlRow,
    DataInfo,
    ExtractorClaim,
    HubRow,
    InfluenceStrength,
    RetrievalMetrics,
    RetrievalRow,
    SimilarityResult,
    SoftMetrics,
    SoftRow,
    TuningRow,
    find_row,
)
from genprov.metrics import average_precision
from genprov.models.classifiers import ClassifierConfig, CNNClassifier
from genprov.models.diffusion import DDPM, DDPMConfig, ddpm_sample
from genprov.models.training import default_train_config, train_classifier, train_ddpm
from genprov.utils.io import atomic_save_npz
from genprov.utils.seeding import derive_seed, numpy_rng

__all__ = [
    "PROTOCOLS",
    "RECALL_KS",
    "ExtractorRows",
    "chance_level",
    "chance_unseen",
    "check_claims",
    "evaluate_extractors",
    "load_pool_and_heldout",
    "protocol_scores",
    "retrieval_metrics",
    "run_similarity",
]

log = logging.getLogger(__name__)

#: Recall cut-offs (besides Recall@|exemplars|).
RECALL_KS = (5, 10, 100)
#: Candidate sets: ``"A"`` (pool + the query's own exemplars, as in the paper), ``"B"`` (pool + every exemplar).
PROTOCOLS = ("A", "B")


# ------------------------------------------------------------------------------------------ metrics


def retrieval_metrics(scores: np.ndarray, positives: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-query Recall@5/10/100, Recall@|positives| and AP of one score matrix.

    Args:
        scores: (n_q, n_items) scores, higher = ranked earlier.
        positives: Per query, its positives' indices (non-empty).

    Returns:
        ``{"recall@5", "recall@10", "recall@100", "recall@|E|", "ap"}`` -> (n_q,) float64 (a cut-off above
        ``n_items`` counts as ``n_items``).
    """
    n_items = scores.shape[1]
    out = {f"recall@{k}": recall_per_query(scores, positives, min(k, n_items)) for k in RECALL_KS}
    sizes = sorted({len(p) for p in positives})
    r_e = np.empty(scores.shape[0])
    for size in sizes:
        rows = [i for i, p in enumerate(positives) if len(p) == size]
        r_e[rows] = recall_per_query(scores[rows], [positives[i] for i in rows], min(size, n_items))
    out["recall@|E|"] = r_e
    out["ap"] = average_precision(scores, positives)
    return out


def chance_level(n_items: int, n_positives: int, *, n_draws: int = 200, seed: int = 0) -> dict[str, float]:
    """Expected metrics of a random ranking with ``n_positives`` positives among ``n_items`` items.

    Recall@k is exact (``k / n_items``); mAP is the Monte Carlo mean over ``n_draws`` seeded random rankings.
    """
    rng = numpy_rng(seed, "chance", n_items, n_positives)
    scores = rng.random((n_draws, n_items))
    positives = [np.arange(n_positives)] * n_draws
    out = {f"recall@{k}": min(k, n_items) / n_items for k in RECALL_KS}
    out["recall@|E|"] = min(n_positives, n_items) / n_items
    out["mAP"] = float(average_precision(scores, positives).mean())
    return out


# ------------------------------------------------------------------------------------------ the benchmark


class PoolSettings(Protocol):
    """What :func:`load_pool_and_heldout` reads from a config (the similarity experiments' fields)."""

    @property
    def data(self) -> str: ...
    @property
    def data_root(self) -> str | None: ...
    @property
    def image_size(self) -> int: ...
    @property
    def n_pool(self) -> int: ...
    @property
    def n_heldout(self) -> int | None: ...
    @property
    def seed(self) -> int: ...


def load_pool_and_heldout(cfg: PoolSettings) -> tuple[ImageDataset, ImageDataset]:
    """The retrieval pool (train split) and the held-out images the exemplars come from (test split), labelled.

    Raises:
        DataError: The dataset has no labels (the benchmark needs classes: seen / unseen splits, class nouns).
    """
    pool, heldout = load_train_test(
        cfg.data,
        data_root=cfg.data_root,
        resize=cfg.image_size,
        n_train=cfg.n_pool,
        n_test=cfg.n_heldout,
        seed=cfg.seed,
    )
    if pool.labels is None or heldout.labels is None:
        raise DataError(f"{cfg.data} has no labels; the benchmark needs classes (seen / unseen splits, class nouns).")
    return pool, heldout


def _base_model(cfg: SimilarityExperimentConfig, pool: ImageDataset, out: Path, show: bool | None) -> DDPM:
    model_cfg = DDPMConfig.preset(cfg.preset, image_size=cfg.image_size, channels=pool.n_channels)
    train_cfg = default_train_config(
        model_cfg, n_steps=cfg.train_steps, batch_size=cfg.batch_size, seed=cfg.seed, checkpoint_every=500
    )
    model = train_ddpm(model_cfg, train_cfg, pool, out / "models" / "base", show_progress=show).model
    assert isinstance(model, DDPM)
    return model


def _control(cfg: SimilarityExperimentConfig, base: DDPM, out: Path) -> Tensor:
    folder = out / "control"
    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if len(files) != cfg.n_control:
        samples = ddpm_sample(
            base, cfg.n_control, seed=derive_seed(cfg.seed, "control"), ddim_steps=cfg.ddim_steps, show_progress=False
        )
        files = save_images(samples, folder, prefix="control")
    return load_images(files)  # PNG-saved, like the customized samples


def _bench(
    cfg: SimilarityExperimentConfig,
    pool: ImageDataset,
    heldout: ImageDataset,
    base: DDPM,
    out: Path,
    show: bool | None,
) -> CustomizationBench:
    folder = out / "customizations"
    assert heldout.labels is not None
    cases = build_customizations(
        base, heldout.images, heldout.labels.numpy(), folder, cfg.customization_config(), show_progress=show
    )
    roles = case_roles(cases, cfg.seen_classes, cfg.n_val_classes, cfg.seed)
    if "unseen" not in roles or "tune" not in roles or "val" not in roles:
        raise DataError(
            f"The benchmark needs tuning, validation and unseen cases; got roles {sorted(set(roles))}. Use more "
            "object / style cases (n_object, n_style)."
        )
    return CustomizationBench.from_folder(folder, pool.images, cases, roles, control=_control(cfg, base, out))


# ------------------------------------------------------------------------------------------ extractors


def _classifier(cfg: ExtractorSettings, pool: ImageDataset, out: Path, show: bool | None) -> CNNClassifier:
    assert pool.labels is not None
    clf_cfg = ClassifierConfig(
        image_size=cfg.image_size, channels=pool.n_channels, n_classes=int(pool.labels.max()) + 1
    )
    train_cfg = default_train_config(clf_cfg, n_steps=cfg.classifier_steps, seed=cfg.seed, checkpoint_every=0)
    model = train_classifier(clf_cfg, train_cfg, pool, out / "models" / "classifier", show_progress=show).model
    assert isinstance(model, CNNClassifier)
    return model.eval()


def _simclr(cfg: ExtractorSettings, pool: ImageDataset, out: Path, show: bool | None) -> SimCLRExtractor:
    file = out / "models" / "simclr"
    wanted = SimCLRConfig(steps=cfg.simclr_steps, seed=cfg.seed)
    if file.is_dir():
        loaded = SimCLRExtractor.from_pretrained(file)
        if loaded.config == wanted:
            return loaded
    extractor = SimCLRExtractor(wanted).fit(pool.images, show_progress=show)
    extractor.save_pretrained(file)
    return extractor


def _build_extractor(
    name: str, cfg: ExtractorSettings, pool: ImageDataset, out: Path, show: bool | None
) -> FeatureExtractor:
    if name == "classifier":
        return ClassifierExtractor(_classifier(cfg, pool, out, show))
    if name == "simclr":
        return _simclr(cfg, pool, out, show)
    if name == "efficientnet-lite0":
        return FEATURE_EXTRACTORS.create(name, config={"image_size": cfg.effnet_image_size})
    return FEATURE_EXTRACTORS.create(name, config={"seed": cfg.seed} if name == "random-cnn" else None)


def _featurize(extractor: FeatureExtractor, bench: CustomizationBench, out: Path) -> BenchFeatures:
    """Features of every image (cached in ``out/features/<name>.npz`` under the extractor's spec)."""
    sizes = [len(s) for s in bench.samples]
    file = out / "features" / f"{extractor.name}.npz"
    key = repr(
        (
            extractor.spec(),
            len(bench.pool),
            float(bench.pool.sum()),
            float(bench.exemplars.sum()),
            sizes,
            float(torch.cat(bench.samples).sum()),
            float(bench.control.sum()),
        )
    )
    if file.is_file():
        saved = np.load(file)
        if str(saved["key"]) == key:
            splits = np.cumsum(sizes)[:-1]
            return BenchFeatures(
                pool=torch.from_numpy(saved["pool"]),
                exemplars=torch.from_numpy(saved["exemplars"]),
                samples=[torch.from_numpy(a) for a in np.split(saved["samples"], splits)],
                control=torch.from_numpy(saved["control"]),
            )
    feats = BenchFeatures.extract(extractor, bench)
    atomic_save_npz(
        file,
        {
            "key": np.array(key),
            "pool": feats.pool.numpy(),
            "exemplars": feats.exemplars.numpy(),
            "samples": torch.cat(feats.samples).numpy(),
            "control": feats.control.numpy(),
        },
    )
    return feats


def protocol_scores(
    feats: BenchFeatures, bench: CustomizationBench, case: int, queries: Tensor, protocol: str
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Scores of ``queries`` against a protocol's candidates for ``case`` and each query's positive columns:
    ``"A"`` ranks the pool + the case's own exemplars, ``"B"`` the pool + every exemplar."""
    n_pool = len(feats.pool)
    rows = bench.ex_rows[case]
    if protocol == "A":
        candidates = torch.cat([feats.pool, feats.exemplars[torch.as_tensor(rows)]])
        pos = n_pool + np.arange(len(rows))
    else:
        candidates = torch.cat([feats.pool, feats.exemplars])
        pos = n_pool + rows
    return similarity_scores(queries, candidates), [pos] * len(queries)


def _evaluate(feats: BenchFeatures, bench: CustomizationBench) -> dict[str, Any]:
    """Per-query metrics of every case (both protocols) and of the control, with their tags."""
    per: dict[str, dict[str, list[np.ndarray]]] = {p: {} for p in PROTOCOLS}
    tags: dict[str, list[str]] = {"role": [], "kind": []}
    for i, case in enumerate(bench.cases):
        tags["role"].extend([bench.roles[i]] * len(bench.samples[i]))
        tags["kind"].extend([case.kind] * len(bench.samples[i]))
        for protocol in PROTOCOLS:
            s, pos = protocol_scores(feats, bench, i, feats.samples[i], protocol)
            for name, values in retrieval_metrics(s, pos).items():
                per[protocol].setdefault(name, []).append(values)
    control: dict[str, dict[str, float]] = {}
    for protocol in PROTOCOLS:
        collected: dict[str, list[np.ndarray]] = {}
        for j, case in enumerate(bench.control_case):
            s, pos = protocol_scores(feats, bench, int(case), feats.control[j : j + 1], protocol)
            for name, values in retrieval_metrics(s, pos).items():
                collected.setdefault(name, []).append(values)
        control[protocol] = _summary({k: np.concatenate(v) for k, v in collected.items()})
    return {
        "per_query": {p: {k: np.concatenate(v) for k, v in m.items()} for p, m in per.items()},
        "role": np.array(tags["role"]),
        "kind": np.array(tags["kind"]),
        "control": control,
    }


def _summary(metrics: Mapping[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, float]:
    out = {}
    for name, values in metrics.items():
        v = values if mask is None else values[mask]
        out["mAP" if name == "ap" else name] = float(v.mean()) if v.size else float("nan")
    return out


def _split_mask(ev: Mapping[str, Any], split: str, kind: str) -> np.ndarray:
    roles, kinds = ev["role"], ev["kind"]
    if split == "seen":
        mask = roles != "unseen"
    elif split == "all":
        mask = np.ones(len(roles), dtype=bool)
    else:
        mask = roles == split
    if kind != "all":
        mask = mask & (kinds == kind)
    return np.asarray(mask)


def _soft(feats: BenchFeatures, bench: CustomizationBench, top_n: int, extractor: str, features: str) -> SoftRow:
    """Soft attribution: calibrated on validation cases, measured on unseen cases (protocol B)."""
    val_s, val_p = protocol_b_scores(feats, bench, "val")
    test_s, test_p = protocol_b_scores(feats, bench, "unseen")
    default = SimilarityConfig()
    before = SoftCalibration(default.inv_tau, default.bias)
    fitted = fit_soft_calibration(val_s, val_p)
    return SoftRow(
        extractor=extractor,
        features=features,
        before=SoftMetrics(
            inv_tau=before.inv_tau, bias=before.bias, **evaluate_soft(test_s, test_p, before, top_n=top_n)
        ),
        after=SoftMetrics(
            inv_tau=fitted.inv_tau, bias=fitted.bias, **evaluate_soft(test_s, test_p, fitted, top_n=top_n)
        ),
        fitted_on_val_queries=fitted.n_queries,
        val_nll=fitted.nll,
        test_queries=len(test_p),
    )


def _hubness(feats: BenchFeatures, bench: CustomizationBench) -> dict[str, float]:
    """Hub statistics of the unseen queries' protocol-B rankings; ``items``: the tuning exemplars."""
    scores, _ = protocol_b_scores(feats, bench, "unseen")
    n_pool = len(feats.pool)
    tuned_rows = [n_pool + int(r) for i, role in enumerate(bench.roles) if role == "tune" for r in bench.ex_rows[i]]
    return hub_statistics(scores, 10, items=tuned_rows)


def chance_unseen(bench: CustomizationBench, seed: int) -> dict[str, RetrievalMetrics]:
    """Chance level of the unseen queries per protocol (query-weighted over cases)."""
    n_pool = len(bench.pool)
    out: dict[str, RetrievalMetrics] = {}
    for protocol in PROTOCOLS:
        rows: list[dict[str, float]] = []
        weights: list[int] = []
        for i, role in enumerate(bench.roles):
            if role != "unseen":
                continue
            e = len(bench.ex_rows[i])
            n_items = n_pool + (e if protocol == "A" else len(bench.exemplars))
            rows.append(chance_level(n_items, e, seed=seed))
            weights.append(len(bench.samples[i]))
        w = np.asarray(weights, dtype=np.float64) / sum(weights)
        out[protocol] = RetrievalMetrics.from_dict(
            {k: float(sum(wi * r[k] for wi, r in zip(w, rows, strict=True))) for k in rows[0]}
        )
    return out


@dataclasses.dataclass(frozen=True)
class ExtractorRows:
    """What :func:`evaluate_extractors` measured, for every extractor that ran.

    Attributes:
        retrieval: Retrieval rows (untuned and tuned, both protocols, every split and case kind).
        control: Negative-control rows.
        hubness: Hub statistics.
        soft: Soft attribution before and after calibration.
        tuning: Extractor -> its kept mapper.
        skipped: Extractor -> why it was skipped (a missing optional package).
        features: Extractor -> (untuned features, tuned features, its soft rows by variant).
    """

    retrieval: tuple[RetrievalRow, ...]
    control: tuple[ControlRow, ...]
    hubness: tuple[HubRow, ...]
    soft: tuple[SoftRow, ...]
    tuning: dict[str, TuningRow]
    skipped: dict[str, str]
    features: dict[str, tuple[BenchFeatures, BenchFeatures, dict[str, SoftRow]]]

    @property
    def gallery_extractor(self) -> str:
        """The extractor with the best tuned validation mAP (chosen without test data)."""
        return max(self.tuning, key=lambda n: float(self.tuning[n].tuned_val_map or 0.0))


def evaluate_extractors(
    cfg: ExtractorSettings, pool: ImageDataset, bench: CustomizationBench, out: Path, lap: Laps, show: bool | None
) -> ExtractorRows:
    """Featurize ``bench`` with every extractor of ``cfg``, tune a mapper per extractor on the tuning cases
    and measure retrieval, control, hubness and soft attribution untuned and tuned (one ``lap`` per extractor).

    Raises:
        DataError: No extractor could run.
    """
    retrieval: list[RetrievalRow] = []
    controls: list[ControlRow] = []
    hubs: list[HubRow] = []
    soft: list[SoftRow] = []
    tuning: dict[str, TuningRow] = {}
    skipped: dict[str, str] = {}
    gallery_feats: dict[str, tuple[BenchFeatures, BenchFeatures, dict[str, SoftRow]]] = {}
    for name in cfg.extractors:
        lap.restart()
        try:
            extractor = _build_extractor(name, cfg, pool, out, show)
            raw = _featurize(extractor, bench, out)
        except MissingDependencyError as err:
            skipped[name] = str(err)
            log.warning("skipping extractor %s: %s", name, err)
            continue
        mapper = tune_mapper(raw, bench, cfg.tuning_config(), cfg.tuning_grid)
        tuning[name] = TuningRow(
            dim=int(raw.pool.shape[1]),
            chosen={k: v for k, v in mapper.config.to_dict().items() if k in ("lr", "two_towers", "mapper")},
            best_step=mapper.best_step_,
            untuned_val_map=mapper.untuned_val_map_,
            tuned_val_map=mapper.best_val_map_,
            history=tuple(mapper.history_),
        )
        soft_by_variant = {}
        for variant, feats in (("untuned", raw), ("tuned", raw.mapped(mapper))):
            ev = _evaluate(feats, bench)
            for protocol in PROTOCOLS:
                for split in ("tune", "val", "seen", "unseen"):
                    for kind in ("object", "style", "all"):
                        mask = _split_mask(ev, split, kind)
                        if not mask.any():
                            continue
                        retrieval.append(
                            RetrievalRow(
                                extractor=name,
                                features=variant,
                                protocol=protocol,
                                split=split,
                                case=kind,
                                queries=int(mask.sum()),
                                metrics=RetrievalMetrics.from_dict(_summary(ev["per_query"][protocol], mask)),
                            )
                        )
                controls.append(
                    ControlRow(
                        extractor=name,
                        features=variant,
                        protocol=protocol,
                        metrics=RetrievalMetrics.from_dict(ev["control"][protocol]),
                    )
                )
            hubs.append(HubRow(extractor=name, features=variant, stats=_hubness(feats, bench)))
            soft_by_variant[variant] = _soft(feats, bench, cfg.soft_top_n, name, variant)
            soft.append(soft_by_variant[variant])
        gallery_feats[name] = (raw, raw.mapped(mapper), soft_by_variant)
        lap(f"extractor {name}")

    lap.restart()
    if not tuning:
        raise DataError(f"No extractor could run: {skipped}.")
    return ExtractorRows(
        retrieval=tuple(retrieval),
        control=tuple(controls),
        hubness=tuple(hubs),
        soft=tuple(soft),
        tuning=tuning,
        skipped=skipped,
        features=gallery_feats,
    )


# ------------------------------------------------------------------------------------------ the run


@EXPERIMENTS.register("similarity", config=SimilarityExperimentConfig)
def run_similarity(
    config: SimilarityExperimentConfig,
    out_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    show_progress: bool | None = None,
) -> SimilarityResult:
    """Run the feature-similarity attribution reproduction; write ``results.json`` and ``report.html``.

    Registered as the ``"similarity"`` experiment (``genprov reproduce similarity``).

    Args:
        config: What to run (see :class:`SimilarityExperimentConfig`).
        out_dir: Output folder (models, benchmark and features are cached there; a re-run resumes).
        data_root: Folder of dataset files (overrides ``config.data_root``).
        show_progress: Progress bars.

    Returns:
        The typed results (``to_dict()`` is ``results.json``).
    """
    cfg, out = start_run(config, out_dir, data_root)
    lap = Laps()
    pool, heldout = load_pool_and_heldout(cfg)
    base = _base_model(cfg, pool, out, show_progress)
    lap("base model")
    bench = _bench(cfg, pool, heldout, base, out, show_progress)
    lap("customizations")
    strength = influence_strength(bench.pool, bench.cases, out / "customizations", heldout.images)
    chance = chance_unseen(bench, cfg.seed)
    lap("influence strength")

    rows = evaluate_extractors(cfg, pool, bench, out, lap, show_progress)
    # the gallery shows the extractor with the best tuned validation mAP (chosen without test data)
    shown = rows.gallery_extractor
    result = SimilarityResult(
        experiment="similarity",
        config=cfg.to_dict(),
        data=DataInfo(
            name=pool.name,
            n_pool=len(pool),
            n_heldout=len(heldout),
            image_size=cfg.image_size,
            pool_fingerprint=pool.fingerprint(),
        ),
        benchmark=BenchmarkInfo(
            folder=str(out / "customizations"),
            cases=len(bench.cases),
            roles={r: bench.roles.count(r) for r in ("tune", "val", "unseen")},
            queries={
                r: int(sum(len(s) for s, rr in zip(bench.samples, bench.roles, strict=True) if rr == r))
                for r in ("tune", "val", "unseen")
            },
            exemplars=len(bench.exemplars),
            control_queries=len(bench.control),
        ),
        influence_strength=InfluenceStrength(**strength),
        chance_unseen=chance,
        retrieval=rows.retrieval,
        control=rows.control,
        hubness=rows.hubness,
        soft_attribution=rows.soft,
        tuning=rows.tuning,
        skipped_extractors=rows.skipped,
        gallery_extractor=shown,
        claims=check_claims(rows.retrieval, rows.control, rows.soft, chance),
        timings_seconds=dict(lap.timings),
    )
    report = build_report(cfg, result, bench, rows.features[shown], out)
    lap("report")  # results.json holds the report's time too; the report's own table does not
    result = dataclasses.replace(result, timings_seconds=lap.timings)
    result.write_json(out / "results.json")
    report.write(out, filename="report.html")
    return result


def check_claims(
    retrieval: Sequence[RetrievalRow],
    controls: Sequence[ControlRow],
    soft: Sequence[SoftRow],
    chance: Mapping[str, RetrievalMetrics],
) -> Claims:
    """The issue's claims, checked on unseen queries under protocol A (control and chance likewise)."""
    chance_map = chance["A"].mean_ap
    per: dict[str, ExtractorClaim] = {}
    for name in sorted({r.extractor for r in retrieval}):
        un = find_row(retrieval, extractor=name, features="untuned", protocol="A", split="unseen", case="all")
        tu = find_row(retrieval, extractor=name, features="tuned", protocol="A", split="unseen", case="all")
        ctrl = find_row(controls, extractor=name, features="untuned", protocol="A")
        sf = find_row(soft, extractor=name, features="tuned")
        per[name] = ExtractorClaim(
            untuned_map=un.metrics.mean_ap,
            tuned_map=tu.metrics.mean_ap,
            tuned_minus_untuned=tu.metrics.mean_ap - un.metrics.mean_ap,
            untuned_over_chance=un.metrics.mean_ap / chance_map,
            control_map=ctrl.metrics.mean_ap,
            control_over_chance=ctrl.metrics.mean_ap / chance_map,
            calibration_lowers_nll=sf.after.nll < sf.before.nll,
        )
    return Claims(
        chance_map=chance_map,
        per_extractor=per,
        every_method_far_above_chance=all(p.untuned_over_chance > 3 for p in per.values()),
        tuned_beats_untuned={n: p.tuned_minus_untuned > 1e-6 for n, p in per.items()},
        tuned_gain_at_least_0_1={n: p.tuned_minus_untuned >= 0.1 for n, p in per.items()},
        control_near_chance=all(p.control_over_chance < 3 for p in per.values()),
        calibration_lowers_nll=all(p.calibration_lowers_nll for p in per.values()),
    )
