"""Explanation-privacy audit: how well model-inversion attacks rebuild inputs from explanations, with a defense.

The protocol of Jeong et al., 2022 ("Learning to generate inversion-resistant model explanations", sec. 5):
the attacker trains ExpMI (explanations + predictions) and PredMI (predictions only) on its split, with
early stopping on a validation split; a defense is measured on the held-out test split against a
non-adaptive attacker (trained on clean explanations) and an adaptive one (retrained on defended
explanations), beside Gaussian noise of the same distortion (:func:`~genprov.privacy.matched_gaussian_noise`).

``genprov privacy audit`` and ``genprov reproduce gnime`` both run it through :func:`fit_clean_attacks`,
:func:`attack_metrics` and :func:`evaluate_defense`, with the attack and GNIME sizes of
:func:`audit_configs` (declared once, here). It lives in ``eval`` because it measures with the
reconstruction metrics of :mod:`genprov.eval.reconstruction`, which the ``privacy`` layer may not import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from torch import Tensor, nn

from genprov.eval.reconstruction import (
    classification_hits,
    explanation_distortion,
    mse,
    reconstruction_summary,
    ssim,
    top_pixel_overlap,
)
from genprov.eval.stats import summarize
from genprov.exceptions import CheckpointError, DataError
from genprov.privacy import (
    AttackConfig,
    Defense,
    Explainer,
    ExpMIAttack,
    GNIMEConfig,
    GNIMEDefense,
    InversionAttack,
    Observations,
    PredMIAttack,
)

__all__ = [
    "ATTACK_SIZES",
    "GNIME_SIZES",
    "QUICK_ATTACK_SIZES",
    "QUICK_GNIME_SIZES",
    "attack_metrics",
    "audit_configs",
    "defend_observations",
    "evaluate_defense",
    "fit_attack",
    "fit_clean_attacks",
    "fit_gnime",
]

logger = logging.getLogger(__name__)

#: Attack (ExpMI / PredMI) sizes of an audit; the :class:`AttackConfig` defaults fill the rest.
ATTACK_SIZES: dict[str, Any] = {"width": 16}
#: GNIME sizes of an audit; the :class:`GNIMEConfig` defaults fill the rest. The budget: 200 epochs in
#: batches of 128 (1,600 steps on the 898 maps of digits' defender half) at Adam lr 1e-3. The original trains
#: about 17,000 steps at lr 1e-4 in batches of 1,024 (WSP-LAB/GNIME scripts/train_mnist_grad.py:64-81); Adam's
#: steps scale with lr, so 1,700 steps at 1e-3 travel about as far, and the literal schedule
#: (``lr=1e-4, inverter_lr=1e-4`` and ~17,000 steps) is one ``--set`` away but takes hours per weight on 2 CPU cores.
GNIME_SIZES: dict[str, Any] = {
    "width": 16,
    "inverter_width": 16,
    "n_epochs": 200,
    "train_batch_size": 128,
    "lr": 1e-3,
    "inverter_lr": 1e-3,
}
#: ``--quick`` / ``quick=True``: the changes of a one-to-two-minute smoke run (a weaker attack).
QUICK_ATTACK_SIZES: dict[str, Any] = {"width": 16, "max_epochs": 40, "patience": 6}
QUICK_GNIME_SIZES: dict[str, Any] = {"width": 8, "inverter_width": 8, "n_epochs": 30}


def audit_configs(
    *, quick: bool = False, attack: Mapping[str, Any] | None = None, gnime: Mapping[str, Any] | None = None
) -> tuple[AttackConfig, GNIMEConfig]:
    """The attack and GNIME configs of an audit: :data:`ATTACK_SIZES` / :data:`GNIME_SIZES` (then the quick
    sizes with ``quick``), then ``attack`` / ``gnime`` changes (e.g. ``{"a": 500, "seed": 1}``).

    Raises:
        ConfigError: An unknown field or a bad value in the changes.
    """
    quick_attack, quick_gnime = (QUICK_ATTACK_SIZES, QUICK_GNIME_SIZES) if quick else ({}, {})
    return (
        AttackConfig.from_dict({**ATTACK_SIZES, **quick_attack, **dict(attack or {})}),
        GNIMEConfig.from_dict({**GNIME_SIZES, **quick_gnime, **dict(gnime or {})}),
    )


def defend_observations(observations: Observations, defense: Defense, x: Tensor | None = None) -> Observations:
    """The same observations with the defense applied to their (clean) explanation maps.

    Args:
        observations: Clean observations of the images ``x``.
        defense: The defense.
        x: The images the observations explain; needed when the defense reads the victim's logits
            (:attr:`Defense.needs_logits`, GNIME's U-Net), which the released probabilities do not hold.

    Raises:
        DataError: Observations without maps; ``x`` missing for a defense that reads logits.
    """
    if observations.explanations is None:
        raise DataError("defend_observations needs observations with explanation maps; these hold predictions only.")
    logits = None
    if defense.needs_logits:
        if x is None:
            raise DataError(
                f"defend_observations: {defense.name} reads the victim's logits; pass the images the observations "
                "explain as x."
            )
        logits = defense.logits(x)
    return observations.with_explanations(defense.defend(observations.explanations, logits))


def fit_attack(
    kind: type[InversionAttack],
    config: AttackConfig,
    train: tuple[Observations, Tensor],
    val: tuple[Observations, Tensor],
    *,
    cache: Path | None = None,
    show_progress: bool | None = None,
) -> InversionAttack:
    """Fit ``kind`` (ExpMI or PredMI) on ``train`` with early stopping on ``val``; reuse ``cache`` if fitted.

    Args:
        kind: :class:`ExpMIAttack` or :class:`PredMIAttack`.
        config: Its config.
        train: ``(observations, inputs)`` of the attacker's training split.
        val: ``(observations, inputs)`` of the attacker's early-stopping split.
        cache: Folder to save the fitted attack in and load it from on the next run (the caller makes
            the folder name unique to the settings and data).
        show_progress: Progress bars.
    """
    return _cached(
        cache,
        kind.from_pretrained,
        lambda: kind(config).fit(train[0], train[1], validation=val, show_progress=show_progress),
        "attack",
    )


def fit_clean_attacks(
    observations: Mapping[str, Observations],
    data: Mapping[str, tuple[Tensor, Tensor]],
    config: AttackConfig,
    *,
    cache: tuple[Path, Path] | None = None,
    show_progress: bool | None = None,
) -> tuple[InversionAttack, InversionAttack]:
    """The non-adaptive attackers: ExpMI and PredMI trained on clean observations of the attacker's split.

    Args:
        observations: Clean observations of ``"attacker_train"`` and ``"attacker_val"``.
        data: ``{split: (images, labels)}`` of those splits.
        config: The attacks' config.
        cache: Folders of ExpMI and PredMI (see :func:`fit_attack`); ``None``: always fit.
        show_progress: Progress bars.

    Returns:
        ``(expmi, predmi)``.
    """
    train = (observations["attacker_train"], data["attacker_train"][0])
    val = (observations["attacker_val"], data["attacker_val"][0])
    folders = cache if cache is not None else (None, None)
    expmi = fit_attack(ExpMIAttack, config, train, val, cache=folders[0], show_progress=show_progress)
    predmi = fit_attack(PredMIAttack, config, train, val, cache=folders[1], show_progress=show_progress)
    return expmi, predmi


def fit_gnime(
    explainer: Explainer,
    config: GNIMEConfig,
    x: Tensor,
    *,
    cache: Path | None = None,
    show_progress: bool | None = None,
) -> GNIMEDefense:
    """Fit GNIME on the defender's images ``x``; reuse ``cache`` if already fitted there."""
    return _cached(
        cache,
        lambda folder: GNIMEDefense.from_pretrained(folder, explainer),
        lambda: GNIMEDefense(explainer, config).fit(x, show_progress=show_progress),
        "defense",
    )


class _Saveable(Protocol):
    def save_pretrained(self, folder: str | Path) -> Any: ...


_S = TypeVar("_S", bound=_Saveable)


def _cached(cache: Path | None, load: Callable[[Path], _S], fit: Callable[[], _S], what: str) -> _S:
    """``load(cache)`` when a fitted ``what`` is saved there (a broken one is refitted), else ``fit()`` and save."""
    if cache is not None and (cache / "config.json").is_file():
        try:
            return load(cache)
        except CheckpointError as err:
            logger.warning("ignoring the cached %s at %s: %s", what, cache, err)
    fitted = fit()
    if cache is not None:
        fitted.save_pretrained(cache)
    return fitted


def attack_metrics(
    reconstructions: Tensor,
    originals: Tensor,
    labels: Tensor,
    *,
    victim: nn.Module,
    evaluator: nn.Module,
    seed: int,
    n_boot: int,
) -> dict[str, Any]:
    """Every reconstruction metric with intervals, plus the per-image values the paired comparisons need.

    Returns:
        ``{"summary": {metric: MeanCI}, "per_image": {"mse", "ssim", "tca"}}`` (MSE and SSIM on images in
        [0, 1]; ``tca`` the evaluation classifier's hits).
    """
    summary = reconstruction_summary(
        reconstructions, originals, labels=labels, victim=victim, evaluator=evaluator, seed=seed, n_boot=n_boot
    )
    r01, x01 = (reconstructions + 1) / 2, (originals + 1) / 2
    per_image = {
        "mse": mse(r01, x01).numpy(),
        "ssim": ssim(r01, x01, data_range=1.0).numpy(),
        "tca": classification_hits(evaluator, reconstructions, labels).numpy(),
    }
    return {"summary": summary, "per_image": per_image}


def evaluate_defense(
    defense: Defense,
    observations: Mapping[str, Observations],
    data: Mapping[str, tuple[Tensor, Tensor]],
    clean_attack: InversionAttack,
    attack_config: AttackConfig,
    *,
    victim: nn.Module,
    evaluator: nn.Module,
    seed: int,
    n_boot: int,
    top_q: float = 0.1,
    cache: Path | None = None,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """One defense against both threat models, on the test split.

    Args:
        defense: The (fitted) defense.
        observations: Clean observations of ``"attacker_train"``, ``"attacker_val"`` and ``"test"``.
        data: ``{split: (images, labels)}`` of those splits.
        clean_attack: The ExpMI trained on clean explanations (the non-adaptive attacker).
        attack_config: Config of the fresh, adaptive ExpMI.
        victim: The explained classifier (re-classification accuracy).
        evaluator: The evaluation classifier (TCA, feature similarity).
        seed: Bootstrap seed.
        n_boot: Bootstrap resamples.
        top_q: Fraction of pixels of the top-pixel overlap.
        cache: Folder of the adaptive attack (see :func:`fit_attack`).
        show_progress: Progress bars.

    Returns:
        ``{"distortion": MeanCI, "top_overlap": MeanCI, "distortion_per_image", "defended_test",
        "non-adaptive": {...}, "adaptive": {...}, "reconstructions": {threat model: tensor}}``.
    """
    defended = {
        k: defend_observations(observations[k], defense, data[k][0]) for k in ("attacker_train", "attacker_val", "test")
    }
    test_x, test_y = data["test"]
    clean_maps = cast(Tensor, observations["test"].explanations)
    test_maps = cast(Tensor, defended["test"].explanations)
    dist = explanation_distortion(test_maps, clean_maps)
    overlap = top_pixel_overlap(test_maps, clean_maps, q=top_q)
    adaptive = fit_attack(
        ExpMIAttack,
        attack_config,
        (defended["attacker_train"], data["attacker_train"][0]),
        (defended["attacker_val"], data["attacker_val"][0]),
        cache=cache,
        show_progress=show_progress,
    )
    recs = {
        "non-adaptive": clean_attack.reconstruct(defended["test"]),
        "adaptive": adaptive.reconstruct(defended["test"]),
    }
    out: dict[str, Any] = {
        "distortion": summarize(dist.numpy(), seed=seed, n_boot=n_boot),
        "top_overlap": summarize(overlap.numpy(), seed=seed, n_boot=n_boot),
        "distortion_per_image": dist.numpy(),
        "defended_test": test_maps,
        "reconstructions": recs,
        "adaptive_attack": adaptive.describe(),
    }
    for threat, rec in recs.items():
        out[threat] = attack_metrics(rec, test_x, test_y, victim=victim, evaluator=evaluator, seed=seed, n_boot=n_boot)
    return out
