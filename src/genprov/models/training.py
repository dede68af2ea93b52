"""Training loops for GANs, DDPMs, classifiers and tabular GANs, resumable and exactly reproducible.

Every trainer writes into ``out_dir``:

* the checkpoint (``config.json`` + ``model.safetensors``, see ``genprov.models.checkpoints``), updated
  every ``checkpoint_every`` steps and at the end; ``extra`` records ``step``, ``n_steps`` and ``complete``;
* ``state/``: ``state.json`` (step, configs, data fingerprint, optimiser structure) and
  ``state-<step>.safetensors`` (all module weights, EMA, optimiser tensors), written together with the
  checkpoint;
* ``train_log.jsonl``: one line per ``log_every`` steps, ``{"step", <mean losses>, "time"}``, written
  with the state so that the log and the state always agree.

No RNG state needs saving: the weights are initialised from ``derive_seed(seed, "init")`` (inside
``torch.random.fork_rng``, so the global RNG is untouched), the examples of draw ``d`` come from per-epoch
permutations seeded by ``(seed, "epoch", e)``, and every noise draw of step ``s`` comes from
``torch_generator(seed, "step", s)``. So a run interrupted at any checkpoint and resumed produces the
same weights as an uninterrupted run.

Re-running a finished run (state at ``n_steps``) loads it and returns at once: this is the demo's cache.
Resuming with a different model config, training config (other than ``n_steps``, ``checkpoint_every``,
``log_every``; ``n_steps`` too under a ``cosine`` learning-rate schedule, which depends on it) or data raises
:class:`~genprov.exceptions.StoreMismatchError` naming the fields.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genprov.config import Config
from genprov.exceptions import CheckpointError, ConfigError, DataError, StoreMismatchError
from genprov.models.checkpoints import (
    CONFIG_FILE,
    MODEL_KINDS,
    check_state,
    flatten_optimizer_state,
    load_modules,
    load_tensors,
    save_checkpoint,
    save_tensors,
    state_tensors,
    unflatten_optimizer_state,
)
from genprov.models.classifiers import ClassifierConfig, build_classifier
from genprov.models.diffusion import DDPM, DDPMConfig, ddpm_loss
from genprov.models.gans import GANConfig, GANObjective, build_gan
from genprov.models.tabular import TabularGANConfig, build_tabular_gan
from genprov.models.train_config import TrainConfig, lr_factor
from genprov.utils.artifacts import INCOMPLETE_CHECKPOINT, check_output_folder
from genprov.utils.io import atomic_write_json, atomic_write_text, read_json
from genprov.utils.progress import progress
from genprov.utils.seeding import derive_seed, torch_generator
from genprov.utils.validation import check_images, check_matrix

__all__ = [
    "LOG_FILE",
    "STATE_DIR",
    "TrainConfig",
    "TrainResult",
    "TrainingProgress",
    "batch_indices",
    "default_train_config",
    "train_classifier",
    "train_ddpm",
    "train_gan",
    "train_tabular_gan",
]

logger = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
STATE_DIR = "state"
_STATE_JSON = "state.json"
#: training-config fields that may change between a run and its resumption
_RESUMABLE_FIELDS = frozenset({"n_steps", "checkpoint_every", "log_every"})


class ImageData(Protocol):
    """Anything with an ``images`` attribute: (N, C, H, W) float in [-1, 1] (e.g. ``genprov.data.ImageDataset``)."""

    @property
    def images(self) -> Tensor: ...


class LabelledImageData(ImageData, Protocol):
    """Images plus ``labels``: (N,) int64 class indices (or ``None``)."""

    @property
    def labels(self) -> Tensor | None: ...


class TabularData(Protocol):
    """Anything with a ``features`` attribute: (N, D) float in [-1, 1] (e.g. ``genprov.data.TabularDataset``)."""

    @property
    def features(self) -> Tensor: ...


@dataclasses.dataclass
class TrainResult:
    """What a trainer returns.

    Attributes:
        kind: Checkpoint kind (``"gan"``, ``"ddpm"``, ``"classifier"``, ``"tabular-gan"``).
        model: The main module, in eval mode: generator, ``DDPM`` (EMA weights if enabled) or classifier.
        modules: Every module in the checkpoint (e.g. also the discriminator).
        checkpoint: The checkpoint folder (``out_dir``).
        log: The training log entries (also in ``out_dir/train_log.jsonl``).
        step: Steps done (``n_steps`` unless interrupted).
        resumed_from: Step the run started from (0 = fresh start; ``n_steps`` = loaded a finished run).
        seconds: Wall time of this call.
    """

    kind: str
    model: nn.Module
    modules: dict[str, nn.Module]
    checkpoint: Path
    log: list[dict[str, float]]
    step: int
    resumed_from: int
    seconds: float


def default_train_config(model_config: Config, **overrides: Any) -> TrainConfig:
    """Recommended :class:`TrainConfig` for a model config, with ``overrides`` applied.

    GANs: Adam(2e-4, betas (0.5, 0.999)) as in DCGAN; WGAN-GP: Adam(1e-4, (0, 0.9)), ``n_critic=5`` as in
    Gulrajani et al.; DDPM: Adam(1e-3, (0.9, 0.999)) with EMA 0.995 (short CPU runs); classifier:
    Adam(1e-3, (0.9, 0.999)).
    """
    base: dict[str, Any] = {}
    arch = getattr(model_config, "arch", None)
    if arch == "wgan-gp":
        base = {"lr": 1e-4, "betas": (0.0, 0.9), "n_critic": 5}
    elif isinstance(model_config, DDPMConfig):
        base = {"lr": 1e-3, "betas": (0.9, 0.999), "ema_decay": 0.995}
    elif isinstance(model_config, ClassifierConfig):
        base = {"lr": 1e-3, "betas": (0.9, 0.999)}
    return TrainConfig(**{**base, **overrides})


def batch_indices(n_data: int, batch_size: int, seed: int, draw: int) -> Tensor:
    """Indices of the ``draw``-th batch: positions ``draw * batch_size + [0, batch_size)`` in the
    concatenation of per-epoch random permutations (epoch ``e`` from ``(seed, "epoch", e)``).

    Returns:
        (batch_size,) int64 indices in [0, n_data).
    """
    pos = torch.arange(draw * batch_size, (draw + 1) * batch_size)
    epochs = pos // n_data
    out = torch.empty(batch_size, dtype=torch.long)
    for e in torch.unique(epochs).tolist():
        perm = torch.randperm(n_data, generator=torch_generator(seed, "epoch", int(e)))
        mask = epochs == e
        out[mask] = perm[pos[mask] % n_data]
    return out


def _fingerprint(*tensors: Tensor | None) -> str:
    h = hashlib.blake2b(digest_size=12)
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        arr = np.ascontiguousarray(t.detach().cpu().numpy())
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(arr.data)
    return h.hexdigest()


def _optimizer(modules: list[nn.Module], cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for m in modules for p in m.parameters()]
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


@contextlib.contextmanager
def _seeded_init(seed: int) -> Iterator[None]:
    """Module initialisation from ``derive_seed(seed, "init")`` without disturbing the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        yield


