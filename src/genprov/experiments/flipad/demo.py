"""The demo's FLIPAD section (``genprov demo``): "was this made by my generator?"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from genprov.attribution.model import MODEL_ATTRIBUTORS, FeatureAttributor, FinalLayerInversionAttributorConfig
from genprov.data import png_roundtrip
from genprov.experiments.flipad.config import FlipadExperimentConfig
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
    real_test: Tensor | None = None,
    n_fit: int = 700,
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
        real: (n, C, H, W) real images in [-1, 1] at the generators' size (at least ``n_fit``): the negatives.
        real_test: Real images for the test (default: ``real`` after the first ``n_fit``); the demo passes
            the test split, which no generator saw, as Table 1 of ``genprov reproduce flipad`` does.
        n_fit: Own samples and real images to fit on (Table 1's ``n_train``).
        n_test: Test samples per source.
        seed: Seed of samples and detector.
        config: FLIPAD settings (default: Table 1's, i.e. ``FlipadExperimentConfig``'s FLIPAD and Deep SAD
            settings: censored saturation, 300 FISTA iterations, 20 detector epochs).
        save_to: Folder to save the fitted detector to (for the service's workspace).

    Returns:
        A :class:`~genprov.report.Section` with headline metrics, a table and a score histogram.
    """
    if config is None:
        table1 = FlipadExperimentConfig()
        config = table1.flipad.replace(seed=seed, detector=table1.detector)
    cfg = config
    real_q = png_roundtrip(real)
    held_real = png_roundtrip(real_test) if real_test is not None else real_q[n_fit:]
    own = own_pool(owner, n_fit + n_fit // 4 + n_test, seed, "demo-own")
    flipad = MODEL_ATTRIBUTORS.create("flipad", owner, config=cfg)
    assert isinstance(flipad, FeatureAttributor)
    flipad.fit_split(own[:n_fit], own[n_fit : n_fit + n_fit // 4], negatives=real_q[:n_fit])
    if save_to is not None:
        flipad.save_pretrained(save_to)
    test = {
        "own (held out)": own[-n_test:],
        "real (held out)": held_real[: max(1, n_test)],
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
            "of held-out own samples, so it sits at the bottom of the own scores: the share of the unseen GAN's "
            "samples it claims is much higher than the AUC suggests. The settings are Table 1's of "
            "'genprov reproduce flipad', but the demo's GANs are wider (32 feature maps, 2000 steps) than the "
            "reproduction's (16, 1000), so their samples lie closer together; Table 1's accuracy is also a mean "
            "over real images and three GAN types, where this row is the hardest case, one unseen GAN of the "
            "same data."
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
        ctx.dcgan().model,
        ctx.model("lsgan").model,
        ctx.train.images,
        real_test=ctx.test.images,
        n_fit=min(700, len(ctx.train) // 2),
        seed=ctx.config.seed,
        save_to=detector,
    )
    ctx.servable.append(
        {"name": "demo-dcgan", "kind": "flipad", "detector": str(detector), "generator": str(ctx.models_dir / "dcgan")}
    )
    return section
