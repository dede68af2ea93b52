"""LoRA on a text-to-image pipeline's UNet through peft, and DreamBooth-style customization with a new token.

A LoRA adapter (Hu et al., 2021) adds a trainable low-rank update ``B A`` (scaled by ``alpha / rank``) to
each targeted projection of a frozen model. As the diffusers training scripts do
(``examples/text_to_image/train_text_to_image_lora.py``, ``examples/dreambooth/train_dreambooth_lora.py``),
:func:`add_lora` attaches a peft ``LoraConfig`` to the UNet's attention projections (``to_q``, ``to_k``,
``to_v``, ``to_out.0``; Gaussian initialisation of ``A``, ``B = 0``, so a fresh adapter changes nothing), and
:func:`save_lora` writes ``convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))`` with
``StableDiffusionPipeline.save_lora_weights``: the folder loads with diffusers' own
``pipe.load_lora_weights(folder)``, and with :func:`load_lora`, which first checks every tensor against the
pipeline (a LoRA for another base model is refused naming each tensor that does not fit) and reads
safetensors only.

A LoRA folder holds:

* ``pytorch_lora_weights.safetensors``: the adapter in diffusers' format, with the peft config in its
  metadata (so an ``alpha`` other than ``rank`` loads at the right scale) and genprov's SHA-256;
* ``learned_embeds.safetensors`` (customizations with a new token only): ``{token: embedding}``, the format
  of diffusers' textual inversion (``pipe.load_textual_inversion(folder, weight_name=...)``);
* ``lora.json``: the :class:`LoRAConfig`, the token, the prompts, the step reached and whether the run is
  complete;
* ``state/`` and ``train_log.jsonl`` while training (resumable, as ``genprov.models.training``).

Training (:func:`train_lora`) is the latent-diffusion noise-prediction loss of the diffusers scripts: VAE
latents ``latent_dist.sample() * scaling_factor`` (the posterior is encoded once and cached; each step draws
its sample from a seeded generator), uniform timesteps, ``DDPMScheduler.add_noise``, MSE against the noise
(or the velocity for ``v_prediction`` schedulers), conditioned on the caption's CLIP embeddings; only the
LoRA parameters (and a new token's embedding) train, with AdamW and gradient clipping at the D-TRAK
ArtBench script's defaults (``ArtBench5/train_text_to_image_lora.py``, ``parse_args``: lr 1e-4, betas
(0.9, 0.999), weight decay 1e-2, eps 1e-8, ``max_grad_norm`` 1.0, constant schedule). Every random draw of
step ``s`` comes from ``derive_seed(seed, ..., s)``, so a run killed after a saved state and started again
ends with the same weights as an uninterrupted one.

:func:`train_dreambooth_lora` customizes the pipeline on one to a few exemplars with an identifier in the
prompt (``"a photo of <v1> digit"``) and prior preservation (Ruiz et al., 2023): ``n_class_images`` images of
the class prompt (``"a photo of digit"``) are sampled from the base pipeline once, and every step adds
``prior_loss_weight`` times their loss (``train_dreambooth_lora.py``: ``loss + prior_loss_weight *
prior_loss``). The identifier is a new token added to the tokenizer and the text encoder, as Custom
Diffusion does (the similarity seed's customizations, Kumari et al. 2023, ``--modifier_token``), with its
embedding trained alongside the LoRA (``train_token``; diffusers' pivotal tuning); a token already in the
vocabulary (DreamBooth's rare-token identifier, e.g. ``"sks"`` in CLIP's vocabulary) is used as it is and
left untrained, as the original DreamBooth LoRA script does. A style customization gives one instance prompt per
exemplar (exemplars of different subjects sharing the style, each prompt naming its subject) and the prior samples
each exemplar's class prompt in turn.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import logging
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genprov.config import Config, is_int, require, require_ints
from genprov.exceptions import CheckpointError, ConfigError, DataError, MissingDependencyError, StoreMismatchError
from genprov.models.checkpoints import (
    flatten_optimizer_state,
    genprov_version,
    load_tensors,
    save_tensors,
    unflatten_optimizer_state,
)
from genprov.models.t2i.pipeline import quiet_hub, require_t2i
from genprov.models.t2i.tokenizer import check_prompts, token_ids
from genprov.models.train_config import LR_SCHEDULES, schedule_factor
from genprov.models.training import batch_indices
from genprov.utils.artifacts import INCOMPLETE_CHECKPOINT, check_output_folder, refuse_pickle
from genprov.utils.checksums import sign_safetensors
from genprov.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from genprov.utils.progress import progress
from genprov.utils.seeding import derive_seed, torch_generator
from genprov.utils.validation import check_images

if TYPE_CHECKING:
    from peft import LoraConfig

__all__ = [
    "LORA_ARTIFACT_KIND",
    "LORA_PARAMETER_GLOBS",
    "LORA_RECORD",
    "LORA_WEIGHTS",
    "TOKEN_WEIGHTS",
    "LoRAConfig",
    "LoRAInfo",
    "LoRATrainResult",
    "add_lora",
    "is_lora_parameter",
    "load_lora",
    "lora_parameter_names",
    "save_lora",
    "train_dreambooth_lora",
    "train_lora",
]

logger = logging.getLogger(__name__)

#: A diffusers ``StableDiffusionPipeline`` (typed loosely: diffusers registers its components at run time,
#: where a type checker cannot see them).
Pipeline = Any

#: The adapter file, named as diffusers names it (``load_lora_weights`` looks for this name).
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
#: A new token's embedding, ``{token: (hidden,) tensor}`` as diffusers' textual inversion saves it.
TOKEN_WEIGHTS = "learned_embeds.safetensors"
#: genprov's record of the adapter (config, token, prompts, step); the folder's marker file.
LORA_RECORD = "lora.json"
#: What ``identify_artifact`` should call a folder holding :data:`LORA_RECORD`.
LORA_ARTIFACT_KIND = "lora adapter"
#: Glob patterns of peft's LoRA parameter names (``...to_q.lora_A.default.weight``), usable as a parameter
#: filter (e.g. ``TRAKConfig(include=LORA_PARAMETER_GLOBS)``).
LORA_PARAMETER_GLOBS = ("*.lora_A.*", "*.lora_B.*")
_FORMAT = "genprov-lora"
_STATE_DIR = "state"
_STATE_JSON = "state.json"
_LOG_FILE = "train_log.jsonl"
_TOKEN_DELTA = "token_delta"
_OPTIMIZER = "optimizer"
#: Config fields that may change between a run and its resumption (the schedule is constant).
_RESUMABLE_FIELDS = frozenset({"steps", "checkpoint_every", "log_every"})
#: diffusers' key suffixes of a LoRA pair -> (which matrix, how many leading dims of the module's shape to check)
_SUFFIXES = {
    ".lora.down.weight": "down",
    ".lora.up.weight": "up",
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".lora_linear_layer.down.weight": "down",
    ".lora_linear_layer.up.weight": "up",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoRAConfig(Config):
    """A LoRA adapter on a pipeline's UNet and how it is trained.

    Attributes:
        rank: Rank r of each low-rank update (the diffusers scripts' ``--rank`` default: 4).
        alpha: LoRA scale numerator: the update is ``(alpha / rank) B A``; ``None``: equal to ``rank``
            (the diffusers scripts' ``lora_alpha=args.rank``).
        dropout: Dropout on the LoRA branch's input during training.
        target_modules: Module names (suffixes) that get an adapter: the UNet's attention projections.
        lr: AdamW learning rate (its peak under ``lr_schedule="cosine"``).
        lr_schedule: ``"constant"`` (the diffusers scripts' default) or ``"cosine"`` (linear warm-up over
            ``warmup_fraction`` of the steps, then a half cosine to 0: ``--lr_scheduler cosine``, which D-TRAK's
            ``ArtBench2/scripts/run_train.sh`` uses). Under ``cosine`` the step count cannot grow on resume.
        warmup_fraction: Fraction of ``steps`` of linear warm-up (``cosine`` only).
        weight_decay: AdamW weight decay.
        max_grad_norm: Gradients' global norm is clipped to this before each update (``None``: no clipping).
        steps: Optimiser updates.
        batch_size: Training images per update (DreamBooth: exemplars per update, plus as many class images).
        seed: Seed of the adapter's initialisation and of every draw of training (batches, latents, noise).
        prior_loss_weight: DreamBooth's prior-preservation weight (only :func:`train_dreambooth_lora`).
        n_class_images: Class images sampled from the base pipeline for prior preservation (DreamBooth only; with
            several class prompts, in all, the prompts taken in turn).
        class_sample_steps: Denoising steps used to sample the class images (DreamBooth only).
        train_token: Train a new identifier token's embedding with the LoRA (DreamBooth only; a token
            already in the vocabulary is never trained).
        checkpoint_every: Save the adapter and a resumable state every this many steps (0: only at the end).
        log_every: Steps per line of ``train_log.jsonl``.
    """

    rank: int = 4
    alpha: int | None = None
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    lr: float = 1e-4
    lr_schedule: str = "constant"
    warmup_fraction: float = 0.0
    weight_decay: float = 1e-2
    max_grad_norm: float | None = 1.0
    steps: int = 500
    batch_size: int = 4
    seed: int = 0
    prior_loss_weight: float = 1.0
    n_class_images: int = 100
    class_sample_steps: int = 50
    train_token: bool = True
    checkpoint_every: int = 100
    log_every: int = 10

    def validate(self) -> None:
        require_ints(
            self, ("rank", "steps", "batch_size", "n_class_images", "class_sample_steps", "log_every"), minimum=1
        )
        require_ints(self, ("checkpoint_every",), minimum=0)
        require(is_int(self.seed), "seed", "an integer", self.seed)
        require(
            self.alpha is None or is_int(self.alpha, minimum=1),
            "alpha",
            "a positive integer or null (= rank)",
            self.alpha,
        )
        require(0 <= self.dropout < 1, "dropout", "in [0, 1)", self.dropout)
        require(self.lr > 0, "lr", "a positive number", self.lr)
        require(self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"one of {LR_SCHEDULES}", self.lr_schedule)
        require(0 <= self.warmup_fraction < 1, "warmup_fraction", "a number in [0, 1)", self.warmup_fraction)
        require(self.weight_decay >= 0, "weight_decay", "a non-negative number", self.weight_decay)
        require(
            self.max_grad_norm is None or self.max_grad_norm > 0,
            "max_grad_norm",
            "a positive number or null",
            self.max_grad_norm,
        )
        require(self.prior_loss_weight >= 0, "prior_loss_weight", "a non-negative number", self.prior_loss_weight)
        require(
            bool(self.target_modules) and all(isinstance(m, str) and m for m in self.target_modules),
            "target_modules",
            "a non-empty list of module names (e.g. to_q, to_k, to_v, to_out.0)",
            self.target_modules,
        )

    @property
    def scale_alpha(self) -> int:
        """The ``lora_alpha`` given to peft (``alpha``, or ``rank`` when unset)."""
        return self.rank if self.alpha is None else self.alpha

    def peft_config(self) -> LoraConfig:
        """The peft ``LoraConfig`` of the diffusers scripts (Gaussian ``A``, zero ``B``)."""
        _require_peft()
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.scale_alpha,
            lora_dropout=self.dropout,
            init_lora_weights="gaussian",
            target_modules=list(self.target_modules),
        )


@dataclasses.dataclass(frozen=True)
class LoRAInfo:
    """What :func:`load_lora` read.

    Attributes:
        folder: The LoRA folder.
        config: Its :class:`LoRAConfig` (``None`` for a folder written by another program).
        token: The identifier token it added to the pipeline (``None``: none).
        record: The rest of ``lora.json`` (prompts, step, complete, ...; empty without it).
    """

    folder: Path
    config: LoRAConfig | None
    token: str | None
    record: dict[str, Any]


@dataclasses.dataclass
class LoRATrainResult:
    """What :func:`train_lora` and :func:`train_dreambooth_lora` return.

    Attributes:
        folder: The output folder (a LoRA folder, see the module docstring).
        pipeline: The pipeline with the trained adapter attached (and the token added), UNet in eval mode.
        log: The training log entries (also in ``train_log.jsonl``).
        step: Steps done.
        resumed_from: Step the run started from (0: fresh; ``steps``: a finished run reloaded).
        seconds: Wall time of this call.
    """

    folder: Path
    pipeline: Pipeline
    log: list[dict[str, float]]
    step: int
    resumed_from: int
    seconds: float


# ------------------------------------------------------------------------------------------ the adapter


def is_lora_parameter(name: str) -> bool:
    """Whether ``name`` is a peft LoRA parameter (``...lora_A.<adapter>.weight`` or ``...lora_B...``)."""
    return ".lora_A." in name or ".lora_B." in name


def lora_parameter_names(unet: nn.Module) -> list[str]:
    """Names of the UNet's LoRA parameters in ``named_parameters`` order (a parameter filter for training and
    gradient attribution; :data:`LORA_PARAMETER_GLOBS` selects the same names as glob patterns).

    Raises:
        ConfigError: The UNet holds no LoRA adapter.
    """
    names = [n for n, _ in unet.named_parameters() if is_lora_parameter(n)]
    if not names:
        raise ConfigError(
            "The UNet holds no LoRA adapter; attach one with add_lora(unet, LoRAConfig()) or load one with "
            "load_lora(pipeline, folder)."
        )
    return names


def _require_peft() -> None:
    """Raise :class:`MissingDependencyError` unless the ``t2i`` extra (peft, transformers, tokenizers) is installed."""
    require_t2i("LoRA adapters")
    if importlib.util.find_spec("peft") is None:
        raise MissingDependencyError("peft", "t2i", "LoRA adapters")


def _is_lora_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a layer peft wrapped with an adapter (it holds ``lora_A`` and its ``base_layer``)."""
    return hasattr(module, "lora_A") and hasattr(module, "get_base_layer")


