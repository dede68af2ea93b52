"""Building, saving, opening and sampling text-to-image pipelines (tiny random ones) and their one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import StableDiffusionPipeline
from t2i_helpers import snapshot
from transformers import CLIPTokenizer

from genprov.exceptions import GenprovError
from genprov.models.checkpoints import save_checkpoint
from genprov.models.diffusion import DDPM, DDPMConfig
from genprov.models.t2i import (
    MissingComponentError,
    NotAPipelineError,
    PickleWeightsError,
    PromptTooLongError,
    T2IConfig,
    load_pipeline,
    sample_pipeline,
    save_pipeline,
    tiny_pipeline_config,
)
from genprov.utils.artifacts import PIPELINE_KIND, identify_artifact

PROMPTS = ["a photo of a horse", "a handwritten seven"]


def _draw(pipe: Any, **kwargs: Any) -> torch.Tensor:
    return sample_pipeline(pipe, PROMPTS, 2, seed=3, steps=3, batch_size=4, **kwargs)


def test_round_trip_through_from_pretrained_gives_identical_images(t2i_pipeline: Any, tmp_path: Path) -> None:
    folder = save_pipeline(t2i_pipeline, tmp_path / "pipe")
    plain = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)  # diffusers alone opens it
    plain.set_progress_bar_config(disable=True)
    ours = load_pipeline(folder)
    before = _draw(t2i_pipeline)
    assert before.shape == (4, 3, 16, 16)
    assert float(before.min()) >= -1 and float(before.max()) <= 1
    assert torch.equal(before, _draw(plain))
    assert torch.equal(before, _draw(ours))
    for name in ("vae", "unet", "text_encoder"):
        saved, loaded = getattr(t2i_pipeline, name).state_dict(), getattr(ours, name).state_dict()
        assert saved.keys() == loaded.keys()
        assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert ours.safety_checker is None and ours.feature_extractor is None


def test_folder_layout_is_diffusers_with_safetensors_only(t2i_pipeline_dir: Path) -> None:
    names = {str(p.relative_to(t2i_pipeline_dir)) for p in t2i_pipeline_dir.rglob("*") if p.is_file()}
    assert {
        "model_index.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    } <= names
    assert {"text_encoder/model.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt"} <= names
    assert not [n for n in names if n.endswith((".bin", ".ckpt", ".pt", ".pth"))]
    assert not [n for n in names if ".tmp" in n or ".old" in n]
    found = identify_artifact(t2i_pipeline_dir)
    assert found is not None and found.kind == PIPELINE_KIND


def test_tokenizer_folder_reads_from_vocab_and_merges_alone(t2i_pipeline_dir: Path, tmp_path: Path) -> None:
    """A Stable Diffusion folder's tokenizer/ has only vocab.json + merges.txt (+ special tokens): it opens too."""
    copy = tmp_path / "sd"
    shutil.copytree(t2i_pipeline_dir, copy)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (copy / "tokenizer" / name).unlink()
    plain = CLIPTokenizer.from_pretrained(copy / "tokenizer", local_files_only=True)
    ours = load_pipeline(t2i_pipeline_dir).tokenizer
    for text in PROMPTS:
        assert plain(text)["input_ids"] == ours(text)["input_ids"]


def test_sampling_is_per_image_seeded(t2i_pipeline: Any) -> None:
    whole = _draw(t2i_pipeline)
    one_by_one = sample_pipeline(t2i_pipeline, PROMPTS, 2, seed=3, steps=3, batch_size=1)
    torch.testing.assert_close(whole, one_by_one, atol=1e-4, rtol=0)
    assert not torch.equal(whole[0], whole[1])  # two images of one prompt differ
    assert not torch.allclose(whole, sample_pipeline(t2i_pipeline, PROMPTS, 2, seed=4, steps=3, batch_size=4))


