"""The customization benchmark of feature-similarity attribution: reading it, and its tuning protocol.

A benchmark folder (built by ``genprov reproduce similarity``, see
:func:`genprov.experiments.similarity.customization.build_customizations`) holds customized models' exemplars and
samples as PNG files plus ``manifest.json``: one :class:`Customization` per case. Its *seen* cases may
tune features; they are split into tuning and validation cases by :func:`case_roles`. The tuning protocol
(:func:`tune_mapper`) trains a :class:`~genprov.attribution.data.mapper.FeatureMapper` per candidate on the
tuning cases, early-stops it on the validation cases' mAP and keeps the candidate best on validation; the
soft attribution is calibrated on the validation queries' protocol-B scores (candidates: the pool plus
every exemplar, :func:`protocol_b_scores`). Unseen cases are never looked at.

:func:`tune_on_customizations` runs the whole protocol on a benchmark folder (``genprov similarity tune``);
``genprov reproduce similarity`` runs :func:`tune_mapper` on the benchmark it builds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genprov.attribution.data import (
    FeatureExtractor,
    FeatureMapper,
    SoftCalibration,
    TuningConfig,
    fit_soft_calibration,
    split_classes,
)
from genprov.data import load_images
from genprov.exceptions import DataError
from genprov.utils.io import read_json

__all__ = [
    "DEFAULT_SEEN_CLASSES",
    "MANIFEST",
    "N_VAL_CLASSES",
    "TUNING_GRID",
    "BenchFeatures",
    "Customization",
    "CustomizationBench",
    "case_roles",
    "exemplar_nn_rates",
    "load_customizations",
    "protocol_b_scores",
    "similarity_scores",
    "tune_mapper",
    "tune_on_customizations",
]

#: The benchmark's index file.
MANIFEST = "manifest.json"
#: Classes whose cases may tune features, unless the benchmark's manifest records others.
DEFAULT_SEEN_CLASSES: tuple[int, ...] = (0, 1, 2, 3, 4)
#: Seen classes whose object cases validate (early stopping, calibration) instead of tuning.
N_VAL_CLASSES = 2
#: Candidate :class:`~genprov.attribution.data.mapper.TuningConfig` changes (learning rate, one or two
#: towers) of the similarity reproduction; ``genprov similarity tune --grid`` tries the same ones.
TUNING_GRID: tuple[dict[str, Any], ...] = (
    {"lr": 1e-3},
    {"lr": 1e-4},
    {"lr": 1e-5, "max_steps": 1000},
    {"lr": 1e-4, "two_towers": False},
    {"lr": 1e-5, "two_towers": False, "max_steps": 1000},
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Customization:
    """One customized model of the benchmark, as the manifest records it.

    Attributes:
        id: ``"c-000"``, ...
        kind: ``"object"`` or ``"style"``.
        style: The style name (style cases) or ``None``.
        classes: Class of each exemplar.
        split: ``"seen"`` (may tune features) or ``"unseen"`` (test).
        exemplars: Exemplar PNG paths, relative to the benchmark folder.
        samples: Sample PNG paths, relative to the benchmark folder.
        source_indices: Index of each exemplar in the held-out split it came from.
        prompt: The prompt the samples were generated from (a text-to-image customization; ``None``: an
            unconditional model).
        lora: The customization's LoRA folder, relative to the benchmark folder (``None``: none).
    """

    id: str
    kind: str
    style: str | None
    classes: tuple[int, ...]
    split: str
    exemplars: tuple[str, ...]
    samples: tuple[str, ...]
    source_indices: tuple[int, ...]
    prompt: str | None = None
    lora: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The manifest entry (JSON-ready; ``prompt`` and ``lora`` only when set)."""
        entry = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        return {k: v for k, v in entry.items() if v is not None or k not in ("prompt", "lora")}

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> Customization:
        """Read a manifest entry."""
        try:
            return cls(
                id=str(entry["id"]),
                kind=str(entry["kind"]),
                style=entry.get("style"),
                classes=tuple(int(c) for c in entry["classes"]),
                split=str(entry["split"]),
                exemplars=tuple(entry["exemplars"]),
                samples=tuple(entry["samples"]),
                source_indices=tuple(int(i) for i in entry["source_indices"]),
                prompt=entry.get("prompt"),
                lora=entry.get("lora"),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"Malformed customization entry {entry!r}: {err}. Rebuild the benchmark.") from err

    def exemplar_images(self, folder: Path) -> Tensor:
        """The exemplars as (e, C, H, W) images in [-1, 1]."""
        return load_images([folder / p for p in self.exemplars])

    def sample_images(self, folder: Path) -> Tensor:
        """The samples as (s, C, H, W) images in [-1, 1]."""
        return load_images([folder / p for p in self.samples])


