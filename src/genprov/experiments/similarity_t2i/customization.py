"""Real text-to-image customizations with a known answer: the benchmark of ``genprov reproduce similarity-t2i``.

As Wang et al. (ICCV 2023) build their attribution ground truth, each customization fine-tunes the base
pipeline on exemplars it never saw, here a DreamBooth-style LoRA with a new token and prior preservation
(:func:`genprov.models.t2i.train_dreambooth_lora`), and the customized pipeline's samples from the token's
prompt are the queries whose answer is the exemplar. The benchmark folder has the layout of the unconditional
benchmark (:mod:`genprov.experiments.similarity.customization`): ``manifest.json`` with one
:class:`~genprov.eval.customization.Customization` per case (its ``prompt`` and ``lora`` folder recorded too),
``c-XXX/exemplars``, ``c-XXX/samples`` (PNG) and ``c-XXX/lora``; ``control/`` holds the base pipeline's paired
samples. Building is resumable: finished cases are skipped, the manifest is rewritten after each one, and a
LoRA interrupted mid-training resumes from its state.

Object cases come first (one exemplar each, :func:`plan_object_cases`), then style cases
(:func:`plan_style_cases`): a few held-out images of distinct classes, all transformed by one style of
``reproduce similarity``'s :data:`~genprov.experiments.similarity.customization.STYLES`, customized with one prompt
per exemplar that names its class and holds the token as the style (``"a <v1> handwritten seven"``,
``"a <v1> handwritten two"``, :func:`exemplar_prompts`), and sampled from those prompts in turn
(:func:`sample_prompts`); the control samples the same prompts without the token, with the same seeds.

Why ``"shear"`` is the default style: a latent-diffusion pipeline can only learn (and its samples can only show)
what its VAE keeps. On the quick base (digits at 16x16, a VAE of 4x4x4 latents trained 200 steps on the pool;
``seed=0``, 120 held-out images), the VAE's reconstruction of a styled image was closer to the styled image than
to the unstyled original for 97% of the images under ``shear`` (a 0.35 horizontal shear: strokes of ordinary
width, slanted; RMS change 0.45, the reconstruction's error 0.29 against 0.39 to the original), but for 0% under
``thick`` (a 3x3 dilation), 11% under ``thin`` and 1% under an inverted tone: the VAE, which never saw thick
strokes or a bright background, decodes those back to ordinary digits (median reconstruction 0.42, 0.24 and 1.09
from the styled image, 0.20, 0.18 and 0.81 from the original). The pool has no sheared digits, so the style is new
to the base pipeline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genprov.data import load_images, save_images
from genprov.eval.customization import MANIFEST, Customization
from genprov.exceptions import DataError
from genprov.experiments.similarity.customization import pixel_nn_hits, stylize
from genprov.experiments.similarity_t2i.config import SimilarityT2IExperimentConfig
from genprov.models.t2i import load_pipeline, sample_pipeline, train_dreambooth_lora
from genprov.utils.checksums import file_sha256
from genprov.utils.io import atomic_write_json, read_json
from genprov.utils.progress import progress
from genprov.utils.seeding import derive_seed, numpy_rng

__all__ = [
    "CONTROL_FOLDER",
    "build_t2i_customizations",
    "case_influence",
    "control_samples",
    "exemplar_prompts",
    "object_prompts",
    "plan_object_cases",
    "plan_style_cases",
    "sample_prompts",
    "style_prompts",
]

#: The base pipeline's paired samples (the negative control), under the run folder.
CONTROL_FOLDER = "control"
#: Fields of the experiment config that decide the benchmark (recorded in the manifest; a change refuses it).
_BENCH_FIELDS = (
    "seed",
    "image_size",
    "n_object",
    "seen_classes",
    "object_prompt",
    "new_token",
    "lora_rank",
    "lora_lr",
    "lora_steps",
    "lora_batch_size",
    "prior_loss_weight",
    "n_class_images",
    "class_sample_steps",
    "n_samples",
    "sample_steps",
    "guidance_scale",
)
#: Fields that decide the style cases: recorded only when there are some, so an object-only benchmark's record (and
#: a folder built before style cases existed) stays as it was.
_STYLE_FIELDS = ("n_style_cases", "styles", "style_exemplars", "style_prompt")


def _sides(labels: np.ndarray, seen_classes: Sequence[int]) -> tuple[list[int], list[int]]:
    """The held-out classes of ``seen_classes`` and the others (the unseen test classes).

    Raises:
        DataError: One side is empty.
    """
    present = sorted({int(c) for c in labels.tolist()})
    seen = [c for c in present if c in set(seen_classes)]
    unseen = [c for c in present if c not in set(seen_classes)]
    if not seen or not unseen:
        raise DataError(
            f"The held-out images have classes {present}; seen_classes {list(seen_classes)} must leave classes on "
            "both sides (seen cases tune, unseen cases test). Change seen_classes (--set seen_classes=[...])."
        )
    return seen, unseen


def plan_object_cases(labels: np.ndarray, n: int, seen_classes: Sequence[int], seed: int) -> list[dict[str, Any]]:
    """Which held-out image each object case takes: case ``j`` draws (seeded) an unused image of the next class
    of the seen classes (even ``j``) or of the unseen ones (odd ``j``), so any ``n >= 3`` has both sides.

    Raises:
        DataError: The held-out images lack a class of one side, or too few images of a class remain.
    """
    rng = numpy_rng(seed, "t2i-customization-plan")
    seen, unseen = _sides(labels, seen_classes)
    order = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in sorted((*seen, *unseen))}
    plan = []
    for j in range(n):
        side = seen if j % 2 == 0 else unseen
        c = side[(j // 2) % len(side)]
        if not order[c]:
            raise DataError(
                f"No held-out image of class {c} is left for case {j}; lower n_object (--set n_object=...)."
            )
        idx = int(order[c].pop(0))
        plan.append({"idx": idx, "class": c, "split": "seen" if c in seen_classes else "unseen"})
    return plan


def plan_style_cases(
    labels: np.ndarray,
    n: int,
    n_exemplars: int,
    styles: Sequence[str],
    seen_classes: Sequence[int],
    seed: int,
    *,
    used: Collection[int] = (),
) -> list[dict[str, Any]]:
    """Which held-out images each style case takes: case ``k`` draws (seeded) ``n_exemplars`` distinct classes of
    the seen side (even ``k``) or the unseen side (odd ``k``) and an unused image of each, and takes style
    ``styles[k % len(styles)]``.

    Args:
        labels: (n,) classes of the held-out images.
        n: Style cases.
        n_exemplars: Exemplars per case.
        styles: Style names, in turn.
        seen_classes: Classes whose cases may tune.
        seed: Seed of the draw.
        used: Held-out indices already taken (the object cases'), never drawn.

    Returns:
        Per case ``{"idx": [...], "classes": [...], "style": name, "split": "seen" | "unseen"}``.

    Raises:
        DataError: A side has fewer than ``n_exemplars`` classes, or a class has no unused image left.
    """
    rng = numpy_rng(seed, "t2i-style-plan")
    seen, unseen = _sides(labels, seen_classes)
    taken = {int(i) for i in used}
    order = {
        c: [int(i) for i in rng.permutation(np.flatnonzero(labels == c)) if int(i) not in taken]
        for c in sorted((*seen, *unseen))
    }
    plan = []
    for k in range(n):
        side = seen if k % 2 == 0 else unseen
        if len(side) < n_exemplars:
            raise DataError(
                f"Style case {k} needs {n_exemplars} distinct classes of the {'seen' if k % 2 == 0 else 'unseen'} "
                f"side, which has {side}; lower style_exemplars (--set style_exemplars=...)."
            )
        classes = [int(c) for c in rng.choice(side, size=n_exemplars, replace=False)]
        if any(not order[c] for c in classes):
            raise DataError(
                f"No held-out image of class {next(c for c in classes if not order[c])} is left for style case {k}; "
                "lower n_style_cases or n_object."
            )
        plan.append(
            {
                "idx": [order[c].pop(0) for c in classes],
                "classes": classes,
                "style": styles[k % len(styles)],
                "split": "seen" if k % 2 == 0 else "unseen",
            }
        )
    return plan


def object_prompts(cfg: SimilarityT2IExperimentConfig, class_caption: str) -> tuple[str, str]:
    """(instance prompt, class prompt) of an exemplar captioned ``class_caption``.

    Without ``object_prompt``: DreamBooth's ``"a [V] [class noun]"``, the token before the caption's last word
    (``"a handwritten seven"`` -> ``"a handwritten <v1> seven"``), and the caption itself as the class prompt;
    else ``object_prompt`` and it without the token.
    """
    if cfg.object_prompt is not None:
        return cfg.object_prompt, " ".join(w for w in cfg.object_prompt.split() if w != cfg.new_token)
    words = class_caption.split()
    return " ".join([*words[:-1], cfg.new_token, words[-1]]), class_caption


def style_prompts(cfg: SimilarityT2IExperimentConfig, class_caption: str) -> tuple[str, str]:
    """(instance prompt, class prompt) of a style exemplar captioned ``class_caption``.

    Without ``style_prompt``: the token after the caption's first word, modifying the whole (``"a handwritten
    seven"`` -> ``"a <v1> handwritten seven"``); else the template with ``{caption}`` replaced. The class prompt is
    the caption itself.
    """
    if cfg.style_prompt is not None:
        return cfg.style_prompt.replace("{caption}", class_caption), class_caption
    first, *rest = class_caption.split()
    return " ".join([first, cfg.new_token, *rest]), class_caption


def exemplar_prompts(
    cfg: SimilarityT2IExperimentConfig, kind: str, class_captions: Sequence[str]
) -> tuple[list[str], list[str]]:
    """(instance prompts, class prompts), one per exemplar of a case of ``kind`` whose exemplars' class captions are
    ``class_captions`` (:func:`object_prompts` or :func:`style_prompts`)."""
    make = style_prompts if kind == "style" else object_prompts
    pairs = [make(cfg, caption) for caption in class_captions]
    return [p for p, _ in pairs], [c for _, c in pairs]


def sample_prompts(
    cfg: SimilarityT2IExperimentConfig, case: Customization, class_captions: Sequence[str], n: int
) -> tuple[list[str], list[str]]:
    """The prompts of a case's first ``n`` samples, with the token and without (the control's): sample ``i`` takes
    exemplar ``i % e``'s prompt (an object case: its one prompt, every time).

    Args:
        cfg: The run's settings.
        case: The customization.
        class_captions: Class caption of each held-out image (indexed by ``case.source_indices``).
        n: Samples.
    """
    instance, classes = exemplar_prompts(cfg, case.kind, [class_captions[i] for i in case.source_indices])
    return _in_turn(instance, n), _in_turn(classes, n)


def _in_turn(prompts: Sequence[str], n: int) -> list[str]:
    """``n`` prompts taken from ``prompts`` in turn."""
    return [prompts[i % len(prompts)] for i in range(n)]


def _base_fingerprint(base_dir: Path) -> str:
    """SHA-256 of the base pipeline's U-Net and text-encoder weights (what the samples depend on)."""
    files = sorted([*(base_dir / "unet").glob("*.safetensors"), *(base_dir / "text_encoder").glob("*.safetensors")])
    return hashlib.sha256("".join(file_sha256(f) for f in files).encode()).hexdigest()


