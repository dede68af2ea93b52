"""``genprov train lora``: a LoRA on a text-to-image pipeline's UNet, or a DreamBooth-style customization.

Registered on the ``train`` group by ``cli/main.py`` (``train_cmd.app.command("lora")(lora_cmd.lora)``).
Runs are resumable: re-running the same command continues from ``OUT/state``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from genprov.cli.common import (
    DATA_ROOT_OPTION,
    JSON_OPTION,
    config_option,
    console,
    emit,
    handle_errors,
    parse_sets,
)
from genprov.data import ImageDataset, load_dataset
from genprov.exceptions import ConfigError, DataError
from genprov.models.t2i import captions_for, load_pipeline
from genprov.models.t2i.lora import LoRAConfig, LoRATrainResult, train_dreambooth_lora, train_lora

__all__ = ["lora"]


def _exemplars(dataset: ImageDataset, label: int | None, n: int | None) -> ImageDataset:
    """The images of class ``label`` (all without it), the first ``n`` of them (all without it)."""
    indices = list(range(len(dataset)))
    if label is not None:
        if dataset.labels is None:
            raise DataError(f"{dataset.name} has no labels; drop --label or use a labelled dataset.")
        indices = [i for i in indices if int(dataset.labels[i]) == label]
        if not indices:
            raise DataError(f"{dataset.name} has no image of label {label}; choose another --label.")
    if n is not None:
        indices = indices[:n]
    return dataset.subset(indices) if len(indices) < len(dataset) else dataset


@handle_errors
def lora(
    pipeline: Path = typer.Option(..., "--pipeline", help="The base pipeline folder (diffusers layout)."),
    data: str = typer.Option(
        "digits",
        "--data",
        help="Dataset name (digits, mnist, cifar2, ...) or path (folder, .npz): the training images.",
    ),
    data_root: Path | None = DATA_ROOT_OPTION,
    captions: str = typer.Option(
        "labels",
        "--captions",
        help="'labels' (captions from the class names) or a captions file (JSON list or {image: caption}, or CSV); "
        "ignored with --instance-prompt.",
    ),
    label: int | None = typer.Option(None, "--label", help="Use only the images of this class index."),
    n: int | None = typer.Option(None, "--n", min=1, help="Use only the first N images (after --label)."),
    instance_prompt: str | None = typer.Option(
        None,
        "--instance-prompt",
        help="DreamBooth-style customization: the exemplars' prompt, containing --token "
        "(e.g. 'a photo of <v1> digit'), with prior preservation.",
    ),
    token: str = typer.Option(
        "<v1>",
        "--token",
        help="The identifier in --instance-prompt: a new token (added to the tokenizer and trained) or a word of "
        "the vocabulary (used as is).",
    ),
    class_prompt: str | None = typer.Option(
        None, "--class-prompt", help="Prior preservation's prompt (default: --instance-prompt without the token)."
    ),
    rank: int = config_option(LoRAConfig, "rank", "--rank", min=1),
    steps: int = config_option(LoRAConfig, "steps", "--steps", min=1),
    lr: float = config_option(LoRAConfig, "lr", "--lr"),
    batch_size: int = config_option(LoRAConfig, "batch_size", "--batch-size", min=1),
    prior_weight: float = config_option(LoRAConfig, "prior_loss_weight", "--prior-weight", min=0.0),
    checkpoint_every: int = config_option(LoRAConfig, "checkpoint_every", "--checkpoint-every", min=0),
    seed: int = config_option(LoRAConfig, "seed", "--seed", min=0),
    sets: list[str] = typer.Option(
        [], "--set", help="KEY=VALUE for any other LoRAConfig field, e.g. --set alpha=8 or --set n_class_images=50."
    ),
    out: Path = typer.Option(..., "--out", help="LoRA folder (created; pipe.load_lora_weights(OUT) reads it)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Fine-tune a LoRA on the UNet's attention projections of a text-to-image pipeline (peft; diffusers format).

    Example: genprov train lora --pipeline runs/t2i --data cifar2 --captions labels --steps 500 --out runs/lora

    DreamBooth-style: genprov train lora --pipeline runs/t2i --data digits --label 7 --n 3
    --instance-prompt "a photo of <v1> digit" --out runs/v1
    """
    values: dict[str, Any] = {
        "rank": rank,
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "prior_loss_weight": prior_weight,
        "checkpoint_every": checkpoint_every,
        "seed": seed,
        **parse_sets(sets),
    }
    config = LoRAConfig.from_dict(values)
    pipe: Any = load_pipeline(pipeline)  # diffusers registers its components at run time, unseen by mypy
    size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    dataset = _exemplars(load_dataset(data, split="train", data_root=data_root, resize=size), label, n)
    result: LoRATrainResult
    if instance_prompt is not None:
        result = train_dreambooth_lora(
            pipe, dataset.images, config, out, instance_prompt=instance_prompt, token=token, class_prompt=class_prompt
        )
    else:
        if class_prompt is not None:
            raise ConfigError("--class-prompt needs --instance-prompt (a DreamBooth-style customization).")
        result = train_lora(pipe, dataset.images, captions_for(captions, dataset), config, out)
    last = result.log[-1] if result.log else {}
    if not as_json and result.resumed_from == result.step:
        console.print(f"{result.folder} is already trained for {result.step} steps; reusing it.")
    emit(
        {
            "kind": "lora" if instance_prompt is None else "dreambooth-lora",
            "lora": str(result.folder),
            "pipeline": str(pipeline),
            "data": dataset.name,
            "images": len(dataset),
            "steps": result.step,
            "resumed_from": result.resumed_from,
            "seconds": round(result.seconds, 2),
            **{k: v for k, v in last.items() if k != "step"},
        },
        as_json=as_json,
        title="trained LoRA",
    )
