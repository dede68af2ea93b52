"""Contract of the one artefact format (genprov.models.artifact) over every registry of fitted objects.

Every fitted class round-trips through save_pretrained / from_pretrained with equal scores and thresholds
(1e-6), reopens WITHOUT being passed what it wraps (the recorded checkpoint is reopened), reads the
folders of the formats before it, refuses unknown versions naming them, and is recognised by
identify_artifact.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from contract_models import tiny_autoencoder
from test_contract_feature_extractors import FACTORIES as EXTRACTOR_FACTORIES

from genprov.attribution.data.extractors import (
    FEATURE_EXTRACTORS,
    ClassifierExtractor,
    FeatureExtractor,
    SimCLRExtractor,
)
from genprov.attribution.data.index_folder import build_similarity_index, open_similarity_index, read_index_info
from genprov.attribution.data.mapper import FeatureMapper, TuningConfig
from genprov.attribution.data.similarity import SimilarityAttributor, SimilarityConfig, SoftCalibration
from genprov.attribution.data.trak import TRAKAttributor, TRAKConfig
from genprov.attribution.model import MODEL_ATTRIBUTORS, ModelAttributor
from genprov.attribution.model.base import AttributesSamples
from genprov.attribution.model.keyed import (
    KeyConstraintWarning,
    KeyedAttributionResult,
    KeyedGenerators,
    KeyedGeneratorsConfig,
)
from genprov.data import load_dataset
from genprov.exceptions import CheckpointError
from genprov.models.artifact import CONFIG_FILE, read_artifact
from genprov.models.checkpoints import checkpoint_source, load_checkpoint, save_checkpoint, save_tensors
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


def _perturb(module: torch.nn.Module) -> None:
    for p in module.parameters(recurse=False):
        p.data.add_(1e-3)


@pytest.mark.parametrize("name", MODEL_ATTRIBUTORS.names())
def test_model_attributor_round_trip_without_the_generator(name: str, gan: Generator, tmp_path: Path) -> None:
    own = gan(torch.randn(24, 8, generator=torch_generator(0, "z"))).detach()
    model = tiny_autoencoder() if name == "aeroblade" else gan
    attributor = MODEL_ATTRIBUTORS.create(name, model).fit(own, negatives=_images(12, "neg"))
    folder = attributor.save_pretrained(tmp_path / name)
    found = identify_artifact(folder)
    assert found is not None and found.kind == f"{name} detector"
    if model is gan:
        loaded = ModelAttributor.from_pretrained(folder)  # the generator is reopened from its checkpoint
    else:  # a VAE built in memory: the artefact records its fingerprint only, so it must be passed (and match)
        with pytest.raises(CheckpointError, match="pass it"):
            ModelAttributor.from_pretrained(folder)
        with pytest.raises(CheckpointError, match="fingerprint"):
            ModelAttributor.from_pretrained(folder, tiny_autoencoder().requires_grad_(False).apply(_perturb))
        loaded = ModelAttributor.from_pretrained(folder, tiny_autoencoder())
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


# ------------------------------------------------------------------------------------------- keyed families


@pytest.fixture(scope="module")
def family(gan: Generator, tmp_path_factory: pytest.TempPathFactory) -> KeyedGenerators:
    config = KeyedGeneratorsConfig(user_steps=2, key_steps=2, n_real=16, batch_size=4, n_compliance=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KeyConstraintWarning)  # 2 steps make no data-compliant keys
        return KeyedGenerators.create(gan, 2, config, out=tmp_path_factory.mktemp("family"), real=_images(16, "real"))


def test_keyed_family_round_trip(family: KeyedGenerators, tmp_path: Path) -> None:
    assert isinstance(family, AttributesSamples)
    copy = family.save_pretrained(tmp_path / "copy")
    found = identify_artifact(copy)
    assert found is not None and found.kind == "keyed family"
    loaded = KeyedGenerators.from_pretrained(copy)  # nothing passed: root and users live in the folder
    assert loaded.config == family.config and loaded.manifest["members"] == family.manifest["members"]
    queries = _images(6, "queries")
    torch.testing.assert_close(loaded.responses(queries), family.responses(queries), rtol=0, atol=1e-6)
    torch.testing.assert_close(loaded.sample(1, 4, seed=2), family.sample(1, 4, seed=2), rtol=0, atol=1e-6)
    result = loaded.attribute(queries)
    assert isinstance(result, KeyedAttributionResult)
    assert (result.users == family.attribute(queries).users).all()


def test_keyed_family_old_manifest_layout_loads(family: KeyedGenerators, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(family.folder, old)
    record = json.loads((old / CONFIG_FILE).read_text())
    (old / CONFIG_FILE).unlink()
    legacy = {"format": "genprov-keyed-family", "version": 1, "config": record["config"], **record["state"]}
    (old / "manifest.json").write_text(json.dumps(legacy))
    assert identify_artifact(old) is not None and identify_artifact(old).kind == "keyed family"  # type: ignore[union-attr]
    queries = _images(4, "queries")
    loaded = KeyedGenerators.from_pretrained(old)
    torch.testing.assert_close(loaded.responses(queries), family.responses(queries), rtol=0, atol=1e-6)
    (old / "manifest.json").write_text(json.dumps({**legacy, "version": 2}))
    with pytest.raises(CheckpointError, match="manifest version 2"):
        KeyedGenerators.from_pretrained(old)


# ------------------------------------------------------------------------------------ extractors and mapper


def _extractor(name: str, classifier: CNNClassifier, tmp_path: Path) -> FeatureExtractor:
    if name == "classifier":
        return ClassifierExtractor(classifier)  # reopened from a checkpoint: the artefact records it
    return EXTRACTOR_FACTORIES[name](tmp_path)


@pytest.mark.parametrize("name", FEATURE_EXTRACTORS.names())
def test_extractor_round_trip_without_its_weights(name: str, classifier: CNNClassifier, tmp_path: Path) -> None:
    extractor = _extractor(name, classifier, tmp_path)
    size = classifier.config.image_size if name == "classifier" else 8
    images = torch.rand(5, 1, size, size, generator=torch_generator(0, "extract")) * 2 - 1
    expected = extractor.extract(images)
    folder = extractor.save_pretrained(tmp_path / "saved")
    found = identify_artifact(folder)
    assert found is not None and found.kind == f"{name} feature extractor"
    for weights in tmp_path.glob("*.safetensors"):
        weights.unlink()  # a local weights file is not needed any more
    loaded = FeatureExtractor.from_pretrained(folder)
    assert type(loaded) is type(extractor) and loaded.config == extractor.config
    assert loaded.spec() == extractor.spec()
    torch.testing.assert_close(loaded.extract(images), expected, rtol=0, atol=1e-6)


def test_simclr_old_single_file_loads(tmp_path: Path) -> None:
    extractor = EXTRACTOR_FACTORIES["simclr"](tmp_path)
    assert isinstance(extractor, SimCLRExtractor) and extractor.encoder_ is not None and extractor.head_ is not None
    tensors = {f"encoder.{k}": v for k, v in extractor.encoder_.state_dict().items()}
    tensors.update({f"head.{k}": v for k, v in extractor.head_.state_dict().items()})
    meta = {"format": "genprov-simclr-1", "config": json.dumps(extractor.config.to_dict()), "in_channels": "1"}
    save_tensors(tmp_path / "simclr.safetensors", tensors, metadata=meta)
    loaded = SimCLRExtractor.from_pretrained(tmp_path / "simclr.safetensors")
    images = _images(4, "extract")
    torch.testing.assert_close(loaded.extract(images), extractor.extract(images), rtol=0, atol=1e-6)
    save_tensors(tmp_path / "other.safetensors", tensors, metadata={**meta, "format": "genprov-simclr-0"})
    with pytest.raises(CheckpointError, match="genprov-simclr-1"):
        SimCLRExtractor.from_pretrained(tmp_path / "other.safetensors")


def _mapper() -> FeatureMapper:
    gen = torch_generator(0, "mapper")
    pool, queries = torch.randn(20, 6, generator=gen), torch.randn(8, 6, generator=gen)
    positives = [[i] for i in range(8)]
    config = TuningConfig(mapper="mlp", hidden_dim=8, max_steps=3, batch_size=4, n_pool_negatives=4)
    return FeatureMapper(config).fit(queries, positives, pool)


def test_mapper_round_trip_and_old_single_file(tmp_path: Path) -> None:
    mapper = _mapper()
    features = torch.randn(5, 6, generator=torch_generator(1, "mapper"))
    folder = mapper.save_pretrained(tmp_path / "mapper")
    found = identify_artifact(folder)
    assert found is not None and found.kind == "mlp feature mapper"
    loaded = FeatureMapper.from_pretrained(folder)
    assert loaded.config == mapper.config and loaded.best_step_ == mapper.best_step_
    torch.testing.assert_close(loaded.map_queries(features), mapper.map_queries(features), rtol=0, atol=1e-6)
    torch.testing.assert_close(loaded.map_train(features), mapper.map_train(features), rtol=0, atol=1e-6)
    meta = {
        "format": "genprov-feature-mapper-1",
        "config": json.dumps(mapper.config.to_dict()),
        "dim": "6",
        "history": "[]",
        "best_step": json.dumps(mapper.best_step_),
    }
    save_tensors(tmp_path / "old.safetensors", mapper._state(), metadata=meta)
    old = FeatureMapper.from_pretrained(tmp_path / "old.safetensors")
    torch.testing.assert_close(old.map_queries(features), mapper.map_queries(features), rtol=0, atol=1e-6)
    assert old.fingerprint() == mapper.fingerprint()


# ------------------------------------------------------------------------------------ similarity index folders

SIM_DATA = {"name": "digits", "split": "train", "n": 24, "seed": 0, "resize": None, "data_root": None}


def _sim_mapper(dim: int) -> FeatureMapper:
    gen = torch_generator(0, "sim-mapper")
    pool, queries = torch.randn(20, dim, generator=gen), torch.randn(8, dim, generator=gen)
    config = TuningConfig(mapper="linear", max_steps=3, batch_size=4, n_pool_negatives=4)
    return FeatureMapper(config).fit(queries, [[i] for i in range(8)], pool)


def _assert_same_attribution(
    loaded: SimilarityAttributor, original: SimilarityAttributor, queries: torch.Tensor
) -> None:
    got, expected = loaded.attribute(queries, k=5), original.attribute(queries, k=5)
    assert loaded.method == original.method and (got.indices == expected.indices).all()
    torch.testing.assert_close(torch.from_numpy(got.scores), torch.from_numpy(expected.scores), rtol=0, atol=1e-6)
    assert got.soft is not None and expected.soft is not None
    torch.testing.assert_close(torch.from_numpy(got.soft), torch.from_numpy(expected.soft), rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", ["pixels-index-tuned", "classifier-in-memory"])
def test_similarity_index_round_trip_from_the_folder_alone(
    case: str, classifier: CNNClassifier, tmp_path: Path
) -> None:
    train, queries = load_dataset(**SIM_DATA).images, load_dataset("digits", split="test", n=3).images
    folder = tmp_path / "index"
    if case == "pixels-index-tuned":
        attributor = SimilarityAttributor(
            FEATURE_EXTRACTORS.create("pixels"), SimilarityConfig(shard_size=8), mapper=_sim_mapper(64)
        )
        attributor.fit(train, store=folder)
        attributor.calibration_ = SoftCalibration(5.0, -0.2, 1.5, 7)
    else:  # the classifier has no weights file of its own: saved beside, recording its checkpoint
        attributor = SimilarityAttributor(ClassifierExtractor(classifier)).fit(train)
    attributor.save_pretrained(folder, data=SIM_DATA)
    found = identify_artifact(folder)
    assert found is not None and found.kind == "similarity index"
    loaded = SimilarityAttributor.from_pretrained(folder)  # nothing else: no extractor, mapper or training data
    _assert_same_attribution(loaded, attributor, queries)
    assert loaded.calibration_ == attributor.calibration_ and loaded.n_train_ == len(train)
    assert loaded.data_fingerprint_ == attributor.data_fingerprint_
    assert read_index_info(folder).state["data"] == SIM_DATA


def test_similarity_index_weights_are_found_by_place_and_checked_by_content(
    classifier: CNNClassifier, tmp_path: Path
) -> None:
    source = checkpoint_source(classifier)
    assert source is not None
    shutil.copytree(source[0], tmp_path / "clf")
    attributor, _, record = build_similarity_index(
        "classifier", tmp_path / "index", SIM_DATA, weights=str(tmp_path / "clf")
    )
    assert record.state["extractor"]["weights"] == "../clf" and "checkpoint" not in record.state["extractor"]["config"]
    queries = load_dataset("digits", split="test", n=3).images
    (tmp_path / "clf").rename(tmp_path / "moved")
    with pytest.raises(CheckpointError, match="which is missing"):
        SimilarityAttributor.from_pretrained(tmp_path / "index")
    moved = SimilarityAttributor.from_pretrained(tmp_path / "index", {"weights": tmp_path / "moved"})
    _assert_same_attribution(moved, attributor, queries)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        save_checkpoint(
            tmp_path / "other", "classifier", {"classifier": CNNClassifier(classifier.config)}, classifier.config
        )
    with pytest.raises(CheckpointError, match="other weights"):
        SimilarityAttributor.from_pretrained(tmp_path / "index", {"weights": tmp_path / "other"})


def _legacy_index(tmp_path: Path, fmt: object = 1) -> tuple[Path, SimilarityAttributor]:
    """An index folder in the layout before the artefact format: the feature index and similarity.json."""
    folder = tmp_path / "old"
    config = SimilarityConfig(shard_size=8)
    attributor = SimilarityAttributor(FEATURE_EXTRACTORS.create("pixels"), config)
    attributor.fit(load_dataset(**SIM_DATA), store=folder)
    attributor.calibration_ = SoftCalibration(5.0, -0.2)
    info = {
        "format": fmt,
        "extractor": "pixels",
        "extractor_config": attributor.feature_extractor.config.to_dict(),
        "weights": None,
        "mapper": None,
        "calibration": {"inv_tau": 5.0, "bias": -0.2},
        "similarity_config": config.to_dict(),
        "image_size": 8,
        "channels": 1,
        "n_train": SIM_DATA["n"],
        "data": SIM_DATA,
        "method": attributor.method,
    }
    (folder / "similarity.json").write_text(json.dumps(info))
    return folder, attributor


def test_similarity_index_old_layout_opens(tmp_path: Path) -> None:
    folder, attributor = _legacy_index(tmp_path)
    found = identify_artifact(folder)
    assert found is not None and found.kind == "similarity index"
    queries = load_dataset("digits", split="test", n=3).images
    _assert_same_attribution(SimilarityAttributor.from_pretrained(folder), attributor, queries)
    reopened, train, record = open_similarity_index(folder)  # reloads the recorded data and checks it
    assert record.format_version == 1 and len(train) == SIM_DATA["n"]
    _assert_same_attribution(reopened, attributor, queries)


@pytest.mark.parametrize("fmt", [2, None])
def test_similarity_index_other_versions_are_refused(fmt: object, tmp_path: Path) -> None:
    folder, _ = _legacy_index(tmp_path, fmt)
    with pytest.raises(CheckpointError, match=f"similarity index format {fmt!r}"):
        SimilarityAttributor.from_pretrained(folder)


def test_similarity_index_other_artifact_versions_are_refused(tmp_path: Path) -> None:
    folder, attributor = _legacy_index(tmp_path)
    attributor.save_pretrained(folder, data=SIM_DATA)  # upgrades the folder: config.json is its record now
    record = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**record, "format_version": 3}))
    with pytest.raises(CheckpointError, match="format_version 3"):
        SimilarityAttributor.from_pretrained(folder)
