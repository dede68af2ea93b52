"""``genprov reproduce similarity-t2i --quick`` end to end with a resumed re-run (slow: trains a tiny text-to-image
pipeline and four DreamBooth LoRAs), and the customizations' measurable influence on their samples."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genprov.experiments.base import run_experiment
from genprov.experiments.similarity_t2i import SimilarityT2IResult

pytestmark = pytest.mark.slow


def test_quick_reproduction_customizes_towards_the_exemplars_and_resumes(tmp_path, file_mtimes) -> None:
    config = {"data": "digits", "seed": 0, "quick": True}
    result = run_experiment("similarity-t2i", config, tmp_path, show_progress=False)
    assert isinstance(result, SimilarityT2IResult)
    saved = json.loads((tmp_path / "results.json").read_text())
    saved.pop("provenance")
    assert saved == result.to_dict()
    # the LoRA pulls its samples towards its exemplar: closer than the base pipeline's samples from the same seeds
    # and the prompt without the token; on this tiny base the object cases' per-case pixel nearest-neighbour rate is
    # no higher than the base's (both about 0), a style case's exemplars are its samples' nearest neighbours more
    # often than for the base's samples
    to_exemplar = np.array([c.to_exemplar for c in result.cases])
    base_to_exemplar = np.array([c.base_to_exemplar for c in result.cases])
    assert to_exemplar.mean() < base_to_exemplar.mean()
    styles = result.style_cases
    assert styles and np.mean([c.pixel_nn_rate for c in styles]) > np.mean([c.base_pixel_nn_rate for c in styles])
    cached = file_mtimes(tmp_path / "customizations")
    assert any(name.endswith("learned_embeds.safetensors") for name in cached)
    again = run_experiment("similarity-t2i", config, tmp_path, show_progress=False)
    assert file_mtimes(tmp_path / "customizations") == cached  # nothing retrained or resampled
    assert isinstance(again, SimilarityT2IResult) and again.retrieval == result.retrieval