def load_customizations(folder: str | Path) -> list[Customization]:
    """The finished customizations recorded in ``folder/manifest.json``."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} does not exist; build the benchmark first (genprov reproduce similarity).")
    return [Customization.from_dict(e) for e in read_json(path).get("customizations", [])]


def case_roles(cases: Sequence[Customization], seen_classes: Sequence[int], n_val: int, seed: int) -> list[str]:
    """``"tune"`` / ``"val"`` / ``"unseen"`` per case: seen object cases by class (the object cases of
    ``n_val`` seeded seen classes validate), seen style cases every third.

    When that leaves no validation (or no tuning) case, the last (first) seen case takes the role.
    """
    _, val_classes = split_classes(list(seen_classes), n_val, seed)
    roles, n_style_seen = [], 0
    for c in cases:
        if c.split != "seen":
            roles.append("unseen")
        elif c.kind == "object":
            roles.append("val" if c.classes[0] in val_classes else "tune")
        else:
            roles.append("val" if n_style_seen % 3 == 2 else "tune")
            n_style_seen += 1
    seen = [i for i, c in enumerate(cases) if c.split == "seen"]
    if len(seen) >= 2:  # tiny benchmarks: make sure both roles exist
        if "val" not in roles:
            roles[seen[-1]] = "val"
        if "tune" not in roles:
            roles[seen[0]] = "tune"
    return roles


@dataclasses.dataclass
class CustomizationBench:
    """A benchmark's images as tensors (in [-1, 1]), with each case's role.

    Attributes:
        pool: (n, C, H, W) the base model's training images (the attribution candidates besides exemplars).
        cases: The customizations.
        roles: ``"tune"`` / ``"val"`` / ``"unseen"`` per case (:func:`case_roles`).
        exemplars: Every case's exemplars, concatenated in case order.
        ex_rows: Rows of each case's exemplars in ``exemplars``.
        samples: Per case, its (s, C, H, W) samples (the queries).
        control: Samples of the un-customized base model (negative-control queries; may be empty).
        control_case: The (unseen) case whose exemplars are each control query's positives.
    """

    pool: Tensor
    cases: list[Customization]
    roles: list[str]
    exemplars: Tensor
    ex_rows: list[np.ndarray]
    samples: list[Tensor]
    control: Tensor
    control_case: np.ndarray

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        pool: Tensor,
        cases: Sequence[Customization],
        roles: Sequence[str],
        control: Tensor | None = None,
        control_case: Sequence[int] | None = None,
    ) -> CustomizationBench:
        """Read the cases' exemplars and samples from the benchmark ``folder``.

        Control queries (``control``) are assigned to the cases ``control_case`` names (one unseen case index per
        control query), by default to the unseen cases in turn.
        """
        folder = Path(folder)
        ex_list, ex_rows, first = [], [], 0
        for c in cases:
            ex = c.exemplar_images(folder)
            ex_list.append(ex)
            ex_rows.append(np.arange(first, first + len(ex)))
            first += len(ex)
        control = pool[:0] if control is None else control
        unseen = [i for i, r in enumerate(roles) if r == "unseen"]
        if control_case is None:
            control_case = [unseen[j % len(unseen)] for j in range(len(control))]
        if len(control_case) != len(control) or any(roles[int(i)] != "unseen" for i in control_case):
            raise DataError(
                f"control_case must name one unseen case per control query ({len(control)}); got {list(control_case)}."
            )
        return cls(
            pool=pool,
            cases=list(cases),
            roles=list(roles),
            exemplars=torch.cat(ex_list),
            ex_rows=ex_rows,
            samples=[c.sample_images(folder) for c in cases],
            control=control,
            control_case=np.asarray(control_case, dtype=np.int64),
        )

    def role_cases(self, role: str) -> list[int]:
        """Indices of the cases with ``role``."""
        return [i for i, r in enumerate(self.roles) if r == role]


@dataclasses.dataclass
class BenchFeatures:
    """Features of a :class:`CustomizationBench`'s images (same layout)."""

    pool: Tensor
    exemplars: Tensor
    samples: list[Tensor]
    control: Tensor

    @classmethod
    def extract(cls, extractor: FeatureExtractor, bench: CustomizationBench) -> BenchFeatures:
        """Features of every image of ``bench``."""
        sizes = [len(s) for s in bench.samples]
        return cls(
            pool=extractor.extract(bench.pool),
            exemplars=extractor.extract(bench.exemplars),
            samples=list(extractor.extract(torch.cat(bench.samples)).split(sizes)),
            control=extractor.extract(bench.control) if len(bench.control) else torch.empty(0, 0),
        )

    def mapped(self, mapper: FeatureMapper | None) -> BenchFeatures:
        """The features after ``mapper`` (training side for pool and exemplars, query side for samples)."""
        if mapper is None:
            return self
        return BenchFeatures(
            pool=mapper.map_train(self.pool),
            exemplars=mapper.map_train(self.exemplars),
            samples=[mapper.map_queries(s) for s in self.samples],
            control=mapper.map_queries(self.control) if len(self.control) else self.control,
        )


