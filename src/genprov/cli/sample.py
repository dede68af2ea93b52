"""``genprov sample``: draw samples from a trained checkpoint into ``samples.npz`` + ``grid.png``."""

from __future__ import annotations

from pathlib import Path

import typer

from genprov.cli.common import JSON_OPTION, SEED_OPTION, emit, handle_errors
from genprov.exceptions import ConfigError
from genprov.models.checkpoints import load_checkpoint
from genprov.models.sampling import sample as draw_samples
from genprov.models.sampling import save_samples
from genprov.models.t2i import is_pipeline_folder, load_pipeline, sample_pipeline
from genprov.utils.artifacts import check_output_folder


@handle_errors
def sample(
    checkpoint: Path = typer.Argument(
        ..., help="Checkpoint folder written by 'genprov train', or a text-to-image pipeline folder (with --prompt)."
    ),
    n: int = typer.Option(64, "--n", "-n", min=1, help="Number of samples (per prompt for a pipeline)."),
    prompt: list[str] = typer.Option(
        [], "--prompt", help="Pipelines only: a prompt (repeat for several; one grid row per prompt)."
    ),
    guidance_scale: float = typer.Option(
        7.5, "--guidance-scale", help="Pipelines only: classifier-free guidance weight (1 = none; 7.5 as diffusers)."
    ),
    seed: int = SEED_OPTION,
    out: Path = typer.Option(..., "--out", help="Folder for samples.npz and grid.png (created)."),
    ddim_steps: int = typer.Option(
        100, "--ddim-steps", min=0, help="DDPM only: DDIM steps; 0 runs ancestral sampling over all training steps."
    ),
    eta: float = typer.Option(
        1.0, "--eta", help="DDPM only: DDIM noise (1 = stochastic, cleaner for small models; 0 = deterministic)."
    ),
    batch_size: int = typer.Option(
        256, "--batch-size", min=1, help="Samples per forward pass (same samples either way)."
    ),
    scale: int = typer.Option(
        4, "--scale", min=1, help="Upscaling factor of grid.png (small images are easier to see)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Draw samples from a GAN or DDPM checkpoint, or a text-to-image pipeline with --prompt; sample i depends
    only on (seed, i).

    Example: genprov sample runs/dcgan --n 64 --seed 0 --out runs/dcgan-samples
    Example: genprov sample runs/t2i --prompt "a photo of a horse" --n 8 --out runs/t2i-horses
    """
    check_output_folder(out)
    if is_pipeline_folder(checkpoint):
        if not prompt:
            raise ConfigError(f"{checkpoint} is a text-to-image pipeline; say what to draw with --prompt TEXT.")
        if ddim_steps < 1:
            raise ConfigError("--ddim-steps must be at least 1 for a text-to-image pipeline (its denoising steps).")
        pipe = load_pipeline(checkpoint)
        x = sample_pipeline(
            pipe, prompt, n, seed=seed, steps=ddim_steps, guidance_scale=guidance_scale, eta=eta, batch_size=batch_size
        )
        paths = save_samples(x, out, nrow=n, scale=scale)
        emit(
            {
                "pipeline": str(checkpoint),
                "prompts": list(prompt),
                "n_per_prompt": n,
                "seed": seed,
                "shape": list(x.shape),
                **{name: str(path) for name, path in paths.items()},
            },
            as_json=as_json,
            title="samples",
        )
        return
    if prompt:
        raise ConfigError(
            f"--prompt needs a text-to-image pipeline folder; {checkpoint} is not one (no model_index.json)."
        )
    loaded = load_checkpoint(checkpoint)
    x = draw_samples(loaded, n, seed=seed, batch_size=batch_size, ddim_steps=ddim_steps or None, eta=eta)
    paths = save_samples(x, out, scale=scale)
    emit(
        {
            "checkpoint": str(checkpoint),
            "kind": loaded.kind,
            "n": n,
            "seed": seed,
            "shape": list(x.shape),
            **{name: str(path) for name, path in paths.items()},
        },
        as_json=as_json,
        title="samples",
    )
