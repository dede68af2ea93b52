"""Training a tiny text-to-image pipeline: resumable exactly, a finished run returns at once, bad input refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from t2i_helpers import snapshot

from genprov.exceptions import ConfigError, DataError, StoreMismatchError
from genprov.models.t2i import PromptTooLongError, load_pipeline, quick_configs, tiny_pipeline_config, train_t2i
from genprov.models.t2i import train as t2i_train
from genprov.utils.seeding import torch_generator

N = 12
CAPTIONS = ["a photo of a horse", "a handwritten seven", "a photo of an automobile"] * (N // 3)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(N, 1, 16, 16, generator=torch_generator(0, "t2i-train")) * 2 - 1


def _configs(**overrides: Any) -> Any:
    tiny = tiny_pipeline_config(channels=1).to_dict()
    steps = {
        "vae_steps": 3,
        "unet_steps": 4,
        "vae_batch_size": 4,
        "batch_size": 4,
        "checkpoint_every": 2,
        "log_every": 2,
    }
    return quick_configs({**tiny, **steps, **overrides})


def _weights(pipe: Any) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{k}": v
        for name in ("vae", "unet", "text_encoder")
        for k, v in getattr(pipe, name).state_dict().items()
    }


def _log(folder: Path) -> list[dict[str, float]]:
    entries = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in e.items() if k != "time"} for e in entries]


def test_killed_run_resumes_identically(images: torch.Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, training = _configs()
    whole = train_t2i(model, training, images, CAPTIONS, tmp_path / "whole", show_progress=False)
    assert whole.step == 7 and whole.resumed_from == 0
    assert {"vae_loss", "loss"} <= {k for e in whole.log for k in e}

    original = t2i_train._Run.unet_step

    def killed(self: Any, step: int) -> dict[str, float]:
        if step == 3:
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(t2i_train._Run, "unet_step", killed)
    with pytest.raises(KeyboardInterrupt):
        train_t2i(model, training, images, CAPTIONS, tmp_path / "resumed", show_progress=False)
    assert not (tmp_path / "resumed" / "model_index.json").exists()  # no pipeline before the run ends
    monkeypatch.setattr(t2i_train._Run, "unet_step", original)
    resumed = train_t2i(model, training, images, CAPTIONS, tmp_path / "resumed", show_progress=False)
    assert resumed.resumed_from == 6  # the state of step 6 (3 VAE + 3 U-Net steps)
    expected, got = _weights(whole.pipeline), _weights(load_pipeline(tmp_path / "resumed"))
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert _log(tmp_path / "whole") == _log(tmp_path / "resumed")
    assert whole.pipeline.vae.config.scaling_factor == resumed.pipeline.vae.config.scaling_factor != 0.18215

    again = train_t2i(model, training, images, CAPTIONS, tmp_path / "whole", show_progress=False)
    assert again.resumed_from == again.step == 7  # a finished run returns at once


def test_more_unet_steps_continue_and_other_configs_are_refused(images: torch.Tensor, tmp_path: Path) -> None:
    model, training = _configs(unet_steps=1)
    train_t2i(model, training, images, CAPTIONS, tmp_path / "run", show_progress=False)
    longer = train_t2i(model, training.replace(unet_steps=2), images, CAPTIONS, tmp_path / "run", show_progress=False)
    assert (longer.resumed_from, longer.step) == (4, 5)
    before = snapshot(tmp_path / "run")
    with pytest.raises(StoreMismatchError, match="lr"):
        train_t2i(model, training.replace(unet_steps=2, lr=1e-2), images, CAPTIONS, tmp_path / "run")
    with pytest.raises(StoreMismatchError, match="data"):
        train_t2i(model, training.replace(unet_steps=2), images, CAPTIONS[::-1], tmp_path / "run")
    assert snapshot(tmp_path / "run") == before


def test_reused_vae_is_kept(images: torch.Tensor, tmp_path: Path) -> None:
    model, training = _configs(unet_steps=1)
    base = train_t2i(model, training, images, CAPTIONS, tmp_path / "base", show_progress=False)
    reuse = train_t2i(
        model, training, images, CAPTIONS, tmp_path / "reuse", vae_from=tmp_path / "base", show_progress=False
    )
    assert reuse.step == 1  # no VAE stage
    source, kept = base.pipeline.vae.state_dict(), reuse.pipeline.vae.state_dict()
    assert all(torch.equal(source[k], kept[k]) for k in source)
    assert reuse.pipeline.vae.config.scaling_factor == base.pipeline.vae.config.scaling_factor


@pytest.mark.parametrize(
    ("case", "error", "message"),
    [
        ("captions", DataError, "11 captions were given for 12 images"),
        ("long", PromptTooLongError, "tokens long"),
        ("size", DataError, "training images"),
        ("pipeline", ConfigError, "text-to-image pipeline"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    images: torch.Tensor, t2i_pipeline_dir: Path, tmp_path: Path, case: str, error: type[Exception], message: str
) -> None:
    model, training = _configs()
    captions, x, out = list(CAPTIONS), images, tmp_path / "out"
    if case == "captions":
        captions = captions[:-1]
    elif case == "long":
        captions[0] = " ".join(["a photo of a horse"] * 6)
    elif case == "size":
        x = torch.zeros(N, 1, 8, 8)
    else:
        shutil.copytree(t2i_pipeline_dir, out)
    before = snapshot(out)
    with pytest.raises(error) as err:
        train_t2i(model, training, x, captions, out, show_progress=False)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert snapshot(out) == before
