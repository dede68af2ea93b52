"""``genprov.eval.lds.measure_conditional_losses``: the LDS model output of a text-to-image model (each query's
latent diffusion loss given its prompt), against diffusers' ``add_noise`` and the U-Net one draw at a time."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genprov.eval.lds import EvalDraws, measure_conditional_losses
from genprov.exceptions import DataError
from genprov.models.t2i import LatentDenoiser, encode_examples
from genprov.utils.seeding import torch_generator

PROMPTS = ("a photo of a horse", "a photo of an automobile", "a handwritten seven")


def test_conditional_losses_equal_the_per_draw_loss_given_each_prompt(t2i_pipeline: Any) -> None:
    images = torch.rand(3, 3, 16, 16, generator=torch_generator(0, "cond-loss")) * 2 - 1
    queries = encode_examples(t2i_pipeline, images, PROMPTS)
    scheduler = t2i_pipeline.scheduler
    draws = EvalDraws.make(queries.latents, 5, int(scheduler.config.num_train_timesteps), seed=0)
    denoiser = LatentDenoiser(t2i_pipeline.unet, scheduler)
    losses = measure_conditional_losses(denoiser, queries, draws, scheduler=scheduler, batch_size=4)
    expected = np.zeros(3)
    with torch.no_grad():
        for q in range(3):
            for j in range(5):
                t = draws.t[q, j : j + 1]
                noise = draws.noise[q, j : j + 1]
                x_t = scheduler.add_noise(queries.latents[q : q + 1], noise, t)
                eps = t2i_pipeline.unet(x_t, t, encoder_hidden_states=queries.context[q : q + 1]).sample
                expected[q] += float(F.mse_loss(eps, noise)) / 5
    np.testing.assert_allclose(losses, expected, rtol=1e-4)
    # the context matters: the same latents under other prompts give other losses
    swapped = encode_examples(t2i_pipeline, images, PROMPTS[::-1])
    other = measure_conditional_losses(denoiser, swapped, draws, scheduler=scheduler)
    assert not np.allclose(other[[0, 2]], losses[[0, 2]])


def test_conditional_losses_refuse_draws_of_other_latents(t2i_pipeline: Any) -> None:
    images = torch.zeros(3, 3, 16, 16)
    queries = encode_examples(t2i_pipeline, images, PROMPTS)
    draws = EvalDraws.make(queries.latents[:2], 2, 100, seed=0)
    denoiser = LatentDenoiser(t2i_pipeline.unet, t2i_pipeline.scheduler)
    with pytest.raises(DataError, match="other latents"):
        measure_conditional_losses(denoiser, queries, draws, scheduler=t2i_pipeline.scheduler)
