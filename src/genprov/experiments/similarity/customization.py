"""Customized models with a known answer: the test set of feature-similarity attribution.

Wang et al. (ICCV 2023, "Evaluating data attribution for text-to-image models") build attribution ground
truth by *customization*: fine-tune a pretrained model on one exemplar (object case) or a few exemplars
sharing a style; the fine-tuned model's samples are then influenced by those exemplars by construction.
This module (the benchmark-building side of ``genprov reproduce similarity``) is our small-scale version on a
DDPM:

1. a base DDPM is trained on a *pool* of training images;
2. each customization takes exemplars that are not in the pool (held-out images; style cases apply a
   shared stroke or geometry transform, :data:`STYLES`, to a few images of different classes), and
   fine-tunes a copy of the base model on them with *prior preservation* (every batch is half
   exemplars, half samples of the base model, as DreamBooth-style customization does);
3. each customized model draws ``n_samples`` images (the queries);
4. everything lands under ``out/customizations/`` as PNG files plus ``manifest.json`` (one entry per
   customized model: exemplar and sample paths, class, style, seen/unseen split). Building is resumable:
   finished entries are skipped, and the manifest is rewritten atomically after each one.

Customization must be strong enough to matter and must not copy: :func:`influence_strength` reports how
often an exemplar is its samples' pixel nearest neighbour among pool + exemplars, and how close the
samples come to the exemplars compared with how close held-out images come to the pool.

This module builds the benchmark; reading it (:class:`Customization`, :func:`load_customizations`) and the
tuning protocol that uses it live in :mod:`genprov.eval.customization`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from genprov.config import Config, is_int, require, require_ints
from genprov.data import save_images
from genprov.eval.customization import DEFAULT_SEEN_CLASSES, MANIFEST, Customization
from genprov.exceptions import DataError
from genprov.models.diffusion import DDPM, ddpm_sample
from genprov.models.training import default_train_config, train_ddpm
from genprov.utils.io import atomic_write_json, read_json
from genprov.utils.progress import progress
from genprov.utils.seeding import derive_seed, numpy_rng

__all__ = [
    "STYLES",
    "CustomizationConfig",
    "build_customizations",
    "influence_strength",
    "pixel_nn_hits",
    "stylize",
]


def _thick(x: Tensor) -> Tensor:
    """Thicker strokes: grey-level dilation (3x3 max filter) of bright-on-dark images."""
    return F.max_pool2d(x, 3, stride=1, padding=1)


def _thin(x: Tensor) -> Tensor:
    """Thinner strokes: grey-level erosion (3x3 min filter), applied to a 2x upsampled image."""
    up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    return F.interpolate(-F.max_pool2d(-up, 3, stride=1, padding=1), size=x.shape[-2:], mode="area")


def _shear(x: Tensor) -> Tensor:
    """A horizontal shear of 0.35 (slanted strokes), background padded with the image minimum."""
    theta = torch.tensor([[1.0, 0.35, 0.0], [0.0, 1.0, 0.0]], dtype=x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    return F.grid_sample(x - low, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + low


#: Style transforms of the style case: name -> function of (n, C, H, W) images in [-1, 1].
STYLES: dict[str, Callable[[Tensor], Tensor]] = {"thick": _thick, "thin": _thin, "shear": _shear}


def stylize(images: Tensor, style: str) -> Tensor:
    """Apply a :data:`STYLES` transform to (n, C, H, W) images in [-1, 1] (result clipped to [-1, 1])."""
    if style not in STYLES:
        raise DataError(f"Unknown style {style!r}; choose one of {', '.join(STYLES)}.")
    return STYLES[style](images).clamp(-1, 1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CustomizationConfig(Config):
    """How customized models are made.

    Attributes:
        n_object: Object cases (one exemplar each).
        n_style: Style cases (``style_exemplars`` images of different classes under one style each).
        styles: Style names (:data:`STYLES`), used in turn.
        style_exemplars: Exemplars per style case.
        seen_classes: Classes whose cases may be used to tune features; the others are the unseen test
            classes (a style case is seen when all its exemplars' classes are).
        finetune_steps: Fine-tuning steps per customized model.
        finetune_lr: Fine-tuning learning rate.
        batch_size: Fine-tuning batch size (half exemplars, half prior samples).
        n_prior: Base-model samples used for prior preservation (drawn once, shared by all cases).
        n_samples: Samples drawn from each customized model (the queries).
        ddim_steps: DDIM steps when sampling.
        seed: Seed of the exemplar choice, fine-tuning and sampling.
    """

    n_object: int = 30
    n_style: int = 15
    styles: tuple[str, ...] = ("thick", "thin", "shear")
    style_exemplars: int = 3
    seen_classes: tuple[int, ...] = DEFAULT_SEEN_CLASSES
    finetune_steps: int = 300
    finetune_lr: float = 2e-4
    batch_size: int = 32
    n_prior: int = 256
    n_samples: int = 24
    ddim_steps: int = 50
    seed: int = 0

    def validate(self) -> None:
        require_ints(self, ("n_object", "n_style"), minimum=0)
        require(self.n_object + self.n_style >= 1, "n_object + n_style", "at least 1", self.n_object + self.n_style)
        require_ints(
            self, ("style_exemplars", "finetune_steps", "batch_size", "n_prior", "n_samples", "ddim_steps"), minimum=1
        )
        require(self.batch_size >= 2, "batch_size", "at least 2 (half exemplars, half prior)", self.batch_size)
        require(
            all(s in STYLES for s in self.styles) and len(self.styles) >= 1,
            "styles",
            f"names in {list(STYLES)}",
            self.styles,
        )
        require(self.finetune_lr > 0, "finetune_lr", "a positive number", self.finetune_lr)
        require(is_int(self.seed, minimum=0), "seed", "a non-negative integer", self.seed)


def _plan(config: CustomizationConfig, labels: np.ndarray) -> list[dict[str, Any]]:
    """Which held-out images each case uses (object cases first, then style cases), seeded."""
    rng = numpy_rng(config.seed, "customization-plan")
    order = rng.permutation(len(labels))
    if config.n_object + config.n_style * config.style_exemplars > len(order):
        raise DataError(
            f"{config.n_object} object and {config.n_style} x {config.style_exemplars} style exemplars need "
            f"{config.n_object + config.n_style * config.style_exemplars} held-out images; only {len(order)} exist."
        )
    seen = set(config.seen_classes)
    plan: list[dict[str, Any]] = []
    used = 0
    for _ in range(config.n_object):
        plan.append({"kind": "object", "style": None, "idx": [int(order[used])]})
        used += 1
    for j in range(config.n_style):
        style = config.styles[j % len(config.styles)]
        # alternate seen and unseen style cases: exemplars of distinct classes from one side of the split
        want_seen = j % 2 == 0
        idx: list[int] = []
        classes: set[int] = set()
        for i in order[used:]:
            c = int(labels[i])
            if (c in seen) == want_seen and c not in classes and int(i) not in {k for p in plan for k in p["idx"]}:
                idx.append(int(i))
                classes.add(c)
                if len(idx) == config.style_exemplars:
                    break
        if len(idx) < config.style_exemplars:
            raise DataError(
                f"Not enough classes on one side of seen_classes for {config.style_exemplars} style exemplars of "
                "distinct classes; lower style_exemplars."
            )
        plan.append({"kind": "style", "style": style, "idx": idx})
    for entry in plan:
        entry["classes"] = [int(labels[i]) for i in entry["idx"]]
        entry["split"] = "seen" if all(c in seen for c in entry["classes"]) else "unseen"
    return plan


def build_customizations(
    base: DDPM,
    heldout: Tensor,
    labels: Sequence[int] | np.ndarray,
    folder: str | Path,
    config: CustomizationConfig | None = None,
    *,
    show_progress: bool | None = None,
) -> list[Customization]:
    """Fine-tune customized copies of ``base`` and save their exemplars and samples (resumable).

    Args:
        base: The base DDPM, trained on the pool.
        heldout: (n, C, H, W) images in [-1, 1] that are NOT in the pool (exemplar candidates).
        labels: (n,) class of each held-out image.
        folder: Benchmark folder (``manifest.json``, ``c-XXX/`` sub-folders, ``prior/`` checkpoints).
        config: How (default :class:`CustomizationConfig`).
        show_progress: Progress bar.

    Returns:
        One :class:`Customization` per case, in plan order.
    """
    cfg = config or CustomizationConfig()
    folder = Path(folder)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(heldout),):
        raise DataError(f"labels must have one entry per held-out image ({len(heldout)}); got {labels.shape}.")
    plan = _plan(cfg, labels)
    manifest_path = folder / MANIFEST
    done: dict[str, Customization] = {}
    if manifest_path.is_file():
        previous = read_json(manifest_path)
        if previous.get("config") != cfg.to_dict():
            raise DataError(
                f"{folder} holds a benchmark built with other settings; use another folder or delete it. "
                f"Differences: {sorted(k for k in cfg.to_dict() if previous.get('config', {}).get(k) != cfg.to_dict()[k])}"
            )
        done = {c.id: c for c in (Customization.from_dict(e) for e in previous.get("customizations", []))}
    prior = ddpm_sample(
        base, cfg.n_prior, seed=derive_seed(cfg.seed, "prior"), ddim_steps=cfg.ddim_steps, show_progress=False
    )
    out: list[Customization] = []
    for j, entry in enumerate(progress(plan, desc="customizing", total=len(plan), show=show_progress)):
        cid = f"c-{j:03d}"
        if cid in done:
            out.append(done[cid])
            continue
        exemplars = heldout[entry["idx"]]
        if entry["style"] is not None:
            exemplars = stylize(exemplars, entry["style"])
        reps = max(1, len(prior) // len(exemplars))
        data = torch.cat([exemplars.repeat(reps, 1, 1, 1), prior])
        train_cfg = default_train_config(
            base.config,
            n_steps=cfg.finetune_steps,
            batch_size=cfg.batch_size,
            lr=cfg.finetune_lr,
            seed=derive_seed(cfg.seed, "finetune", j),
            checkpoint_every=0,
            ema_decay=None,
        )
        run = train_ddpm(base.config, train_cfg, data, folder / cid / "model", init=base, show_progress=False)
        model = run.model
        assert isinstance(model, DDPM)
        samples = ddpm_sample(
            model,
            cfg.n_samples,
            seed=derive_seed(cfg.seed, "samples", j),
            ddim_steps=cfg.ddim_steps,
            show_progress=False,
        )
        ex_paths = save_images(exemplars, folder / cid / "exemplars", prefix="exemplar")
        sa_paths = save_images(samples, folder / cid / "samples", prefix="sample")
        item = Customization(
            id=cid,
            kind=entry["kind"],
            style=entry["style"],
            classes=tuple(entry["classes"]),
            split=entry["split"],
            exemplars=tuple(str(p.relative_to(folder)) for p in ex_paths),
            samples=tuple(str(p.relative_to(folder)) for p in sa_paths),
            source_indices=tuple(entry["idx"]),
        )
        done[cid] = item
        out.append(item)
        atomic_write_json(
            manifest_path, {"config": cfg.to_dict(), "customizations": [c.to_dict() for c in done.values()]}
        )
    return out


def pixel_nn_hits(flat_pool: Tensor, exemplars: Tensor, samples: Tensor) -> tuple[Tensor, Tensor]:
    """Per sample: whether its pixel nearest neighbour among pool + ``exemplars`` is an exemplar (1.0 / 0.0),
    and its RMS distance to the nearest exemplar.

    Args:
        flat_pool: (n, D) the pool's pixels, flattened, float64.
        exemplars: (e, C, H, W) the case's exemplars.
        samples: (s, C, H, W) the case's samples.
    """
    ex = exemplars.flatten(1).double()
    sa = samples.flatten(1).double()
    d_pool = torch.cdist(sa, flat_pool).min(1).values
    d_ex = torch.cdist(sa, ex).min(1).values
    return (d_ex < d_pool).double(), d_ex / flat_pool.shape[1] ** 0.5


def influence_strength(
    pool: Tensor, customizations: Sequence[Customization], folder: str | Path, heldout: Tensor
) -> dict[str, float]:
    """Is customization strong enough to matter, and does it copy?

    Args:
        pool: (n, C, H, W) the base model's training images.
        customizations: The cases.
        folder: Their benchmark folder.
        heldout: Held-out images (a reference for "how close is close": their distance to the pool).

    Returns:
        ``exemplar_nn_rate``: share of samples whose pixel nearest neighbour among pool + own exemplars is
        an exemplar; ``median_sample_to_exemplar``: median (over samples) RMS distance to the nearest own
        exemplar; ``median_heldout_to_pool``: median RMS distance of held-out images to their nearest pool
        image; ``near_copy_rate``: share of samples closer to an exemplar than a quarter of that reference.
    """
    folder = Path(folder)
    flat_pool = pool.flatten(1).double()
    d = flat_pool.shape[1]
    reference = float(torch.cdist(heldout.flatten(1).double(), flat_pool).min(1).values.median() / d**0.5)
    nn_hits, to_exemplar = [], []
    for c in customizations:
        hit, dist_c = pixel_nn_hits(flat_pool, c.exemplar_images(folder), c.sample_images(folder))
        nn_hits.append(hit)
        to_exemplar.append(dist_c)
    hits = torch.cat(nn_hits)
    dist = torch.cat(to_exemplar)
    return {
        "exemplar_nn_rate": float(hits.mean()),
        "median_sample_to_exemplar": float(dist.median()),
        "median_heldout_to_pool": reference,
        "near_copy_rate": float((dist < 0.25 * reference).double().mean()),
    }
