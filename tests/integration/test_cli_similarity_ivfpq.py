"""``genprov similarity index / query --search ivfpq``: the compressed index is built, reused and searched."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from genprov.attribution.data import SimilarityAttributor, SimilarityConfig
from genprov.cli.similarity import app
from genprov.data import load_dataset, save_images
from genprov.exceptions import ConfigError
from genprov.results import DataAttributionResult

faiss = pytest.importorskip("faiss")
faiss.omp_set_num_threads(1)
torch.set_num_threads(1)

INDEX = ["index", "--extractor", "pixels", "--data", "digits", "--n", "400", "--set", "similarity.shard_size=128"]


def _invoke(*args: object) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def test_index_and_query_with_the_compressed_index(tmp_path: Path) -> None:
    store = tmp_path / "sim"
    result = _invoke(*INDEX, "--store", store, "--search", "ivfpq", "--nprobe", "4", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    # 400 rows: the codebooks and centroids outweigh the codes (tests/unit/storage/test_index_ivfpq.py: 3,000)
    assert summary["faiss_index"] == "ivfpq" and summary["faiss_index_mb"] > 0 and summary["features_mb"] > 0
    record = json.loads((store / "config.json").read_text())
    assert record["config"]["search"] == "ivfpq" and record["config"]["n_probe"] == 4
    saved = json.loads((store / "index.json").read_text())["faiss"]
    assert saved["kind"] == "ivfpq" and saved["settings"]["seed"] == 0 and (store / "faiss-ivfpq.index").is_file()
    before = (store / "faiss-ivfpq.index").stat().st_mtime_ns
    again = _invoke(*INDEX, "--store", store, "--search", "ivfpq", "--nprobe", "4", "--json")
    assert again.exit_code == 0, again.output
    assert (store / "faiss-ivfpq.index").stat().st_mtime_ns == before  # same rows and settings: reused

    queries = save_images(load_dataset("digits", split="test", n=3).images, tmp_path / "q")
    outs = {}
    for search, extra in (("exact", []), ("ivfpq", ["--nprobe", "1000", "--rerank", "400"])):
        out = tmp_path / search
        args = ["query", "--store", store, *queries, "--top-k", "5", "--search", search, *extra, "--out", out]
        done = _invoke(*args, "--json")
        assert done.exit_code == 0, done.output
        outs[search] = DataAttributionResult.load(out / "attribution.npz")
    # every list probed and every row re-ranked: the exact answer, shares included
    np.testing.assert_array_equal(outs["ivfpq"].indices, outs["exact"].indices)
    np.testing.assert_allclose(outs["ivfpq"].scores, outs["exact"].scores, rtol=1e-6)
    np.testing.assert_allclose(outs["ivfpq"].soft, outs["exact"].soft, rtol=1e-6)

    hnsw = _invoke("query", "--store", store, *queries, "--search", "hnsw", "--nprobe", "4", "--out", tmp_path / "h")
    assert hnsw.exit_code == 2 and "n_probe applies to the IVF kinds" in hnsw.output


def test_ivfpq_search_needs_a_store() -> None:
    train = load_dataset("digits", n=300, seed=0).images
    with pytest.raises(ConfigError, match="search='ivfpq' needs a store folder"):
        SimilarityAttributor("pixels", SimilarityConfig(search="ivfpq")).fit(train)