def similarity_scores(queries: Tensor, candidates: Tensor) -> np.ndarray:
    """(n_q, n_candidates) inner products in float64 (features are L2-normalised: cosine similarity)."""
    return (queries.to(torch.float64) @ candidates.to(torch.float64).T).numpy()


def protocol_b_scores(
    feats: BenchFeatures, bench: CustomizationBench, role: str
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Protocol-B scores of all queries of one role (shared candidates: pool + every exemplar) and each
    query's positives (its own case's exemplars, as candidate rows)."""
    idx = bench.role_cases(role)
    q = torch.cat([feats.samples[i] for i in idx])
    n_pool = len(feats.pool)
    positives = [n_pool + bench.ex_rows[i] for i in idx for _ in range(len(feats.samples[i]))]
    return similarity_scores(q, torch.cat([feats.pool, feats.exemplars])), positives


def exemplar_nn_rates(feats: BenchFeatures, bench: CustomizationBench) -> list[float]:
    """Per case, the share of its samples whose most similar candidate among the pool and its own exemplars
    (protocol A) is an exemplar: the customization's influence strength in a feature space."""
    rates = []
    for i, rows in enumerate(bench.ex_rows):
        scores = similarity_scores(feats.samples[i], torch.cat([feats.pool, feats.exemplars[torch.as_tensor(rows)]]))
        rates.append(float((scores.argmax(axis=1) >= len(feats.pool)).mean()))
    return rates


