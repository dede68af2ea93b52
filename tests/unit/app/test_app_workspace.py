"""Workspaces: adding copies and verifies, opening refuses missing or changed files, names are checked."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from genprov.app.register import add_flipad, add_trak
from genprov.app.workspace import Workspace, check_name
from genprov.exceptions import CheckpointError, ConfigError, DataError


def test_names_are_checked() -> None:
    assert check_name("my-gan_1.0") == "my-gan_1.0"
    for bad in ("", "../x", "a/b", ".hidden", "x" * 65, "a..b"):
        with pytest.raises(ConfigError, match="Invalid entry name"):
            check_name(bad)


def test_open_refuses_missing_and_changed_files(tiny_workspace: Path, tmp_path: Path) -> None:
    ws_dir = tmp_path / "ws"
    shutil.copytree(tiny_workspace, ws_dir)
    assert [e.name for e in Workspace.open(ws_dir).entries] == ["gan", "family", "dtrak", "sim"]
    (ws_dir / "entries" / "dtrak" / "train.npz").write_bytes(b"changed")
    with pytest.raises(CheckpointError, match=r"dtrak: file train\.npz changed"):
        Workspace.open(ws_dir)
    (ws_dir / "entries" / "gan" / "detector" / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"gan: file detector/config\.json is missing"):
        Workspace.open(ws_dir, verify=False)
    with pytest.raises(CheckpointError, match="not a genprov workspace"):
        Workspace.open(tmp_path / "nothing")


def test_failed_add_leaves_the_workspace_as_it_was(tiny_workspace: Path, tmp_path: Path) -> None:
    ws_dir = tmp_path / "ws"
    shutil.copytree(tiny_workspace, ws_dir)
    ws = Workspace.open(ws_dir)
    runs = tiny_workspace.parent / "runs"
    with pytest.raises(ConfigError, match="already has an entry named 'gan'"):
        add_flipad(ws, "gan", runs / "detector", generator=runs / "gan")
    # a store with the wrong model: the add is refused and undone
    with pytest.raises(CheckpointError, match="Could not add 'mismatch'"):
        add_trak(ws, "mismatch", runs / "store", model=runs / "gan")
    with pytest.raises(DataError, match="does not say which generator"):
        add_flipad(ws, "nogen", runs / "detector")
    reopened = Workspace.open(ws_dir)
    assert [e.name for e in reopened.entries] == ["gan", "family", "dtrak", "sim"]
    assert sorted(p.name for p in (ws_dir / "entries").iterdir()) == ["dtrak", "family", "gan", "sim"]
    reopened.remove("family")
    assert [e.name for e in Workspace.open(ws_dir).entries] == ["gan", "dtrak", "sim"]