# ------------------------------------------------------------------------------------------------ tasks


class _Task(ABC):
    """One kind of training: modules, optimisers and a step function; :func:`_run` does the rest."""

    kind: str

    def __init__(self, model_config: Config, cfg: TrainConfig, data: Tensor, device: torch.device) -> None:
        self.model_config = model_config
        self.cfg = cfg
        self.data = data.to(device)
        self.device = device
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    def real(self, draw: int) -> Tensor:
        """The ``draw``-th training batch."""
        return self.data[batch_indices(len(self.data), self.cfg.batch_size, self.cfg.seed, draw).to(self.device)]

    def randn(self, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
        """Standard normal noise from ``gen`` (on CPU, then moved to the device)."""
        return torch.randn(shape, generator=gen).to(self.device)

    @abstractmethod
    def step(self, step: int) -> dict[str, float]:
        """Run training step ``step`` (0-based); return its losses."""

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        """The modules written to the checkpoint."""
        return self.modules

    def update(self, opt: torch.optim.Optimizer, loss: Tensor, step: int) -> float:
        """One optimiser update on ``loss`` at training step ``step``; returns its value.

        The learning rate is ``lr * lr_factor(step)`` (set before each update, so nothing but the step needs
        saving to resume); with ``grad_clip`` the gradients' global norm is clipped first (D-TRAK's
        ``train_unconditional.py:689`` clips at 1.0).
        """
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = self.cfg.lr * lr_factor(step, self.cfg)
        if self.cfg.grad_clip is not None:
            params = [p for group in opt.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        opt.step()
        return float(loss.detach())


class _GANTask(_Task):
    """GAN training (images or tabular rows): ``n_critic`` discriminator updates, then one generator update.

    The objective and latent size come from the model config (:class:`GANConfig` or :class:`TabularGANConfig`).
    """

    def __init__(
        self,
        kind: str,
        model_config: GANConfig | TabularGANConfig,
        cfg: TrainConfig,
        data: Tensor,
        device: torch.device,
        modules: dict[str, nn.Module],
    ) -> None:
        super().__init__(model_config, cfg, data, device)
        self.kind = kind
        self.modules = {k: m.to(device) for k, m in modules.items()}
        self.objective: GANObjective = model_config.objective()
        self.latent_dim = model_config.latent_dim
        self.optimizers = {name: _optimizer([m], cfg) for name, m in self.modules.items()}

    def step(self, step: int) -> dict[str, float]:
        gen = torch_generator(self.cfg.seed, "step", step)
        G, D = self.modules["generator"], self.modules["discriminator"]
        bs = self.cfg.batch_size
        d_losses = []
        for k in range(self.cfg.n_critic):
            real = self.real(step * self.cfg.n_critic + k)
            with torch.no_grad():
                fake = G(self.randn((bs, self.latent_dim), gen))
            d_loss = self.objective.discriminator_loss(D, real, fake, gen)
            d_losses.append(self.update(self.optimizers["discriminator"], d_loss, step))
        g_loss = self.objective.generator_loss(D, G(self.randn((bs, self.latent_dim), gen)))
        g_value = self.update(self.optimizers["generator"], g_loss, step)
        return {"d_loss": sum(d_losses) / len(d_losses), "g_loss": g_value}


class _DDPMTask(_Task):
    """Noise-prediction training with uniform timesteps and optional EMA."""

    kind = "ddpm"

    def __init__(
        self, model_config: DDPMConfig, cfg: TrainConfig, data: Tensor, device: torch.device, model: DDPM
    ) -> None:
        super().__init__(model_config, cfg, data, device)
        self.model = model.to(device)
        self.modules = {"ddpm": self.model}
        if cfg.ema_decay is not None:
            self.ema = copy.deepcopy(self.model).requires_grad_(False)
            self.modules["ema"] = self.ema
        self.optimizers = {"ddpm": _optimizer([self.model], cfg)}
        self.n_timesteps = model_config.num_train_timesteps

    def step(self, step: int) -> dict[str, float]:
        gen = torch_generator(self.cfg.seed, "step", step)
        x0 = self.real(step)
        t = torch.randint(0, self.n_timesteps, (x0.shape[0],), generator=gen).to(self.device)
        noise = self.randn(tuple(x0.shape), gen)
        loss = self.update(self.optimizers["ddpm"], ddpm_loss(self.model, x0, noise, t), step)
        if self.cfg.ema_decay is not None:
            decay = min(self.cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for p_ema, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                    p_ema.lerp_(p, 1 - decay)
                for b_ema, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
                    b_ema.copy_(b)
        return {"loss": loss}

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"ddpm": self.ema if self.cfg.ema_decay is not None else self.model}


class _ClassifierTask(_Task):
    """Cross-entropy training; logs loss and batch accuracy."""

    kind = "classifier"

    def __init__(
        self,
        model_config: ClassifierConfig,
        cfg: TrainConfig,
        data: Tensor,
        labels: Tensor,
        device: torch.device,
        modules: dict[str, nn.Module],
    ) -> None:
        super().__init__(model_config, cfg, data, device)
        self.labels = labels.to(device)
        self.modules = {k: m.to(device) for k, m in modules.items()}
        self.optimizers = {"classifier": _optimizer([self.modules["classifier"]], cfg)}

    def step(self, step: int) -> dict[str, float]:
        idx = batch_indices(len(self.data), self.cfg.batch_size, self.cfg.seed, step).to(self.device)
        logits = self.modules["classifier"](self.data[idx])
        y = self.labels[idx]
        loss = self.update(self.optimizers["classifier"], F.cross_entropy(logits, y), step)
        return {"loss": loss, "accuracy": float((logits.argmax(1) == y).float().mean())}


# ------------------------------------------------------------------------------------------- the loop


def _mismatch(state_dir: Path, diffs: Mapping[str, tuple[Any, Any]]) -> StoreMismatchError:
    shown = "; ".join(f"{k}: saved {old!r}, now {new!r}" for k, (old, new) in list(diffs.items())[:8])
    return StoreMismatchError(
        f"{state_dir} holds a run with a different configuration ({shown}). Use another --out folder, or "
        f"delete {state_dir} to start over."
    )


def _write_log(out_dir: Path, log: list[dict[str, float]]) -> None:
    atomic_write_text(out_dir / LOG_FILE, "".join(json.dumps(entry) + "\n" for entry in log))


@dataclasses.dataclass
class TrainingProgress:
    """Where a run stands; saved in ``state.json`` so a resumed run logs exactly like an uninterrupted one.

    Attributes:
        step: Steps done.
        elapsed: Training seconds so far (over all sessions).
        log: Log entries so far.
        sums: Loss sums since the last log entry.
        n_summed: Steps in ``sums``.
    """

    step: int = 0
    elapsed: float = 0.0
    log: list[dict[str, float]] = dataclasses.field(default_factory=list)
    sums: dict[str, float] = dataclasses.field(default_factory=dict)
    n_summed: int = 0

    def add(self, losses: Mapping[str, float]) -> None:
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.n_summed += 1
        self.step += 1

    def flush_log(self, elapsed: float) -> None:
        entry = {"step": self.step, **{k: v / self.n_summed for k, v in self.sums.items()}, "time": round(elapsed, 3)}
        self.log.append(entry)
        self.sums, self.n_summed = {}, 0


def save_state_tensors(
    state_dir: Path, modules: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer], step: int
) -> tuple[str, dict[str, Any]]:
    """Write the weights and optimizer states of a run at ``step`` into ``state_dir``; the file name and the
    optimizers' structures, which :func:`commit_state` records once the run's other files are written."""
    tensors = state_tensors(modules)
    structures: dict[str, Any] = {}
    for name, opt in optimizers.items():
        structures[name], opt_tensors = flatten_optimizer_state(f"optimizer.{name}", opt.state_dict())
        tensors.update(opt_tensors)
    file_name = f"state-{step:09d}.safetensors"
    save_tensors(state_dir / file_name, tensors, metadata={"step": str(step)})
    return file_name, structures


def commit_state(
    state_dir: Path, file_name: str, structures: Mapping[str, Any], prog: TrainingProgress, record: Mapping[str, Any]
) -> None:
    """Point ``state.json`` at ``file_name`` (with ``record``: kind, configs, data fingerprint, ...) and remove
    older state files: the last step of a save, so an interrupted save resumes from the previous state."""
    atomic_write_json(
        state_dir / _STATE_JSON,
        {
            "step": prog.step,
            "file": file_name,
            **record,
            "elapsed": prog.elapsed,
            "pending_losses": {"sums": prog.sums, "n": prog.n_summed},
            "optimizers": structures,
        },
    )
    for old in state_dir.glob("state-*.safetensors"):
        if old.name != file_name:
            old.unlink(missing_ok=True)


def _save(task: _Task, out_dir: Path, fingerprint: str, prog: TrainingProgress) -> None:
    state_dir = out_dir / STATE_DIR
    step = prog.step
    file_name, structures = save_state_tensors(state_dir, task.modules, task.optimizers, step)
    save_checkpoint(
        out_dir,
        task.kind,
        task.checkpoint_modules(),
        task.model_config,
        task.cfg,
        extra={"step": step, "n_steps": task.cfg.n_steps, "complete": step >= task.cfg.n_steps, "data": fingerprint},
    )
    _write_log(out_dir, prog.log)
    record = {
        "kind": task.kind,
        "model": task.model_config.to_dict(),
        "training": task.cfg.to_dict(),
        "data": fingerprint,
    }
    commit_state(state_dir, file_name, structures, prog, record)


def _clear_state(state_dir: Path) -> None:
    (state_dir / _STATE_JSON).unlink(missing_ok=True)
    for old in state_dir.glob("state-*.safetensors"):
        old.unlink(missing_ok=True)


def _differences(task: _Task, saved: Mapping[str, Any], fingerprint: str) -> dict[str, tuple[Any, Any]]:
    """Fields where a saved run (``{"model", "training", "data"}``) differs from ``task``: ``{field: (saved, now)}``."""
    saved_model = type(task.model_config).from_dict(saved["model"])
    diffs = {k: (theirs, mine) for k, (mine, theirs) in task.model_config.diff(saved_model).items()}
    if saved.get("training") is None:
        diffs["training"] = (None, "a training run")
    else:
        saved_train = TrainConfig.from_dict(saved["training"])
        diffs.update(
            {
                k: (theirs, mine)
                for k, (mine, theirs) in task.cfg.diff(saved_train).items()
                if k not in _RESUMABLE_FIELDS or (k == "n_steps" and task.cfg.lr_schedule != "constant")
            }
        )
    if saved.get("data") != fingerprint:
        diffs["data (fingerprint of the training set)"] = (saved.get("data"), fingerprint)
    return diffs


def _check_out(task: _Task, out_dir: Path, fingerprint: str, *, resume: bool) -> None:
    """Refuse an ``out_dir`` that is a file, holds another kind of artefact, or holds a checkpoint of another
    run without resumable state (a run with state is checked by :func:`_restore`)."""
    found = check_output_folder(out_dir, accept={f"{task.kind} checkpoint", INCOMPLETE_CHECKPOINT}, option="--out")
    if (
        found is None
        or found.kind == INCOMPLETE_CHECKPOINT
        or not resume
        or (out_dir / STATE_DIR / _STATE_JSON).is_file()
    ):
        return
    config = out_dir / CONFIG_FILE
    try:
        saved = read_json(config)
        extra = saved.get("extra") or {}
        diffs = _differences(task, {**saved, "data": extra.get("data")}, fingerprint)
    except (OSError, ValueError, KeyError, AttributeError) as err:
        raise CheckpointError(f"Cannot read {config}: {err}. Use another --out folder.") from err
    if diffs:
        raise _mismatch(config, diffs)


def _restore(task: _Task, out_dir: Path, fingerprint: str) -> TrainingProgress:
    """Check ``out_dir/state`` against the task's configs and data, then load it into ``task``."""
    state_dir = out_dir / STATE_DIR
    try:
        meta = read_json(state_dir / _STATE_JSON)
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"Cannot read {state_dir / _STATE_JSON}: {err}. Delete {state_dir} to start over."
        ) from err
    if meta.get("kind") != task.kind:
        raise _mismatch(state_dir, {"kind": (meta.get("kind"), task.kind)})
    diffs = _differences(task, meta, fingerprint)
    if diffs:
        raise _mismatch(state_dir, diffs)
    step = int(meta["step"])
    if step > task.cfg.n_steps:
        raise StoreMismatchError(
            f"{state_dir} is at step {step}, past n_steps={task.cfg.n_steps}. Ask for at least {step} steps, "
            "or use another --out folder."
        )
    tensors = load_tensors(state_dir / str(meta["file"]), device=task.device)
    module_tensors = {k: v for k, v in tensors.items() if not k.startswith("optimizer.")}
    check_state(state_tensors(task.modules), module_tensors, where=str(state_dir / str(meta["file"])))
    load_modules(task.modules, module_tensors)
    for name, opt in task.optimizers.items():
        opt.load_state_dict(unflatten_optimizer_state(meta["optimizers"][name], tensors))
    log: list[dict[str, float]] = []
    log_path = out_dir / LOG_FILE
    if log_path.is_file():
        lines = log_path.read_text(encoding="utf-8").splitlines()
        log = [entry for entry in (json.loads(line) for line in lines if line.strip()) if entry["step"] <= step]
    pending = meta.get("pending_losses") or {}
    return TrainingProgress(
        step=step,
        elapsed=float(meta.get("elapsed", 0.0)),
        log=log,
        sums={str(k): float(v) for k, v in pending.get("sums", {}).items()},
        n_summed=int(pending.get("n", 0)),
    )