def tune_mapper(
    feats: BenchFeatures, bench: CustomizationBench, config: TuningConfig, grid: Sequence[Mapping[str, Any]] = ()
) -> FeatureMapper:
    """Fit a mapper on the tuning cases, early-stopped on the validation cases.

    Each case's candidates are the pool plus the exemplars of the cases of its role. Every ``grid`` change
    of ``config`` is trained (empty: ``config`` alone); the one with the best validation mAP is returned
    (ties: the first). Unseen cases are never looked at.
    """

    def part(role: str) -> tuple[Tensor, list[np.ndarray], Tensor]:
        idx = bench.role_cases(role)
        rows = np.concatenate([bench.ex_rows[i] for i in idx])
        local = {int(r): j for j, r in enumerate(rows)}
        n_pool = len(feats.pool)
        queries, positives = [], []
        for i in idx:
            queries.append(feats.samples[i])
            pos = np.array([n_pool + local[int(r)] for r in bench.ex_rows[i]])
            positives.extend([pos] * len(feats.samples[i]))
        return torch.cat(queries), positives, torch.cat([feats.pool, feats.exemplars[torch.as_tensor(rows)]])

    tq, tp, tpool = part("tune")
    vq, vp, vpool = part("val")
    best: FeatureMapper | None = None
    for change in grid or ({},):
        mapper = FeatureMapper(config.replace(**change))
        mapper.fit(tq, tp, tpool, val_queries=vq, val_positives=vp, val_pool=vpool)
        if best is None or float(mapper.best_val_map_ or 0.0) > float(best.best_val_map_ or 0.0):
            best = mapper
    assert best is not None
    return best


def tune_on_customizations(
    extractor: FeatureExtractor,
    pool: Tensor,
    folder: str | Path,
    config: TuningConfig | None = None,
    *,
    n_val_classes: int = N_VAL_CLASSES,
    seed: int = 0,
    grid: Sequence[Mapping[str, Any]] = (),
) -> tuple[FeatureMapper, SoftCalibration, dict[str, Any]]:
    """Tune a mapper on a customization benchmark's seen cases and calibrate the soft attribution.

    The seen cases are split by :func:`case_roles` as in ``genprov reproduce similarity``; the mapper is
    chosen by :func:`tune_mapper`, and the soft attribution's scalars are fitted on the validation queries'
    tuned protocol-B scores. Unseen cases are not used.

    Args:
        extractor: The (frozen) feature extractor.
        pool: (n, C, H, W) the training images (the base model's pool; negatives).
        folder: The benchmark folder (``manifest.json``, from ``build_customizations``).
        config: Tuning settings (default: ``TuningConfig(seed=seed)``).
        n_val_classes: Seen classes held out for validation.
        seed: Seed of the class split.
        grid: Candidate changes of ``config``; the mapper with the best validation mAP is kept (empty:
            ``config`` alone).

    Returns:
        ``(mapper, calibration, summary)``.

    Raises:
        DataError: The benchmark has fewer than two seen cases (nothing to tune on and validate with).
    """
    folder = Path(folder)
    cases = load_customizations(folder)
    recorded = read_json(folder / MANIFEST).get("config", {}).get("seen_classes", DEFAULT_SEEN_CLASSES)
    roles = case_roles(cases, recorded, n_val_classes, seed)
    if "tune" not in roles or "val" not in roles:
        raise DataError(f"{folder} needs at least two seen customizations to tune on and validate with; got {roles}.")
    bench = CustomizationBench.from_folder(folder, pool, cases, roles)
    feats = BenchFeatures.extract(extractor, bench)
    mapper = tune_mapper(feats, bench, config or TuningConfig(seed=seed), grid)
    val_s, val_p = protocol_b_scores(feats.mapped(mapper), bench, "val")
    calibration = fit_soft_calibration(val_s, val_p)
    summary = {
        "roles": {r: roles.count(r) for r in ("tune", "val", "unseen")},
        "chosen": {k: v for k, v in mapper.config.to_dict().items() if k in ("lr", "two_towers", "mapper")},
        "best_step": mapper.best_step_,
        "untuned_val_mAP": mapper.untuned_val_map_,
        "tuned_val_mAP": mapper.best_val_map_,
        "calibration": calibration.to_dict(),
    }
    return mapper, calibration, summary
