"""Scoring a suspect collection as Ray tasks on a local 2-CPU cluster: the scores of one in-process ``attribute`` call.

Each task reads its images from the collection and reopens the detector and its generator's checkpoint itself. Ray is
part of the dev extra (``make test`` installs it), so these tests run rather than skip.
"""

# ruff: noqa: F811  (the fixtures imported from score_fixtures are requested by name)
from __future__ import annotations

import json

import pytest
import torch
from score_fixtures import detector, reference_scores, suspect_tars, suspects  # noqa: F401 (fixtures, used by name)
from typer.testing import CliRunner

from genprov.attribution.model.score_shards import score_collection
from genprov.cli.flipad import app
from genprov.data.collections import collection_spec
from genprov.storage.shards import RayBackend

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_cluster")]


def test_one_and_two_workers_give_the_in_process_scores(detector, suspect_tars, reference_scores) -> None:
    for workers in (1, 2):
        result, _ = score_collection(detector, collection_spec(suspect_tars), RayBackend(workers=workers), shard_size=4)
        torch.testing.assert_close(torch.from_numpy(result.scores), reference_scores, rtol=0, atol=0)


def test_cli_score_on_ray_gives_the_in_process_rows(detector, suspects) -> None:
    rows = {}
    for name, extra in (("inprocess", []), ("ray", ["--backend", "ray", "--workers", "2", "--shard-size", "8"])):
        result = CliRunner().invoke(app, ["score", "--detector", str(detector), str(suspects), *extra, "--json"])
        assert result.exit_code == 0, result.output
        rows[name] = json.loads(result.stdout)
    assert rows["ray"] == rows["inprocess"]  # paths, verdicts, scores and threshold
