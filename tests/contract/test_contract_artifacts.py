"""Contract of the one artefact format (genprov.models.artifact) over every registry of fitted objects.

Every fitted class round-trips through save_pretrained / from_pretrained with equal scores and thresholds
(1e-6), reopens WITHOUT being passed what it wraps (the recorded checkpoint is reopened), reads the
folders of the formats before it, refuses unknown versions naming them, and is recognised by
identify_artifact.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from genprov.attribution.data.trak import TRAKAttributor, TRAKConfig
from genprov.attribution.model import MODEL_ATTRIBUTORS, ModelAttributor
from genprov.exceptions import CheckpointError
from genprov.models.artifact import CONFIG_FILE, read_artifact
from genprov.models.checkpoints import load_checkpoint, save_checkpoint, save_tensors
from genprov.models.classifiers import ClassifierConfig, CNNClassifier
from genprov.models.diffusion import DDPM, DDPMConfig
from genprov.models.gans import GANConfig, Generator
from genprov.privacy import ATTACKS, DEFENSES, EXPLAINERS, AttackConfig, Defense, InversionAttack
from genprov.utils.artifacts import identify_artifact
from genprov.utils.seeding import torch_generator

torch.set_num_threads(1)


def _images(n: int, key: str) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch_generator(0, key)) * 2 - 1


@pytest.fixture(scope="module")
def gan(tmp_path_factory: pytest.TempPathFactory) -> Generator:
    """A tiny generator reopened from a checkpoint, so artefacts can record where it lives."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = GANConfig(arch="dcgan", image_size=8, width=4, latent_dim=8)
        folder = tmp_path_factory.mktemp("gan")
        save_checkpoint(folder, "gan", {"generator": Generator(config)}, config)
    model = load_checkpoint(folder).model
    assert isinstance(model, Generator)
    return model


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> CNNClassifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = ClassifierConfig(width=4, feature_dim=8)
        folder = tmp_path_factory.mktemp("clf")
        save_checkpoint(folder, "classifier", {"classifier": CNNClassifier(config)}, config)
    model = load_checkpoint(folder).model
    assert isinstance(model, CNNClassifier)
    return model


# -------------------------------------------------------------------------------------- model attributors


@pytest.mark.parametrize("name", MODEL_ATTRIBUTORS.names())
def test_model_attributor_round_trip_without_the_generator(name: str, gan: Generator, tmp_path: Path) -> None:
    own = gan(torch.randn(24, 8, generator=torch_generator(0, "z"))).detach()
    attributor = MODEL_ATTRIBUTORS.create(name, gan).fit(own, negatives=_images(12, "neg"))
    folder = attributor.save_pretrained(tmp_path / name)
    found = identify_artifact(folder)
    assert found is not None and found.kind == f"{name} detector"
    loaded = ModelAttributor.from_pretrained(folder)  # the generator is reopened from its checkpoint
    assert type(loaded) is type(attributor) and loaded.config == attributor.config
    assert abs(loaded.threshold_ - attributor.threshold_) <= 1e-6
    queries = _images(6, "queries")
    torch.testing.assert_close(loaded.score_samples(queries), attributor.score_samples(queries), rtol=0, atol=1e-6)


def test_model_attributor_old_layout_loads_and_other_versions_are_refused(gan: Generator, tmp_path: Path) -> None:
    own = gan(torch.randn(24, 8, generator=torch_generator(0, "z"))).detach()
    attributor = MODEL_ATTRIBUTORS.create("flipad", gan).fit(own)
    meta, tensors = attributor._state()
    old = tmp_path / "old"
    old.mkdir()
    save_tensors(old / "state.safetensors", {**tensors, "attributor.holdout_scores": attributor.holdout_scores_})
    legacy = {
        "format": "genprov-model-attributor-v1",
        "method": "flipad",
        "class": type(attributor).__name__,
        "config": attributor.config.to_dict(),
        "threshold": attributor.threshold_,
        "input_shape": list(attributor.input_shape_),
        "generator_fingerprint": read_artifact(attributor.save_pretrained(tmp_path / "new"), "model-attributor")[
            0
        ].wraps["generator"]["fingerprint"],
        "state": meta,
    }
    (old / CONFIG_FILE).write_text(json.dumps(legacy))
    with pytest.raises(CheckpointError, match="records no checkpoint"):
        ModelAttributor.from_pretrained(old)  # the old layout did not record where the generator is
    loaded = ModelAttributor.from_pretrained(old, gan)
    assert loaded.threshold_ == attributor.threshold_
    queries = _images(4, "queries")
    torch.testing.assert_close(loaded.score_samples(queries), attributor.score_samples(queries), rtol=0, atol=1e-6)
    other = Generator(GANConfig(arch="dcgan", image_size=8, width=4, latent_dim=8))
    with pytest.raises(CheckpointError, match="another fingerprint"):
        ModelAttributor.from_pretrained(old, other)
    config = json.loads((tmp_path / "new" / CONFIG_FILE).read_text())
    (tmp_path / "new" / CONFIG_FILE).write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version 99"):
        ModelAttributor.from_pretrained(tmp_path / "new")
    (old / CONFIG_FILE).write_text(json.dumps({**legacy, "format": "genprov-model-attributor-v0"}))
    with pytest.raises(CheckpointError, match="genprov-model-attributor-v0"):
        ModelAttributor.from_pretrained(old, gan)


