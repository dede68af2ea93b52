"""``genprov data list / info / download`` end to end through typer's CliRunner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from genprov.cli.data import app

NO_ROOT = {"GENPROV_DATA": None}


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_help_shows_examples(runner: CliRunner) -> None:
    for command in ("list", "info", "download"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0
        assert "Example: genprov data" in result.stdout


def test_list_json_without_and_with_data_root(runner: CliRunner, shared_data: Path) -> None:
    result = runner.invoke(app, ["list", "--json"], env=NO_ROOT)
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["digits"]["files_present"] is True
    assert rows["mnist"]["files_present"] is None
    assert rows["cifar10"]["image_size"] == 32
    result = runner.invoke(app, ["list", "--json", "--data-root", str(shared_data)])
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["mnist"]["files_present"] is True
    assert rows["fashion-mnist"]["files_present"] is False


def test_list_table(runner: CliRunner) -> None:
    result = runner.invoke(app, ["list"], env=NO_ROOT)
    assert result.exit_code == 0
    assert "fashion-mnist" in result.stdout
    assert "built in" in result.stdout


def test_info_digits_json_and_grid(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["info", "digits", "--json", "--out", str(tmp_path)], env=NO_ROOT)
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["n_examples"] == {"train": 1437, "test": 360}
    assert info["channels"] == 1
    grid = Path(info["grid"])
    assert grid.parent == tmp_path
    with Image.open(grid) as image:
        assert image.mode == "L"
        assert image.size[0] > 8 * 8


def test_info_mnist_reports_splits_and_missing_files(runner: CliRunner, shared_data: Path) -> None:
    result = runner.invoke(app, ["info", "fashion-mnist", "--json", "--data-root", str(shared_data)])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["n_examples"] == {"train": None, "test": 10000}
    assert info["missing_files"] == [
        "fashion_mnist/train-images-idx3-ubyte.gz",
        "fashion_mnist/train-labels-idx1-ubyte.gz",
    ]
    result = runner.invoke(app, ["info", "mnist", "--json"], env=NO_ROOT)
    assert json.loads(result.stdout)["n_examples"] == {"train": None, "test": None}


def test_info_cifar_grid_with_data_root_from_env(runner: CliRunner, shared_data: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["info", "cifar2", "--out", str(tmp_path)], env={"GENPROV_DATA": str(shared_data)})
    assert result.exit_code == 0, result.output
    (grid,) = tmp_path.glob("*.png")
    with Image.open(grid) as image:
        assert image.mode == "RGB"


def test_info_on_a_folder(runner: CliRunner, tmp_path: Path) -> None:
    for i in range(3):
        Image.new("L", (6, 6), 40 * i).save(tmp_path / f"{i}.png")
    result = runner.invoke(app, ["info", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["n_examples"] == {"train": 3}
    assert info["image_size"] == 6


def test_info_errors_exit_2_with_a_message(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["info", "mnst"])
    assert result.exit_code == 2
    assert "Did you mean 'mnist'" in result.stderr
    result = runner.invoke(app, ["info", "mnist", "--out", str(tmp_path)], env=NO_ROOT)
    assert result.exit_code == 2
    assert "--data-root" in result.stderr


def test_download_from_a_file_url(runner: CliRunner, shared_data: Path, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(shared_data / "mnist" / name, mirror / name)
    root = tmp_path / "root"
    args = ["download", "mnist", "--data-root", str(root), "--split", "test", "--base-url", mirror.as_uri(), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [Path(p).name for p in report["downloaded"]] == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    again = json.loads(runner.invoke(app, args).stdout)
    assert again["downloaded"] == []
    assert again["already_present"] == ["mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz"]


def test_download_corrupt_file_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "t10k-images-idx3-ubyte.gz").write_bytes(b"corrupt")
    args = ["download", "fashion-mnist", "--data-root", str(tmp_path / "root"), "--split", "test"]
    result = runner.invoke(app, [*args, "--base-url", mirror.as_uri()])
    assert result.exit_code == 2
    assert "Checksum mismatch" in result.stderr
    assert not (tmp_path / "root" / "fashion_mnist" / "t10k-images-idx3-ubyte.gz").exists()
    result = runner.invoke(app, ["download", "cifar10", "--data-root", str(tmp_path)])
    assert result.exit_code == 2
    assert "cannot be downloaded" in result.stderr
