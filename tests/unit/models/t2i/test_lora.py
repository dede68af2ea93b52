"""LoRA through peft on a tiny Stable Diffusion pipeline: attach, train, save in diffusers' format, load, resume."""

from __future__ import annotations

import fnmatch
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lora_fixtures import tiny_pipeline
from safetensors.torch import load_file

from genprov.exceptions import CheckpointError, ConfigError, DataError, StoreMismatchError
from genprov.models.t2i import PromptTooLongError
from genprov.models.t2i.lora import (
    LORA_PARAMETER_GLOBS,
    LORA_RECORD,
    LORA_WEIGHTS,
    LoRAConfig,
    add_lora,
    load_lora,
    lora_parameter_names,
    train_lora,
)
from genprov.utils.seeding import torch_generator

CAPTIONS = ["a photo of seven", "a photo of one", "a handwritten seven", "a handwritten one"]
# alpha != rank: the scale must travel with the file for diffusers to load the same adapter
CONFIG = LoRAConfig(rank=2, alpha=6, lr=1e-2, steps=3, batch_size=2, checkpoint_every=0, log_every=1)


def _images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch_generator(0, "lora-images")) * 2 - 1


def _sample(pipe: object, prompt: str = "a photo of seven") -> torch.Tensor:
    return pipe(  # type: ignore[operator]
        prompt,
        num_inference_steps=2,
        height=16,
        width=16,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor, dict[str, torch.Tensor]]:
    """A LoRA trained 3 steps: (its folder, the trained pipeline's sample, the trained pipeline's other weights)."""
    root = tmp_path_factory.mktemp("lora")
    pipe = tiny_pipeline(root / "base")
    result = train_lora(pipe, _images(), CAPTIONS, CONFIG, root / "lora")
    others = {  # peft moves a wrapped layer's own weights under base_layer
        f"{name}.{k}".replace(".base_layer.", "."): v.detach().clone()
        for name, module in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder), ("vae", pipe.vae))
        for k, v in module.named_parameters()
        if ".lora_" not in k
    }
    return result.folder, _sample(result.pipeline), others


def test_fresh_adapter_changes_nothing_and_only_it_trains(tmp_path: Path) -> None:
    pipe = tiny_pipeline(tmp_path)
    before = _sample(pipe)
    names = add_lora(pipe.unet, LoRAConfig(rank=2))
    assert torch.equal(_sample(pipe), before)  # B starts at zero
    assert names == lora_parameter_names(pipe.unet)
    assert len(names) == 2 * 4 * 8  # A and B of 4 projections in 8 attention modules (4 transformer blocks)
    assert all(any(fnmatch.fnmatchcase(n, g) for g in LORA_PARAMETER_GLOBS) for n in names)
    trainable = [n for n, p in pipe.unet.named_parameters() if p.requires_grad]
    assert trainable == names
    with pytest.raises(ConfigError, match="already holds a LoRA"):
        add_lora(pipe.unet, LoRAConfig(rank=2))


def test_training_changes_only_lora_parameters(
    tmp_path: Path, trained: tuple[Path, torch.Tensor, dict[str, torch.Tensor]]
) -> None:
    _, _, others = trained
    base = tiny_pipeline(tmp_path)
    fresh = {
        f"{name}.{k}": v
        for name, module in (("unet", base.unet), ("text_encoder", base.text_encoder), ("vae", base.vae))
        for k, v in module.named_parameters()
    }
    assert fresh.keys() == others.keys()
    assert all(torch.equal(fresh[k], others[k]) for k in fresh)
    weights = load_file(trained[0] / LORA_WEIGHTS)
    ups = [v for k, v in weights.items() if k.endswith("lora.up.weight")]
    assert ups
    assert all(bool(v.abs().sum() > 0) for v in ups)  # every B left zero: the adapter trained


def test_diffusers_load_lora_weights_reproduces_the_trained_pipeline(
    tmp_path: Path, trained: tuple[Path, torch.Tensor, dict[str, torch.Tensor]]
) -> None:
    folder, trained_sample, _ = trained
    pipe = tiny_pipeline(tmp_path)
    base = _sample(pipe)
    pipe.load_lora_weights(str(folder))  # diffusers' own loader, nothing of genprov
    assert not torch.allclose(base, trained_sample, atol=1e-4)
    assert torch.equal(_sample(pipe), trained_sample)


def test_load_lora_round_trip(tmp_path: Path, trained: tuple[Path, torch.Tensor, dict[str, torch.Tensor]]) -> None:
    folder, trained_sample, _ = trained
    pipe = tiny_pipeline(tmp_path)
    info = load_lora(pipe, folder)
    assert torch.equal(_sample(pipe), trained_sample)
    assert info.config == CONFIG
    assert info.token is None
    assert info.record["step"] == 3
    assert info.record["complete"] is True
    assert len(lora_parameter_names(pipe.unet)) == 64
    with pytest.raises(ConfigError, match="already holds a LoRA"):
        load_lora(pipe, folder)


def test_lora_for_another_base_model_names_each_tensor(
    tmp_path: Path, trained: tuple[Path, torch.Tensor, dict[str, torch.Tensor]]
) -> None:
    pipe = tiny_pipeline(tmp_path, width=16)  # cross-attention width 16, not 32
    with pytest.raises(CheckpointError) as err:
        load_lora(pipe, trained[0])
    message = str(err.value)
    assert "\n" not in message
    assert "another base model" in message
    # the cross-attention keys and values read the text embeddings: their down matrices do not fit
    expected = [
        k for k in load_file(trained[0] / LORA_WEIGHTS) if ".attn2.to_k.lora.down" in k or ".attn2.to_v.lora.down" in k
    ]
    assert len(expected) == 8
    assert all(k in message for k in expected)
    assert f"{len(expected)} tensor(s)" in message
    assert not any(".lora_" in n for n, _ in pipe.unet.named_parameters())  # nothing loaded


