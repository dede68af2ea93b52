"""The ``kronecker`` projector: features from one batched pass with hooks equal the explicit Kronecker projection
``(P_out (x) P_in) vec(G)`` of exact per-example gradients (float64 autograd loops) on a tiny network of Linear and
Conv2d layers (stride, padding modes, groups, dilation), the tiny DDPM (attention projections included) and the tiny
text-to-image U-Net's LoRA; determinism, refusals, and TRAK end to end."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from genprov.attribution.data.kronecker import kronecker_features, kronecker_layers
from genprov.attribution.data.projectors import PROJECTORS, KroneckerConfig, KroneckerProjector
from genprov.attribution.data.trak import TRAKAttributor, TRAKConfig
from genprov.exceptions import ConfigError, DataError
from genprov.models.diffusion import DDPM, DDPMConfig
from genprov.utils.seeding import torch_generator

B, K = 3, 2  # examples, rows (timesteps) per example


class TinyNet(nn.Module):
    """Convolutions with stride, padding, dilation, groups, circular and 'same' padding, a bias-free one, a
    GroupNorm (not covered), Linear layers on tokens, one of them called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2)
        self.c3 = nn.Conv2d(6, 4, (3, 2), stride=(1, 2), padding=1, padding_mode="circular", bias=False)
        self.c4 = nn.Conv2d(4, 4, 3, padding="same", groups=4)
        self.norm = nn.GroupNorm(2, 4)
        self.l1 = nn.Linear(4, 5)
        self.twice = nn.Linear(5, 5)
        self.l2 = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.c2(torch.tanh(self.c1(x))))
        h = torch.tanh(self.c4(self.norm(self.c3(h))))
        tokens = h.flatten(2).transpose(1, 2)  # (rows, positions, 4)
        return self.l2(torch.tanh(self.twice(torch.tanh(self.twice(torch.tanh(self.l1(tokens)))))))


def _projector(dim: int = 40, seed: int = 0, **options: int) -> KroneckerProjector:
    projector = PROJECTORS.create("kronecker", config=KroneckerConfig(dim=dim, seed=seed, **options))
    assert isinstance(projector, KroneckerProjector)
    return projector


def _explicit(projector: KroneckerProjector, grads: dict[str, Tensor]) -> Tensor:
    """``(P_out (x) P_in) vec(G)`` per layer with ``torch.kron`` (weight and bias: ``G = [G_W, g_b]``)."""
    layers, k_out, k_in = projector.layout(grads)
    n = next(iter(grads.values())).shape[0]
    out = torch.zeros(n, len(layers) * k_out * k_in, dtype=torch.float64)
    for name, g in grads.items():
        matrix = g.reshape(n, g.shape[1], -1)
        layer = layers.index(projector.layer_of(name))
        p_out = projector.out_factor(projector.layer_of(name), matrix.shape[1], k_out).double()
        p_in = projector.in_factor(name, matrix.shape[2], k_in).double()
        kron = torch.kron(p_out, p_in)
        out[:, layer * k_out * k_in : (layer + 1) * k_out * k_in] += matrix.reshape(n, -1) @ kron.T
    return out


