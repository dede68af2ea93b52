"""The demo's TRAK section (``genprov demo``): which training images shaped a generated digit?"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from genprov.attribution.data.trak import TRAKAttributor, TRAKConfig
from genprov.eval.lds import pixel_similarity
from genprov.experiments.quickstart import DEMO_SECTIONS, DemoContext, grid_image
from genprov.models.diffusion import DDPM
from genprov.report import Gallery, Section
from genprov.utils.io import atomic_save_npz

__all__ = ["DEMO_QUERIES", "DEMO_TRAIN_IMAGES", "trak_section"]

#: The demo's TRAK training images (``{"images": (n, C, H, W) float32}``), for the service's workspace.
_DEMO_TRAIN = "trak-store/train-images.npz"

#: Training images the demo section attributes to (a prefix of the demo's training split).
DEMO_TRAIN_IMAGES = 300
DEMO_QUERIES = 3


@DEMO_SECTIONS.register("trak")
def trak_section(ctx: DemoContext) -> Section:
    """Demo: for a few generated digits, the top training influencers under TRAK and D-TRAK."""
    t0 = time.perf_counter()
    ddpm = ctx.ddpm().model
    assert isinstance(ddpm, DDPM)
    size = ctx.image_size("ddpm")
    train = ctx.dataset("train", size).images[:DEMO_TRAIN_IMAGES]
    queries = ctx.samples("ddpm")[:DEMO_QUERIES]
    seed = ctx.config.seed
    section = Section(
        "trak",
        "Which training images shaped a generated digit?",
        intro=f"Data attribution with TRAK (gradient of the denoising loss) and D-TRAK (gradient of the squared norm "
        f"of the predicted noise; Zheng et al., ICLR 2024) for the DDPM, against the first {len(train)} training "
        "images: the most positive (proponents) and most negative (opponents) influencers of each sample, beside "
        "the nearest training images in pixels. `genprov reproduce dtrak` measures which method predicts "
        "retraining better (LDS).",
    )
    results: dict[str, Any] = {"n_train": len(train), "queries": len(queries)}
    scores_by_method = {}
    for label, output_function in (("TRAK", "loss"), ("D-TRAK", "squared-l2-norm")):
        config = TRAKConfig(output_function=output_function, proj_dim=512, seed=seed)
        attributor = TRAKAttributor(ddpm, config=config)
        store = ctx.out / "trak-store" / output_function
        attributor.fit(train, store=store, show_progress=ctx.show_progress)
        scores_by_method[label] = attributor.scores(queries)
        assert attributor.store_ is not None
        attributor.store_.update_info(
            model=str(ctx.models_dir / "ddpm"), trak_config=config.to_dict(), image_size=size, channels=train.shape[1]
        )
        ctx.servable.append(
            {"name": f"demo-{label.lower()}", "kind": "trak", "store": str(store), "train": str(ctx.out / _DEMO_TRAIN)}
        )
    atomic_save_npz(ctx.out / _DEMO_TRAIN, {"images": train.numpy()})
    scores_by_method["nearest pixels"] = torch.from_numpy(pixel_similarity(queries, train))
    for q in range(len(queries)):
        for label, scores in scores_by_method.items():
            k_negative = 0 if label == "nearest pixels" else 3
            section.add(
                Gallery.influence(
                    queries[q],
                    train,
                    scores[q],
                    k_negative=k_negative,
                    caption=f"{label}, sample {q}",
                    query_caption=f"sample {q}",
                )
            )
        results[f"sample {q}"] = {
            label: torch.argsort(s[q], descending=True, stable=True)[:5].tolist()
            for label, s in scores_by_method.items()
        }
    overlap = [
        len(set(results[f"sample {q}"]["TRAK"]) & set(results[f"sample {q}"]["D-TRAK"])) / 5
        for q in range(len(queries))
    ]
    results["top5_overlap_trak_dtrak"] = float(np.mean(overlap)) if overlap else None
    results["seconds"] = round(time.perf_counter() - t0, 2)
    ctx.results["trak"] = results
    section.add(grid_image(queries, "The samples explained.", nrow=len(queries), width_px=240))
    return section
