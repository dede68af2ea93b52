"""DreamBooth-style LoRA customization with a new token and prior preservation on a tiny pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lora_fixtures import tiny_pipeline
from safetensors.torch import load_file

from genprov.exceptions import ConfigError
from genprov.models.t2i.lora import LORA_WEIGHTS, TOKEN_WEIGHTS, LoRAConfig, load_lora, train_dreambooth_lora
from genprov.utils.seeding import torch_generator

PROMPT = "a photo of <v1> digit"
CONFIG = LoRAConfig(
    rank=2, lr=1e-2, steps=3, batch_size=1, n_class_images=2, class_sample_steps=2, checkpoint_every=0, log_every=1
)


def _exemplars() -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch_generator(0, "exemplars")) * 2 - 1


def _sample(pipe: object, prompt: str = PROMPT) -> torch.Tensor:
    return pipe(  # type: ignore[operator]
        prompt, num_inference_steps=2, height=16, width=16, output_type="pt", generator=torch.Generator().manual_seed(0)
    ).images


@pytest.fixture(scope="module")
def customized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """(LoRA folder, the customized pipeline's sample of PROMPT, the token's initial embedding)."""
    root = tmp_path_factory.mktemp("dreambooth")
    pipe = tiny_pipeline(root / "base")
    result = train_dreambooth_lora(pipe, _exemplars(), CONFIG, root / "lora", instance_prompt=PROMPT, token="<v1>")
    assert all("prior_loss" in entry for entry in result.log)
    # the token's starting row, drawn the same way from the seed
    fresh = tiny_pipeline(root / "fresh")
    fresh.tokenizer.add_tokens(["<v1>"])
    fresh.text_encoder.resize_token_embeddings(len(fresh.tokenizer))
    weight = fresh.text_encoder.get_input_embeddings().weight.detach()
    init = torch.randn(weight.shape[1], generator=torch_generator(CONFIG.seed, "token", "<v1>")) * float(
        weight[:-1].std()
    )
    return result.folder, _sample(result.pipeline), init


def test_token_and_adapter_survive_save_and_load(
    tmp_path: Path, customized: tuple[Path, torch.Tensor, torch.Tensor]
) -> None:
    folder, sample, init = customized
    pipe = tiny_pipeline(tmp_path)
    assert "<v1>" not in pipe.tokenizer.get_vocab()
    info = load_lora(pipe, folder)
    assert info.token == "<v1>"
    assert info.record["instance_prompt"] == PROMPT
    assert info.record["class_prompt"] == "a photo of digit"
    assert "<v1>" in pipe.tokenizer.get_vocab()
    assert len(pipe.tokenizer.tokenize(PROMPT)) == 5  # "<v1>" is one token
    assert torch.equal(_sample(pipe), sample)
    learned = load_file(folder / TOKEN_WEIGHTS)["<v1>"]
    assert not torch.allclose(learned, init)  # the embedding trained
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[-1], learned)


def test_diffusers_loaders_reproduce_the_customization(
    tmp_path: Path, customized: tuple[Path, torch.Tensor, torch.Tensor]
) -> None:
    folder, sample, _ = customized
    pipe = tiny_pipeline(tmp_path)
    pipe.load_textual_inversion(str(folder), weight_name=TOKEN_WEIGHTS)  # diffusers' own loaders only
    pipe.load_lora_weights(str(folder), weight_name=LORA_WEIGHTS)
    assert torch.equal(_sample(pipe), sample)


def test_prior_preservation_changes_the_result(tmp_path: Path) -> None:
    without = train_dreambooth_lora(
        tiny_pipeline(tmp_path / "a"),
        _exemplars(),
        CONFIG.replace(prior_loss_weight=0.0),
        tmp_path / "no-prior",
        instance_prompt=PROMPT,
        token="<v1>",
    )
    assert all("prior_loss" not in entry for entry in without.log)
    with_prior = train_dreambooth_lora(
        tiny_pipeline(tmp_path / "b"), _exemplars(), CONFIG, tmp_path / "prior", instance_prompt=PROMPT, token="<v1>"
    )
    cached = list((tmp_path / "prior" / "state").glob("class-images-*.safetensors"))
    assert len(cached) == 1
    assert load_file(cached[0])["images"].shape == (2, 3, 16, 16)
    a, b = load_file(without.folder / LORA_WEIGHTS), load_file(with_prior.folder / LORA_WEIGHTS)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_existing_token_is_used_untrained(tmp_path: Path) -> None:
    # "car" is one token of the tiny vocabulary: DreamBooth's rare-token identifier, nothing added or trained
    result = train_dreambooth_lora(
        tiny_pipeline(tmp_path / "a"),
        _exemplars(),
        CONFIG.replace(prior_loss_weight=0.0),
        tmp_path / "lora",
        instance_prompt="a photo of car digit",
        token="car",
    )
    assert not (result.folder / TOKEN_WEIGHTS).exists()
    pipe = tiny_pipeline(tmp_path / "b")
    n_tokens = len(pipe.tokenizer)
    assert load_lora(pipe, result.folder).token is None
    assert len(pipe.tokenizer) == n_tokens
    assert torch.equal(_sample(pipe, "a photo of car digit"), _sample(result.pipeline, "a photo of car digit"))


def test_prompt_without_token_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must contain the token '<v1>'"):
        train_dreambooth_lora(
            tiny_pipeline(tmp_path), _exemplars(), CONFIG, tmp_path / "lora", instance_prompt="a photo", token="<v1>"
        )
    assert not (tmp_path / "lora").exists()


def test_customization_resumes_identically(tmp_path: Path) -> None:
    config = CONFIG.replace(steps=4, checkpoint_every=2)

    def run(pipe_dir: str, out: str, steps: int) -> Path:
        pipe = tiny_pipeline(tmp_path / pipe_dir)
        cfg = config.replace(steps=steps)
        return train_dreambooth_lora(
            pipe, _exemplars(), cfg, tmp_path / out, instance_prompt=PROMPT, token="<v1>"
        ).folder

    straight = run("a", "straight", 4)
    run("b", "resumed", 2)
    resumed = run("c", "resumed", 4)
    for name in (LORA_WEIGHTS, TOKEN_WEIGHTS):
        a, b = load_file(straight / name), load_file(resumed / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_one_prompt_per_exemplar_with_the_class_prompts_in_turn(
    tmp_path: Path, customized: tuple[Path, torch.Tensor, torch.Tensor]
) -> None:
    # a style: one prompt per exemplar, each naming its subject; the prior samples each class prompt in turn
    prompts = ["a photo of <v1> seven", "a photo of <v1> one"]
    config = CONFIG.replace(n_class_images=3)
    result = train_dreambooth_lora(
        tiny_pipeline(tmp_path / "a"), _exemplars(), config, tmp_path / "style", instance_prompt=prompts, token="<v1>"
    )
    info = load_lora(tiny_pipeline(tmp_path / "b"), result.folder)
    assert info.record["instance_prompt"] == prompts
    assert info.record["class_prompt"] == ["a photo of seven", "a photo of one"]
    (cached,) = (tmp_path / "style" / "state").glob("class-images-*.safetensors")
    expected = tiny_pipeline(tmp_path / "c")(
        ["a photo of seven", "a photo of one", "a photo of seven"],
        height=16,
        width=16,
        num_inference_steps=config.class_sample_steps,
        generator=torch_generator(config.seed, "class-images", 0),
        output_type="pt",
    ).images
    torch.testing.assert_close(load_file(cached)["images"], (expected * 2 - 1).clamp(-1, 1))
    # the same prompt for every exemplar, given as a list, is the single-prompt customization exactly
    same = train_dreambooth_lora(
        tiny_pipeline(tmp_path / "d"),
        _exemplars(),
        CONFIG,
        tmp_path / "same",
        instance_prompt=[PROMPT] * 2,
        token="<v1>",
    )
    for name in (LORA_WEIGHTS, TOKEN_WEIGHTS):
        a, b = load_file(customized[0] / name), load_file(same.folder / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_lora(tiny_pipeline(tmp_path / "e"), same.folder).record["instance_prompt"] == PROMPT


def test_prompt_list_of_another_length_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="one prompt per exemplar \\(2\\); got 1"):
        train_dreambooth_lora(
            tiny_pipeline(tmp_path), _exemplars(), CONFIG, tmp_path / "lora", instance_prompt=[PROMPT], token="<v1>"
        )
    with pytest.raises(ConfigError, match="class_prompt"):
        train_dreambooth_lora(
            tiny_pipeline(tmp_path / "b"),
            _exemplars(),
            CONFIG,
            tmp_path / "lora",
            instance_prompt=PROMPT,
            token="<v1>",
            class_prompt=["a photo of digit"] * 3,
        )
    assert not (tmp_path / "lora").exists()
