"""Scoring a suspect collection shard by shard (in this process): the scores of one ``attribute`` call, resumable."""

# ruff: noqa: F811  (the fixtures imported from score_fixtures are requested by name)
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from score_fixtures import detector, reference_scores, suspect_tars, suspects  # noqa: F401 (fixtures, used by name)
from typer.testing import CliRunner

from genprov.attribution.model.score_shards import ScoreShardTask, open_detector, score_collection
from genprov.cli.flipad import app
from genprov.data.collections import collection_spec
from genprov.exceptions import StoreMismatchError
from genprov.storage import FeatureStore


def test_sharded_scores_equal_one_attribute_call(detector, suspects, suspect_tars, reference_scores) -> None:
    for source, shard_size in ((suspects, 5), (suspect_tars, 8), (suspect_tars, 1000)):
        result, images = score_collection(detector, collection_spec(source), shard_size=shard_size)
        torch.testing.assert_close(torch.from_numpy(result.scores), reference_scores, rtol=0, atol=0)
        assert len(images) == 22 and result.threshold == open_detector(detector).threshold_
        np.testing.assert_array_equal(result.verdicts, result.scores >= result.threshold)


def test_a_scores_store_resumes_and_refuses_another_detector(
    detector, suspects, reference_scores, tmp_path, monkeypatch
) -> None:
    calls: list[int] = []
    real = ScoreShardTask.__call__

    def dies_on_second(self: ScoreShardTask, start: int, stop: int) -> dict[str, np.ndarray]:
        calls.append(start)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(self, start, stop)

    monkeypatch.setattr(ScoreShardTask, "__call__", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        score_collection(detector, collection_spec(suspects), store=tmp_path / "scores", shard_size=8)
    assert FeatureStore.open(tmp_path / "scores").manifest.shards == ["done", "pending", "pending"]
    calls.clear()
    monkeypatch.setattr(ScoreShardTask, "__call__", lambda self, a, b: calls.append(a) or real(self, a, b))
    result, _ = score_collection(detector, collection_spec(suspects), store=tmp_path / "scores", shard_size=8)
    assert calls == [8, 16]
    torch.testing.assert_close(torch.from_numpy(result.scores), reference_scores, rtol=0, atol=0)
    with pytest.raises(StoreMismatchError):  # other images in the same store
        score_collection(detector, collection_spec(suspects, n=5), store=tmp_path / "scores", shard_size=8)


def test_cli_score_of_tar_shards_gives_the_rows_of_the_files(detector, suspects, suspect_tars) -> None:
    rows = {}
    for name, images in (("files", [str(suspects)]), ("tars", [suspect_tars, "--shard-size", "6"])):
        result = CliRunner().invoke(app, ["score", "--detector", str(detector), *images, "--json"])
        assert result.exit_code == 0, result.output
        rows[name] = json.loads(result.stdout)
    assert [r["score"] for r in rows["tars"]] == [r["score"] for r in rows["files"]]
    assert [r["attributed"] for r in rows["tars"]] == [r["attributed"] for r in rows["files"]]
    assert rows["tars"][0]["path"].endswith("suspects-0.tar:img_00000.png")
    result = CliRunner().invoke(app, ["score", "--detector", str(detector), str(suspects), "--store", "x"])
    assert result.exit_code != 0 and "--store keeps the scores of a collection" in result.output
