"""Contract checks every data-attribution registry entry passes: projectors, output functions, scorings.

Shared checks: config round trip, same seed same output, batched equals one by one, and score direction
on an oracle (a projector keeps a near-duplicate closer than an unrelated vector; an output function
moves the right way; every scoring ranks a query's own training example first).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genprov.attribution.data.output_functions import OUTPUT_FUNCTIONS, NoiseSchedule
from genprov.attribution.data.projectors import PROJECTORS
from genprov.attribution.data.trak import SCORINGS, TRAKAttributor, TRAKConfig
from genprov.exceptions import DataError
from genprov.models.diffusion import DDPM, DDPMConfig, build_scheduler
from genprov.utils.seeding import numpy_rng, torch_generator

SCHEDULE = NoiseSchedule.from_scheduler(build_scheduler(DDPMConfig.preset("tiny")))


def _grads(b: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch_generator(seed, "contract-grads")
    return {"a.weight": torch.randn(b, 6, 5, generator=gen), "b.bias": torch.randn(b, 7, generator=gen)}


def _projector(name: str, seed: int = 0):  # type: ignore[no-untyped-def]
    config_type = PROJECTORS.config_type(name)
    if config_type is None:
        return PROJECTORS.create(name)
    return PROJECTORS.create(name, config=config_type.from_dict({"dim": 256, "seed": seed}))


# ------------------------------------------------------------------------------------------ projectors


@pytest.mark.parametrize("name", PROJECTORS.names())
def test_projector_config_round_trip(name: str) -> None:
    config_type = PROJECTORS.config_type(name)
    if config_type is None:
        assert PROJECTORS.default_config(name) is None
        return
    config = config_type(dim=64, seed=3)
    assert config_type.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("name", PROJECTORS.names())
def test_projector_same_seed_same_output(name: str) -> None:
    torch.testing.assert_close(_projector(name).project(_grads(3)), _projector(name).project(_grads(3)), rtol=0, atol=0)


@pytest.mark.parametrize("name", PROJECTORS.names())
def test_projector_batched_equals_one_by_one(name: str) -> None:
    proj = _projector(name)
    grads = _grads(4)
    batched = proj.project(grads)
    single = torch.cat([proj.project({k: v[i : i + 1] for k, v in grads.items()}) for i in range(4)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", PROJECTORS.names())
def test_projector_keeps_a_near_duplicate_closest(name: str) -> None:
    g = _grads(8, seed=1)
    target = {k: v[:1] for k, v in g.items()}
    near = {k: v[:1] + 0.1 * v[1:2] for k, v in g.items()}
    others = {k: v[2:] for k, v in g.items()}
    proj = _projector(name)
    t, n, o = proj.project(target), proj.project(near), proj.project(others)
    assert float(t @ n.T) > float((t @ o.T).max())


# ------------------------------------------------------------------------------------------ output functions


def _eps(b: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch_generator(seed, "contract-eps")
    return torch.randn(b, 1, 4, 4, generator=gen), torch.randn(b, 1, 4, 4, generator=gen), torch.arange(b) * 97


@pytest.mark.parametrize("name", OUTPUT_FUNCTIONS.names())
def test_output_function_config_and_determinism(name: str) -> None:
    config_type = OUTPUT_FUNCTIONS.config_type(name)
    if config_type is not None:
        config = config_type()
        assert config_type.from_dict(config.to_dict()) == config
    pred, eps, t = _eps(5)
    f = OUTPUT_FUNCTIONS.create(name)
    torch.testing.assert_close(f(pred, eps, t, SCHEDULE), OUTPUT_FUNCTIONS.create(name)(pred, eps, t, SCHEDULE))


@pytest.mark.parametrize("name", OUTPUT_FUNCTIONS.names())
def test_output_function_batched_equals_one_by_one(name: str) -> None:
    pred, eps, t = _eps(5)
    f = OUTPUT_FUNCTIONS.create(name)
    single = torch.cat([f(pred[i : i + 1], eps[i : i + 1], t[i : i + 1], SCHEDULE) for i in range(5)])
    torch.testing.assert_close(f(pred, eps, t, SCHEDULE), single)
    assert f(pred, eps, t, SCHEDULE).shape == (5,)


@pytest.mark.parametrize("name", OUTPUT_FUNCTIONS.names())
def test_output_function_direction(name: str) -> None:
    """Loss-type outputs fall as the prediction nears the noise; the others grow with the prediction."""
    pred, eps, t = _eps(4)
    f = OUTPUT_FUNCTIONS.create(name)
    if f.uses_target:
        closer = eps + 0.5 * (pred - eps)
        assert (f(closer, eps, t, SCHEDULE) < f(pred, eps, t, SCHEDULE)).all()
    else:
        positive = pred.abs() + 0.1
        assert (f(2 * positive, eps, t, SCHEDULE) > f(positive, eps, t, SCHEDULE)).all()


# ------------------------------------------------------------------------------------------ scorings


@pytest.mark.parametrize("scoring", SCORINGS)
def test_every_scoring_ranks_the_query_s_own_example_first(scoring: str) -> None:
    rng = numpy_rng(0, "contract-oracle")
    phi = np.linalg.qr(rng.standard_normal((16, 6)))[0].T * rng.uniform(0.5, 2.0, size=(6, 1))  # orthogonal rows
    attributor = TRAKAttributor(torch.nn.Linear(1, 1), config=TRAKConfig(scoring=scoring))
    attributor.fit_features(phi.astype(np.float32))
    scores = attributor.scores_from_features(phi[[4, 1]])
    assert scores.argmax(axis=1).tolist() == [4, 1]
    config = TRAKConfig(scoring=scoring)
    assert TRAKConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("scoring", SCORINGS)
def test_every_scoring_scores_queries_one_by_one_like_batched(scoring: str) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = DDPM(DDPMConfig.preset("tiny")).eval()
    x = torch.rand(5, 1, 8, 8, generator=torch_generator(0, "contract-x")) * 2 - 1
    attributor = TRAKAttributor(model, config=TRAKConfig(scoring=scoring, n_timesteps=1, proj_dim=32)).fit(x[:4])
    together = attributor.scores(x[2:5])
    single = torch.cat([attributor.scores(x[i : i + 1]) for i in range(2, 5)])
    torch.testing.assert_close(together, single, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ wrong inputs


@pytest.mark.parametrize("name", PROJECTORS.names())
def test_projector_wrong_shapes_are_data_errors_naming_the_block(name: str) -> None:
    proj = _projector(name)
    proj.project(_grads(2))
    changed = {**_grads(2), "a.weight": torch.zeros(2, 6, 4)}
    with pytest.raises(DataError, match=r"'a\.weight' has 24 values but this projector saw it with 30"):
        proj.project(changed)
    with pytest.raises(DataError, match="same batch size"):
        proj.project({**_grads(2), "b.bias": torch.zeros(3, 7)})


@pytest.mark.parametrize("name", [n for n in OUTPUT_FUNCTIONS.names() if OUTPUT_FUNCTIONS.create(n).uses_target])
def test_output_function_mismatched_target_is_a_data_error(name: str) -> None:
    pred, eps, t = _eps(2)
    with pytest.raises(DataError, match="eps"):
        OUTPUT_FUNCTIONS.create(name)(pred, eps[..., :3], t, SCHEDULE)


@pytest.mark.parametrize("name", OUTPUT_FUNCTIONS.names())
def test_output_function_mismatched_timesteps_are_a_data_error(name: str) -> None:
    pred, eps, t = _eps(2)
    with pytest.raises(DataError, match="one timestep per item"):
        OUTPUT_FUNCTIONS.create(name)(pred, eps, torch.cat([t, t]), SCHEDULE)
