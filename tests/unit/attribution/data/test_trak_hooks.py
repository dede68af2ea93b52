"""``per_example="hooks"``: exact per-example gradients from one batched forward and backward pass with module hooks,
against the attributor's own one-backward-per-example loop in float64 (to ~1e-10) on a tiny MLP with LayerNorm, a
conv net (stride, padding modes, dilation, groups, GroupNorm, an in-place activation), the tiny DDPM's
``UNet2DModel`` (attention) and the tiny text-to-image ``UNet2DConditionModel`` (all of it, and its LoRA only); the
same sjlt features as the loop; what ``auto`` picks and how many examples it hooks at once; and the refusals
(uncovered parameters, batch statistics, layers that are not batch-first, inputs modified in place)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genprov.attribution.data import trak
from genprov.attribution.data.kronecker import HookLayoutError, gradient_layers, per_example_gradients
from genprov.attribution.data.trak import TRAKAttributor, TRAKConfig
from genprov.exceptions import ConfigError
from genprov.models.diffusion import DDPM, DDPMConfig, build_scheduler
from genprov.utils.seeding import torch_generator

SCHEDULER = build_scheduler(DDPMConfig.preset("tiny"))


def _hooks_equal_loop(attributor: TRAKAttributor, batch: Any, keys: list[int], *, tol: float = 1e-10) -> None:
    """The attributor's hooked and looped per-example gradients of the same float64 inputs agree to ``tol`` of
    each example's largest gradient value (float64 model); every selected parameter is covered."""
    assert attributor.per_example_mode == "hooks"
    x0, noise, ctx = attributor._batch_inputs(batch, keys)
    x0, noise = x0.double(), noise.double()
    ctx = None if ctx is None else ctx.double()
    flags = [p.requires_grad for p in attributor.model.parameters()]
    with attributor._evaluating():
        hooked = attributor._hook_gradients(x0, noise, ctx)
        looped = attributor._loop_gradients(x0, noise, ctx)
    assert [p.requires_grad for p in attributor.model.parameters()] == flags  # restored
    assert list(hooked) == list(looped) == attributor.parameter_names
    for i in range(len(keys)):
        scale = max(float(g[i].abs().max()) for g in looped.values())
        assert scale > 0
        for name, value in looped.items():
            assert hooked[name].dtype == torch.float64
            torch.testing.assert_close(hooked[name][i] / scale, value[i] / scale, rtol=0, atol=tol, msg=name)


