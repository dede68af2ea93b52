"""``genprov reproduce similarity-t2i``: feature-similarity data attribution on real text-to-image customizations.

The customization benchmark of Wang et al., "Evaluating data attribution for text-to-image models" (ICCV
2023), rebuilt on a text-to-image pipeline instead of ``reproduce similarity``'s unconditional DDPM proxy
(which stays as it is, a separate experiment with its own results):

1. A base pipeline (``genprov.models.t2i``) is trained on the *pool* (a seeded subset of the train split,
   captioned from its labels), or opened from ``base_pipeline``.
2. Each object customization takes one held-out exemplar (never in the pool: a new concept) and trains a
   DreamBooth-style LoRA with a new token and prior preservation on it
   (:func:`genprov.models.t2i.train_dreambooth_lora`): the prompt ``"a handwritten <v1> seven"`` (DreamBooth's
   ``"a [V] [class noun]"``; ``object_prompt`` fixes another, e.g. ``"a photo of <v1> digit"``), the class prompt
   the caption the base learnt (``"a handwritten seven"``). Its samples from the prompt are the queries. Cases
   alternate seen and unseen classes; seen cases tune (by class, ``n_val_classes`` validate), unseen ones test.
3. Control: the base pipeline's samples from each case's class prompt with the case's seeds (paired samples):
   negative-control queries for the unseen cases, and the reference of each case's influence strength.
4. Attribution is measured with ``reproduce similarity``'s code (:func:`genprov.experiments.similarity.run.
   evaluate_extractors`): every extractor, untuned and tuned (a ``FeatureMapper`` per extractor, tuned on the seen
   cases, validated, tested on the unseen ones), Recall@K and mAP under protocols A and B, chance, hubness and the
   calibrated soft attribution (the exemplar's share).
5. Style cases (``n_style_cases``, after the object cases): a few held-out exemplars of distinct classes (all seen or
   all unseen), all transformed by one style (``"shear"`` by default, the transform the VAE keeps: see
   :mod:`~genprov.experiments.similarity_t2i.customization`), customized together with one prompt per exemplar that
   holds the token as the style and names the class (``"a <v1> handwritten seven"``, ``"a <v1> handwritten two"``,
   ...; class prompts: the captions); samples cycle through those prompts, the control through
   the captions with the same seeds. A sample's positives are all of the case's exemplars.
6. The influence of each customization: the share of its samples whose nearest neighbour among pool + exemplars is
   an exemplar, in pixels (against the paired base samples) and in each extractor's untuned features; and each kind
   of case on its own (``kinds`` in ``results.json``: its influence strength and its control; its retrieval rows are
   those whose ``case`` is the kind).

Layout: ``config.py`` (:class:`SimilarityT2IExperimentConfig`), ``customization.py`` (the benchmark:
plan, prompts, LoRAs, samples, control, per-case influence), ``results.py`` (:class:`SimilarityT2IResult`),
``run.py`` (:func:`run_similarity_t2i`, registered as ``"similarity-t2i"``), ``report.py``.
"""

from genprov.experiments.similarity_t2i.config import SimilarityT2IExperimentConfig
from genprov.experiments.similarity_t2i.customization import build_t2i_customizations, object_prompts
from genprov.experiments.similarity_t2i.results import CaseRow, KindRow, SimilarityT2IResult, StyleCaseRow
from genprov.experiments.similarity_t2i.run import run_similarity_t2i

__all__ = [
    "CaseRow",
    "KindRow",
    "SimilarityT2IExperimentConfig",
    "SimilarityT2IResult",
    "StyleCaseRow",
    "build_t2i_customizations",
    "object_prompts",
    "run_similarity_t2i",
]
