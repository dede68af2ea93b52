"""Explanation privacy: what model explanations leak about private inputs, and how to defend them.

Follows GNIME (Jeong et al., NeurIPS 2022, "Learning to Generate Inversion-Resistant Model
Explanations"), rebuilt in PyTorch:

- :mod:`~genprov.privacy.explainers`: the :class:`Explainer` base and the :data:`EXPLAINERS` registry
  (``gradient``, ``grad-cam``, ``lrp``, ``lrp-epsilon``); ``explain(x)`` gives (n, 1, H, W) maps in [0, 1],
  ``observe(x)`` the released :class:`Observations` (maps + prediction vectors).
- :mod:`~genprov.privacy.attacks`: inversion attacks :class:`ExpMIAttack` (explanation + prediction ->
  image) and :class:`PredMIAttack` (prediction -> image), registry :data:`ATTACKS`.
- :mod:`~genprov.privacy.defenses`: explainer wrappers :class:`GNIMEDefense` (learned noise) and
  :class:`GaussianNoiseDefense` (RND), registry :data:`DEFENSES`; :func:`measure_distortion` and
  :func:`matched_gaussian_noise` for equal-utility comparisons.
- :mod:`~genprov.privacy.splits`: :func:`privacy_splits`, the disjoint defender / attacker-train /
  attacker-val / test splits (optionally per identity).

Example:
    >>> import torch
    >>> from genprov.models.classifiers import CNNClassifier, ClassifierConfig
    >>> from genprov.privacy import EXPLAINERS
    >>> model = CNNClassifier(ClassifierConfig(width=4, feature_dim=8)).eval()
    >>> maps = EXPLAINERS.create("grad-cam", model).explain(torch.zeros(2, 1, 8, 8))
    >>> tuple(maps.shape)
    (2, 1, 8, 8)

Metrics (reconstruction MSE/PSNR/SSIM, re-classification accuracy, TCA, feature similarity, explanation
distortion and top-q% overlap) live in :mod:`genprov.eval.reconstruction`.
"""

from genprov.privacy.attacks import ATTACKS, AttackConfig, ExpMIAttack, InversionAttack, InversionNet, PredMIAttack
from genprov.privacy.defenses import (
    DEFENSES,
    GNIME_VARIANTS,
    Defense,
    GaussianNoiseConfig,
    GaussianNoiseDefense,
    GNIMEConfig,
    GNIMEDefense,
    NoiseGenerator,
    matched_gaussian_noise,
    measure_distortion,
)
from genprov.privacy.explainers import (
    EXPLAINERS,
    Explainer,
    ExplainerConfig,
    GradCAMConfig,
    GradCAMExplainer,
    GradientExplainer,
    LRPConfig,
    LRPEpsilonConfig,
    LRPExplainer,
    Observations,
    lrp_layers,
    postprocess_maps,
)
from genprov.privacy.splits import PrivacySplits, privacy_splits
from genprov.privacy.unet import ExpMIUNet

__all__ = [
    "ATTACKS",
    "DEFENSES",
    "EXPLAINERS",
    "GNIME_VARIANTS",
    "AttackConfig",
    "Defense",
    "ExpMIAttack",
    "ExpMIUNet",
    "Explainer",
    "ExplainerConfig",
    "GNIMEConfig",
    "GNIMEDefense",
    "GaussianNoiseConfig",
    "GaussianNoiseDefense",
    "GradCAMConfig",
    "GradCAMExplainer",
    "GradientExplainer",
    "InversionAttack",
    "InversionNet",
    "LRPConfig",
    "LRPEpsilonConfig",
    "LRPExplainer",
    "NoiseGenerator",
    "Observations",
    "PredMIAttack",
    "PrivacySplits",
    "lrp_layers",
    "matched_gaussian_noise",
    "measure_distortion",
    "postprocess_maps",
    "privacy_splits",
]
