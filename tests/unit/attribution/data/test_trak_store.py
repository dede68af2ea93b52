"""TRAK with a feature store: sharded = single pass = in memory, kill and resume, config mismatches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genprov.attribution.data.trak import TRAKAttributor, TRAKConfig
from genprov.exceptions import StoreMismatchError
from genprov.models.diffusion import DDPM, DDPMConfig
from genprov.storage import FeatureStore, read_manifest
from genprov.utils.seeding import torch_generator

BASE = TRAKConfig(n_timesteps=2, proj_dim=24, batch_size=2, shard_size=3)


@pytest.fixture(scope="module")
def model() -> DDPM:
    with torch.random.fork_rng():
        torch.manual_seed(2)
        return DDPM(DDPMConfig.preset("tiny")).eval()


@pytest.fixture(scope="module")
def train() -> torch.Tensor:
    return torch.rand(8, 1, 8, 8, generator=torch_generator(3, "store-train")) * 2 - 1


def test_sharded_single_pass_and_in_memory_features_agree(model, train, tmp_path) -> None:
    sharded = TRAKAttributor(model, config=BASE).fit(train, store=tmp_path / "sharded")
    single = TRAKAttributor(model, config=BASE.replace(shard_size=100)).fit(train, store=tmp_path / "single")
    memory = TRAKAttributor(model, config=BASE).fit(train)
    assert sharded.store_ is not None and sharded.store_.n_shards == 3
    assert read_manifest(tmp_path / "single").shards == ["done"]
    np.testing.assert_array_equal(np.asarray(sharded.train_features_), memory.train_features_)
    np.testing.assert_allclose(
        np.asarray(sharded.train_features_), np.asarray(single.train_features_), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(sharded.scores(train[:2]).numpy(), memory.scores(train[:2]).numpy(), rtol=1e-6)


def test_a_killed_featurization_resumes_to_identical_features(model, train, tmp_path, monkeypatch) -> None:
    reference = TRAKAttributor(model, config=BASE).fit(train, store=tmp_path / "ref")
    victim = TRAKAttributor(model, config=BASE)
    real = victim.featurize
    calls = {"n": 0}

    def dies_on_second_shard(batch: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(batch, indices)

    monkeypatch.setattr(victim, "featurize", dies_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        victim.fit(train, store=tmp_path / "run")
    assert FeatureStore.open(tmp_path / "run").missing_shards() == [1, 2]
    monkeypatch.undo()
    resumed = TRAKAttributor(model, config=BASE)
    computed: list[int] = []
    original = resumed.featurize
    monkeypatch.setattr(resumed, "featurize", lambda b, i: computed.append(int(i[0])) or original(b, i))
    resumed.fit(train, store=tmp_path / "run")
    assert computed == [3, 6]  # only the missing shards ran
    np.testing.assert_array_equal(np.asarray(resumed.train_features_), np.asarray(reference.train_features_))


def test_reopening_with_another_config_model_or_data_names_the_fields(model, train, tmp_path) -> None:
    TRAKAttributor(model, config=BASE).fit(train, store=tmp_path / "s")
    with pytest.raises(StoreMismatchError, match=r"config\.output_function.*'loss'.*'squared-l2-norm'"):
        TRAKAttributor(model, config=BASE.replace(output_function="squared-l2-norm")).fit(train, store=tmp_path / "s")
    with pytest.raises(StoreMismatchError, match=r"config\.proj_dim.*feature_dim"):
        TRAKAttributor(model, config=BASE.replace(proj_dim=12)).fit(train, store=tmp_path / "s")
    with pytest.raises(StoreMismatchError, match=r"timesteps"):
        TRAKAttributor(model, config=BASE.replace(timesteps=(1, 2))).fit(train, store=tmp_path / "s")
    with pytest.raises(StoreMismatchError, match="data_fingerprint"):
        TRAKAttributor(model, config=BASE).fit(train.flip(0), store=tmp_path / "s")
    other = DDPM(DDPMConfig.preset("tiny")).eval()
    with pytest.raises(StoreMismatchError, match="model_fingerprint"):
        TRAKAttributor(other, config=BASE).fit(train, store=tmp_path / "s")
    rescored = TRAKAttributor(model, config=BASE.replace(scoring="grad-cos", batch_size=4)).fit(
        train, store=FeatureStore(tmp_path / "s")
    )  # scoring settings and batch size do not change the features: the store is reused
    assert rescored.store_ is not None and rescored.store_.is_complete
