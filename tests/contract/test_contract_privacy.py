"""Contract checks every explanation-privacy registry entry passes: explainers, attacks, defenses.

Shared checks: config round trip, output shapes and ranges, same seed same output, batched equals one by
one (where the method promises it), not-fitted errors, and save / load giving the same outputs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genprov.exceptions import DataError, NotFittedError
from genprov.models.classifiers import ClassifierConfig, CNNClassifier
from genprov.privacy import ATTACKS, DEFENSES, EXPLAINERS, Defense, Explainer, InversionAttack, Observations
from genprov.utils.seeding import torch_generator

torch.set_num_threads(1)

N = 12


@pytest.fixture(scope="module")
def model() -> CNNClassifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return CNNClassifier(ClassifierConfig(width=4, feature_dim=8)).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(N, 1, 8, 8, generator=torch_generator(0, "contract-privacy")) * 2 - 1


def _explainer(name: str, model: CNNClassifier, **values: object) -> Explainer:
    config_type = EXPLAINERS.config_type(name)
    config = config_type.from_dict(values) if config_type is not None else None
    return EXPLAINERS.create(name, model, config=config)


# ------------------------------------------------------------------------------------------ explainers


@pytest.mark.parametrize("name", EXPLAINERS.names())
def test_explainer_config_round_trip(name: str) -> None:
    config_type = EXPLAINERS.config_type(name)
    assert config_type is not None
    config = config_type.from_dict({"batch_size": 5})
    assert config_type.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("name", EXPLAINERS.names())
def test_explainer_shapes_ranges_and_determinism(name: str, model: CNNClassifier, x: torch.Tensor) -> None:
    explainer = _explainer(name, model)
    maps = explainer.explain(x)
    assert maps.shape == (N, 1, 8, 8) and maps.dtype == torch.float32
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    raw = explainer.explain_raw(x)
    assert raw.shape == (N, 1, 8, 8)
    obs = explainer.observe(x)
    assert isinstance(obs, Observations) and obs.predictions.shape == (N, 10)
    torch.testing.assert_close(obs.predictions.sum(dim=1), torch.ones(N))
    torch.testing.assert_close(obs.explanations, maps, rtol=0, atol=0)
    torch.testing.assert_close(_explainer(name, model).explain(x), maps, rtol=0, atol=0)


@pytest.mark.parametrize("name", EXPLAINERS.names())
def test_explainer_batched_equals_one_by_one(name: str, model: CNNClassifier, x: torch.Tensor) -> None:
    batched = _explainer(name, model, batch_size=N).explain(x)
    single = _explainer(name, model, batch_size=1).explain(x)
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", EXPLAINERS.names())
def test_explainer_explicit_target_matches_predicted(name: str, model: CNNClassifier, x: torch.Tensor) -> None:
    explainer = _explainer(name, model)
    target = explainer.predict(x).argmax(dim=1)
    torch.testing.assert_close(explainer.explain(x, target), explainer.explain(x), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------- attacks


def _attack(name: str, seed: int = 0) -> InversionAttack:
    config_type = ATTACKS.config_type(name)
    assert config_type is not None
    config = config_type.from_dict({"width": 4, "depth": 1, "max_epochs": 2, "batch_size": 8, "seed": seed})
    return ATTACKS.create(name, config=config)


@pytest.fixture(scope="module")
def observations(model: CNNClassifier, x: torch.Tensor) -> Observations:
    return EXPLAINERS.create("gradient", model).observe(x)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_config_round_trip(name: str) -> None:
    config = _attack(name).config
    assert type(config).from_dict(config.to_dict()) == config


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_contract(name: str, observations: Observations, x: torch.Tensor, tmp_path: Path) -> None:
    attack = _attack(name)
    with pytest.raises(NotFittedError):
        attack.reconstruct(observations)
    assert attack.fit(observations, x) is attack
    rec = attack.reconstruct(observations)
    assert rec.shape == x.shape and rec.dtype == torch.float32 and float(rec.abs().max()) <= 1.0
    torch.testing.assert_close(_attack(name).fit(observations, x).reconstruct(observations), rec, rtol=0, atol=0)
    assert not torch.equal(_attack(name, seed=1).fit(observations, x).reconstruct(observations), rec)
    torch.testing.assert_close(
        torch.cat([attack.reconstruct(observations[i : i + 1]) for i in range(N)]), rec, rtol=1e-5, atol=1e-6
    )
    loaded = InversionAttack.from_pretrained(attack.save_pretrained(tmp_path / name))
    assert type(loaded) is type(attack) and loaded.config == attack.config
    torch.testing.assert_close(loaded.reconstruct(observations), rec, rtol=0, atol=0)


# -------------------------------------------------------------------------------------------- defenses


def _defense(name: str, explainer: Explainer, seed: int = 0) -> Defense:
    config_type = DEFENSES.config_type(name)
    assert config_type is not None
    values: dict[str, object] = {"seed": seed}
    if name == "gnime":
        values.update(a=10.0, width=4, inverter_width=4, inverter_depth=1, n_epochs=2, train_batch_size=6)
    else:
        values.update(sigma=0.1)
    return DEFENSES.create(name, explainer, config=config_type.from_dict(values))


def _fitted(defense: Defense, x: torch.Tensor) -> Defense:
    fit = getattr(defense, "fit", None)
    return fit(x, show_progress=False) if callable(fit) else defense


@pytest.mark.parametrize("name", DEFENSES.names())
def test_defense_config_round_trip(name: str, model: CNNClassifier) -> None:
    config = _defense(name, EXPLAINERS.create("gradient", model)).config
    assert type(config).from_dict(config.to_dict()) == config


@pytest.mark.parametrize("name", DEFENSES.names())
def test_defense_contract(name: str, model: CNNClassifier, x: torch.Tensor, tmp_path: Path) -> None:
    explainer = EXPLAINERS.create("gradient", model)
    defense = _defense(name, explainer)
    if name == "gnime":
        with pytest.raises(NotFittedError):
            defense.explain(x)
    defense = _fitted(defense, x)
    clean = explainer.explain(x)
    defended = defense.explain(x)
    assert defended.shape == clean.shape and defended.dtype == torch.float32
    assert not torch.equal(defended, clean)
    logits = defense.logits(x)  # GNIME's U-Net reads the victim's logits; other defenses ignore them
    torch.testing.assert_close(defense.defend(clean, logits), defended, rtol=0, atol=0)
    obs = defense.observe(x)
    torch.testing.assert_close(obs.predictions, explainer.predict(x), rtol=0, atol=0)  # predictions unaltered
    # same seed same output; another seed another output; batching does not matter
    torch.testing.assert_close(_fitted(_defense(name, explainer), x).explain(x), defended, rtol=0, atol=0)
    assert not torch.equal(_fitted(_defense(name, explainer, seed=1), x).explain(x), defended)
    torch.testing.assert_close(
        torch.cat([defense.defend(clean[i : i + 1], logits[i : i + 1]) for i in range(N)]),
        defended,
        rtol=1e-5,
        atol=1e-6,
    )
    loaded = Defense.from_pretrained(defense.save_pretrained(tmp_path / name), explainer)
    assert type(loaded) is type(defense) and loaded.config == defense.config
    torch.testing.assert_close(loaded.explain(x), defended, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ wrong inputs


@pytest.mark.parametrize("name", EXPLAINERS.names())
def test_explainer_wrong_shape_is_a_data_error_naming_x(name: str, model: CNNClassifier) -> None:
    with pytest.raises(DataError, match=r"x must have shape \(n, C, H, W\)"):
        _explainer(name, model).explain(torch.zeros(2, 8, 8))


@pytest.mark.parametrize("name", EXPLAINERS.names())
def test_explainer_wrong_channels_is_a_data_error(name: str, model: CNNClassifier) -> None:
    with pytest.raises(DataError, match="channel"):
        _explainer(name, model).explain(torch.zeros(2, 3, 8, 8))
