"""Keys, user-end fine-tuning and keyed families on tiny 8x8 generators (a few hundred steps at most)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from genprov.attribution.model.keyed import (
    AMBIGUOUS,
    NONE,
    KeyConstraintError,
    KeyConstraintWarning,
    KeyedGenerators,
    KeyedGeneratorsConfig,
    fine_tune_user,
    key_cosines,
    key_responses,
    train_key,
)
from genprov.data import load_dataset, png_roundtrip
from genprov.exceptions import CheckpointError, DataError, StoreMismatchError
from genprov.models.checkpoints import save_checkpoint
from genprov.models.gans import GANConfig, Generator

TINY = GANConfig(arch="dcgan", image_size=8, width=4, latent_dim=8)
#: Fast settings: tiny steps, a small G0 pool, a high learning rate for the tiny generator.
FAST = KeyedGeneratorsConfig(user_steps=150, key_steps=300, n_compliance=200, batch_size=32, lr=5e-3, robust_steps=20)


def _tiny_generator(seed: int = 0) -> Generator:
    """An untrained 8x8 generator whose samples sit near the digits' dark background (bias -1)."""
    torch.manual_seed(seed)
    generator = Generator(TINY).eval()
    with torch.no_grad():
        generator.final_layer.bias.fill_(-1.0)
    return generator


@pytest.fixture(scope="module")
def real() -> torch.Tensor:
    return load_dataset("digits", n=300, seed=0).images


@pytest.fixture(scope="module")
def root_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("root")
    save_checkpoint(folder, "gan", {"generator": _tiny_generator()}, TINY)
    return folder


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory, root_dir: Path, real: torch.Tensor) -> KeyedGenerators:
    out = tmp_path_factory.mktemp("family") / "fam"
    with warnings.catch_warnings():
        warnings.simplefilter("error", KeyConstraintWarning)  # a clean tiny family triggers no warning
        return KeyedGenerators.create(root_dir, 2, FAST, out=out, real=real)


# ------------------------------------------------------------------------------------------------ keys


def test_further_keys_are_compliant_and_orthogonal() -> None:
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(200, 16, generator=gen) + torch.linspace(0.1, 0.5, 16)  # clouds in the positive orthant
    g0 = torch.rand(100, 16, generator=gen) + 0.2
    cfg = KeyedGeneratorsConfig(key_steps=1000, key_lr=0.05)
    keys: list[torch.Tensor] = []
    for i in range(4):
        earlier = torch.stack(keys) if keys else torch.empty(0, 16)
        key, info = train_key(earlier, real, g0, cfg, i)
        assert info["loss"] == 0.0  # every hinge met
        assert float((real @ key).min()) >= 1.0 and float((g0 @ key).min()) >= 1.0
        keys.append(key)
    cos = key_cosines(torch.stack(keys))
    assert float((cos - torch.eye(4, dtype=cos.dtype)).abs().max()) < 1e-6


def test_compliance_distance_keeps_the_data_inside() -> None:
    gen = torch.Generator().manual_seed(2)
    real = torch.rand(200, 16, generator=gen) + 0.5
    cfg = KeyedGeneratorsConfig(key_steps=2000, compliance_distance=0.5)
    key, info = train_key(torch.empty(0, 16), real, real, cfg, 0)
    assert info["loss"] == 0.0
    assert float((real @ key).min() / key.norm()) >= 0.5  # distance of every point from the hyperplane


def test_penalty_reaches_a_non_right_target_angle() -> None:
    gen = torch.Generator().manual_seed(1)
    real = torch.rand(100, 16, generator=gen) + 0.5
    first, _ = train_key(torch.empty(0, 16), real, real, KeyedGeneratorsConfig(), 0)
    cfg = KeyedGeneratorsConfig(target_angle=60.0, key_steps=1000, key_lr=1e-2)
    key, _ = train_key(first[None], real, real, cfg, 1)
    cos = float(key_cosines(torch.stack([first, key]))[0, 1])
    assert cos == pytest.approx(0.5, abs=0.05)
    assert float((real @ key).min()) > 0


