"""``genprov train``: train a GAN, a DDPM or a classifier on a dataset into a checkpoint folder.

Runs are resumable: re-running the same command continues from ``OUT/state`` (or returns at once when
the run is finished). Flags only choose the config; the configs themselves live in ``genprov.models``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from genprov.cli.common import (
    DATA_ROOT_OPTION,
    JSON_OPTION,
    SEED_OPTION,
    config_option,
    console,
    emit,
    handle_errors,
    parse_sets,
)
from genprov.data import ImageDataset, load_dataset
from genprov.exceptions import ConfigError, DataError
from genprov.models.classifiers import ClassifierConfig
from genprov.models.diffusion import DDPM_PRESETS, DDPMConfig
from genprov.models.gans import GAN_OBJECTIVES, GANConfig
from genprov.models.t2i import T2ITrainConfig, captions_for, quick_configs, train_t2i
from genprov.models.train_config import COMMAND_STEPS, TrainConfig
from genprov.models.training import (
    LOG_FILE,
    TrainResult,
    default_train_config,
    train_classifier,
    train_ddpm,
    train_gan,
)

app = typer.Typer(
    help="Train generative models and classifiers into checkpoint folders (resumable).\n\n"
    "Example: genprov train gan --data digits --arch dcgan --steps 2000 --out runs/dcgan",
    no_args_is_help=True,
    add_completion=False,
)

DATA_OPTION = typer.Option(
    "digits", "--data", help="Dataset name (digits, mnist, fashion-mnist, cifar10, ...) or path (folder, .npz)."
)
RESIZE_OPTION = typer.Option(None, "--resize", min=1, help="Resize images to RESIZE x RESIZE pixels (e.g. 16 or 32).")
BATCH_OPTION = config_option(TrainConfig, "batch_size", "--batch-size", default=None, min=1)
LR_OPTION = config_option(
    TrainConfig, "lr", "--lr", default=None, help="Learning rate (default: the model's recommended one)."
)
OUT_OPTION = typer.Option(..., "--out", help="Checkpoint folder (created; holds config.json, model.safetensors).")
CHECKPOINT_EVERY_OPTION = config_option(TrainConfig, "checkpoint_every", "--checkpoint-every", default=None, min=0)
_STEPS_WHY = "sized for a usable model on small images on a CPU"


def _load(data: str, data_root: Path | None, resize: int | None) -> ImageDataset:
    dataset = load_dataset(data, split="train", data_root=data_root, resize=resize)
    return dataset


def _train_config(
    model_config: Any,
    dataset: ImageDataset,
    steps: int,
    batch_size: int | None,
    lr: float | None,
    seed: int,
    every: int | None,
) -> Any:
    overrides: dict[str, Any] = {"n_steps": steps, "seed": seed}
    if batch_size is not None:
        if batch_size > len(dataset.images):  # each batch would repeat the data (a huge one never ends)
            raise ConfigError(
                f"--batch-size {batch_size} is larger than the {len(dataset.images)} training images of "
                f"{dataset.name}; use at most {len(dataset.images)}."
            )
        overrides["batch_size"] = batch_size
    if lr is not None:
        overrides["lr"] = lr
    if every is not None:
        overrides["checkpoint_every"] = every
    return default_train_config(model_config, **overrides)


def _report(result: TrainResult, dataset: ImageDataset, as_json: bool) -> None:
    last = result.log[-1] if result.log else {}
    summary: dict[str, Any] = {
        "kind": result.kind,
        "checkpoint": str(result.checkpoint),
        "data": dataset.name,
        "image_size": dataset.image_size,
        "steps": result.step,
        "resumed_from": result.resumed_from,
        "seconds": round(result.seconds, 2),
        "log": str(result.checkpoint / LOG_FILE),
        **{k: v for k, v in last.items() if k not in ("step", "time")},
    }
    if not as_json and result.resumed_from == result.step and result.step > 0:
        console.print(f"{result.checkpoint} is already trained for {result.step} steps; reusing it.")
    emit(summary, as_json=as_json, title=f"trained {result.kind}")


@app.command("gan")
@handle_errors
def gan(
    data: str = DATA_OPTION,
    data_root: Path | None = DATA_ROOT_OPTION,
    resize: int | None = RESIZE_OPTION,
    arch: str = config_option(GANConfig, "arch", "--arch", help=f"GAN variant: {', '.join(GAN_OBJECTIVES.names())}."),
    width: int = config_option(GANConfig, "width", "--width", min=1),
    latent_dim: int = config_option(GANConfig, "latent_dim", "--latent-dim", min=1),
    steps: int = config_option(
        TrainConfig,
        "n_steps",
        "--steps",
        default=COMMAND_STEPS["gan"],
        why=_STEPS_WHY,
        help="Generator updates.",
        min=1,
    ),
    batch_size: int | None = BATCH_OPTION,
    lr: float | None = LR_OPTION,
    checkpoint_every: int | None = CHECKPOINT_EVERY_OPTION,
    seed: int = SEED_OPTION,
    out: Path = OUT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Train an image GAN (DCGAN, WGAN-GP, LSGAN or EBGAN).

    Example: genprov train gan --data digits --arch dcgan --steps 2000 --out runs/dcgan
    """
    dataset = _load(data, data_root, resize)
    config = GANConfig(
        arch=arch,
        image_size=dataset.image_size,
        channels=dataset.n_channels,
        latent_dim=latent_dim,
        width=width,
    )
    result = train_gan(
        config, _train_config(config, dataset, steps, batch_size, lr, seed, checkpoint_every), dataset, out
    )
    _report(result, dataset, as_json)


