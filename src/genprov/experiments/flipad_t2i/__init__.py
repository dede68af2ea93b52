"""FLIPAD on a text-to-image pipeline's VAE decoder (``genprov reproduce flipad-t2i``): the paper's Table 4 at
small scale, with pipelines trained here instead of Stable Diffusion.

Laszkiewicz et al., "Single-Model Attribution of Generative Models Through Final-Layer Inversion", ICML 2024,
Table 4: Stable Diffusion's outputs attributed through the last layer of its VAE decoder. Here the owner's
pipeline (``genprov.models.t2i.train_t2i``, or ``--set base_pipeline=DIR``) makes the own samples; the test
sources are real test images and another pipeline (another training seed on the same data, or
``--set other_pipeline=DIR``), plus the hard case: a pipeline that reuses the owner's VAE (``vae_from``) and
differs only in its U-Net and text encoder. Methods: FLIPAD (lasso inversion of ``decoder.conv_out``,
identity activation, + Deep SAD), the raw-pixel and DCT baselines of Tables 1-3 and AEROBLADE (training-free
reconstruction error under the own VAE, encoder-feature and pixel-l2 distances); accuracy at the 0.5% FNR
threshold and AUC on held-out test samples, with the evaluation code of ``genprov reproduce flipad``.

Layout: ``config.py`` (:class:`FlipadT2IExperimentConfig`), ``run.py`` (:func:`run_flipad_t2i`), ``results.py``
(:class:`FlipadT2IResult`), ``report.py``.
"""

from genprov.experiments.flipad_t2i.config import METHODS, FlipadT2IExperimentConfig
from genprov.experiments.flipad_t2i.results import FlipadT2IResult, PipelineInfo
from genprov.experiments.flipad_t2i.run import SOURCES, run_flipad_t2i

__all__ = ["METHODS", "SOURCES", "FlipadT2IExperimentConfig", "FlipadT2IResult", "PipelineInfo", "run_flipad_t2i"]
