"""Settings of ``genprov reproduce dtrak``: :class:`DTRAKExperimentConfig` and its data / quick presets."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

from genprov.attribution.data.trak import DAMPING_GRID, TRAKConfig
from genprov.config import require, require_choices, require_ints
from genprov.experiments.base import ExperimentConfig
from genprov.models.diffusion import DDPM_PRESETS

__all__ = ["BUDGETS", "TRAIN_RECIPES", "DTRAKExperimentConfig", "train_config_values"]

#: Per-dataset field values: the scale curve digits 8x8 -> MNIST 28x28 (1,000 images) -> CIFAR-2 32x32
#: (automobile and horse: 750 images, nearly all of the 751 in the shared ``cifar2_auto_horse.npz``; the
#: paper's 5,000 with a 35.7M-parameter U-Net are beyond a CPU).
_DATA_PRESETS: dict[str, dict[str, Any]] = {
    "digits": {"image_size": 8, "preset": "small"},
    "mnist": {"image_size": 28, "preset": "small", "n_train": 1000},
    "fashion-mnist": {"image_size": 28, "preset": "small", "n_train": 1000},
    "cifar2": {"image_size": 32, "preset": "small", "n_train": 750},
}
#: Ground-truth and training budgets (``--set budget=...``), applied over the data preset. ``faithful``: the
#: paper's LDS protocol (D-TRAK ``CIFAR2/scripts/run_lds_val_sub.sh``: 3 training seeds per subset, 200
#: epochs; ``eval_unconditional.py:443``: the loss at every one of the T = 1000 timesteps, one noise each) with
#: 64 subsets. ``reduced`` (digits: about 75 minutes on 2 cores): 32 subsets x 2 seeds, 100 epochs, 200 draws
#: per query, 2 counterfactual queries, no K = 100 study row; its fidelity cost is a noisier ground truth (see
#: the noise ceiling) and models trained half as long (see the loss curve's plateau flag). MNIST and CIFAR-2
#: (background runs of a few hours) take 16 subsets x 2 seeds, 20 epochs, 50 draws and 32 + 32 queries.
_REDUCED_LARGE: dict[str, Any] = {
    "n_subsets": 16,
    "n_seeds": 2,
    "train_epochs": 20,
    "eval_draws": 50,
    "n_real_queries": 32,
    "n_gen_queries": 32,
    "counterfactual_queries": 2,
    "study": [{"noise": "batch-position"}],
}
BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "faithful": {"*": {"n_subsets": 64, "n_seeds": 3, "train_epochs": 200, "eval_draws": 1000}},
    "reduced": {
        "*": {
            "n_subsets": 32,
            "n_seeds": 2,
            "train_epochs": 100,
            "eval_draws": 200,
            "counterfactual_queries": 2,
            "study": [{"proj_dim": 4096}, {"n_timesteps": 50}, {"projector": "gaussian"}, {"noise": "batch-position"}],
        },
        **{name: _REDUCED_LARGE for name in ("mnist", "fashion-mnist", "cifar2")},
    },
}
#: Optimiser settings of every DDPM of the run. ``d-trak``: the original's (``CIFAR2/train_unconditional.py``:
#: AdamW lr 1e-4, betas (0.95, 0.999), weight decay 1e-6 at lines 170-193 and ``run_train.sh``; cosine decay
#: after a warm-up of 10% of the steps, lines 568-578; gradient norm clipped at 1.0, line 689; no EMA, as
#: ``run_train.sh`` omits ``--use_ema``). ``genprov-v1``: the earlier genprov recipe (Adam 1e-3, constant,
#: EMA 0.995: use with ``featurize_weights=ema`` and ``train_steps=600`` for the earlier run).
TRAIN_RECIPES: dict[str, dict[str, Any]] = {
    "d-trak": {
        "lr": 1e-4,
        "betas": (0.95, 0.999),
        "weight_decay": 1e-6,
        "lr_schedule": "cosine",
        "warmup_fraction": 0.1,
        "grad_clip": 1.0,
    },
    "genprov-v1": {"lr": 1e-3, "betas": (0.9, 0.999)},
}
#: EMA decay of ``featurize_weights="ema"`` (genprov's earlier default for short CPU runs).
_EMA_DECAY = 0.995
_QUICK: dict[str, Any] = {
    "preset": "tiny",
    "n_train": 100,
    "train_epochs": 40,
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

    The constructor's defaults are the faithful digits run; :meth:`from_dict` (what ``genprov reproduce``
    uses) starts from the dataset's preset, then the ``budget``'s sizes (:data:`BUDGETS`) or, with
    ``quick``, the few-minute sizes, then applies the keys given.

    Attributes:
        data: ``"digits"`` (built in), ``"mnist"``, ``"fashion-mnist"`` or ``"cifar2"`` (need ``data_root``; their
            presets set the size and model), or any other dataset name or path (resized to ``image_size``).
        data_root: Folder of the dataset files (``None``: ``$GENPROV_DATA``).
        seed: Seed of the data choice, every model, the noise and the projections.
        quick: A few-minute smoke run.
        image_size: Side the images are resized to.
        preset: DDPM size (``DDPMConfig.preset``).
        n_train: Training images (a seeded random subset of the train split; a source without a test split
            is split by the seed first, see :func:`genprov.data.load_train_test`).
        budget: ``"faithful"`` or ``"reduced"`` (:data:`BUDGETS`; applied by :meth:`from_dict`).
        train_recipe: Optimiser settings, a key of :data:`TRAIN_RECIPES` (``d-trak``: the original's).
        train_epochs: Epochs of every DDPM (full model, subset models, counterfactual retrains): a model on
            ``m`` images trains ``train_epochs * ceil(m / batch_size)`` steps, as the original's
            ``num_epochs`` (so a half subset trains half the steps of the full model).
        train_steps: Fixed steps for every model instead (``None``: from ``train_epochs``; 600 was the
            earlier genprov variant, whose subset models trained as many steps as the full model).
        featurize_weights: ``"trained"`` (the original: no EMA) or ``"ema"`` (every model keeps an EMA of
            its weights, decay 0.995, and is sampled, featurized and measured at it).
        batch_size: Training batch size.
        n_subsets: LDS subsets (random halves).
        subset_fraction: Fraction of the training set in each subset (alpha).
        n_seeds: Training seeds per subset; outputs are averaged over them, and two or more give the
            noise ceiling.
        n_real_queries: Held-out real query images (half choose lambda, half are reported).
        n_gen_queries: Generated query images (same split).
        eval_draws: (timestep, noise) pairs per query for the measured loss (stratified over the T
            timesteps: 1000 = every timestep once, as the original).
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
    budget: str = "faithful"
    train_recipe: str = "d-trak"
    train_epochs: int = 200
    train_steps: int | None = None
    featurize_weights: str = "trained"
    batch_size: int = 32
    n_subsets: int = 64
    subset_fraction: float = 0.5
    n_seeds: int = 3
    n_real_queries: int = 64
    n_gen_queries: int = 64
    eval_draws: int = 1000
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
        {"noise": "batch-position"},
    )
    n_workers: int = 2
    n_boot: int = 1000
    preset_selectors: ClassVar[tuple[str, ...]] = ("budget",)

    def validate(self) -> None:
        super().validate()
        require_choices(
            self,
            {
                "preset": DDPM_PRESETS,
                "budget": BUDGETS,
                "train_recipe": TRAIN_RECIPES,
                "featurize_weights": ("trained", "ema"),
            },
        )
        if self.train_steps is not None:
            require_ints(self, ("train_steps",), minimum=1)
        require_ints(
            self,
            (
                "image_size",
                "n_train",
                "train_epochs",
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
        n_test_gen = self.n_gen_queries - self.n_gen_queries // 2  # the other half chooses lambda
        require(
            self.counterfactual_queries <= n_test_gen,
            "counterfactual_queries",
            f"at most the {n_test_gen} generated test queries (half of n_gen_queries)",
            self.counterfactual_queries,
        )
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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DTRAKExperimentConfig:
        """As :meth:`ExperimentConfig.from_dict`, with the ``budget``'s sizes between the data preset and the
        keys given (not with ``quick``, whose sizes win)."""
        if isinstance(data, Mapping) and not data.get("quick", False):
            budget = BUDGETS.get(str(data.get("budget", "faithful")), {})
            name = str(data.get("data", "digits"))
            data = {**budget.get("*", {}), **budget.get(name, {}), **data}
        return super().from_dict(data)


def train_config_values(cfg: DTRAKExperimentConfig, n_images: int, seed: int) -> dict[str, Any]:
    """The ``TrainConfig`` fields of a DDPM trained on ``n_images`` images with ``seed`` under ``cfg``."""
    steps = cfg.train_steps or cfg.train_epochs * math.ceil(n_images / cfg.batch_size)
    ema = {"ema_decay": _EMA_DECAY if cfg.featurize_weights == "ema" else None}
    return {**TRAIN_RECIPES[cfg.train_recipe], **ema, "n_steps": steps, "batch_size": cfg.batch_size, "seed": seed}
