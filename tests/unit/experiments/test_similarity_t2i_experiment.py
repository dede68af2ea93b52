"""``genprov reproduce similarity-t2i``: config, case plan and prompts, and a tiny end-to-end run with a resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from genprov.eval.customization import Customization
from genprov.exceptions import ConfigError, DataError
from genprov.experiments.base import EXPERIMENTS, run_experiment
from genprov.experiments.similarity_t2i import (
    SimilarityT2IExperimentConfig,
    SimilarityT2IResult,
    object_prompts,
    run_similarity_t2i,
)
from genprov.experiments.similarity_t2i.customization import (
    plan_object_cases,
    plan_style_cases,
    sample_prompts,
    style_prompts,
)

torch.set_num_threads(1)

TINY: dict[str, Any] = {
    "data": "digits",
    "quick": True,
    "n_pool": 40,
    "base": {"vae_steps": 2, "unet_steps": 3, "batch_size": 8, "vae_batch_size": 8},
    "n_object": 4,
    "lora_steps": 2,
    "n_class_images": 2,
    "class_sample_steps": 2,
    "n_samples": 3,
    "n_control_per_case": 2,
    "sample_steps": 2,
    "classifier_steps": 4,
    "extractors": ["pixels", "random-cnn", "classifier"],
    "tuning": {"max_steps": 4, "eval_every": 2},
    "gallery_queries": 1,
}


def test_registered_with_its_config() -> None:
    assert EXPERIMENTS.config_type("similarity-t2i") is SimilarityT2IExperimentConfig


def test_presets() -> None:
    full = SimilarityT2IExperimentConfig.preset_for("mnist")
    quick = SimilarityT2IExperimentConfig.preset_for("digits", quick=True)
    assert full.image_size == 32 and full.base["unet_steps"] == 1000 and not full.quick
    assert quick.quick and quick.image_size == 16 and quick.base["text_hidden_size"] == 32
    assert quick.n_object < full.n_object and quick.lora_steps < full.lora_steps
    assert 0 < quick.n_style_cases < full.n_style_cases and quick.styles == full.styles == ("shear",)
    # a base given with --set merges key by key with the preset's
    merged = SimilarityT2IExperimentConfig.from_dict({"base": {"unet_steps": 7}})
    assert merged.base == {"vae_steps": 400, "unet_steps": 7, "checkpoint_every": 100}
    assert SimilarityT2IExperimentConfig.from_dict(full.to_dict()) == full


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"n_object": 2}, "n_object"),
        ({"object_prompt": "a photo of digit"}, "object_prompt"),
        ({"new_token": "<v 1>"}, "new_token"),
        ({"n_control_per_case": 40}, "n_control_per_case"),
        ({"extractors": ["local-weights"]}, "extractors"),
        ({"n_val_classes": 5}, "n_val_classes"),
        ({"lora_lr": 0}, "lora_lr"),
        ({"tuning": {"max_step": 3}}, "max_steps"),
        ({"n_style_cases": -1}, "n_style_cases"),
        ({"styles": ["bold"]}, "styles"),
        ({"styles": []}, "styles"),
        ({"style_exemplars": 1}, "style_exemplars"),
        ({"style_exemplars": 6}, "style_exemplars"),
        ({"style_prompt": "a <v1> digit"}, "style_prompt"),
        ({"style_prompt": "{caption} in style"}, "style_prompt"),
    ],
)
def test_bad_config_names_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        SimilarityT2IExperimentConfig.from_dict(changes)


def test_prompts_put_the_token_before_the_class_noun_or_use_the_fixed_prompt() -> None:
    cfg = SimilarityT2IExperimentConfig()
    assert object_prompts(cfg, "a handwritten seven") == ("a handwritten <v1> seven", "a handwritten seven")
    assert object_prompts(cfg, "a photo of a horse") == ("a photo of a <v1> horse", "a photo of a horse")
    fixed = cfg.replace(object_prompt="a photo of <v1> digit")
    assert object_prompts(fixed, "a handwritten seven") == ("a photo of <v1> digit", "a photo of digit")


def test_style_prompts_vary_the_class_and_samples_cycle_through_them() -> None:
    cfg = SimilarityT2IExperimentConfig()
    assert style_prompts(cfg, "a handwritten seven") == ("a <v1> handwritten seven", "a handwritten seven")
    template = cfg.replace(style_prompt="{caption} in <v1> style")
    assert style_prompts(template, "a handwritten two") == ("a handwritten two in <v1> style", "a handwritten two")
    captions = ["a handwritten seven", "a handwritten two", "a handwritten five", "a handwritten one"]
    case = Customization(
        id="c-004",
        kind="style",
        style="shear",
        classes=(7, 2, 5),
        split="unseen",
        exemplars=(),
        samples=(),
        source_indices=(0, 1, 2),
    )
    with_token, without = sample_prompts(cfg, case, captions, 4)
    assert with_token == [
        "a <v1> handwritten seven",
        "a <v1> handwritten two",
        "a <v1> handwritten five",
        "a <v1> handwritten seven",
    ]
    assert without == [captions[0], captions[1], captions[2], captions[0]]
    obj = dataclasses.replace(case, kind="object", style=None, classes=(1,), source_indices=(3,))
    assert sample_prompts(cfg, obj, captions, 2) == (["a handwritten <v1> one"] * 2, ["a handwritten one"] * 2)


def test_style_plan_takes_distinct_classes_of_one_side_and_unused_images() -> None:
    labels = np.repeat(np.arange(10), 3)
    used = [int(i) for i in np.flatnonzero(labels == 0)[:2]]
    plan = plan_style_cases(labels, 4, 3, ("shear", "thick"), (0, 1, 2, 3, 4), seed=0, used=used)
    assert plan == plan_style_cases(labels, 4, 3, ("shear", "thick"), (0, 1, 2, 3, 4), seed=0, used=used)
    assert [p["split"] for p in plan] == ["seen", "unseen", "seen", "unseen"]
    assert [p["style"] for p in plan] == ["shear", "thick", "shear", "thick"]
    for p in plan:
        assert len(set(p["classes"])) == 3 and [int(labels[i]) for i in p["idx"]] == p["classes"]
        assert all((c < 5) == (p["split"] == "seen") for c in p["classes"])
    taken = [i for p in plan for i in p["idx"]]
    assert len(set(taken)) == len(taken) and not set(taken) & set(used)
    with pytest.raises(DataError, match="style_exemplars"):
        plan_style_cases(labels, 1, 6, ("shear",), (0, 1, 2, 3, 4), seed=0)
    with pytest.raises(DataError, match="n_style_cases"):  # 3 images per class: the fourth case finds none left
        plan_style_cases(labels, 8, 5, ("shear",), (0, 1, 2, 3, 4), seed=0)


def test_plan_alternates_seen_and_unseen_classes_without_reusing_an_image() -> None:
    labels = np.repeat(np.arange(10), 3)
    plan = plan_object_cases(labels, 8, (0, 1, 2, 3, 4), seed=0)
    assert [p["split"] for p in plan] == ["seen", "unseen"] * 4
    assert [p["class"] for p in plan] == [0, 5, 1, 6, 2, 7, 3, 8]
    assert all(labels[p["idx"]] == p["class"] for p in plan)
    assert len({p["idx"] for p in plan}) == 8
    assert plan == plan_object_cases(labels, 8, (0, 1, 2, 3, 4), seed=0)
    with pytest.raises(DataError, match="seen_classes"):
        plan_object_cases(labels, 4, tuple(range(10)), seed=0)
    with pytest.raises(DataError, match="n_object"):
        plan_object_cases(np.array([0, 5]), 3, (0,), seed=0)


def test_tiny_run_end_to_end_and_resume(tmp_path: Path, file_mtimes) -> None:
    config = SimilarityT2IExperimentConfig.from_dict(TINY)
    result = run_similarity_t2i(config, tmp_path, show_progress=False)
    assert isinstance(result, SimilarityT2IResult)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == result.to_dict()  # the typed result is exactly what results.json holds
    assert saved["experiment"] == "similarity-t2i" and saved["config"]["quick"] is True
    assert set(saved["cases"][0]) == {
        "id",
        "role",
        "class",
        "prompt",
        "pixel_nn_rate",
        "base_pixel_nn_rate",
        "to_exemplar",
        "base_to_exemplar",
        "feature_nn_rate",
    }
    html = (tmp_path / "report.html").read_text()
    for heading in ("Summary", "Influence of each customization", "Top-k with soft shares", "Per style customization"):
        assert heading in html
    roles = result.benchmark.roles
    assert roles["tune"] >= 1 and roles["val"] >= 1 and roles["unseen"] >= 1
    assert result.benchmark.control_queries == roles["unseen"] * TINY["n_control_per_case"]
    assert result.model.trained_here and result.model.token == "<v1>"
    for case in result.cases:
        assert case.prompt.startswith("a handwritten <v1> ")
        assert set(case.feature_nn_rate) == set(TINY["extractors"])
        assert 0 <= case.pixel_nn_rate <= 1 and 0 <= case.base_pixel_nn_rate <= 1 and case.to_exemplar > 0
    # each case has its LoRA (with the learnt token) and its prompt in the manifest
    manifest = json.loads((tmp_path / "customizations" / "manifest.json").read_text())
    entry = manifest["customizations"][0]
    assert entry["prompt"] == result.cases[0].prompt
    assert (tmp_path / "customizations" / entry["lora"] / "learned_embeds.safetensors").is_file()
    # the quick preset's style cases: after the object cases, several classes under one style, one prompt each
    quick = SimilarityT2IExperimentConfig.preset_for("digits", quick=True)
    styled = manifest["customizations"][TINY["n_object"] :]
    assert [e["kind"] for e in styled] == ["style"] * quick.n_style_cases
    for row, e in zip(result.style_cases, styled, strict=True):
        assert row.id == e["id"] and row.style == e["style"] == "shear" and list(row.classes) == e["classes"]
        assert len(set(row.classes)) == len(e["exemplars"]) == quick.style_exemplars
        assert [p.split()[1] for p in row.prompts] == ["<v1>"] * quick.style_exemplars
        assert set(row.feature_nn_rate) == set(TINY["extractors"]) and 0 <= row.pixel_nn_rate <= 1
    assert {r.role for r in result.style_cases} >= {"unseen"}
    assert set(result.kinds) == {"object", "style"}
    assert result.kinds["object"].cases == TINY["n_object"] and result.kinds["style"].cases == quick.n_style_cases
    assert result.retrieval_row("pixels", "tuned", case="style").queries == TINY["n_samples"]  # one unseen style case
    # each kind's control is its share of the control queries: together they make the overall control row
    per_kind_queries = {kind: row.roles["unseen"] * TINY["n_control_per_case"] for kind, row in result.kinds.items()}
    for row in result.control:
        parts = [
            next(
                c
                for c in result.kinds[kind].control
                if (c.extractor, c.features, c.protocol) == (row.extractor, row.features, row.protocol)
            )
            for kind in ("object", "style")
        ]
        weighted = sum(per_kind_queries[k] * p.metrics.mean_ap for k, p in zip(("object", "style"), parts, strict=True))
        assert weighted / sum(per_kind_queries.values()) == pytest.approx(row.metrics.mean_ap, abs=1e-12)
    rows = result.retrieval
    assert {r.protocol for r in rows} == {"A", "B"} and {r.features for r in rows} == {"untuned", "tuned"}
    headline = result.retrieval_row("pixels", "tuned")
    assert (headline.split, headline.case, headline.protocol) == ("unseen", "all", "A")
    assert result.claims.per_extractor["pixels"].tuned_map == headline.metrics.mean_ap
    for s in result.soft_attribution:
        assert s.after.nll > 0 and 0 <= s.after.exemplar_mass <= 1

    # a second run reuses the pipeline, the LoRAs, the samples and the features (nothing rewritten)
    def files() -> dict[str, int]:
        return {
            **file_mtimes(tmp_path, "*.safetensors"),
            **file_mtimes(tmp_path, "*.npz"),
            **file_mtimes(tmp_path / "customizations", "*.png"),
            **file_mtimes(tmp_path / "control", "*.png"),
        }

    cached = files()
    assert any(name.startswith("c-000/samples") for name in cached)
    again = run_experiment("similarity-t2i", TINY, tmp_path, show_progress=False)
    assert files() == cached
    assert isinstance(again, SimilarityT2IResult) and again.cases == result.cases
    # other settings are refused on the same folder, naming what changed
    with pytest.raises(DataError, match="lora_steps"):
        run_experiment("similarity-t2i", {**TINY, "lora_steps": 3}, tmp_path, show_progress=False)


def test_case_influence_compares_with_the_paired_base_samples(tmp_path: Path) -> None:
    from genprov.data import save_images
    from genprov.eval.customization import Customization
    from genprov.experiments.similarity_t2i.customization import case_influence

    gen = torch.Generator().manual_seed(0)
    pool = torch.rand(20, 1, 8, 8, generator=gen) * 2 - 1
    exemplar = torch.rand(1, 1, 8, 8, generator=gen) * 2 - 1
    near = (exemplar + 0.05 * torch.randn(4, 1, 8, 8, generator=gen)).clamp(-1, 1)  # customized: near the exemplar
    far = pool[:3] + 0.05 * torch.randn(3, 1, 8, 8, generator=gen)  # base: near pool images
    ex = save_images(exemplar, tmp_path / "c-000" / "exemplars", prefix="exemplar")
    sa = save_images(near, tmp_path / "c-000" / "samples", prefix="sample")
    case = Customization(
        id="c-000",
        kind="object",
        style=None,
        classes=(3,),
        split="unseen",
        exemplars=tuple(str(p.relative_to(tmp_path)) for p in ex),
        samples=tuple(str(p.relative_to(tmp_path)) for p in sa),
        source_indices=(0,),
        prompt="a handwritten <v1> three",
    )
    nn_rate, base_rate, to_ex, base_to_ex = case_influence(pool, case, tmp_path, far)
    assert (nn_rate, base_rate) == (1.0, 0.0)
    assert to_ex < 0.1 < base_to_ex
    assert Customization.from_dict(case.to_dict()) == case  # the prompt survives the manifest
    assert "lora" not in case.to_dict()  # unset fields stay out of the manifest
    no_control = case_influence(pool, case, tmp_path, far[:0])
    assert no_control[0] == 1.0 and np.isnan(no_control[1]) and np.isnan(no_control[3])
