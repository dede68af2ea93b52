"""The model zoo: image GANs, DDPMs, classifiers, tabular GANs; their training, checkpoints and sampling.

Example:
    >>> from genprov.models import GANConfig, TrainConfig, train_gan, sample
    >>> result = train_gan(GANConfig(arch="dcgan"), TrainConfig(n_steps=2000), dataset, "runs/dcgan")  # doctest: +SKIP
    >>> images = sample("runs/dcgan", 64, seed=0)  # doctest: +SKIP

Every generator exposes ``final_layer``, ``final_activation`` and ``penultimate(z)`` for final-layer
inversion (FLIPAD); ``DDPM`` wraps a diffusers ``UNet2DModel`` that works under ``torch.func.vmap``
(D-TRAK); ``CNNClassifier`` exposes ``features`` and ``last_conv`` (explainers). Checkpoints are a folder
with ``config.json`` + ``model.safetensors``; nothing is pickled. diffusers is imported only when a
U-Net or scheduler is first built.
"""

from genprov.models.checkpoints import (
    MODEL_KINDS,
    LoadedCheckpoint,
    ModelKind,
    is_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from genprov.models.classifiers import ClassifierConfig, CNNClassifier
from genprov.models.diffusion import (
    DDPM,
    DDPM_PRESETS,
    DDPMConfig,
    build_ddim_scheduler,
    build_scheduler,
    build_unet,
    ddpm_loss,
    ddpm_sample,
)
from genprov.models.gans import (
    GAN_OBJECTIVES,
    GAN_SIZES,
    Discriminator,
    EnergyDiscriminator,
    GANConfig,
    GANObjective,
    Generator,
    build_gan,
)
from genprov.models.sampling import sample, save_samples
from genprov.models.tabular import TabularDiscriminator, TabularGANConfig, TabularGenerator
from genprov.models.train_config import TrainConfig
from genprov.models.training import (
    TrainResult,
    default_train_config,
    train_classifier,
    train_ddpm,
    train_gan,
    train_tabular_gan,
)

__all__ = [
    "DDPM",
    "DDPM_PRESETS",
    "GAN_OBJECTIVES",
    "GAN_SIZES",
    "MODEL_KINDS",
    "CNNClassifier",
    "ClassifierConfig",
    "DDPMConfig",
    "Discriminator",
    "EnergyDiscriminator",
    "GANConfig",
    "GANObjective",
    "Generator",
    "LoadedCheckpoint",
    "ModelKind",
    "TabularDiscriminator",
    "TabularGANConfig",
    "TabularGenerator",
    "TrainConfig",
    "TrainResult",
    "build_ddim_scheduler",
    "build_gan",
    "build_scheduler",
    "build_unet",
    "ddpm_loss",
    "ddpm_sample",
    "default_train_config",
    "is_checkpoint",
    "load_checkpoint",
    "sample",
    "save_checkpoint",
    "save_samples",
    "train_classifier",
    "train_ddpm",
    "train_gan",
    "train_tabular_gan",
]
