"""LatentDenoiser under ``torch.func.vmap``: with ``attention="plain"`` (D-TRAK's) the U-Net's SDPA attention runs
through diffusers' plain ``AttnProcessor`` (no batching fallback) with the same gradients, peft LoRA layers
included, and the pipeline's own processors are back afterwards (also after an error); other processors are never
switched; ``"native"`` (the default) leaves the processors alone."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from torch.func import functional_call, grad, vmap

from genprov.exceptions import ConfigError
from genprov.models.t2i import LoRAConfig, add_lora
from genprov.models.t2i.denoiser import LatentDenoiser, plain_attention
from genprov.utils.seeding import torch_generator


def _attention_modules(unet: Any) -> list[Any]:
    return [m for m in unet.modules() if hasattr(m, "set_processor")]


@pytest.fixture
def denoiser(t2i_pipeline: Any) -> LatentDenoiser:
    """The tiny pipeline's U-Net with a rank-2 LoRA whose B is random (so A's gradient is not zero), with D-TRAK's
    plain attention under vmap."""
    unet = t2i_pipeline.unet
    add_lora(unet, LoRAConfig(rank=2))
    gen = torch_generator(0, "denoiser-lora-b")
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return LatentDenoiser(unet, t2i_pipeline.scheduler, attention="plain").eval()


def _inputs(n: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch_generator(0, "denoiser-inputs")
    x = torch.randn(n, 3, 4, 4, 4, generator=gen)  # n examples, 3 timesteps each
    context = torch.randn(n, 3, 12, 32, generator=gen)
    return x, torch.tensor([0, 40, 80]), context


def _vmapped_gradients(model: LatentDenoiser, names: list[str]) -> dict[str, torch.Tensor]:
    params = {n: p.detach() for n, p in model.named_parameters() if n in names}
    x, t, context = _inputs()

    def output(p: dict[str, torch.Tensor], x1: torch.Tensor, c1: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (x1, t, c1)).pow(2).mean()

    return dict(vmap(grad(output), in_dims=(None, 0, 0))(params, x, context))


def _loop_gradients(model: LatentDenoiser, names: list[str]) -> dict[str, torch.Tensor]:
    x, t, context = _inputs()
    chosen = [p for n, p in model.named_parameters() if n in names]
    rows = []
    for i in range(len(x)):
        with torch.enable_grad():
            leaves = [p.detach().requires_grad_(True) for p in chosen]
            out = functional_call(model, dict(zip(names, leaves, strict=True)), (x[i], t, context[i])).pow(2).mean()
            rows.append(torch.autograd.grad(out, leaves))
    return {n: torch.stack([r[j] for r in rows]) for j, n in enumerate(names)}


@pytest.mark.parametrize("which", ["lora", "all"])
def test_vmapped_gradients_use_plain_attention_and_equal_the_sdpa_loop(
    t2i_pipeline: Any, denoiser: LatentDenoiser, which: str
) -> None:
    names = [n for n, _ in denoiser.named_parameters() if which == "all" or ".lora_" in n]
    modules = _attention_modules(denoiser.unet)
    before = [m.processor for m in modules]
    assert modules and all(type(p) is AttnProcessor2_0 for p in before)
    seen: list[type] = []
    hook = modules[0].register_forward_pre_hook(lambda m, args: seen.append(type(m.processor)))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            vmapped = _vmapped_gradients(denoiser, names)
        looped = _loop_gradients(LatentDenoiser(denoiser.unet, t2i_pipeline.scheduler).eval(), names)  # native
    finally:
        hook.remove()
    assert not [w for w in caught if "performance drop" in str(w.message)]
    assert seen == [AttnProcessor] + [AttnProcessor2_0] * 2  # vmap: plain; the native loop (2 examples): SDPA
    assert [m.processor for m in modules] == before  # the very same processor objects are back
    scale = max(float(g.abs().max()) for g in looped.values())
    for name in names:  # float32 rounding: ~5e-6 of the largest gradient
        torch.testing.assert_close(vmapped[name] / scale, looped[name] / scale, rtol=0, atol=2e-5, msg=name)
    assert any(float(looped[n].abs().max()) > 0 for n in names if ".lora_A." in n)


def test_the_processors_are_restored_after_an_error(denoiser: LatentDenoiser) -> None:
    modules = _attention_modules(denoiser.unet)
    before = [m.processor for m in modules]

    def failing(x1: torch.Tensor) -> torch.Tensor:
        with plain_attention(denoiser.unet):
            assert all(type(m.processor) is AttnProcessor for m in modules)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        vmap(failing)(torch.zeros(2, 1))
    assert [m.processor for m in modules] == before


def test_processors_that_differ_from_the_plain_one_are_left_alone(denoiser: LatentDenoiser) -> None:
    modules = _attention_modules(denoiser.unet)
    custom, rescaled = modules[0], modules[1]
    own = AttnProcessor2_0()  # a processor object of the user's, kept as it is on the other modules
    custom.set_processor(AttnProcessor())  # an already-plain processor: not SDPA, not touched
    kept = custom.processor
    rescaled.scale = 0.5  # AttnProcessor2_0 ignores attn.scale, AttnProcessor does not: switching would change it
    rescaled.set_processor(own)
    inside: list[Any] = []

    def probe(x1: torch.Tensor) -> torch.Tensor:
        with plain_attention(denoiser.unet):
            inside.extend(m.processor for m in modules[:3])
        return x1

    vmap(probe)(torch.zeros(2, 1))
    assert inside[0] is kept and inside[1] is own and type(inside[2]) is AttnProcessor
    assert custom.processor is kept and rescaled.processor is own and type(modules[2].processor) is AttnProcessor2_0


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # SDPA's per-example vmap fallback
def test_native_attention_leaves_the_processors_alone_under_vmap(t2i_pipeline: Any, denoiser: LatentDenoiser) -> None:
    native = LatentDenoiser(denoiser.unet, t2i_pipeline.scheduler).eval()  # the LoRA-carrying U-Net
    assert native.attention == "native"
    module = _attention_modules(native.unet)[0]
    seen: list[type] = []
    hook = module.register_forward_pre_hook(lambda m, args: seen.append(type(m.processor)))
    try:
        _vmapped_gradients(native, [n for n, _ in native.named_parameters() if ".lora_" in n])
    finally:
        hook.remove()
    assert seen == [AttnProcessor2_0]


def test_an_unknown_attention_mode_is_refused(t2i_pipeline: Any) -> None:
    with pytest.raises(ConfigError, match=r"attention='flash' is not one of \('native', 'plain'\)"):
        LatentDenoiser(t2i_pipeline.unet, t2i_pipeline.scheduler, attention="flash")
