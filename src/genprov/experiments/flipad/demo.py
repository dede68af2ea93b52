"""The demo's FLIPAD section (``genprov demo``): "was this made by my generator?"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from genprov.attribution.model import (
    MODEL_ATTRIBUTORS,
    DeepSADConfig,
    FeatureAttributor,
    FinalLayerInversionAttributorConfig,
)
from genprov.data import png_roundtrip
from genprov.experiments.flipad.run import auc_acc, own_pool
from genprov.experiments.quickstart import DEMO_SECTIONS, DemoContext
from genprov.report import Figure, KeyValue, Section, Table
from genprov.report.figures import score_histograms

__all__ = ["flipad_demo_section"]


def flipad_demo_section(
    owner: nn.Module,
    other: nn.Module,
    real: Tensor,
    *,
    n_fit: int = 300,
    n_test: int = 100,
    seed: int = 0,
    config: FinalLayerInversionAttributorConfig | None = None,
    save_to: Path | None = None,
) -> Section:
    """A report section for ``genprov demo``: "was this made by my generator?" with FLIPAD.

    Fits FLIPAD on ``owner``'s samples against real images, then scores held-out own samples, real
    images and samples of ``other`` (a generator FLIPAD never saw). Runs in seconds on small models.

    Args:
        owner: The owner's trained image generator (genprov GAN).
        other: Another trained generator of the same image size.
        real: (n, C, H, W) real images in [-1, 1] at the generators' size (at least ``n_fit + 20``).
        n_fit: Own samples and real images to fit on.
        n_test: Test samples per source.
        seed: Seed of samples and detector.
        config: FLIPAD settings (default: a fast one, 100 FISTA iterations, censored saturation).
        save_to: Folder to save the fitted detector to (for the service's workspace).

    Returns:
        A :class:`~genprov.report.Section` with headline metrics, a table and a score histogram.
    """
    cfg = config or FinalLayerInversionAttributorConfig(
        max_iter=100, saturation="censor", seed=seed, detector=DeepSADConfig(n_epochs=10, lr_milestones=(8,))
    )
    real_q = png_roundtrip(real)
    n_real_test = min(n_test, max(1, len(real_q) - n_fit))
    own = own_pool(owner, n_fit + n_fit // 4 + n_test, seed, "demo-own")
    flipad = MODEL_ATTRIBUTORS.create("flipad", owner, config=cfg)
    assert isinstance(flipad, FeatureAttributor)
    flipad.fit_split(own[:n_fit], own[n_fit : n_fit + n_fit // 4], negatives=real_q[:n_fit])
    if save_to is not None:
        flipad.save_pretrained(save_to)
    test = {
        "own (held out)": own[-n_test:],
        "real (held out)": real_q[n_fit : n_fit + n_real_test],
        "other GAN": own_pool(other, n_test, seed, "demo-other"),
    }
    scores = {name: flipad.score_samples(x) for name, x in test.items()}
    rows = []
    for name, s in scores.items():
        claimed = float((s >= flipad.threshold_).float().mean())
        row: dict[str, Any] = {"source": name, "claimed as own": claimed}
        if name != "own (held out)":
            m = auc_acc(scores["own (held out)"], s, flipad.threshold_)
            row.update({"AUC vs own": m["auc"], "accuracy vs own": m["acc"]})
        rows.append(row)
    section = Section(
        "flipad",
        "Which model made this? (FLIPAD)",
        intro=(
            "FLIPAD (Laszkiewicz et al., ICML 2024) inverts the generator's last layer by a lasso and asks an "
            "anomaly detector (Deep SAD) whether the recovered activations look like the owner's. It was fitted "
            "on the owner's samples against real images only; the other GAN is unseen. The threshold keeps 99.5% "
            "of held-out own samples."
        ),
    )
    section.add(
        KeyValue(
            {r["source"]: r["claimed as own"] for r in rows},
            caption="Share of each source claimed as made by the owner's generator",
            float_format=".2f",
        ),
        Table(rows, caption="Claimed share at the 0.5% FNR threshold; AUC and balanced accuracy against own samples."),
        Figure(
            score_histograms(scores, threshold=flipad.threshold_, xlabel="FLIPAD score"),
            caption="Scores (higher = more likely the owner's); dashed line: threshold.",
        ),
    )
    return section


@DEMO_SECTIONS.register("flipad")
def _demo_section(ctx: DemoContext) -> Section:
    """The demo's FLIPAD section: the demo DCGAN is the owner, the demo LSGAN the unseen other generator."""
    detector = ctx.out / "flipad-detector"
    section = flipad_demo_section(
        ctx.dcgan().model, ctx.model("lsgan").model, ctx.train.images, seed=ctx.config.seed, save_to=detector
    )
    ctx.servable.append(
        {"name": "demo-dcgan", "kind": "flipad", "detector": str(detector), "generator": str(ctx.models_dir / "dcgan")}
    )
    return section
