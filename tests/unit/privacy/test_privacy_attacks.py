"""ExpMI and PredMI: training with early stopping, determinism, save/load, and clear errors on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genprov.data import load_dataset
from genprov.exceptions import CheckpointError, DataError, NotFittedError
from genprov.models.classifiers import ClassifierConfig, CNNClassifier
from genprov.privacy import (
    ATTACKS,
    EXPLAINERS,
    AttackConfig,
    ExpMIAttack,
    InversionAttack,
    Observations,
    PredMIAttack,
)

torch.set_num_threads(1)

_FAST = AttackConfig(width=4, depth=1, max_epochs=4, batch_size=32, seed=0)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, Observations]:
    ds = load_dataset("digits", n=120, seed=0)
    torch.manual_seed(0)
    model = CNNClassifier(ClassifierConfig(width=4, feature_dim=8)).eval()
    return ds.images, EXPLAINERS.create("gradient", model).observe(ds.images)


def test_registry_and_reconstruction_shapes(data: tuple[torch.Tensor, Observations]) -> None:
    x, obs = data
    assert ATTACKS.names() == ["exp-mi", "pred-mi"]
    attack = ATTACKS.create("exp-mi", config=_FAST).fit(obs, x)
    rec = attack.reconstruct(obs)
    assert isinstance(attack, ExpMIAttack) and rec.shape == x.shape and rec.dtype == torch.float32
    assert float(rec.abs().max()) <= 1.0
    assert len(attack.history_) == 4 and attack.val_mse_ == min(h["val_mse"] for h in attack.history_)
    assert attack.history_[attack.best_epoch_]["val_mse"] == attack.val_mse_


def test_same_seed_same_attack_and_pred_mi_ignores_maps(data: tuple[torch.Tensor, Observations]) -> None:
    x, obs = data
    a = PredMIAttack(_FAST).fit(obs, x)
    b = PredMIAttack(_FAST).fit(obs.predictions, x)  # a bare prediction tensor is accepted too
    assert torch.equal(a.reconstruct(obs), b.reconstruct(obs.predictions))
    c = PredMIAttack(_FAST.replace(seed=1)).fit(obs, x)
    assert not torch.equal(a.reconstruct(obs), c.reconstruct(obs))
    assert torch.equal(a.reconstruct(obs), a.reconstruct(obs.with_explanations(None)))


def test_explanations_that_leak_the_image_beat_predictions(data: tuple[torch.Tensor, Observations]) -> None:
    x, obs = data
    oracle = obs.with_explanations((x + 1) / 2)  # a "map" that is the image itself: maximal leakage
    cfg = _FAST.replace(max_epochs=8, width=8, batch_size=16, lr=0.01)
    exp = ExpMIAttack(cfg).fit(oracle, x)
    pred = PredMIAttack(cfg).fit(oracle, x)
    assert exp.val_mse_ < 0.5 * pred.val_mse_


def test_early_stopping_and_explicit_validation(data: tuple[torch.Tensor, Observations]) -> None:
    x, obs = data
    attack = PredMIAttack(_FAST.replace(max_epochs=200, patience=1, lr=0.05)).fit(
        obs[:90], x[:90], validation=(obs[90:], x[90:])
    )
    n = len(attack.history_)
    assert n < 200 and n == attack.best_epoch_ + 2  # stopped one epoch after the last improvement
    rec = attack.reconstruct(obs[90:])
    torch.testing.assert_close(float(((rec - x[90:]) ** 2).mean()), attack.val_mse_, rtol=1e-5, atol=1e-7)


def test_save_load_round_trip(tmp_path: Path, data: tuple[torch.Tensor, Observations]) -> None:
    x, obs = data
    attack = ExpMIAttack(_FAST).fit(obs, x)
    attack.save_pretrained(tmp_path / "exp")
    back = InversionAttack.from_pretrained(tmp_path / "exp")
    assert isinstance(back, ExpMIAttack) and back.config == attack.config
    assert torch.equal(back.reconstruct(obs), attack.reconstruct(obs))
    assert back.history_ == attack.history_ and back.best_epoch_ == attack.best_epoch_
    assert ExpMIAttack.from_pretrained(tmp_path / "exp").val_mse_ == attack.val_mse_
    with pytest.raises(CheckpointError, match="holds a 'exp-mi' attack, not a PredMIAttack"):
        PredMIAttack.from_pretrained(tmp_path / "exp")
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        InversionAttack.from_pretrained(tmp_path / "nothing")


def test_bad_inputs_get_clear_errors(data: tuple[torch.Tensor, Observations]) -> None:
    x, obs = data
    with pytest.raises(NotFittedError, match=r"call \.fit"):
        ExpMIAttack(_FAST).reconstruct(obs)
    with pytest.raises(DataError, match="needs explanation maps"):
        ExpMIAttack(_FAST).fit(obs.predictions, x)
    with pytest.raises(DataError, match="120 observations and 60 inputs"):
        ExpMIAttack(_FAST).fit(obs, x[:60])
    small = obs.with_explanations(torch.zeros(120, 1, 4, 4))
    with pytest.raises(DataError, match=r"inputs' spatial shape \(n, 1, 8, 8\); got \(120, 1, 4, 4\)"):
        ExpMIAttack(_FAST).fit(small, x)
    attack = ExpMIAttack(_FAST.replace(max_epochs=1)).fit(obs, x)
    with pytest.raises(DataError, match=r"shape \(n, 1, 8, 8\).*got \(120, 1, 4, 4\)"):
        attack.reconstruct(small)
    with pytest.raises(DataError, match="must have 10 classes"):
        attack.reconstruct(Observations(explanations=obs.explanations, predictions=torch.zeros(120, 3)))


def test_sparse_bright_images_on_a_dark_background_are_learned() -> None:
    """MNIST-like targets (mostly -1, a class-dependent bright stroke): a tanh head saturated at the all-background
    image in the first epochs there (MSE 0.156 from then on) and never learned again; the linear head must."""
    n, side = 256, 16
    labels = torch.arange(n) % 4
    x = torch.full((n, 1, side, side), -1.0)
    for i, c in enumerate(labels.tolist()):
        x[i, 0, 2 + 3 * c, 3:13] = 1.0
    predictions = torch.nn.functional.one_hot(labels, 4).float()
    attack = PredMIAttack(AttackConfig(width=8, depth=2, max_epochs=30, patience=30, lr=1e-2, batch_size=32, seed=0))
    attack.fit(predictions, x)
    background = float(((x + 1) ** 2).mean())
    assert attack.val_mse_ < 0.25 * background
    assert float(((attack.reconstruct(predictions) - x) ** 2).mean()) < 0.25 * background
