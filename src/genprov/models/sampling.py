"""Draw samples from any generative checkpoint or module, and save them.

``sample`` accepts a checkpoint folder, a :class:`~genprov.models.checkpoints.LoadedCheckpoint`, or the
module itself (image :class:`~genprov.models.gans.Generator`, :class:`~genprov.models.diffusion.DDPM`,
:class:`~genprov.models.tabular.TabularGenerator`). Sample ``i`` depends only on ``(seed, i)``: the same
seed gives the same samples whatever the batch size, and ``n=10`` is a prefix of ``n=100``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from genprov.data import save_image_grid
from genprov.exceptions import CheckpointError, ConfigError, DataError
from genprov.models.checkpoints import LoadedCheckpoint, load_checkpoint
from genprov.models.diffusion import DDPM, ddpm_sample
from genprov.models.gans import Generator
from genprov.models.tabular import TabularGenerator
from genprov.utils.artifacts import check_output_folder
from genprov.utils.io import atomic_save_npz
from genprov.utils.progress import progress

__all__ = ["GRID_FILE", "SAMPLES_FILE", "sample", "save_samples"]

SAMPLES_FILE = "samples.npz"
GRID_FILE = "grid.png"


def sample(
    source: str | Path | LoadedCheckpoint | nn.Module,
    n: int,
    *,
    seed: int = 0,
    batch_size: int = 256,
    ddim_steps: int | None = 100,
    eta: float = 1.0,
    device: str | torch.device = "cpu",
    show_progress: bool | None = None,
) -> Tensor:
    """Generate ``n`` samples.

    Args:
        source: Checkpoint folder, loaded checkpoint, or generator / DDPM module.
        n: Number of samples.
        seed: Seed (GAN latents from ``(seed, "latent", i)``, DDPM noise from ``(seed, "ddpm-sample", i)``).
        batch_size: Samples per forward pass (does not change the samples).
        ddim_steps: DDPM only: DDIM steps, or ``None`` for ancestral sampling over all T steps.
        eta: DDPM only: DDIM stochasticity (1 = ancestral on the sub-sequence, the default; 0 = deterministic).
        device: Device to load a checkpoint onto (modules passed in stay where they are).
        show_progress: Progress bar (default: on for a terminal).

    Returns:
        (n, C, H, W) images in [-1, 1] for GANs and DDPMs; (n, D) rows for tabular GANs (not clamped:
        exactly ``G(z)``, as final-layer inversion needs). Always on CPU.

    Raises:
        CheckpointError: The model produced NaN or infinite values (names the checkpoint).
    """
    if isinstance(source, (str, Path)):
        source = load_checkpoint(source, device=device)
    where = f"the checkpoint {source.path}" if isinstance(source, LoadedCheckpoint) else f"this {type(source).__name__}"
    model = source.model if isinstance(source, LoadedCheckpoint) else source
    x = _draw(model, n, seed=seed, batch_size=batch_size, ddim_steps=ddim_steps, eta=eta, show_progress=show_progress)
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise CheckpointError(
            f"Sampling {where} gave NaN or infinite values: its weights are broken (a diverged training run); "
            "retrain it, e.g. with a lower --lr."
        )
    return x


def _draw(
    model: nn.Module,
    n: int,
    *,
    seed: int,
    batch_size: int,
    ddim_steps: int | None,
    eta: float,
    show_progress: bool | None,
) -> Tensor:
    if not isinstance(n, int) or n < 0:
        raise ConfigError(f"n must be a non-negative integer; got {n!r}.")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ConfigError(f"batch_size must be a positive integer; got {batch_size!r}.")
    if isinstance(model, DDPM):
        return ddpm_sample(
            model, n, seed=seed, ddim_steps=ddim_steps, eta=eta, batch_size=batch_size, show_progress=show_progress
        ).cpu()
    if isinstance(model, (Generator, TabularGenerator)):
        return _sample_generator(model, n, seed=seed, batch_size=batch_size, show_progress=show_progress)
    raise ConfigError(
        f"Cannot sample from a {type(model).__name__}: sample() takes a GAN generator, a DDPM or a tabular "
        "generator (or a checkpoint of one); classifiers are not generative."
    )


@torch.no_grad()
def _sample_generator(
    model: Generator | TabularGenerator, n: int, *, seed: int, batch_size: int, show_progress: bool | None
) -> Tensor:
    was_training = model.training
    model.eval()
    out: list[Tensor] = []
    starts = range(0, n, batch_size)
    try:
        for start in progress(starts, desc="sampling", total=len(starts), show=show_progress):
            z = model.sample_latent(min(batch_size, n - start), seed=seed, start=start)
            out.append(model(z).cpu())
    finally:
        model.train(was_training)
    if out:
        return torch.cat(out)
    shape = (model.config.n_features,) if isinstance(model, TabularGenerator) else _image_shape(model)
    return torch.empty(0, *shape)


def _image_shape(model: Generator) -> tuple[int, int, int]:
    return (model.config.channels, model.config.image_size, model.config.image_size)


def save_samples(x: Tensor, out_dir: str | Path, *, nrow: int | None = None, scale: int = 1) -> dict[str, Path]:
    """Write ``samples.npz`` (key ``"samples"``, float32) and, for images, ``grid.png``; both atomically.

    Args:
        x: (n, C, H, W) images in [-1, 1] or (n, D) tabular rows.
        out_dir: Destination folder (created).
        nrow: Images per grid row (default: about square).
        scale: Integer upscaling of the grid (small images are easier to see).

    Returns:
        ``{"samples": path, "grid": path}`` (no ``"grid"`` for tabular rows).

    Raises:
        DataError: ``x`` is empty or holds NaN / infinite values (nothing is written).
        ConfigError: ``out_dir`` is a file or holds another kind of artefact.
    """
    if len(x) == 0:
        raise DataError("There are no samples to save (n = 0); ask for at least one sample.")
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"The samples hold NaN or infinite values; refusing to save them to {out_dir}.")
    out = Path(out_dir)
    check_output_folder(out, accept={"set of samples"}, option="--out")
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if x.ndim == 4:  # first: a grid too large to write is refused before anything is written
        paths["grid"] = save_image_grid(x.detach().cpu(), out / GRID_FILE, nrow=nrow, scale=scale)
    paths["samples"] = out / SAMPLES_FILE
    atomic_save_npz(paths["samples"], {"samples": x.detach().cpu().to(torch.float32).numpy()})
    return paths