def _has_lora(unet: nn.Module) -> bool:
    return any(_is_lora_layer(m) for m in unet.modules())


def add_lora(unet: nn.Module, config: LoRAConfig) -> list[str]:
    """Freeze ``unet`` and attach a fresh LoRA adapter to its ``config.target_modules`` (in place).

    The adapter's ``A`` matrices are drawn from ``derive_seed(config.seed, "lora-init")`` without touching
    the global RNG; ``B`` starts at zero, so the UNet computes what it computed before.

    Returns:
        The LoRA parameter names (the only parameters left trainable).

    Raises:
        ConfigError: The UNet already holds a LoRA adapter, or no module matches ``target_modules``.
    """
    _require_peft()
    if _has_lora(unet):
        raise ConfigError(
            "The UNet already holds a LoRA adapter; start from the base pipeline (load it again) to attach a new one."
        )
    unet.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.seed, "lora-init"))
        try:
            unet.add_adapter(config.peft_config())  # type: ignore[operator]
        except ValueError as err:  # peft: "Target modules {...} not found in the base model"
            raise ConfigError(
                f"target_modules={list(config.target_modules)} match no module of the UNet ({err}); use names of "
                "its attention projections, e.g. to_q, to_k, to_v, to_out.0."
            ) from None
    return lora_parameter_names(unet)


