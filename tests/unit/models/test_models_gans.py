"""GAN architectures, final-layer access and objectives."""

from __future__ import annotations

import pytest
import torch

from genprov.exceptions import ConfigError
from genprov.models.gans import (
    GAN_OBJECTIVES,
    GAN_SIZES,
    Discriminator,
    EnergyDiscriminator,
    GANConfig,
    Generator,
    build_gan,
    gradient_penalty,
    pull_away_term,
)
from genprov.utils.seeding import torch_generator

ARCHS = ["dcgan", "wgan-gp", "lsgan", "ebgan"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size", sorted(GAN_SIZES))
def test_every_arch_builds_at_every_size(arch: str, size: int) -> None:
    for channels in (1, 3):
        config = GANConfig(arch=arch, image_size=size, channels=channels, latent_dim=8, width=4)
        modules = build_gan(config)
        G, D = modules["generator"], modules["discriminator"]
        assert isinstance(G, Generator)
        with torch.no_grad():
            x = G(G.sample_latent(3, seed=0))
        assert x.shape == (3, channels, size, size)
        assert float(x.abs().max()) <= 1
        assert D(x).shape == (3,)
        assert isinstance(D, EnergyDiscriminator if arch == "ebgan" else Discriminator)


@pytest.mark.parametrize("size", sorted(GAN_SIZES))
def test_final_layer_and_penultimate_reproduce_the_output(size: int) -> None:
    G = Generator(GANConfig(image_size=size, latent_dim=8, width=4)).eval()
    z = G.sample_latent(5, seed=1)
    with torch.no_grad():
        h = G.penultimate(z)
    assert h.shape == (5, 4, size // 2, size // 2)
    assert float(h.min()) >= 0  # after ReLU
    assert isinstance(G.final_layer, torch.nn.ConvTranspose2d)
    assert G.final_activation == "tanh"
    with torch.no_grad():
        torch.testing.assert_close(torch.tanh(G.final_layer(h)), G(z), rtol=0, atol=0)


def test_sample_latent_is_deterministic_per_index_and_leaves_global_rng_alone() -> None:
    G = Generator(GANConfig(latent_dim=6, width=4))
    state = torch.random.get_rng_state()
    a = G.sample_latent(6, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.testing.assert_close(a, G.sample_latent(6, seed=3), rtol=0, atol=0)
    torch.testing.assert_close(a[4:], G.sample_latent(2, seed=3, start=4), rtol=0, atol=0)
    assert not torch.equal(a, G.sample_latent(6, seed=4))
    assert a.shape == (6, 6)


def test_wrong_latent_shape_is_a_clear_error() -> None:
    G = Generator(GANConfig(latent_dim=6, width=4))
    with pytest.raises(ConfigError, match=r"\(n, 6\)"):
        G(torch.zeros(2, 5))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"arch": "dcgam"}, "Did you mean 'dcgan'"),
        ({"image_size": 12}, "image_size"),
        ({"channels": 2}, "channels"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"width": 2.5}, "width"),
        ({"gp_weight": -1.0}, "gp_weight"),
    ],
)
def test_config_validation(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        GANConfig(**changes)  # type: ignore[arg-type]


def test_config_round_trip() -> None:
    config = GANConfig(arch="wgan-gp", image_size=28, channels=1, latent_dim=10, width=6)
    assert GANConfig.from_dict(config.to_dict()) == config


def test_wgan_critic_has_no_batchnorm() -> None:
    D = build_gan(GANConfig(arch="wgan-gp", image_size=16, width=4))["discriminator"]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())
    assert any(isinstance(m, torch.nn.LayerNorm) for m in D.modules())


@pytest.mark.parametrize("arch", ARCHS)
def test_each_objective_trains_the_discriminator(arch: str, tiny_images: torch.Tensor) -> None:
    config = GANConfig(arch=arch, image_size=8, latent_dim=8, width=8)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        modules = build_gan(config)
    G, D = modules["generator"], modules["discriminator"]
    objective = config.objective()
    real = tiny_images[:16]
    with torch.no_grad():
        fake = G(G.sample_latent(16, seed=0))
    opt = torch.optim.Adam(D.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = objective.discriminator_loss(D, real, fake, torch_generator(0, "gp"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    g_loss = objective.generator_loss(D, G(G.sample_latent(16, seed=1)))
    g_loss.backward()
    assert all(p.grad is not None for p in G.parameters())


def test_objectives_registry_lists_all_archs() -> None:
    assert GAN_OBJECTIVES.names() == sorted(ARCHS)


def test_gradient_penalty_is_zero_for_a_unit_slope_critic() -> None:
    w = torch.tensor([0.6, 0.8])

    class Linear(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ w

    real, fake = torch.randn(5, 2, generator=torch_generator(0)), torch.randn(5, 2, generator=torch_generator(1))
    gp = gradient_penalty(Linear(), real, fake, torch_generator(2))
    assert float(gp) == pytest.approx(0.0, abs=1e-12)


def test_pull_away_term() -> None:
    orthogonal = torch.eye(3)
    assert float(pull_away_term(orthogonal)) == pytest.approx(0.0)
    identical = torch.ones(4, 3)
    assert float(pull_away_term(identical)) == pytest.approx(1.0)
    assert float(pull_away_term(torch.ones(1, 3))) == 0.0
