"""The demo's keyed-generators section (``genprov demo``): "which user's copy made this?"."""

from __future__ import annotations

import numpy as np

from genprov.attribution.model.keyed import KeyedGenerators, KeyedGeneratorsConfig
from genprov.data import png_roundtrip
from genprov.eval import psnr
from genprov.experiments.keyed.report import comparison_grid
from genprov.experiments.keyed.run import finite_mean
from genprov.experiments.quickstart import DEMO_SECTIONS, DemoContext, grid_image
from genprov.models.artifact import module_fingerprint
from genprov.report import KeyValue, Section, Table, Text
from genprov.utils.seeding import derive_seed

__all__ = ["keyed_section"]


@DEMO_SECTIONS.register("keyed")
def keyed_section(ctx: DemoContext) -> Section:
    """The demo's keyed-generators story: three keyed copies of the demo DCGAN, attribution of a mixed batch.

    Trains (cached in ``ctx.out/models/keyed/<root fingerprint>-<steps>``) a small plain family with short fine-tuning, attributes
    PNG-saved samples of every user model, the root and authentic test images, and shows samples at the
    same latents.
    """
    n_keys = 3
    steps = 60 if ctx.config.quick else 400
    root = ctx.dcgan()
    cfg = KeyedGeneratorsConfig(seed=ctx.config.seed, user_steps=steps, key_steps=500)
    # one cached family per root model and setting, so --quick and full demos never collide
    folder = ctx.models_dir / "keyed" / f"{str(module_fingerprint(root.model))[:12]}-{steps}"
    family = KeyedGenerators.create(
        root.checkpoint, n_keys, cfg, out=folder, real=ctx.train, show_progress=ctx.show_progress
    )
    seed = derive_seed(ctx.config.seed, "keyed-demo")
    n = 100
    batches = {f"user-{i}": png_roundtrip(family.sample(i, n, seed=seed)) for i in range(n_keys)}
    batches["root G0"] = png_roundtrip(family.sample(-1, n, seed=seed))
    batches["authentic"] = png_roundtrip(ctx.test.images[:n])
    rows = []
    for name, images in batches.items():
        counts = family.attribute(images).counts()
        rows.append({"images": name, **{k: v / len(images) for k, v in counts.items()}})
    clean_a = float(np.mean([rows[i][f"user-{i}"] for i in range(n_keys)]))
    quality = float(np.mean([finite_mean(psnr(batches[f"user-{i}"], batches["root G0"])) for i in range(n_keys)]))
    ctx.results["keyed"] = {
        "attributability": clean_a,
        "psnr_to_root": quality,
        "attribution_fractions": rows,
        "family": str(family.folder),
        "warnings": family.warnings,
    }
    ctx.servable.append({"name": "demo-users", "kind": "keyed", "family": str(family.folder)})
    section = Section(
        "keyed",
        "Which user's copy made this? (keyed generators)",
        intro="A platform hands each user a copy of its DCGAN fine-tuned to push its samples across a secret "
        "key: a direction in image space on whose positive side all authentic images lie (Kim et al., ICLR "
        f"2021). Here {n_keys} copies of the demo DCGAN, {steps} fine-tuning steps each. An image is "
        "attributed to user i when only key i responds negatively; authentic images and the root's samples "
        "should be attributed to nobody. Full study: `genprov reproduce keyed`.",
    )
    if ctx.config.quick:
        section.add(Text(f"Quick mode: {steps} fine-tuning steps, so attribution is rough.", tone="note"))
    section.add(
        KeyValue(
            {"attributability": clean_a, "PSNR to the root (dB)": quality},
            notes={"attributability": "share of each user's PNG samples attributed to it alone"},
        ),
        Table(rows, caption="Share of each batch (PNG-saved) attributed to each user, to none, or ambiguous."),
        grid_image(
            comparison_grid(family, 8, seed),
            "Root G0 (top row) and each user model at the same latents.",
            nrow=8,
            width_px=320,
        ),
    )
    return section
