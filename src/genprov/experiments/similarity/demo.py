"""The demo's similarity section (``genprov demo``): which training image is a generation built on?"""

from __future__ import annotations

import time
from typing import Any

import torch

from genprov.attribution.data import FEATURE_EXTRACTORS, ClassifierExtractor, FeatureExtractor
from genprov.attribution.data.similarity import SimilarityAttributor, soft_attribution
from genprov.data import resize_images
from genprov.exceptions import DataError
from genprov.experiments.quickstart import DEMO_SECTIONS, DemoContext, grid_image
from genprov.experiments.similarity.customization import CustomizationConfig, build_customizations
from genprov.models.diffusion import DDPM
from genprov.report import Gallery, GalleryRow, Section, Table, Text

__all__ = ["DEMO_FINETUNE_STEPS", "similarity_section"]

#: Fine-tuning steps of the demo's customized model (quick demo: fewer).
DEMO_FINETUNE_STEPS = 150


@DEMO_SECTIONS.register("similarity")
def similarity_section(ctx: DemoContext) -> Section:
    """Demo: customize the demo DDPM on one held-out digit, then attribute its samples by feature similarity.

    The customized model (cached under ``ctx.out/similarity``) is fine-tuned on one test-split image; its
    samples are attributed against the training images plus that exemplar with pixel and classifier
    features; the section shows the exemplar's rank and a top-k gallery with soft shares.
    """
    ddpm = ctx.ddpm().model
    classifier = ctx.classifier().model
    assert isinstance(ddpm, DDPM)
    t0 = time.perf_counter()  # the section's own work (the demo's models are shared and cached)
    size = ctx.image_size("ddpm")
    seed = ctx.config.seed
    steps = 40 if ctx.config.quick else DEMO_FINETUNE_STEPS
    heldout = ctx.dataset("test", size)
    if heldout.labels is None:
        raise DataError(f"The similarity demo needs labelled data; {heldout.name!r} has none.")
    cc = CustomizationConfig(
        n_object=1,
        n_style=0,
        finetune_steps=steps,
        finetune_lr=1e-3,
        batch_size=16,
        n_prior=32,
        n_samples=8,
        ddim_steps=25,
        seed=seed,
    )
    folder = ctx.out / "similarity" / f"customization-{steps}"
    case = build_customizations(ddpm, heldout.images, heldout.labels.numpy(), folder, cc, show_progress=False)[0]
    exemplar = case.exemplar_images(folder)
    samples = case.sample_images(folder)
    train = ctx.dataset("train", size).images
    candidates = torch.cat([train, exemplar])
    ex_row = len(train)
    section = Section(
        "similarity",
        "Which training image is this generation built on? (feature similarity)",
        intro=f"The demo DDPM fine-tuned for {steps} steps on one held-out digit (the *exemplar*, not in its "
        "training set) with prior preservation: by construction its samples are influenced by the exemplar. "
        f"Attribution by similarity ranks the {len(train)} training images plus the exemplar for each sample; the "
        "soft shares say how influence is spread (Wang et al., ICCV 2023). Full study with tuned features: "
        "`genprov reproduce similarity`.",
    )
    if ctx.config.quick:
        section.add(Text(f"Quick mode: {steps} fine-tuning steps, so customization is weak.", tone="note"))
    results: dict[str, Any] = {"n_candidates": len(candidates), "finetune_steps": steps}
    rows = []
    extractors: list[tuple[str, FeatureExtractor, int]] = [("pixels", FEATURE_EXTRACTORS.create("pixels"), size)]
    clf_size = ctx.image_size("classifier")
    extractors.append(("classifier", ClassifierExtractor(classifier), clf_size))
    galleries = []
    for label, extractor, side in extractors:
        attributor = SimilarityAttributor(extractor).fit(resize_images(candidates, side), show_progress=False)
        queries = resize_images(samples, side)
        scores = attributor.scores(queries)
        ranks = (scores > scores[:, ex_row : ex_row + 1]).sum(dim=1) + 1
        result = attributor.attribute(queries[:1], k=8)
        rows.append(
            {
                "features": label,
                "median rank of the exemplar": float(ranks.double().median()),
                "exemplar in top-10": float((ranks <= 10).double().mean()),
                "exemplar share (sample 0)": float(
                    soft_attribution(scores[:1], attributor.config.inv_tau, attributor.config.bias)[0, ex_row]
                ),
            }
        )
        captions = [("exemplar ✓ " if int(i) == ex_row else "") + f"#{int(i)}" for i in result.indices[0]]
        assert result.soft is not None
        galleries.append(
            GalleryRow.from_tensors(
                f"{label}: top-8 (soft share)",
                candidates[torch.as_tensor(result.indices[0])],
                scores=result.soft[0],
                captions=captions,
                tone="positive",
            )
        )
    results["ranks"] = rows
    section.add(
        grid_image(
            torch.cat([exemplar, samples]), "The exemplar, then samples of the customized model.", nrow=9, width_px=540
        ),
        Table(rows, caption="Where the exemplar ranks among the training images, per sample."),
        Gallery(
            [GalleryRow.from_tensors("exemplar", exemplar, captions=["exemplar"]), *galleries],
            query=samples[0],
            query_caption="sample 0",
            caption="Top training images of sample 0 with their soft share of influence.",
        ),
    )
    results["seconds"] = round(time.perf_counter() - t0, 2)
    ctx.results["similarity"] = results
    return section
