"""``genprov trak featurize / score`` on a text-to-image pipeline folder with a LoRA: training captions from a
file, query prompts, the saved artefact reopened from its recorded folders, and every refused combination."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from genprov.attribution.data.trak import TRAKAttributor
from genprov.cli.trak import _attributor, app
from genprov.data import load_dataset, save_images
from genprov.exceptions import CheckpointError
from genprov.models.t2i import (
    LoRAConfig,
    add_lora,
    build_components,
    build_pipeline,
    encode_examples,
    load_pipeline,
    open_pipeline,
    save_pipeline,
    tiny_pipeline,
    tiny_pipeline_config,
    train_lora,
    train_tokenizer,
)
from genprov.models.t2i.lora import lora_parameter_names, save_lora
from genprov.utils.seeding import torch_generator

CAPTIONS = ["a photo of a horse", "a photo of an automobile"] * 3
FAST = ["--n-timesteps", "2", "--proj-dim", "32", "--output-function", "squared-l2-norm"]
RUNNER = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = RUNNER.invoke(app, list(args))
    return result.exit_code, result.output


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")} if root.exists() else {}


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A saved tiny pipeline, 6 captioned 16x16 training images (a folder + captions.json), a LoRA trained on
    them, a LoRA of another base model (text width 16), and 2 query images."""
    root = tmp_path_factory.mktemp("t2i-trak")
    pipeline = save_pipeline(tiny_pipeline(0), root / "pipe")
    images = torch.rand(6, 3, 16, 16, generator=torch_generator(0, "t2i-trak-cli")) * 2 - 1
    files = save_images(images, root / "train")
    (root / "captions.json").write_text(json.dumps({f.name: c for f, c in zip(files, CAPTIONS, strict=True)}))
    train = load_dataset(str(root / "train"))
    config = LoRAConfig(rank=2, steps=2, batch_size=2, lr=1e-2, checkpoint_every=0)
    train_lora(load_pipeline(pipeline), train.images, CAPTIONS, config, root / "lora")
    other_config = tiny_pipeline_config().replace(text_hidden_size=16)
    tokenizer = train_tokenizer(CAPTIONS, vocab_size=other_config.vocab_size, max_length=other_config.max_length)
    other = build_pipeline(build_components(other_config), tokenizer)
    add_lora(other.unet, LoRAConfig(rank=2))
    save_lora(other, root / "other-lora", config=LoRAConfig(rank=2))
    save_images(images[:2] * 0.5, root / "queries")
    return {"root": root, "pipeline": pipeline, "lora": root / "lora", "train": root / "train"}


@pytest.fixture(scope="module")
def store(setting: dict[str, Path]) -> Path:
    folder = setting["root"] / "store"
    code, output = _run(
        "featurize",
        "--model",
        str(setting["pipeline"]),
        "--lora",
        str(setting["lora"]),
        "--data",
        str(setting["train"]),
        "--captions",
        str(setting["root"] / "captions.json"),
        "--store",
        str(folder),
        *FAST,
        "--json",
    )
    assert code == 0, output
    summary = json.loads(output)
    assert summary["method"] == "d-trak" and summary["n_train"] == 6
    assert summary["parameters"] > 0
    return folder


def test_featurize_records_the_pipeline_lora_and_captions(setting: dict[str, Path], store: Path) -> None:
    info = json.loads((store / "manifest.json").read_text())["info"]
    assert info["model"] == str(setting["pipeline"].resolve())
    assert info["t2i"] == {"lora": str(setting["lora"].resolve()), "captions": str(setting["root"] / "captions.json")}
    assert info["trak_config"]["include"] == ["*.lora_A.*", "*.lora_B.*"]
    assert (info["image_size"], info["channels"]) == (16, 3)


def test_score_with_one_prompt_and_with_a_prompts_file(setting: dict[str, Path], store: Path, tmp_path: Path) -> None:
    queries = str(setting["root"] / "queries")
    common = ["score", "--store", str(store), "--queries", queries, "--top-k", "3", "--save-scores", "--json"]
    code, output = _run(*common, "--prompt", "a photo of a horse", "--out", str(tmp_path / "one"))
    assert code == 0, output
    rows = json.loads(output)["queries"]
    assert [r["prompt"] for r in rows] == ["a photo of a horse"] * 2 and len(rows[0]["top"]) == 3
    assert (tmp_path / "one" / "report.html").is_file()
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"img_00001.png": "a photo of an automobile", "img_00000.png": "a photo of a horse"}))
    code, output = _run(*common, "--prompts", str(prompts), "--out", str(tmp_path / "file"))
    assert code == 0, output
    assert [r["prompt"] for r in json.loads(output)["queries"]] == ["a photo of a horse", "a photo of an automobile"]
    one, each = np.load(tmp_path / "one" / "scores.npy"), np.load(tmp_path / "file" / "scores.npy")
    np.testing.assert_array_equal(one[0], each[0])  # same image, same prompt
    assert not np.allclose(one[1], each[1])  # the prompt changes the query's features