def _run(
    task: _Task, out_dir: str | Path, fingerprint: str, *, resume: bool, show_progress: bool | None
) -> TrainResult:
    """The loop shared by every trainer: resume, step, log, checkpoint, return."""
    t_start = time.perf_counter()
    out = Path(out_dir)
    _check_out(task, out, fingerprint, resume=resume)
    cfg = task.cfg
    state_dir = out / STATE_DIR
    prog = TrainingProgress()
    if (state_dir / _STATE_JSON).is_file():
        if resume:
            prog = _restore(task, out, fingerprint)
            logger.info("resuming %s training in %s from step %d", task.kind, out, prog.step)
        else:
            _clear_state(state_dir)
    start, elapsed0 = prog.step, prog.elapsed
    for module in task.modules.values():
        module.train()
    steps = range(start, cfg.n_steps)
    for step in progress(steps, desc=f"train {task.kind}", total=len(steps), show=show_progress):
        prog.add(task.step(step))
        prog.elapsed = elapsed0 + time.perf_counter() - t_start
        if prog.step % cfg.log_every == 0 or prog.step == cfg.n_steps:
            prog.flush_log(prog.elapsed)
        if (cfg.checkpoint_every and prog.step % cfg.checkpoint_every == 0) or prog.step == cfg.n_steps:
            _save(task, out, fingerprint, prog)
    if start == cfg.n_steps and not (out / CONFIG_FILE).is_file():
        _save(task, out, fingerprint, prog)  # n_steps == 0, or a checkpoint deleted by hand
    modules = task.checkpoint_modules()
    for module in task.modules.values():
        module.eval()
    return TrainResult(
        kind=task.kind,
        model=modules[MODEL_KINDS[task.kind].primary],
        modules=modules,
        checkpoint=out,
        log=prog.log,
        step=prog.step,
        resumed_from=start,
        seconds=time.perf_counter() - t_start,
    )