def _plan(cfg: SimilarityT2IExperimentConfig, labels: np.ndarray) -> list[dict[str, Any]]:
    """Every case's entry, object cases first: ``{"kind", "style", "idx": [...], "classes": [...], "split"}``."""
    objects = plan_object_cases(labels, cfg.n_object, cfg.seen_classes, cfg.seed)
    plan = [
        {"kind": "object", "style": None, "idx": [p["idx"]], "classes": [p["class"]], "split": p["split"]}
        for p in objects
    ]
    if cfg.n_style_cases:
        styles = plan_style_cases(
            labels,
            cfg.n_style_cases,
            cfg.style_exemplars,
            cfg.styles,
            cfg.seen_classes,
            cfg.seed,
            used=[p["idx"] for p in objects],
        )
        plan += [{"kind": "style", **p} for p in styles]
    return plan


def build_t2i_customizations(
    cfg: SimilarityT2IExperimentConfig,
    base_dir: Path,
    heldout: Tensor,
    labels: np.ndarray,
    class_captions: Sequence[str],
    folder: Path,
    *,
    show_progress: bool | None = None,
) -> list[Customization]:
    """Customize the base pipeline once per case and save exemplars and samples (resumable).

    Case ``j`` (object cases first, then style cases) trains its LoRA from ``derive_seed(seed, "t2i-lora", j)`` and
    draws its samples from ``derive_seed(seed, "t2i-samples", j)``; a style case's prior samples ``n_class_images``
    images per class prompt.

    Args:
        cfg: The run's settings (``n_object``, ``n_style_cases``, the prompts, the LoRA, the samples).
        base_dir: The base pipeline's folder (opened afresh for every case).
        heldout: (n, C, H, W) images in [-1, 1] that the base pipeline never saw (exemplar candidates).
        labels: (n,) their classes.
        class_captions: (n,) their class captions (``"a handwritten seven"``).
        folder: The benchmark folder.
        show_progress: Progress bar.

    Returns:
        One :class:`Customization` per case, in plan order.

    Raises:
        DataError: ``folder`` holds a benchmark of other settings or another base pipeline.
    """
    plan = _plan(cfg, labels)
    fields = _BENCH_FIELDS + (_STYLE_FIELDS if cfg.n_style_cases else ())
    record = {**{k: cfg.to_dict()[k] for k in fields}, "base_pipeline": _base_fingerprint(base_dir)}
    manifest_path = folder / MANIFEST
    done: dict[str, Customization] = {}
    if manifest_path.is_file():
        previous = read_json(manifest_path).get("config", {})
        changed = sorted(k for k in {*record, *previous} if previous.get(k) != record.get(k))
        if changed:
            raise DataError(
                f"{folder} holds a benchmark built with other settings ({', '.join(changed)}); use another --out "
                "or delete that folder."
            )
        done = {c.id: c for c in (Customization.from_dict(e) for e in read_json(manifest_path)["customizations"])}
    out: list[Customization] = []
    for j, entry in enumerate(progress(plan, desc="customizing", total=len(plan), show=show_progress)):
        cid = f"c-{j:03d}"
        if cid in done:
            out.append(done[cid])
            continue
        exemplars = heldout[torch.as_tensor(entry["idx"])]
        if entry["style"] is not None:
            exemplars = stylize(exemplars, entry["style"])
        instance, classes = exemplar_prompts(cfg, entry["kind"], [class_captions[i] for i in entry["idx"]])
        lora_cfg = cfg.lora_config(int(derive_seed(cfg.seed, "t2i-lora", j) % (2**31)))
        lora = train_dreambooth_lora(
            load_pipeline(base_dir),
            exemplars,
            lora_cfg.replace(n_class_images=cfg.n_class_images * len(set(classes))),
            folder / cid / "lora",
            instance_prompt=instance,
            token=cfg.new_token,
            class_prompt=classes,
            show_progress=False,
        )
        samples = sample_pipeline(
            lora.pipeline,
            _in_turn(instance, cfg.n_samples),
            1,
            seed=derive_seed(cfg.seed, "t2i-samples", j),
            steps=cfg.sample_steps,
            guidance_scale=cfg.guidance_scale,
            show_progress=False,
        )
        ex_paths = save_images(exemplars, folder / cid / "exemplars", prefix="exemplar")
        sa_paths = save_images(samples, folder / cid / "samples", prefix="sample")
        item = Customization(
            id=cid,
            kind=entry["kind"],
            style=entry["style"],
            classes=tuple(int(c) for c in entry["classes"]),
            split=str(entry["split"]),
            exemplars=tuple(str(p.relative_to(folder)) for p in ex_paths),
            samples=tuple(str(p.relative_to(folder)) for p in sa_paths),
            source_indices=tuple(int(i) for i in entry["idx"]),
            prompt=" | ".join(dict.fromkeys(instance)),
            lora=str((folder / cid / "lora").relative_to(folder)),
        )
        done[cid] = item
        out.append(item)
        atomic_write_json(manifest_path, {"config": record, "customizations": [c.to_dict() for c in done.values()]})
    return out