class MLPDenoiser(nn.Module):
    """``forward(x_t, t)`` on (rows, 1, 4, 4): Linear layers (one called twice), a LayerNorm, the timestep as a
    feature."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(17, 12)
        self.norm = nn.LayerNorm(12)
        self.twice = nn.Linear(12, 12)
        self.out = nn.Linear(12, 16)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        dtype = self.inp.weight.dtype
        h = torch.cat([x_t.flatten(1).to(dtype), t[:, None].to(dtype) / 1000], dim=1)
        h = torch.tanh(self.norm(self.inp(h)))
        h = torch.tanh(self.twice(torch.tanh(self.twice(h))))
        return self.out(h).reshape(x_t.shape)


class ConvDenoiser(nn.Module):
    """``forward(x_t, t)`` on (rows, 2, 9, 9): convolutions with stride, padding, dilation, groups, circular and
    ``"same"`` padding, a bias-free one, a GroupNorm, an in-place ReLU on a convolution's output, and a LayerNorm
    over channels."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2)
        self.c3 = nn.Conv2d(6, 4, (3, 2), stride=(1, 2), padding=1, padding_mode="circular", bias=False)
        self.c4 = nn.Conv2d(4, 4, 3, padding="same", groups=4)
        self.norm = nn.GroupNorm(2, 4)
        self.channels = nn.LayerNorm(4)
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        x = x_t.to(self.c1.weight.dtype) * (1 + t[:, None, None, None] / 1000)
        h = F.relu(self.c1(x), inplace=True)
        h = torch.tanh(self.c3(torch.tanh(self.c2(h))))
        h = torch.tanh(self.c4(self.norm(h)))
        h = self.channels(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return F.interpolate(self.out(h), size=x_t.shape[-2:], mode="bilinear")


def _images(n: int, channels: int, side: int, key: str) -> Tensor:
    return torch.rand(n, channels, side, side, generator=torch_generator(0, key)) * 2 - 1


def _built(cls: type[nn.Module], seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return cls().double().eval()


@pytest.mark.parametrize("output_function", ["loss", "squared-l2-norm"])
def test_hooks_equal_the_loop_on_a_tiny_mlp_with_layer_norm(output_function) -> None:
    model = _built(MLPDenoiser)
    config = TRAKConfig(per_example="hooks", n_timesteps=3, output_function=output_function)
    _hooks_equal_loop(TRAKAttributor(model, SCHEDULER, config), _images(3, 1, 4, "mlp"), [0, 1, 2])
    only = TRAKAttributor(model, SCHEDULER, config.replace(include=("out.bias", "twice.*", "norm.weight")))
    _hooks_equal_loop(only, _images(2, 1, 4, "mlp"), [0, 1])  # a bias alone, a weight alone, a layer called twice


def test_hooks_equal_the_loop_on_convolutions_with_group_norm() -> None:
    model = _built(ConvDenoiser)
    attributor = TRAKAttributor(model, SCHEDULER, TRAKConfig(per_example="hooks", n_timesteps=2))
    layers, covered = gradient_layers(model, attributor.parameter_names)
    assert len(layers) == 7 and covered == attributor.parameter_names
    _hooks_equal_loop(attributor, _images(3, 2, 9, "conv"), [0, 1, 2])


def test_hooks_equal_the_loop_on_the_tiny_ddpm_with_attention() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = DDPM(DDPMConfig.preset("tiny")).double().eval()
    attributor = TRAKAttributor(model, config=TRAKConfig(n_timesteps=3))  # auto: every parameter is covered
    assert any(".attentions.0.to_q" in n for n in attributor.parameter_names)
    _hooks_equal_loop(attributor, _images(3, 1, 8, "ddpm"), [0, 1, 2])


@pytest.fixture(scope="module")
def lora_pipeline() -> Any:
    """The tiny text-to-image pipeline in float64 with a rank-2 LoRA whose B is random (a fresh B = 0 zeroes A's
    gradient)."""
    from genprov.models.t2i import LoRAConfig, add_lora, tiny_pipeline

    pipe = tiny_pipeline(0)
    names = add_lora(pipe.unet, LoRAConfig(rank=2))
    params = dict(pipe.unet.named_parameters())
    with torch.no_grad():
        for name in names:
            if ".lora_B." in name:
                params[name].copy_(torch.randn(params[name].shape, generator=torch_generator(0, "hooks-b")) * 0.1)
    pipe.unet.double()
    return pipe


@pytest.mark.parametrize("lora_only", [True, False])
def test_hooks_equal_the_loop_on_the_conditional_unet(lora_pipeline, lora_only) -> None:
    from genprov.data import ConditionedExamples
    from genprov.models.t2i import LORA_PARAMETER_GLOBS

    config = TRAKConfig(n_timesteps=2, include=LORA_PARAMETER_GLOBS if lora_only else ())
    attributor = TRAKAttributor.for_pipeline(lora_pipeline, config)
    names = attributor.parameter_names
    if lora_only:  # peft's lora_A / lora_B are plain nn.Linear layers inside its wrappers
        assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
        assert any("attn2.to_k.lora_A" in n for n in names)  # cross-attention: the context's projection
    else:
        assert any(n.endswith("norm1.weight") for n in names)  # the transformer blocks' LayerNorms
    examples = ConditionedExamples(
        _images(2, 4, 4, "latents"), torch.randn(2, 12, 32, generator=torch_generator(0, "context"))
    )
    _hooks_equal_loop(attributor, examples, [0, 1])


def test_features_with_sjlt_equal_the_loops(lora_pipeline) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = DDPM(DDPMConfig.preset("tiny")).eval()
    images = _images(5, 1, 8, "features")
    base = TRAKConfig(n_timesteps=3, proj_dim=64, batch_size=2, projector="sjlt")
    hooked = TRAKAttributor(model, config=base.replace(per_example="hooks")).featurize(images, range(5))
    looped = TRAKAttributor(model, config=base.replace(per_example="loop")).featurize(images, range(5))
    assert hooked.dtype == torch.float32
    torch.testing.assert_close(hooked, looped, rtol=1e-4, atol=1e-5 * float(looped.abs().max()))


class WithEmbedding(nn.Module):
    """A denoiser with parameters the hooks do not cover: an embedding table and a raw scale."""

    def __init__(self, norm: nn.Module | None = None) -> None:
        super().__init__()
        self.embed = nn.Embedding(1000, 16)
        self.scale = nn.Parameter(torch.ones(()))
        self.lin = nn.Linear(16, 16)
        self.norm = norm

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        h = self.lin(x_t.flatten(1) + self.embed(t)) * self.scale
        if self.norm is not None:
            h = self.norm(h)
        return h.reshape(x_t.shape)


def test_uncovered_parameters_are_refused_by_hooks_and_looped_by_auto(monkeypatch) -> None:
    model = WithEmbedding().double()
    with pytest.raises(ConfigError, match=r"2 selected parameters.*'scale', 'embed.weight'.*per_example='loop'"):
        _ = TRAKAttributor(model, SCHEDULER, TRAKConfig(per_example="hooks")).parameter_names
    assert TRAKAttributor(model, SCHEDULER, TRAKConfig()).per_example_mode == "vmap"  # auto: small, uncovered
    monkeypatch.setattr(trak, "LOOP_FROM_PARAMETERS", 1000)
    assert TRAKAttributor(model, SCHEDULER, TRAKConfig()).per_example_mode == "loop"  # auto: large, uncovered
    left_out = TRAKAttributor(model, SCHEDULER, TRAKConfig(per_example="hooks", exclude=("embed.*", "scale")))
    assert left_out.parameter_names == ["lin.weight", "lin.bias"]
    _hooks_equal_loop(left_out, _images(2, 1, 4, "embed"), [0, 1])


def test_batch_statistics_rule_hooks_out() -> None:
    tracked = WithEmbedding(nn.BatchNorm1d(16)).train()
    config = TRAKConfig(exclude=("embed.*", "scale", "norm.*"), n_timesteps=2)  # BatchNorm's own are not covered
    assert TRAKAttributor(tracked, SCHEDULER, config).per_example_mode == "hooks"  # eval mode while featurizing
    assert tracked.training
    batch_stats = WithEmbedding(nn.BatchNorm1d(16, track_running_stats=False))
    assert TRAKAttributor(batch_stats, SCHEDULER, config).per_example_mode == "vmap"
    hooks = TRAKAttributor(batch_stats, SCHEDULER, config.replace(per_example="hooks"))
    with pytest.raises(ConfigError, match=r"BatchNorm layer 'norm'.*per_example='loop'"):
        hooks.gradients(_images(2, 1, 4, "bn"), [0, 1])


class NotBatchFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        return self.lin(x_t.reshape(-1, 2)).reshape(x_t.shape)  # (rows x 8, 2): not led by the rows


class ModifiesInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        h = self.a(x_t)
        out = self.b(h)
        h.mul_(2)  # b's input changes after b ran
        return out + h


def test_layers_that_do_not_split_by_example_are_refused_by_hooks_and_looped_by_auto(caplog) -> None:
    images = _images(2, 1, 4, "layout")
    model = NotBatchFirst()
    hooks = TRAKAttributor(model, SCHEDULER, TRAKConfig(per_example="hooks", n_timesteps=2))
    with pytest.raises(HookLayoutError, match=r"layer 'lin'.s input has leading dimension 32, not the batch's 4 rows"):
        hooks.gradients(images, [0, 1])
    auto = TRAKAttributor(model, SCHEDULER, TRAKConfig(n_timesteps=2))
    assert auto.per_example_mode == "hooks"
    with caplog.at_level(logging.WARNING, logger="genprov.attribution.data.trak"):
        grads = auto.gradients(images, [0, 1])
    assert auto.per_example_mode == "vmap" and "instead of hooks" in caplog.text
    reference = TRAKAttributor(model, SCHEDULER, TRAKConfig(n_timesteps=2, per_example="loop")).gradients(
        images, [0, 1]
    )
    for name, value in reference.items():
        torch.testing.assert_close(grads[name], value, rtol=1e-5, atol=1e-7)
    featurizing = TRAKAttributor(model, SCHEDULER, TRAKConfig(n_timesteps=2, proj_dim=8))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="genprov.attribution.data.trak"):
        features = featurizing.featurize(images, [0, 1])  # found by the sizing pass, before any gradient
    assert featurizing.per_example_mode == "vmap" and "instead of hooks" in caplog.text
    looped = TRAKAttributor(model, SCHEDULER, TRAKConfig(n_timesteps=2, proj_dim=8, per_example="loop"))
    torch.testing.assert_close(features, looped.featurize(images, [0, 1]), rtol=1e-5, atol=1e-7)
    modifies = ModifiesInput()
    with pytest.raises(HookLayoutError, match=r"layer 'b'.s input was modified in place"):
        per_example_gradients(
            modifies,
            gradient_layers(modifies, ["b.weight"])[0],
            lambda: modifies(torch.randn(4, 1, 4, 4), torch.zeros(4)).sum(),
            n_examples=2,
            rows=4,
        )


@pytest.mark.parametrize(("budget", "passes"), [(None, [4, 1]), (1, [1] * 5)])
def test_auto_sizes_its_hooked_passes_by_memory(monkeypatch, budget, passes) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(2)
        model = DDPM(DDPMConfig.preset("tiny")).eval()
    if budget is not None:  # a model too large for two examples per pass: one at a time, as the loop
        monkeypatch.setattr(trak, "HOOKS_MAX_VALUES", budget)
    config = TRAKConfig(n_timesteps=2, proj_dim=32, batch_size=4)
    auto = TRAKAttributor(model, config=config)
    sizes: list[int] = []
    hook_gradients = auto._hook_gradients
    monkeypatch.setattr(auto, "_hook_gradients", lambda x0, *rest: sizes.append(len(x0)) or hook_gradients(x0, *rest))
    images = _images(5, 1, 8, "passes")
    features = auto.featurize(images, range(5))
    assert sizes == passes  # sized once by a no-grad forward pass of one example
    explicit = TRAKAttributor(model, config=config.replace(per_example="hooks")).featurize(images, range(5))
    torch.testing.assert_close(features, explicit, rtol=1e-4, atol=1e-5 * float(explicit.abs().max()))
