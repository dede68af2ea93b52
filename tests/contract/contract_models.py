"""Models the contract suites share besides the DCGAN (imported by name)."""

from __future__ import annotations

import pytest
import torch
from torch import nn


def tiny_autoencoder() -> nn.Module:
    """A random diffusers AutoencoderKL of 1-channel 8x8 images (2 stages: 4x4x2 latents), in eval mode."""
    diffusers = pytest.importorskip("diffusers")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae: nn.Module = diffusers.AutoencoderKL(
            in_channels=1,
            out_channels=1,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(4, 8),
            layers_per_block=1,
            latent_channels=2,
            norm_num_groups=4,
            sample_size=8,
        )
    return vae.eval()