def test_prompt_longer_than_the_tokenizer_allows_is_refused(t2i_pipeline: Any) -> None:
    long_prompt = " ".join(["a photo of a horse"] * 5)
    with pytest.raises(PromptTooLongError, match="tokens long") as info:
        sample_pipeline(t2i_pipeline, [long_prompt], 1, steps=2)
    assert "\n" not in str(info.value) and "at most 12" in str(info.value)


def _one_line(err: pytest.ExceptionInfo[GenprovError]) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_not_a_pipeline_folder(tmp_path: Path) -> None:
    with pytest.raises(NotAPipelineError, match="does not exist"):
        load_pipeline(tmp_path / "missing")
    ddpm = tmp_path / "ddpm"
    save_checkpoint(ddpm, "ddpm", {"ddpm": DDPM(DDPMConfig())}, DDPMConfig())
    before = snapshot(ddpm)
    with pytest.raises(NotAPipelineError) as err:
        load_pipeline(ddpm)
    assert "model_index.json is missing" in _one_line(err) and "ddpm checkpoint" in str(err.value)
    assert snapshot(ddpm) == before
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(NotAPipelineError, match="is a file"):
        load_pipeline(tmp_path / "notes.txt")


@pytest.mark.parametrize("damage", ["folder", "weights", "index"])
def test_missing_component(t2i_pipeline_dir: Path, tmp_path: Path, damage: str) -> None:
    copy = tmp_path / "pipe"
    shutil.copytree(t2i_pipeline_dir, copy)
    if damage == "folder":
        shutil.rmtree(copy / "unet")
    elif damage == "weights":
        (copy / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    else:
        index = (copy / "model_index.json").read_text().replace('"unet"', '"unet_removed"')
        (copy / "model_index.json").write_text(index)
    before = snapshot(copy)
    with pytest.raises(MissingComponentError) as err:
        load_pipeline(copy)
    assert "'unet'" in _one_line(err) or "unet" in str(err.value)
    assert snapshot(copy) == before


def test_pickled_weights_are_refused_with_the_conversion_command(t2i_pipeline_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "pipe"
    shutil.copytree(t2i_pipeline_dir, copy)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_name("diffusion_pytorch_model.bin"))
    before = snapshot(copy)
    with pytest.raises(PickleWeightsError) as err:
        load_pipeline(copy)
    text = _one_line(err)
    assert "diffusion_pytorch_model.bin" in text and "save_pretrained" in text and "safe_serialization=True" in text
    assert snapshot(copy) == before
    ckpt = tmp_path / "sd-v1-5.ckpt"
    ckpt.write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(PickleWeightsError) as err:
        load_pipeline(ckpt)
    assert "from_single_file" in _one_line(err)


def test_save_refuses_a_folder_holding_another_artefact(t2i_pipeline: Any, tmp_path: Path) -> None:
    ddpm = tmp_path / "ddpm"
    save_checkpoint(ddpm, "ddpm", {"ddpm": DDPM(DDPMConfig())}, DDPMConfig())
    before = snapshot(ddpm)
    with pytest.raises(GenprovError, match="ddpm checkpoint"):
        save_pipeline(t2i_pipeline, ddpm)
    assert snapshot(ddpm) == before


def test_config_validation_names_the_parameter() -> None:
    assert tiny_pipeline_config().latent_size == 4
    assert T2IConfig().latent_size == 8
    with pytest.raises(GenprovError, match="attention_heads"):
        T2IConfig(attention_heads=7)
    with pytest.raises(GenprovError, match="image_size"):
        T2IConfig(image_size=30)


def test_load_sized_pipeline_refuses_another_image_size(t2i_pipeline_dir) -> None:
    from genprov.exceptions import ConfigError
    from genprov.models.t2i import load_sized_pipeline

    assert load_sized_pipeline(t2i_pipeline_dir, 16, option="base_pipeline").vae.config.sample_size == 16
    with pytest.raises(
        ConfigError, match=r"base_pipeline .* makes 16x16 images but image_size=32; set --set image_size=16"
    ):
        load_sized_pipeline(t2i_pipeline_dir, 32, option="base_pipeline")