# -------------------------------------------------------------------------------------- attacks, defenses


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_round_trip(name: str, classifier: CNNClassifier, tmp_path: Path) -> None:
    x = _images(12, "private")
    obs = EXPLAINERS.create("gradient", classifier).observe(x)
    attack = ATTACKS.create(name, config=AttackConfig(width=4, depth=1, max_epochs=2, seed=0)).fit(obs, x)
    found = identify_artifact(attack.save_pretrained(tmp_path / name))
    assert found is not None and found.kind == f"{name} inversion attack"
    loaded = InversionAttack.from_pretrained(tmp_path / name)
    torch.testing.assert_close(loaded.reconstruct(obs), attack.reconstruct(obs), rtol=0, atol=1e-6)
    result = loaded.invert(obs, x)
    assert result.method == name and result.reconstructions.shape == tuple(x.shape)
    assert abs(result.metrics["mse"] - float(((attack.reconstruct(obs) - x) ** 2).mean())) <= 1e-6


@pytest.mark.parametrize("name", DEFENSES.names())
def test_defense_round_trip_without_the_explainer(name: str, classifier: CNNClassifier, tmp_path: Path) -> None:
    explainer = EXPLAINERS.create("gradient", classifier)
    config_type = DEFENSES.config_type(name)
    assert config_type is not None
    values: dict[str, object] = {"seed": 0}
    values.update(
        {"width": 4, "inverter_width": 4, "inverter_depth": 1, "n_epochs": 1} if name == "gnime" else {"sigma": 0.1}
    )
    defense = DEFENSES.create(name, explainer, config=config_type.from_dict(values))
    fit = getattr(defense, "fit", None)
    x = _images(12, "private")
    if callable(fit):
        fit(x, show_progress=False)
    folder = defense.save_pretrained(tmp_path / name)
    found = identify_artifact(folder)
    assert found is not None and found.kind == f"{name} defense"
    loaded = Defense.from_pretrained(folder)  # explainer rebuilt from its record and the model's checkpoint
    assert type(loaded) is type(defense) and loaded.explainer.describe() == explainer.describe()
    torch.testing.assert_close(loaded.explain(x), defense.explain(x), rtol=0, atol=1e-6)


def test_defense_old_layout_loads(classifier: CNNClassifier, tmp_path: Path) -> None:
    explainer = EXPLAINERS.create("gradient", classifier)
    defense = DEFENSES.create(
        "gaussian-noise", explainer, config=DEFENSES.config_type("gaussian-noise").from_dict({"sigma": 0.2})
    )  # type: ignore[union-attr]
    old = tmp_path / "old"
    old.mkdir()
    legacy = {
        "format": "genprov-explanation-defense-v2",
        "method": "gaussian-noise",
        "class": "GaussianNoiseDefense",
        "config": defense.config.to_dict(),
        "explainer": explainer.describe(),
        "state": {},
        "has_weights": False,
    }
    (old / CONFIG_FILE).write_text(json.dumps(legacy))
    x = _images(4, "private")
    torch.testing.assert_close(Defense.from_pretrained(old, explainer).explain(x), defense.explain(x), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="records no explainer model"):
        Defense.from_pretrained(old)


# ------------------------------------------------------------------------------------- data attributors


@pytest.mark.parametrize("with_store", [False, True])
def test_trak_round_trip_scores_without_training_data(with_store: bool, tmp_path: Path) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        config = DDPMConfig.preset("tiny")
        save_checkpoint(tmp_path / "ddpm", "ddpm", {"ddpm": DDPM(config)}, config)
    model = load_checkpoint(tmp_path / "ddpm").model
    train, queries = _images(6, "train"), _images(2, "queries")
    attributor = TRAKAttributor(model, config=TRAKConfig(n_timesteps=2, proj_dim=16))
    attributor.fit(train, store=tmp_path / "store" if with_store else None)
    folder = attributor.save_pretrained(tmp_path / "trak")
    found = identify_artifact(folder)
    assert found is not None and found.kind == "trak data attributor"
    loaded = TRAKAttributor.from_pretrained(folder)  # neither the model nor the training images are passed
    torch.testing.assert_close(loaded.scores(queries), attributor.scores(queries), rtol=0, atol=1e-6)
    phi = attributor.featurize_queries(queries)
    expected = attributor.result_from_scores(attributor.scores_from_features(phi).to(torch.float32), k=3)
    assert (loaded.attribute(queries, k=3).indices == expected.indices).all()