@app.command("ddpm")
@handle_errors
def ddpm(
    data: str = DATA_OPTION,
    data_root: Path | None = DATA_ROOT_OPTION,
    resize: int | None = RESIZE_OPTION,
    preset: str = typer.Option("small", "--preset", help=f"U-Net size: {', '.join(DDPM_PRESETS)}."),
    steps: int = config_option(
        TrainConfig, "n_steps", "--steps", default=COMMAND_STEPS["ddpm"], why=_STEPS_WHY, help="Training steps.", min=1
    ),
    batch_size: int | None = BATCH_OPTION,
    lr: float | None = LR_OPTION,
    checkpoint_every: int | None = CHECKPOINT_EVERY_OPTION,
    seed: int = SEED_OPTION,
    out: Path = OUT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Train a DDPM (diffusers UNet2DModel, 1000-step linear schedule).

    Example: genprov train ddpm --data digits --preset small --steps 3000 --out runs/ddpm
    """
    dataset = _load(data, data_root, resize)
    config = DDPMConfig.preset(preset, image_size=dataset.image_size, channels=dataset.n_channels)
    result = train_ddpm(
        config, _train_config(config, dataset, steps, batch_size, lr, seed, checkpoint_every), dataset, out
    )
    _report(result, dataset, as_json)


@app.command("classifier")
@handle_errors
def classifier(
    data: str = DATA_OPTION,
    data_root: Path | None = DATA_ROOT_OPTION,
    resize: int | None = RESIZE_OPTION,
    width: int = config_option(ClassifierConfig, "width", "--width", min=1),
    steps: int = config_option(TrainConfig, "n_steps", "--steps", help="Training steps.", min=1),
    batch_size: int | None = BATCH_OPTION,
    lr: float | None = LR_OPTION,
    checkpoint_every: int | None = CHECKPOINT_EVERY_OPTION,
    seed: int = SEED_OPTION,
    out: Path = OUT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Train a small CNN classifier (needs a labelled dataset).

    Example: genprov train classifier --data digits --steps 1000 --out runs/classifier
    """
    dataset = _load(data, data_root, resize)
    if dataset.labels is None or dataset.n_classes is None:
        raise DataError(f"{dataset.name} has no labels; a classifier needs a labelled dataset.")
    config = ClassifierConfig(
        image_size=dataset.image_size,
        channels=dataset.n_channels,
        n_classes=max(int(dataset.n_classes), 2),
        width=width,
    )
    result = train_classifier(
        config, _train_config(config, dataset, steps, batch_size, lr, seed, checkpoint_every), dataset, out
    )
    _report(result, dataset, as_json)


@app.command("t2i")
@handle_errors
def t2i(
    data: str = DATA_OPTION,
    data_root: Path | None = DATA_ROOT_OPTION,
    captions: str = typer.Option(
        "labels",
        "--captions",
        help="'labels' (captions from the class names: 'a photo of a horse', 'a handwritten seven') or a captions "
        "file: JSON (a list in the dataset's order, or {image: caption}) or CSV with image and caption columns.",
    ),
    quick: bool = typer.Option(
        False, "--quick", help="A CI-sized run of a minute or two (smaller networks, fewer steps)."
    ),
    vae: Path | None = typer.Option(None, "--vae", help="Reuse the VAE of this pipeline folder (no VAE training)."),
    sets: list[str] = typer.Option(
        [],
        "--set",
        help="KEY=VALUE for any architecture or training parameter, e.g. --set unet_steps=6000 or "
        "--set image_size=16 (JSON values).",
    ),
    checkpoint_every: int | None = config_option(
        T2ITrainConfig, "checkpoint_every", "--checkpoint-every", default=None, min=0
    ),
    seed: int = config_option(T2ITrainConfig, "seed", "--seed", min=0),
    out: Path = typer.Option(..., "--out", help="Pipeline folder (created; diffusers layout, also holds state/)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Train a text-to-image latent diffusion pipeline (VAE, U-Net, CLIP text encoder; StableDiffusionPipeline).

    Images are resized to 32x32 (8x8x4 latents) by default; re-running the command resumes it.

    Example: genprov train t2i --data cifar2 --captions labels --seed 0 --out runs/t2i
    """
    overrides = parse_sets(sets)
    if checkpoint_every is not None:
        overrides["checkpoint_every"] = checkpoint_every
    model_config, train_config = quick_configs(overrides, quick=quick, seed=seed)
    dataset = _load(data, data_root, model_config.image_size)
    model_config = model_config.replace(channels=dataset.n_channels)
    texts = captions_for(captions, dataset)
    result = train_t2i(model_config, train_config, dataset.images, texts, out, vae_from=vae)
    last = result.log[-1] if result.log else {}
    if not as_json and result.resumed_from == result.step and result.step > 0:
        console.print(f"{result.folder} is already trained for {result.step} steps; reusing it.")
    emit(
        {
            "kind": "t2i",
            "pipeline": str(result.folder),
            "data": dataset.name,
            "images": len(dataset),
            "distinct_captions": len(set(texts)),
            "image_size": model_config.image_size,
            "latent_size": model_config.latent_size,
            "steps": result.step,
            "resumed_from": result.resumed_from,
            "seconds": round(result.seconds, 2),
            "log": str(result.folder / LOG_FILE),
            **{k: v for k, v in last.items() if k not in ("step", "time")},
        },
        as_json=as_json,
        title="trained text-to-image pipeline",
    )
