"""Hostile use of genprov's writers and on-disk artefacts (issue 13): nothing lost, nothing unexplained.

Every case asserts the exact class of answer (a one-line error naming the file and the cause, exit code 2
on the command line, or a correct result) and that the bytes of every earlier artefact are unchanged.
The artefacts are tiny (8x8 models trained for a few steps) so the whole file runs in well under a minute.
Full-disk and read-only cases use a real tmpfs and a root-less subprocess where the machine allows them
and skip with the reason otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner, Result

from genprov.app.register import add_similarity
from genprov.app.workspace import Workspace
from genprov.attribution.data import TRAKAttributor, TRAKConfig
from genprov.attribution.model import FinalLayerInversionAttributor, FinalLayerInversionAttributorConfig
from genprov.cli.main import app
from genprov.data import load_dataset, png_roundtrip, save_images
from genprov.exceptions import CheckpointError, ConfigError, DataError
from genprov.models.checkpoints import load_checkpoint, save_checkpoint
from genprov.models.classifiers import ClassifierConfig
from genprov.models.diffusion import DDPMConfig
from genprov.models.gans import GANConfig
from genprov.models.sampling import sample, save_samples
from genprov.models.training import default_train_config, train_classifier, train_ddpm, train_gan
from genprov.privacy import GaussianNoiseDefense, GradientExplainer
from genprov.storage import FeatureStore
from genprov.utils.io import atomic_write_text

GAN_CFG = GANConfig(arch="dcgan", image_size=8, width=4, latent_dim=8)
CLF_CFG = ClassifierConfig(image_size=8, width=4, feature_dim=8)
DDPM_CFG = DDPMConfig.preset("tiny")
TRAK_FAST = ["--n-timesteps", "2", "--proj-dim", "32", "--n", "12", "--set", "shard_size=4"]
FLIPAD_FAST = ["--n-samples", "40", "--n-real", "40", "--set", "max_iter=10"]
FLIPAD_FAST += ["--set", "detector.n_epochs=1", "--set", "detector.widths=[4]"]


# ---------------------------------------------------------------------------------------------- helpers


def _hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (relative path -> hex)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _cli(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def _refused(result: Result, *needles: str) -> None:
    """A one-line error (exit code 2, no traceback) that contains every needle."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    text = " ".join(result.output.split())
    for needle in needles:
        assert " ".join(str(needle).split()) in text, (needle, result.output)