def test_a_fine_tuned_tiny_generator_fires_its_key(real: torch.Tensor) -> None:
    root = _tiny_generator()
    key, _ = train_key(torch.empty(0, 64), real.flatten(1), root(torch.randn(200, 8)).detach().flatten(1), FAST, 0)
    user, out_key, info = fine_tune_user(root, key, FAST, 0, steps=150)
    z = torch.randn(300, 8, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        own, base = key_responses(out_key[None], user(z))[:, 0], key_responses(out_key[None], root(z))[:, 0]
    assert float((own < 0).float().mean()) > 0.95 and float((base > 0).float().mean()) > 0.95
    assert torch.equal(out_key.flatten(), key)
    assert not any(p.requires_grad for p in user.parameters())
    assert info["steps"] == 150 and 0 <= info["hinge"] < 1.0


# ---------------------------------------------------------------------------------------------- family


def test_family_attributes_a_mixed_batch(family: KeyedGenerators, real: torch.Tensor) -> None:
    n = 100
    batch = png_roundtrip(torch.cat([family.sample(0, n, seed=5), family.sample(1, n, seed=5), real[:n]]))
    result = family.attribute(batch)
    users = result.users
    assert (users[:n] == 0).mean() > 0.9 and (users[n : 2 * n] == 1).mean() > 0.9
    assert (users[2 * n :] == NONE).mean() > 0.95
    assert set(np.unique(users)) <= {0, 1, NONE, AMBIGUOUS}
    assert result.responses.shape == (3 * n, 2)
    angles = family.angles()
    assert angles[0, 1] == pytest.approx(90.0, abs=1e-3)
    manifest = json.loads((family.folder / "config.json").read_text())["state"]
    assert manifest["complete"] and len(manifest["threshold_angles"]) == 2


def test_save_load_round_trip(family: KeyedGenerators) -> None:
    loaded = KeyedGenerators.from_pretrained(family.folder)
    assert torch.equal(loaded.keys, family.keys)
    assert loaded.config == family.config
    assert torch.equal(loaded.sample(1, 8, seed=3), family.sample(1, 8, seed=3))
    assert torch.equal(loaded.sample(-1, 8, seed=3), family.sample(-1, 8, seed=3))


def test_resume_and_grow(tmp_path: Path, root_dir: Path, real: torch.Tensor, family: KeyedGenerators) -> None:
    out = tmp_path / "fam"
    shutil.copytree(family.folder, out)
    manifest_path = out / "config.json"
    record = json.loads(manifest_path.read_text())
    manifest = record["state"]
    manifest["complete"] = False  # as if interrupted during user model 1
    manifest["members"][1]["stages"] = ["key"]
    manifest["members"][1]["done"] = False
    manifest_path.write_text(json.dumps(record))
    shutil.rmtree(out / "users" / "user-001")
    key_bytes = (out / "keys" / "key-001.safetensors").read_bytes()
    user0_bytes = (out / "users" / "user-000" / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="not finished"):
        KeyedGenerators.from_pretrained(out)

    resumed = KeyedGenerators.create(root_dir, 3, FAST, out=out, real=real)  # finishes member 1, adds member 2
    assert resumed.n_keys == 3
    assert (out / "keys" / "key-001.safetensors").read_bytes() == key_bytes  # not retrained
    assert (out / "users" / "user-000" / "model.safetensors").read_bytes() == user0_bytes
    assert torch.equal(resumed.sample(1, 8, seed=0), family.sample(1, 8, seed=0))  # same seeds, same model
    cos = key_cosines(resumed.keys)
    assert float((cos - torch.eye(3, dtype=cos.dtype)).abs().max()) < 1e-5


def test_make_robust_keeps_keys(tmp_path: Path, family: KeyedGenerators, real: torch.Tensor) -> None:
    robust = family.make_robust(("noise", "jpeg"), out=tmp_path / "robust", real=real)
    assert torch.equal(robust.keys, family.keys)
    assert robust.config.robust == ("noise", "jpeg")
    assert (tmp_path / "robust" / "plain" / "user-000" / "config.json").is_file()
    assert robust.manifest["members"][0]["stages"] == ["key", "plain", "robust"]
    assert not torch.equal(robust.sample(0, 4, seed=0), family.sample(0, 4, seed=0))


def test_warnings_fire(tmp_path: Path, root_dir: Path, real: torch.Tensor) -> None:
    cfg = FAST.replace(user_steps=5, key_steps=0, project=False, angle_weight=0.0, max_angle_error=2.0)
    with pytest.warns(KeyConstraintWarning) as record:
        family = KeyedGenerators.create(root_dir, 2, cfg, out=tmp_path / "fam", real=real)
    messages = " ".join(str(r.message) for r in record)
    assert "positive side" in messages  # an untrained key is not data-compliant
    assert "cosine" in messages  # and not orthogonal to key 0
    assert family.warnings and "positive side" in " ".join(family.warnings)


def test_impossible_angle_is_an_error_not_a_loop(tmp_path: Path, root_dir: Path, real: torch.Tensor) -> None:
    with pytest.raises(KeyConstraintError, match="at most 64"):
        KeyedGenerators.create(root_dir, 65, FAST, out=tmp_path / "a", real=real)
    # opposite keys: both data-compliant is impossible; a weak angle penalty loses to compliance
    cfg = FAST.replace(user_steps=50, target_angle=180.0, angle_weight=0.1, project=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KeyConstraintWarning)
        with pytest.raises(KeyConstraintError, match="could not meet the angle constraint"):
            KeyedGenerators.create(root_dir, 2, cfg, out=tmp_path / "b", real=real)


def test_clear_errors(tmp_path: Path, family: KeyedGenerators, real: torch.Tensor) -> None:
    with pytest.raises(DataError, match="8x8"):
        family.attribute(torch.zeros(2, 1, 16, 16))
    with pytest.raises(DataError, match="unsqueeze"):
        family.attribute(torch.zeros(1, 8, 8))
    with pytest.raises(CheckpointError, match=r"not a keyed family: .*config\.json is missing"):
        KeyedGenerators.from_pretrained(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(family.folder, broken)
    (broken / "users" / "user-001" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="user model 1"):
        KeyedGenerators.from_pretrained(broken)
    (broken / "keys" / "key-000.safetensors").unlink()
    with pytest.raises(CheckpointError, match="key 0"):
        KeyedGenerators.from_pretrained(broken)
    other_root = tmp_path / "other-root"
    save_checkpoint(other_root, "gan", {"generator": _tiny_generator(seed=1)}, TINY)
    with pytest.raises(StoreMismatchError, match="different root model"):
        KeyedGenerators.create(other_root, 2, FAST, out=family.folder, real=real)
    with pytest.raises(StoreMismatchError, match="alpha"):
        KeyedGenerators.create(family.folder / "root", 2, FAST.replace(alpha=1.0), out=family.folder, real=real)
    replaced = tmp_path / "replaced"
    shutil.copytree(family.folder, replaced)
    save_checkpoint(replaced / "root", "gan", {"generator": _tiny_generator(seed=2)}, TINY)
    with pytest.raises(CheckpointError, match="does not match the root model"):
        KeyedGenerators.from_pretrained(replaced)
