"""Metrics for every genprov capability: pure functions on tensors and arrays (no training, no I/O).

- :mod:`genprov.metrics` (one layer below, shared with the methods): threshold at a false-negative rate,
  average precision; re-exported here.
- :mod:`~genprov.eval.model_attribution`: ROC AUC, ROC curves, balanced accuracy, TPR at a fixed FPR, attributability of keyed generators.
- :mod:`~genprov.eval.data_attribution`: linear datamodeling score (LDS) and its summary.
- :mod:`~genprov.eval.retrieval`: Recall@K, (mean) average precision, k-occurrence and hubness.
- :mod:`~genprov.eval.reconstruction`: per-image MSE, PSNR and SSIM; re-classification accuracy, TCA,
  feature similarity; explanation distortion and top-q% pixel overlap.
- :mod:`~genprov.eval.generation`: Fréchet distance in a pluggable feature space.
- :mod:`~genprov.eval.stats`: means with seeded bootstrap confidence intervals.

Every function documents what "higher" means and raises :class:`~genprov.exceptions.DataError` with a
clear message on empty, mismatched or non-finite input.

Evaluation protocols that the CLI and the reproductions share sit beside the metrics, in modules not
imported here (they train models or read benchmark folders): :mod:`~genprov.eval.lds` (LDS benchmark),
:mod:`~genprov.eval.privacy_audit` (the model-inversion audit) and :mod:`~genprov.eval.customization`
(the customization benchmark and the feature-mapper tuning protocol of ``genprov similarity tune``).
"""

from genprov.eval.data_attribution import lds_summary, linear_datamodeling_score
from genprov.eval.generation import FrechetDistance, frechet_distance, frechet_distance_from_stats, gaussian_stats
from genprov.eval.model_attribution import (
    RocCurve,
    accuracy_at_threshold,
    attributability,
    distinguishability,
    roc_auc,
    roc_curve,
    tpr_at_fpr,
)
from genprov.eval.reconstruction import (
    classification_hits,
    explanation_distortion,
    feature_similarity,
    mse,
    psnr,
    reclassification_accuracy,
    reconstruction_summary,
    ssim,
    target_classification_accuracy,
    top_pixel_overlap,
)
from genprov.eval.retrieval import (
    k_occurrence,
    k_occurrence_skewness,
    mean_average_precision,
    recall_at_k,
    recall_per_query,
)
from genprov.eval.stats import MeanCI, paired_difference_ci, summarize
from genprov.metrics import average_precision, threshold_at_fnr

__all__ = [
    "FrechetDistance",
    "MeanCI",
    "RocCurve",
    "accuracy_at_threshold",
    "attributability",
    "average_precision",
    "classification_hits",
    "distinguishability",
    "explanation_distortion",
    "feature_similarity",
    "frechet_distance",
    "frechet_distance_from_stats",
    "gaussian_stats",
    "k_occurrence",
    "k_occurrence_skewness",
    "lds_summary",
    "linear_datamodeling_score",
    "mean_average_precision",
    "mse",
    "paired_difference_ci",
    "psnr",
    "recall_at_k",
    "recall_per_query",
    "reclassification_accuracy",
    "reconstruction_summary",
    "roc_auc",
    "roc_curve",
    "ssim",
    "summarize",
    "target_classification_accuracy",
    "threshold_at_fnr",
    "top_pixel_overlap",
    "tpr_at_fpr",
]