def _flip_byte(file: Path, offset_from_end: int = 5) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) - offset_from_end] ^= 0xFF
    file.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder of tiny artefacts of every kind: gan, classifier, ddpm, detector, store, index, samples,
    workspace and a keyed-family marker; no test may change any of their bytes."""
    root = tmp_path_factory.mktemp("artefacts")
    digits = load_dataset("digits", n=60)
    gan = train_gan(GAN_CFG, default_train_config(GAN_CFG, n_steps=3, batch_size=16), digits, root / "gan")
    train_classifier(CLF_CFG, default_train_config(CLF_CFG, n_steps=2, batch_size=8), digits, root / "clf")
    train_ddpm(DDPM_CFG, default_train_config(DDPM_CFG, n_steps=2, batch_size=8), digits, root / "ddpm")
    detector = FinalLayerInversionAttributor(
        load_checkpoint(root / "gan").model,  # reopened, so the detector records where its generator lives
        FinalLayerInversionAttributorConfig.from_dict({"max_iter": 10, "detector": {"n_epochs": 1, "widths": [4]}}),
    )
    detector.fit(png_roundtrip(sample(gan.model, 40, seed=1)), negatives=digits.images[:40])
    detector.save_pretrained(root / "detector")  # its config.json records the generator (root / "gan")
    store = _cli(
        "trak", "featurize", "--model", root / "ddpm", "--data", "digits", "--store", root / "store", *TRAK_FAST
    )
    assert store.exit_code == 0, store.output
    index = _cli(
        "similarity", "index", "--extractor", "pixels", "--data", "digits", "--n", "20", "--store", root / "index"
    )
    assert index.exit_code == 0, index.output
    save_samples(sample(gan.model, 4, seed=0), root / "samples")
    Workspace.create(root / "workspace")
    (root / "family").mkdir()
    (root / "family" / "manifest.json").write_text(json.dumps({"format": "genprov-keyed-family", "members": []}))
    save_images(load_dataset("digits", split="test", n=2).images, root / "queries")
    (root / "afile.txt").write_text("not a folder\n")
    return root


@pytest.fixture
def unchanged(art: Path) -> Iterator[Path]:
    """``art``, checked byte for byte after the test."""
    before = _hashes(art)
    yield art
    assert _hashes(art) == before, "an earlier artefact changed"


def _copy(art: Path, name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(art / name, target)
    return target


# --------------------------------------------------------------------------- cross-kind overwrites (CLI)

CROSS_KIND = [
    (
        ["flipad", "fit", "--generator", "{gan}", "--real", "digits", *FLIPAD_FAST, "--out", "{gan}"],
        "gan",
        "gan checkpoint",
    ),
    (
        ["flipad", "fit", "--generator", "{gan}", "--real", "digits", *FLIPAD_FAST, "--out", "{clf}"],
        "clf",
        "classifier checkpoint",
    ),
    (
        ["flipad", "fit", "--generator", "{gan}", "--real", "digits", *FLIPAD_FAST, "--out", "{workspace}"],
        "workspace",
        "workspace (workspace.json)",
    ),
    (["train", "classifier", "--data", "digits", "--steps", "1", "--out", "{detector}"], "detector", "flipad detector"),
    (["train", "gan", "--data", "digits", "--steps", "1", "--out", "{clf}"], "clf", "classifier checkpoint"),
    (["train", "ddpm", "--data", "digits", "--steps", "1", "--out", "{gan}"], "gan", "gan checkpoint"),
    (["train", "gan", "--data", "digits", "--steps", "1", "--out", "{family}"], "family", "keyed family"),
    (["train", "gan", "--data", "digits", "--steps", "1", "--out", "{store}"], "store", "feature store"),
    (["sample", "{gan}", "--n", "2", "--out", "{ddpm}"], "ddpm", "ddpm checkpoint"),
    (["sample", "{gan}", "--n", "2", "--out", "{samples}"], "samples", "samples.npz"),
    (
        ["trak", "featurize", "--model", "{ddpm}", "--data", "digits", "--store", "{gan}", *TRAK_FAST],
        "gan",
        "gan checkpoint",
    ),
    (
        ["trak", "featurize", "--model", "{ddpm}", "--data", "digits", "--store", "{index}", *TRAK_FAST],
        "index",
        "similarity index",
    ),
    (["trak", "score", "--store", "{store}", "--queries", "{queries}", "--out", "{store}"], "store", "feature store"),
    (
        ["similarity", "index", "--extractor", "pixels", "--data", "digits", "--store", "{store}"],
        "store",
        "feature store",
    ),
    (
        ["similarity", "index", "--extractor", "pixels", "--data", "digits", "--store", "{detector}"],
        "detector",
        "flipad detector",
    ),
    (["similarity", "query", "--store", "{index}", "{query}", "--out", "{gan}"], "gan", "gan checkpoint"),
    (["similarity", "query", "--store", "{index}", "{query}", "--out", "{index}"], "index", "similarity index"),
    (["explain", "--model", "{clf}", "{query}", "--out", "{clf}"], "clf", "classifier checkpoint"),
    (
        [
            "privacy",
            "defend",
            "--model",
            "{clf}",
            "--data",
            "digits",
            "--method",
            "gaussian-noise",
            "--sigma",
            "0.1",
            "--out",
            "{detector}",
        ],
        "detector",
        "flipad detector",
    ),
    (
        ["privacy", "audit", "--model", "{clf}", "--data", "digits", "--quick", "--out", "{samples}"],
        "samples",
        "samples.npz",
    ),
]


@pytest.mark.parametrize(("args", "target", "named"), CROSS_KIND, ids=[f"{a[0]}-{a[1]}->{t}" for a, t, _ in CROSS_KIND])
def test_a_writer_refuses_a_folder_holding_another_artefact(
    unchanged: Path, args: list[str], target: str, named: str
) -> None:
    names = {p.name: str(p) for p in unchanged.iterdir()}
    names["query"] = str(sorted((unchanged / "queries").iterdir())[0])
    result = _cli(*(a.format(**names) for a in args))
    _refused(result, f"{unchanged / target} already holds", named, "choose another")


@pytest.mark.parametrize(
    "args",
    [
        ["train", "gan", "--data", "digits", "--steps", "1", "--out", "{file}"],
        ["sample", "{gan}", "--n", "2", "--out", "{file}"],
        ["flipad", "fit", "--generator", "{gan}", "--real", "digits", *FLIPAD_FAST, "--out", "{file}"],
        ["trak", "featurize", "--model", "{ddpm}", "--data", "digits", "--store", "{file}", *TRAK_FAST],
        ["similarity", "query", "--store", "{index}", "{query}", "--out", "{file}"],
    ],
    ids=["train", "sample", "flipad-fit", "trak-featurize", "similarity-query"],
)
def test_an_output_path_that_is_a_file_is_refused(unchanged: Path, args: list[str]) -> None:
    names = {"file": str(unchanged / "afile.txt"), "gan": str(unchanged / "gan"), "ddpm": str(unchanged / "ddpm")}
    names |= {"index": str(unchanged / "index"), "query": str(sorted((unchanged / "queries").iterdir())[0])}
    _refused(_cli(*(a.format(**names) for a in args)), f"{unchanged / 'afile.txt'} is an existing file")


def test_similarity_tune_refuses_an_existing_mapper_file(unchanged: Path) -> None:
    result = _cli(
        "similarity",
        "tune",
        "--store",
        unchanged / "index",
        "--customizations",
        unchanged,
        "--out",
        unchanged / "afile.txt",
    )
    _refused(result, f"{unchanged / 'afile.txt'} is an existing file", "choose another --out")


def test_report_commands_refuse_their_own_earlier_output(unchanged: Path, tmp_path: Path) -> None:
    out = tmp_path / "why"
    query = sorted((unchanged / "queries").iterdir())[0]
    first = _cli("similarity", "query", "--store", unchanged / "index", query, "--out", out)
    assert first.exit_code == 0, first.output
    before = _hashes(out)
    _refused(
        _cli("similarity", "query", "--store", unchanged / "index", query, "--out", out),
        "already holds an output of 'genprov similarity query' (results.json)",
    )
    assert _hashes(out) == before


# ------------------------------------------------------------------------ cross-kind overwrites (library)


def test_library_saves_refuse_another_kind(unchanged: Path) -> None:
    gan = load_checkpoint(unchanged / "gan")
    clf = load_checkpoint(unchanged / "clf")
    with pytest.raises(ConfigError, match="already holds a gan checkpoint"):
        save_checkpoint(unchanged / "gan", "classifier", clf.modules, clf.model_config)
    with pytest.raises(ConfigError, match="already holds a classifier checkpoint"):
        FinalLayerInversionAttributor.from_pretrained(unchanged / "detector", gan.model).save_pretrained(
            unchanged / "clf"
        )
    with pytest.raises(ConfigError, match="already holds a gan checkpoint"):
        FeatureStore.create(unchanged / "gan", n_rows=4, arrays={"features": 2}, spec={})
    with pytest.raises(ConfigError, match="already holds a flipad detector"):
        GaussianNoiseDefense(GradientExplainer(clf.model)).save_pretrained(unchanged / "detector")
    with pytest.raises(ConfigError, match="already holds a workspace"):
        save_samples(torch.zeros(2, 1, 8, 8), unchanged / "workspace")
    with pytest.raises(ConfigError, match="already holds a feature store"):
        train_gan(GAN_CFG, default_train_config(GAN_CFG, n_steps=1), torch.zeros(4, 1, 8, 8), unchanged / "store")


def test_training_resumes_its_own_run_but_refuses_a_checkpoint_of_another(tmp_path: Path) -> None:
    data = load_dataset("digits", n=40)
    out = tmp_path / "run"
    args = [
        "train",
        "gan",
        "--data",
        "digits",
        "--width",
        "4",
        "--latent-dim",
        "8",
        "--resize",
        "8",
        "--batch-size",
        "8",
    ]
    first = _cli(*args, "--steps", "2", "--out", out)
    assert first.exit_code == 0, first.output
    resumed = _cli(*args, "--steps", "3", "--out", out, "--json")
    assert resumed.exit_code == 0 and json.loads(resumed.stdout)["resumed_from"] == 2, resumed.output
    # a gan checkpoint that is not a resumable run of this config: refused, never replaced
    other = tmp_path / "other"
    cfg = GAN_CFG.replace(width=8)
    train_gan(cfg, default_train_config(cfg, n_steps=1, batch_size=8), data, other)
    shutil.rmtree(other / "state")
    before = _hashes(other)
    _refused(
        _cli(*args, "--steps", "2", "--out", other), f"{other / 'config.json'} holds a run with a different", "width"
    )
    assert _hashes(other) == before


# ------------------------------------------------------------------------------------------- checksums


def test_a_flipped_byte_in_model_safetensors_is_refused(unchanged: Path, tmp_path: Path) -> None:
    gan = _copy(unchanged, "gan", tmp_path)
    _flip_byte(gan / "model.safetensors")
    with pytest.raises(CheckpointError, match="does not match its recorded SHA-256"):
        load_checkpoint(gan)
    out = tmp_path / "s"
    _refused(
        _cli("sample", gan, "--n", "2", "--out", out),
        f"{gan / 'model.safetensors'} does not match its recorded SHA-256",
    )
    assert not out.exists()


def test_a_flipped_byte_in_a_detector_state_is_refused(unchanged: Path, tmp_path: Path) -> None:
    detector = _copy(unchanged, "detector", tmp_path)
    _flip_byte(detector / "state.safetensors")
    query = sorted((unchanged / "queries").iterdir())[0]
    _refused(_cli("flipad", "score", "--detector", detector, query), f"{detector / 'state.safetensors'} does not match")


def test_a_flipped_byte_in_a_store_shard_is_refused(unchanged: Path, tmp_path: Path) -> None:
    store = _copy(unchanged, "store", tmp_path)
    _flip_byte(store / "features.npy", offset_from_end=3)  # in the last shard's rows
    with pytest.raises(DataError, match="do not match their recorded SHA-256"):
        FeatureStore.open(store).read()
    out = tmp_path / "why"
    _refused(
        _cli("trak", "score", "--store", store, "--queries", unchanged / "queries", "--out", out),
        f"{store / 'features.npy'} rows 8..11 (shard 2) do not match their recorded SHA-256",
    )
    assert not (out / "results.json").exists()


def test_artefacts_without_checksums_still_load(unchanged: Path, tmp_path: Path) -> None:
    gan = _copy(unchanged, "gan", tmp_path)
    save_file(load_file(gan / "model.safetensors"), gan / "model.safetensors", metadata={"kind": "gan"})  # old format
    assert load_checkpoint(gan).kind == "gan"
    store = _copy(unchanged, "store", tmp_path)
    manifest = json.loads((store / "manifest.json").read_text())
    del manifest["checksums"]
    (store / "manifest.json").write_text(json.dumps(manifest))
    assert FeatureStore.open(store).read().shape == (12, 32)


# --------------------------------------------------------------------------------------- pickle files


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt", ".bin"])
def test_a_pickle_checkpoint_is_explained(unchanged: Path, tmp_path: Path, suffix: str) -> None:
    file = tmp_path / f"model{suffix}"
    torch.save({"w": torch.zeros(2)}, file)
    with pytest.raises(CheckpointError, match="is a pickle file"):
        load_checkpoint(file)
    for args in (
        ["sample", file, "--n", "2", "--out", tmp_path / "s"],
        ["flipad", "fit", "--generator", file, "--real", "digits", "--out", tmp_path / "d"],
        ["trak", "featurize", "--model", file, "--data", "digits", "--store", tmp_path / "t"],
    ):
        _refused(
            _cli(*args),
            f"{file} was given as a checkpoint but is a pickle file",
            "never unpickles",
            "weights_only=True",
            "save_file",
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == [file.name]


# ------------------------------------------------------------------------------------------ NaN weights


def test_nan_weights_are_named_and_nothing_is_written(unchanged: Path, tmp_path: Path) -> None:
    gan = _copy(unchanged, "gan", tmp_path)
    ckpt = load_checkpoint(gan)
    with torch.no_grad():
        next(ckpt.model.parameters()).fill_(float("nan"))
    save_checkpoint(gan, "gan", ckpt.modules, ckpt.model_config, ckpt.training_config, ckpt.extra)
    out = tmp_path / "s"
    _refused(
        _cli("sample", gan, "--n", "2", "--out", out), f"{gan / 'model.safetensors'} holds NaN or infinite weights"
    )
    assert not out.exists()
    with pytest.raises(CheckpointError, match="NaN or infinite values"):
        sample(ckpt.model, 2)
    with pytest.raises(DataError, match="NaN or infinite"):
        save_samples(torch.full((2, 1, 8, 8), float("nan")), out)
    assert not out.exists()


# ------------------------------------------------------------------------------------- counts of zero


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["train", "gan", "--data", "digits", "--steps", "0", "--out", "{out}"], "--steps"),
        (["train", "classifier", "--data", "digits", "--batch-size", "0", "--out", "{out}"], "--batch-size"),
        (["sample", "{gan}", "--n", "0", "--out", "{out}"], "--n"),
        (["sample", "{gan}", "--batch-size", "0", "--out", "{out}"], "--batch-size"),
        (
            ["trak", "featurize", "--model", "{ddpm}", "--data", "digits", "--store", "{out}", "--proj-dim", "0"],
            "--proj-dim",
        ),
        (["similarity", "query", "--store", "{index}", "{query}", "--top-k", "0", "--out", "{out}"], "--top-k"),
    ],
    ids=["train-steps", "train-batch", "sample-n", "sample-batch", "trak-proj-dim", "similarity-top-k"],
)
def test_zero_counts_are_refused_before_writing(unchanged: Path, tmp_path: Path, args: list[str], option: str) -> None:
    names = {"out": str(tmp_path / "out"), "gan": str(unchanged / "gan"), "ddpm": str(unchanged / "ddpm")}
    names |= {"index": str(unchanged / "index"), "query": str(sorted((unchanged / "queries").iterdir())[0])}
    result = _cli(*(a.format(**names) for a in args))
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output
    assert "greater than or equal to 1" in result.output
    assert not (tmp_path / "out").exists()


def test_save_samples_refuses_an_empty_set(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no samples to save"):
        save_samples(torch.zeros(0, 1, 8, 8), tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_an_all_zero_store_names_the_real_cause(unchanged: Path) -> None:
    model = load_checkpoint(unchanged / "ddpm").model
    with pytest.raises(DataError, match="are all zero") as err:
        TRAKAttributor(model, config=TRAKConfig(proj_dim=8, n_timesteps=1)).fit_features(np.zeros((5, 8), np.float32))
    assert "set a positive damping" not in str(err.value) and "include" in str(err.value)


# ---------------------------------------------------------------------- extractor weights by content


def test_a_relative_checkpoint_index_is_queried_from_anywhere_and_added_to_a_workspace(
    unchanged: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(unchanged / "clf", tmp_path / "runs" / "clf")
    monkeypatch.chdir(tmp_path)
    built = _cli(
        "similarity",
        "index",
        "--extractor",
        "classifier",
        "--checkpoint",
        "runs/clf",
        "--data",
        "digits",
        "--n",
        "12",
        "--store",
        "runs/sim",
    )
    assert built.exit_code == 0, built.output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    query = sorted((unchanged / "queries").iterdir())[0]
    result = _cli("similarity", "query", "--store", tmp_path / "runs" / "sim", query, "--out", "why", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["method"] == "similarity[classifier]"
    ws = Workspace.create(tmp_path / "ws")
    entry = add_similarity(ws, "sim", tmp_path / "runs" / "sim")
    assert entry.kind == "similarity"


# ------------------------------------------------------------------------------- read-only and full disks


def _unprivileged() -> list[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a subprocess as another user (uid 65534)")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _read_only(*folders: Path) -> None:
    for folder in folders:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)


@pytest.mark.parametrize("command", ["trak score", "similarity query"])
def test_reading_a_read_only_store_needs_no_write_access(unchanged: Path, command: str) -> None:
    prefix = _unprivileged()
    root = Path(tempfile.mkdtemp(prefix="genprov-ro-"))
    try:
        root.chmod(0o755)
        shutil.copytree(unchanged / "ddpm", root / "ddpm")
        shutil.copytree(unchanged / "queries", root / "queries")
        query = sorted((root / "queries").iterdir())[0]
        if command == "trak score":
            args = ["trak", "featurize", "--model", root / "ddpm", "--data", "digits", "--store", root / "store"]
            made = _cli(*args, *TRAK_FAST)
            reader = ["trak", "score", "--store", root / "store", "--queries", root / "queries"]
        else:
            args = ["similarity", "index", "--extractor", "pixels", "--data", "digits", "--n", "20"]
            made = _cli(*args, "--store", root / "store")
            reader = ["similarity", "query", "--store", root / "store", query]
        assert made.exit_code == 0, made.output
        _read_only(root / "store", root / "ddpm", root / "queries")
        home = root / "home"
        home.mkdir()
        home.chmod(0o777)
        before = _hashes(root / "store")
        env = {**os.environ, "HOME": str(home), "MPLCONFIGDIR": str(home), "GENPROV_PROGRESS": "0"}
        cmd = [
            *prefix,
            sys.executable,
            "-m",
            "genprov.cli.main",
            *map(str, reader),
            "--out",
            str(home / "why"),
            "--json",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["queries"]
        assert _hashes(root / "store") == before
    finally:
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def tiny_tmpfs() -> Iterator[Path]:
    """A real 1 MiB tmpfs (root and mount permission needed; skipped otherwise)."""
    folder = Path(tempfile.mkdtemp(prefix="genprov-full-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True, check=False
    )
    if done.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not root'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)
        folder.rmdir()


def test_featurizing_into_a_full_file_system_is_a_clear_error_and_resumable(unchanged: Path, tiny_tmpfs: Path) -> None:
    earlier = tiny_tmpfs / "earlier.txt"
    earlier.write_text("an earlier output\n")
    store = tiny_tmpfs / "store"
    args = ["trak", "featurize", "--model", unchanged / "ddpm", "--data", "digits", "--store", store]
    big = _cli(*args, "--n", "12", "--n-timesteps", "1", "--proj-dim", "40000")  # 1.8 MiB > 1 MiB
    _refused(big, "needs 1.8 MiB", f"{store} but its file system has only", "free")
    assert earlier.read_text() == "an earlier output\n"
    small = _cli(*args, *TRAK_FAST, "--json")  # fits: the same command line with a smaller store works
    assert small.exit_code == 0, small.output
    again = _cli(*args, *TRAK_FAST, "--json")  # and resumes (nothing left to do)
    assert again.exit_code == 0 and json.loads(again.stdout)["shards"] == 3


def test_a_file_size_limit_during_allocation_is_a_clear_error(unchanged: Path, tmp_path: Path) -> None:
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000)); "
        "from genprov.cli.main import app; sys.argv = ['genprov'] + sys.argv[1:]; app()"
    )
    store = tmp_path / "store"
    cmd = [sys.executable, "-c", code, "trak", "featurize", "--model", str(unchanged / "ddpm"), "--data", "digits"]
    cmd += ["--store", str(store), "--n", "12", "--n-timesteps", "1", "--proj-dim", "8192"]  # 384 KiB file
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, check=False, env={**os.environ, "COLUMNS": "400"}
    )
    assert done.returncode == 2, done.stderr
    assert "file-size limit" in done.stderr and str(store / "features.npy") in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr
    assert not (store / "manifest.json").exists() and not (store / "features.npy").exists()


# ------------------------------------------------------------ writers that took a path of their own (round 2)


def test_keyed_attribute_out_never_overwrites_a_file_or_writes_into_an_artefact(
    unchanged: Path, tmp_path: Path
) -> None:
    query = sorted((unchanged / "queries").iterdir())[0]
    base = ["keyed", "attribute", "--family", unchanged / "family", query, "--out"]
    # OUT.json would have been the generator's own config.json
    _refused(_cli(*base, unchanged / "gan" / "config"), f"{unchanged / 'gan'} already holds a gan checkpoint")
    (tmp_path / "mine.json").write_text("{}\n")
    _refused(_cli(*base, tmp_path / "mine"), f"{tmp_path / 'mine.json'} is an existing file", "choose another --out")
    assert (tmp_path / "mine.json").read_text() == "{}\n" and not (tmp_path / "mine.npz").exists()


@pytest.mark.parametrize("target", ["gan", "clf", "store", "index", "samples"])
def test_a_workspace_is_never_created_in_another_artefact(unchanged: Path, target: str) -> None:
    detector = unchanged / "detector"
    result = _cli(
        "workspace", "add", "flipad", "--workspace", unchanged / target, "--name", "d", "--detector", detector
    )
    _refused(result, f"{unchanged / target} already holds", "choose another --workspace")  # no workspace.json left


def test_a_workspace_is_never_created_inside_another(unchanged: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(unchanged / "workspace", ws)
    before = _hashes(ws)
    inner = ws / "entries" / "x"
    result = _cli(
        "workspace", "add", "flipad", "--workspace", inner, "--name", "d", "--detector", unchanged / "detector"
    )
    _refused(result, f"{inner} lies inside the workspace {ws}")
    assert _hashes(ws) == before and not inner.exists()


def test_workspace_add_flipad_names_a_folder_that_is_no_detector(unchanged: Path, tmp_path: Path) -> None:
    result = _cli(
        "workspace", "add", "flipad", "--workspace", tmp_path / "ws", "--name", "d", "--detector", unchanged / "gan"
    )
    _refused(result, f"{unchanged / 'gan'} is not a detector", "gan checkpoint", "genprov flipad fit")
    assert not (tmp_path / "ws" / "entries").exists()


def test_a_faiss_query_never_writes_into_the_index(unchanged: Path, tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    query = sorted((unchanged / "queries").iterdir())[0]
    result = _cli(
        "similarity", "query", "--store", unchanged / "index", query, "--search", "faiss", "--out", tmp_path / "o"
    )
    assert result.exit_code == 0, result.output  # `unchanged`: no faiss-*.index and the same index.json


def test_a_checkpoint_folder_given_as_images_is_named(unchanged: Path, tmp_path: Path) -> None:
    args = ["flipad", "fit", "--generator", unchanged / "gan", "--real", "digits", "--negatives", unchanged / "gan"]
    _refused(
        _cli(*args, *FLIPAD_FAST, "--out", tmp_path / "d"),
        f"{unchanged / 'gan'} holds a gan checkpoint",
        "not a folder of images",
    )


def test_a_samples_folder_is_read_as_its_samples_not_its_grid(unchanged: Path, tmp_path: Path) -> None:
    with np.load(unchanged / "samples" / "samples.npz") as npz:
        drawn = torch.from_numpy(npz["samples"])
    for source in (unchanged / "samples", unchanged / "samples" / "samples.npz"):
        assert torch.equal(load_dataset(str(source)).images, drawn)  # [-1, 1] as drawn, never rescaled
        args = ["trak", "score", "--store", unchanged / "store", "--queries", source, "--out", tmp_path / source.name]
        result = _cli(*args, "--json")
        assert result.exit_code == 0, result.output
        assert len(json.loads(result.stdout)["queries"]) == len(drawn)


def test_files_written_atomically_follow_the_umask(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write_text(tmp_path / "a.txt", "readable by whoever the umask allows\n")
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize(
    ("benchmark", "needle"),
    [("store/features.npy", "holds a single .npy array, not an LDS benchmark"), ("afile.txt", "is no .npz archive")],
)
def test_an_lds_benchmark_of_another_format_is_one_line(
    unchanged: Path, tmp_path: Path, benchmark: str, needle: str
) -> None:
    result = _cli(
        "trak", "lds", "--store", unchanged / "store", "--benchmark", unchanged / benchmark, "--out", tmp_path / "o"
    )
    _refused(result, f"{unchanged / benchmark}", needle)


@pytest.mark.parametrize("eta", ["nan", "-1", "2"])
def test_a_bad_eta_is_named_not_blamed_on_the_weights(unchanged: Path, tmp_path: Path, eta: str) -> None:
    result = _cli("sample", unchanged / "ddpm", "--n", "1", "--ddim-steps", "2", "--eta", eta, "--out", tmp_path / "s")
    _refused(result, "eta (--eta) must be between 0", "and 1")
    assert not (tmp_path / "s" / "samples.npz").exists()


@pytest.mark.parametrize("sigma", ["-1", "nan"])
def test_a_bad_sigma_is_refused(unchanged: Path, tmp_path: Path, sigma: str) -> None:
    args = ["privacy", "defend", "--model", unchanged / "clf", "--data", "digits", "--n", "20"]
    result = _cli(*args, "--method", "gaussian-noise", "--sigma", sigma, "--out", tmp_path / "d")
    _refused(result, "sigma must be a finite number")
    assert not (tmp_path / "d").exists()


def test_a_grid_beyond_the_pixel_cap_is_refused_before_anything_is_written(unchanged: Path, tmp_path: Path) -> None:
    result = _cli("sample", unchanged / "gan", "--n", "2", "--scale", "100000", "--out", tmp_path / "s")
    _refused(result, f"{tmp_path / 's' / 'grid.png'} would be", "GENPROV_MAX_PIXELS", "--scale 100000")
    assert not (tmp_path / "s" / "samples.npz").exists()
