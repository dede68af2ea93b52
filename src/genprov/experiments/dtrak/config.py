"""Settings of ``genprov reproduce dtrak``: :class:`DTRAKExperimentConfig` and its data / quick presets."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from genprov.attribution.data.trak import DAMPING_GRID, TRAKConfig
from genprov.config import require, require_choices, require_ints
from genprov.experiments.base import ExperimentConfig
from genprov.models.diffusion import DDPM_PRESETS

__all__ = ["DTRAKExperimentConfig"]

#: Per-dataset field values (CPU-sized: MNIST and CIFAR-2 are resized to 16x16).
_DATA_PRESETS: dict[str, dict[str, Any]] = {
    "digits": {"image_size": 8, "preset": "small"},
    "mnist": {"image_size": 16, "preset": "base"},
    "fashion-mnist": {"image_size": 16, "preset": "base"},
    "cifar2": {"image_size": 16, "preset": "base"},
}
_QUICK: dict[str, Any] = {
    "preset": "tiny",
    "n_train": 100,
    "train_steps": 150,
    "n_subsets": 8,
    "n_seeds": 2,
    "n_real_queries": 16,
    "n_gen_queries": 16,
    "eval_draws": 16,
    "proj_dim": 256,
    "counterfactual_queries": 2,
    "counterfactual_k": 10,
    "classifier_steps": 100,
    "n_boot": 200,
    "gallery_queries": 2,
    "n_workers": 1,
    "study": [],
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DTRAKExperimentConfig(ExperimentConfig):
    """What ``run_dtrak`` trains and measures.

    The constructor's defaults are the full digits run (about 30 minutes on 2 cores); :meth:`from_dict`
    (what ``genprov reproduce`` uses) starts from the dataset's preset and, with ``quick``, the
    few-minute sizes, then applies the keys given.

    Attributes:
        data: ``"digits"`` (built in), ``"mnist"``, ``"fashion-mnist"`` or ``"cifar2"`` (need ``data_root``).
        data_root: Folder of the dataset files (``None``: ``$GENPROV_DATA``).
        seed: Seed of the data choice, every model, the noise and the projections.
        quick: A few-minute smoke run.
        image_size: Side the images are resized to.
        preset: DDPM size (``DDPMConfig.preset``).
        n_train: Training images (a seeded random subset of the train split).
        train_steps: Training steps of every DDPM (full model, subset models, counterfactual retrains).
        batch_size: Training batch size.
        n_subsets: LDS subsets (random halves).
        subset_fraction: Fraction of the training set in each subset (alpha).
        n_seeds: Training seeds per subset; outputs are averaged over them, and two or more give the
            noise ceiling.
        n_real_queries: Held-out real query images (half choose lambda, half are reported).
        n_gen_queries: Generated query images (same split).
        eval_draws: (timestep, noise) pairs per query for the measured loss.
        n_timesteps: K, timesteps per example in the features.
        proj_dim: Projection dimension k.
        projector: Projector (``sjlt`` default; ``gaussian`` for TRAK's reference).
        relative_dampings: lambda grid, relative to ``trace(Phi^T Phi) / k``.
        counterfactual_queries: Generated images tested by retraining.
        counterfactual_k: Training images removed per counterfactual retrain.
        classifier_steps: Steps of the classifier whose features give the feature similarity baseline
            and the counterfactual cosine.
        gallery_queries: Queries shown with their top influencers.
        study: Attribution variants measured on the same benchmark, each a dict of ``TRAKConfig`` changes
            (e.g. ``{"proj_dim": 4096}``); TRAK and D-TRAK are run with each.
        n_workers: Processes training the subset models (each single-threaded).
        n_boot: Bootstrap resamples of the confidence intervals.
    """

    data: str = "digits"
    data_root: str | None = None
    image_size: int = 8
    preset: str = "small"
    n_train: int = 400
    train_steps: int = 600
    batch_size: int = 32
    n_subsets: int = 32
    subset_fraction: float = 0.5
    n_seeds: int = 2
    n_real_queries: int = 64
    n_gen_queries: int = 64
    eval_draws: int = 48
    n_timesteps: int = 10
    proj_dim: int = 1024
    projector: str = "sjlt"
    relative_dampings: tuple[float, ...] = DAMPING_GRID
    counterfactual_queries: int = 4
    counterfactual_k: int = 40
    classifier_steps: int = 400
    gallery_queries: int = 4
    study: tuple[dict[str, Any], ...] = (
        {"proj_dim": 4096},
        {"n_timesteps": 50},
        {"n_timesteps": 100},
        {"projector": "gaussian"},
    )
    n_workers: int = 2
    n_boot: int = 1000

    def validate(self) -> None:
        super().validate()
        require_choices(self, {"data": _DATA_PRESETS, "preset": DDPM_PRESETS})
        require_ints(
            self,
            (
                "image_size",
                "n_train",
                "train_steps",
                "batch_size",
                "n_subsets",
                "n_seeds",
                "eval_draws",
                "n_timesteps",
                "proj_dim",
                "counterfactual_k",
                "classifier_steps",
                "n_workers",
                "n_boot",
            ),
            minimum=1,
        )
        require_ints(self, ("n_real_queries", "n_gen_queries", "counterfactual_queries", "gallery_queries"), minimum=0)
        require(self.n_real_queries + self.n_gen_queries >= 4, "n_real_queries + n_gen_queries", "at least 4", 0)
        require(self.n_subsets >= 3, "n_subsets", "at least 3 (LDS ranks subsets)", self.n_subsets)
        require(0 < self.subset_fraction < 1, "subset_fraction", "a number in (0, 1)", self.subset_fraction)
        require(self.counterfactual_k < self.n_train, "counterfactual_k", f"less than n_train={self.n_train}", 0)
        require(self.counterfactual_queries <= self.n_gen_queries, "counterfactual_queries", "<= n_gen_queries", 0)
        for change in self.study:
            require(
                isinstance(change, Mapping) and bool(change), "study", "non-empty dicts of TRAKConfig changes", change
            )
            TRAKConfig().replace(**change)  # raises with a suggestion on an unknown field
        require(
            len(self.relative_dampings) >= 1 and all(d > 0 for d in self.relative_dampings),
            "relative_dampings",
            "positive numbers",
            self.relative_dampings,
        )

    @classmethod
    def preset_values(cls, data: str, quick: bool) -> dict[str, Any]:
        """The dataset's preset (:data:`_DATA_PRESETS`) and, with ``quick``, the few-minute sizes."""
        return {**_DATA_PRESETS.get(data, {}), **(_QUICK if quick else {})}