def _lora_tensors(unet: nn.Module) -> dict[str, Tensor]:
    """The adapter in diffusers' format, as the diffusers scripts save it."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_lora(
    pipeline: Pipeline,
    folder: str | Path,
    *,
    config: LoRAConfig,
    token: str | None = None,
    record: Mapping[str, Any] | None = None,
    token_embedding: Tensor | None = None,
) -> Path:
    """Write the UNet's adapter (and a new token's embedding) as a LoRA folder ``pipe.load_lora_weights`` reads.

    The weights go through ``StableDiffusionPipeline.save_lora_weights`` (safetensors, the peft config in
    the metadata), then are signed with their SHA-256 and moved into ``folder`` atomically.

    Args:
        pipeline: A pipeline whose UNet holds a LoRA adapter.
        folder: Destination (created).
        config: The adapter's config (recorded in ``lora.json``).
        token: A token added to the tokenizer whose embedding is saved in :data:`TOKEN_WEIGHTS`.
        record: Extra JSON entries for ``lora.json`` (prompts, step, ...).
        token_embedding: The token's embedding to save (default: its row in the text encoder).

    Returns:
        The folder.
    """
    out = Path(folder)
    check_output_folder(out, accept={LORA_ARTIFACT_KIND, INCOMPLETE_CHECKPOINT}, option="--out")
    out.mkdir(parents=True, exist_ok=True)
    unet = pipeline.unet
    # peft keeps target_modules as a set, which diffusers writes in iteration order (string hashing: it differs
    # between processes); sorted, the file's bytes depend on the adapter only
    metadata = {
        key: sorted(value) if isinstance(value, set) else value
        for key, value in unet.peft_config[next(iter(unet.peft_config))].to_dict().items()
    }
    with tempfile.TemporaryDirectory(prefix=".lora-", dir=out) as tmp, quiet_hub():
        type(pipeline).save_lora_weights(
            tmp,
            unet_lora_layers=_lora_tensors(unet),
            weight_name=LORA_WEIGHTS,
            safe_serialization=True,
            unet_lora_adapter_metadata=metadata,
        )
        atomic_write_bytes(out / LORA_WEIGHTS, sign_safetensors((Path(tmp) / LORA_WEIGHTS).read_bytes()))
    if token is not None:
        if token_embedding is None:
            weight = pipeline.text_encoder.get_input_embeddings().weight
            token_embedding = weight[pipeline.tokenizer.convert_tokens_to_ids(token)]
        save_tensors(out / TOKEN_WEIGHTS, {token: token_embedding.detach().clone()})
    atomic_write_json(
        out / LORA_RECORD,
        {
            "format": _FORMAT,
            "genprov_version": genprov_version(),
            "config": config.to_dict(),
            "token": token,
            **dict(record or {}),
        },
    )
    return out


def _base_module(root: nn.Module, path: str) -> nn.Module | None:
    try:
        module = root.get_submodule(path)
    except AttributeError:
        return None
    base: nn.Module = module.get_base_layer() if _is_lora_layer(module) else module  # type: ignore[operator]
    return base


def _fit_error(key: str, shape: tuple[int, ...], role: str, module: nn.Module | None) -> str | None:
    """Why the LoRA tensor ``key`` of ``shape`` (``down``: (r, in, ...), ``up``: (out, r, ...)) does not fit
    ``module`` (``None``: it fits)."""
    if module is None:
        return f"{key} (no such module in this pipeline)"
    size_in = getattr(module, "in_features", getattr(module, "in_channels", None))
    size_out = getattr(module, "out_features", getattr(module, "out_channels", None))
    if size_in is None or size_out is None or len(shape) < 2:
        return f"{key} (file {shape}, module {type(module).__name__} takes no LoRA)"
    if role == "down" and shape[1] != size_in:
        return f"{key} (file {shape}, model (rank, {size_in}))"
    if role == "up" and shape[0] != size_out:
        return f"{key} (file {shape}, model ({size_out}, rank))"
    return None


def _check_fit(pipeline: Pipeline, tensors: Mapping[str, Tensor], path: Path) -> None:
    """Refuse a LoRA whose tensors do not fit the pipeline, naming each one that does not."""
    roots = {"unet": pipeline.unet, "text_encoder": pipeline.text_encoder}
    problems = []
    for key, tensor in tensors.items():
        prefix, _, rest = key.partition(".")
        suffix = next((s for s in _SUFFIXES if rest.endswith(s)), None)
        if suffix is None:  # alphas and other bookkeeping entries
            continue
        root = roots.get(prefix)
        module = None if root is None else _base_module(root, rest[: -len(suffix)])
        problem = _fit_error(key, tuple(tensor.shape), _SUFFIXES[suffix], module)
        if problem is not None:
            problems.append(problem)
    if problems:
        raise CheckpointError(
            f"{path} is a LoRA for another base model: {len(problems)} tensor(s) do not fit this pipeline: "
            f"{'; '.join(problems)}. Load it into the pipeline it was trained on, or train a LoRA for this one "
            "with 'genprov train lora --pipeline DIR'."
        )


def _lora_file(source: Path) -> Path:
    """The adapter file of a LoRA folder (or the file itself); pickles are refused with the conversion command."""
    refuse_pickle(source, "a LoRA")
    if source.is_file():
        return source
    if not source.is_dir():
        raise CheckpointError(f"No LoRA at {source}: the folder does not exist. Train one with 'genprov train lora'.")
    file = source / LORA_WEIGHTS
    if not file.is_file():
        for other in sorted(source.glob("*.bin")):
            refuse_pickle(other, "a LoRA")
        raise CheckpointError(
            f"{source} holds no {LORA_WEIGHTS}; a LoRA folder is written by 'genprov train lora' or by diffusers' "
            "save_lora_weights (safetensors)."
        )
    return file


def load_lora(pipeline: Pipeline, folder: str | Path) -> LoRAInfo:
    """Check a LoRA against ``pipeline`` and load it with ``pipe.load_lora_weights`` (plus its token, if any).

    Args:
        pipeline: The base pipeline (without an adapter); changed in place.
        folder: A LoRA folder (or its ``.safetensors`` file).

    Returns:
        :class:`LoRAInfo`.

    Raises:
        CheckpointError: Missing, pickled (``.bin``; the message gives the conversion command), corrupted,
            or for another base model (each tensor that does not fit is named).
        ConfigError: The pipeline already holds a LoRA adapter.
    """
    _require_peft()
    source = Path(folder)
    file = _lora_file(source)
    root = file.parent
    tensors = load_tensors(file)
    _check_fit(pipeline, tensors, file)
    if _has_lora(pipeline.unet):
        raise ConfigError(
            f"The pipeline already holds a LoRA adapter; load {source} into the base pipeline (open it again)."
        )
    record_path = root / LORA_RECORD
    record: dict[str, Any] = read_json(record_path) if record_path.is_file() else {}
    token = record.get("token")
    if token is not None:
        embedding = load_tensors(root / TOKEN_WEIGHTS)
        hidden = pipeline.text_encoder.get_input_embeddings().weight.shape[1]
        if set(embedding) != {token} or tuple(embedding[token].shape) != (hidden,):
            shapes = {k: tuple(v.shape) for k, v in embedding.items()}
            raise CheckpointError(
                f"{root / TOKEN_WEIGHTS} does not fit this pipeline: expected {{{token!r}: ({hidden},)}}, found "
                f"{shapes}. Load it into the pipeline it was trained on."
            )
        if token in pipeline.tokenizer.get_vocab():
            raise ConfigError(f"The pipeline's tokenizer already has {token!r}; load {source} into the base pipeline.")
    with quiet_hub():
        if token is not None:
            pipeline.load_textual_inversion({token: embedding[token]}, token=token)
        pipeline.load_lora_weights(str(root), weight_name=file.name, use_safetensors=True)
    config = LoRAConfig.from_dict(record["config"]) if "config" in record else None
    rest = {k: v for k, v in record.items() if k not in ("config", "token")}
    return LoRAInfo(folder=root, config=config, token=token, record=rest)


# ------------------------------------------------------------------------------------------ training


@dataclasses.dataclass
class _Batchable:
    """Cached inputs of one image set: the VAE posterior's mean and std, and the text embeddings (or ids)."""

    mean: Tensor
    std: Tensor
    input_ids: Tensor
    embeddings: Tensor | None

    def latents(self, idx: Tensor, gen: torch.Generator) -> Tensor:
        """``latent_dist.sample()`` for examples ``idx`` (seeded), unscaled."""
        eps = torch.randn(self.mean[idx].shape, generator=gen).to(self.mean.device)
        return self.mean[idx] + self.std[idx] * eps


