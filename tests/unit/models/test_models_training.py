"""Training loops: exact resume, logs, the finished-run cache, config mismatches, data checks."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from genprov.config import Config
from genprov.exceptions import ConfigError, DataError, StoreMismatchError
from genprov.models import training
from genprov.models.checkpoints import load_checkpoint
from genprov.models.classifiers import ClassifierConfig
from genprov.models.diffusion import DDPM, DDPMConfig
from genprov.models.gans import GANConfig, Generator
from genprov.models.tabular import TabularGANConfig
from genprov.models.train_config import lr_factor, warmup_steps
from genprov.models.training import (
    LOG_FILE,
    STATE_DIR,
    TrainConfig,
    batch_indices,
    default_train_config,
    train_classifier,
    train_ddpm,
    train_gan,
    train_tabular_gan,
)

GAN = GANConfig(arch="dcgan", latent_dim=8, width=8)
TRAIN = TrainConfig(n_steps=6, batch_size=8, checkpoint_every=3, log_every=2, seed=5)


def _weights(modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v for n, m in modules.items() for k, v in m.state_dict().items()}


def _assert_same(a: dict[str, nn.Module], b: dict[str, nn.Module]) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-6, msg=key)


def test_batch_indices_cover_each_epoch_once() -> None:
    n, bs = 10, 4
    drawn = torch.cat([batch_indices(n, bs, 0, d) for d in range(5)])  # 20 positions = 2 epochs
    assert sorted(drawn[:10].tolist()) == list(range(10))
    assert sorted(drawn[10:].tolist()) == list(range(10))
    torch.testing.assert_close(batch_indices(n, bs, 0, 3), batch_indices(n, bs, 0, 3))
    assert batch_indices(3, 8, 0, 0).shape == (8,)  # batch larger than the data set


def test_interrupted_gan_run_resumes_bit_for_bit(
    tiny_images: torch.Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = train_gan(GAN, TRAIN, tiny_images, tmp_path / "full")

    original = training._GANTask.step

    def crash_at_4(self: Any, step: int) -> dict[str, float]:
        if step == 4:
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(training._GANTask, "step", crash_at_4)
    with pytest.raises(KeyboardInterrupt):
        train_gan(GAN, TRAIN, tiny_images, tmp_path / "resumed")
    state = json.loads((tmp_path / "resumed" / STATE_DIR / "state.json").read_text())
    assert state["step"] == 3
    assert load_checkpoint(tmp_path / "resumed").extra["complete"] is False
    monkeypatch.setattr(training._GANTask, "step", original)

    resumed = train_gan(GAN, TRAIN, tiny_images, tmp_path / "resumed")
    assert resumed.resumed_from == 3
    _assert_same(full.modules, resumed.modules)
    assert [e["step"] for e in resumed.log] == [2, 4, 6]
    for a, b in zip(full.log, resumed.log, strict=True):
        assert {k: v for k, v in a.items() if k != "time"} == pytest.approx(
            {k: v for k, v in b.items() if k != "time"}, abs=1e-6
        )


Runner = Callable[[Config, TrainConfig, Any, Path], training.TrainResult]


def _gan(cfg: TrainConfig, images: torch.Tensor, labels: torch.Tensor, table: torch.Tensor, out: Path) -> Any:
    return train_gan(GANConfig(arch="wgan-gp", latent_dim=8, width=8), cfg.replace(n_critic=2), images, out)


def _ebgan(cfg: TrainConfig, images: torch.Tensor, labels: torch.Tensor, table: torch.Tensor, out: Path) -> Any:
    return train_gan(GANConfig(arch="ebgan", latent_dim=8, width=8), cfg, images, out)


def _ddpm(cfg: TrainConfig, images: torch.Tensor, labels: torch.Tensor, table: torch.Tensor, out: Path) -> Any:
    return train_ddpm(DDPMConfig.preset("tiny"), cfg.replace(ema_decay=0.9), images, out)


def _clf(cfg: TrainConfig, images: torch.Tensor, labels: torch.Tensor, table: torch.Tensor, out: Path) -> Any:
    return train_classifier(ClassifierConfig(n_classes=3, width=4), cfg, (images, labels), out)


def _tab(cfg: TrainConfig, images: torch.Tensor, labels: torch.Tensor, table: torch.Tensor, out: Path) -> Any:
    return train_tabular_gan(TabularGANConfig(n_features=5, hidden=(8, 8)), cfg, table, out)


@pytest.mark.parametrize("run", [_gan, _ebgan, _ddpm, _clf, _tab], ids=["wgan-gp", "ebgan", "ddpm", "clf", "tab"])
def test_extending_a_run_equals_an_uninterrupted_run(
    run: Any, tiny_images: torch.Tensor, tiny_labels: torch.Tensor, tiny_table: torch.Tensor, tmp_path: Path
) -> None:
    data = (tiny_images, tiny_labels, tiny_table)
    full = run(TRAIN.replace(n_steps=4), *data, tmp_path / "full")
    half = run(TRAIN.replace(n_steps=2), *data, tmp_path / "split")
    assert half.step == 2
    resumed = run(TRAIN.replace(n_steps=4), *data, tmp_path / "split")
    assert resumed.resumed_from == 2
    _assert_same(full.modules, resumed.modules)
    # the checkpoint on disk holds the same weights
    _assert_same(full.modules, load_checkpoint(tmp_path / "split").modules)


def test_log_checkpoint_and_state_files(tiny_images: torch.Tensor, tmp_path: Path) -> None:
    result = train_gan(GAN, TRAIN, tiny_images, tmp_path)
    lines = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert lines == result.log
    assert [e["step"] for e in lines] == [2, 4, 6]
    assert {"d_loss", "g_loss", "time"} <= set(lines[0])
    assert sorted(p.name for p in (tmp_path / STATE_DIR).iterdir()) == ["state-000000006.safetensors", "state.json"]
    loaded = load_checkpoint(tmp_path)
    assert loaded.kind == "gan"
    assert loaded.training_config == TRAIN
    assert loaded.extra["complete"] is True
    assert isinstance(result.model, Generator)
    assert not result.model.training


def test_finished_run_is_loaded_not_retrained(
    tiny_images: torch.Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = train_gan(GAN, TRAIN, tiny_images, tmp_path)

    def fail(self: Any, step: int) -> dict[str, float]:
        raise AssertionError("should not train again")

    monkeypatch.setattr(training._GANTask, "step", fail)
    again = train_gan(GAN, TRAIN.replace(log_every=1, checkpoint_every=0), tiny_images, tmp_path)
    assert again.resumed_from == again.step == 6
    _assert_same(first.modules, again.modules)
    assert again.log == first.log


def test_resume_false_starts_over(tiny_images: torch.Tensor, tmp_path: Path) -> None:
    first = train_gan(GAN, TRAIN, tiny_images, tmp_path)
    again = train_gan(GAN, TRAIN, tiny_images, tmp_path, resume=False)
    assert again.resumed_from == 0
    _assert_same(first.modules, again.modules)  # same seed, same result


@pytest.mark.parametrize(
    ("model_config", "train_config", "field"),
    [
        (GANConfig(arch="dcgan", latent_dim=8, width=4), TRAIN, "width"),
        (GAN, TRAIN.replace(lr=1e-3), "lr"),
        (GAN, TRAIN.replace(seed=6), "seed"),
    ],
)
def test_resuming_with_another_config_names_the_fields(
    model_config: GANConfig, train_config: TrainConfig, field: str, tiny_images: torch.Tensor, tmp_path: Path
) -> None:
    train_gan(GAN, TRAIN.replace(n_steps=2), tiny_images, tmp_path)
    with pytest.raises(StoreMismatchError, match=rf"{field}: saved .*, now .*delete .* to start over"):
        train_gan(model_config, train_config, tiny_images, tmp_path)


def test_resuming_on_other_data_or_kind_is_refused(tiny_images: torch.Tensor, tmp_path: Path) -> None:
    train_gan(GAN, TRAIN.replace(n_steps=2), tiny_images, tmp_path)
    with pytest.raises(StoreMismatchError, match="data"):
        train_gan(GAN, TRAIN, tiny_images[:20], tmp_path)
    with pytest.raises(ConfigError, match="already holds a gan checkpoint"):  # refused before writing anything
        train_ddpm(DDPMConfig.preset("tiny"), TRAIN, tiny_images, tmp_path)
    with pytest.raises(StoreMismatchError, match="past n_steps"):
        train_gan(GAN, TRAIN.replace(n_steps=1), tiny_images, tmp_path)


def test_training_leaves_the_global_rng_alone(tiny_images: torch.Tensor, tmp_path: Path) -> None:
    state = torch.random.get_rng_state()
    train_gan(GAN, TRAIN.replace(n_steps=1), tiny_images, tmp_path)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_ddpm_checkpoint_holds_the_ema_weights(tiny_images: torch.Tensor, tmp_path: Path) -> None:
    result = train_ddpm(DDPMConfig.preset("tiny"), TRAIN.replace(n_steps=3, ema_decay=0.5), tiny_images, tmp_path)
    assert isinstance(result.model, DDPM)
    loaded = load_checkpoint(tmp_path)
    _assert_same({"ddpm": result.model}, loaded.modules)
    from safetensors import safe_open

    state_file = next((tmp_path / STATE_DIR).glob("state-*.safetensors"))
    with safe_open(str(state_file), framework="pt") as f:
        keys = list(f.keys())
    raw = {k[len("ddpm.") :]: v for k, v in _weights({"ddpm": result.model}).items()}
    with safe_open(str(state_file), framework="pt") as f:
        assert any(k.startswith("ema.") for k in keys)
        assert any(k.startswith("optimizer.ddpm.") for k in keys)
        some = next(k for k in raw if k.endswith("weight"))
        torch.testing.assert_close(f.get_tensor(f"ema.{some}"), raw[some])
        assert not torch.equal(f.get_tensor(f"ddpm.{some}"), raw[some])


def test_classifier_learns_and_logs_accuracy(tiny_images: torch.Tensor, tmp_path: Path) -> None:
    labels = (tiny_images.mean((1, 2, 3)) > tiny_images.mean()).long()  # a learnable rule
    config = ClassifierConfig(n_classes=2, width=8)
    result = train_classifier(
        config, default_train_config(config, n_steps=60, batch_size=20, log_every=30), (tiny_images, labels), tmp_path
    )
    assert result.log[-1]["loss"] < result.log[0]["loss"]
    assert 0 <= result.log[-1]["accuracy"] <= 1


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x, out: train_gan(GAN, TRAIN, x[:, :, :4, :4], out), "8x8"),
        (lambda x, out: train_gan(GAN, TRAIN, x * 3, out), r"\[-1, 1\]"),
        (lambda x, out: train_gan(GAN.replace(channels=3), TRAIN, x, out), "3 channel"),
        (
            lambda x, out: train_classifier(ClassifierConfig(n_classes=2), TRAIN, (x, torch.arange(len(x))), out),
            "n_classes",
        ),
        (lambda x, out: train_classifier(ClassifierConfig(), TRAIN, x, out), "labels"),
        (lambda x, out: train_tabular_gan(TabularGANConfig(n_features=4), TRAIN, torch.zeros(9, 5), out), "4 columns"),
    ],
)
def test_bad_data_is_a_data_error(call: Any, match: str, tiny_images: torch.Tensor, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=match):
        call(tiny_images, tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_default_train_configs() -> None:
    assert default_train_config(GANConfig(arch="wgan-gp")).n_critic == 5
    assert default_train_config(GANConfig(arch="dcgan")).betas == (0.5, 0.999)
    assert default_train_config(DDPMConfig()).ema_decay is not None
    assert default_train_config(ClassifierConfig(), n_steps=7).n_steps == 7


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_and_sampling_on_cuda(tiny_images: torch.Tensor, tmp_path: Path) -> None:
    from genprov.models.sampling import sample

    result = train_gan(GAN, TRAIN, tiny_images, tmp_path / "gan", device="cuda")
    assert next(result.model.parameters()).is_cuda
    assert sample(result.model, 4, seed=0).shape == (4, 1, 8, 8)
    ddpm = train_ddpm(DDPMConfig.preset("tiny"), TRAIN.replace(n_steps=2), tiny_images, tmp_path / "d", device="cuda")
    assert sample(ddpm.model, 2, seed=0, ddim_steps=3).shape == (2, 1, 8, 8)
    cpu = load_checkpoint(tmp_path / "gan")  # checkpoints are device-free
    assert not next(cpu.model.parameters()).is_cuda


def test_train_ddpm_fine_tunes_from_init_weights(tmp_path: Path) -> None:
    cfg = DDPMConfig.preset("tiny", image_size=8, channels=1)
    data = torch.rand(16, 1, 8, 8) * 2 - 1
    base = train_ddpm(cfg, default_train_config(cfg, n_steps=2, batch_size=4, seed=0), data, tmp_path / "base")
    tuned = train_ddpm(
        cfg, default_train_config(cfg, n_steps=0, batch_size=4, seed=1), data, tmp_path / "tuned", init=base.model
    )
    for a, b in zip(tuned.model.parameters(), base.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)  # zero fine-tuning steps: the init weights, not seed 1's
    other = cfg.replace(layers_per_block=cfg.layers_per_block + 1)
    with pytest.raises(ConfigError, match="layers_per_block"):
        train_ddpm(other, default_train_config(other, n_steps=1), data, tmp_path / "bad", init=base.model)


def test_cosine_schedule_warms_up_then_decays_to_zero() -> None:
    cfg = TrainConfig(n_steps=100, lr_schedule="cosine", warmup_fraction=0.1)
    assert warmup_steps(cfg) == 10
    factors = [lr_factor(s, cfg) for s in range(100)]
    assert factors[0] == 0.0 and factors[5] == pytest.approx(0.5) and factors[10] == pytest.approx(1.0)
    assert factors[55] == pytest.approx(0.5, abs=1e-12)  # half way through the cosine
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    assert lr_factor(7, TrainConfig(n_steps=100)) == 1.0  # constant
    assert warmup_steps(TrainConfig(n_steps=100, warmup_fraction=0.1)) == 0  # warm-up belongs to cosine
    assert warmup_steps(cfg.replace(n_steps=15)) == 2  # rounded up, as D-TRAK


def _ddpm_params(result: training.TrainResult) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in result.model.parameters()])


def test_learning_rate_schedule_and_gradient_clipping_reach_the_updates(
    tiny_images: torch.Tensor, tmp_path: Path
) -> None:
    cfg = DDPMConfig.preset("tiny")
    base = TrainConfig(n_steps=1, batch_size=8, seed=3, betas=(0.9, 0.999))
    init = _ddpm_params(train_ddpm(cfg, base.replace(n_steps=0), tiny_images, tmp_path / "init"))
    plain = _ddpm_params(train_ddpm(cfg, base, tiny_images, tmp_path / "plain"))
    # the first cosine step is the warm-up's lr = 0: nothing moves
    warm = _ddpm_params(
        train_ddpm(cfg, base.replace(lr_schedule="cosine", warmup_fraction=0.5), tiny_images, tmp_path / "warm")
    )
    clipped = _ddpm_params(train_ddpm(cfg, base.replace(grad_clip=1e-12), tiny_images, tmp_path / "clip"))
    assert (plain - init).abs().max() > 1e-5
    torch.testing.assert_close(warm, init, rtol=0, atol=0)
    assert (clipped - init).abs().max() < 1e-6  # Adam's eps dominates a gradient clipped to norm 1e-12


def test_a_cosine_run_resumes_only_with_its_n_steps(tiny_images: torch.Tensor, tmp_path: Path) -> None:
    cosine = TRAIN.replace(lr_schedule="cosine", warmup_fraction=0.1)
    train_gan(GAN, cosine.replace(n_steps=2), tiny_images, tmp_path)
    with pytest.raises(StoreMismatchError, match="n_steps: saved 2, now 4"):
        train_gan(GAN, cosine.replace(n_steps=4), tiny_images, tmp_path)
    assert train_gan(GAN, cosine.replace(n_steps=2), tiny_images, tmp_path).resumed_from == 2  # the cache


@pytest.mark.parametrize(("field", "value"), [("lr_schedule", "linear"), ("warmup_fraction", 1.0), ("grad_clip", 0.0)])
def test_bad_schedule_settings_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value})