# ------------------------------------------------------------------------------------------- trainers


def _images(dataset: ImageData | Tensor, *, channels: int, size: int) -> Tensor:
    images = dataset if isinstance(dataset, Tensor) else getattr(dataset, "images", None)
    if images is None:
        raise DataError(
            f"dataset must be an image dataset (with .images) or a (N, C, H, W) tensor; got {type(dataset).__name__}."
        )
    x = check_images(images, "training images", channels=channels, size=size).to(torch.float32)
    if len(x) == 0:
        raise DataError("The training set is empty; pass at least one image.")
    return x


def train_gan(
    model_config: GANConfig,
    train_config: TrainConfig | None,
    dataset: ImageData | Tensor,
    out_dir: str | Path,
    *,
    resume: bool = True,
    show_progress: bool | None = None,
    device: str | torch.device = "cpu",
) -> TrainResult:
    """Train an image GAN (DCGAN, WGAN-GP, LSGAN or EBGAN; see ``genprov.models.gans``).

    Args:
        model_config: Architecture and objective.
        train_config: Optimiser and schedule (``None``: :func:`default_train_config`).
        dataset: An ``ImageDataset`` or a (N, C, H, W) tensor in [-1, 1] matching the config's size.
        out_dir: Checkpoint folder (also holds ``state/`` and ``train_log.jsonl``).
        resume: Continue from ``out_dir/state`` if present (else start over).
        show_progress: Progress bar (default: on for a terminal).
        device: Torch device.

    Returns:
        :class:`TrainResult` whose ``model`` is the :class:`~genprov.models.gans.Generator`.
    """
    cfg = train_config if train_config is not None else default_train_config(model_config)
    x = _images(dataset, channels=model_config.channels, size=model_config.image_size)
    with _seeded_init(cfg.seed):
        modules = build_gan(model_config)
    task = _GANTask("gan", model_config, cfg, x, torch.device(device), modules)
    return _run(task, out_dir, _fingerprint(x), resume=resume, show_progress=show_progress)


