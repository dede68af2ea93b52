"""TRAK / D-TRAK on a text-to-image pipeline: cached latents + text embeddings, LoRA-only per-example gradients
against a float64 autograd loop, scores end to end, and the errors of mixing conditional and plain examples."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from genprov.attribution.data.trak import TRAKAttributor, TRAKConfig
from genprov.data import ConditionedExamples
from genprov.exceptions import ConfigError, DataError
from genprov.models.diffusion import DDPM, DDPMConfig
from genprov.models.t2i import (
    LORA_PARAMETER_GLOBS,
    LoRAConfig,
    PromptTooLongError,
    add_lora,
    encode_examples,
    encode_prompts,
)
from genprov.models.t2i.denoiser import LatentDenoiser
from genprov.utils.seeding import torch_generator

CAPTIONS = ("a photo of a horse", "a photo of an automobile", "a photo of a horse")


@pytest.fixture
def lora_pipeline(t2i_pipeline: Any) -> Any:
    """The tiny pipeline with a rank-2 LoRA whose B is random (a fresh LoRA's B = 0 zeroes A's gradient)."""
    names = add_lora(t2i_pipeline.unet, LoRAConfig(rank=2))
    params = dict(t2i_pipeline.unet.named_parameters())
    gen = torch_generator(0, "test-lora-b")
    with torch.no_grad():
        for name in names:
            if ".lora_B." in name:
                params[name].copy_(torch.randn(params[name].shape, generator=gen) * 0.1)
    return t2i_pipeline


@pytest.fixture
def examples(t2i_pipeline: Any) -> ConditionedExamples:
    images = torch.rand(3, 3, 16, 16, generator=torch_generator(0, "t2i-trak-images")) * 2 - 1
    return encode_examples(t2i_pipeline, images, CAPTIONS)


def test_encode_examples_takes_the_vae_mode_and_the_text_encoders_last_hidden_state(t2i_pipeline: Any) -> None:
    images = torch.rand(2, 3, 16, 16, generator=torch_generator(1, "enc")) * 2 - 1
    out = encode_examples(t2i_pipeline, images, CAPTIONS[:2])
    with torch.no_grad():
        mode = t2i_pipeline.vae.encode(images).latent_dist.mode() * t2i_pipeline.vae.config.scaling_factor
    torch.testing.assert_close(out.latents, mode)
    assert out.context.shape[:2] == (2, t2i_pipeline.tokenizer.model_max_length)
    torch.testing.assert_close(out.context, encode_prompts(t2i_pipeline, CAPTIONS[:2]))
    assert out.captions == CAPTIONS[:2] and len(out[1:]) == 1 and out[[1]].captions == CAPTIONS[1:2]


def test_encode_examples_refuses_bad_input(t2i_pipeline: Any) -> None:
    images = torch.zeros(2, 3, 16, 16)
    with pytest.raises(DataError, match="1 captions for 2 images"):
        encode_examples(t2i_pipeline, images, CAPTIONS[:1])
    with pytest.raises(DataError, match=r"VAE takes \(3, 16, 16\)"):
        encode_examples(t2i_pipeline, torch.zeros(2, 3, 8, 8), CAPTIONS[:2])
    with pytest.raises(PromptTooLongError, match="at most"):
        encode_examples(t2i_pipeline, images, ["a photo of a horse " * 20, CAPTIONS[0]])
    with pytest.raises(DataError, match="NaN"):
        encode_examples(t2i_pipeline, torch.full((2, 3, 16, 16), float("nan")), CAPTIONS[:2])


def _reference(pipe: Any, attributor: TRAKAttributor, ex: ConditionedExamples, keys: list[int]) -> list[dict[str, Any]]:
    """Per-example autograd loop in float64: mean over timesteps of f(unet(x_t, t, context))."""
    unet = copy.deepcopy(pipe.unet).double()
    abar = pipe.scheduler.alphas_cumprod.to(torch.float64)
    t = torch.tensor(attributor.timesteps)
    noise = attributor.noise(keys, ex.latents.shape[1:]).double()
    selected = set(attributor.parameter_names)
    out = []
    for i in range(len(ex)):
        unet.zero_grad()
        a = abar[t].reshape(-1, 1, 1, 1)
        x_t = a.sqrt() * ex.latents[i : i + 1].double() + (1 - a).sqrt() * noise[i]
        context = ex.context[i : i + 1].double().expand(len(t), -1, -1)
        eps = unet(x_t, t, encoder_hidden_states=context).sample
        attributor._output_fn(eps, noise[i], t, attributor._schedule).mean().backward()
        out.append({f"unet.{n}": p.grad.float() for n, p in unet.named_parameters() if f"unet.{n}" in selected})
    return out


@pytest.mark.parametrize("per_example", ["vmap", "loop", "hooks"])
@pytest.mark.parametrize("output_function", ["loss", "squared-l2-norm"])
def test_lora_gradients_equal_a_float64_loop(lora_pipeline, examples, per_example, output_function) -> None:
    config = TRAKConfig(
        output_function=output_function, n_timesteps=3, include=LORA_PARAMETER_GLOBS, per_example=per_example
    )
    attributor = TRAKAttributor.for_pipeline(lora_pipeline, config)
    names = attributor.parameter_names
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    grads = attributor.gradients(examples, [0, 1, 2])
    assert sorted(grads) == sorted(names)
    for i, ref in enumerate(_reference(lora_pipeline, attributor, examples, [0, 1, 2])):
        scale = max(float(v.abs().max()) for v in ref.values())
        assert scale > 0
        for name, value in ref.items():
            torch.testing.assert_close(
                grads[name][i] / scale, value / scale, rtol=0, atol=1e-4, msg=name
            )  # float32 through attention: ~2e-5


def test_the_caption_changes_the_features(lora_pipeline, examples) -> None:
    attributor = TRAKAttributor.for_pipeline(lora_pipeline, TRAKConfig(n_timesteps=2, include=LORA_PARAMETER_GLOBS))
    same_latent = ConditionedExamples(examples.latents[[0, 0]], encode_prompts(lora_pipeline, CAPTIONS[:2]))
    features = attributor.featurize(same_latent, [0, 0])
    assert not torch.allclose(features[0], features[1])
    queries = attributor.featurize_queries(same_latent)  # keyed by latent and context: distinct noise
    assert not torch.allclose(queries[0], queries[1])


def test_fit_scores_and_resume_a_store(lora_pipeline, examples, tmp_path) -> None:
    config = TRAKConfig(output_function="squared-l2-norm", n_timesteps=2, include=LORA_PARAMETER_GLOBS, shard_size=2)
    dtrak = TRAKAttributor.for_pipeline(lora_pipeline, config).fit(examples, tmp_path / "store")
    scores = dtrak.scores(examples[:2])
    assert scores.shape == (2, 3) and torch.isfinite(scores).all()
    result = dtrak.attribute(examples[:2], k=2)
    assert result.indices.shape == (2, 2)
    again = TRAKAttributor.for_pipeline(lora_pipeline, config).fit(examples, tmp_path / "store")  # store reused
    torch.testing.assert_close(again.scores(examples[:2]), scores)
    spec = dtrak.store_spec(examples)
    other = ConditionedExamples(examples.latents, encode_prompts(lora_pipeline, ["a handwritten seven"] * 3))
    assert dtrak.store_spec(other)["data_fingerprint"] != spec["data_fingerprint"]


def test_conditional_and_plain_examples_are_not_mixed(lora_pipeline, examples) -> None:
    attributor = TRAKAttributor.for_pipeline(lora_pipeline, TRAKConfig(n_timesteps=2, include=LORA_PARAMETER_GLOBS))
    with pytest.raises(DataError, match="needs each example's caption"):
        attributor.featurize(examples.latents, [0, 1, 2])
    with pytest.raises(DataError, match=r"shape \(n, 4, 4, 4\)"):
        attributor.featurize(ConditionedExamples(torch.zeros(1, 4, 8, 8), examples.context[:1]), [0])
    ddpm = TRAKAttributor(DDPM(DDPMConfig.preset("tiny")), config=TRAKConfig(n_timesteps=2))
    with pytest.raises(DataError, match="unconditional"):
        ddpm.featurize(examples, [0, 1, 2])


def test_v_prediction_pipelines_are_refused(t2i_pipeline) -> None:
    scheduler = type(t2i_pipeline.scheduler).from_config(t2i_pipeline.scheduler.config, prediction_type="v_prediction")
    with pytest.raises(ConfigError, match="v_prediction"):
        LatentDenoiser(t2i_pipeline.unet, scheduler)


def test_auto_hooks_lora_gradients_else_vmaps_on_small_latents_only(lora_pipeline) -> None:
    lora = TRAKAttributor.for_pipeline(lora_pipeline, TRAKConfig(include=LORA_PARAMETER_GLOBS))
    assert lora.per_example_mode == "hooks"  # peft's lora_A / lora_B are plain nn.Linear layers: all covered
    lora._hooks_failed = True  # as after a layer that is not batch-first: the rule without hooks
    assert lora.uses_vmap  # 4x4 latents, a few thousand LoRA values
    lora.model.config.image_size = 16  # 16x16 latents: the loop (benchmarks/bench_trak_t2i.py)
    assert not lora.uses_vmap and lora.per_example_mode == "loop"
