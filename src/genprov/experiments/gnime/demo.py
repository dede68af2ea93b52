"""The demo's explanation-privacy section (``genprov demo``): explanations, an inversion attack and GNIME."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor

from genprov.eval.privacy_audit import attack_metrics, evaluate_defense, fit_clean_attacks, fit_gnime
from genprov.eval.stats import MeanCI
from genprov.exceptions import ConfigError
from genprov.experiments.gnime.report import as_image
from genprov.experiments.gnime.run import cache_key
from genprov.experiments.quickstart import DEMO_SECTIONS, DemoContext, grid_image
from genprov.privacy import EXPLAINERS, AttackConfig, GNIMEConfig
from genprov.report import Section, Table, Text
from genprov.utils.seeding import derive_seed

__all__ = ["privacy_section"]


@DEMO_SECTIONS.register("privacy")
def privacy_section(ctx: DemoContext) -> Section:
    """The demo's explanation-privacy story on digits: explanations, an inversion attack, and GNIME.

    Uses the demo classifier as the victim (trained on the whole training split). GNIME is fitted on the
    first 600 training images (the defender's); the attacker owns the other training images (80/20 for
    training and early stopping); every number comes from the held-out test split. Small decoders and few
    epochs keep it well under a minute; fitted attacks and the defense are cached in
    ``ctx.models_dir / "privacy"``.
    """
    seed = ctx.config.seed
    clf = ctx.classifier()
    victim = clf.model.eval()
    train, test = ctx.train, ctx.test
    if train.labels is None or test.labels is None:
        raise ConfigError("The privacy section needs labelled data.")
    explainer = EXPLAINERS.create("gradient", victim)
    n_def = min(600, len(train) // 2)
    rest = n_def + torch.randperm(
        len(train) - n_def, generator=torch.Generator().manual_seed(derive_seed(seed, "privacy-demo"))
    )
    n_val = max(1, len(rest) // 5)
    data = {
        "attacker_train": (train.images[rest[n_val:]], train.labels[rest[n_val:]]),
        "attacker_val": (train.images[rest[:n_val]], train.labels[rest[:n_val]]),
        "test": (test.images, test.labels),
    }
    obs = {k: explainer.observe(v[0]) for k, v in data.items()}
    epochs = 6 if ctx.config.quick else 20
    attack_cfg = AttackConfig(width=8, depth=2, max_epochs=epochs, patience=5, lr=2e-3, seed=seed)
    gnime_cfg = GNIMEConfig(
        a=100.0,
        width=8,
        inverter_width=8,
        n_epochs=5 * epochs,
        lr=1e-3,
        inverter_lr=1e-3,
        train_batch_size=128,
        seed=seed,
    )
    folder = (
        ctx.models_dir
        / "privacy"
        / cache_key(
            {"clf": str(clf.checkpoint), "step": clf.step, "attack": attack_cfg.to_dict(), "gnime": gnime_cfg.to_dict()}
        )
    )
    expmi, predmi = fit_clean_attacks(
        obs, data, attack_cfg, cache=(folder / "exp-mi", folder / "pred-mi"), show_progress=ctx.show_progress
    )
    gnime = fit_gnime(
        explainer, gnime_cfg, train.images[:n_def], cache=folder / "gnime", show_progress=ctx.show_progress
    )
    test_x, test_y = data["test"]
    common: dict[str, Any] = {"victim": victim, "evaluator": victim, "seed": seed, "n_boot": 500}
    base = {
        "ExpMI (no defense)": attack_metrics(expmi.reconstruct(obs["test"]), test_x, test_y, **common),
        "PredMI": attack_metrics(predmi.reconstruct(obs["test"]), test_x, test_y, **common),
    }
    g = evaluate_defense(
        gnime, obs, data, expmi, attack_cfg, cache=folder / "adaptive-gnime", show_progress=ctx.show_progress, **common
    )
    rows = []
    for name, m, dist in (
        ("ExpMI (no defense)", base["ExpMI (no defense)"], 0.0),
        ("GNIME, non-adaptive attacker", g["non-adaptive"], g["distortion"].mean),
        ("GNIME, adaptive attacker", g["adaptive"], g["distortion"].mean),
        ("PredMI", base["PredMI"], None),
    ):
        s = m["summary"]
        rows.append(
            {
                "attack": name,
                "MSE": s["mse"],
                "SSIM": s["ssim"].mean,
                "re-classified": s["tca"].mean,
                "distortion": dist,
            }
        )
    ctx.results["privacy"] = {
        r["attack"]: {k: (v.to_dict() if isinstance(v, MeanCI) else v) for k, v in r.items() if k != "attack"}
        for r in rows
    }
    idx = torch.arange(min(10, len(test_x)))
    grid = torch.cat(
        [
            test_x[idx],
            as_image(cast(Tensor, obs["test"].explanations)[idx]),
            expmi.reconstruct(obs["test"][idx]),
            as_image(g["defended_test"][idx]),
            g["reconstructions"]["adaptive"][idx],
            predmi.reconstruct(obs["test"][idx]),
        ]
    )
    section = Section(
        "privacy",
        "What do explanations leak? (model inversion and GNIME)",
        intro="A service explains the demo classifier's predictions with input-gradient maps. An attacker who "
        "queries it with their own images trains a decoder from (map, prediction vector) back to the image "
        "(ExpMI) and one from the prediction alone (PredMI). GNIME (Jeong et al., NeurIPS 2022) adds learned "
        "noise to the maps; an adaptive attacker retrains on defended maps. MSE on images in [0, 1]; "
        "re-classified: share of reconstructions the classifier assigns the original's class. Full study "
        "with matched Gaussian noise and privacy-utility curves: `genprov reproduce gnime`.",
    )
    if ctx.config.quick:
        section.add(Text(f"Quick mode: {epochs} attack epochs, so reconstructions are rough.", tone="note"))
    section.add(
        Table(
            rows,
            caption="Attacks on held-out digits (95% intervals on MSE).",
            float_format={"MSE": ".4f", "distortion": ".4f"},
        ),
        grid_image(
            grid,
            "Rows: originals; gradient maps; ExpMI reconstructions; GNIME-defended maps; adaptive ExpMI "
            "reconstructions; PredMI reconstructions.",
            nrow=len(idx),
            width_px=480,
        ),
    )
    return section