def train_ddpm(
    model_config: DDPMConfig,
    train_config: TrainConfig | None,
    dataset: ImageData | Tensor,
    out_dir: str | Path,
    *,
    resume: bool = True,
    show_progress: bool | None = None,
    device: str | torch.device = "cpu",
    init: DDPM | None = None,
) -> TrainResult:
    """Train a DDPM by noise prediction (Ho et al., 2020, Algorithm 1). Arguments as :func:`train_gan`.

    Args:
        init: Start from these weights instead of a fresh initialisation (fine-tuning, e.g. customizing a
            base model on a few exemplars); it must have ``model_config``'s architecture. Its weights are
            part of the run's fingerprint, so a resumed run never mixes two starting points.

    Returns:
        :class:`TrainResult` whose ``model`` is the :class:`~genprov.models.diffusion.DDPM`
        (EMA weights when ``ema_decay`` is set).
    """
    cfg = train_config if train_config is not None else default_train_config(model_config)
    x = _images(dataset, channels=model_config.channels, size=model_config.image_size)
    with _seeded_init(cfg.seed):
        model = DDPM(model_config)
    start = None
    if init is not None:
        if init.config != model_config:
            raise ConfigError(
                "init must be a DDPM of the same config as model_config; they differ in "
                f"{sorted(init.config.diff(model_config))}."
            )
        model.load_state_dict(init.state_dict())
        start = torch.cat([p.detach().flatten() for p in init.parameters()])
    task = _DDPMTask(model_config, cfg, x, torch.device(device), model)
    # the start weights join the fingerprint only when given, so runs from scratch keep their fingerprints
    fingerprint = _fingerprint(x) if start is None else _fingerprint(x, start)
    return _run(task, out_dir, fingerprint, resume=resume, show_progress=show_progress)


