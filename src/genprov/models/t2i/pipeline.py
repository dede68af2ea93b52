"""Text-to-image latent diffusion pipelines: diffusers' ``StableDiffusionPipeline`` built, saved, opened, sampled.

A pipeline is made of the real classes a Stable Diffusion folder holds: a diffusers ``AutoencoderKL`` (the
VAE), a ``UNet2DConditionModel`` with cross-attention to the text, a transformers ``CLIPTextModel`` with its
``CLIPTokenizer`` and a ``DDIMScheduler`` carrying Stable Diffusion's noise schedule (``scaled_linear``, betas
0.00085 to 0.012 over 1000 steps). :func:`build_pipeline` makes a fresh one from a :class:`T2IConfig` (small
by default: 32x32 images, 8x8x4 latents), :func:`save_pipeline` writes it with ``save_pretrained`` in diffusers'
folder layout (``model_index.json``, ``vae/``, ``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``;
safetensors only), and :func:`load_pipeline` opens any Stable Diffusion 1.x / 2.x folder, genprov's or a real
one, through ``StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)``: nothing is ever
downloaded, no safety checker or feature extractor is loaded, and pickled weights are refused.

:func:`tiny_pipeline` builds a pipeline of random tiny weights in a fraction of a second: the fixture of unit
tests of anything that takes a pipeline.

diffusers and transformers take seconds to import: they are imported where first needed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import torch
from torch import Tensor

from genprov.config import Config, is_positive_int, require
from genprov.exceptions import CheckpointError, ConfigError, MissingDependencyError
from genprov.models.diffusion import check_noise_schedule
from genprov.utils.artifacts import PIPELINE_KIND, check_output_folder, identify_artifact, is_pickle_file
from genprov.utils.io import read_json
from genprov.utils.progress import progress
from genprov.utils.seeding import derive_seed, torch_generator

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

#: diffusers' ``StableDiffusionPipeline`` in annotations (diffusers' lazy modules hide its attributes from mypy).
SDPipeline: TypeAlias = Any

__all__ = [
    "MODEL_INDEX",
    "PIPELINE_COMPONENTS",
    "MissingComponentError",
    "NotAPipelineError",
    "PickleWeightsError",
    "PipelineError",
    "SDPipeline",
    "T2IConfig",
    "build_components",
    "build_pipeline",
    "is_pipeline_folder",
    "load_pipeline",
    "quiet_hub",
    "require_t2i",
    "sample_pipeline",
    "save_pipeline",
    "tiny_pipeline",
    "tiny_pipeline_config",
]

#: The file that makes a folder a diffusers pipeline.
MODEL_INDEX = "model_index.json"
#: The components a Stable Diffusion 1.x / 2.x pipeline needs (its safety checker and feature extractor are never loaded).
PIPELINE_COMPONENTS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
_WEIGHTED = ("vae", "text_encoder", "unet")
_LOGGERS = ("transformers", "diffusers", "huggingface_hub")


class PipelineError(CheckpointError):
    """A folder cannot be opened as a text-to-image pipeline."""


class NotAPipelineError(PipelineError):
    """The path is not a diffusers pipeline folder (no ``model_index.json``)."""


class MissingComponentError(PipelineError):
    """A pipeline folder lacks a component (or its weights)."""


class PickleWeightsError(PipelineError):
    """A pipeline's weights are pickles (``.bin`` / ``.ckpt``); genprov reads safetensors only."""


def require_t2i(feature: str = "Text-to-image pipelines") -> None:
    """Raise :class:`MissingDependencyError` when the ``t2i`` extra (transformers, tokenizers) is not installed."""
    import importlib.util

    for package in ("transformers", "tokenizers"):
        if importlib.util.find_spec(package) is None:
            raise MissingDependencyError(package, "t2i", feature)