def control_samples(
    cfg: SimilarityT2IExperimentConfig,
    base_dir: Path,
    cases: Sequence[Customization],
    class_captions: Sequence[str],
    out: Path,
) -> tuple[Tensor, list[int]]:
    """The base pipeline's samples from each case's class prompts (:func:`sample_prompts` without the token), with
    the seeds of the case's first ``n_control_per_case`` samples (cached as PNG under ``out/control``, per case).

    Returns:
        ``(images, case)``: (n, C, H, W) images in [-1, 1] and the case index of each.
    """
    pipe = None
    images, owner = [], []
    for j, case in enumerate(cases):
        sub = out / CONTROL_FOLDER / case.id
        files = sorted(sub.glob("*.png")) if sub.is_dir() else []
        if len(files) != cfg.n_control_per_case:
            pipe = pipe or load_pipeline(base_dir)
            _, class_prompts = sample_prompts(cfg, case, class_captions, cfg.n_control_per_case)
            drawn = sample_pipeline(
                pipe,
                class_prompts,
                1,
                seed=derive_seed(cfg.seed, "t2i-samples", j),
                steps=cfg.sample_steps,
                guidance_scale=cfg.guidance_scale,
                show_progress=False,
            )
            files = save_images(drawn, sub, prefix="control")
        if files:
            images.append(load_images(files))  # PNG-saved, like the customized samples
            owner.extend([j] * len(files))
    if not images:
        return torch.empty(0), []
    return torch.cat(images), owner


