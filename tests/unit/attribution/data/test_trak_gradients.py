"""TRAK features: per-example gradients against an autograd loop, noise keys, schedules, parameter filters."""

from __future__ import annotations

import copy

import pytest
import torch

from genprov.attribution.data.trak import (
    TRAKAttributor,
    TRAKConfig,
    query_key,
    select_parameters,
    timestep_schedule,
)
from genprov.exceptions import ConfigError, DataError
from genprov.models.diffusion import DDPM, DDPMConfig, build_scheduler
from genprov.utils.seeding import torch_generator

TINY = DDPMConfig.preset("tiny")


@pytest.fixture(scope="module")
def model() -> DDPM:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return DDPM(TINY).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(5, 1, 8, 8, generator=torch_generator(0, "trak-images")) * 2 - 1


def _reference_gradients(
    model: DDPM, attributor: TRAKAttributor, x: torch.Tensor, keys: list[int | str]
) -> list[dict[str, torch.Tensor]]:
    """Per-example autograd loop in float64 with the attributor's noise and timesteps."""
    ref = copy.deepcopy(model).double()
    abar = build_scheduler(TINY).alphas_cumprod.to(torch.float64)
    t = torch.tensor(attributor.timesteps)
    noise = attributor.noise(keys, x.shape[1:]).double()
    selected = set(attributor.parameter_names)
    out = []
    for i in range(len(x)):
        ref.zero_grad()
        a = abar[t].reshape(-1, 1, 1, 1)
        x_t = a.sqrt() * x[i : i + 1].double() + (1 - a).sqrt() * noise[i]
        eps = ref(x_t, t)
        f = attributor._output_fn(eps, noise[i], t, attributor._schedule)
        f.mean().backward()
        out.append({n: p.grad.float() for n, p in ref.named_parameters() if n in selected and p.grad is not None})
    return out


@pytest.mark.parametrize("per_example", ["vmap", "hooks"])
@pytest.mark.parametrize("output_function", ["loss", "squared-l2-norm", "l1-norm", "weighted-mse"])
def test_gradients_equal_a_float64_autograd_loop(model, images, output_function, per_example) -> None:
    config = TRAKConfig(output_function=output_function, n_timesteps=3, seed=1, per_example=per_example)
    attributor = TRAKAttributor(model, config=config)
    grads = attributor.gradients(images[:3], [0, 1, 2])
    reference = _reference_gradients(model, attributor, images[:3], [0, 1, 2])
    assert set(grads) == {n for n, _ in model.named_parameters()}
    for i, ref in enumerate(reference):
        scale = max(float(v.abs().max()) for v in ref.values())  # some biases have exactly zero gradient (GroupNorm)
        for name, value in ref.items():
            torch.testing.assert_close(grads[name][i] / scale, value / scale, rtol=0, atol=1e-5, msg=name)


def test_a_parameter_filter_restricts_the_gradients(model, images) -> None:
    config = TRAKConfig(include=("unet.up_blocks.*", "unet.conv_out.*"), exclude=("*.bias",), n_timesteps=2)
    attributor = TRAKAttributor(model, config=config)
    names = attributor.parameter_names
    assert names and all(n.startswith(("unet.up_blocks.", "unet.conv_out.")) and not n.endswith(".bias") for n in names)
    grads = attributor.gradients(images[:2], [0, 1])
    assert sorted(grads) == sorted(names)
    full = TRAKAttributor(model, config=TRAKConfig(n_timesteps=2)).gradients(images[:2], [0, 1])
    for name in names:
        torch.testing.assert_close(grads[name], full[name], rtol=1e-5, atol=1e-7)
    sizes = dict(model.named_parameters())
    identity = TRAKAttributor(model, config=config.replace(projector="identity"))
    assert identity.feature_dim == sum(sizes[n].numel() for n in names)
    with pytest.raises(ConfigError, match="select no parameter"):
        select_parameters(model, include=("nothing.*",))


def test_noise_is_keyed_by_index_and_timestep_not_batch_position(model, images) -> None:
    attributor = TRAKAttributor(model, config=TRAKConfig(n_timesteps=2, proj_dim=64, batch_size=2))
    all_at_once = attributor.featurize(images, torch.arange(5))
    part = attributor.featurize(images[3:5], torch.tensor([3, 4]))
    torch.testing.assert_close(part, all_at_once[3:5], rtol=1e-5, atol=1e-6)
    relabelled = attributor.featurize(images[3:5], torch.tensor([0, 1]))
    assert not torch.allclose(relabelled, part)
    noise = attributor.noise([7], (1, 8, 8))
    expected = torch.randn(1, 8, 8, generator=torch_generator(0, "trak-noise", 7, attributor.timesteps[1]))
    torch.testing.assert_close(noise[0, 1], expected)


def test_query_features_do_not_depend_on_the_other_queries(model, images) -> None:
    attributor = TRAKAttributor(model, config=TRAKConfig(n_timesteps=2, proj_dim=64))
    together = attributor.featurize_queries(images[:3])
    torch.testing.assert_close(attributor.featurize_queries(images[2:3]), together[2:3], rtol=1e-5, atol=1e-6)
    assert query_key(images[0]) == query_key(images[0].clone()) != query_key(images[1])