@contextlib.contextmanager
def quiet_hub() -> Iterator[None]:
    """Silence diffusers' / transformers' progress bars and their info and warning chatter (e.g. the notice that
    torchvision, which genprov never installs, is missing) for the duration of a load, save or sampling call."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = {name: logging.getLogger(name).level for name in _LOGGERS}
    bars = (diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled())
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if bars[0]:
            diffusers_logging.enable_progress_bar()
        if bars[1]:
            transformers_logging.enable_progress_bar()


def _pipeline_class() -> Any:
    require_t2i()
    with quiet_hub():
        from diffusers import StableDiffusionPipeline
    return StableDiffusionPipeline


# ------------------------------------------------------------------------------------------------ config


@dataclasses.dataclass(frozen=True, kw_only=True)
class T2IConfig(Config):
    """Architecture of a small Stable-Diffusion-style pipeline (the defaults: 32x32 images, 8x8x4 latents).

    Attributes:
        image_size: Side of the square images; divisible by the VAE's downsampling factor
            ``2 ** (len(vae_block_out_channels) - 1)``.
        channels: Image channels (1 or 3).
        latent_channels: Channels of the VAE's latents (4, as Stable Diffusion's).
        vae_block_out_channels: The VAE encoder's feature maps per resolution, finest first (3 entries: a
            downsampling factor of 4, so 32x32 images become 8x8 latents).
        vae_layers_per_block: ResNet blocks per VAE resolution.
        unet_block_out_channels: The U-Net's feature maps per latent resolution, finest first; every
            resolution has cross-attention to the text (``CrossAttnDownBlock2D`` / ``CrossAttnUpBlock2D``).
        unet_layers_per_block: ResNet blocks per U-Net resolution.
        attention_heads: Attention heads of the U-Net's transformer blocks (diffusers'
            ``attention_head_dim`` argument, which ``UNet2DConditionModel`` reads as the number of heads);
            divides every entry of ``unet_block_out_channels``.
        text_hidden_size: Width of the CLIP text encoder (the U-Net's ``cross_attention_dim``).
        text_layers: Transformer layers of the text encoder.
        text_heads: Attention heads of the text encoder; divides ``text_hidden_size``.
        max_length: Longest tokenized prompt, start and end tokens included (the text encoder's
            ``max_position_embeddings``; Stable Diffusion's is 77).
        vocab_size: Size of the text encoder's token table; the BPE vocabulary trained on the captions has at
            most this many entries (its 2 special tokens and 512 byte tokens included).
        num_train_timesteps: Diffusion steps T.
        beta_schedule: ``"scaled_linear"`` (Stable Diffusion's), ``"linear"`` or ``"squaredcos_cap_v2"``.
        beta_start: beta_1 (Stable Diffusion: 0.00085).
        beta_end: beta_T (Stable Diffusion: 0.012).
    """

    image_size: int = 32
    channels: int = 3
    latent_channels: int = 4
    vae_block_out_channels: tuple[int, ...] = (32, 64, 64)
    vae_layers_per_block: int = 1
    unet_block_out_channels: tuple[int, ...] = (64, 128)
    unet_layers_per_block: int = 1
    attention_heads: int = 8
    text_hidden_size: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_length: int = 16
    vocab_size: int = 1024
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012

    def validate(self) -> None:
        for name in ("vae_block_out_channels", "unet_block_out_channels"):
            blocks = getattr(self, name)
            require(
                isinstance(blocks, tuple) and len(blocks) >= 1 and all(is_positive_int(c) for c in blocks),
                name,
                "a non-empty tuple of positive integers, e.g. (32, 64)",
                blocks,
            )
        factor = 2 ** (len(self.vae_block_out_channels) - 1)
        require(
            is_positive_int(self.image_size) and self.image_size % factor == 0,
            "image_size",
            f"a positive multiple of the VAE's downsampling factor {factor}",
            self.image_size,
        )
        unet_factor = 2 ** (len(self.unet_block_out_channels) - 1)
        require(
            self.latent_size % unet_factor == 0 and self.latent_size // unet_factor >= 2,
            "unet_block_out_channels",
            f"at most {len(self.unet_block_out_channels) - 1} downsamplings of the {self.latent_size}x"
            f"{self.latent_size} latents (each side stays even and >= 2)",
            self.unet_block_out_channels,
        )
        require(self.channels in (1, 3), "channels", "1 (grey) or 3 (RGB)", self.channels)
        for name in ("latent_channels", "vae_layers_per_block", "unet_layers_per_block", "text_layers"):
            require(is_positive_int(getattr(self, name)), name, "a positive integer", getattr(self, name))
        require(
            is_positive_int(self.attention_heads)
            and all(c % self.attention_heads == 0 for c in self.unet_block_out_channels),
            "attention_heads",
            f"a positive divisor of every entry of unet_block_out_channels {self.unet_block_out_channels}",
            self.attention_heads,
        )
        require(
            is_positive_int(self.text_heads)
            and is_positive_int(self.text_hidden_size)
            and self.text_hidden_size % self.text_heads == 0,
            "text_heads",
            f"a positive divisor of text_hidden_size {self.text_hidden_size}",
            self.text_heads,
        )
        require(
            is_positive_int(self.max_length) and self.max_length >= 3, "max_length", "an integer >= 3", self.max_length
        )
        require(
            is_positive_int(self.vocab_size) and self.vocab_size >= 515,
            "vocab_size",
            "an integer >= 515 (2 special tokens, 512 byte tokens and at least one merge)",
            self.vocab_size,
        )
        check_noise_schedule(self.num_train_timesteps, self.beta_schedule, self.beta_start, self.beta_end)

    @property
    def latent_size(self) -> int:
        """Side of the latents: ``image_size`` over the VAE's downsampling factor."""
        return self.image_size // 2 ** (len(self.vae_block_out_channels) - 1)


def _groups(*channels: int) -> int:
    """The largest GroupNorm group count of 32, 16, 8, 4, 2, 1 dividing every entry of ``channels``."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if all(c % g == 0 for c in channels))


def tiny_pipeline_config(channels: int = 3) -> T2IConfig:
    """A tiny :class:`T2IConfig` for unit tests: 16x16 images, 4x4x4 latents, a U-Net of (32, 64) channels and a
    2-layer text encoder of width 32 (a pipeline of about 1.2M parameters, built in a fraction of a second)."""
    return T2IConfig(
        image_size=16,
        channels=channels,
        vae_block_out_channels=(8, 16, 16),
        unet_block_out_channels=(32, 64),
        attention_heads=4,
        text_hidden_size=32,
        text_layers=2,
        text_heads=2,
        max_length=12,
        vocab_size=600,
        num_train_timesteps=100,
    )


# ----------------------------------------------------------------------------------------------- building


def build_components(config: T2IConfig, *, seed: int = 0) -> dict[str, Any]:
    """Fresh ``vae``, ``unet``, ``text_encoder`` and ``scheduler`` for ``config`` (no tokenizer: see
    :func:`genprov.models.t2i.tokenizer.train_tokenizer`).

    The weights are drawn from ``derive_seed(seed, "t2i-init", component)`` inside ``torch.random.fork_rng``,
    so the same seed gives the same weights and the global RNG is untouched.
    """
    require_t2i()
    with quiet_hub():
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

    def seeded(component: str) -> contextlib.AbstractContextManager[Any]:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.random.fork_rng(devices=[]))
        torch.manual_seed(derive_seed(seed, "t2i-init", component))
        return stack

    n_vae = len(config.vae_block_out_channels)
    with seeded("vae"):
        vae: Any = AutoencoderKL(
            in_channels=config.channels,
            out_channels=config.channels,
            down_block_types=("DownEncoderBlock2D",) * n_vae,
            up_block_types=("UpDecoderBlock2D",) * n_vae,
            block_out_channels=config.vae_block_out_channels,
            layers_per_block=config.vae_layers_per_block,
            latent_channels=config.latent_channels,
            norm_num_groups=_groups(*config.vae_block_out_channels),
            sample_size=config.image_size,
        )
    n_unet = len(config.unet_block_out_channels)
    with seeded("unet"):
        unet: Any = UNet2DConditionModel(
            sample_size=config.latent_size,
            in_channels=config.latent_channels,
            out_channels=config.latent_channels,
            down_block_types=("CrossAttnDownBlock2D",) * n_unet,
            up_block_types=("CrossAttnUpBlock2D",) * n_unet,
            block_out_channels=config.unet_block_out_channels,
            layers_per_block=config.unet_layers_per_block,
            cross_attention_dim=config.text_hidden_size,
            attention_head_dim=config.attention_heads,  # diffusers reads this as the number of heads
            norm_num_groups=_groups(*config.unet_block_out_channels),
        )
    with seeded("text_encoder"):
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=config.vocab_size,
                hidden_size=config.text_hidden_size,
                intermediate_size=4 * config.text_hidden_size,
                num_hidden_layers=config.text_layers,
                num_attention_heads=config.text_heads,
                max_position_embeddings=config.max_length,
                bos_token_id=0,  # genprov.models.t2i.tokenizer puts <|startoftext|> at 0, <|endoftext|> at 1
                eos_token_id=1,
                pad_token_id=1,
            )
        )
    # Stable Diffusion's scheduler settings (its scheduler_config.json: steps_offset 1, no clipping)
    scheduler = DDIMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=config.beta_schedule,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {"vae": vae.eval(), "unet": unet.eval(), "text_encoder": text_encoder.eval(), "scheduler": scheduler}


def build_pipeline(components: dict[str, Any], tokenizer: CLIPTokenizer) -> SDPipeline:
    """Assemble ``StableDiffusionPipeline`` from :func:`build_components`' parts and a tokenizer (no safety
    checker, no feature extractor)."""
    too_small = len(tokenizer) > components["text_encoder"].config.vocab_size
    if too_small:
        raise ConfigError(
            f"The tokenizer has {len(tokenizer)} tokens but the text encoder only "
            f"{components['text_encoder'].config.vocab_size}; raise vocab_size."
        )
    pipe = _pipeline_class()(
        vae=components["vae"],
        text_encoder=components["text_encoder"],
        tokenizer=tokenizer,
        unet=components["unet"],
        scheduler=components["scheduler"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_pipeline(seed: int = 0, *, channels: int = 3, captions: Sequence[str] | None = None) -> SDPipeline:
    """A pipeline of random weights of :func:`tiny_pipeline_config` with a BPE tokenizer trained on ``captions``
    (default: a few digit and CIFAR-2 captions): the building block of unit tests that need a pipeline."""
    from genprov.models.t2i.tokenizer import train_tokenizer

    config = tiny_pipeline_config(channels)
    texts = captions or ("a photo of a horse", "a photo of an automobile", "a handwritten seven", "a handwritten one")
    tokenizer = train_tokenizer(texts, vocab_size=config.vocab_size, max_length=config.max_length)
    return build_pipeline(build_components(config, seed=seed), tokenizer)


# --------------------------------------------------------------------------------------------- saving


def is_pipeline_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder holding a diffusers ``model_index.json``."""
    return (Path(path) / MODEL_INDEX).is_file()


def _swap(new: Path, dest: Path) -> None:
    """Move ``new`` (a file or folder) to ``dest``, replacing what is there (a folder via a rename aside)."""
    if dest.is_dir():
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        os.replace(new, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, dest)


def save_pipeline(pipe: SDPipeline, folder: str | os.PathLike[str], *, accept: Collection[str] = ()) -> Path:
    """Write ``pipe`` with ``save_pretrained`` in diffusers' folder layout, safetensors only.

    The pipeline is written into a temporary folder inside ``folder`` first and its parts are then moved into
    place, ``model_index.json`` last: a write that fails midway leaves no half pipeline behind a
    ``model_index.json``. The tokenizer folder also gets ``vocab.json`` and ``merges.txt``, the files a
    Stable Diffusion folder's ``CLIPTokenizer`` is read from.

    Args:
        pipe: The pipeline.
        folder: Destination (created); a folder holding another kind of artefact is refused before anything
            is written. An existing pipeline is replaced.
        accept: Further artefact kinds the folder may hold (a training run's own ``state/``).

    Returns:
        The folder.
    """
    from genprov.models.t2i.tokenizer import save_tokenizer_files

    out = Path(folder)
    check_output_folder(out, accept={PIPELINE_KIND, *accept}, option="--out")
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pipeline-", suffix=".tmp", dir=out))
    try:
        with quiet_hub():
            pipe.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer_files(pipe.tokenizer, tmp / "tokenizer")
        for part in sorted(tmp.iterdir()):
            if part.name != MODEL_INDEX:
                _swap(part, out / part.name)
        os.replace(tmp / MODEL_INDEX, out / MODEL_INDEX)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# -------------------------------------------------------------------------------------------- loading


def _conversion(path: Path, pickles: Sequence[Path]) -> str:
    shown = ", ".join(str(p) for p in pickles[:3])
    return (
        f"{path} holds pickled weights ({shown}); genprov reads safetensors only and never unpickles. Convert the "
        'pipeline once, from a source you trust: python -c "from diffusers import StableDiffusionPipeline as P; '
        f"P.from_pretrained('{path}', use_safetensors=False).save_pretrained('{path}-safetensors', "
        'safe_serialization=True)" and pass the new folder.'
    )


def _check_pipeline_folder(path: Path) -> None:
    """The checks :func:`load_pipeline` makes before diffusers reads anything (one-line errors)."""
    if path.is_file():
        if is_pickle_file(path):
            raise PickleWeightsError(
                f"{path} is a single pickled checkpoint file; genprov reads diffusers pipeline folders of "
                "safetensors only and never unpickles. Convert it once, from a source you trust: python -c "
                '"from diffusers import StableDiffusionPipeline as P; '
                f"P.from_single_file('{path}').save_pretrained('{path.with_suffix('')}-diffusers', "
                'safe_serialization=True)" and pass the new folder.'
            )
        raise NotAPipelineError(
            f"{path} is a file, not a pipeline folder; pass a diffusers pipeline folder (with {MODEL_INDEX}, as "
            "written by 'genprov train t2i' or StableDiffusionPipeline.save_pretrained)."
        )
    if not path.is_dir():
        raise NotAPipelineError(
            f"No pipeline at {path}: the folder does not exist. Train one with 'genprov train t2i --out {path}'."
        )
    index = path / MODEL_INDEX
    if not index.is_file():
        found = identify_artifact(path)
        held = f" (it holds {found.describe()})" if found is not None else ""
        raise NotAPipelineError(
            f"{path} is not a diffusers pipeline folder: {index} is missing{held}; pass a folder written by "
            "'genprov train t2i' or StableDiffusionPipeline.save_pretrained."
        )
    try:
        data = read_json(index)
    except (OSError, ValueError) as err:
        raise NotAPipelineError(f"Cannot read {index}: {err}; the file is damaged, re-create the pipeline.") from err
    if not isinstance(data, dict):
        raise NotAPipelineError(f"{index} is not a diffusers model index (a JSON object); re-create the pipeline.")
    for name in PIPELINE_COMPONENTS:
        entry = data.get(name)
        if not isinstance(entry, list) or len(entry) != 2 or entry[1] is None:
            raise MissingComponentError(
                f"{index} lists no {name!r} component; a Stable Diffusion 1.x/2.x pipeline needs "
                f"{', '.join(PIPELINE_COMPONENTS)}."
            )
        if not (path / name).is_dir():
            raise MissingComponentError(
                f"{path} is missing its {name!r} component ({path / name} does not exist); copy the whole "
                "pipeline folder."
            )
    pickles: list[Path] = []
    for name in _WEIGHTED:
        files = [f for f in sorted((path / name).iterdir()) if f.is_file()]
        if any(f.name.endswith(".safetensors") for f in files):
            continue
        found_pickles = [f for f in files if is_pickle_file(f)]
        if not found_pickles:
            raise MissingComponentError(
                f"{path / name} holds no weights (no .safetensors file); copy the whole pipeline folder."
            )
        pickles.extend(found_pickles)
    if pickles:
        raise PickleWeightsError(_conversion(path, pickles))


def load_pipeline(folder: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> SDPipeline:
    """Open a Stable Diffusion 1.x / 2.x pipeline folder (genprov's or a real one) with
    ``StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)``.

    Nothing is downloaded, the safety checker and feature extractor are not loaded, and only safetensors
    weights are read. The modules are in eval mode; the progress bar is off.

    Raises:
        NotAPipelineError: ``folder`` does not exist, is a file, or holds no ``model_index.json``.
        MissingComponentError: A component (vae, text_encoder, tokenizer, unet, scheduler) or its weights are missing.
        PickleWeightsError: The weights are ``.bin`` / ``.ckpt`` pickles (the message gives the conversion command).
        PipelineError: diffusers cannot open it for another reason (named).
    """
    path = Path(folder)
    _check_pipeline_folder(path)
    cls = _pipeline_class()
    try:
        with quiet_hub():
            pipe = cls.from_pretrained(
                path,
                local_files_only=True,
                use_safetensors=True,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError) as err:
        reason = " ".join(str(err).split())[:300]
        raise PipelineError(
            f"Cannot open {path} as a Stable Diffusion pipeline: {reason}. Re-create it, or check that it is a "
            "Stable Diffusion 1.x/2.x folder."
        ) from err
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    for part in (pipe.vae, pipe.unet, pipe.text_encoder):
        part.eval()
    return pipe


def load_sized_pipeline(folder: str | os.PathLike[str], image_size: int, *, option: str) -> SDPipeline:
    """:func:`load_pipeline`, refusing a pipeline whose VAE takes another image size than ``image_size``.

    Args:
        folder: The pipeline folder.
        image_size: The side the caller's images have.
        option: The setting that named the folder (for the message, e.g. ``"base_pipeline"``).

    Raises:
        ConfigError: The pipeline's image size differs (the message gives the ``--set image_size`` to use).
    """
    pipe = load_pipeline(folder)
    size = int(pipe.vae.config.sample_size)
    if size != image_size:
        raise ConfigError(
            f"{option} {folder} makes {size}x{size} images but image_size={image_size}; set --set image_size={size}."
        )
    return pipe


# ------------------------------------------------------------------------------------------- sampling


@torch.no_grad()
def sample_pipeline(
    pipe: SDPipeline,
    prompts: Sequence[str],
    n_per_prompt: int,
    *,
    seed: int = 0,
    steps: int = 50,
    guidance_scale: float = 7.5,
    eta: float = 0.0,
    batch_size: int = 16,
    show_progress: bool | None = None,
) -> Tensor:
    """Generate ``n_per_prompt`` images for each prompt.

    Image ``i`` (prompt ``prompts[i // n_per_prompt]``) draws all its noise from
    ``torch_generator(seed, "t2i-sample", i)``: the images do not depend on ``batch_size`` (beyond float rounding).

    Args:
        pipe: A pipeline (:func:`load_pipeline`, :func:`build_pipeline`).
        prompts: The prompts; each must fit the tokenizer (checked first).
        n_per_prompt: Images per prompt.
        seed: Seed of the noise.
        steps: Denoising steps of the pipeline's scheduler.
        guidance_scale: Classifier-free guidance weight (1 = none; the pipeline's default 7.5).
        eta: DDIM noise (0 = deterministic DDIM, 1 = ancestral-like).
        batch_size: Images per pipeline call.
        show_progress: Progress bar (default: on for a terminal).

    Returns:
        (len(prompts) * n_per_prompt, C, H, W) float32 images in [-1, 1] on CPU, prompt by prompt.

    Raises:
        ConfigError: No prompt, a prompt too long for the tokenizer, a non-positive count or step number.
    """
    from genprov.models.t2i.tokenizer import check_prompts

    if not prompts:
        raise ConfigError("Give at least one prompt (--prompt TEXT).")
    check_prompts(pipe.tokenizer, prompts)
    for name, value in (("n_per_prompt", n_per_prompt), ("steps", steps), ("batch_size", batch_size)):
        if not is_positive_int(value):
            raise ConfigError(f"{name} must be a positive integer; got {value!r}.")
    device = pipe.unet.device
    order = [(prompts[i // n_per_prompt], i) for i in range(len(prompts) * n_per_prompt)]
    out: list[Tensor] = []
    starts = range(0, len(order), batch_size)
    with quiet_hub():
        for start in progress(starts, desc="sampling", total=len(starts), show=show_progress):
            chunk = order[start : start + batch_size]
            images = pipe(
                prompt=[p for p, _ in chunk],
                generator=[torch_generator(seed, "t2i-sample", i, device=device) for _, i in chunk],
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                eta=eta,
                output_type="pt",
            ).images
            out.append(images.detach().to("cpu", torch.float32) * 2 - 1)
    return torch.cat(out)