@torch.no_grad()
def _encode(pipeline: Pipeline, images: Tensor, captions: Sequence[str], *, cache_text: bool, what: str) -> _Batchable:
    """Encode ``images`` with the VAE once (posterior mean and std) and their captions."""
    ids = token_ids(pipeline.tokenizer, captions, option=what)
    device = pipeline.unet.device
    means, stds = [], []
    for chunk in images.split(16):
        dist = pipeline.vae.encode(chunk.to(device)).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    embeddings = pipeline.text_encoder(ids.to(device), return_dict=False)[0] if cache_text else None
    return _Batchable(mean=torch.cat(means), std=torch.cat(stds), input_ids=ids, embeddings=embeddings)


class _Trainer:
    """One LoRA training run: trainable tensors, optimiser, the step and its state."""

    def __init__(
        self,
        pipeline: Pipeline,
        config: LoRAConfig,
        instances: _Batchable,
        prior: _Batchable | None,
        token: str | None,
    ) -> None:
        self.pipe, self.cfg, self.instances, self.prior = pipeline, config, instances, prior
        self.unet = pipeline.unet
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        self.scaling = float(pipeline.vae.config.scaling_factor)
        names = add_lora(self.unet, config)
        named = dict(self.unet.named_parameters())
        self.params = {n: named[n] for n in names}
        self.token_id: int | None = None
        self.delta: nn.Parameter | None = None
        groups: list[dict[str, Any]] = [{"params": list(self.params.values())}]
        if token is not None and config.train_token:
            # the token's row is base + delta, delta the only trained text-encoder tensor (no weight decay);
            # a forward hook on the embedding adds it where the token occurs
            self.token_id = int(pipeline.tokenizer.convert_tokens_to_ids(token))
            hidden = pipeline.text_encoder.get_input_embeddings().weight.shape[1]
            self.delta = nn.Parameter(torch.zeros(hidden, device=self.unet.device))
            groups.append({"params": [self.delta], "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)

    @contextlib.contextmanager
    def token_hook(self) -> Iterator[None]:
        """Add the trained delta to the token's embedding while inside (no-op without a trained token)."""
        if self.delta is None or self.token_id is None:
            yield
            return
        delta, token_id = self.delta, self.token_id

        def hook(_module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
            here = torch.eq(inputs[0], token_id).unsqueeze(-1)
            return output + here.to(output.dtype) * delta

        handle = self.pipe.text_encoder.get_input_embeddings().register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def _loss(self, data: _Batchable, idx: Tensor, gen: torch.Generator) -> Tensor:
        device = self.unet.device
        latents = data.latents(idx, gen) * self.scaling
        noise = torch.randn(latents.shape, generator=gen).to(device)
        t = torch.randint(0, int(self.scheduler.config.num_train_timesteps), (len(idx),), generator=gen).to(device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        if data.embeddings is not None:
            context = data.embeddings[idx]
        else:
            with self.token_hook():
                context = self.pipe.text_encoder(data.input_ids[idx].to(device), return_dict=False)[0]
        pred = self.unet(noisy, t, context, return_dict=False)[0]
        if self.scheduler.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, t)
        else:
            target = noise
        return F.mse_loss(pred.float(), target.float())

    def step(self, step: int) -> dict[str, float]:
        """Training step ``step`` (0-based): one AdamW update; returns its losses."""
        cfg = self.cfg
        gen = torch_generator(cfg.seed, "lora-step", step)
        with torch.random.fork_rng(devices=[]):  # LoRA dropout draws from the global RNG: seed it per step
            torch.manual_seed(derive_seed(cfg.seed, "lora-dropout", step))
            idx = batch_indices(len(self.instances.mean), cfg.batch_size, cfg.seed, step)
            loss = self._loss(self.instances, idx, gen)
            losses = {"loss": float(loss.detach())}
            if self.prior is not None:
                prior_idx = batch_indices(len(self.prior.mean), cfg.batch_size, derive_seed(cfg.seed, "prior"), step)
                prior_loss = self._loss(self.prior, prior_idx, gen)
                losses["prior_loss"] = float(prior_loss.detach())
                loss = loss + cfg.prior_loss_weight * prior_loss
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if cfg.max_grad_norm is not None:
            trained = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(trained, cfg.max_grad_norm)
        for group in self.optimizer.param_groups:  # set before each update: resuming needs only the step
            group["lr"] = cfg.lr * schedule_factor(step, cfg.lr_schedule, cfg.steps, cfg.warmup_fraction)
        self.optimizer.step()
        losses["total"] = float(loss.detach())
        return losses

    def tensors(self) -> dict[str, Tensor]:
        """The trained tensors and the optimiser's (for ``state/``)."""
        out = {n: p.detach() for n, p in self.params.items()}
        if self.delta is not None:
            out[_TOKEN_DELTA] = self.delta.detach()
        return out

    def load(self, tensors: Mapping[str, Tensor], structure: Mapping[str, Any]) -> None:
        """Load a saved state (checked by the caller)."""
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(tensors[name])
            if self.delta is not None:
                self.delta.copy_(tensors[_TOKEN_DELTA])
        self.optimizer.load_state_dict(unflatten_optimizer_state(structure, tensors))

    def token_embedding(self) -> Tensor | None:
        """The trained token's embedding, base row + delta (``None`` without a trained token)."""
        if self.delta is None:
            return None
        return self.pipe.text_encoder.get_input_embeddings().weight[self.token_id].detach() + self.delta.detach()

    def bake_token(self) -> None:
        """Write base + delta into the token's embedding row (for saving and sampling)."""
        if self.delta is None:
            return
        with torch.no_grad():
            self.pipe.text_encoder.get_input_embeddings().weight[self.token_id] += self.delta
            self.delta.zero_()


def _signature(*parts: Tensor | str) -> str:
    """A fingerprint of tensors and strings (what a resumed run must share with the saved one)."""
    h = hashlib.blake2b(digest_size=12)
    for part in parts:
        if isinstance(part, str):
            h.update(b"s" + part.encode())
            continue
        data = part.detach().to("cpu", torch.float32).contiguous()
        h.update(f"t{tuple(data.shape)}".encode())
        h.update(data.numpy().tobytes())
    return h.hexdigest()


def _base_signature(pipeline: Pipeline) -> str:
    """Sums over the base UNet's and text encoder's weights (cheap on Stable Diffusion, changes with any weight)."""
    rows = [
        torch.stack([p.detach().double().sum(), p.detach().double().square().sum()]).float()
        for m in (pipeline.unet, pipeline.text_encoder)
        for p in m.parameters()
    ]
    return _signature(torch.stack(rows))


class _Run:
    """Where a run's files live and how they are checked, read and written."""

    def __init__(self, out: Path, config: LoRAConfig, fingerprint: str) -> None:
        self.out, self.config, self.fingerprint = out, config, fingerprint
        self.state_dir = out / _STATE_DIR

    def check(self, *, resume: bool) -> dict[str, Any] | None:
        """Refuse a folder holding another artefact or another run; the saved state to resume, or ``None``."""
        check_output_folder(self.out, accept={LORA_ARTIFACT_KIND, INCOMPLETE_CHECKPOINT}, option="--out")
        meta_path = self.state_dir / _STATE_JSON
        if not meta_path.is_file():
            if (self.out / LORA_RECORD).is_file():
                raise ConfigError(
                    f"{self.out} already holds a LoRA without its training state; choose another --out (genprov "
                    "never overwrites another artefact)."
                )
            return None
        try:
            meta = read_json(meta_path)
        except (OSError, ValueError) as err:
            raise CheckpointError(f"Cannot read {meta_path}: {err}. Delete {self.state_dir} to start over.") from err
        if meta.get("format") != _FORMAT:
            raise ConfigError(
                f"{self.out} holds the training state of another kind of model; choose another --out for the LoRA."
            )
        if not resume:
            return None
        saved = LoRAConfig.from_dict(meta["config"])
        resumable = _RESUMABLE_FIELDS - ({"steps"} if self.config.lr_schedule == "cosine" else set())
        diffs = {k: v for k, v in saved.diff(self.config).items() if k not in resumable}
        if meta.get("data") != self.fingerprint:
            diffs["data or base pipeline (fingerprint)"] = (meta.get("data"), self.fingerprint)
        if diffs:
            shown = "; ".join(f"{k}: saved {old!r}, now {new!r}" for k, (old, new) in list(diffs.items())[:8])
            raise StoreMismatchError(
                f"{self.state_dir} holds a LoRA run with a different configuration ({shown}). Use another --out "
                f"folder, or delete {self.out} to start over."
            )
        if int(meta["step"]) > self.config.steps:
            raise StoreMismatchError(
                f"{self.state_dir} is at step {meta['step']}, past steps={self.config.steps}. Ask for at least "
                f"{meta['step']} steps, or use another --out folder."
            )
        return dict(meta)

    def save(
        self, trainer: _Trainer, step: int, log: list[dict[str, float]], record: Mapping[str, Any], token: str | None
    ) -> None:
        """Write the adapter (at ``step``), then the state and the log."""
        structure, opt_tensors = flatten_optimizer_state(_OPTIMIZER, trainer.optimizer.state_dict())
        tensors = {**trainer.tensors(), **opt_tensors}
        save_lora(
            trainer.pipe,
            self.out,
            config=self.config,
            token=token,
            record={**record, "step": step, "complete": step >= self.config.steps},
            token_embedding=trainer.token_embedding(),
        )
        file_name = f"state-{step:09d}.safetensors"
        save_tensors(self.state_dir / file_name, tensors, metadata={"step": str(step)})
        atomic_write_text(self.out / _LOG_FILE, "".join(json.dumps(entry) + "\n" for entry in log))
        atomic_write_json(
            self.state_dir / _STATE_JSON,
            {
                "format": _FORMAT,
                "step": step,
                "file": file_name,
                "config": self.config.to_dict(),
                "data": self.fingerprint,
                "optimizer": structure,
            },
        )
        for old in self.state_dir.glob("state-*.safetensors"):
            if old.name != file_name:
                old.unlink(missing_ok=True)

    def restore(self, trainer: _Trainer, meta: Mapping[str, Any]) -> tuple[int, list[dict[str, float]]]:
        """Load a saved state into ``trainer``; the step and the log up to it."""
        path = self.state_dir / str(meta["file"])
        tensors = load_tensors(path, device=trainer.unet.device)
        missing = sorted(set(trainer.tensors()) - set(tensors))
        if missing:
            raise CheckpointError(f"{path} lacks {missing[:3]}; delete {self.state_dir} to start over.")
        trainer.load(tensors, meta["optimizer"])
        step = int(meta["step"])
        log_path = self.out / _LOG_FILE
        lines = log_path.read_text(encoding="utf-8").splitlines() if log_path.is_file() else []
        log = [entry for entry in (json.loads(line) for line in lines if line.strip()) if entry["step"] <= step]
        return step, log


def _check_images(images: Tensor, pipeline: Pipeline, what: str) -> Tensor:
    x = check_images(images, what, channels=int(pipeline.vae.config.in_channels)).to(torch.float32)
    if len(x) == 0:
        raise DataError(f"{what} are empty; pass at least one image.")
    factor = 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
    if x.shape[-1] % factor or x.shape[-2] % factor:
        raise DataError(
            f"{what} are {x.shape[-2]}x{x.shape[-1]}; this pipeline's VAE needs sides divisible by {factor}. "
            "Resize them (e.g. --resize)."
        )
    return x


def _train(
    pipeline: Pipeline,
    instances: tuple[Tensor, Sequence[str]],
    prior: _Prior | None,
    config: LoRAConfig,
    out: Path,
    *,
    token: str | None,
    record: Mapping[str, Any],
    resume: bool,
    show_progress: bool | None,
) -> LoRATrainResult:
    """The loop shared by both trainers: check, encode once, resume, step, save."""
    t_start = time.perf_counter()
    images, captions = instances
    parts: list[Tensor | str] = [images, *captions, _base_signature(pipeline)]
    if prior is not None:
        parts.append(prior.key)
    run = _Run(out, config, _signature(*parts))
    meta = run.check(resume=resume)
    trained_text = token is not None and config.train_token
    pipeline.unet.eval()  # dropout of the base model stays off; only the LoRA branch drops
    encoded = _encode(pipeline, images, captions, cache_text=not trained_text, what="caption")
    encoded_prior = None
    if prior is not None:
        prior_images = prior.images(pipeline, out / _STATE_DIR, show_progress)
        prompts = [prior.prompt_of(i) for i in range(len(prior_images))]
        encoded_prior = _encode(pipeline, prior_images, prompts, cache_text=not trained_text, what="class prompt")
    trainer = _Trainer(pipeline, config, encoded, encoded_prior, token)
    step, log = (0, []) if meta is None else run.restore(trainer, meta)
    start = step
    sums: dict[str, float] = {}
    n_summed = 0
    with torch.enable_grad():
        for step in progress(
            range(start, config.steps), desc="train lora", total=config.steps - start, show=show_progress
        ):
            for key, value in trainer.step(step).items():
                sums[key] = sums.get(key, 0.0) + value
            n_summed += 1
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                log.append({"step": done, **{k: v / n_summed for k, v in sums.items()}})
                sums, n_summed = {}, 0
            if (config.checkpoint_every and done % config.checkpoint_every == 0) or done == config.steps:
                run.save(trainer, done, log, record, token)
    if start == config.steps and not (out / LORA_WEIGHTS).is_file():
        run.save(trainer, start, log, record, token)
    trainer.bake_token()
    pipeline.unet.eval()
    final = config.steps if start < config.steps else start
    return LoRATrainResult(
        folder=out, pipeline=pipeline, log=log, step=final, resumed_from=start, seconds=time.perf_counter() - t_start
    )


def train_lora(
    pipeline: Pipeline,
    images: Tensor,
    captions: Sequence[str],
    config: LoRAConfig,
    out: str | Path,
    *,
    resume: bool = True,
    show_progress: bool | None = None,
) -> LoRATrainResult:
    """Fine-tune a LoRA adapter on the UNet of ``pipeline`` on captioned images (in place).

    Args:
        pipeline: The base pipeline (no adapter yet); its UNet gets the adapter, nothing else changes.
        images: (N, C, H, W) float in [-1, 1] at a size the VAE takes.
        captions: N captions, each within the tokenizer's length.
        config: The adapter and its training.
        out: The LoRA folder (resumable: running again continues from its state, or returns at once when done).
        resume: Continue from ``out/state`` (else start over).
        show_progress: Progress bar (default: on for a terminal).

    Returns:
        :class:`LoRATrainResult`.

    Raises:
        DataError: Images or captions unusable (named), or their numbers differ.
        StoreMismatchError: ``out`` holds a run with another config, data or base pipeline.
    """
    x = _check_images(images, pipeline, "training images")
    if len(captions) != len(x):
        raise DataError(f"{len(captions)} captions for {len(x)} images; give one caption per image.")
    return _train(
        pipeline,
        (x, list(captions)),
        None,
        config,
        Path(out),
        token=None,
        record={"captions": len(captions)},
        resume=resume,
        show_progress=show_progress,
    )


def _add_token(pipeline: Pipeline, token: str, seed: int) -> bool:
    """Add ``token`` to the tokenizer and the text encoder unless it is one token of the vocabulary already.

    The new row is drawn from a normal with the embedding matrix's std (diffusers'
    ``train_dreambooth_lora_sdxl_advanced.py``, ``TokenEmbeddingsHandler.initialize_new_tokens``), seeded.

    Returns:
        Whether the token is new.
    """
    tokenizer = pipeline.tokenizer
    if len(tokenizer.tokenize(token)) == 1:  # a word of the vocabulary ("sks" -> "sks</w>" in CLIP's)
        return False
    if not token.strip() or any(ch.isspace() for ch in token):
        raise ConfigError(f"token must be one word without spaces, e.g. '<v1>'; got {token!r}.")
    tokenizer.add_tokens([token])
    encoder = pipeline.text_encoder
    encoder.resize_token_embeddings(len(tokenizer))
    weight = encoder.get_input_embeddings().weight
    with torch.no_grad():
        std = float(weight[:-1].std())
        row = torch.randn(weight.shape[1], generator=torch_generator(seed, "token", token)) * std
        weight[tokenizer.convert_tokens_to_ids(token)] = row.to(weight)
    return True


@dataclasses.dataclass(frozen=True)
class _Prior:
    """Prior preservation's class images: ``n`` samples of the class prompts from the base pipeline (seeded).

    Attributes:
        prompts: The class prompts, taken in turn (image ``i`` is a sample of ``prompts[i % len(prompts)]``).
        n: How many images.
        sample_steps: Denoising steps per sample.
        size: (H, W) of the images.
        seed: Seed of the samples.
    """

    prompts: tuple[str, ...]
    n: int
    sample_steps: int
    size: tuple[int, int]
    seed: int

    @property
    def key(self) -> str:
        """What identifies the images (part of the run's fingerprint, and of their cache file's name)."""
        return _signature(*self.prompts, str(self.n), str(self.sample_steps), str(self.size), str(self.seed))

    def prompt_of(self, i: int) -> str:
        """The class prompt of image ``i``."""
        return self.prompts[i % len(self.prompts)]

    def images(self, pipeline: Pipeline, cache: Path, show_progress: bool | None) -> Tensor:
        """The class images in [-1, 1], sampled once and cached in ``cache`` (the diffusers script's
        ``class_data_dir``); call it before the adapter is attached (they come from the base pipeline)."""
        path = cache / f"class-images-{self.key}.safetensors"
        if path.is_file():
            return load_tensors(path)["images"]
        batches = []
        for start in progress(range(0, self.n, 4), desc="class images", show=show_progress):
            n = min(4, self.n - start)
            result = pipeline(
                [self.prompt_of(start + k) for k in range(n)],
                height=self.size[0],
                width=self.size[1],
                num_inference_steps=self.sample_steps,
                generator=torch_generator(self.seed, "class-images", start),
                output_type="pt",
            )
            batches.append(result.images.to("cpu", torch.float32) * 2 - 1)
        images = torch.cat(batches).clamp(-1, 1)
        save_tensors(path, {"images": images})
        return images


def _prompt_list(prompts: str | Sequence[str], n: int, option: str) -> list[str]:
    """``prompts`` as one prompt per exemplar: a string for all ``n``, or a sequence of exactly ``n``."""
    if isinstance(prompts, str):
        return [prompts] * n
    out = list(prompts)
    if len(out) != n or not all(isinstance(p, str) for p in out):
        raise ConfigError(f"{option} must be one prompt, or one prompt per exemplar ({n}); got {len(out)} prompts.")
    return out


def train_dreambooth_lora(
    pipeline: Pipeline,
    images: Tensor,
    config: LoRAConfig,
    out: str | Path,
    *,
    instance_prompt: str | Sequence[str],
    token: str,
    class_prompt: str | Sequence[str] | None = None,
    resume: bool = True,
    show_progress: bool | None = None,
) -> LoRATrainResult:
    """DreamBooth-style LoRA customization on one to a few exemplars, with prior preservation.

    An object is one prompt for every exemplar (``"a photo of <v1> digit"``); a style shared by exemplars of
    different subjects takes one prompt per exemplar, each naming its subject (``"a handwritten seven in <v1> style"``,
    ``"a handwritten two in <v1> style"``), and its class prompts (given, e.g. ``"a handwritten seven"``, or each
    instance prompt without the token) are one per exemplar too: the prior's ``n_class_images`` images are samples
    of the distinct class prompts taken in turn.

    Args:
        pipeline: The base pipeline (changed in place: adapter, and the token if new).
        images: (N, C, H, W) exemplars in [-1, 1], N >= 1.
        config: The adapter and its training (``prior_loss_weight``, ``n_class_images``,
            ``class_sample_steps``, ``train_token``).
        out: The LoRA folder (resumable; the class images are cached in its ``state/``).
        instance_prompt: The exemplars' prompt, containing ``token`` (``"a photo of <v1> digit"``), or one such
            prompt per exemplar.
        token: The identifier: a new token (added and, with ``train_token``, trained) or a token of the
            vocabulary (used as is).
        class_prompt: The prior's prompt, or one per exemplar (default: each instance prompt without the token);
            ``prior_loss_weight=0`` turns prior preservation off.
        resume: Continue from ``out/state``.
        show_progress: Progress bar.

    Returns:
        :class:`LoRATrainResult`; ``pipeline.load_lora_weights`` plus ``load_textual_inversion`` (or
        :func:`load_lora`) on the folder reproduce the customized pipeline.

    Raises:
        ConfigError: ``token`` missing from an instance prompt or not one word; a prompt list whose length is not
            the number of exemplars.
    """
    x = _check_images(images, pipeline, "exemplars")
    instances = _prompt_list(instance_prompt, len(x), "instance_prompt")
    for prompt in dict.fromkeys(instances):
        if token not in prompt.split():
            raise ConfigError(
                f"instance_prompt {prompt!r} must contain the token {token!r} as a word, e.g. 'a photo of {token} digit'."
            )
    if class_prompt is None:
        classes = [" ".join(w for w in p.split() if w != token) for p in instances]
    else:
        classes = _prompt_list(class_prompt, len(x), "class_prompt")
    prior_prompts = tuple(dict.fromkeys(classes))  # distinct, in exemplar order
    prior = None
    if config.prior_loss_weight > 0:
        check_prompts(pipeline.tokenizer, prior_prompts, option="class prompt")
        size = (int(x.shape[-2]), int(x.shape[-1]))
        prior = _Prior(prior_prompts, config.n_class_images, config.class_sample_steps, size, config.seed)
    new = _add_token(pipeline, token, config.seed)

    def recorded(prompts: Sequence[str]) -> str | list[str]:
        return prompts[0] if len(set(prompts)) == 1 else list(prompts)

    record = {"instance_prompt": recorded(instances), "class_prompt": recorded(classes), "exemplars": len(x)}
    return _train(
        pipeline,
        (x, instances),
        prior,
        config,
        Path(out),
        token=token if new else None,
        record=record,
        resume=resume,
        show_progress=show_progress,
    )
