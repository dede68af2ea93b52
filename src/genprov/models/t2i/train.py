"""Train a small text-to-image latent diffusion pipeline on captioned images, resumably and exactly reproducibly.

Two stages, as latent diffusion (Rombach et al., CVPR 2022) trains them:

1. the VAE (``vae_steps`` updates): reconstruction of the images through a sampled latent plus
   ``kl_weight`` times the KL divergence to N(0, I). The original weighs a summed L1 + LPIPS (+ GAN) loss against
   the summed KL at ``kl_weight: 0.000001`` (``configs/autoencoder/autoencoder_kl_32x32x4.yaml``); here the
   reconstruction term is the per-pixel squared error, and the KL is divided by the pixels per image so the two
   keep the original's ratio. No perceptual or adversarial term (no pretrained network can be loaded here).
   Skipped when a VAE is reused (``vae_from``).
2. the U-Net and the text encoder together (``unet_steps`` updates): noise prediction on the VAE's latents
   scaled by ``1 / std`` of the training latents (the original's ``scale_by_std``; Stable Diffusion's 0.18215),
   conditioned on the caption through cross-attention, the caption replaced by the empty prompt with
   probability ``caption_dropout`` so classifier-free guidance works. The original trains its text transformer
   jointly with the U-Net, as here (``train_text_encoder``); Stable Diffusion keeps a pretrained CLIP frozen.

The latents' posterior (mean and standard deviation) is computed once per run after the VAE stage; each U-Net
step samples from it. The tokenizer is a BPE vocabulary trained on the captions
(:mod:`genprov.models.t2i.tokenizer`).

``out_dir`` holds ``state/`` (``state.json`` + ``state-<step>.safetensors``: every module's weights and the
optimisers, written every ``checkpoint_every`` steps and at the end), ``train_log.jsonl`` (mean losses every
``log_every`` steps) and, at the end, the pipeline in diffusers' layout. Every random draw of step ``s`` comes
from ``torch_generator(seed, "t2i-step", s)`` and the batches from seeded permutations, so a run killed at any
point and started again continues exactly as if it had not stopped; a finished run returns at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genprov.config import Config, is_int, require
from genprov.exceptions import CheckpointError, ConfigError, DataError, StoreMismatchError
from genprov.models.checkpoints import (
    check_state,
    load_modules,
    load_tensors,
    state_tensors,
    unflatten_optimizer_state,
)
from genprov.models.t2i.pipeline import (
    SDPipeline,
    T2IConfig,
    build_components,
    build_pipeline,
    load_pipeline,
    save_pipeline,
)
from genprov.models.t2i.tokenizer import check_prompts, train_tokenizer
from genprov.models.training import (
    LOG_FILE,
    STATE_DIR,
    TrainingProgress,
    batch_indices,
    commit_state,
    save_state_tensors,
)
from genprov.utils.artifacts import INCOMPLETE_CHECKPOINT, PIPELINE_KIND, check_output_folder
from genprov.utils.io import atomic_write_text, read_json
from genprov.utils.progress import progress
from genprov.utils.seeding import derive_seed, torch_generator
from genprov.utils.validation import check_images

__all__ = ["T2I_QUICK", "T2ITrainConfig", "T2ITrainResult", "quick_configs", "train_t2i"]

logger = logging.getLogger(__name__)

_STATE_JSON = "state.json"
#: training-config fields that may change between a run and its resumption
_RESUMABLE = frozenset({"unet_steps", "checkpoint_every", "log_every"})
_ENCODE_CHUNK = 256


@dataclasses.dataclass(frozen=True, kw_only=True)
class T2ITrainConfig(Config):
    """How to train a text-to-image pipeline (the defaults: the full 32x32 run; on CIFAR-2 about 0.65 s per VAE
    step and 0.7 s per U-Net step on one CPU thread, so about 40 minutes on one thread, less on 2 cores).

    Attributes:
        vae_steps: VAE updates (stage 1; 0 with a reused VAE).
        unet_steps: U-Net (and text encoder) updates (stage 2).
        vae_batch_size: Images per VAE update.
        batch_size: Images per U-Net update.
        vae_lr: AdamW learning rate of the VAE.
        lr: AdamW learning rate of the U-Net and the text encoder.
        kl_weight: Weight of the VAE's KL term against the reconstruction (latent diffusion's 1e-6, see the
            module docstring).
        caption_dropout: Probability that a training caption is replaced by the empty prompt (classifier-free
            guidance needs the unconditional prediction; 0.1 as Stable Diffusion's fine-tuning scripts).
        train_text_encoder: Train the text encoder with the U-Net (latent diffusion's choice) or keep its random
            initial weights frozen.
        grad_clip: Clip the gradients' global norm to this before each update (``None``: no clipping).
        seed: Seed of the weights, the batches and every noise draw.
        checkpoint_every: Save the resumable state every this many steps (0: only at the end).
        log_every: Append the mean losses to ``train_log.jsonl`` every this many steps.
    """

    vae_steps: int = 1000
    unet_steps: int = 2500
    vae_batch_size: int = 32
    batch_size: int = 64
    vae_lr: float = 1e-3
    lr: float = 5e-4
    kl_weight: float = 1e-6
    caption_dropout: float = 0.1
    train_text_encoder: bool = True
    grad_clip: float | None = 1.0
    seed: int = 0
    checkpoint_every: int = 250
    log_every: int = 50

    def validate(self) -> None:
        for name in ("vae_steps", "checkpoint_every", "seed"):
            require(is_int(getattr(self, name), minimum=0), name, "a non-negative integer", getattr(self, name))
        for name in ("unet_steps", "vae_batch_size", "batch_size", "log_every"):
            require(is_int(getattr(self, name), minimum=1), name, "a positive integer", getattr(self, name))
        require(self.vae_lr > 0, "vae_lr", "a positive number", self.vae_lr)
        require(self.lr > 0, "lr", "a positive number", self.lr)
        require(self.kl_weight >= 0, "kl_weight", "a non-negative number", self.kl_weight)
        require(0 <= self.caption_dropout < 1, "caption_dropout", "a number in [0, 1)", self.caption_dropout)
        require(
            isinstance(self.train_text_encoder, bool), "train_text_encoder", "true or false", self.train_text_encoder
        )
        if self.grad_clip is not None:
            require(self.grad_clip > 0, "grad_clip", "a positive number or None", self.grad_clip)

    @property
    def n_steps(self) -> int:
        """Steps of both stages."""
        return self.vae_steps + self.unet_steps


#: ``--quick``: a CI-sized run of a minute or two on 2 cores (smaller VAE and U-Net, fewer steps). Keys of
#: :class:`T2IConfig` and :class:`T2ITrainConfig`; the full run is the configs' defaults.
T2I_QUICK: dict[str, Any] = {
    "vae_block_out_channels": (16, 32, 32),
    "unet_block_out_channels": (32, 64),
    "vae_steps": 150,
    "unet_steps": 200,
    "batch_size": 32,
    "checkpoint_every": 100,
    "log_every": 25,
}


def quick_configs(
    overrides: Mapping[str, Any], *, quick: bool = False, **fixed: Any
) -> tuple[T2IConfig, T2ITrainConfig]:
    """The model and training configs of a run: their defaults, then :data:`T2I_QUICK` if ``quick``, then
    ``overrides`` (``--set`` values), then ``fixed`` (what the data decides: ``image_size``, ``channels``);
    each key goes to the config that has it.

    Raises:
        ConfigError: A key of neither config (with a "did you mean").
    """
    from genprov.config import did_you_mean

    model_names, train_names = set(T2IConfig.field_names()), set(T2ITrainConfig.field_names())
    values = {**(T2I_QUICK if quick else {}), **overrides, **fixed}
    for key in values:
        if key not in model_names | train_names:
            raise ConfigError(
                f"No text-to-image parameter {key!r}.{did_you_mean(key, model_names | train_names)} Parameters: "
                f"{', '.join(sorted(model_names | train_names))}."
            )
    model = T2IConfig.from_dict({k: v for k, v in values.items() if k in model_names})
    training = T2ITrainConfig.from_dict({k: v for k, v in values.items() if k in train_names})
    return model, training


@dataclasses.dataclass
class T2ITrainResult:
    """What :func:`train_t2i` returns.

    Attributes:
        pipeline: The trained ``StableDiffusionPipeline`` (modules in eval mode).
        folder: The pipeline folder (``out_dir``).
        log: The training log entries (also in ``out_dir/train_log.jsonl``).
        step: Steps done (of both stages).
        resumed_from: Step the run started from (0: fresh; ``n_steps``: a finished run loaded).
        seconds: Wall time of this call.
    """

    pipeline: SDPipeline
    folder: Path
    log: list[dict[str, float]]
    step: int
    resumed_from: int
    seconds: float


def _fingerprint(images: Tensor, captions: Sequence[str], vae: nn.Module | None) -> str:
    h = hashlib.blake2b(digest_size=12)
    arr = np.ascontiguousarray(images.detach().cpu().numpy())
    h.update(f"{arr.dtype}{arr.shape}".encode())
    h.update(arr.data)
    h.update("\n".join(captions).encode())
    if vae is not None:  # a reused VAE is part of the run
        for value in vae.state_dict().values():
            h.update(np.ascontiguousarray(value.detach().cpu().numpy()).data)
    return h.hexdigest()


class _Run:
    """The modules, optimisers and step functions of one training run."""

    def __init__(
        self,
        model_config: T2IConfig,
        cfg: T2ITrainConfig,
        images: Tensor,
        captions: Sequence[str],
        components: dict[str, Any],
        tokenizer: Any,
        device: torch.device,
    ) -> None:
        self.config, self.cfg, self.device = model_config, cfg, device
        self.images = images.to(device)
        self.components, self.tokenizer = components, tokenizer
        # diffusers / transformers modules (Any: their lazy modules hide their call signatures from mypy)
        self.vae: Any = components["vae"].to(device)
        self.unet: Any = components["unet"].to(device)
        self.text_encoder: Any = components["text_encoder"].to(device)
        self.scheduler = components["scheduler"]
        self.modules = {"vae": self.vae, "unet": self.unet, "text_encoder": self.text_encoder}
        denoiser = [*self.unet.parameters(), *(self.text_encoder.parameters() if cfg.train_text_encoder else [])]
        self.text_encoder.requires_grad_(cfg.train_text_encoder)
        self.optimizers = {"unet": torch.optim.AdamW(denoiser, lr=cfg.lr)}
        if cfg.vae_steps:
            self.optimizers["vae"] = torch.optim.AdamW(self.vae.parameters(), lr=cfg.vae_lr)
        ids = self._ids(list(captions))
        self.caption_ids, self.empty_ids = ids, self._ids([""])
        self.posterior: tuple[Tensor, Tensor] | None = None

    def _ids(self, texts: list[str]) -> Tensor:
        out = self.tokenizer(texts, padding="max_length", max_length=self.config.max_length, return_tensors="pt")
        return out["input_ids"].to(self.device)

    def _update(self, name: str, loss: Tensor) -> float:
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip is not None:
            params = [p for group in opt.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        opt.step()
        return float(loss.detach())

    def vae_step(self, step: int) -> dict[str, float]:
        """VAE update ``step``: squared reconstruction error + ``kl_weight`` x KL per pixel."""
        gen = torch_generator(self.cfg.seed, "t2i-vae-step", step)
        idx = batch_indices(len(self.images), self.cfg.vae_batch_size, derive_seed(self.cfg.seed, "t2i-vae"), step)
        x = self.images[idx.to(self.device)]
        self.vae.train()
        posterior = self.vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(self.device)
        recon = F.mse_loss(self.vae.decode(z).sample, x)
        kl = posterior.kl().mean() / x[0].numel()
        loss = self._update("vae", recon + self.cfg.kl_weight * kl)
        return {"vae_loss": loss, "vae_mse": float(recon.detach())}

    @torch.no_grad()
    def encode_all(self, *, fresh_vae: bool) -> None:
        """Cache the latents' posterior of every image; set the VAE's ``scaling_factor`` to ``1 / std`` of the
        latent means when the VAE was trained here (a reused VAE keeps its own)."""
        self.vae.eval()
        means, stds = [], []
        for start in range(0, len(self.images), _ENCODE_CHUNK):
            dist = self.vae.encode(self.images[start : start + _ENCODE_CHUNK]).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
        mean, std = torch.cat(means), torch.cat(stds)
        if fresh_vae:
            self.vae.register_to_config(scaling_factor=float(1.0 / mean.float().std().clamp_min(1e-8)))
        self.posterior = (mean, std)

    def unet_step(self, step: int) -> dict[str, float]:
        """U-Net (+ text encoder) update ``step``: noise prediction on the scaled latents given the caption."""
        if self.posterior is None:  # pragma: no cover - _train encodes before the first U-Net step
            raise RuntimeError("encode_all must run before the U-Net steps")
        mean, std = self.posterior
        gen = torch_generator(self.cfg.seed, "t2i-step", step)
        idx = batch_indices(len(self.images), self.cfg.batch_size, derive_seed(self.cfg.seed, "t2i-unet"), step)
        idx = idx.to(self.device)
        shape = (len(idx), *mean.shape[1:])
        z0 = (mean[idx] + std[idx] * torch.randn(shape, generator=gen).to(self.device)) * float(
            self.vae.config.scaling_factor
        )
        noise = torch.randn(shape, generator=gen).to(self.device)
        t = torch.randint(0, self.config.num_train_timesteps, (len(idx),), generator=gen).to(self.device)
        drop = (torch.rand(len(idx), generator=gen) < self.cfg.caption_dropout).to(self.device)
        ids = torch.where(drop[:, None], self.empty_ids, self.caption_ids[idx])
        self.unet.train()
        self.text_encoder.train(self.cfg.train_text_encoder)
        with torch.set_grad_enabled(self.cfg.train_text_encoder):
            text = self.text_encoder(ids)[0]
        pred = self.unet(self.scheduler.add_noise(z0, noise, t), t, encoder_hidden_states=text).sample
        return {"loss": self._update("unet", F.mse_loss(pred, noise))}


# ---------------------------------------------------------------------------------------- run state


def _write_log(out: Path, log: list[dict[str, float]]) -> None:
    atomic_write_text(out / LOG_FILE, "".join(json.dumps(entry) + "\n" for entry in log))


def _save_state(run: _Run, out: Path, fingerprint: str, prog: TrainingProgress) -> None:
    state_dir = out / STATE_DIR
    file_name, structures = save_state_tensors(state_dir, run.modules, run.optimizers, prog.step)
    _write_log(out, prog.log)
    record = {
        "kind": "t2i",
        "model": run.config.to_dict(),
        "training": run.cfg.to_dict(),
        "data": fingerprint,
        "scaling_factor": float(run.vae.config.scaling_factor),
    }
    commit_state(state_dir, file_name, structures, prog, record)


def _mismatch(where: Path, diffs: Mapping[str, tuple[Any, Any]]) -> StoreMismatchError:
    shown = "; ".join(f"{k}: saved {old!r}, now {new!r}" for k, (old, new) in list(diffs.items())[:6])
    return StoreMismatchError(
        f"{where} holds a run with a different configuration ({shown}). Use another --out folder, or delete "
        f"{where} to start over."
    )


def _restore(run: _Run, out: Path, fingerprint: str) -> TrainingProgress:
    state_dir = out / STATE_DIR
    try:
        meta = read_json(state_dir / _STATE_JSON)
        saved_model = T2IConfig.from_dict(meta["model"])
        saved_training = T2ITrainConfig.from_dict(meta["training"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"Cannot read {state_dir / _STATE_JSON}: {err}. Delete {state_dir} to start over."
        ) from err
    diffs = {k: (theirs, mine) for k, (mine, theirs) in run.config.diff(saved_model).items()}
    diffs.update(
        {k: (theirs, mine) for k, (mine, theirs) in run.cfg.diff(saved_training).items() if k not in _RESUMABLE}
    )
    if meta.get("data") != fingerprint:
        diffs["data (images, captions and reused VAE)"] = (meta.get("data"), fingerprint)
    if diffs:
        raise _mismatch(state_dir, diffs)
    step = int(meta["step"])
    if step > run.cfg.n_steps:
        raise StoreMismatchError(
            f"{state_dir} is at step {step}, past the {run.cfg.n_steps} steps asked for; ask for at least "
            f"unet_steps={step - run.cfg.vae_steps}, or use another --out folder."
        )
    tensors = load_tensors(state_dir / str(meta["file"]), device=run.device)
    module_tensors = {k: v for k, v in tensors.items() if not k.startswith("optimizer.")}
    check_state(state_tensors(run.modules), module_tensors, where=str(state_dir / str(meta["file"])))
    load_modules(run.modules, module_tensors)
    for name, opt in run.optimizers.items():
        opt.load_state_dict(unflatten_optimizer_state(meta["optimizers"][name], tensors))
    run.vae.register_to_config(scaling_factor=float(meta["scaling_factor"]))
    log: list[dict[str, float]] = []
    if (out / LOG_FILE).is_file():
        lines = (out / LOG_FILE).read_text(encoding="utf-8").splitlines()
        log = [e for e in (json.loads(line) for line in lines if line.strip()) if e["step"] <= step]
    pending = meta.get("pending_losses") or {}
    return TrainingProgress(
        step=step,
        elapsed=float(meta.get("elapsed", 0.0)),
        log=log,
        sums={str(k): float(v) for k, v in pending.get("sums", {}).items()},
        n_summed=int(pending.get("n", 0)),
    )


def _check_out(out: Path, *, resume: bool) -> None:
    """Refuse an ``out_dir`` holding another artefact, or a pipeline this trainer did not write (no ``state/``)."""
    found = check_output_folder(out, accept={PIPELINE_KIND, INCOMPLETE_CHECKPOINT}, option="--out")
    if found is not None and found.kind == PIPELINE_KIND and not (resume and (out / STATE_DIR / _STATE_JSON).is_file()):
        raise ConfigError(
            f"{out} already holds {found.describe()} that this run cannot continue (no {STATE_DIR}/{_STATE_JSON}); "
            "choose another --out (genprov never overwrites another artefact; delete the folder yourself to "
            "replace it)."
        )


def _load_reused_vae(folder: str | os.PathLike[str], config: T2IConfig) -> Any:
    vae = load_pipeline(folder).vae
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    found = (vae.config.in_channels, vae.config.latent_channels, factor)
    wanted = (config.channels, config.latent_channels, 2 ** (len(config.vae_block_out_channels) - 1))
    if found != wanted:
        raise ConfigError(
            f"The VAE of {folder} takes {found[0]}-channel images to {found[1]}-channel latents {found[2]}x smaller, "
            f"but this run needs {wanted[0]} channels, {wanted[1]} latent channels and {wanted[2]}x; reuse a matching "
            "VAE or set the run's channels, latent_channels and vae_block_out_channels to match."
        )
    return vae


def train_t2i(
    model_config: T2IConfig,
    train_config: T2ITrainConfig,
    images: Tensor,
    captions: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    vae_from: str | os.PathLike[str] | None = None,
    resume: bool = True,
    show_progress: bool | None = None,
    device: str | torch.device = "cpu",
) -> T2ITrainResult:
    """Train a text-to-image pipeline (VAE, then U-Net and text encoder; see the module docstring).

    Args:
        model_config: The architecture (``image_size`` and ``channels`` must match ``images``).
        train_config: Steps, batch sizes, learning rates, seed, checkpointing.
        images: (N, C, H, W) float images in [-1, 1].
        captions: One caption per image (:mod:`genprov.models.t2i.captions`).
        out_dir: The pipeline folder; also holds ``state/`` and ``train_log.jsonl``.
        vae_from: A pipeline folder whose VAE to reuse (no VAE stage; ``vae_steps`` is taken as 0).
        resume: Continue from ``out_dir/state`` if present (else start over).
        show_progress: Progress bar (default: on for a terminal).
        device: Torch device.

    Returns:
        :class:`T2ITrainResult`.

    Raises:
        DataError: Images of another size or channel count than the config, captions of another count.
        PromptTooLongError: A caption longer than ``max_length`` tokens.
        ConfigError: ``out_dir`` holds another artefact or a pipeline not trained here.
        StoreMismatchError: ``out_dir/state`` holds a run of other configs, images or captions.
    """
    t_start = time.perf_counter()
    out = Path(out_dir)
    x = check_images(images, "training images", channels=model_config.channels, size=model_config.image_size)
    x = x.to(torch.float32)
    if len(x) == 0:
        raise DataError("The training set is empty; pass at least one image.")
    texts = [str(c) for c in captions]
    if len(texts) != len(x):
        raise DataError(f"{len(texts)} captions were given for {len(x)} images; give one caption per image.")
    _check_out(out, resume=resume)
    tokenizer = train_tokenizer(texts, vocab_size=model_config.vocab_size, max_length=model_config.max_length)
    check_prompts(tokenizer, sorted(set(texts)), option="caption")
    components = build_components(model_config, seed=train_config.seed)
    reused = _load_reused_vae(vae_from, model_config) if vae_from is not None else None
    cfg = train_config
    if reused is not None:
        components["vae"], cfg = reused, dataclasses.replace(train_config, vae_steps=0)
    fingerprint = _fingerprint(x, texts, reused)
    run = _Run(model_config, cfg, x, texts, components, tokenizer, torch.device(device))
    prog = TrainingProgress()
    state_dir = out / STATE_DIR
    if (state_dir / _STATE_JSON).is_file() and resume:
        prog = _restore(run, out, fingerprint)
        logger.info("resuming text-to-image training in %s from step %d", out, prog.step)
    start, elapsed0 = prog.step, prog.elapsed
    out.mkdir(parents=True, exist_ok=True)
    steps = range(start, cfg.n_steps)
    for step in progress(steps, desc="train t2i", total=len(steps), show=show_progress):
        if step < cfg.vae_steps:
            losses = run.vae_step(step)
        else:
            if run.posterior is None:
                run.encode_all(fresh_vae=reused is None and step == cfg.vae_steps)  # else: restored with the state
            losses = run.unet_step(step - cfg.vae_steps)
        prog.add(losses)
        prog.elapsed = elapsed0 + time.perf_counter() - t_start
        if prog.step % cfg.log_every == 0 or prog.step == cfg.n_steps or prog.step == cfg.vae_steps:
            prog.flush_log(prog.elapsed)
        if (cfg.checkpoint_every and prog.step % cfg.checkpoint_every == 0) or prog.step in (
            cfg.n_steps,
            cfg.vae_steps,
        ):
            _save_state(run, out, fingerprint, prog)
    for module in run.modules.values():
        module.eval()
    pipe = build_pipeline(components, tokenizer)
    if start < cfg.n_steps or not (out / "model_index.json").is_file():
        save_pipeline(pipe, out, accept={INCOMPLETE_CHECKPOINT})
    return T2ITrainResult(
        pipeline=pipe,
        folder=out,
        log=prog.log,
        step=prog.step,
        resumed_from=start,
        seconds=time.perf_counter() - t_start,
    )
