"""Checkpoint round trips and the errors for missing, corrupted and mismatched checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from genprov.config import Config
from genprov.exceptions import CheckpointError
from genprov.models.checkpoints import (
    CONFIG_FILE,
    MODEL_KINDS,
    WEIGHTS_FILE,
    flatten_optimizer_state,
    is_checkpoint,
    load_checkpoint,
    save_checkpoint,
    unflatten_optimizer_state,
)
from genprov.models.classifiers import ClassifierConfig
from genprov.models.diffusion import DDPMConfig
from genprov.models.gans import GANConfig
from genprov.models.tabular import TabularGANConfig
from genprov.models.train_config import TrainConfig
from genprov.utils.seeding import torch_generator

CONFIGS: dict[str, Config] = {
    "gan": GANConfig(arch="lsgan", latent_dim=6, width=4),
    "ddpm": DDPMConfig.preset("tiny"),
    "classifier": ClassifierConfig(width=4, feature_dim=8, n_classes=3),
    "tabular-gan": TabularGANConfig(n_features=5, latent_dim=4, hidden=(8,)),
}
INPUTS = {
    "gan": lambda: (torch.randn(3, 6, generator=torch_generator(0)),),
    "ddpm": lambda: (torch.randn(2, 1, 8, 8, generator=torch_generator(0)), torch.tensor([3, 700])),
    "classifier": lambda: (torch.rand(3, 1, 8, 8, generator=torch_generator(0)) * 2 - 1,),
    "tabular-gan": lambda: (torch.randn(3, 4, generator=torch_generator(0)),),
}


def _fresh(kind: str) -> dict[str, nn.Module]:
    with torch.random.fork_rng():
        torch.manual_seed(1)
        modules = MODEL_KINDS[kind].build(CONFIGS[kind])
    for module in modules.values():
        # make BatchNorm running stats non-trivial so they are checked too
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                assert m.running_mean is not None
                m.running_mean.add_(0.5)
        module.eval()
    return modules


@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
def test_round_trip_gives_equal_outputs(kind: str, tmp_path: Path) -> None:
    modules = _fresh(kind)
    train = TrainConfig(n_steps=3, lr=1e-3)
    folder = save_checkpoint(tmp_path / "ckpt", kind, modules, CONFIGS[kind], train, extra={"note": "x"})
    assert is_checkpoint(folder)
    loaded = load_checkpoint(folder)
    assert loaded.kind == kind
    assert loaded.model_config == CONFIGS[kind]
    assert loaded.training_config == train
    assert loaded.extra == {"note": "x"}
    assert set(loaded.modules) == set(modules)
    primary = MODEL_KINDS[kind].primary
    assert loaded.model is loaded.modules[primary]
    assert not loaded.model.training
    args = INPUTS[kind]()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(*args), modules[primary](*args), rtol=0, atol=0)
    meta = json.loads((folder / CONFIG_FILE).read_text())
    assert meta["kind"] == kind
    assert meta["genprov_version"]
    assert meta["training"]["lr"] == 1e-3


def test_tensor_names_are_prefixed_by_module(tmp_path: Path) -> None:
    from safetensors import safe_open

    save_checkpoint(tmp_path, "gan", _fresh("gan"), CONFIGS["gan"])
    with safe_open(str(tmp_path / WEIGHTS_FILE), framework="pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("generator.final_layer.") for k in keys)
    assert any(k.startswith("discriminator.") for k in keys)


def test_a_subset_of_modules_can_be_saved(tmp_path: Path) -> None:
    modules = _fresh("gan")
    save_checkpoint(tmp_path, "gan", {"generator": modules["generator"]}, CONFIGS["gan"])
    loaded = load_checkpoint(tmp_path)
    assert set(loaded.modules) == {"generator"}
    assert loaded.training_config is None


def test_missing_folder_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope.*does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_missing_files_name_the_path(tmp_path: Path) -> None:
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(CheckpointError, match=CONFIG_FILE):
        load_checkpoint(tmp_path / "empty")
    save_checkpoint(tmp_path / "c", "classifier", _fresh("classifier"), CONFIGS["classifier"])
    (tmp_path / "c" / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=WEIGHTS_FILE):
        load_checkpoint(tmp_path / "c")


def test_corrupted_safetensors(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, "classifier", _fresh("classifier"), CONFIGS["classifier"])
    weights = tmp_path / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*corrupted"):
        load_checkpoint(tmp_path)


def test_corrupted_config_json(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, "classifier", _fresh("classifier"), CONFIGS["classifier"])
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match=CONFIG_FILE):
        load_checkpoint(tmp_path)


def test_mismatched_config_names_keys_and_shapes(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, "gan", _fresh("gan"), CONFIGS["gan"])
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    meta["model"]["width"] = 5
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"shape mismatches: .*discriminator\.body\.0\.weight") as info:
        load_checkpoint(tmp_path)
    assert "(file (4, 1, 4, 4), model (5, 1, 4, 4))" in str(info.value)
    assert "more" in str(info.value)  # long lists are cut


def test_mismatched_architecture_names_missing_and_unexpected_keys(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, "classifier", _fresh("classifier"), CONFIGS["classifier"])
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    meta["model"]["n_conv"] = 4
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"missing keys: classifier\.conv\.7\.bias"):
        load_checkpoint(tmp_path)


def test_invalid_config_values_and_kind(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, "gan", _fresh("gan"), CONFIGS["gan"])
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    meta["model"]["arch"] = "stylegan"
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"invalid config.*arch"):
        load_checkpoint(tmp_path)
    meta["kind"] = "vae"
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="Unknown checkpoint kind 'vae'"):
        load_checkpoint(tmp_path)


def test_save_checks_kind_and_config_type(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="Unknown checkpoint kind"):
        save_checkpoint(tmp_path, "vae", _fresh("gan"), CONFIGS["gan"])
    with pytest.raises(CheckpointError, match="GANConfig"):
        save_checkpoint(tmp_path, "gan", _fresh("gan"), CONFIGS["ddpm"])


def test_optimizer_state_round_trip() -> None:
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.5, 0.9))
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    structure, tensors = flatten_optimizer_state("optimizer.m", opt.state_dict())
    json.dumps(structure)  # JSON-serialisable
    restored = unflatten_optimizer_state(json.loads(json.dumps(structure)), tensors)
    opt2 = torch.optim.AdamW(model.parameters(), lr=1.0)
    opt2.load_state_dict(restored)
    assert opt2.param_groups[0]["lr"] == 1e-2
    assert opt2.param_groups[0]["betas"] == (0.5, 0.9)
    torch.testing.assert_close(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_no_pickle_anywhere_in_models() -> None:
    src = Path(__file__).resolve().parents[3] / "src" / "genprov" / "models"
    for path in src.glob("*.py"):
        text = path.read_text()
        assert "torch.load(" not in text, path
        assert "import pickle" not in text, path