def train_classifier(
    model_config: ClassifierConfig,
    train_config: TrainConfig | None,
    dataset: LabelledImageData | tuple[Tensor, Tensor],
    out_dir: str | Path,
    *,
    resume: bool = True,
    show_progress: bool | None = None,
    device: str | torch.device = "cpu",
) -> TrainResult:
    """Train a :class:`~genprov.models.classifiers.CNNClassifier` with cross-entropy.

    Args:
        dataset: A labelled ``ImageDataset`` or ``(images, labels)``: (N, C, H, W) in [-1, 1] and (N,)
            int64 in [0, n_classes).
        Others: as :func:`train_gan`.

    Returns:
        :class:`TrainResult` whose ``model`` is the classifier; the log has ``loss`` and ``accuracy``.
    """
    cfg = train_config if train_config is not None else default_train_config(model_config)
    labels: Tensor | None
    if isinstance(dataset, tuple):
        images, labels = dataset
    elif isinstance(dataset, Tensor):
        images, labels = dataset, None
    else:
        images, labels = dataset.images, getattr(dataset, "labels", None)
    x = _images(images, channels=model_config.channels, size=model_config.image_size)
    if labels is None:
        raise DataError("train_classifier needs labels; this dataset has none. Use a labelled dataset.")
    y = torch.as_tensor(labels)
    if y.shape != (len(x),) or y.is_floating_point():
        raise DataError(f"labels must be an int64 tensor of shape ({len(x)},); got {y.dtype} {tuple(y.shape)}.")
    y = y.long()
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= model_config.n_classes):
        raise DataError(
            f"labels must lie in [0, n_classes={model_config.n_classes}); got values in "
            f"[{int(y.min())}, {int(y.max())}]. Set n_classes to the number of classes."
        )
    with _seeded_init(cfg.seed):
        modules = build_classifier(model_config)
    task = _ClassifierTask(model_config, cfg, x, y, torch.device(device), modules)
    return _run(task, out_dir, _fingerprint(x, y), resume=resume, show_progress=show_progress)


