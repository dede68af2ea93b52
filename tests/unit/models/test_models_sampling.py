"""sample() over every generative kind, and save_samples()."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from genprov.exceptions import CheckpointError, ConfigError
from genprov.models.checkpoints import load_checkpoint, save_checkpoint
from genprov.models.classifiers import ClassifierConfig, CNNClassifier
from genprov.models.diffusion import DDPM, DDPMConfig
from genprov.models.gans import GANConfig, Generator
from genprov.models.sampling import GRID_FILE, SAMPLES_FILE, sample, save_samples
from genprov.models.tabular import TabularGANConfig, TabularGenerator


def _seeded(factory: object) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = factory()  # type: ignore[operator]
    assert isinstance(module, torch.nn.Module)
    return module


GAN_CONFIG = GANConfig(image_size=16, channels=3, latent_dim=6, width=4)


@pytest.mark.parametrize(
    ("build", "shape"),
    [
        (lambda: Generator(GAN_CONFIG), (3, 16, 16)),
        (lambda: DDPM(DDPMConfig.preset("tiny", num_train_timesteps=10)), (1, 8, 8)),
        (lambda: TabularGenerator(TabularGANConfig(n_features=4, hidden=(8,))), (4,)),
    ],
    ids=["gan", "ddpm", "tabular"],
)
def test_sampling_is_deterministic_and_batch_invariant(build: object, shape: tuple[int, ...]) -> None:
    model = _seeded(build)
    a = sample(model, 7, seed=2, batch_size=3, ddim_steps=4)
    assert a.shape == (7, *shape)
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, sample(model, 7, seed=2, batch_size=3, ddim_steps=4), rtol=0, atol=0)
    torch.testing.assert_close(a, sample(model, 7, seed=2, batch_size=7, ddim_steps=4), rtol=0, atol=1e-4)
    torch.testing.assert_close(a[:3], sample(model, 3, seed=2, batch_size=3, ddim_steps=4), rtol=0, atol=0)
    assert not torch.allclose(a, sample(model, 7, seed=3, batch_size=3, ddim_steps=4))
    assert model.training  # the caller's mode is restored


def test_gan_images_are_in_range_and_equal_generator_outputs() -> None:
    G = _seeded(lambda: Generator(GAN_CONFIG)).eval()
    assert isinstance(G, Generator)
    x = sample(G, 5, seed=0)
    assert float(x.abs().max()) <= 1
    with torch.no_grad():
        torch.testing.assert_close(x, G(G.sample_latent(5, seed=0)))


def test_sample_from_a_checkpoint_folder(tmp_path: Path) -> None:
    G = _seeded(lambda: Generator(GAN_CONFIG))
    save_checkpoint(tmp_path, "gan", {"generator": G}, GAN_CONFIG)
    from_path = sample(tmp_path, 4, seed=1)
    torch.testing.assert_close(from_path, sample(load_checkpoint(tmp_path), 4, seed=1))
    torch.testing.assert_close(from_path, sample(G.eval(), 4, seed=1))


def test_classifiers_and_bad_arguments_are_refused(tmp_path: Path) -> None:
    clf = CNNClassifier(ClassifierConfig())
    with pytest.raises(ConfigError, match="classifiers are not generative"):
        sample(clf, 2, seed=0)
    with pytest.raises(ConfigError, match="batch_size"):
        sample(Generator(GAN_CONFIG), 2, seed=0, batch_size=0)
    with pytest.raises(CheckpointError, match="does not exist"):
        sample(tmp_path / "missing", 2, seed=0)


def test_save_samples_writes_npz_and_grid(tmp_path: Path) -> None:
    x = sample(_seeded(lambda: Generator(GAN_CONFIG)), 6, seed=0)
    paths = save_samples(x, tmp_path / "out", scale=2)
    assert paths == {"samples": tmp_path / "out" / SAMPLES_FILE, "grid": tmp_path / "out" / GRID_FILE}
    with np.load(paths["samples"], allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["samples"], x.numpy())
    assert paths["grid"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = torch.zeros(3, 4)
    assert set(save_samples(rows, tmp_path / "tab")) == {"samples"}
