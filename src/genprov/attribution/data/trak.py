"""TRAK and D-TRAK for diffusion models, with the TracIn / Grad-Dot, Grad-Cos and influence variants.

Method (TRAK: Park et al., ICML 2023, sec. 3; D-TRAK: Zheng et al., ICLR 2024, sec. 3-4, run as the
paper's code does):

1. Features (:meth:`TRAKAttributor.featurize`). For example ``x0`` with index ``i`` and each timestep
   ``t`` of a schedule (``uniform``: ``t = 0, T/K, ..., (K-1) T/K``; ``cumulative``: ``0..K-1``; or a
   user list), draw ``eps`` from a generator seeded by ``(seed, i, t)`` (``noise="per-example"``, the
   default; ``"batch-position"`` reproduces the original's coupling, see :data:`NOISE_MODES`), form
   ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` and evaluate an output function ``f`` of
   ``eps_theta(x_t, t)`` (:mod:`~genprov.attribution.data.output_functions`: ``loss`` for TRAK,
   ``squared-l2-norm`` for D-TRAK). The exact per-example gradient of ``mean_t f`` with respect to the chosen
   parameters comes from one forward and one backward pass of the ``b x K`` rows of ``batch_size`` examples
   with module hooks (``per_example="hooks"``, :func:`~genprov.attribution.data.kronecker.per_example_gradients`:
   ``nn.Linear``, ``nn.Conv2d``, ``nn.GroupNorm`` and ``nn.LayerNorm`` parameters), from ``torch.func``
   (``"vmap"``: ``vmap`` over ``grad``, the K timesteps of one example forming the inner batch) or from one
   backward pass per example (``"loop"``); ``"auto"`` picks (see ``TRAKConfig.per_example``). A parameter name
   filter (``include`` / ``exclude``) restricts what is differentiated, so the rest of the backward pass is never
   run. Each gradient is projected block by block to ``k`` dimensions
   (:mod:`~genprov.attribution.data.projectors`) and stored shard by shard in a
   :class:`~genprov.storage.FeatureStore` (resumable; a different config raises
   :class:`~genprov.exceptions.StoreMismatchError`). Under ``projector="kronecker"`` no per-example gradient is
   formed: the ``b x K`` rows of ``batch_size`` examples run through one forward and one backward pass whose
   hooks project each ``nn.Linear`` / ``nn.Conv2d`` layer's inputs and output gradients
   (:mod:`~genprov.attribution.data.kronecker`, LoGra); the other selected parameters are left out, and the
   covered fraction is :attr:`TRAKAttributor.parameter_coverage` (recorded in the store spec).
2. Scores (:meth:`TRAKAttributor.scores`). With training features ``Phi`` (n, k) and query features
   ``Phi_q``: ``S = Phi_q (Phi^T Phi + lambda I)^-1 Phi^T`` (n_queries, n_train), computed in float64
   with a Cholesky factor of the k x k kernel, or of the n x n kernel ``Phi Phi^T + lambda I`` in the
   dual form ``S = Phi_q Phi^T (Phi Phi^T + lambda I)^-1`` when ``k > n`` (the same scores, far
   cheaper). ``lambda`` is ``damping`` if given, else ``relative_damping * trace(Phi^T Phi) / k`` (scale
   free: scaling the features leaves the scores unchanged). :meth:`TRAKAttributor.scores_sweep` gives the
   scores for many lambdas from one eigendecomposition, for choosing lambda on held-out data. The kernel is
   accumulated block by block over the store's rows, and it and its factor are cached in the store
   (``cache/``, keyed by the features' fingerprint and lambda). :meth:`TRAKAttributor.top_k_scores` (used by
   :meth:`~TRAKAttributor.attribute` and ``genprov trak score``) streams training rows and queries in blocks
   and keeps an exact running top-k, so no n_queries x n_train matrix is held unless written to disk.

Higher scores mean more positive influence: for the ``loss`` output, training on the example lowers the
query's loss. Scoring variants (``scoring``): ``trak`` (above), ``grad-dot`` (TracIn at one checkpoint,
``Phi_q Phi^T``; sum over checkpoints with :class:`~genprov.attribution.data.base.EnsembleAttributor`),
``grad-cos`` (cosine of features), ``relative-if`` (TRAK scores divided by the square root of each
training example's self-influence, Barshan et al., 2020) and ``renormalized-if`` (divided by the norm
of its features, Hammoudeh & Lowd, 2022), as compared in D-TRAK, sec. 5.

Query noise: a query has no training index, so its noise is seeded by ``(seed, hash of its pixels, t)``;
a query's features (and scores) do not depend on which other queries come with it. Under
``noise="batch-position"`` they do, as in the original: query ``j`` takes the noise of position
``j mod noise_batch``, the same as training example ``j mod noise_batch`` and every other example there.

Example:
    >>> model = load_checkpoint("runs/ddpm").model  # doctest: +SKIP
    >>> dtrak = TRAKAttributor(model, config=TRAKConfig(output_function="squared-l2-norm"))  # doctest: +SKIP
    >>> dtrak.fit(train, store="runs/dtrak-store")  # doctest: +SKIP
    >>> result = dtrak.attribute(generated, k=10)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import scipy.linalg
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from genprov.attribution.data.base import (
    DataAttributor,
    RunningTopK,
    StoreLike,
    TopK,
    TrainingSet,
    check_top_k,
    training_images,
)
from genprov.attribution.data.kronecker import (
    HookLayoutError,
    KroneckerLayer,
    gradient_layers,
    hooked_output_values,
    kronecker_features,
    kronecker_layers,
    per_example_gradients,
    rows_mixing_layer,
)
from genprov.attribution.data.output_functions import OUTPUT_FUNCTIONS, NoiseSchedule, OutputFunction
from genprov.attribution.data.projectors import PROJECTORS, KroneckerProjector, Projector
from genprov.config import Config, is_int, require
from genprov.data.collections import is_collection_key
from genprov.data.conditioned import ConditionedExamples
from genprov.data.dataset import fingerprint_arrays
from genprov.exceptions import CheckpointError, ConfigError, DataError, StoreMismatchError
from genprov.models.artifact import ArtifactPayload, ArtifactRecord, Pretrained
from genprov.models.diffusion import build_scheduler
from genprov.models.t2i.source import pipeline_record, reopen_pipeline
from genprov.results import DataAttributionResult
from genprov.storage import MANIFEST_FILE, FeatureStore, fingerprint_state, read_manifest
from genprov.storage.feature_store import allocate_npy
from genprov.storage.shards import driver_lock
from genprov.utils.artifacts import ensure_free_space, storage_error
from genprov.utils.progress import progress
from genprov.utils.seeding import torch_generator

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "DAMPING_GRID",
    "HOOKS_MAX_VALUES",
    "LOOP_FROM_PARAMETERS",
    "NOISE_MODES",
    "PER_EXAMPLE",
    "QUERY_BLOCK",
    "SCHEDULES",
    "SCORINGS",
    "VMAP_MAX_LATENT_PIXELS",
    "Examples",
    "TRAKAttributor",
    "TRAKConfig",
    "method_name",
    "query_key",
    "select_parameters",
    "timestep_schedule",
    "unrelated_feature_cosine",
]

logger = logging.getLogger(__name__)

#: Timestep schedules (D-TRAK's ``uniform`` and ``cumulative``); a user list goes in ``timesteps``.
SCHEDULES = ("uniform", "cumulative")
#: How features become scores (see the module docstring).
SCORINGS = ("trak", "grad-dot", "grad-cos", "relative-if", "renormalized-if")
#: How the feature noise is drawn. ``per-example``: example ``i`` at timestep ``t`` from
#: ``(seed, "trak-noise", i, t)``, independent across examples. ``batch-position``: the original's coupling
#: (D-TRAK ``CIFAR2/grad_unconditional.py:699-701``: ``set_seeds(e_seed * 1000 + t)`` before
#: ``randn_like(batch)`` in every batch of 52, unshuffled, line 456), so the examples at the same position of different batches,
#: training examples and queries alike, share their noise: position ``p`` at ``t`` is row ``p`` of a
#: ``(noise_batch, C, H, W)`` draw from ``(seed, "trak-batch-noise", t)`` (a short last batch takes the
#: first rows of the full draw).
NOISE_MODES = ("per-example", "batch-position")
#: How per-example gradients are computed (see ``TRAKConfig.per_example``).
PER_EXAMPLE = ("auto", "vmap", "loop", "hooks")
#: Selected parameters from which ``per_example="auto"`` loops over examples instead of vmapping (where the hooks
#: do not cover the selection).
LOOP_FROM_PARAMETERS = 300_000
#: Values (per-example gradients of the selected parameters plus the hooked layers' outputs over the K rows of each
#: example, about 1 GiB in float32) that bound the examples per hooked pass under ``per_example="auto"``: a large model
#: or large images take fewer examples per pass than ``batch_size`` (down to one, about the loop's memory).
HOOKS_MAX_VALUES = 1 << 28
#: Latent pixels (h x w) above which ``per_example="auto"`` loops for a conditional (text-to-image) model: vmap
#: was faster for LoRA gradients on 8x8 latents and slower on 16x16 ones (``benchmarks/bench_trak_t2i.py``), and its
#: memory grows with the latents (every example's activations at once).
VMAP_MAX_LATENT_PIXELS = 64
#: Relative dampings ``{1, 2, 5} x 10^j`` of the lambda sweep (multiples of ``trace(Phi^T Phi) / k``).
DAMPING_GRID: tuple[float, ...] = tuple(m * 10.0**j for j in range(-5, 3) for m in (1, 2, 5))
#: Rows of the training features read at once when scoring (bounds memory for large stores).
_ROW_CHUNK = 16384
#: Queries scored at once by :meth:`TRAKAttributor.top_k_scores` (with ``_ROW_CHUNK``: blocks of 128 MiB in float64).
QUERY_BLOCK = 1024
#: Scorings that solve with the damped kernel (the others need only the features and their norms).
_KERNEL_SCORINGS = ("trak", "relative-if", "renormalized-if")
_FEATURE_FORMAT = 1
#: What TRAK featurizes: images (N, C, H, W) for an unconditional model, or latents with their text
#: embeddings (:class:`~genprov.data.ConditionedExamples`) for a text-to-image model.
Examples = Tensor | ConditionedExamples


@dataclasses.dataclass(frozen=True, kw_only=True)
class TRAKConfig(Config):
    """Settings of TRAK / D-TRAK.

    Attributes:
        output_function: Name in :data:`~genprov.attribution.data.output_functions.OUTPUT_FUNCTIONS`:
            ``"loss"`` (TRAK) or ``"squared-l2-norm"`` (D-TRAK), ...
        n_timesteps: K, timesteps per example (ignored when ``timesteps`` is given).
        schedule: ``"uniform"`` (t = 0, T/K, ...) or ``"cumulative"`` (t = 0..K-1).
        timesteps: An explicit list of timesteps (overrides ``schedule`` and ``n_timesteps``).
        projector: Name in :data:`~genprov.attribution.data.projectors.PROJECTORS`; ``"sjlt"`` is fastest on a CPU
            among the per-example paths; ``"kronecker"`` takes a whole batch from one pass with hooks (its features
            cover ``nn.Linear`` / ``nn.Conv2d`` weights and biases only; ``proj_dim`` sets its per-layer factors,
            ``projector_options`` ``k_out`` / ``k_in`` fix them).
        proj_dim: Feature dimension k (ignored by ``"identity"``).
        projector_options: Extra projector settings, e.g. ``{"nnz": 2}`` for sjlt, ``{"cache_mb": 4096}``.
        include: Glob patterns of parameter names to differentiate (empty: all), e.g. ``("*lora*",)``.
        exclude: Glob patterns of parameter names to leave out.
        scoring: One of :data:`SCORINGS`.
        damping: Absolute lambda; ``None`` uses ``relative_damping``.
        relative_damping: lambda as a multiple of ``trace(Phi^T Phi) / k`` when ``damping`` is ``None``. The
            default 1 lies between the held-out optima of TRAK (about 10) and D-TRAK (about 0.1) on digits
            (``genprov reproduce dtrak``); choose it on held-out queries with :meth:`TRAKAttributor.scores_sweep`.
        seed: Seed of the noise (per example and timestep) and of the projection.
        noise: One of :data:`NOISE_MODES` (``"per-example"``; ``"batch-position"`` is the original's).
        noise_batch: The batch whose positions share noise under ``"batch-position"`` (52, the original's
            ``CIFAR2/scripts/run_grad.sh`` ``--train_batch_size``).
        batch_size: Examples per forward / backward pass under ``per_example="hooks"`` and the ``kronecker``
            projector, or per vmapped gradient call (memory vs. speed; the numbers are equal up to float rounding); a
            loop takes one example at a time. When ``"auto"`` picks the hooks, a pass takes ``batch_size`` examples
            or fewer: at most :data:`HOOKS_MAX_VALUES` values of per-example gradients and hooked layer outputs
            (measured once by a no-grad forward pass of one example).
        per_example: How per-example gradients are taken: ``"hooks"`` (the exact per-example gradients from ONE
            forward and ONE backward pass of the batch's ``b x K`` rows with module hooks,
            :func:`~genprov.attribution.data.kronecker.per_example_gradients`: it covers the weights and biases of
            ``nn.Linear``, ``nn.Conv2d``, ``nn.GroupNorm`` and ``nn.LayerNorm`` layers (peft LoRA's ``lora_A`` /
            ``lora_B`` are such layers) and refuses a selection with any other parameter (embeddings, raw
            parameters, tied weights), naming them: exclude them or loop; a per-example fallback for them would
            cost the loop it avoids), ``"vmap"`` (``vmap`` over ``torch.func.grad``), ``"loop"`` (plain autograd
            one example at a time: its K timesteps still form one batch) or ``"auto"``: ``"hooks"`` where they
            cover every selected parameter and no layer mixes the rows of a batch (BatchNorm without running
            statistics), else ``"loop"`` from 300k selected parameters (and for a text-to-image model also above
            8x8 latents, :data:`VMAP_MAX_LATENT_PIXELS`) and ``"vmap"`` below; a model whose hooked layers are
            not batch-first falls back from ``"hooks"`` to that rule (``benchmarks/bench_trak.py``).
        shard_size: Examples per store shard (the unit of resumption).
        dtype: Storage dtype of the features, ``"float32"`` or ``"float64"``.
    """

    output_function: str = "loss"
    n_timesteps: int = 10
    schedule: str = "uniform"
    timesteps: tuple[int, ...] = ()
    projector: str = "sjlt"
    proj_dim: int = 2048
    projector_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    scoring: str = "trak"
    damping: float | None = None
    relative_damping: float = 1.0
    seed: int = 0
    noise: str = "per-example"
    noise_batch: int = 52
    batch_size: int = 16
    per_example: str = "auto"
    shard_size: int = 512
    dtype: str = "float32"

    def validate(self) -> None:
        if self.output_function not in OUTPUT_FUNCTIONS:
            OUTPUT_FUNCTIONS.entry(self.output_function)  # raises with a suggestion
        if self.projector not in PROJECTORS:
            PROJECTORS.entry(self.projector)
        require(
            is_int(self.n_timesteps) and self.n_timesteps >= 1, "n_timesteps", "a positive integer", self.n_timesteps
        )
        require(self.schedule in SCHEDULES, "schedule", f"one of {SCHEDULES}", self.schedule)
        require(
            isinstance(self.timesteps, tuple) and all(is_int(t) and t >= 0 for t in self.timesteps),
            "timesteps",
            "a tuple of non-negative integers (or empty for the schedule)",
            self.timesteps,
        )
        require(len(set(self.timesteps)) == len(self.timesteps), "timesteps", "distinct timesteps", self.timesteps)
        require(is_int(self.proj_dim) and self.proj_dim >= 1, "proj_dim", "a positive integer", self.proj_dim)
        require(isinstance(self.projector_options, dict), "projector_options", "a dict", self.projector_options)
        for name in ("include", "exclude"):
            value = getattr(self, name)
            require(
                isinstance(value, tuple) and all(isinstance(p, str) and p for p in value),
                name,
                "a tuple of glob patterns",
                value,
            )
        require(self.scoring in SCORINGS, "scoring", f"one of {SCORINGS}", self.scoring)
        if self.damping is not None:
            require(self.damping >= 0 and math.isfinite(self.damping), "damping", "a number >= 0 or None", self.damping)
        require(
            self.relative_damping >= 0 and math.isfinite(self.relative_damping),
            "relative_damping",
            "a number >= 0",
            self.relative_damping,
        )
        require(is_int(self.seed) and self.seed >= 0, "seed", "a non-negative integer", self.seed)
        require(self.noise in NOISE_MODES, "noise", f"one of {NOISE_MODES}", self.noise)
        require(
            is_int(self.noise_batch) and self.noise_batch >= 1, "noise_batch", "a positive integer", self.noise_batch
        )
        require(is_int(self.batch_size) and self.batch_size >= 1, "batch_size", "a positive integer", self.batch_size)
        require(self.per_example in PER_EXAMPLE, "per_example", f"one of {PER_EXAMPLE}", self.per_example)
        require(is_int(self.shard_size) and self.shard_size >= 1, "shard_size", "a positive integer", self.shard_size)
        require(self.dtype in ("float32", "float64"), "dtype", "'float32' or 'float64' (never float16)", self.dtype)

    def feature_spec(self) -> dict[str, Any]:
        """The fields that determine the features (what a store compares); scoring settings are left out.

        The noise fields join only under ``"batch-position"``, so stores of per-example noise keep their spec.
        """
        keep = ["output_function", "projector", "proj_dim", "projector_options", "include", "exclude", "seed"]
        if self.noise != "per-example":
            keep += ["noise", "noise_batch"]
        return {k: v for k, v in self.to_dict().items() if k in keep}


def method_name(config: TRAKConfig) -> str:
    """Short name of the method a config runs: ``"trak"``, ``"d-trak"``, ``"grad-dot[loss]"``, ..."""
    base = {"loss": "trak", "squared-l2-norm": "d-trak"}.get(config.output_function, f"trak[{config.output_function}]")
    if config.scoring == "trak":
        return base
    return f"{config.scoring}[{config.output_function}]"


def timestep_schedule(config: TRAKConfig, n_train_timesteps: int) -> tuple[int, ...]:
    """The timesteps features average over.

    Args:
        config: Gives ``timesteps``, or ``schedule`` and ``n_timesteps`` K.
        n_train_timesteps: T of the model.

    Returns:
        ``timesteps`` if given; ``uniform``: ``(0, T//K, 2 T//K, ...)`` (D-TRAK's ``range(0, T, T // K)``);
        ``cumulative``: ``(0, 1, ..., K-1)``.

    Raises:
        ConfigError: If a timestep is not below T or K exceeds T.
    """
    if config.timesteps:
        steps = tuple(int(t) for t in config.timesteps)
    else:
        k = config.n_timesteps
        if k > n_train_timesteps:
            raise ConfigError(f"n_timesteps={k} exceeds the model's {n_train_timesteps} diffusion steps.")
        steps = (
            tuple(range(0, n_train_timesteps, n_train_timesteps // k))[:k]
            if config.schedule == "uniform"
            else tuple(range(k))
        )
    if max(steps) >= n_train_timesteps:
        raise ConfigError(f"timesteps must be below the model's T={n_train_timesteps}; got {steps}.")
    return steps


def select_parameters(model: nn.Module, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
    """Names of the parameters matching any ``include`` glob (all if empty) and no ``exclude`` glob.

    ``requires_grad`` is ignored: an EMA copy of a model has it off, and the gradients are taken of
    detached functional copies anyway.

    Raises:
        ConfigError: If nothing is selected (lists a few parameter names to build patterns from).
    """
    names = [n for n, _ in model.named_parameters()]
    chosen = [
        n
        for n in names
        if (not include or any(fnmatch.fnmatchcase(n, pat) for pat in include))
        and not any(fnmatch.fnmatchcase(n, pat) for pat in exclude)
    ]
    if not chosen:
        raise ConfigError(
            f"include={tuple(include)} / exclude={tuple(exclude)} select no parameter; the model has "
            f"{len(names)}, e.g. {names[:4]}."
        )
    return chosen


def unrelated_feature_cosine(features: np.ndarray | Tensor, *, max_rows: int = 2000) -> float:
    """Mean cosine between the features of distinct examples (the first ``max_rows``): near 0 for independent
    per-example noise; shared noise (``noise="batch-position"``) couples unrelated examples and raises it.

    Args:
        features: (n, k) features, n >= 2.
        max_rows: Rows used (bounds the n x n product).

    Returns:
        The mean of the off-diagonal cosines.
    """
    phi = features.detach().cpu().numpy() if isinstance(features, Tensor) else np.asarray(features)
    phi = np.asarray(phi[:max_rows], dtype=np.float64)
    if phi.ndim != 2 or len(phi) < 2:
        raise DataError(f"features must be an (n >= 2, k) array; got shape {phi.shape}.")
    unit = phi / np.maximum(np.linalg.norm(phi, axis=1, keepdims=True), 1e-300)
    cos = unit @ unit.T
    n = len(cos)
    return float((cos.sum() - np.trace(cos)) / (n * (n - 1)))


def query_key(image: Tensor, context: Tensor | None = None) -> str:
    """The noise key of a query: a hash of its (C, H, W) float32 values and, for a conditional model, of its
    (L, D) context (stable across runs)."""
    digest = hashlib.blake2b(digest_size=12)
    for part in (image, context):
        if part is None:
            continue
        array = np.ascontiguousarray(part.detach().to("cpu", torch.float32).numpy())
        digest.update(array.tobytes() + str(array.shape).encode())
    return digest.hexdigest()


@contextlib.contextmanager
def _score_file(
    path: str | os.PathLike[str] | None, shape: tuple[int, int], dtype: np.dtype
) -> Iterator[Callable[[slice, slice, np.ndarray], None] | None]:
    """A writer of blocks ``(rows, columns, values)`` into a ``.npy`` file of ``shape`` at ``path``; ``None`` when
    ``path`` is ``None``.

    The file is a temporary one beside ``path`` with every block reserved (as a feature store's data files, so a
    full disk is a one-line error, never a ``SIGBUS``), written with ordinary file writes and renamed to ``path``
    when the ``with`` block succeeds; it is removed when the block fails.
    """
    if path is None:
        yield None
        return
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    row_bytes = shape[1] * dtype.itemsize
    ensure_free_space(dest.parent, shape[0] * row_bytes, f"The score matrix {dest}")
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        allocate_npy(tmp, shape, dtype, what=f"the score matrix {dest}")
        with open(tmp, "rb") as header:
            np.lib.format.read_magic(header)
            np.lib.format.read_array_header_1_0(header)
            offset = header.tell()
        with open(tmp, "r+b") as handle:

            def write(rows: slice, cols: slice, values: np.ndarray) -> None:
                data = np.ascontiguousarray(values, dtype=dtype)
                start = offset + cols.start * dtype.itemsize
                try:
                    if cols.stop - cols.start == shape[1]:  # whole rows: one write
                        os.pwrite(handle.fileno(), data.data.cast("B"), start + rows.start * row_bytes)
                        return
                    for i, row in enumerate(range(rows.start, rows.stop)):
                        os.pwrite(handle.fileno(), data[i].data.cast("B"), start + row * row_bytes)
                except OSError as err:
                    raise storage_error(err, dest, "the score matrix") from err

            yield write
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _differentiating(model: nn.Module, names: Sequence[str]) -> Iterator[list[Tensor]]:
    """Only the parameters ``names`` of ``model`` require a gradient while inside (yielded in that order): autograd
    then records and computes nothing for the others, which are constants of the graph, and the model runs as it is
    (no ``functional_call``). Every parameter's ``requires_grad`` is restored after; like eval mode while
    featurizing, the flags are the model's own: do not train the same model from another thread meanwhile.
    """
    by_name = dict(model.named_parameters())
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        chosen = [by_name[n].requires_grad_(True) for n in names]
        yield chosen
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


class TRAKAttributor(DataAttributor, Pretrained):
    """TRAK / D-TRAK data attribution for a noise-prediction diffusion model.

    Args:
        model: The DDPM (``forward(x_t, t) -> eps``; e.g. :class:`genprov.models.DDPM`), or a conditional
            denoiser (``forward(x_t, t, context) -> eps`` with ``requires_context = True``: a text-to-image
            pipeline's U-Net, :meth:`for_pipeline`), whose examples are
            :class:`~genprov.data.ConditionedExamples`. Put in eval mode while features are computed.
        scheduler: Anything with ``betas`` and ``alphas_cumprod`` (a diffusers ``DDPMScheduler``);
            default: ``model.config``'s schedule via :func:`genprov.models.build_scheduler`.
        config: Settings (default :class:`TRAKConfig`: TRAK with the ``loss`` output).

    Attributes (after :meth:`fit`):
        n_train_: Number of training examples.
        train_features_: (n_train, k) features (a read-only memmap when stored).
        damping_: The lambda used.
        store_: The :class:`FeatureStore`, or ``None`` when fitted in memory.
    """

    artifact_kind: ClassVar[str] = "data-attributor"

    def __init__(self, model: nn.Module, scheduler: Any = None, config: TRAKConfig | None = None) -> None:
        self.model = model
        self.scheduler = scheduler
        self.config: TRAKConfig = config if config is not None else TRAKConfig()
        self.method = method_name(self.config)
        self.n_train_: int | None = None
        self.train_features_: np.ndarray | None = None
        self.damping_: float | None = None
        self.store_: FeatureStore | None = None
        self._ready = False
        self._kernel: dict[str, Any] = {}

    @classmethod
    def for_pipeline(cls, pipeline: Any, config: TRAKConfig | None = None) -> TRAKAttributor:
        """TRAK / D-TRAK on a text-to-image pipeline's U-Net (with its LoRA, if loaded), in latent space.

        Examples are :class:`~genprov.data.ConditionedExamples` from ``genprov.models.t2i.encode_examples``
        (training images with their captions; queries with their prompts). ``config.include`` restricts the
        gradients to some parameters, e.g. ``LORA_PARAMETER_GLOBS`` for the LoRA's (the paper's ArtBench setting).

        Args:
            pipeline: A ``StableDiffusionPipeline`` (``genprov.models.t2i.load_pipeline``) with a
                noise-predicting scheduler.
            config: Settings (default :class:`TRAKConfig`).
        """
        from genprov.models.t2i.denoiser import LatentDenoiser

        return cls(LatentDenoiser(pipeline.unet, pipeline.scheduler), pipeline.scheduler, config)

    @property
    def requires_context(self) -> bool:
        """Whether the model is conditional (its examples are :class:`~genprov.data.ConditionedExamples`)."""
        return bool(getattr(self.model, "requires_context", False))

    # ------------------------------------------------------------------------------------ set-up

    def _setup(self) -> None:
        """Resolve the output function, projector, schedule, timesteps and parameter selection (once)."""
        if self._ready:
            return
        cfg = self.config
        scheduler = self.scheduler
        if scheduler is None:
            model_config = getattr(self.model, "config", None)
            if model_config is None:
                raise ConfigError("Pass the scheduler: the model has no .config to build one from.")
            scheduler = build_scheduler(model_config)
        self._schedule = NoiseSchedule.from_scheduler(scheduler)
        self._timesteps = timestep_schedule(cfg, self._schedule.n_timesteps)
        self._output_fn: OutputFunction = OUTPUT_FUNCTIONS.create(cfg.output_function)
        if cfg.projector == "identity":
            self._projector: Projector = PROJECTORS.create("identity")
        else:
            options = {"dim": cfg.proj_dim, "seed": cfg.seed, **cfg.projector_options}
            self._projector = PROJECTORS.create(cfg.projector, config=options)
        self._param_names = select_parameters(self.model, cfg.include, cfg.exclude)
        params = dict(self.model.named_parameters())
        self._kronecker: list[KroneckerLayer] | None = None
        self._coverage = 1.0
        self._hooks_failed = False
        self._hooks_per_pass: int | None = None  # auto: examples per hooked pass (_size_hooked_passes)
        if isinstance(self._projector, KroneckerProjector):
            self._setup_kronecker(params)
        self._hook_layers, covered = gradient_layers(self.model, self._param_names)
        self._hooks_uncovered = [n for n in self._param_names if n not in set(covered)]
        if cfg.per_example == "hooks" and self._hooks_uncovered and self._kronecker is None:
            left = self._hooks_uncovered
            raise ConfigError(
                f"per_example='hooks' takes per-example gradients of nn.Linear, nn.Conv2d, nn.GroupNorm and "
                f"nn.LayerNorm weights and biases from one batched pass, and {len(left)} selected parameters are "
                f"none of these (or are shared by several modules): {left[:5]}{' ...' if len(left) > 5 else ''}; "
                "leave them out (exclude=...), or use per_example='loop' (or 'auto')."
            )
        self._sizes = {n: params[n].numel() for n in self._param_names}
        self._feature_dim = self._projector.output_dim(self._sizes)
        self._ready = True

    def _setup_kronecker(self, params: dict[str, nn.Parameter]) -> None:
        """Restrict the parameters to those the ``kronecker`` projector's hooks cover (weights and biases of
        ``nn.Linear`` / ``nn.Conv2d`` layers) and record the fraction of the selected values they hold."""
        selected = self._param_names
        self._kronecker, self._param_names = kronecker_layers(self.model, selected)
        if not self._param_names:
            raise ConfigError(
                f"projector='kronecker' covers the weights and biases of nn.Linear and nn.Conv2d layers, and "
                f"include={self.config.include} / exclude={self.config.exclude} select none (e.g. {selected[:3]}); "
                "select some, or use projector='sjlt'."
            )
        total = sum(params[n].numel() for n in selected)
        self._coverage = sum(params[n].numel() for n in self._param_names) / total
        left = [n for n in selected if n not in set(self._param_names)]
        if left:
            logger.info(
                "kronecker projector: %d nn.Linear / nn.Conv2d layers hold %.1f%% of the selected parameter values; "
                "%d other blocks (norms, embeddings, ...; e.g. %s) are left out of the features",
                len(self._kronecker),
                100 * self._coverage,
                len(left),
                left[0],
            )

    @property
    def timesteps(self) -> tuple[int, ...]:
        """The timesteps features average over."""
        self._setup()
        return self._timesteps

    @property
    def parameter_names(self) -> list[str]:
        """The parameters differentiated (after ``include`` / ``exclude``)."""
        self._setup()
        return list(self._param_names)

    @property
    def projector(self) -> Projector:
        """The projector (built from the config on first use)."""
        self._setup()
        return self._projector

    @property
    def feature_dim(self) -> int:
        """k, the feature dimension."""
        self._setup()
        return int(self._feature_dim)

    @property
    def parameter_coverage(self) -> float:
        """The fraction of the selected parameters' values the features cover: 1, except under the ``kronecker``
        projector, which covers the weights and biases of ``nn.Linear`` and ``nn.Conv2d`` layers only (the store
        spec records it)."""
        self._setup()
        return float(self._coverage)

    # ------------------------------------------------------------------------------------ gradients

    def noise(self, keys: Sequence[int | str], shape: Sequence[int]) -> Tensor:
        """The noise of examples ``keys`` at every timestep: (len(keys), K, *shape).

        ``per-example``: example ``key`` at timestep ``t`` draws from ``torch_generator(seed, "trak-noise",
        key, t)``; training examples are keyed by index, queries by a hash of their pixels.
        ``batch-position``: ``key`` is a position (training index, or the query's place among the queries);
        it takes row ``key mod noise_batch`` of the draw of ``t`` (see :data:`NOISE_MODES`).
        """
        self._setup()
        cfg = self.config
        out = torch.empty(len(keys), len(self._timesteps), *shape)
        if cfg.noise == "batch-position":
            for j, t in enumerate(self._timesteps):
                block = torch.randn(cfg.noise_batch, *shape, generator=torch_generator(cfg.seed, "trak-batch-noise", t))
                for i, key in enumerate(keys):
                    if not isinstance(key, int):
                        raise DataError(f"batch-position noise needs integer positions as keys; got {key!r}.")
                    out[i, j] = block[key % cfg.noise_batch]
            return out
        for i, key in enumerate(keys):
            for j, t in enumerate(self._timesteps):
                out[i, j] = torch.randn(*shape, generator=torch_generator(cfg.seed, "trak-noise", key, t))
        return out

    def _example_output(
        self, params: dict[str, Tensor], x0: Tensor, noise: Tensor, context: Tensor | None = None
    ) -> Tensor:
        """``mean_t f(eps_theta(x_t, t[, context]))`` of the model with ``params`` (``functional_call``, for
        ``torch.func``) for one example x0 (C, H, W), its noise (K, C, H, W) and, for a conditional model, its
        context (L, D), the same at every timestep."""
        return self._rows_loss(x0[None], noise[None], None if context is None else context[None], params)

    def _rows_loss(
        self, x0: Tensor, noise: Tensor, context: Tensor | None, params: dict[str, Tensor] | None = None
    ) -> Tensor:
        """``sum over the b x K rows of f / K`` for examples x0 (b, C, H, W), their noise (b, K, C, H, W) and
        contexts (b, L, D) or ``None``: its gradient restricted to example ``i``'s rows (``i K`` to ``(i + 1) K - 1``)
        is example ``i``'s gradient of ``mean_t f``. The model runs as it is, or with ``params`` by
        ``functional_call``."""
        b, k = len(x0), len(self._t)
        t = self._t.repeat(b)
        x_t = self._noisy(x0.unsqueeze(1), noise).flatten(0, 1)
        args = (
            (x_t, t)
            if context is None
            else (x_t, t, context.unsqueeze(1).expand(b, k, *context.shape[1:]).flatten(0, 1))
        )
        eps_pred = self.model(*args) if params is None else functional_call(self.model, params, args)
        return self._output_fn(eps_pred, noise.flatten(0, 1), t, self._schedule_on).sum() / k

    def _noisy(self, x0: Tensor, noise: Tensor) -> Tensor:
        """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` for noise (..., K, C, H, W) of the K timesteps and
        x0 broadcastable to it."""
        abar = self._schedule_on.alphas_cumprod[self._t].reshape(-1, 1, 1, 1)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    @property
    def per_example_mode(self) -> str:
        """How :meth:`gradients` takes per-example gradients: ``"hooks"``, ``"vmap"`` or ``"loop"`` (the config's
        ``per_example``, with ``"auto"`` resolved as :class:`TRAKConfig` says)."""
        self._setup()
        mode = self.config.per_example
        if mode != "auto":
            return mode
        if not self._hooks_uncovered and not self._hooks_failed:
            with self._evaluating():  # as the gradients are taken
                if rows_mixing_layer(self.model) is None:
                    return "hooks"
        small = sum(self._sizes.values()) < LOOP_FROM_PARAMETERS
        if self.requires_context:
            side = getattr(getattr(self.model, "config", None), "image_size", None)
            small = small and side is not None and side * side <= VMAP_MAX_LATENT_PIXELS
        return "vmap" if small else "loop"

    @property
    def uses_vmap(self) -> bool:
        """Whether per-example gradients are vmapped (:attr:`per_example_mode` is ``"vmap"``)."""
        return self.per_example_mode == "vmap"

    def gradients(self, batch: Examples, keys: Sequence[int | str]) -> dict[str, Tensor]:
        """Per-example gradients of ``mean_t f`` for the selected parameters.

        Args:
            batch: (b, C, H, W) examples, or b :class:`~genprov.data.ConditionedExamples` for a conditional model.
            keys: (b,) their noise keys (training indices, or query hashes).

        Returns:
            ``{parameter name: (b, *param_shape)}`` float32 gradients.
        """
        x0, noise, ctx = self._batch_inputs(batch, keys)
        mode = self.per_example_mode
        with self._evaluating():
            if mode == "hooks":
                try:
                    return self._hook_gradients(x0, noise, ctx)
                except HookLayoutError as err:
                    if self.config.per_example == "hooks":
                        raise
                    self._hooks_failed = True  # auto: the model's layers do not split by example
                    mode = self.per_example_mode
                    logger.warning(
                        "per_example='auto' takes per-example gradients by %s instead of hooks: %s", mode, err
                    )
            if mode == "vmap":
                all_params = dict(self.model.named_parameters())
                params = {n: all_params[n].detach() for n in self._param_names}
                fn = vmap(grad(self._example_output), in_dims=(None, 0, 0) if ctx is None else (None, 0, 0, 0))
                with torch.no_grad(), warnings.catch_warnings():  # grad ignores no_grad; it stops autograd recording
                    # SDPA attention has no vmap batching rule: torch's per-example fallback is expected (and on a
                    # CPU no slower than the plain processor, see models.t2i.denoiser.LatentDenoiser)
                    warnings.filterwarnings("ignore", message="There is a performance drop")
                    return dict(fn(params, x0, noise) if ctx is None else fn(params, x0, noise, ctx))
            return self._loop_gradients(x0, noise, ctx)

    def _batch_inputs(self, batch: Examples, keys: Sequence[int | str]) -> tuple[Tensor, Tensor, Tensor | None]:
        """The checked examples (b, C, H, W), their noise (b, K, C, H, W) and contexts (b, L, D) or ``None``, on the
        model's device (which also holds the timesteps and schedule then)."""
        self._setup()
        images, context = self._check_examples(batch, "batch")
        if len(keys) != len(images):
            raise DataError(f"need one index per example; got {len(keys)} for {len(images)} examples.")
        device = next(self.model.parameters()).device
        self._t = torch.tensor(self._timesteps, dtype=torch.long, device=device)
        self._schedule_on = self._schedule.to(device)
        noise = self.noise(keys, images.shape[1:]).to(device)
        return images.to(device), noise, None if context is None else context.to(device)

    @contextlib.contextmanager
    def _evaluating(self) -> Iterator[None]:
        """The model in eval mode while inside; its mode restored after."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    def kronecker_features(self, batch: Examples, keys: Sequence[int | str]) -> Tensor:
        """Features under the ``kronecker`` projector from one forward and one backward pass of all ``b x K`` rows
        (:func:`~genprov.attribution.data.kronecker.kronecker_features`): the gradient of ``sum_rows f / K`` splits
        into the examples' gradients of ``mean_t f``, and the hooks project them without forming them; equal to
        ``projector.project(self.gradients(batch, keys))`` up to float rounding.

        Args:
            batch: (b, C, H, W) examples, or b :class:`~genprov.data.ConditionedExamples` for a conditional model.
            keys: (b,) their noise keys.

        Returns:
            (b, k) features in the model's dtype.
        """
        self._setup()
        if self._kronecker is None:
            raise ConfigError(
                f"kronecker_features needs projector='kronecker'; this attributor's is {self.config.projector!r}."
            )
        x0, noise, ctx = self._batch_inputs(batch, keys)
        b, k = len(x0), len(self._t)
        assert isinstance(self._projector, KroneckerProjector)
        with self._evaluating(), _differentiating(self.model, ()):  # autograd skips the summed weight gradients
            return kronecker_features(
                self.model,
                self._kronecker,
                self._projector,
                lambda: self._rows_loss(x0, noise, ctx),
                n_examples=b,
                rows=b * k,
            )

    def _hook_gradients(self, x0: Tensor, noise: Tensor, context: Tensor | None) -> dict[str, Tensor]:
        """Per-example gradients of the ``b`` examples from one forward and one backward pass of their ``b x K``
        rows with hooks (:func:`~genprov.attribution.data.kronecker.per_example_gradients`); no parameter requires
        a gradient meanwhile, so autograd computes the layers' output gradients only."""
        b, k = len(x0), len(self._t)
        with _differentiating(self.model, ()):
            grads = per_example_gradients(
                self.model, self._hook_layers, lambda: self._rows_loss(x0, noise, context), n_examples=b, rows=b * k
            )
        return {n: grads[n] for n in self._param_names}

    def _size_hooked_passes(self, batch: Examples, keys: Sequence[int | str]) -> None:
        """Under ``"auto"``'s hooks, before the first pass: the examples per hooked pass, from one no-grad forward pass
        of the first example's K rows (the values of its per-example gradients plus its rows' hooked outputs, against
        :data:`HOOKS_MAX_VALUES`). It depends on the model and the examples' shape only, so every call (and every
        shard) groups its examples alike. A model whose layers are not batch-first leaves the hooks here."""
        x0, noise, ctx = self._batch_inputs(batch[:1], keys[:1])
        try:
            with self._evaluating():
                outputs = hooked_output_values(
                    self._hook_layers, lambda: self._rows_loss(x0, noise, ctx), rows=len(self._t)
                )
        except HookLayoutError as err:
            self._hooks_failed = True
            logger.warning(
                "per_example='auto' takes per-example gradients by %s instead of hooks: %s", self.per_example_mode, err
            )
            return
        self._hooks_per_pass = max(1, HOOKS_MAX_VALUES // (sum(self._sizes.values()) + outputs))

    def _loop_gradients(self, x0: Tensor, noise: Tensor, context: Tensor | None) -> dict[str, Tensor]:
        """Per-example gradients one example at a time with plain reverse-mode autograd.

        Only the selected parameters require a gradient while the model runs (:func:`_differentiating`), so
        autograd computes nothing else (the other weights are constants of the graph), and the model runs as it is
        (no ``functional_call`` re-parametrisation per example). Plain autograd skips ``torch.func``'s wrapper
        tensors: about 25% faster per example than ``grad`` on the 1M-parameter benchmark DDPM.
        """
        rows: dict[str, list[Tensor]] = {n: [] for n in self._param_names}
        with _differentiating(self.model, self._param_names) as leaves, torch.enable_grad():
            for i in range(len(x0)):
                ctx = None if context is None else context[i : i + 1]
                out = self._rows_loss(x0[i : i + 1], noise[i : i + 1], ctx)
                grads = torch.autograd.grad(out, leaves, allow_unused=True)
                for n, p, g in zip(self._param_names, leaves, grads, strict=True):
                    rows[n].append(torch.zeros_like(p) if g is None else g)
        return {n: torch.stack(rows[n]) for n in self._param_names}

    def _features(self, batch: Examples, keys: Sequence[int | str]) -> Tensor:
        self._setup()
        out = []
        kronecker = self._kronecker is not None  # one batched pass of batch_size examples, no per-example gradients
        auto_hooks = not kronecker and self.config.per_example == "auto" and self.per_example_mode == "hooks"
        if auto_hooks and self._hooks_per_pass is None and len(batch):
            self._size_hooked_passes(batch, keys)
        start = 0
        while start < len(batch):
            step = self._examples_per_call(kronecker)
            part, part_keys = batch[start : start + step], keys[start : start + step]
            start += step
            if kronecker:
                features = self.kronecker_features(part, part_keys)
            else:
                features = self._projector.project(self.gradients(part, part_keys))
            out.append(features.to(torch.float32).cpu())
        if not out:
            return torch.empty(0, self.feature_dim)
        return torch.cat(out)

    def _examples_per_call(self, kronecker: bool) -> int:
        """Examples featurized at once: ``batch_size`` in one batched pass (``kronecker``, ``hooks``) or vmapped
        call, 1 for a loop (which projects each gradient as it comes); under ``"auto"``'s hooks at most as many as
        :data:`HOOKS_MAX_VALUES` allows (:meth:`_size_hooked_passes`)."""
        mode = "hooks" if kronecker else self.per_example_mode
        if mode == "loop":
            return 1
        if mode == "hooks" and not kronecker and self.config.per_example == "auto":
            return min(self.config.batch_size, self._hooks_per_pass or 1)
        return self.config.batch_size

    def featurize(self, batch: Examples, indices: Tensor | Sequence[int]) -> Tensor:
        """Projected gradient features of training examples.

        Args:
            batch: (b, C, H, W) examples in [-1, 1] (or, for a conditional model, b ConditionedExamples).
            indices: (b,) their indices in the training set (seed their noise).

        Returns:
            (b, k) float32 features.
        """
        keys = [int(i) for i in (indices.tolist() if isinstance(indices, Tensor) else indices)]
        self._check_examples(batch, "batch")
        return self._features(batch, keys)

    def featurize_queries(self, queries: Examples) -> Tensor:
        """Features of queries: (n_queries, k) float32.

        The noise is seeded by a hash of each query's pixels (and its context, for a conditional model), or,
        under ``noise="batch-position"``, by its position in ``queries`` (as the original featurizes its
        query set batch by batch).
        """
        images, context = self._check_examples(queries, "queries")
        if self.config.noise == "batch-position":
            return self._features(queries, list(range(len(images))))
        keys = [query_key(q, None if context is None else context[i]) for i, q in enumerate(images)]
        return self._features(queries, keys)

    def _check_examples(self, x: Examples, name: str) -> tuple[Tensor, Tensor | None]:
        """The float32 images (or latents) and, for a conditional model, the contexts of ``x``, checked."""
        context: Tensor | None = None
        if isinstance(x, ConditionedExamples):
            if not self.requires_context:
                raise DataError(
                    f"{name} are latents with text embeddings but this model is unconditional; pass images (n, C, H, W)."
                )
            context = x.context.to(torch.float32)
            x = x.latents
        elif self.requires_context:
            raise DataError(
                f"{name}: this text-to-image model needs each example's caption; pass ConditionedExamples "
                "(genprov.models.t2i.encode_examples(pipeline, images, captions))."
            )
        if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise DataError(f"{name} must be a float tensor (n, C, H, W); got {shape}.")
        model_config = getattr(self.model, "config", None)
        size, channels = getattr(model_config, "image_size", None), getattr(model_config, "channels", None)
        if size is not None and tuple(x.shape[1:]) != (channels, size, size):
            what = "latents" if context is not None else "images"
            raise DataError(
                f"{name} must have shape (n, {channels}, {size}, {size}) for this model; got {tuple(x.shape)}. "
                f"Resize the {what} to the model's size."
            )
        return x.to(torch.float32), context

    # ------------------------------------------------------------------------------------ fitting

    def store_spec(self, images: Examples, *, data_fingerprint: str | None = None) -> dict[str, Any]:
        """What a feature store of ``images`` must match: config, timesteps, parameters, fingerprints (of the
        latents and their contexts, for a conditional model).

        Args:
            images: The training examples.
            data_fingerprint: The data fingerprint to record instead of the pixels' (an image collection's key,
                ``trak_shards.featurize_collection``); ``images`` is then only checked for its shape (one example
                suffices).
        """
        self._setup()
        x, context = self._check_examples(images, "train")
        if data_fingerprint is None:
            arrays = [x.detach().cpu().contiguous().numpy()]
            if context is not None:
                arrays.append(context.detach().cpu().contiguous().numpy())
            data_fingerprint = fingerprint_arrays(*arrays)
        return {
            "format": _FEATURE_FORMAT,
            "method": "trak-features",
            "config": self.config.feature_spec(),
            "timesteps": list(self._timesteps),
            "parameters": {
                "n_blocks": len(self._param_names),
                "n_values": int(sum(self._sizes.values())),
                **({} if self._kronecker is None else {"coverage": self._coverage}),
            },
            "feature_dim": self.feature_dim,
            "model_fingerprint": fingerprint_state(self.model),
            "data_fingerprint": data_fingerprint,
        }

    def fit(self, train: TrainingSet, store: StoreLike = None, *, show_progress: bool | None = None) -> TRAKAttributor:
        """Featurize the training set (resuming ``store``) and factor the kernel.

        Args:
            train: An ``ImageDataset`` or (n, C, H, W) tensor (for a conditional model:
                :class:`~genprov.data.ConditionedExamples`); example ``i`` is keyed by its position ``i``.
            store: Folder (or :class:`FeatureStore`) to write the features to, shard by shard; an existing
                store with the same spec is resumed (finished shards are kept). ``None``: in memory.
            show_progress: Progress bar over shards.

        Returns:
            ``self``.

        Raises:
            StoreMismatchError: ``store`` holds features of another config, model or data (names the fields).
            StoreLockedError: Another driver is filling ``store`` (it names the holder); a finished store is only
                read, without the lock.
        """
        images: Examples = train if isinstance(train, ConditionedExamples) else training_images(train)
        self._check_examples(images, "train")
        n = len(images)
        cfg = self.config
        spec = self.store_spec(images)
        k = self.feature_dim
        if store is None:
            features = np.empty((n, k), dtype=np.dtype(cfg.dtype))
            shards = range(-(-n // cfg.shard_size))
            for shard in progress(shards, desc=f"{self.method} features", total=len(shards), show=show_progress):
                start, stop = shard * cfg.shard_size, min(n, (shard + 1) * cfg.shard_size)
                features[start:stop] = self.featurize(images[start:stop], torch.arange(start, stop)).numpy()
            self.store_ = None
        else:
            fs = self.create_store(store, images, spec)
            if fs.missing_shards():  # writing: one driver per store (a finished store is only read)
                with driver_lock(fs.path):
                    missing = fs.missing_shards()
                    if len(missing) < fs.n_shards:
                        logger.info("%s: resuming, %d of %d shards left", fs.path, len(missing), fs.n_shards)
                    desc = f"{self.method} features"
                    for shard in progress(missing, desc=desc, total=len(missing), show=show_progress):
                        start, stop = fs.shard_bounds(shard)
                        rows = self.featurize(images[start:stop], torch.arange(start, stop))
                        fs.write_shard(shard, {"features": rows})
            features = fs.read("features")
            self.store_ = fs
        return self.fit_features(features, write_cache=self.store_ is not None)

    def create_store(
        self,
        store: FeatureStore | str | os.PathLike[str],
        images: Examples,
        spec: dict[str, Any],
        *,
        n_rows: int | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> FeatureStore:
        """The feature store of ``images`` at ``store`` (created, or an unfinished one with ``spec`` resumed): the
        one :meth:`fit` fills, also filled shard by shard on a backend by ``trak_shards.featurize_sharded``.

        Args:
            store: The store folder (or store).
            images: The training examples (their number is the store's rows).
            spec: :meth:`store_spec`'s.
            n_rows: The number of training examples when ``images`` are not all of them (an image collection's
                first image, ``trak_shards.featurize_collection``).
            info: More facts for the manifest (e.g. the collection read).

        Raises:
            StoreMismatchError: ``store`` holds features of another config, model or data (names the fields), or of
                an image collection asked for with images in memory (names the way to reopen it).
        """
        path = store.path if isinstance(store, FeatureStore) else store
        if (Path(path) / MANIFEST_FILE).is_file():
            stored = read_manifest(Path(path)).spec.get("data_fingerprint")
            if is_collection_key(stored) and not is_collection_key(spec.get("data_fingerprint")):
                raise StoreMismatchError(
                    f"{path} holds features of an image collection (data fingerprint {stored}), which images in "
                    "memory cannot be checked against. Reopen it without the images: "
                    f"trak_shards.fit_collection_store(attributor, {str(path)!r}), or 'genprov trak score --store "
                    f"{path} ...'; or fit the images into another store folder."
                )
        n = len(images) if n_rows is None else int(n_rows)
        return FeatureStore.create(
            path,
            n_rows=n,
            arrays={"features": self.feature_dim},
            spec=spec,
            dtype=self.config.dtype,
            shard_size=self.config.shard_size,
            info={"method": self.method, "n_train": n, **dict(info or {})},
        )

    def fit_features(self, features: np.ndarray | Tensor, *, write_cache: bool = False) -> TRAKAttributor:
        """Use precomputed training features (e.g. a store, or D-TRAK's raw memmap via
        :func:`genprov.storage.read_raw_features`) and factor the kernel.

        Args:
            features: (n_train, k) features.
            write_cache: When the features are :attr:`store_`'s, cache the kernel and its factor in the store
                (what :meth:`fit` does; a reopened attributor only reads the cache, so a read-only store works).

        Returns:
            ``self``.
        """
        phi = features.detach().cpu().numpy() if isinstance(features, Tensor) else features
        if phi.ndim != 2 or phi.shape[0] < 1:
            raise DataError(f"features must be a non-empty (n_train, k) array; got shape {phi.shape}.")
        self.train_features_ = phi
        self.n_train_ = int(phi.shape[0])
        self._kernel = {}
        self._prepare(write_cache)
        return self

    # ------------------------------------------------------------------------------------ save / load

    def _payload(self) -> ArtifactPayload:
        """The config, the model's checkpoint, and the store folder (or, fitted in memory, the features).

        A text-to-image pipeline's denoiser also records ``state["pipeline"]``: the pipeline folder and the LoRA
        folder it was opened from (``genprov.models.t2i.open_pipeline``), each absolute with the SHA-256 of its files (``{}``
        for a pipeline built in memory, which must then be passed to :meth:`from_pretrained`).
        """
        self._check_fitted()
        assert self.train_features_ is not None
        store = str(self.store_.path.resolve()) if self.store_ is not None else None
        tensors = {} if store else {"train_features": torch.from_numpy(np.ascontiguousarray(self.train_features_))}
        state: dict[str, Any] = {"store": store, "n_train": self.n_train_}
        if self.requires_context:
            state["pipeline"] = pipeline_record(getattr(self.model, "unet", None))
        return ArtifactPayload(config=self.config, state=state, tensors=tensors, wraps={"model": self.model})

    @classmethod
    def _from_record(cls, record: ArtifactRecord, tensors: dict[str, Tensor], wrapped: Any) -> Self:
        """Reopen the model and the features (no training data needed: the store's data fingerprint is
        checked when :meth:`fit` is given the data).

        For a text-to-image pipeline, ``wrapped`` is the pipeline (with its LoRA loaded); by default the recorded
        pipeline and LoRA folders are reopened after checking their files' SHA-256. Either way the U-Net's
        weights must have the recorded fingerprint.
        """
        scheduler = None
        if "pipeline" in record.state:
            pipe = (
                wrapped if wrapped is not None else reopen_pipeline(record.state.get("pipeline") or {}, record.folder)
            )
            if not (hasattr(pipe, "unet") and hasattr(pipe, "scheduler")):
                raise CheckpointError(
                    f"{record.folder} attributes a text-to-image pipeline; pass the pipeline (with its LoRA loaded), "
                    f"not a {type(pipe).__name__}: from_pretrained(folder, pipeline)."
                )
            from genprov.models.t2i.denoiser import LatentDenoiser  # the t2i extra is imported only here

            scheduler = pipe.scheduler
            model = record.wrapped("model", LatentDenoiser(pipe.unet, scheduler))  # checks the weights' fingerprint
        else:
            model = record.wrapped("model", wrapped)
        if model is None:
            raise CheckpointError(f"{record.folder} records no model; pass it: from_pretrained(folder, model).")
        attributor = cls(model, scheduler, TRAKConfig.from_dict(record.config))
        store = record.state.get("store")
        if not store:
            attributor.fit_features(tensors["train_features"])
            return attributor
        fs = FeatureStore.open(Path(str(store)))
        if not fs.is_complete or fs.spec.get("model_fingerprint") != fingerprint_state(model):
            raise CheckpointError(
                f"The feature store {fs.path} of {record.folder} is incomplete or was computed for another model; "
                "fit again (attributor.fit(train, store)) and save_pretrained it."
            )
        attributor.store_ = fs
        attributor.fit_features(fs.read("features"))
        return attributor

    # ------------------------------------------------------------------------------------ kernels

    def _chunks(self, size: int = _ROW_CHUNK) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, rows as float64)`` of the training features, ``size`` rows at a time (read from the memmap)."""
        assert self.train_features_ is not None
        phi = self.train_features_
        for start in range(0, phi.shape[0], size):
            yield start, np.asarray(phi[start : start + size], dtype=np.float64)

    def _prepare(self, write: bool) -> None:
        """Norms, trace, lambda, and (for kernel scorings) the Cholesky factor, all in float64.

        When the features are a store's, each of these is read from the store's cache if it was computed for the
        same features (and lambda), else computed, and cached (:meth:`FeatureStore.write_cache`) only by
        :meth:`fit` (``write``), which writes the store anyway: a reopened attributor neither recomputes the kernel
        ``Phi^T Phi`` (n k^2 operations) nor re-factors it, and reopening never writes (a read-only store works).
        """
        assert self.train_features_ is not None
        n, k = self.train_features_.shape
        store = self._cache_store()
        form = {"form": "dual" if k > n else "primal"}
        sq_norms = self._cached(store, write, "trak-sq-norms", form, self._sq_norms)
        if not np.isfinite(sq_norms).all():
            raise DataError("training features contain NaN or infinite values; featurize again.")
        if not sq_norms.any():
            where = f"in {self.store_.path} " if self.store_ is not None else ""
            raise DataError(
                f"The training features {where}are all zero, so no damping can make them informative: the model's "
                "gradients vanished for the selected parameters (check the include / exclude parameter patterns), or "
                "the features were never written. Featurize again with other parameters (--set include=[...]) into "
                "a new store."
            )
        self._kernel["sq_norms"] = sq_norms
        self._kernel["trace"] = float(sq_norms.sum())
        self._kernel["dual"] = k > n
        self.damping_ = (
            self.absolute_damping(self.config.relative_damping)
            if self.config.damping is None
            else float(self.config.damping)
        )
        if self.config.scoring in _KERNEL_SCORINGS:
            gram = self._cached(store, write, "trak-gram", form, self._gram)
            self._kernel["gram"] = gram
            damping = float(self.damping_)
            key = {**form, "damping": damping.hex()}  # exact
            tag = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
            factor = self._cached(store, write, f"trak-factor-{tag}", key, lambda: self._cholesky(gram, damping)[0])
            self._kernel["cho"] = (factor, True)
            if self.config.scoring == "relative-if":
                self._kernel["self_influence"] = self._cached(
                    store, write, f"trak-self-influence-{tag}", key, lambda: self._self_influence(self._kernel["cho"])
                )

    def _sq_norms(self) -> np.ndarray:
        """The training features' squared norms (n,), streaming the rows."""
        assert self.train_features_ is not None
        sq_norms = np.empty(self.train_features_.shape[0])
        for start, rows in self._chunks():
            sq_norms[start : start + len(rows)] = np.einsum("ij,ij->i", rows, rows)
        return sq_norms

    def _cache_store(self) -> FeatureStore | None:
        """The store whose cache holds this attributor's kernel: :attr:`store_` when the features are its
        ``features.npy`` (features passed to :meth:`fit_features` from elsewhere are never cached)."""
        phi, store = self.train_features_, self.store_
        if store is None or not isinstance(phi, np.memmap) or phi.filename is None:
            return None
        return store if Path(phi.filename).resolve() == (store.path / "features.npy").resolve() else None

    @staticmethod
    def _cached(
        store: FeatureStore | None, write: bool, name: str, key: dict[str, Any], compute: Callable[[], np.ndarray]
    ) -> np.ndarray:
        """``compute()``, or its value cached in ``store`` under ``name`` for the same features and ``key``;
        ``write``: cache a computed value."""
        if store is not None:
            hit = store.read_cache(name, key)
            if hit is not None and "value" in hit:
                return hit["value"]
        value = compute()
        if store is not None and write:
            store.write_cache(name, key, {"value": value})
        return value

    def absolute_damping(self, relative: float) -> float:
        """lambda for a relative damping: ``relative * trace(Phi^T Phi) / k``."""
        self._check_fitted()
        assert self.train_features_ is not None
        return float(relative) * self._kernel["trace"] / self.train_features_.shape[1]

    def _gram(self) -> np.ndarray:
        """``Phi^T Phi`` (k, k) in the primal form, ``Phi Phi^T`` (n, n) in the dual form."""
        assert self.train_features_ is not None
        k = self.train_features_.shape[1]
        if self._kernel["dual"]:  # n < k: the n x n kernel is smaller than one k x k block
            phi = np.asarray(self.train_features_, dtype=np.float64)
            return phi @ phi.T
        gram = np.zeros((k, k))
        for _, rows in self._chunks():
            gram += rows.T @ rows
        return gram

    def _cholesky(self, gram: np.ndarray, damping: float) -> tuple[np.ndarray, bool]:
        try:
            return scipy.linalg.cho_factor(gram + damping * np.eye(len(gram)), lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            raise DataError(
                f"The feature kernel is singular with lambda={damping:g} (k={self.train_features_.shape[1]} "  # type: ignore[union-attr]
                f"features, {self.n_train_} examples); set a positive damping or relative_damping."
            ) from None

    def _self_influence(self, cho: tuple[np.ndarray, bool]) -> np.ndarray:
        """``diag(Phi (Phi^T Phi + lambda I)^-1 Phi^T)`` (n,)."""
        assert self.train_features_ is not None
        if self._kernel["dual"]:
            # Phi (Phi^T Phi + l)^-1 Phi^T = K (K + l)^-1 = I - l (K + l)^-1
            inv = scipy.linalg.cho_solve(cho, np.eye(self.n_train_ or 0), check_finite=False)
            return 1.0 - float(self.damping_ or 0.0) * np.diag(inv)
        out = np.empty(self.train_features_.shape[0])
        for start, rows in self._chunks():
            solved = scipy.linalg.cho_solve(cho, rows.T, check_finite=False)
            out[start : start + len(rows)] = np.einsum("ji,ji->i", rows.T, solved)
        return out

    def _train_product(self, left: np.ndarray) -> np.ndarray:
        """``left @ Phi^T`` for ``left`` (m, k): (m, n), streaming the training features."""
        assert self.train_features_ is not None
        out = np.empty((left.shape[0], self.train_features_.shape[0]))
        for start, rows in self._chunks():
            out[:, start : start + len(rows)] = left @ rows.T
        return out

    def scores_from_features(self, query_features: np.ndarray | Tensor) -> Tensor:
        """Scores of queries given their features (:meth:`featurize_queries`).

        Args:
            query_features: (n_queries, k) features computed like the training ones.

        Returns:
            (n_queries, n_train) float64 scores; higher = more positive influence.
        """
        self._check_fitted()
        return torch.from_numpy(self._scores_array(self._query_array(query_features)))

    def _scores_array(self, phi_q: np.ndarray) -> np.ndarray:
        """The full (n_queries, n_train) float64 scores: every query at once, the training rows streamed."""
        out = np.empty((len(phi_q), self.n_train_ or 0))
        for rows, cols, block in self._score_blocks(phi_q, max(1, len(phi_q)), _ROW_CHUNK):
            out[rows, cols] = block
        return out

    def _score_blocks(
        self, phi_q: np.ndarray, query_block: int, train_block: int
    ) -> Iterator[tuple[slice, slice, np.ndarray]]:
        """The scores of ``phi_q`` as ``(query rows, training columns, float64 block)``, each pair once.

        Primal form (and ``grad-dot`` / ``grad-cos``, which need no kernel): the training features are read once,
        ``train_block`` rows at a time, and each row block is scored against ``query_block`` queries at a time;
        memory is one block of each plus the (n_queries, k) solved queries ``(Phi^T Phi + lambda I)^-1 phi_q``,
        never n_queries x n_train. Dual form (a kernel scoring with k > n): a query's scores mix every training
        column through the n x n solve, so a query block's (query_block, n) scores are computed at once (bounded
        by query_block x k since n < k) and handed out in column blocks.
        """
        n, n_q = self.n_train_ or 0, len(phi_q)
        kernel = self.config.scoring in _KERNEL_SCORINGS
        if kernel and self._kernel["dual"]:
            for q0 in range(0, n_q, query_block):
                qs = slice(q0, min(n_q, q0 + query_block))
                rows = scipy.linalg.cho_solve(self._kernel["cho"], self._train_product(phi_q[qs]).T, check_finite=False)
                for t0 in range(0, n, train_block):
                    ts = slice(t0, min(n, t0 + train_block))
                    yield qs, ts, self._normalize(rows.T[:, ts], qs, ts, None)
            return
        left = scipy.linalg.cho_solve(self._kernel["cho"], phi_q.T, check_finite=False).T if kernel else phi_q
        q_norm = np.linalg.norm(phi_q, axis=1) if self.config.scoring == "grad-cos" else None
        for t0, rows in self._chunks(train_block):
            ts = slice(t0, t0 + len(rows))
            for q0 in range(0, n_q, query_block):
                qs = slice(q0, min(n_q, q0 + query_block))
                yield qs, ts, self._normalize(left[qs] @ rows.T, qs, ts, q_norm)

    def _normalize(self, block: np.ndarray, qs: slice, ts: slice, q_norm: np.ndarray | None) -> np.ndarray:
        """A block of ``Phi_q Phi^T`` (grad-dot) or kernel scores divided as the scoring says (the ``grad-cos``
        norms, the ``relative-if`` self-influence, the ``renormalized-if`` feature norms)."""
        scoring = self.config.scoring
        if scoring == "grad-cos":
            assert q_norm is not None
            t_norm = np.sqrt(self._kernel["sq_norms"][ts])
            return block / np.maximum(q_norm[qs, None] * t_norm[None, :], 1e-300)
        if scoring == "relative-if":
            return block / np.sqrt(np.maximum(self._kernel["self_influence"][ts], 1e-300))[None, :]
        if scoring == "renormalized-if":
            return block / np.maximum(np.sqrt(self._kernel["sq_norms"][ts]), 1e-300)[None, :]
        return np.asarray(block)

    def top_k_scores(
        self,
        query_features: np.ndarray | Tensor,
        k: int,
        *,
        negative: int = 0,
        query_block: int = QUERY_BLOCK,
        train_block: int = _ROW_CHUNK,
        dtype: str = "float64",
        out: str | os.PathLike[str] | None = None,
    ) -> TopK:
        """The ``k`` most positive (and ``negative`` most negative) training examples of each query, block-wise.

        The training features are streamed from the store ``train_block`` rows at a time and the queries
        ``query_block`` at a time; a running top-k per query is merged exactly with each block
        (:class:`~genprov.attribution.data.base.RunningTopK`), so the result equals :func:`top_k` of
        :meth:`scores_from_features` (ties: lower index first) while memory stays bounded by the blocks: no
        n_queries x n_train array is held unless ``out`` asks for it on disk. The dual form (k > n) computes a
        query block's n scores at once (see :meth:`_score_blocks`).

        Args:
            query_features: (n_queries, k) features (:meth:`featurize_queries`).
            k: Most positive examples kept per query.
            negative: Most negative examples kept per query (0: none).
            query_block: Queries scored at once.
            train_block: Training rows read at once.
            dtype: Precision of the scores ranked, returned and written: ``"float64"`` (as
                :meth:`scores_from_features`) or ``"float32"`` (as :meth:`scores`; what :meth:`attribute` ranks).
            out: Also write the full (n_queries, n_train) scores as a ``.npy`` memmap at this path (atomically:
                a temporary file beside it, renamed when complete).

        Returns:
            :class:`~genprov.attribution.data.base.TopK` (scores as float64).

        Raises:
            ConfigError: On a ``k`` / ``negative`` outside [1, n_train] (0 allowed for ``negative``), a block size
                below 1 or another dtype.
        """
        self._check_fitted()
        n = self.n_train_ or 0
        check_top_k(k, n)
        if negative:
            check_top_k(negative, n, "negative")
        for name, size in (("query_block", query_block), ("train_block", train_block)):
            require(is_int(size) and size >= 1, name, "a positive integer", size)
        require(dtype in ("float32", "float64"), "dtype", "'float32' or 'float64'", dtype)
        phi_q = self._query_array(query_features)
        best = RunningTopK(len(phi_q), k, dtype=dtype)
        worst = RunningTopK(len(phi_q), negative, dtype=dtype, lowest=True) if negative else None
        with _score_file(out, (len(phi_q), n), np.dtype(dtype)) as write:
            for qs, ts, block in self._score_blocks(phi_q, query_block, train_block):
                values = block.astype(dtype, copy=False)
                if write is not None:
                    write(qs, ts, values)
                best.update(qs, ts, values)
                if worst is not None:
                    worst.update(qs, ts, values)
        indices, scores = best.result()
        if worst is None:
            return TopK(indices, scores)
        return TopK(indices, scores, *worst.result())

    def attribute(self, queries: Examples, *, k: int = 10) -> DataAttributionResult:
        """The ``k`` most positively influential training examples of each query, scored block-wise
        (:meth:`top_k_scores` on the float32 scores :meth:`scores` returns: the same result as
        ``result_from_scores(scores(queries), k)`` without the n_queries x n_train matrix)."""
        self._check_fitted()
        check_top_k(k, self.n_train_ or 0)
        return self.result_from_top_k(self.top_k_scores(self.featurize_queries(queries), k, dtype="float32"))

    def _query_array(self, query_features: np.ndarray | Tensor) -> np.ndarray:
        assert self.train_features_ is not None
        phi_q = query_features.detach().cpu().numpy() if isinstance(query_features, Tensor) else query_features
        phi_q = np.asarray(phi_q, dtype=np.float64)
        k = self.train_features_.shape[1]
        if phi_q.ndim != 2 or phi_q.shape[1] != k:
            raise DataError(f"query features must have shape (n_queries, {k}); got {phi_q.shape}.")
        if not np.isfinite(phi_q).all():
            raise DataError("query features contain NaN or infinite values.")
        return phi_q

    def scores_sweep(
        self,
        query_features: np.ndarray | Tensor,
        dampings: Sequence[float],
    ) -> np.ndarray:
        """TRAK-type scores for several absolute lambdas from one eigendecomposition (float64).

        ``S(lambda) = (Phi_q V) diag(1 / (e + lambda)) (Phi V)^T`` with ``Phi^T Phi = V diag(e) V^T``
        (primal), or ``(Phi_q Phi^T U) diag(1 / (e + lambda)) U^T`` with ``Phi Phi^T = U diag(e) U^T`` (dual).
        Applies the ``relative-if`` / ``renormalized-if`` normalisation of the config; for ``grad-dot`` and
        ``grad-cos`` (no lambda) every entry equals :meth:`scores_from_features`.

        Args:
            query_features: (n_queries, k) query features.
            dampings: Absolute lambdas (see :meth:`absolute_damping` and :data:`DAMPING_GRID`).

        Returns:
            (len(dampings), n_queries, n_train) float64 scores.
        """
        self._check_fitted()
        assert self.train_features_ is not None
        phi_q = self._query_array(query_features)
        lambdas = [float(d) for d in dampings]
        if not lambdas or any(not math.isfinite(d) or d < 0 for d in lambdas):
            raise ConfigError(f"dampings must be a non-empty list of numbers >= 0; got {list(dampings)}.")
        if self.config.scoring in ("grad-dot", "grad-cos"):
            fixed = self._scores_array(phi_q)
            return np.stack([fixed] * len(lambdas))
        gram = self._kernel.get("gram")
        if gram is None:
            gram = self._gram()
        evals, evecs = np.linalg.eigh(gram)
        evals = np.clip(evals, 0.0, None)
        if self._kernel["dual"]:
            left = self._train_product(phi_q) @ evecs  # (q, n)
            right = evecs  # (n, n)
        else:
            left = phi_q @ evecs  # (q, k)
            right = self._train_product(evecs.T).T  # (n, k) = Phi V
        out = np.empty((len(lambdas), phi_q.shape[0], self.n_train_ or 0))
        for i, lam in enumerate(lambdas):
            inv = 1.0 / (evals + lam) if lam > 0 else np.where(evals > 0, 1.0 / np.maximum(evals, 1e-300), 0.0)
            scores = (left * inv[None, :]) @ right.T
            if self.config.scoring == "relative-if":
                if self._kernel["dual"]:
                    self_inf = 1.0 - lam * np.einsum("ij,j,ij->i", evecs, inv, evecs)
                else:
                    self_inf = np.einsum("ij,j,ij->i", right, inv, right)
                scores = scores / np.sqrt(np.maximum(self_inf, 1e-300))[None, :]
            elif self.config.scoring == "renormalized-if":
                scores = scores / np.maximum(np.sqrt(self._kernel["sq_norms"]), 1e-300)[None, :]
            out[i] = scores
        return out
