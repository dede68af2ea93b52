"""Building an LDS benchmark: the subset models of D-TRAK's LDS, each trained and measured as one task.

The ground truth of :class:`~genprov.eval.lds.LDSBenchmark` (Park et al., 2023, def. 2.3; Zheng et al., 2024,
app. B): ``n_subsets`` random subsets of the training set (each a fraction ``subset_fraction`` of it, drawn from
``seed``), ``n_seeds`` DDPMs trained from scratch on each with one recipe (model ``j`` of every subset trains
with seed :func:`model_seed` ``(seed, j)``), and every model's diffusion loss on every query averaged over fixed
:class:`~genprov.eval.lds.EvalDraws` (:func:`~genprov.eval.lds.measure_losses`).

* :class:`LDSBenchmarkConfig`: the sizes and the training recipe (a :class:`~genprov.models.train_config.TrainConfig`
  whose ``n_steps`` and ``seed`` are set per model).
* :class:`LDSPlan`: everything that fixes the numbers (config, DDPM architecture, training images, subsets,
  draws): model ``r`` is subset ``r // n_seeds`` with seed index ``r % n_seeds``.
* :func:`build_lds_benchmark`: the driver. Each model is one shard of a float64
  :class:`~genprov.storage.FeatureStore` of losses (row ``r``: model ``r``'s losses on the queries), computed by a
  :class:`SubsetModelTask` (train, then measure, with one torch thread) on a backend of
  :mod:`genprov.storage.shards` (here, or Ray tasks) under the store's driver lock. A killed driver resumes with the
  models not yet written; a second driver is refused. With ``models`` the driver also writes each finished model's
  checkpoint files, returned by its task (workers never write the output folder). The losses are bit-identical
  whatever the backend, the number of workers and the order in which models finish.

Used by ``genprov trak lds-benchmark`` and ``genprov reproduce dtrak``. It lives in ``eval`` beside
:mod:`~genprov.eval.lds` (whose benchmark it builds), as :mod:`~genprov.eval.privacy_audit` trains its attacks:
training here only produces an evaluation's ground truth.

Example:
    >>> plan = LDSPlan.make(LDSBenchmarkConfig(n_subsets=64, n_seeds=3), ddpm_config, train.images, queries)  # doctest: +SKIP
    >>> bench = build_lds_benchmark(plan, "runs/lds/losses", RayBackend(address="auto", workers=16))  # doctest: +SKIP
    >>> bench.save("runs/lds/lds_benchmark.npz")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genprov.config import Config, require, require_ints
from genprov.data import random_subsets
from genprov.data.dataset import fingerprint_arrays
from genprov.eval.lds import EvalDraws, LDSBenchmark, measure_losses
from genprov.exceptions import DataError
from genprov.models.checkpoints import CONFIG_FILE, WEIGHTS_FILE
from genprov.models.diffusion import DDPM, DDPMConfig
from genprov.models.train_config import TrainConfig
from genprov.models.training import LOG_FILE, default_train_config, train_ddpm
from genprov.storage import FeatureStore
from genprov.storage.shards import Backend, Shard, run_shards
from genprov.utils.artifacts import INCOMPLETE_CHECKPOINT, check_output_folder
from genprov.utils.io import atomic_write_bytes
from genprov.utils.seeding import derive_seed

__all__ = [
    "BENCHMARK_FILE",
    "LOG_POINTS",
    "MODEL_THREADS",
    "LDSBenchmarkConfig",
    "LDSPlan",
    "SubsetModelTask",
    "build_lds_benchmark",
    "model_name",
    "model_seed",
]

#: The benchmark file a run writes (``LDSBenchmark.save``), read by ``genprov trak lds --benchmark``.
BENCHMARK_FILE = "lds_benchmark.npz"
#: Loss-log points per trained model (``log_every = n_steps // LOG_POINTS``).
LOG_POINTS = 100
#: Torch threads of each model's training and measurement, wherever it runs: the numbers depend on it, so one
#: thread everywhere makes them the same in this process and on every Ray worker (one CPU each).
MODEL_THREADS = 1
#: Checkpoint files a task returns for the driver to keep, in the order they are written (``config.json``,
#: which marks a finished checkpoint, last).
_KEPT_FILES = (WEIGHTS_FILE, LOG_FILE, CONFIG_FILE)
#: Prefix of the task's result keys carrying a kept file: ``"file:<model name>/<file name>"``.
_FILE_KEY = "file:"
_LOSSES = "losses"


@dataclasses.dataclass(frozen=True, kw_only=True)
class LDSBenchmarkConfig(Config):
    """What an LDS benchmark trains and measures (D-TRAK's LDS protocol; defaults: the paper's sizes).

    Attributes:
        n_subsets: Random subsets M of the training set (LDS ranks subsets: at least 3).
        n_seeds: Models S trained on each subset; the outputs are averaged over them, and two or more give
            the noise ceiling.
        subset_fraction: Fraction alpha of the training set in each subset.
        train_epochs: Epochs of every subset model: a model on m images trains
            train_epochs * ceil(m / batch_size) steps (D-TRAK's num_epochs).
        train_steps: Fixed steps for every subset model instead (None: from train_epochs).
        eval_draws: (timestep, noise) pairs J per query whose mean loss is a model's output (stratified over
            the T timesteps: 1000 = every timestep once, as the original).
        seed: Seed of the subsets, the models' training seeds and the draws.
        training: The training recipe (optimiser, batch size, schedule, EMA, clipping); its n_steps and seed
            are set per model. None: the recommended DDPM recipe (default_train_config).
    """

    n_subsets: int = 64
    n_seeds: int = 3
    subset_fraction: float = 0.5
    train_epochs: int = 200
    train_steps: int | None = None
    eval_draws: int = 1000
    seed: int = 0
    training: TrainConfig | None = None

    def validate(self) -> None:
        require_ints(self, ("n_subsets", "n_seeds", "train_epochs", "eval_draws"), minimum=1)
        require_ints(self, ("seed",), minimum=0)
        require(self.n_subsets >= 3, "n_subsets", "at least 3 (LDS ranks subsets)", self.n_subsets)
        require(0 < self.subset_fraction < 1, "subset_fraction", "a number in (0, 1)", self.subset_fraction)
        if self.train_steps is not None:
            require_ints(self, ("train_steps",), minimum=1)
        require(
            self.training is None or isinstance(self.training, TrainConfig),
            "training",
            "a TrainConfig (or its fields as a mapping) or None",
            self.training,
        )

    def train_config(self, n_images: int, seed: int) -> TrainConfig:
        """The recipe of one model on ``n_images`` images with training seed ``seed``.

        Raises:
            DataError: The recipe is not resolved yet (``training`` is ``None``; :meth:`LDSPlan.make` resolves it).
        """
        if self.training is None:
            raise DataError("LDSBenchmarkConfig.training is None; build the plan with LDSPlan.make, which resolves it.")
        steps = self.train_steps or self.train_epochs * math.ceil(n_images / self.training.batch_size)
        return self.training.replace(n_steps=steps, seed=seed, log_every=max(1, steps // LOG_POINTS))


def model_seed(seed: int, j: int) -> int:
    """Training seed of model ``j`` of every subset (shared across subsets, as D-TRAK's ``run_lds_val_sub.sh``)."""
    return int(derive_seed(seed, "lds-seed", j) % (2**31))


def model_name(subset: int, j: int) -> str:
    """Folder name of the model trained on ``subset`` with seed index ``j``: ``subset-003-seed-1``."""
    return f"subset-{subset:03d}-seed-{j}"


def _check_images(images: Tensor, model: DDPMConfig, what: str) -> None:
    expected = (model.channels, model.image_size, model.image_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected or len(images) == 0:
        raise DataError(
            f"The {what} have shape {tuple(images.shape)}; the DDPM takes (n, {', '.join(map(str, expected))}) "
            "images: resize them to the model's image size and channels."
        )


@dataclasses.dataclass(frozen=True, eq=False)
class LDSPlan:
    """Everything that fixes an LDS benchmark's numbers: build it with :meth:`make`.

    Attributes:
        config: The benchmark's config, its ``training`` recipe resolved.
        model: The DDPM architecture of every subset model (trained from scratch).
        images: (n_train, C, H, W) training images (subsets index them).
        masks: (n_subsets, n_train) bool, True where an example is in the subset.
        draws: The queries and their fixed (timestep, noise) pairs.
        kinds: (n_q,) query kind per query (``"real"``, ``"generated"``).
    """

    config: LDSBenchmarkConfig
    model: DDPMConfig
    images: Tensor
    masks: np.ndarray
    draws: EvalDraws
    kinds: np.ndarray

    @classmethod
    def make(
        cls,
        config: LDSBenchmarkConfig,
        model: DDPMConfig,
        images: Tensor,
        queries: Tensor,
        *,
        kinds: Sequence[str] | np.ndarray | None = None,
    ) -> LDSPlan:
        """The plan of ``config`` for DDPMs of ``model`` on ``images``, measured on ``queries``.

        Subset ``s`` is :func:`~genprov.data.random_subsets` row ``s`` of ``(n_train, n_subsets, subset_fraction,
        seed)``; the draws are ``EvalDraws.make(queries, eval_draws, T, seed)``.

        Args:
            config: Sizes and recipe (``training=None``: :func:`~genprov.models.training.default_train_config`).
            model: The DDPM architecture.
            images: (n_train, C, H, W) training images in [-1, 1].
            queries: (n_q, C, H, W) query images.
            kinds: Query kind per query (default: all ``"real"``).

        Raises:
            DataError: Images or queries that do not fit the model, or kinds of another length.
        """
        _check_images(images, model, "training images")
        _check_images(queries, model, "queries")
        if config.training is None:
            config = config.replace(training=default_train_config(model))
        kinds = np.array(["real"] * len(queries)) if kinds is None else np.asarray(kinds).astype(str)
        if kinds.shape != (len(queries),):
            raise DataError(f"kinds must give one kind per query ({len(queries)}); got shape {kinds.shape}.")
        masks = np.zeros((config.n_subsets, len(images)), dtype=bool)
        for s, rows in enumerate(
            random_subsets(len(images), config.n_subsets, config.subset_fraction, seed=config.seed)
        ):
            masks[s, rows] = True
        draws = EvalDraws.make(queries.to(torch.float32), config.eval_draws, model.num_train_timesteps, config.seed)
        return cls(config, model, images.to(torch.float32), masks, draws, kinds)

    @property
    def n_subsets(self) -> int:
        """Subsets M."""
        return int(self.masks.shape[0])

    @property
    def n_seeds(self) -> int:
        """Models per subset S."""
        return self.config.n_seeds

    @property
    def n_models(self) -> int:
        """Models M x S (the store's rows)."""
        return self.n_subsets * self.n_seeds

    @property
    def n_queries(self) -> int:
        """Queries."""
        return int(self.draws.queries.shape[0])

    def locate(self, row: int) -> tuple[int, int]:
        """``(subset, seed index)`` of model ``row``."""
        if not 0 <= row < self.n_models:
            raise DataError(f"model row must be in [0, {self.n_models}); got {row}.")
        return divmod(row, self.n_seeds)

    def name(self, row: int) -> str:
        """Folder name of model ``row`` (:func:`model_name`)."""
        return model_name(*self.locate(row))

    def subset_images(self, row: int) -> Tensor:
        """The training images of model ``row``'s subset, in index order."""
        subset, _ = self.locate(row)
        return self.images[torch.from_numpy(np.flatnonzero(self.masks[subset]))]

    def train_config(self, row: int) -> TrainConfig:
        """The recipe of model ``row``: its subset's size and seed :func:`model_seed` ``(seed, j)``."""
        subset, j = self.locate(row)
        return self.config.train_config(int(self.masks[subset].sum()), model_seed(self.config.seed, j))

    def spec(self) -> dict[str, Any]:
        """What the losses depend on (JSON), recorded in the losses store: a store of another plan is refused."""
        return {
            "benchmark": "lds-losses",
            "model": self.model.to_dict(),
            "config": self.config.to_dict(),
            "train_images": fingerprint_arrays(self.images.numpy()),
            "masks": fingerprint_arrays(self.masks),
            "draws": self.draws.fingerprint(),
            "threads": MODEL_THREADS,
        }

    def fingerprint(self) -> str:
        """Short hash of :meth:`spec` (names a losses store per plan, e.g. in a run's cache)."""
        return hashlib.sha256(json.dumps(self.spec(), sort_keys=True).encode()).hexdigest()[:12]

    def benchmark(self, losses: np.ndarray) -> LDSBenchmark:
        """The benchmark of measured ``losses`` (n_subsets, n_seeds, n_q), half of each query kind choosing lambda
        (:meth:`LDSBenchmark.with_validation_split` with the plan's seed)."""
        expected = (self.n_subsets, self.n_seeds, self.n_queries)
        if losses.shape != expected:
            raise DataError(f"losses must have shape {expected}; got {losses.shape}.")
        queries = self.draws.queries.numpy()
        bench = LDSBenchmark(self.masks, losses, queries, self.kinds, np.zeros(self.n_queries, dtype=bool))
        return bench.with_validation_split(self.config.seed)


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """Torch uses ``threads`` threads inside the block (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclasses.dataclass
class SubsetModelTask:
    """Trains and measures the models of rows ``[start, stop)`` of a plan: ``{"losses": (stop - start, n_q)}``.

    A :class:`~genprov.storage.shards.ShardTask`: picklable (Ray puts it in the object store once), and its numbers
    depend on the rows only (each model's seed, subset and draws come from the plan), computed with
    :data:`MODEL_THREADS` torch threads.

    Attributes:
        plan: The benchmark's plan.
        train_dir: A folder the workers see where each model trains (``train_dir/<model name>``: a killed
            model resumes mid-training there, a finished one is reused); ``None``: a temporary folder per model,
            deleted once it is measured.
        return_files: Also return each model's checkpoint files (keys ``"file:<model name>/<file>"``, uint8) for
            the driver to keep.
    """

    plan: LDSPlan
    train_dir: str | None = None
    return_files: bool = False

    def __call__(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Train and measure models ``start..stop - 1``."""
        out: dict[str, np.ndarray] = {}
        losses = []
        with _torch_threads(MODEL_THREADS):
            for row in range(start, stop):
                if self.train_dir is not None:
                    losses.append(self._model(row, Path(self.train_dir) / self.plan.name(row), out))
                    continue
                with tempfile.TemporaryDirectory(prefix="genprov-lds-") as scratch:
                    losses.append(self._model(row, Path(scratch) / self.plan.name(row), out))
        out[_LOSSES] = np.stack(losses)
        return out

    def _model(self, row: int, folder: Path, files: dict[str, np.ndarray]) -> np.ndarray:
        """Train model ``row`` in ``folder`` (or reuse it there), add its kept files to ``files``, return its losses."""
        result = train_ddpm(
            self.plan.model, self.plan.train_config(row), self.plan.subset_images(row), folder, show_progress=False
        )
        if self.return_files:
            for file in _KEPT_FILES:
                if (folder / file).is_file():
                    files[f"{_FILE_KEY}{self.plan.name(row)}/{file}"] = np.frombuffer(
                        (folder / file).read_bytes(), np.uint8
                    )
        assert isinstance(result.model, DDPM)
        return measure_losses(result.model, self.plan.draws)


@dataclasses.dataclass(frozen=True)
class _KeepModels:
    """The driver's step for a finished model (``run_shards(on_result=...)``): write its returned checkpoint files
    into ``folder/<model name>/`` (each atomically, ``config.json`` last), then hand its losses to the store."""

    folder: Path

    def __call__(self, shard: Shard, arrays: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        kept: dict[str, dict[str, np.ndarray]] = {}
        for key, value in arrays.items():
            if key.startswith(_FILE_KEY):
                name, file = key[len(_FILE_KEY) :].split("/", 1)
                kept.setdefault(name, {})[file] = value
        for name, files in kept.items():
            target = self.folder / name
            check_output_folder(target, accept={"ddpm checkpoint", INCOMPLETE_CHECKPOINT}, option="--out")
            target.mkdir(parents=True, exist_ok=True)
            for file in _KEPT_FILES:
                if file in files:
                    atomic_write_bytes(target / file, np.asarray(files[file], dtype=np.uint8).tobytes())
        return {_LOSSES: arrays[_LOSSES]}


def build_lds_benchmark(
    plan: LDSPlan,
    store: str | os.PathLike[str],
    backend: Backend | None = None,
    *,
    models: str | os.PathLike[str] | None = None,
    train_dir: str | os.PathLike[str] | None = None,
    show_progress: bool | None = None,
) -> LDSBenchmark:
    """Train and measure the plan's models on ``backend`` (one task each), resuming ``store``; return the benchmark.

    Each finished model's losses are written by the driver to row ``r`` of the losses store (a float64
    :class:`~genprov.storage.FeatureStore`, one shard per model: flushed, then marked done), under the store's
    driver lock (:func:`~genprov.storage.shards.run_shards`). A run killed at any point resumes with the models
    not yet written; the benchmark does not depend on the backend, the number of workers or the finishing order.

    Args:
        plan: The benchmark's plan (:meth:`LDSPlan.make`).
        store: Folder of the losses store (created; an unfinished one of the same plan is resumed).
        backend: Where models train (default: in this process, one after the other).
        models: Folder where the driver keeps each model finished by this call, as a checkpoint folder
            ``models/<model name>/`` (weights, config and training log; the workers return them, so they need
            not see this folder); ``None``: models are not kept.
        train_dir: Folder shared with the workers where models train and stay (:class:`SubsetModelTask`); ``None``:
            temporary folders on the workers.
        show_progress: Progress bar over models.

    Returns:
        The :class:`~genprov.eval.lds.LDSBenchmark` (masks, losses (n_subsets, n_seeds, n_q), queries, kinds, and
        half of each query kind marked for choosing lambda); ``.save(path)`` writes what ``genprov trak lds`` reads.

    Raises:
        StoreLockedError: Another driver is filling ``store``.
        StoreMismatchError: ``store`` holds the losses of another plan (names the fields that differ).
    """
    losses = FeatureStore.create(
        store,
        n_rows=plan.n_models,
        arrays={_LOSSES: plan.n_queries},
        spec=plan.spec(),
        dtype="float64",
        shard_size=1,
    )
    task = SubsetModelTask(plan, None if train_dir is None else str(train_dir), return_files=models is not None)
    keep = None if models is None else _KeepModels(Path(models))
    run_shards(losses, task, backend, desc="LDS models", show_progress=show_progress, on_result=keep)
    values = np.array(losses.read(_LOSSES), dtype=np.float64)
    return plan.benchmark(values.reshape(plan.n_subsets, plan.n_seeds, plan.n_queries))
