"""Contract checks every model-attribution registry entry passes: ``MODEL_ATTRIBUTORS`` and ``DETECTORS``.

Shared checks on a tiny untrained 8x8 DCGAN: every registered name has a contract factory; the config is the
registered type and survives a JSON round trip; fit returns ``self`` and sets a threshold that rejects at most
``fnr`` of the held-out own samples; scores are (n,) finite float32 and ``predict`` / ``attribute`` agree
with them; the same seed gives the same scores (a fresh attributor too) and batching does not change them;
wrong shapes, dtypes or values raise a :class:`~genprov.exceptions.DataError` naming the argument.
Save / load round trips live in ``test_contract_roundtrip*.py``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from contract_models import tiny_autoencoder
from torch import Tensor, nn

from genprov.attribution.model import DETECTORS, MODEL_ATTRIBUTORS, DeepSADConfig, ModelAttributor
from genprov.exceptions import ConfigError, DataError, NotFittedError
from genprov.models.gans import GANConfig, Generator
from genprov.results import ModelAttributionResult
from genprov.utils.seeding import torch_generator

torch.set_num_threads(1)

DETECTOR = {"widths": [4], "rep_dim": 4, "n_epochs": 2, "lr_milestones": [], "batch_size": 16}
#: Tiny settings per registered method (a new method must add its entry here).
SETTINGS: dict[str, dict[str, object]] = {
    "flipad": {"max_iter": 20, "n_anchor": 16, "detector": DETECTOR},
    "raw-pixels": {"detector": DETECTOR},
    "dct": {"detector": DETECTOR},
    "prnu": {},
    "latent-inversion": {"n_restarts": 2, "n_steps": 3},
    "aeroblade": {},
}


#: Methods that study another kind of model than the DCGAN: their model (a new method adds it here if needed).
MODELS = {"aeroblade": tiny_autoencoder}


@pytest.fixture(scope="module")
def generator() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Generator(GANConfig(arch="dcgan", image_size=8, width=4, latent_dim=8)).eval()


@pytest.fixture(scope="module")
def own(generator: nn.Module) -> Tensor:
    with torch.no_grad():
        out: Tensor = generator(generator.sample_latent(24, seed=1))
    return out


def _images(n: int, seed: int) -> Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch_generator(seed, "contract-model")) * 2 - 1


def _attributor(name: str, generator: nn.Module, **overrides: object) -> ModelAttributor:
    config_type = MODEL_ATTRIBUTORS.config_type(name)
    assert config_type is not None
    config = config_type.from_dict({**SETTINGS[name], "holdout_fraction": 0.25, **overrides})
    model = MODELS[name]() if name in MODELS else generator
    return MODEL_ATTRIBUTORS.create(name, model, config=config)


def _fitted(name: str, generator: nn.Module, own: Tensor, **overrides: object) -> ModelAttributor:
    return _attributor(name, generator, **overrides).fit(own, negatives=_images(16, seed=2))


def test_every_registered_method_has_contract_settings() -> None:
    assert set(MODEL_ATTRIBUTORS.names()) == set(SETTINGS)


@pytest.mark.parametrize("name", MODEL_ATTRIBUTORS.names())
def test_config_is_registered_type_and_round_trips(name: str, generator: nn.Module) -> None:
    attributor = _attributor(name, generator)
    config = attributor.config
    assert type(config) is MODEL_ATTRIBUTORS.config_type(name)
    assert type(config).from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert attributor.name == name


@pytest.mark.parametrize("name", MODEL_ATTRIBUTORS.names())
def test_fit_score_predict_attribute(name: str, generator: nn.Module, own: Tensor) -> None:
    attributor = _attributor(name, generator)
    with pytest.raises(NotFittedError, match="fit"):
        attributor.score_samples(own[:2])
    assert attributor.fit(own, negatives=_images(16, seed=2)) is attributor
    x = torch.cat([own[:3], _images(3, seed=3)])
    scores = attributor.score_samples(x)
    assert scores.shape == (6,) and scores.dtype == torch.float32 and bool(torch.isfinite(scores).all())
    assert torch.equal(attributor.predict(x), scores >= attributor.threshold_)
    result = attributor.attribute(x)
    assert isinstance(result, ModelAttributionResult) and result.method == name
    assert result.verdicts.tolist() == (scores >= attributor.threshold_).tolist()
    hold = attributor.holdout_scores_
    assert int((hold < attributor.threshold_).sum()) <= math.floor(attributor.config.fnr * len(hold))


@pytest.mark.parametrize("name", MODEL_ATTRIBUTORS.names())
def test_same_seed_same_scores_and_batching_does_not_matter(name: str, generator: nn.Module, own: Tensor) -> None:
    x = _images(5, seed=4)
    first = _fitted(name, generator, own)
    scores = first.score_samples(x)
    torch.testing.assert_close(_fitted(name, generator, own).score_samples(x), scores, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([first.score_samples(x[i : i + 1]) for i in range(5)]), scores)
    one_by_one = _fitted(name, generator, own, batch_size=1)
    torch.testing.assert_close(one_by_one.score_samples(x), scores, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODEL_ATTRIBUTORS.names())
def test_wrong_inputs_raise_data_errors_naming_the_argument(name: str, generator: nn.Module, own: Tensor) -> None:
    attributor = _attributor(name, generator)
    with pytest.raises(DataError, match="generated"):
        attributor.fit(own[None])  # 5-D: neither images nor rows
    with pytest.raises(DataError, match="negatives"):
        attributor.fit(own, negatives=_images(4, seed=5)[:, :, :4, :4])
    with pytest.raises(DataError, match="at least 2"):
        attributor.fit(own[:2])
    with pytest.raises(DataError, match="generated"):
        attributor.fit(own + 3)  # outside [-1, 1]
    fitted = _fitted(name, generator, own)
    with pytest.raises(DataError, match="per-sample shape"):
        fitted.score_samples(torch.zeros(2, 1, 4, 4))
    with pytest.raises(DataError, match="NaN"):
        fitted.score_samples(torch.full((2, 1, 8, 8), math.nan))


# -------------------------------------------------------------------------------------------- detectors


def _detector(name: str, seed: int = 0):  # type: ignore[no-untyped-def]
    config_type = DETECTORS.config_type(name)
    assert config_type is not None
    return DETECTORS.create(name, config=config_type.from_dict({**DETECTOR, "seed": seed}))


def _features(n: int, seed: int, shift: float = 0.0) -> Tensor:
    return torch.randn(n, 2, 4, 4, generator=torch_generator(seed, "contract-detector")) + shift


@pytest.mark.parametrize("name", DETECTORS.names())
def test_detector_contract(name: str) -> None:
    config = _detector(name).config
    assert type(config) is DETECTORS.config_type(name) and isinstance(config, DeepSADConfig)
    assert type(config).from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(NotFittedError, match="fit"):
        _detector(name).score(_features(2, 0))
    own, neg, x = _features(20, 1), _features(12, 2, shift=3.0), _features(6, 3)
    detector = _detector(name)
    assert detector.fit(own, neg) is detector
    scores = detector.score(x)
    assert scores.shape == (6,) and bool(torch.isfinite(scores).all())
    torch.testing.assert_close(_detector(name).fit(own, neg).score(x), scores, rtol=0, atol=0)
    assert not torch.equal(_detector(name, seed=1).fit(own, neg).score(x), scores)
    torch.testing.assert_close(torch.cat([detector.score(x[i : i + 1]) for i in range(6)]), scores)
    with pytest.raises(DataError, match="per-sample shape"):
        detector.score(torch.zeros(2, 2, 2, 2))
    with pytest.raises(DataError, match="shape"):
        _detector(name).fit(own, neg[:, :1])
    with pytest.raises(DataError, match="at least 2"):
        _detector(name).fit(own[:1])


def test_unknown_names_are_config_errors_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="flipad"):
        MODEL_ATTRIBUTORS.create("flipadd", None)
    with pytest.raises(ConfigError, match="deep-sad"):
        DETECTORS.create("deep-sa")
