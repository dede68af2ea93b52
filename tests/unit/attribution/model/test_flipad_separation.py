"""FLIPAD tells its own generator's samples from another generator's (tiny GANs trained on 8x8 digits).

The other unit tests check shapes and a threshold that holds by construction; this one checks that the
method works: FLIPAD is fitted on one GAN's samples (negatives: real digits only, as an owner has them),
and its scores must rank held-out own samples above samples of GANs it never saw, of the same and of
another architecture. A random detector gives an AUC near 0.5 and inverted scores one near 0, so the
margin fails on either. (An under-trained Deep SAD, e.g. 10 epochs at the default learning rate, does
invert the ranking here: the detector must be trained enough to push the negatives away.)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from genprov.attribution.model import DeepSADConfig, FinalLayerInversionAttributor, FinalLayerInversionAttributorConfig
from genprov.data import load_dataset
from genprov.eval import roc_auc
from genprov.models.gans import GANConfig
from genprov.models.training import default_train_config, train_gan

DIGITS = load_dataset("digits").images  # (1437, 1, 8, 8) in [-1, 1]
CONFIG = FinalLayerInversionAttributorConfig(
    max_iter=100,
    n_anchor=64,
    holdout_fraction=0.25,
    detector=DeepSADConfig(widths=(8,), rep_dim=4, n_epochs=50, lr=5e-3, lr_milestones=(), batch_size=32),
)


def _gan(arch: str, seed: int, folder: Path) -> nn.Module:
    """A GAN with a 4-channel penultimate layer trained for 200 steps on the first 1000 digits."""
    config = GANConfig(arch=arch, image_size=8, width=4, latent_dim=8)
    train = default_train_config(config, n_steps=200, seed=seed, checkpoint_every=0, log_every=1000)
    return train_gan(config, train, DIGITS[:1000], folder, show_progress=False).model.eval()


def _samples(generator: nn.Module, n: int, seed: int) -> Tensor:
    with torch.no_grad():
        out: Tensor = generator(generator.sample_latent(n, seed=seed))
    return out


def test_flipad_ranks_own_samples_above_unseen_generators(tmp_path: Path) -> None:
    own = _gan("dcgan", 0, tmp_path / "own")
    flipad = FinalLayerInversionAttributor(own, CONFIG).fit(_samples(own, 96, seed=1), negatives=DIGITS[1000:1096])
    own_scores = flipad.score_samples(_samples(own, 64, seed=2))  # held out: never seen in fit
    assert roc_auc(own_scores, flipad.score_samples(DIGITS[1100:1164])) > 0.9
    for arch, seed in (("dcgan", 1), ("lsgan", 2)):
        other = _gan(arch, seed, tmp_path / f"{arch}-{seed}")
        other_scores = flipad.score_samples(_samples(other, 64, seed=3))
        auc = roc_auc(own_scores, other_scores)
        assert auc > 0.9, (arch, auc)
        # the decision rule claims most own samples and few of the other generator's
        claimed_own = float((own_scores >= flipad.threshold_).float().mean())
        claimed_other = float((other_scores >= flipad.threshold_).float().mean())
        assert claimed_own - claimed_other > 0.5, (arch, claimed_own, claimed_other)
