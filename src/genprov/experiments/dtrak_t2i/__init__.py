"""``genprov reproduce dtrak-t2i``: D-TRAK vs TRAK on a LoRA of a text-to-image latent diffusion model, the
ArtBench-2 setting of Zheng et al., "Intriguing properties of data attribution on diffusion models" (ICLR 2024,
sec. 5), at small scale on a CPU.

What a run does (every model, store and measurement is cached under ``--out``; a re-run reuses them):

1. Data: a labelled dataset with at least 3 classes; the LoRA learns two of them (``lora_classes``: automobile
   vs horse on CIFAR-10, the ArtBench-2 analogue; 0 vs 1 on the built-in digits), the base pipeline the others.
   Captions come from the labels (``"a photo of a horse"``, ``"a handwritten zero"``) or a captions file.
2. Base pipeline: ``genprov.models.t2i.train_t2i`` on the other classes (``base/``), or a given pipeline folder
   (``base_pipeline``).
3. LoRA: ``train_lora`` on ``n_train`` images of the two classes (``lora/full``); it generates the report's grid
   and the generated queries from the two class prompts (``samples.npz``); the real queries are held-out test
   images of the two classes.
4. Features: TRAK (``loss``) and D-TRAK (``squared-l2-norm``) on the LoRA parameters only
   (``TRAKAttributor.for_pipeline`` with ``include=LORA_PARAMETER_GLOBS``) at K = ``n_timesteps`` uniform timesteps,
   sjlt projection (``stores/``); pixel similarity and latent similarity (cosine of the VAE latents, standing in
   for the paper's CLIP) as baselines.
5. LDS: ``n_subsets`` random halves of the LoRA training set, each retraining the LoRA only on the same base with
   the same LoRA config and epochs, ``n_seeds`` seeds (``lora/subset-*``); each query's conditional latent
   diffusion loss given its prompt over fixed draws (``genprov.eval.lds.measure_conditional_losses``,
   ``losses/``); ``evaluate_lds`` with lambda chosen on validation halves, CIs, paired differences and the noise
   ceiling; a study repeats it at other feature settings (K = 100).
6. Report: sample grid per prompt, top influencers of generated queries, the LDS table beside the paper's.

The featurization, the variant study and the LDS tables are ``reproduce dtrak``'s
(:mod:`genprov.experiments.dtrak`). Layout: ``config.py``, ``run.py`` (:func:`run_dtrak_t2i`, registered as
``"dtrak-t2i"``), ``results.py``, ``report.py`` and ``demo.py`` (the demo's ``"t2i"`` section).
"""

from genprov.experiments.dtrak_t2i.config import PAPER_ARTBENCH2, DTRAKT2IExperimentConfig
from genprov.experiments.dtrak_t2i.demo import t2i_section
from genprov.experiments.dtrak_t2i.results import DTRAKT2IResult, PaperRow, T2IDataInfo, T2IModelInfo
from genprov.experiments.dtrak_t2i.run import BENCHMARK_FILE, run_dtrak_t2i

__all__ = [
    "BENCHMARK_FILE",
    "PAPER_ARTBENCH2",
    "DTRAKT2IExperimentConfig",
    "DTRAKT2IResult",
    "PaperRow",
    "T2IDataInfo",
    "T2IModelInfo",
    "run_dtrak_t2i",
    "t2i_section",
]
