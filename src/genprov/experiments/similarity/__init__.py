"""``genprov reproduce similarity``: feature-similarity data attribution on a customization benchmark.

Small-scale version of the key experiment of Wang et al., "Evaluating data attribution for text-to-image
models" (ICCV 2023): ground truth is made by *customization* (a model fine-tuned on exemplars is, by
construction, influenced by them), and attribution is retrieval of those exemplars among the training
images by feature similarity (sec. 4-6 of the paper).

What a run does (models, the benchmark and features are cached under ``--out``; a re-run reuses them and
an interrupted run resumes):

1. Trains a base DDPM on a *pool* (a seeded subset of the train split; ``out/models/base``).
2. Builds the customization benchmark (:func:`~genprov.experiments.similarity.customization.build_customizations`,
   ``out/customizations``): object cases (one held-out exemplar) and style cases (a few exemplars of
   different classes under one :data:`~genprov.experiments.similarity.customization.STYLES` transform), each a copy of
   the base model fine-tuned with prior preservation, and ``n_samples`` samples per case (the queries).
   Cases whose classes are all in ``seen_classes`` are *seen*; they are split into a tuning part and a
   validation part (object cases by class: ``n_val_classes`` of the seen classes; style cases every third);
   every other case is *unseen* (the test set). :func:`~genprov.experiments.similarity.customization.influence_strength`
   says whether customization matters (exemplar pixel-NN rate) and whether it copies (near-copy rate).
3. Featurizes pool, exemplars, samples and a negative control (samples of the un-customized base model)
   with every extractor: ``pixels``, ``classifier`` (trained on the pool), ``simclr`` (trained on the pool),
   ``random-cnn`` (control) and ``efficientnet-lite0`` (ImageNet weights, when installed).
4. Tunes a :class:`~genprov.attribution.data.mapper.FeatureMapper` per extractor on the tuning cases:
   each candidate of ``tuning_grid`` (learning rate, one or two towers) is early-stopped on the validation
   cases' mAP, and the candidate best on validation is kept (the identity, i.e. untuned, is always a
   candidate, so tuning never loses on validation; the unseen test cases are never looked at).
5. Measures, untuned and tuned: Recall@5/10/100, Recall@|exemplars| and mAP per split and case kind, under
   protocol A (each query's candidates are the pool plus its own model's exemplars, as in the paper) and
   protocol B (the pool plus every exemplar); the control's mAP (positives: an unseen case's exemplars);
   chance level (random scores, same candidate sets); hub statistics; soft attribution calibrated on the
   validation cases (protocol B scores) with NLL / ECE / remaining influence on the unseen cases before and
   after calibration.

Writes ``results.json`` and ``report.html``.

Departures: the full digits run uses EfficientNet-Lite0 at 112x112 inputs instead of its native 224 (8x8
digits hold no detail that 224 would add, and 224 costs ~10x the CPU time); calibration and hub statistics
use protocol B, whose candidate set is shared by all queries (protocol A's differs per customization).

Layout: ``config.py`` (:class:`SimilarityExperimentConfig` and its presets), ``customization.py`` (builds the
customization benchmark; reading it and the tuning protocol live in :mod:`genprov.eval.customization`),
``run.py`` (:func:`run_similarity`, registered as ``"similarity"``, and the retrieval metrics), ``results.py``
(the typed :class:`SimilarityResult`), ``report.py`` (its HTML report and :func:`soft_gallery`) and ``demo.py``
(the demo's ``"similarity"`` section).
"""

from genprov.experiments.similarity.config import EXTRACTOR_NAMES, SimilarityExperimentConfig
from genprov.experiments.similarity.customization import CustomizationConfig, build_customizations
from genprov.experiments.similarity.demo import similarity_section
from genprov.experiments.similarity.report import soft_gallery
from genprov.experiments.similarity.results import RetrievalRow, SimilarityResult
from genprov.experiments.similarity.run import chance_level, retrieval_metrics, run_similarity

__all__ = [
    "EXTRACTOR_NAMES",
    "CustomizationConfig",
    "RetrievalRow",
    "SimilarityExperimentConfig",
    "SimilarityResult",
    "build_customizations",
    "chance_level",
    "retrieval_metrics",
    "run_similarity",
    "similarity_section",
    "soft_gallery",
]
