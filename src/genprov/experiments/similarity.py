"""``genprov reproduce similarity``: feature-similarity data attribution on a customization benchmark.

Small-scale version of the key experiment of Wang et al., "Evaluating data attribution for text-to-image
models" (ICCV 2023): ground truth is made by *customization* (a model fine-tuned on exemplars is, by
construction, influenced by them), and attribution is retrieval of those exemplars among the training
images by feature similarity (sec. 4-6 of the paper).

What a run does (models, the benchmark and features are cached under ``--out``; a re-run reuses them and
an interrupted run resumes):

1. Trains a base DDPM on a *pool* (a seeded subset of the train split; ``out/models/base``).
2. Builds the customization benchmark (:func:`~genprov.experiments.customization.build_customizations`,
   ``out/customizations``): object cases (one held-out exemplar) and style cases (a few exemplars of
   different classes under one :data:`~genprov.experiments.customization.STYLES` transform), each a copy of
   the base model fine-tuned with prior preservation, and ``n_samples`` samples per case (the queries).
   Cases whose classes are all in ``seen_classes`` are *seen*; they are split into a tuning part and a
   validation part (object cases by class: ``n_val_classes`` of the seen classes; style cases every third);
   every other case is *unseen* (the test set). :func:`~genprov.experiments.customization.influence_strength`
   says whether customization matters (exemplar pixel-NN rate) and whether it copies (near-copy rate).
3. Featurizes pool, exemplars, samples and a negative control (samples of the un-customized base model)
   with every extractor: ``pixels``, ``classifier`` (trained on the pool), ``simclr`` (trained on the pool),
   ``random-cnn`` (control) and ``efficientnet-lite0`` (ImageNet weights, when installed).
4. Tunes a :class:`~genprov.attribution.data.mapper.FeatureMapper` per extractor on the tuning cases:
   each candidate of ``tuning_grid`` (learning rate, one or two towers) is early-stopped on the validation
   cases' mAP, and the candidate best on validation is kept (the identity, i.e. untuned, is always a
   candidate, so tuning never loses on validation; the unseen test cases are never looked at).
5. Measures, untuned and tuned: Recall@5/10/100, Recall@|exemplars| and mAP per split and case kind, under
   protocol A (each query's candidates are the pool plus its own model's exemplars, as in the paper) and
   protocol B (the pool plus every exemplar); the control's mAP (positives: an unseen case's exemplars);
   chance level (random scores, same candidate sets); hub statistics; soft attribution calibrated on the
   validation cases (protocol B scores) with NLL / ECE / remaining influence on the unseen cases before and
   after calibration.

Writes ``results.json`` and ``report.html``. The demo section :func:`similarity_section` lives here too.

Departures: the full digits run uses EfficientNet-Lite0 at 112x112 inputs instead of its native 224 (8x8
digits hold no detail that 224 would add, and 224 costs ~10x the CPU time); calibration and hub statistics
use protocol B, whose candidate set is shared by all queries (protocol A's differs per customization).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genprov.attribution.data import (
    FEATURE_EXTRACTORS,
    ClassifierExtractor,
    FeatureExtractor,
    SimCLRConfig,
    SimCLRExtractor,
    TuningConfig,
    hub_statistics,
)
from genprov.attribution.data.similarity import (
    SimilarityAttributor,
    SimilarityConfig,
    SoftCalibration,
    evaluate_soft,
    fit_soft_calibration,
    soft_attribution,
)
from genprov.config import is_int, require
from genprov.data import ImageDataset, load_dataset, load_images, resize_images, save_images
from genprov.eval.customization import (
    N_VAL_CLASSES,
    TUNING_GRID,
    BenchFeatures,
    CustomizationBench,
    case_roles,
    protocol_b_scores,
    similarity_scores,
    tune_mapper,
)
from genprov.eval.retrieval import recall_per_query
from genprov.exceptions import DataError, MissingDependencyError
from genprov.experiments.base import EXPERIMENTS, ExperimentConfig, start_run
from genprov.experiments.customization import CustomizationConfig, build_customizations, influence_strength
from genprov.experiments.quickstart import DemoContext, grid_image
from genprov.metrics import average_precision
from genprov.models.classifiers import ClassifierConfig, CNNClassifier
from genprov.models.diffusion import DDPM, DDPM_PRESETS, DDPMConfig, ddpm_sample
from genprov.models.training import default_train_config, train_classifier, train_ddpm
from genprov.report import Figure, Gallery, GalleryRow, KeyValue, Report, Section, Table, Text
from genprov.report.figures import metric_bars
from genprov.utils.io import atomic_save_npz, atomic_write_json
from genprov.utils.seeding import derive_seed, numpy_rng

__all__ = [
    "EXTRACTOR_NAMES",
    "SimilarityExperimentConfig",
    "chance_level",
    "retrieval_metrics",
    "run_similarity",
    "similarity_section",
    "soft_gallery",
]

log = logging.getLogger(__name__)

#: Extractors a run evaluates by default (``efficientnet-lite0`` is skipped when its packages are missing).
EXTRACTOR_NAMES = ("pixels", "classifier", "simclr", "random-cnn", "efficientnet-lite0")
#: Recall cut-offs (besides Recall@|exemplars|).
RECALL_KS = (5, 10, 100)
PROTOCOLS = ("A", "B")

_DATA_PRESETS: dict[str, dict[str, Any]] = {
    "digits": {"image_size": 8, "preset": "small"},
    "mnist": {"image_size": 16, "preset": "base", "n_pool": 2000, "n_heldout": 2000},
    "fashion-mnist": {"image_size": 16, "preset": "base", "n_pool": 2000, "n_heldout": 2000},
}
_QUICK: dict[str, Any] = {
    "n_pool": 300,
    "train_steps": 400,
    "n_object": 8,
    "n_style": 4,
    "finetune_steps": 60,
    "finetune_lr": 1e-3,
    "n_prior": 64,
    "n_samples": 8,
    "ddim_steps": 20,
    "n_control": 16,
    "classifier_steps": 150,
    "simclr_steps": 40,
    "tuning": {"max_steps": 100, "eval_every": 10},
    "tuning_grid": [{"lr": 1e-4}, {"lr": 1e-4, "two_towers": False}],
    "gallery_queries": 2,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimilarityExperimentConfig(ExperimentConfig):
    """What ``run_similarity`` builds and measures.

    The constructor's defaults are the full digits run (about 10-20 minutes on 2 shared cores); :meth:`from_dict`
    (what ``genprov reproduce`` uses) starts from the dataset's preset and, with ``quick``, the few-minute
    sizes, then applies the keys given.

    Attributes:
        data: ``"digits"`` (built in), ``"mnist"`` or ``"fashion-mnist"`` (need ``data_root``).
        data_root: Folder of the dataset files (``None``: ``$GENPROV_DATA``).
        image_size: Side the images are resized to.
        preset: Base DDPM size (``DDPMConfig.preset``).
        n_pool: Training images of the base DDPM (a seeded subset of the train split): the attribution pool.
        n_heldout: Held-out (test split) images the exemplars are drawn from (``None``: all).
        train_steps: Training steps of the base DDPM.
        batch_size: Its batch size.
        n_object, n_style, style_exemplars, styles, seen_classes, finetune_steps, finetune_lr, n_prior,
            n_samples, ddim_steps: The benchmark (see :class:`CustomizationConfig`). The default 300 steps at
            lr 2e-4 were chosen on a pilot with other cases (``seed=1``, 4 cases, influence strength only, no
            attribution metric): exemplar pixel-NN rate 52% with 4% near copies, against 54% with 15% near
            copies for 200 steps at lr 1e-3.
        n_val_classes: Seen classes whose object cases validate (early stopping, calibration) instead of tuning.
        n_control: Samples of the base (un-customized) model: the negative control queries.
        extractors: Feature extractors evaluated (names in ``FEATURE_EXTRACTORS``; not ``local-weights``).
        classifier_steps: Training steps of the classifier (its penultimate features are an extractor).
        simclr_steps: Training steps of the SimCLR encoder.
        effnet_image_size: Input side of EfficientNet-Lite0 (224 is native; smaller is faster on CPU).
        tuning: Changes to :class:`TuningConfig` shared by every candidate (its seed is the run's seed).
        tuning_grid: Candidate changes on top of ``tuning``; per extractor the mapper with the best validation
            mAP is kept (empty: ``tuning`` alone). A mapper never beats the identity on validation data it
            has not improved, so a grid can only help there.
        soft_top_n: N of the remaining influence ("outside the top N") and of the ECE.
        gallery_queries: Unseen queries shown with their top-k and soft shares.
        gallery_k: Training images per gallery row.
    """

    data: str = "digits"
    data_root: str | None = None
    image_size: int = 8
    preset: str = "small"
    n_pool: int = 1000
    n_heldout: int | None = None
    train_steps: int = 2000
    batch_size: int = 32
    n_object: int = 24
    n_style: int = 12
    style_exemplars: int = 3
    styles: tuple[str, ...] = ("thick", "thin", "shear")
    seen_classes: tuple[int, ...] = (0, 1, 2, 3, 4)
    finetune_steps: int = 300
    finetune_lr: float = 2e-4
    n_prior: int = 256
    n_samples: int = 24
    ddim_steps: int = 50
    n_val_classes: int = N_VAL_CLASSES
    n_control: int = 96
    extractors: tuple[str, ...] = EXTRACTOR_NAMES
    classifier_steps: int = 1000
    simclr_steps: int = 300
    effnet_image_size: int = 112
    tuning: dict[str, Any] = dataclasses.field(default_factory=lambda: {"eval_every": 10})
    tuning_grid: tuple[dict[str, Any], ...] = TUNING_GRID
    soft_top_n: int = 100
    gallery_queries: int = 3
    gallery_k: int = 8

    def validate(self) -> None:
        super().validate()
        require(self.data in _DATA_PRESETS, "data", f"one of {', '.join(_DATA_PRESETS)}", self.data)
        require(self.preset in DDPM_PRESETS, "preset", f"one of {', '.join(DDPM_PRESETS)}", self.preset)
        for name in (
            "image_size",
            "n_pool",
            "train_steps",
            "batch_size",
            "n_control",
            "classifier_steps",
            "soft_top_n",
            "gallery_k",
            "effnet_image_size",
        ):
            value = getattr(self, name)
            require(is_int(value, minimum=1), name, "a positive integer", value)
        for name in ("simclr_steps", "gallery_queries"):
            value = getattr(self, name)
            require(is_int(value, minimum=0), name, "a non-negative integer", value)
        require(
            self.n_heldout is None or is_int(self.n_heldout, minimum=1),
            "n_heldout",
            "a positive integer or None",
            self.n_heldout,
        )
        require(
            is_int(self.n_val_classes, minimum=1) and self.n_val_classes < len(self.seen_classes),
            "n_val_classes",
            f"an integer in [1, {len(self.seen_classes) - 1}] (fewer than the seen classes)",
            self.n_val_classes,
        )
        require(len(self.extractors) >= 1, "extractors", "at least one extractor name", self.extractors)
        for name in self.extractors:
            require(
                name in FEATURE_EXTRACTORS and name != "local-weights",
                "extractors",
                f"names among {[n for n in FEATURE_EXTRACTORS.names() if n != 'local-weights']}",
                name,
            )
        require(isinstance(self.tuning, dict), "tuning", "a dict of TuningConfig changes", self.tuning)
        TuningConfig().replace(**self.tuning)  # unknown keys raise with a suggestion
        for change in self.tuning_grid:
            require(isinstance(change, Mapping), "tuning_grid", "dicts of TuningConfig changes", change)
            TuningConfig().replace(**{**self.tuning, **change})
        self.customization_config()  # checks the benchmark fields

    def customization_config(self) -> CustomizationConfig:
        """The benchmark's :class:`CustomizationConfig`."""
        return CustomizationConfig(
            n_object=self.n_object,
            n_style=self.n_style,
            styles=tuple(self.styles),
            style_exemplars=self.style_exemplars,
            seen_classes=tuple(self.seen_classes),
            finetune_steps=self.finetune_steps,
            finetune_lr=self.finetune_lr,
            batch_size=self.batch_size,
            n_prior=self.n_prior,
            n_samples=self.n_samples,
            ddim_steps=self.ddim_steps,
            seed=self.seed,
        )

    def tuning_config(self, change: Mapping[str, Any] | None = None) -> TuningConfig:
        """The mappers' :class:`TuningConfig` (with one ``tuning_grid`` ``change``)."""
        return TuningConfig(seed=self.seed).replace(**{**self.tuning, **dict(change or {})})

    @classmethod
    def preset_values(cls, data: str, quick: bool) -> dict[str, Any]:
        """The dataset's preset (:data:`_DATA_PRESETS`) and, with ``quick``, the few-minute sizes."""
        return {**_DATA_PRESETS.get(data, {}), **(_QUICK if quick else {})}


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


def _load_data(cfg: SimilarityExperimentConfig) -> tuple[ImageDataset, ImageDataset]:
    root = cfg.data_root
    pool = load_dataset(cfg.data, split="train", data_root=root, resize=cfg.image_size, n=cfg.n_pool, seed=cfg.seed)
    heldout = load_dataset(
        cfg.data, split="test", data_root=root, resize=cfg.image_size, n=cfg.n_heldout, seed=cfg.seed
    )
    if pool.labels is None or heldout.labels is None:
        raise DataError(f"{cfg.data} has no labels; the benchmark needs classes (seen / unseen splits).")
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


def _classifier(cfg: SimilarityExperimentConfig, pool: ImageDataset, out: Path, show: bool | None) -> CNNClassifier:
    assert pool.labels is not None
    clf_cfg = ClassifierConfig(
        image_size=cfg.image_size, channels=pool.n_channels, n_classes=int(pool.labels.max()) + 1
    )
    train_cfg = default_train_config(clf_cfg, n_steps=cfg.classifier_steps, seed=cfg.seed, checkpoint_every=0)
    model = train_classifier(clf_cfg, train_cfg, pool, out / "models" / "classifier", show_progress=show).model
    assert isinstance(model, CNNClassifier)
    return model.eval()


def _simclr(cfg: SimilarityExperimentConfig, pool: ImageDataset, out: Path, show: bool | None) -> SimCLRExtractor:
    file = out / "models" / "simclr.safetensors"
    wanted = SimCLRConfig(steps=cfg.simclr_steps, seed=cfg.seed)
    if file.is_file():
        loaded = SimCLRExtractor.load(file)
        if loaded.config == wanted:
            return loaded
    extractor = SimCLRExtractor(wanted).fit(pool.images, show_progress=show)
    extractor.save(file)
    return extractor


def _build_extractor(
    name: str, cfg: SimilarityExperimentConfig, pool: ImageDataset, out: Path, show: bool | None
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


def _protocol_scores(
    feats: BenchFeatures, bench: CustomizationBench, case: int, queries: Tensor, protocol: str
) -> tuple[np.ndarray, list[np.ndarray]]:
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
            s, pos = _protocol_scores(feats, bench, i, feats.samples[i], protocol)
            for name, values in retrieval_metrics(s, pos).items():
                per[protocol].setdefault(name, []).append(values)
    control: dict[str, dict[str, float]] = {}
    for protocol in PROTOCOLS:
        collected: dict[str, list[np.ndarray]] = {}
        for j, case in enumerate(bench.control_case):
            s, pos = _protocol_scores(feats, bench, int(case), feats.control[j : j + 1], protocol)
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


def _soft(feats: BenchFeatures, bench: CustomizationBench, top_n: int) -> dict[str, Any]:
    """Soft attribution: calibrated on validation cases, measured on unseen cases (protocol B)."""
    val_s, val_p = protocol_b_scores(feats, bench, "val")
    test_s, test_p = protocol_b_scores(feats, bench, "unseen")
    default = SimilarityConfig()
    before = SoftCalibration(default.inv_tau, default.bias)
    fitted = fit_soft_calibration(val_s, val_p)
    return {
        "before": {
            "inv_tau": before.inv_tau,
            "bias": before.bias,
            **evaluate_soft(test_s, test_p, before, top_n=top_n),
        },
        "after": {"inv_tau": fitted.inv_tau, "bias": fitted.bias, **evaluate_soft(test_s, test_p, fitted, top_n=top_n)},
        "fitted_on_val_queries": fitted.n_queries,
        "val_nll": fitted.nll,
        "test_queries": len(test_p),
    }


def _hubness(feats: BenchFeatures, bench: CustomizationBench) -> dict[str, float]:
    """Hub statistics of the unseen queries' protocol-B rankings; ``items``: the tuning exemplars."""
    scores, _ = protocol_b_scores(feats, bench, "unseen")
    n_pool = len(feats.pool)
    tuned_rows = [n_pool + int(r) for i, role in enumerate(bench.roles) if role == "tune" for r in bench.ex_rows[i]]
    return hub_statistics(scores, 10, items=tuned_rows)


def _chance(bench: CustomizationBench, seed: int) -> dict[str, dict[str, float]]:
    """Chance level of the unseen queries per protocol (query-weighted over cases)."""
    n_pool = len(bench.pool)
    out: dict[str, dict[str, float]] = {}
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
        out[protocol] = {k: float(sum(wi * r[k] for wi, r in zip(w, rows, strict=True))) for k in rows[0]}
    return out


# ------------------------------------------------------------------------------------------ galleries


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


# ------------------------------------------------------------------------------------------ the run


@EXPERIMENTS.register("similarity", config=SimilarityExperimentConfig)
def run_similarity(
    config: SimilarityExperimentConfig,
    out_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """Run the feature-similarity attribution reproduction; write ``results.json`` and ``report.html``.

    Args:
        config: What to run (see :class:`SimilarityExperimentConfig`).
        out_dir: Output folder (models, benchmark and features are cached there; a re-run resumes).
        data_root: Folder of dataset files (overrides ``config.data_root``).
        show_progress: Progress bars.

    Returns:
        The ``results.json`` content.
    """
    cfg, out = start_run(config, out_dir, data_root)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 2)
        clock = now

    pool, heldout = _load_data(cfg)
    base = _base_model(cfg, pool, out, show_progress)
    lap("base model")
    bench = _bench(cfg, pool, heldout, base, out, show_progress)
    lap("customizations")
    strength = influence_strength(bench.pool, bench.cases, out / "customizations", heldout.images)
    chance = _chance(bench, cfg.seed)
    lap("influence strength")

    retrieval: list[dict[str, Any]] = []
    controls: list[dict[str, Any]] = []
    hubs: list[dict[str, Any]] = []
    soft: list[dict[str, Any]] = []
    tuning: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    gallery_feats: dict[str, tuple[BenchFeatures, BenchFeatures, dict[str, Any]]] = {}
    for name in cfg.extractors:
        t0 = time.perf_counter()
        try:
            extractor = _build_extractor(name, cfg, pool, out, show_progress)
            raw = _featurize(extractor, bench, out)
        except MissingDependencyError as err:
            skipped[name] = str(err)
            log.warning("skipping extractor %s: %s", name, err)
            continue
        mapper = tune_mapper(raw, bench, cfg.tuning_config(), cfg.tuning_grid)
        tuning[name] = {
            "dim": int(raw.pool.shape[1]),
            "chosen": {k: v for k, v in mapper.config.to_dict().items() if k in ("lr", "two_towers", "mapper")},
            "best_step": mapper.best_step_,
            "untuned_val_mAP": mapper.untuned_val_map_,
            "tuned_val_mAP": mapper.best_val_map_,
            "history": mapper.history_,
        }
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
                            {
                                "extractor": name,
                                "features": variant,
                                "protocol": protocol,
                                "split": split,
                                "case": kind,
                                "queries": int(mask.sum()),
                                **_summary(ev["per_query"][protocol], mask),
                            }
                        )
                controls.append(
                    {"extractor": name, "features": variant, "protocol": protocol, **ev["control"][protocol]}
                )
            hubs.append({"extractor": name, "features": variant, **_hubness(feats, bench)})
            soft_by_variant[variant] = _soft(feats, bench, cfg.soft_top_n)
            soft.append({"extractor": name, "features": variant, **soft_by_variant[variant]})
        gallery_feats[name] = (raw, raw.mapped(mapper), soft_by_variant)
        timings[f"extractor {name}"] = round(time.perf_counter() - t0, 2)
    clock = time.perf_counter()
    if not tuning:
        raise DataError(f"No extractor could run: {skipped}.")

    claims = _claims(retrieval, controls, soft, chance)
    # the gallery shows the extractor with the best tuned validation mAP (chosen without test data)
    shown = max(tuning, key=lambda n: float(tuning[n]["tuned_val_mAP"] or 0.0))
    results: dict[str, Any] = {
        "experiment": "similarity",
        "config": cfg.to_dict(),
        "data": {
            "name": pool.name,
            "n_pool": len(pool),
            "n_heldout": len(heldout),
            "image_size": cfg.image_size,
            "pool_fingerprint": pool.fingerprint(),
        },
        "benchmark": {
            "folder": str(out / "customizations"),
            "cases": len(bench.cases),
            "roles": {r: bench.roles.count(r) for r in ("tune", "val", "unseen")},
            "queries": {
                r: int(sum(len(s) for s, rr in zip(bench.samples, bench.roles, strict=True) if rr == r))
                for r in ("tune", "val", "unseen")
            },
            "exemplars": len(bench.exemplars),
            "control_queries": len(bench.control),
        },
        "influence_strength": strength,
        "chance_unseen": chance,
        "retrieval": retrieval,
        "control": controls,
        "hubness": hubs,
        "soft_attribution": soft,
        "tuning": tuning,
        "skipped_extractors": skipped,
        "gallery_extractor": shown,
        "claims": claims,
        "timings_seconds": timings,
    }
    report = _report(cfg, results, bench, gallery_feats[shown], shown, out)
    lap("report")
    results["timings_seconds"] = timings
    report.write(out, filename="report.html")
    atomic_write_json(out / "results.json", results)
    return results


def _row(rows: Sequence[Mapping[str, Any]], **match: Any) -> Mapping[str, Any] | None:
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def _claims(
    retrieval: Sequence[Mapping[str, Any]],
    controls: Sequence[Mapping[str, Any]],
    soft: Sequence[Mapping[str, Any]],
    chance: Mapping[str, Mapping[str, float]],
) -> dict[str, Any]:
    """The issue's claims, checked on unseen queries under protocol A (control and chance likewise)."""
    names = sorted({str(r["extractor"]) for r in retrieval})
    out: dict[str, Any] = {"chance_mAP": chance["A"]["mAP"], "per_extractor": {}}
    for name in names:
        un = _row(retrieval, extractor=name, features="untuned", protocol="A", split="unseen", case="all")
        tu = _row(retrieval, extractor=name, features="tuned", protocol="A", split="unseen", case="all")
        ctrl = _row(controls, extractor=name, features="untuned", protocol="A")
        sf = _row(soft, extractor=name, features="tuned")
        assert un is not None and tu is not None and ctrl is not None and sf is not None
        out["per_extractor"][name] = {
            "untuned_mAP": un["mAP"],
            "tuned_mAP": tu["mAP"],
            "tuned_minus_untuned": tu["mAP"] - un["mAP"],
            "untuned_over_chance": un["mAP"] / chance["A"]["mAP"],
            "control_mAP": ctrl["mAP"],
            "control_over_chance": ctrl["mAP"] / chance["A"]["mAP"],
            "calibration_lowers_nll": sf["after"]["nll"] < sf["before"]["nll"],
        }
    per = out["per_extractor"].values()
    out["every_method_far_above_chance"] = all(p["untuned_over_chance"] > 3 for p in per)
    out["tuned_beats_untuned"] = {n: p["tuned_minus_untuned"] > 1e-6 for n, p in out["per_extractor"].items()}
    out["tuned_gain_at_least_0.1"] = {n: p["tuned_minus_untuned"] >= 0.1 for n, p in out["per_extractor"].items()}
    out["control_near_chance"] = all(p["control_over_chance"] < 3 for p in per)
    out["calibration_lowers_nll"] = all(p["calibration_lowers_nll"] for p in per)
    return out


# ------------------------------------------------------------------------------------------ report

_METRIC_COLUMNS = ("mAP", "recall@5", "recall@10", "recall@100", "recall@|E|")


def _fmt_row(row: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {k: row.get(k) for k in keys}


def _report(
    cfg: SimilarityExperimentConfig,
    results: Mapping[str, Any],
    bench: CustomizationBench,
    shown: tuple[BenchFeatures, BenchFeatures, dict[str, Any]],
    shown_name: str,
    out: Path,
) -> Report:
    report = Report(
        "Feature-similarity data attribution on a customization benchmark",
        subtitle="Wang et al., ICCV 2023 (Evaluating data attribution for text-to-image models), at small scale",
        meta={"dataset": cfg.data, "seed": cfg.seed, "quick": cfg.quick, "pool": len(bench.pool)},
    )
    claims = results["claims"]
    chance = results["chance_unseen"]
    strength = results["influence_strength"]
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
                "exemplar is the pixel NN": strength["exemplar_nn_rate"],
                "near copies": strength["near_copy_rate"],
                "chance mAP": chance["A"]["mAP"],
                "every method > 3x chance": claims["every_method_far_above_chance"],
                "control < 3x chance": claims["control_near_chance"],
                "calibration lowers NLL": claims["calibration_lowers_nll"],
            },
            notes={
                "exemplar is the pixel NN": "share of samples whose nearest pool+exemplar image (pixels) is an exemplar",
                "near copies": "samples closer to an exemplar than 1/4 of the held-out-to-pool distance",
            },
        )
    )
    head = []
    for name in results["tuning"]:
        row: dict[str, Any] = {"extractor": name}
        for variant in ("untuned", "tuned"):
            r = _row(results["retrieval"], extractor=name, features=variant, protocol="A", split="unseen", case="all")
            assert r is not None
            for metric in _METRIC_COLUMNS:
                row[f"{variant} {metric}"] = r[metric]
        head.append(row)
    head.append({"extractor": "chance", **{f"untuned {m}": chance["A"][m] for m in _METRIC_COLUMNS}})
    summary.add(
        Table(head, caption="Unseen classes, protocol A: untuned vs tuned features.", highlight={"tuned mAP": "max"})
    )
    bars = {}
    for name in results["tuning"]:
        for variant in ("untuned", "tuned"):
            r = _row(results["retrieval"], extractor=name, features=variant, protocol="A", split="unseen", case="all")
            assert r is not None
            bars[f"{name} ({variant})"] = float(r["mAP"])
    bars["chance"] = chance["A"]["mAP"]
    summary.add(Figure(metric_bars(bars, ylabel="mAP"), caption="mAP on unseen-class queries, protocol A."))
    report.add(summary)

    bench_section = Section(
        "benchmark",
        "The customization benchmark",
        intro=f"{results['benchmark']['cases']} customized models ({cfg.n_object} object, {cfg.n_style} style), "
        f"{cfg.finetune_steps} fine-tuning steps at lr {cfg.finetune_lr:g} with prior preservation (half of each batch "
        f"is base-model samples), {cfg.n_samples} samples each. Roles: {results['benchmark']['roles']}.",
    )
    bench_section.add(KeyValue(dict(strength)))
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
    keys = ["extractor", "features", "protocol", "split", "case", "queries", *_METRIC_COLUMNS]
    full.add(Table([_fmt_row(r, keys) for r in results["retrieval"]], caption="All retrieval rows."))
    ctrl_keys = ["extractor", "features", "protocol", *_METRIC_COLUMNS]
    full.add(
        Table(
            [_fmt_row(r, ctrl_keys) for r in results["control"]],
            caption="Negative control: samples of the un-customized base model, positives = an unseen case's "
            f"exemplars (chance mAP: A {chance['A']['mAP']:.4f}, B {chance['B']['mAP']:.4f}).",
        )
    )
    report.add(full)

    hub = Section(
        "hubness",
        "Hubness and tuning",
        intro="Hub statistics of the unseen queries' protocol-B rankings "
        "(k = 10). items_top1_share: share of unseen queries whose top-1 is one of the exemplars the mapper "
        "was tuned on (the failure mode where tuned exemplars become hubs).",
    )
    hub.add(Table(list(results["hubness"]), caption="Hub statistics."))
    hub.add(
        Table(
            [{"extractor": n, **{k: v for k, v in t.items() if k != "history"}} for n, t in results["tuning"].items()],
            caption="Tuning: validation mAP at the identity (step 0) and of the kept mapper.",
        )
    )
    report.add(hub)

    soft_rows = []
    for r in results["soft_attribution"]:
        for when in ("before", "after"):
            soft_rows.append({"extractor": r["extractor"], "features": r["features"], "calibration": when, **r[when]})
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
    cal = {v: SoftCalibration(soft_by[v]["after"]["inv_tau"], soft_by[v]["after"]["bias"]) for v in soft_by}
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
        KeyValue(dict(results["timings_seconds"]), caption="seconds per stage"),
        Table([{"field": k, "value": str(v)} for k, v in cfg.to_dict().items()], caption="configuration"),
    )
    if results["skipped_extractors"]:
        setup.add(Text(f"Skipped extractors: {results['skipped_extractors']}", tone="warning"))
    report.add(setup)
    return report


