"""A similarity index built from an image collection (tar shards) in the service: added without passing the
images (read from the collection and checked against the index), loaded, and answering a query like an index of
the same images built in one process; a collection changed since indexing is refused when adding."""

from __future__ import annotations

import tarfile

import pytest
import torch
from PIL import Image

from genprov.app.engine import ProvenanceEngine
from genprov.app.register import add_similarity
from genprov.app.workspace import Workspace
from genprov.attribution.data.index_folder import build_similarity_index, index_collection
from genprov.data import load_dataset, save_images
from genprov.data.images import to_uint8
from genprov.exceptions import DataError


@pytest.fixture
def shards(tmp_path) -> str:
    folder = tmp_path / "images"
    save_images(load_dataset("digits", n=12, seed=4).images, folder)
    files = sorted(folder.iterdir())
    for s in range(2):
        with tarfile.open(tmp_path / f"part-{s}.tar", "w") as tar:
            for file in files[6 * s : 6 * (s + 1)]:
                tar.add(file, arcname=file.name)
    return str(tmp_path / "part-{0..1}.tar")


def test_a_collection_index_is_added_and_answers_as_an_in_process_index(shards, tmp_path) -> None:
    torch.set_num_threads(1)
    index_collection("pixels", tmp_path / "sharded", {"name": shards}, similarity_config={"shard_size": 5})
    build_similarity_index("pixels", tmp_path / "plain", {"name": str(tmp_path / "images")})
    ws = Workspace.create(tmp_path / "ws")
    add_similarity(ws, "sharded", tmp_path / "sharded")
    add_similarity(ws, "plain", tmp_path / "plain")
    engine = ProvenanceEngine.load(ws)
    assert engine.errors == {}
    query = Image.fromarray(to_uint8(load_dataset("digits", split="test", n=1, seed=0).images[:1])[0, ..., 0])
    answers = {name: engine.analyzers[name].analyze(query) for name in ("sharded", "plain")}
    ranked = {name: [(p["index"], p["score"]) for p in a["positive"]] for name, a in answers.items()}
    assert ranked["sharded"] and ranked["sharded"] == ranked["plain"]


def test_a_collection_changed_since_indexing_is_refused(shards, tmp_path) -> None:
    index_collection("pixels", tmp_path / "sharded", {"name": shards}, similarity_config={"shard_size": 5})
    with tarfile.open(tmp_path / "part-1.tar", "w") as tar:  # one shard rewritten with fewer images
        tar.add(sorted((tmp_path / "images").iterdir())[6], arcname="x.png")
    ws = Workspace.create(tmp_path / "ws")
    with pytest.raises(DataError, match="rebuild the index"):
        add_similarity(ws, "sharded", tmp_path / "sharded")
    assert ws.entries == []
