"""DDPM config, U-Net, schedules, sampling and per-example gradients under vmap."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, vmap

from genprov.exceptions import ConfigError
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
from genprov.utils.seeding import torch_generator

# 20 diffusion steps keep ancestral sampling fast in tests
FAST = DDPMConfig.preset("tiny", num_train_timesteps=20)


def _model(config: DDPMConfig = FAST, seed: int = 0) -> DDPM:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return DDPM(config).eval()


@pytest.mark.parametrize("name", sorted(DDPM_PRESETS))
def test_presets_are_valid_configs(name: str) -> None:
    config = DDPMConfig.preset(name)
    assert config.block_out_channels == DDPM_PRESETS[name]["block_out_channels"]
    assert all(c % config.groups == 0 for c in config.block_out_channels)
    assert DDPMConfig.from_dict(config.to_dict()) == config


def test_tiny_preset_is_small_and_has_attention() -> None:
    unet = build_unet(DDPMConfig.preset("tiny"))
    n_params = sum(p.numel() for p in unet.parameters())
    assert 1_000 < n_params < 100_000
    assert unet.config.down_block_types[-1] == "AttnDownBlock2D"
    assert unet.config.up_block_types[0] == "AttnUpBlock2D"


def test_no_attention_config() -> None:
    unet = build_unet(DDPMConfig(attention=False))
    assert "AttnDownBlock2D" not in unet.config.down_block_types
    assert unet.mid_block.attentions[0] is None


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"image_size": 12, "block_out_channels": (8, 16, 16, 16)}, "image_size"),
        ({"norm_num_groups": 3}, "norm_num_groups"),
        ({"attention_head_dim": 3}, "attention_head_dim"),
        ({"beta_schedule": "cosine"}, "beta_schedule"),
        ({"beta_start": 0.1, "beta_end": 0.01}, "beta_start"),
        ({"block_out_channels": ()}, "block_out_channels"),
    ],
)
def test_config_validation(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DDPMConfig(**changes)  # type: ignore[arg-type]


def test_preset_errors() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'tiny'"):
        DDPMConfig.preset("tinny")
    with pytest.raises(ConfigError, match="image_sise"):
        DDPMConfig.preset("tiny", image_sise=16)


def test_forward_shape_and_schedules_share_betas() -> None:
    config = DDPMConfig.preset("tiny", channels=3)
    model = _model(config)
    x = torch.randn(2, 3, 8, 8, generator=torch_generator(0))
    assert model(x, torch.tensor([0, 999])).shape == (2, 3, 8, 8)
    torch.testing.assert_close(build_scheduler(config).betas, build_ddim_scheduler(config).betas)
    torch.testing.assert_close(model.alphas_cumprod, build_scheduler(config).alphas_cumprod.float())


def test_add_noise_matches_the_scheduler() -> None:
    model = _model()
    x0 = torch.rand(3, 1, 8, 8, generator=torch_generator(0)) * 2 - 1
    noise = torch.randn(3, 1, 8, 8, generator=torch_generator(1))
    t = torch.tensor([0, 7, 19])
    torch.testing.assert_close(model.add_noise(x0, noise, t), build_scheduler(FAST).add_noise(x0, noise, t))


def test_vmap_per_example_gradients_equal_an_autograd_loop() -> None:
    model = _model(DDPMConfig.preset("tiny"))
    assert model.config.attention
    params = {k: v.detach() for k, v in model.named_parameters()}
    gen = torch_generator(0, "vmap")
    x0 = torch.rand(3, 1, 8, 8, generator=gen) * 2 - 1
    noise = torch.randn(3, 1, 8, 8, generator=gen)
    t = torch.tensor([5, 500, 990])

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, n: torch.Tensor, ti: torch.Tensor) -> torch.Tensor:
        x_t = model.add_noise(x[None], n[None], ti[None])
        eps = functional_call(model, p, (x_t, ti[None]))
        return (eps - n[None]).pow(2).mean()

    per_example = vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, x0, noise, t)
    for i in range(3):
        model.zero_grad()
        ddpm_loss(model, x0[i : i + 1], noise[i : i + 1], t[i : i + 1]).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None
            torch.testing.assert_close(per_example[name][i], p.grad, rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("ddim_steps", [None, 5])
def test_sampling_is_deterministic_and_batch_size_invariant(ddim_steps: int | None) -> None:
    model = _model()
    a = ddpm_sample(model, 5, seed=3, ddim_steps=ddim_steps, batch_size=2)
    b = ddpm_sample(model, 5, seed=3, ddim_steps=ddim_steps, batch_size=5)
    assert a.shape == (5, 1, 8, 8)
    assert float(a.abs().max()) <= 1
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    torch.testing.assert_close(a, ddpm_sample(model, 5, seed=3, ddim_steps=ddim_steps, batch_size=2), rtol=0, atol=0)
    assert not torch.allclose(a, ddpm_sample(model, 5, seed=4, ddim_steps=ddim_steps, batch_size=2))


def test_ddim_with_eta_is_seeded() -> None:
    model = _model()
    a = ddpm_sample(model, 2, seed=0, ddim_steps=4, eta=1.0)
    torch.testing.assert_close(a, ddpm_sample(model, 2, seed=0, ddim_steps=4, eta=1.0), rtol=0, atol=0)
    assert not torch.allclose(a, ddpm_sample(model, 2, seed=0, ddim_steps=4, eta=0.0))


def test_sampling_argument_errors() -> None:
    model = _model()
    with pytest.raises(ConfigError, match="ddim_steps"):
        ddpm_sample(model, 2, seed=0, ddim_steps=21)
    with pytest.raises(ConfigError, match="batch_size"):
        ddpm_sample(model, 2, seed=0, batch_size=0)
    assert ddpm_sample(model, 0, seed=0, ddim_steps=5).shape == (0, 1, 8, 8)
