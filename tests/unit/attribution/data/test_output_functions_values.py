"""Output functions: values against their formulas and the schedule weight."""

from __future__ import annotations

import pytest
import torch

from genprov.attribution.data.output_functions import OUTPUT_FUNCTIONS, NoiseSchedule
from genprov.exceptions import ConfigError
from genprov.models.diffusion import DDPMConfig, build_scheduler
from genprov.utils.seeding import torch_generator

SCHEDULE = NoiseSchedule.from_scheduler(build_scheduler(DDPMConfig.preset("tiny")))


def _pair() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch_generator(0, "output-functions")
    return torch.randn(3, 2, 4, 4, generator=gen), torch.randn(3, 2, 4, 4, generator=gen), torch.tensor([0, 10, 999])


def test_values_match_their_formulas() -> None:
    pred, eps, t = _pair()
    flat, diff = pred.reshape(3, -1), (pred - eps).reshape(3, -1)
    expected = {
        "loss": diff.pow(2).mean(1),
        "squared-l2-norm": flat.pow(2).mean(1),
        "mean": flat.mean(1),
        "l1-norm": flat.abs().sum(1),
        "l2-norm": flat.norm(dim=1),
        "linf-norm": flat.abs().max(1).values,
    }
    for name, value in expected.items():
        torch.testing.assert_close(OUTPUT_FUNCTIONS.create(name)(pred, eps, t, SCHEDULE), value, msg=name)


def test_weighted_mse_uses_the_variational_bound_weight() -> None:
    pred, eps, t = _pair()
    scheduler = build_scheduler(DDPMConfig.preset("tiny"))
    beta, alpha, abar = scheduler.betas[t], scheduler.alphas[t], scheduler.alphas_cumprod[t]
    weight = beta / (2 * alpha * (1 - abar))
    value = OUTPUT_FUNCTIONS.create("weighted-mse")(pred, eps, t, SCHEDULE)
    torch.testing.assert_close(value, weight * (pred - eps).reshape(3, -1).pow(2).mean(1))


def test_only_the_loss_functions_read_the_target() -> None:
    pred, eps, t = _pair()
    for name in OUTPUT_FUNCTIONS.names():
        f = OUTPUT_FUNCTIONS.create(name)
        changed = not torch.equal(f(pred, eps, t, SCHEDULE), f(pred, eps + 1, t, SCHEDULE))
        assert changed == f.uses_target, name
    assert {n for n in OUTPUT_FUNCTIONS.names() if OUTPUT_FUNCTIONS.create(n).uses_target} == {"loss", "weighted-mse"}


def test_schedule_checks() -> None:
    with pytest.raises(ConfigError, match="betas"):
        NoiseSchedule.from_scheduler(object())
    assert SCHEDULE.n_timesteps == 1000
