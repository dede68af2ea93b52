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
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genprov.data import load_images, save_images
from genprov.eval.customization import MANIFEST, Customization
from genprov.exceptions import DataError
from genprov.experiments.similarity.customization import pixel_nn_hits
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
    "object_prompts",
    "plan_object_cases",
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


def plan_object_cases(labels: np.ndarray, n: int, seen_classes: Sequence[int], seed: int) -> list[dict[str, Any]]:
    """Which held-out image each object case takes: case ``j`` draws (seeded) an unused image of the next class
    of the seen classes (even ``j``) or of the unseen ones (odd ``j``), so any ``n >= 3`` has both sides.

    Raises:
        DataError: The held-out images lack a class of one side, or too few images of a class remain.
    """
    rng = numpy_rng(seed, "t2i-customization-plan")
    present = sorted({int(c) for c in labels.tolist()})
    seen = [c for c in present if c in set(seen_classes)]
    unseen = [c for c in present if c not in set(seen_classes)]
    if not seen or not unseen:
        raise DataError(
            f"The held-out images have classes {present}; seen_classes {list(seen_classes)} must leave classes on "
            "both sides (seen cases tune, unseen cases test). Change seen_classes (--set seen_classes=[...])."
        )
    order = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in present}
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


def _base_fingerprint(base_dir: Path) -> str:
    """SHA-256 of the base pipeline's U-Net and text-encoder weights (what the samples depend on)."""
    files = sorted([*(base_dir / "unet").glob("*.safetensors"), *(base_dir / "text_encoder").glob("*.safetensors")])
    return hashlib.sha256("".join(file_sha256(f) for f in files).encode()).hexdigest()


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

    Args:
        cfg: The run's settings (``n_object``, the prompt, the LoRA, the samples).
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
    plan = plan_object_cases(labels, cfg.n_object, cfg.seen_classes, cfg.seed)
    record = {**{k: cfg.to_dict()[k] for k in _BENCH_FIELDS}, "base_pipeline": _base_fingerprint(base_dir)}
    manifest_path = folder / MANIFEST
    done: dict[str, Customization] = {}
    if manifest_path.is_file():
        previous = read_json(manifest_path).get("config", {})
        changed = sorted(k for k in record if previous.get(k) != record[k])
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
        exemplar = heldout[entry["idx"] : entry["idx"] + 1]
        prompt, class_prompt = object_prompts(cfg, class_captions[entry["idx"]])
        lora = train_dreambooth_lora(
            load_pipeline(base_dir),
            exemplar,
            cfg.lora_config(int(derive_seed(cfg.seed, "t2i-lora", j) % (2**31))),
            folder / cid / "lora",
            instance_prompt=prompt,
            token=cfg.new_token,
            class_prompt=class_prompt,
            show_progress=False,
        )
        samples = sample_pipeline(
            lora.pipeline,
            [prompt],
            cfg.n_samples,
            seed=derive_seed(cfg.seed, "t2i-samples", j),
            steps=cfg.sample_steps,
            guidance_scale=cfg.guidance_scale,
            show_progress=False,
        )
        ex_paths = save_images(exemplar, folder / cid / "exemplars", prefix="exemplar")
        sa_paths = save_images(samples, folder / cid / "samples", prefix="sample")
        item = Customization(
            id=cid,
            kind="object",
            style=None,
            classes=(int(entry["class"]),),
            split=str(entry["split"]),
            exemplars=tuple(str(p.relative_to(folder)) for p in ex_paths),
            samples=tuple(str(p.relative_to(folder)) for p in sa_paths),
            source_indices=(int(entry["idx"]),),
            prompt=prompt,
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
    """The base pipeline's samples from each case's class prompt, with the seeds of the case's first
    ``n_control_per_case`` samples (cached as PNG under ``out/control``, per case).

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
            _, class_prompt = object_prompts(cfg, class_captions[case.source_indices[0]])
            drawn = sample_pipeline(
                pipe,
                [class_prompt],
                cfg.n_control_per_case,
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
