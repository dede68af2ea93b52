"""Tiny text-to-image pipelines for the tests: ``t2i_pipeline`` (fresh, random weights) and ``t2i_pipeline_dir``
(one saved with ``save_pipeline``, shared read-only by a session). Built with
:func:`genprov.models.t2i.tiny_pipeline` (16x16 RGB images, 4x4x4 latents)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from genprov.models.t2i import save_pipeline, tiny_pipeline


@pytest.fixture
def t2i_pipeline() -> Any:
    """A fresh tiny ``StableDiffusionPipeline`` of random weights (seed 0)."""
    return tiny_pipeline(0)


@pytest.fixture(scope="session")
def t2i_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pipeline saved in diffusers' layout (do not modify it: copy it first)."""
    return save_pipeline(tiny_pipeline(0), tmp_path_factory.mktemp("t2i") / "pipeline")