def test_pickled_lora_refused(tmp_path: Path) -> None:
    folder = tmp_path / "lora"
    folder.mkdir()
    (folder / "pytorch_lora_weights.bin").write_bytes(b"\x80\x02}q\x00.")
    pipe = tiny_pipeline(tmp_path / "base")
    for source in (folder, folder / "pytorch_lora_weights.bin"):
        with pytest.raises(CheckpointError, match=r"pickle file; genprov reads safetensors only.*save_file"):
            load_lora(pipe, source)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_lora(pipe, tmp_path / "missing")


def test_killed_run_resumes_identically(tmp_path: Path) -> None:
    images = _images()
    config = CONFIG.replace(steps=4, checkpoint_every=2)
    straight = train_lora(tiny_pipeline(tmp_path / "a"), images, CAPTIONS, config, tmp_path / "straight")
    # a run stopped at its step-2 state, then run again with the same command
    first = train_lora(tiny_pipeline(tmp_path / "b"), images, CAPTIONS, config.replace(steps=2), tmp_path / "resumed")
    assert first.step == 2
    resumed = train_lora(tiny_pipeline(tmp_path / "c"), images, CAPTIONS, config, tmp_path / "resumed")
    assert resumed.resumed_from == 2
    a, b = load_file(straight.folder / LORA_WEIGHTS), load_file(resumed.folder / LORA_WEIGHTS)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight.log == resumed.log
    again = train_lora(tiny_pipeline(tmp_path / "d"), images, CAPTIONS, config, tmp_path / "resumed")
    assert again.resumed_from == again.step == 4  # a finished run is reloaded, not retrained
    assert torch.equal(_sample(again.pipeline), _sample(resumed.pipeline))
    with pytest.raises(StoreMismatchError, match="rank: saved 2, now 3"):
        train_lora(tiny_pipeline(tmp_path / "e"), images, CAPTIONS, config.replace(rank=3), tmp_path / "resumed")


def test_bad_captions_refused_before_writing(tmp_path: Path) -> None:
    pipe = tiny_pipeline(tmp_path / "base")
    out = tmp_path / "lora"
    with pytest.raises(DataError, match="3 captions for 4 images"):
        train_lora(pipe, _images(), CAPTIONS[:3], CONFIG, out)
    long = [*CAPTIONS[:3], " ".join(["seven"] * 20)]
    with pytest.raises(PromptTooLongError, match=r"caption 'seven seven.* is 22 tokens long .* at most 16"):
        train_lora(pipe, _images(), long, CONFIG, out)
    assert not out.exists() or not any(out.iterdir())
    assert not (out / LORA_RECORD).exists()


def test_a_cosine_schedule_warms_up_then_decays_and_cannot_grow_on_resume(tmp_path: Path) -> None:
    from genprov.models.train_config import schedule_factor

    factors = [schedule_factor(s, "cosine", 10, 0.2) for s in range(10)]
    assert factors[:3] == [0.0, 0.5, 1.0] and all(a >= b for a, b in itertools.pairwise(factors[2:]))
    assert schedule_factor(5, "constant", 10, 0.2) == 1.0
    with pytest.raises(ConfigError, match="lr_schedule"):
        LoRAConfig(lr_schedule="linear")
    cosine = CONFIG.replace(steps=2, lr_schedule="cosine", warmup_fraction=0.5)
    constant = train_lora(tiny_pipeline(tmp_path / "a"), _images(), CAPTIONS, CONFIG.replace(steps=2), tmp_path / "k")
    warmed = train_lora(tiny_pipeline(tmp_path / "b"), _images(), CAPTIONS, cosine, tmp_path / "c")
    a, b = load_file(constant.folder / LORA_WEIGHTS), load_file(warmed.folder / LORA_WEIGHTS)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # step 0 of the warm-up updates nothing
    with pytest.raises(StoreMismatchError, match="steps: saved 2, now 3"):
        train_lora(tiny_pipeline(tmp_path / "d"), _images(), CAPTIONS, cosine.replace(steps=3), tmp_path / "c")


_SAVE_SCRIPT = """
import hashlib, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[2])
from lora_fixtures import tiny_pipeline
from genprov.models.t2i.lora import LORA_WEIGHTS, LoRAConfig, add_lora, save_lora
folder = Path(sys.argv[1])
pipe = tiny_pipeline(folder / "base")
add_lora(pipe.unet, LoRAConfig(rank=2))
print(hashlib.sha256((save_lora(pipe, folder / "lora", config=LoRAConfig(rank=2)) / LORA_WEIGHTS).read_bytes()).hexdigest())
"""


def test_saved_lora_bytes_do_not_depend_on_the_process(tmp_path: Path) -> None:
    """The adapter file is byte-identical across processes with different string hashing (peft's target_modules
    set is written sorted, the safetensors metadata keys too), so fingerprints of LoRA folders are stable. Hash seeds
    1 and 2 wrote the metadata keys in different orders before."""
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
        out = subprocess.run(
            [sys.executable, "-c", _SAVE_SCRIPT, str(tmp_path / hash_seed), str(Path(__file__).parent)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        digests.add(out.stdout.strip().splitlines()[-1])
    assert len(digests) == 1