def case_influence(
    pool: Tensor, case: Customization, folder: Path, control: Tensor
) -> tuple[float, float, float, float]:
    """A customization's influence in pixel space, against the base pipeline's paired samples.

    Args:
        pool: (n, C, H, W) the base pipeline's training images.
        case: The customization.
        folder: The benchmark folder.
        control: The base pipeline's samples paired with the case's first samples (same prompt without the token,
            same seeds).

    Returns:
        ``(nn_rate, base_nn_rate, to_exemplar, base_to_exemplar)``: the share of the customized (base) samples whose
        pixel nearest neighbour among pool + exemplar is the exemplar, and their median RMS distance to it, the
        customized samples taken as many as ``control`` (the paired ones; all of them, and NaN for the base,
        without control samples).
    """
    flat_pool = pool.flatten(1).double()
    exemplars = case.exemplar_images(folder)
    samples = case.sample_images(folder)
    hits, dist = pixel_nn_hits(flat_pool, exemplars, samples[: len(control)] if len(control) else samples)
    if not len(control):
        return float(hits.mean()), float("nan"), float(dist.median()), float("nan")
    base_hits, base_dist = pixel_nn_hits(flat_pool, exemplars, control)
    return float(hits.mean()), float(base_hits.mean()), float(dist.median()), float(base_dist.median())