def test_saved_attributor_reopens_from_its_recorded_pipeline_and_lora(
    setting: dict[str, Path], store: Path, tmp_path: Path
) -> None:
    for part in ("pipeline", "lora"):  # copies of the pipeline and LoRA, changed below
        shutil.copytree(setting[part], tmp_path / part)
    pipe = open_pipeline(tmp_path / "pipeline", tmp_path / "lora")
    train = encode_examples(pipe, load_dataset(str(setting["train"])).images, CAPTIONS)
    opened = _attributor(store, [])
    names = opened.attributor.parameter_names
    assert len(names) == len(lora_parameter_names(pipe.unet)) == 112  # the LoRA's tensors only, by default
    attributor = TRAKAttributor.for_pipeline(pipe, opened.attributor.config).fit(train, store=store)
    attributor.save_pretrained(tmp_path / "artefact")
    state = json.loads((tmp_path / "artefact" / "config.json").read_text())["state"]["pipeline"]
    assert state["folder"] == str((tmp_path / "pipeline").resolve())
    assert state["lora"]["folder"] == str((tmp_path / "lora").resolve())
    reopened = TRAKAttributor.from_pretrained(tmp_path / "artefact")
    queries = train[:2]
    torch.testing.assert_close(reopened.scores(queries), opened.attributor.scores(queries))
    weights = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(CheckpointError, match=r"LoRA .* changed since"):
        TRAKAttributor.from_pretrained(tmp_path / "artefact")
    weights.write_bytes(original)
    shutil.rmtree(tmp_path / "pipeline")
    with pytest.raises(CheckpointError, match="which is missing"):
        TRAKAttributor.from_pretrained(tmp_path / "artefact")
    reopened = TRAKAttributor.from_pretrained(
        tmp_path / "artefact", open_pipeline(setting["pipeline"], setting["lora"])
    )
    with pytest.raises(CheckpointError, match="differs"):  # the pipeline without its LoRA has other weights
        TRAKAttributor.from_pretrained(tmp_path / "artefact", load_pipeline(setting["pipeline"]))


def _refused(args: list[str], *, written: Path) -> str:
    before = _snapshot(written)
    code, output = _run(*args)
    assert code == 2, output
    assert len(output.strip().splitlines()) == 1, output
    assert _snapshot(written) == before  # nothing written
    return output


def test_wrong_combinations_are_refused_before_writing(setting: dict[str, Path], store: Path, tmp_path: Path) -> None:
    root = setting["root"]
    ddpm_like = tmp_path / "not-a-pipeline"
    ddpm_like.mkdir()
    new = tmp_path / "new-store"
    base = ["featurize", "--data", str(setting["train"]), "--store", str(new), *FAST]
    pipe, lora, captions = str(setting["pipeline"]), str(setting["lora"]), str(root / "captions.json")
    out = _refused([*base, "--model", pipe, "--lora", lora], written=new)
    assert "--captions labels" in out
    out = _refused([*base, "--model", str(ddpm_like), "--lora", lora], written=new)
    assert "--lora needs a text-to-image pipeline" in out
    out = _refused([*base, "--model", str(ddpm_like), "--captions", "labels"], written=new)
    assert "drop --captions" in out
    out = _refused([*base, "--model", pipe, "--lora", str(root / "other-lora"), "--captions", captions], written=new)
    assert "another base model" in out
    out = _refused([*base, "--model", pipe, "--captions", "labels"], written=new)  # a folder without classes
    assert "no labels" in out
    short = tmp_path / "short.json"
    short.write_text(json.dumps(CAPTIONS[:5]))
    out = _refused([*base, "--model", pipe, "--captions", str(short)], written=new)
    assert "lists 5 captions" in out
    assert not new.exists()
    score = ["score", "--store", str(store), "--queries", str(root / "queries"), "--out", str(tmp_path / "why")]
    out = _refused(score, written=tmp_path / "why")
    assert "--prompt TEXT" in out and "one of them" in out
    out = _refused([*score, "--prompt", "a photo of a horse", "--prompts", captions], written=tmp_path / "why")
    assert "not both" in out
    out = _refused([*score, "--prompt", "a photo of a horse " * 10], written=tmp_path / "why")
    assert "at most" in out
    assert not (tmp_path / "why").exists()


def test_workspace_add_trak_takes_the_pipeline_and_its_lora(setting: dict[str, Path], store: Path, tmp_path) -> None:
    from genprov.cli.main import app as main_app

    ws = tmp_path / "ws"
    args = ["workspace", "add", "trak", "--workspace", str(ws), "--name", "lora-dtrak", "--store", str(store)]
    result = RUNNER.invoke(main_app, [*args, "--model", str(setting["pipeline"]), "--lora", str(setting["lora"])])
    assert result.exit_code == 0, result.output
    entry = ws / "entries" / "lora-dtrak"
    assert (entry / "lora").is_dir() and (entry / "model" / "model_index.json").is_file()