def test_batch_position_noise_couples_examples_as_the_original(model, images) -> None:
    config = TRAKConfig(n_timesteps=2, proj_dim=64, noise="batch-position", noise_batch=3)
    attributor = TRAKAttributor(model, config=config)
    noise = attributor.noise([0, 1, 3, 4], (1, 8, 8))
    torch.testing.assert_close(noise[2], noise[0])  # positions 0 of two batches of 3 share their noise
    torch.testing.assert_close(noise[3], noise[1])
    assert not torch.allclose(noise[0], noise[1]) and not torch.allclose(noise[0, 0], noise[0, 1])
    t = attributor.timesteps[1]
    torch.testing.assert_close(
        noise[1, 1], torch.randn(3, 1, 8, 8, generator=torch_generator(0, "trak-batch-noise", t))[1]
    )
    # queries take the noise of their position: query 0 and training example 3 see the same noise
    features = attributor.featurize(images[:1], [3])
    torch.testing.assert_close(attributor.featurize_queries(images[:1]), features, rtol=1e-5, atol=1e-6)
    with pytest.raises(DataError, match="integer positions"):
        attributor.noise(["a-query-hash"], (1, 8, 8))
    # the per-example spec is unchanged (existing stores stay valid); the coupled one names its noise
    assert "noise" not in TRAKConfig().feature_spec()
    assert config.feature_spec()["noise"] == "batch-position"
    with pytest.raises(ConfigError, match="noise"):
        TRAKConfig(noise="per-batch")


def test_timestep_schedules() -> None:
    assert timestep_schedule(TRAKConfig(), 1000) == (0, 100, 200, 300, 400, 500, 600, 700, 800, 900)
    assert timestep_schedule(TRAKConfig(schedule="cumulative", n_timesteps=4), 1000) == (0, 1, 2, 3)
    assert timestep_schedule(TRAKConfig(timesteps=(5, 50)), 1000) == (5, 50)
    assert timestep_schedule(TRAKConfig(n_timesteps=3), 20) == (0, 6, 12)
    with pytest.raises(ConfigError, match="below the model's T=20"):
        timestep_schedule(TRAKConfig(timesteps=(25,)), 20)
    with pytest.raises(ConfigError, match="distinct"):
        TRAKConfig(timesteps=(1, 1))


def test_config_validation_and_input_checks(model) -> None:
    with pytest.raises(ConfigError, match="Did you mean 'squared-l2-norm'"):
        TRAKConfig(output_function="squared-l2norm")
    with pytest.raises(ConfigError, match="scoring"):
        TRAKConfig(scoring="if")
    with pytest.raises(ConfigError, match="float16"):
        TRAKConfig(dtype="float16")
    assert TRAKConfig.from_dict(TRAKConfig(include=("a*",), timesteps=(1, 2)).to_dict()) == TRAKConfig(
        include=("a*",), timesteps=(1, 2)
    )
    attributor = TRAKAttributor(model)
    with pytest.raises(DataError, match=r"\(n, 1, 8, 8\)"):
        attributor.featurize(torch.zeros(2, 1, 16, 16), torch.arange(2))
    with pytest.raises(DataError, match="one index per example"):
        attributor.gradients(torch.zeros(2, 1, 8, 8), [0])


class _CountBackward(torch.autograd.Function):
    """Identity that counts how often the backward pass runs through it (works under vmap)."""

    calls = 0
    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.clone()

    @staticmethod
    def setup_context(ctx: object, inputs: object, output: object) -> None:
        pass

    @staticmethod
    def backward(ctx: object, grad_out: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        _CountBackward.calls += 1
        return grad_out


@pytest.mark.parametrize("per_example", ["vmap", "loop", "hooks"])
def test_the_filter_restricts_the_backward_pass_itself(images, per_example) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = DDPM(TINY).eval()
    model.unet.conv_norm_out.register_forward_hook(lambda mod, inp, out: _CountBackward.apply(out))
    passes = 2 if per_example == "loop" else 1  # one backward pass per example, or one for the batch
    for include, expected in ((("unet.conv_out.*",), 0), ((), passes)):
        _CountBackward.calls = 0
        config = TRAKConfig(include=include, n_timesteps=2, proj_dim=16, per_example=per_example)
        TRAKAttributor(model, config=config).featurize(images[:2], torch.arange(2))
        assert _CountBackward.calls == expected, include  # the last layer's input is never back-propagated through


def test_frozen_models_such_as_ema_copies_are_attributed(model, images) -> None:
    frozen = copy.deepcopy(model).requires_grad_(False)
    a = TRAKAttributor(frozen, config=TRAKConfig(n_timesteps=2, proj_dim=16)).featurize(images[:2], torch.arange(2))
    b = TRAKAttributor(model, config=TRAKConfig(n_timesteps=2, proj_dim=16)).featurize(images[:2], torch.arange(2))
    torch.testing.assert_close(a, b)


def test_loop_vmap_and_hooks_give_the_same_features(model, images) -> None:
    base = TRAKConfig(n_timesteps=2, proj_dim=32, batch_size=3)
    vmapped = TRAKAttributor(model, config=base.replace(per_example="vmap"))
    looped = TRAKAttributor(model, config=base.replace(per_example="loop"))
    hooked = TRAKAttributor(model, config=base.replace(per_example="hooks"))
    assert TRAKAttributor(model, config=base).per_example_mode == "hooks"  # auto: every parameter is covered
    assert not looped.uses_vmap and vmapped.uses_vmap and looped.per_example_mode == "loop"
    reference = looped.featurize(images, torch.arange(5))
    for other in (vmapped, hooked):
        torch.testing.assert_close(other.featurize(images, torch.arange(5)), reference, rtol=1e-4, atol=1e-6)
    grads = looped.gradients(images[:2], [0, 1])
    for other in (vmapped, hooked):
        for name, value in other.gradients(images[:2], [0, 1]).items():
            torch.testing.assert_close(grads[name], value, rtol=1e-4, atol=1e-6)