def _check_hooks(
    model: nn.Module, names: list[str], rows_output: Callable[[slice], Tensor], projector: KroneckerProjector
) -> Tensor:
    """Hooks on one pass of all ``B x K`` rows vs. the explicit projection of an autograd loop's exact gradients
    (``rows_output(rows)``: the per-row outputs of those rows, summed and divided by K as TRAK does)."""
    layers, covered = kronecker_layers(model, names)
    hooked = kronecker_features(
        model, layers, projector, lambda: rows_output(slice(None)).sum() / K, n_examples=B, rows=B * K
    )
    params = dict(model.named_parameters())
    per_example: dict[str, list[Tensor]] = {n: [] for n in covered}
    for b in range(B):
        value = rows_output(slice(b * K, (b + 1) * K)).sum() / K
        for n, g in zip(covered, torch.autograd.grad(value, [params[n] for n in covered]), strict=True):
            per_example[n].append(g)
    grads = {n: torch.stack(v) for n, v in per_example.items()}
    explicit = _explicit(projector, grads)
    assert hooked.dtype == torch.float64 and float(explicit.abs().max()) > 0
    torch.testing.assert_close(hooked, explicit, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(projector.project(grads), explicit, rtol=1e-10, atol=1e-12)
    return hooked


def test_hooks_equal_the_kronecker_projection_of_exact_gradients_on_convolutions_and_linears() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = TinyNet().double()
    x = torch.randn(B * K, 2, 9, 9, generator=torch_generator(0, "kron-x"), dtype=torch.float64)
    names = [n for n, _ in net.named_parameters() if n != "l2.weight"]  # l2: its bias alone
    layers, covered = kronecker_layers(net, names)
    assert [layer.name for layer in layers] == ["c1", "c2", "c3", "c4", "l1", "twice", "l2"]
    assert "norm.weight" not in covered and "l2.bias" in covered
    features = _check_hooks(net, names, lambda rows: net(x[rows]).pow(2).sum(dim=(1, 2)), _projector())
    assert features.shape == (B, 7 * 3 * 3)  # ceil(sqrt(40 / 7)) = 3


def test_hooks_on_the_tiny_ddpm_cover_its_attention_projections() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = DDPM(DDPMConfig.preset("tiny")).double().eval()
    x_t = torch.randn(B * K, 1, 8, 8, generator=torch_generator(0, "kron-ddpm"), dtype=torch.float64)
    t = torch.tensor([0, 300, 600, 900, 50, 999])
    names = [n for n, _ in model.named_parameters()]
    layers, _ = kronecker_layers(model, names)
    assert {"to_q", "to_k", "to_v", "to_out.0"} <= {layer.name.split("attentions.0.")[-1] for layer in layers}
    _check_hooks(model, names, lambda rows: model(x_t[rows], t[rows]).pow(2).mean(dim=(1, 2, 3)), _projector(256))


def _lora_pipeline() -> Any:
    from genprov.models.t2i import LoRAConfig, add_lora, tiny_pipeline

    pipe = tiny_pipeline(0)
    names = add_lora(pipe.unet, LoRAConfig(rank=2))
    params = dict(pipe.unet.named_parameters())
    with torch.no_grad():  # a fresh LoRA's B = 0 zeroes A's gradient
        for name in names:
            if ".lora_B." in name:
                params[name].copy_(torch.randn(params[name].shape, generator=torch_generator(0, "kron-b")) * 0.1)
    return pipe


def test_hooks_on_the_text_to_image_unet_cover_its_lora_layers() -> None:
    from genprov.models.t2i import LORA_PARAMETER_GLOBS
    from genprov.models.t2i.denoiser import LatentDenoiser

    pipe = _lora_pipeline()
    denoiser = LatentDenoiser(copy.deepcopy(pipe.unet).double(), pipe.scheduler).eval()
    x_t = torch.randn(B * K, 4, 4, 4, generator=torch_generator(0, "kron-lat"), dtype=torch.float64)
    context = torch.randn(B * K, 12, 32, generator=torch_generator(0, "kron-ctx"), dtype=torch.float64)
    t = torch.tensor([0, 30, 60, 90, 5, 99])
    names = [n for n, _ in denoiser.named_parameters() if any(p in n for p in (".lora_A.", ".lora_B."))]
    layers, covered = kronecker_layers(denoiser, names)
    assert covered == names and all(layer.weight and not layer.bias for layer in layers)
    assert any("attn2.to_k.lora_A" in layer.name for layer in layers)  # cross-attention: the context's projection
    _check_hooks(
        denoiser,
        names,
        lambda rows: denoiser(x_t[rows], t[rows], context[rows]).pow(2).mean(dim=(1, 2, 3)),
        _projector(128),
    )
    # through the attributor (float32): the same as projecting its own per-example gradients
    from genprov.models.t2i import encode_examples

    images = torch.rand(B, 3, 16, 16, generator=torch_generator(0, "kron-img")) * 2 - 1
    examples = encode_examples(pipe, images, ["a photo of a horse", "a photo of an automobile", "a handwritten one"])
    config = TRAKConfig(projector="kronecker", proj_dim=128, n_timesteps=2, include=LORA_PARAMETER_GLOBS)
    attributor = TRAKAttributor.for_pipeline(pipe, config)
    assert attributor.parameter_coverage == 1.0
    features = attributor.featurize(examples, [0, 1, 2])
    reference = attributor.projector.project(attributor.gradients(examples, [0, 1, 2]))
    torch.testing.assert_close(features, reference, rtol=1e-4, atol=1e-5 * float(reference.abs().max()))


@pytest.fixture(scope="module")
def ddpm() -> DDPM:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return DDPM(DDPMConfig.preset("tiny")).eval()


@pytest.fixture(scope="module")
def images() -> Tensor:
    return torch.rand(6, 1, 8, 8, generator=torch_generator(0, "kron-images")) * 2 - 1


@pytest.mark.parametrize("output_function", ["loss", "squared-l2-norm"])
def test_attributor_features_equal_the_projection_of_its_gradients(ddpm, images, output_function) -> None:
    config = TRAKConfig(projector="kronecker", proj_dim=256, n_timesteps=3, output_function=output_function, seed=2)
    attributor = TRAKAttributor(ddpm, config=config)
    features = attributor.featurize(images[:4], [0, 1, 2, 3])
    reference = attributor.projector.project(attributor.gradients(images[:4], [0, 1, 2, 3]))
    assert features.shape == (4, attributor.feature_dim) == (4, 51 * 3 * 3)  # 51 layers: ceil(sqrt(256 / 51)) = 3
    torch.testing.assert_close(features, reference, rtol=1e-4, atol=1e-6 * float(reference.abs().max()))
    names = set(attributor.parameter_names)
    assert not any("norm" in n for n in names) and 0.95 < attributor.parameter_coverage < 1


def test_features_are_deterministic_per_seed_and_independent_of_the_batch(ddpm, images) -> None:
    config = TRAKConfig(projector="kronecker", proj_dim=64, n_timesteps=2, batch_size=4)
    a = TRAKAttributor(ddpm, config=config).featurize(images, list(range(6)))
    b = TRAKAttributor(ddpm, config=config).featurize(images, list(range(6)))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    one = TRAKAttributor(ddpm, config=config.replace(batch_size=1)).featurize(images[4:], [4, 5])
    torch.testing.assert_close(one, a[4:], rtol=1e-5, atol=1e-6 * float(a.abs().max()))
    other = TRAKAttributor(ddpm, config=config.replace(seed=1)).featurize(images[:2], [0, 1])
    assert not torch.allclose(other, a[:2])
    fixed = TRAKAttributor(ddpm, config=config.replace(projector_options={"k_out": 2, "k_in": 5}))
    assert fixed.feature_dim == 51 * 2 * 5


def test_fit_and_scores_end_to_end_with_a_store(ddpm, images, tmp_path) -> None:
    config = TRAKConfig(projector="kronecker", proj_dim=64, n_timesteps=2, shard_size=4)
    attributor = TRAKAttributor(ddpm, config=config).fit(images, tmp_path / "store")
    spec = attributor.store_spec(images)
    assert (
        spec["config"]["projector"] == "kronecker" and spec["parameters"]["coverage"] == attributor.parameter_coverage
    )
    assert (
        "coverage" not in TRAKAttributor(ddpm, config=config.replace(projector="sjlt")).store_spec(images)["parameters"]
    )
    scores = attributor.scores(images[:2])
    assert scores.shape == (2, 6) and torch.isfinite(scores).all()
    again = TRAKAttributor(ddpm, config=config).fit(images, tmp_path / "store")  # resumed: every shard reused
    torch.testing.assert_close(again.scores(images[:2]), scores)


class _BatchNormModel(nn.Module):
    def __init__(self, track: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4, track_running_stats=track)
        self.out = nn.Conv2d(4, 1, 1)
        self.config = DDPMConfig.preset("tiny")

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.out(torch.relu(self.bn(self.conv(x))))


def test_batch_norm_with_batch_statistics_is_refused(images) -> None:
    model = _BatchNormModel()
    layers, _ = kronecker_layers(model, [n for n, _ in model.named_parameters()])
    x = images[:2]
    with pytest.raises(ConfigError, match=r"BatchNorm layer 'bn'.*eval mode"):
        kronecker_features(model.train(), layers, _projector(), lambda: model(x, x).sum(), n_examples=2, rows=2)
    config = TRAKConfig(projector="kronecker", proj_dim=16, n_timesteps=2)
    assert TRAKAttributor(model.train(), config=config).featurize(x, [0, 1]).shape[0] == 2  # eval while featurizing
    assert model.training
    with pytest.raises(ConfigError, match="track_running_stats=False"):
        TRAKAttributor(_BatchNormModel(track=False), config=config).featurize(x, [0, 1])


def test_uncovered_selections_and_layers_that_are_not_batch_first_are_refused(ddpm, images) -> None:
    with pytest.raises(ConfigError, match="projector='kronecker' covers the weights and biases"):
        _ = TRAKAttributor(ddpm, config=TRAKConfig(projector="kronecker", include=("*norm*",))).feature_dim

    class Transposed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.lin(x.reshape(2, -1).T)  # (positions, rows): not batch-first

    model = Transposed()
    layers, _ = kronecker_layers(model, ["lin.weight"])
    x = torch.randn(2, 5)
    with pytest.raises(DataError, match=r"layer 'lin'.s input has leading dimension 5, not the batch's 2 rows"):
        kronecker_features(model, layers, _projector(), lambda: model(x).sum(), n_examples=2, rows=2)
    with pytest.raises(ConfigError, match="k_out"):
        KroneckerConfig(k_out=-1)
