"""The HTML report of ``genprov reproduce flipad-t2i``, built from its typed :class:`FlipadT2IResult`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from genprov.eval import roc_auc, roc_curve
from genprov.experiments.flipad.report import METHOD_LABELS, owner_table
from genprov.experiments.flipad_t2i.config import FlipadT2IExperimentConfig
from genprov.experiments.flipad_t2i.results import FlipadT2IResult
from genprov.report import Figure, Image, KeyValue, Report, Section, Table, Text
from genprov.report.figures import make_grid, roc_curves

__all__ = ["AEROBLADE_L2", "LABELS", "build_report"]

#: The AEROBLADE variant with the plain pixel distance (a method name of the tables).
AEROBLADE_L2 = "aeroblade-l2"
#: Display names of the methods of this report.
LABELS = {**METHOD_LABELS, "aeroblade": "AEROBLADE (encoder features)", AEROBLADE_L2: "AEROBLADE (pixel l2)"}


def _labelled(summary: Mapping[str, Any]) -> dict[str, Any]:
    return {LABELS.get(m, m): s for m, s in summary.items()}


def build_report(
    cfg: FlipadT2IExperimentConfig,
    result: FlipadT2IResult,
    raw: Mapping[str, Mapping[str, Any]],
    examples: Mapping[str, Tensor],
) -> Report:
    """The report of ``result``; ``raw`` holds each method's first-resample scores (``{"threshold", "own",
    <source>: scores}``) and ``examples`` a few images per pool."""
    report = Report(
        "FLIPAD on a text-to-image pipeline's VAE decoder",
        subtitle=f"Table 4 analogue of Laszkiewicz et al. (ICML 2024) on {cfg.data} {cfg.image_size}x{cfg.image_size}",
        meta={"data": cfg.data, "seed": cfg.seed, "run": "quick" if cfg.quick else "full"},
    )
    summary = Section("summary", "Summary", intro=_SUMMARY)
    summary.add(
        KeyValue(
            {f"{LABELS.get(m, m)} acc / AUC": f"{v.acc:.3f} / {v.auc:.3f}" for m, v in result.headline.items()},
            caption="Means over real images and the other pipeline (accuracy at the 0.5% FNR threshold / AUC).",
        )
    )
    report.add(summary)
    t4 = Section("table-4", "Own pipeline vs real images vs another pipeline", intro=_TABLE4)
    t4.add(owner_table(_labelled(result.table4), "Accuracy at the 0.5% FNR threshold / AUC per source."))
    curves = {}
    for method, scores in raw.items():
        neg = torch.cat([scores["real"], scores["other"]])
        fpr, tpr, _ = roc_curve(scores["own"], neg)
        curves[LABELS.get(method, method)] = (fpr, tpr, roc_auc(scores["own"], neg))
    t4.add(Figure(roc_curves(curves, title="own vs real + other pipeline"), caption="ROC curves (first resample)."))
    report.add(t4)
    hard = Section("shared-vae", "The hard case: the same VAE, another U-Net", intro=_SHARED)
    hard.add(owner_table(_labelled(result.shared_vae), "Own samples vs the shared-VAE pipeline's (acc / AUC)."))
    report.add(hard)
    samples = Section("samples", "Samples")
    for key, x in examples.items():
        samples.add(Image(make_grid(x, nrow=len(x)), caption=key))
    report.add(samples)
    setup = Section("setup", "Set-up")
    pipes = [
        {"role": p.role, "folder": p.folder, "seed": p.seed, "shares own VAE": p.shares_own_vae}
        for p in result.pipelines
    ]
    setup.add(
        Text(
            f"Per method: {cfg.n_train} own + {cfg.n_train} real training images, {cfg.n_holdout} held-out own samples "
            f"for the threshold, {cfg.n_test} test samples per source, {cfg.n_resamples} resample(s); every image "
            f"passes an 8-bit round trip. Samples: {cfg.sample_steps} DDIM steps, guidance {cfg.guidance_scale}."
        ),
        Table(pipes, caption="Pipelines"),
        KeyValue({k: f"{v:.0f} s" for k, v in result.timings_s.items()}, caption="Wall time per phase"),
    )
    report.add(setup)
    return report


_SUMMARY = (
    "The owner holds a text-to-image pipeline and asks whether an image came from it. FLIPAD inverts the last "
    "layer of its VAE decoder (``decoder.conv_out``, identity activation) by lasso and trains Deep SAD on the "
    "recovered activations (own samples +1, real training images -1); raw pixels and DCT use the same detector; "
    "AEROBLADE needs no training: the score is minus the distance between an image and its reconstruction by the "
    "own VAE. Thresholds keep 99.5% of held-out own samples."
)
_TABLE4 = (
    "The other pipeline was trained on the same data with another seed: it shares only the architecture. "
    "It is never seen in training (open world)."
)
_SHARED = (
    "A pipeline whose VAE is the owner's (trained with ``vae_from``), only its U-Net and text encoder differ. "
    "Both decode through the same ``decoder.conv_out``, so every output of either pipeline is in the range of "
    "the same decoder: FLIPAD's inversion and AEROBLADE's reconstruction error cannot separate them by "
    "construction (anything measured above chance comes from what the U-Net's latents look like after "
    "decoding, not from the decoder). Reported as measured."
)
