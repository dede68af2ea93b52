"""Text-to-image latent diffusion: diffusers ``StableDiffusionPipeline`` folders, built, trained, opened, sampled.

Example:
    >>> from genprov.models.t2i import load_pipeline, sample_pipeline  # doctest: +SKIP
    >>> pipe = load_pipeline("runs/t2i")  # doctest: +SKIP
    >>> images = sample_pipeline(pipe, ["a photo of a horse"], 8, seed=0)  # doctest: +SKIP

``pipeline`` builds, saves (``save_pretrained``, safetensors only) and opens (any Stable Diffusion 1.x/2.x
folder, nothing downloaded) pipelines and samples them; ``tokenizer`` trains the CLIP BPE vocabulary on the
captions; ``captions`` captions images from their labels or a captions file; ``train`` trains the VAE, then the
U-Net and text encoder, resumably. ``denoiser`` encodes captioned images once (latents + text embeddings) and runs the U-Net on them for gradient
attribution; ``tiny_pipeline()`` / ``tiny_pipeline_config()`` are the tiny random
pipelines of unit tests. Needs the ``t2i`` extra (transformers, tokenizers); diffusers and transformers are
imported only when a pipeline is first built or opened.
"""

from genprov.models.t2i.captions import CaptionsError, captions_for, captions_from_labels, read_captions_file
from genprov.models.t2i.denoiser import LatentDenoiser, encode_examples, encode_prompts
from genprov.models.t2i.lora import (
    LORA_PARAMETER_GLOBS,
    LoRAConfig,
    add_lora,
    load_lora,
    lora_parameter_names,
    save_lora,
    train_dreambooth_lora,
    train_lora,
)
from genprov.models.t2i.pipeline import (
    MODEL_INDEX,
    PIPELINE_COMPONENTS,
    MissingComponentError,
    NotAPipelineError,
    PickleWeightsError,
    PipelineError,
    T2IConfig,
    build_components,
    build_pipeline,
    is_pipeline_folder,
    load_pipeline,
    load_sized_pipeline,
    sample_pipeline,
    save_pipeline,
    tiny_pipeline,
    tiny_pipeline_config,
)
from genprov.models.t2i.source import open_pipeline, pipeline_record, reopen_pipeline
from genprov.models.t2i.tokenizer import PromptTooLongError, check_prompts, train_tokenizer
from genprov.models.t2i.train import T2I_QUICK, T2ITrainConfig, T2ITrainResult, quick_configs, train_t2i

__all__ = [
    "LORA_PARAMETER_GLOBS",
    "MODEL_INDEX",
    "PIPELINE_COMPONENTS",
    "T2I_QUICK",
    "CaptionsError",
    "LatentDenoiser",
    "LoRAConfig",
    "MissingComponentError",
    "NotAPipelineError",
    "PickleWeightsError",
    "PipelineError",
    "PromptTooLongError",
    "T2IConfig",
    "T2ITrainConfig",
    "T2ITrainResult",
    "add_lora",
    "build_components",
    "build_pipeline",
    "captions_for",
    "captions_from_labels",
    "check_prompts",
    "encode_examples",
    "encode_prompts",
    "is_pipeline_folder",
    "load_lora",
    "load_pipeline",
    "load_sized_pipeline",
    "lora_parameter_names",
    "open_pipeline",
    "pipeline_record",
    "quick_configs",
    "read_captions_file",
    "reopen_pipeline",
    "sample_pipeline",
    "save_lora",
    "save_pipeline",
    "tiny_pipeline",
    "tiny_pipeline_config",
    "train_dreambooth_lora",
    "train_lora",
    "train_t2i",
    "train_tokenizer",
]