# ------------------------------------------------------------------------------------------ demo

#: Fine-tuning steps of the demo's customized model (quick demo: fewer).
DEMO_FINETUNE_STEPS = 150


def similarity_section(ctx: DemoContext) -> Section:
    """Demo: customize the demo DDPM on one held-out digit, then attribute its samples by feature similarity.

    The customized model (cached under ``ctx.out/similarity``) is fine-tuned on one test-split image; its
    samples are attributed against the training images plus that exemplar with pixel and classifier
    features; the section shows the exemplar's rank and a top-k gallery with soft shares.
    """
    ddpm = ctx.ddpm().model
    classifier = ctx.classifier().model
    assert isinstance(ddpm, DDPM)
    t0 = time.perf_counter()  # the section's own work (the demo's models are shared and cached)
    size = ctx.image_size("ddpm")
    seed = ctx.config.seed
    steps = 40 if ctx.config.quick else DEMO_FINETUNE_STEPS
    heldout = ctx.dataset("test", size)
    if heldout.labels is None:
        raise DataError(f"The similarity demo needs labelled data; {heldout.name!r} has none.")
    cc = CustomizationConfig(
        n_object=1,
        n_style=0,
        finetune_steps=steps,
        finetune_lr=1e-3,
        batch_size=16,
        n_prior=32,
        n_samples=8,
        ddim_steps=25,
        seed=seed,
    )
    folder = ctx.out / "similarity" / f"customization-{steps}"
    case = build_customizations(ddpm, heldout.images, heldout.labels.numpy(), folder, cc, show_progress=False)[0]
    exemplar = case.exemplar_images(folder)
    samples = case.sample_images(folder)
    train = ctx.dataset("train", size).images
    candidates = torch.cat([train, exemplar])
    ex_row = len(train)
    section = Section(
        "similarity",
        "Which training image is this generation built on? (feature similarity)",
        intro=f"The demo DDPM fine-tuned for {steps} steps on one held-out digit (the *exemplar*, not in its "
        "training set) with prior preservation: by construction its samples are influenced by the exemplar. "
        f"Attribution by similarity ranks the {len(train)} training images plus the exemplar for each sample; the "
        "soft shares say how influence is spread (Wang et al., ICCV 2023). Full study with tuned features: "
        "`genprov reproduce similarity`.",
    )
    if ctx.config.quick:
        section.add(Text(f"Quick mode: {steps} fine-tuning steps, so customization is weak.", tone="note"))
    results: dict[str, Any] = {"n_candidates": len(candidates), "finetune_steps": steps}
    rows = []
    extractors: list[tuple[str, FeatureExtractor, int]] = [("pixels", FEATURE_EXTRACTORS.create("pixels"), size)]
    clf_size = ctx.image_size("classifier")
    extractors.append(("classifier", ClassifierExtractor(classifier), clf_size))
    galleries = []
    for label, extractor, side in extractors:
        attributor = SimilarityAttributor(extractor).fit(resize_images(candidates, side), show_progress=False)
        queries = resize_images(samples, side)
        scores = attributor.scores(queries)
        ranks = (scores > scores[:, ex_row : ex_row + 1]).sum(dim=1) + 1
        result = attributor.attribute(queries[:1], k=8)
        rows.append(
            {
                "features": label,
                "median rank of the exemplar": float(ranks.double().median()),
                "exemplar in top-10": float((ranks <= 10).double().mean()),
                "exemplar share (sample 0)": float(
                    soft_attribution(scores[:1], attributor.config.inv_tau, attributor.config.bias)[0, ex_row]
                ),
            }
        )
        captions = [("exemplar ✓ " if int(i) == ex_row else "") + f"#{int(i)}" for i in result.indices[0]]
        assert result.soft is not None
        galleries.append(
            GalleryRow.from_tensors(
                f"{label}: top-8 (soft share)",
                candidates[torch.as_tensor(result.indices[0])],
                scores=result.soft[0],
                captions=captions,
                tone="positive",
            )
        )
    results["ranks"] = rows
    section.add(
        grid_image(
            torch.cat([exemplar, samples]), "The exemplar, then samples of the customized model.", nrow=9, width_px=540
        ),
        Table(rows, caption="Where the exemplar ranks among the training images, per sample."),
        Gallery(
            [GalleryRow.from_tensors("exemplar", exemplar, captions=["exemplar"]), *galleries],
            query=samples[0],
            query_caption="sample 0",
            caption="Top training images of sample 0 with their soft share of influence.",
        ),
    )
    results["seconds"] = round(time.perf_counter() - t0, 2)
    ctx.results["similarity"] = results
    return section