def train_tabular_gan(
    model_config: TabularGANConfig,
    train_config: TrainConfig | None,
    dataset: TabularData | Tensor,
    out_dir: str | Path,
    *,
    resume: bool = True,
    show_progress: bool | None = None,
    device: str | torch.device = "cpu",
) -> TrainResult:
    """Train a tabular MLP GAN (see ``genprov.models.tabular``).

    Args:
        dataset: A ``TabularDataset`` or an (N, D) tensor with D = ``model_config.n_features``, scaled to [-1, 1].
        Others: as :func:`train_gan`.

    Returns:
        :class:`TrainResult` whose ``model`` is the :class:`~genprov.models.tabular.TabularGenerator`.
    """
    cfg = train_config if train_config is not None else default_train_config(model_config)
    features = dataset if isinstance(dataset, Tensor) else getattr(dataset, "features", None)
    x = check_matrix(features, "training features", n_cols=model_config.n_features).to(torch.float32)
    if len(x) < 2:
        raise DataError(f"A tabular GAN needs at least 2 training rows; got {len(x)}.")
    with _seeded_init(cfg.seed):
        modules = build_tabular_gan(model_config)
    task = _GANTask("tabular-gan", model_config, cfg, x, torch.device(device), modules)
    return _run(task, out_dir, _fingerprint(x), resume=resume, show_progress=show_progress)
