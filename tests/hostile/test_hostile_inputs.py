"""Hostile inputs to the CLI: images, arrays, options, output places and workspaces.

Every case asserts the exact class of answer (exit code 2 with one ``error:`` line naming the file and the
problem, and no traceback; or a correct result) and that every earlier artefact's bytes are unchanged.
Full-disk, file-size-limit and read-only cases run in a subprocess on a real tmpfs, under ``ulimit -f`` or as
an unprivileged user where this machine allows it, and skip with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image, ImageFile
from typer.testing import CliRunner

from genprov.app.workspace import Workspace
from genprov.attribution.model import ModelAttributor
from genprov.cli.common import handle_errors, os_error_message, out_of_memory_message
from genprov.cli.main import app
from genprov.data import load_image, load_images
from genprov.exceptions import ConfigError, DataError
from genprov.models.checkpoints import load_checkpoint, save_checkpoint
from genprov.models.classifiers import ClassifierConfig, CNNClassifier

GENPROV = Path(sys.executable).with_name("genprov")

# ------------------------------------------------------------------------------------------------ helpers


def snapshot(*roots: Path) -> dict[str, str]:
    """SHA-256 of every file under ``roots`` (files or folders)."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def assert_clean_error(output: str, code: int, *needles: str, expected_code: int = 2) -> str:
    """Exit code ``expected_code``, no traceback, exactly one ``error:`` line, holding every needle."""
    assert code == expected_code, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    for needle in needles:
        assert needle in lines[0], output
    return lines[0]


def invoke(*args: str) -> tuple[str, int]:
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.output, result.exit_code


def png_header_bomb(path: Path, width: int, height: int) -> Path:
    """A valid, tiny PNG whose header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def jpeg_header_bomb(path: Path, side: int) -> Path:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    path.write_bytes(bytes(data))
    return path


def gif_header_bomb(path: Path, side: int) -> Path:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 100).save(buffer, format="GIF")
    data = bytearray(buffer.getvalue())
    data[6:10] = struct.pack("<HH", side, side)
    path.write_bytes(bytes(data))
    return path


def gray_png(path: Path, side: int, value: int = 128) -> Path:
    Image.new("L", (side, side), value).save(path)
    return path


def truncated_png(path: Path, side: int = 8) -> Path:
    """An 8x8 PNG (the models' size) cut in the middle of its pixel data."""
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (side, side), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def run_cli(
    args: list[str], tmp: Path, *, prefix: tuple[str, ...] = (), **popen: object
) -> subprocess.CompletedProcess[str]:
    """``genprov ARGS`` in a fresh process (for resource limits, mounts and other users), after ``prefix``."""
    env = {
        **os.environ,
        "GENPROV_PROGRESS": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "MPLCONFIGDIR": str(tmp / "mpl"),
        "HOME": str(tmp),
    }
    return subprocess.run(  # type: ignore[call-overload]
        [*prefix, str(GENPROV), *args], capture_output=True, text=True, env=env, timeout=300, check=False, **popen
    )


def as_nobody() -> tuple[str, ...]:
    """A command prefix that runs the child as uid/gid 65534 (root ignores permission bits)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to uid 65534 (as a normal user, permission bits already apply)")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to run a command as uid 65534")
    return ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


@contextlib.contextmanager
def tmpfs(folder: Path, *, size: str = "1m", read_only: bool = False) -> Iterator[Path]:
    """A real tmpfs at ``folder``; the test skips (with the reason) where mounting is not permitted."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    except FileNotFoundError:
        pytest.skip("no 'mount' command here to create a tmpfs")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode(errors='replace').strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.fixture(scope="module")
def public_tmp() -> Iterator[Path]:
    """A temporary folder every user can enter (pytest's own is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="genprov-hostile-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- artefacts


@pytest.fixture(scope="module")
def artefacts(tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A flipad detector (its config.json records its generator), a keyed family, a similarity index and a
    classifier, all 8x8."""
    runs = tiny_workspace.parent / "runs"
    root = tmp_path_factory.mktemp("hostile-artefacts")
    detector = root / "detector"
    shutil.copytree(runs / "gan", root / "gan")
    generator = load_checkpoint(root / "gan").model  # reopened: the detector saved below records its checkpoint
    ModelAttributor.from_pretrained(runs / "detector", generator).save_pretrained(detector)  # as 'flipad fit' does
    cfg = ClassifierConfig(width=4, feature_dim=8)
    save_checkpoint(root / "classifier", "classifier", {"classifier": CNNClassifier(cfg)}, cfg)
    return {
        "detector": detector,
        "family": runs / "family",
        "sim": runs / "sim",
        "classifier": root / "classifier",
        "gan": runs / "gan",
        "workspace": tiny_workspace,
    }


def image_commands(a: dict[str, Path], image: Path, out: Path) -> dict[str, list[str]]:
    """Every CLI command that reads query images, pointed at ``image``."""
    return {
        "flipad score": ["flipad", "score", "--detector", str(a["detector"]), str(image)],
        "keyed attribute": ["keyed", "attribute", "--family", str(a["family"]), str(image)],
        "similarity query": ["similarity", "query", "--store", str(a["sim"]), "--out", str(out), str(image)],
        "explain": ["explain", "--model", str(a["classifier"]), "--out", str(out), "--resize", str(image)],
    }


COMMANDS = ["flipad score", "keyed attribute", "similarity query", "explain"]


def check_image_refused(a: dict[str, Path], command: str, image: Path, tmp_path: Path, *needles: str) -> None:
    before = snapshot(*(a[k] for k in ("detector", "family", "sim", "classifier")))
    output, code = invoke(*image_commands(a, image, tmp_path / "out")[command])
    assert_clean_error(output, code, str(image), *needles)
    assert snapshot(*(a[k] for k in ("detector", "family", "sim", "classifier"))) == before
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --------------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize("command", COMMANDS)
def test_png_bomb_header_refused_by_every_image_command(
    artefacts: dict[str, Path], command: str, tmp_path: Path
) -> None:
    bomb = png_header_bomb(tmp_path / "bomb.png", 50000, 50000)
    check_image_refused(artefacts, command, bomb, tmp_path, "2,500,000,000 pixels", "GENPROV_MAX_PIXELS")


@pytest.mark.parametrize("command", COMMANDS)
def test_bomb_below_pillows_cap_refused_by_ours(artefacts: dict[str, Path], command: str, tmp_path: Path) -> None:
    bomb = png_header_bomb(tmp_path / "big.png", 5000, 5000)
    check_image_refused(artefacts, command, bomb, tmp_path, "5000x5000 pixels", "16,777,216 allowed")


def test_jpeg_bomb_header_refused(artefacts: dict[str, Path], tmp_path: Path) -> None:
    bomb = jpeg_header_bomb(tmp_path / "bomb.jpg", 60000)
    check_image_refused(artefacts, "flipad score", bomb, tmp_path, "3,600,000,000 pixels")


def test_gif_bomb_header_refused(artefacts: dict[str, Path], tmp_path: Path) -> None:
    bomb = gif_header_bomb(tmp_path / "bomb.gif", 60000)
    check_image_refused(artefacts, "keyed attribute", bomb, tmp_path, "3,600,000,000 pixels")


def test_pixel_cap_is_configurable(artefacts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = gray_png(tmp_path / "ok.png", 8)
    monkeypatch.setenv("GENPROV_MAX_PIXELS", "63")
    check_image_refused(artefacts, "flipad score", image, tmp_path, "8x8 pixels", "63 allowed")
    assert load_images([image], max_pixels=64).shape == (1, 1, 8, 8)  # the argument overrides the variable
    monkeypatch.setenv("GENPROV_MAX_PIXELS", "lots")
    with pytest.raises(ConfigError, match="GENPROV_MAX_PIXELS must be a positive whole number"):
        load_images([image])


@pytest.mark.parametrize("command", ["flipad score", "similarity query", "explain"])
def test_tiny_image_refused_not_upscaled(artefacts: dict[str, Path], command: str, tmp_path: Path) -> None:
    tiny = gray_png(tmp_path / "tiny.png", 1)
    check_image_refused(artefacts, command, tiny, tmp_path, "1x1 pixels", "at least 4x4", "resized to 8x8")


def test_keyed_attribute_wants_the_familys_exact_size(artefacts: dict[str, Path], tmp_path: Path) -> None:
    line_tiny = None
    for side in (1, 16):
        image = gray_png(tmp_path / f"side{side}.png", side)
        before = snapshot(artefacts["family"])
        output, code = invoke(*image_commands(artefacts, image, tmp_path / "out")["keyed attribute"])
        line_tiny = assert_clean_error(output, code, str(image), f"{side}x{side} pixels", "make 8x8 images")
        assert snapshot(artefacts["family"]) == before
    assert line_tiny is not None and "--resize" not in line_tiny  # the command has no --resize


def test_resized_images_are_reported(
    artefacts: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    image = gray_png(tmp_path / "large.png", 16)
    with caplog.at_level(logging.WARNING, logger="genprov.data.images"):
        output, code = invoke(*image_commands(artefacts, image, tmp_path / "out")["flipad score"], "--json")
    assert code == 0, output
    assert len(json.loads(output[output.index("[") :])) == 1
    assert any("resized 1 of 1 image(s) to 8x8" in r.getMessage() and "16x16" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("command", COMMANDS)
def test_truncated_png_refused(artefacts: dict[str, Path], command: str, tmp_path: Path) -> None:
    broken = truncated_png(tmp_path / "cut.png")
    check_image_refused(artefacts, command, broken, tmp_path, "truncated or corrupt")


def test_truncated_png_refused_even_when_pillow_is_told_to_pad(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    broken = truncated_png(tmp_path / "cut.png")
    with pytest.raises(DataError, match=r"cut\.png.*truncated or corrupt"):
        load_image(broken)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is left as it was


@pytest.mark.parametrize(
    ("content", "needle"), [(b"hello, not pixels", "not an image Pillow can read"), (b"", "is empty (0 bytes)")]
)
def test_not_an_image_named_png(artefacts: dict[str, Path], tmp_path: Path, content: bytes, needle: str) -> None:
    fake = tmp_path / "fake.png"
    fake.write_bytes(content)
    check_image_refused(artefacts, "flipad score", fake, tmp_path, needle)


def test_folder_named_like_an_image(tmp_path: Path) -> None:
    folder = tmp_path / "photo.png"
    folder.mkdir()
    with pytest.raises(DataError, match=r"photo\.png is a folder, not an image file"):
        load_images([folder])


def _encoded(image: Image.Image, fmt: str) -> Path:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    path = Path(tempfile.mkdtemp()) / f"image.{fmt.lower()}"
    path.write_bytes(buffer.getvalue())
    return path


def test_cmyk_jpeg_decodes_to_rgb() -> None:
    path = _encoded(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG")  # pure red in CMYK
    x = load_image(path)
    assert x.shape == (3, 8, 8)
    red, green, blue = (float(c.mean()) for c in x)
    assert red > 0.9 and green < -0.9 and blue < -0.9


def test_16_bit_png_keeps_its_depth() -> None:
    values = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    path = _encoded(Image.fromarray(values), "PNG")
    x = load_image(path)
    expected = values.astype(np.float32) / 65535.0 * 2 - 1
    assert x.shape == (1, 8, 8)
    np.testing.assert_allclose(x[0].numpy(), expected, atol=1e-6)


def test_palette_png_decodes_to_its_colours() -> None:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    x = load_image(_encoded(image, "PNG"))
    assert x.shape == (3, 8, 8)
    assert x[2].min() == 1.0 and x[0].max() == -1.0 and x[1].max() == -1.0


def test_float_image_outside_unit_range_refused() -> None:
    path = _encoded(Image.fromarray(np.full((8, 8), 300.0, dtype=np.float32), mode="F"), "TIFF")
    with pytest.raises(DataError, match=r"image\.tiff is a floating-point \(mode F\) image"):
        load_image(path)


def test_unreadable_image_as_another_user(public_tmp: Path) -> None:
    prefix = as_nobody()
    folder = public_tmp / "unreadable"
    folder.mkdir()
    folder.chmod(0o755)
    secret = gray_png(folder / "secret.png", 8)
    secret.chmod(0o600)
    before = snapshot(folder)
    done = run_cli(["data", "info", str(folder)], public_tmp, prefix=prefix)
    assert_clean_error(done.stderr, done.returncode, str(secret), "Permission denied")
    assert snapshot(folder) == before


# --------------------------------------------------------------------------------------------------- arrays


def _array_file(tmp_path: Path, name: str, **arrays: np.ndarray) -> Path:
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, next(iter(arrays.values())), allow_pickle=True)
    else:
        np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


@pytest.mark.parametrize(
    ("name", "arrays", "needle"),
    [
        ("nan.npz", {"x": np.full((2, 8, 8), np.nan, dtype=np.float32)}, "128 NaN or infinite values"),
        ("shape.npz", {"x": np.zeros((2, 5, 8, 8, 2), dtype=np.uint8)}, "has shape (2, 5, 8, 8, 2)"),
        ("empty.npz", {"x": np.zeros((0, 8, 8), dtype=np.uint8)}, "holds no image pixels"),
        ("objects.npz", {"x": np.array([{"a": 1}, None], dtype=object)}, "holds Python objects"),
        ("objects.npy", {"x": np.array([{"a": 1}, None], dtype=object)}, "holds Python objects"),
        (
            "labels.npz",
            {"x": np.zeros((2, 8, 8), dtype=np.uint8), "y": np.array([{"a": 1}, 2], dtype=object)},
            "['y'] holds Python objects",
        ),
    ],
)
def test_bad_array_files_refused(tmp_path: Path, name: str, arrays: dict[str, np.ndarray], needle: str) -> None:
    path = _array_file(tmp_path, name, **arrays)
    before = snapshot(path)
    output, code = invoke("data", "info", str(path))
    assert_clean_error(output, code, str(path), needle)
    assert snapshot(path) == before


def test_cut_npz_refused(tmp_path: Path) -> None:
    whole = _array_file(tmp_path, "whole.npz", x=np.zeros((4, 8, 8), dtype=np.uint8))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(whole.read_bytes()[:200])
    output, code = invoke("data", "info", str(cut))
    assert_clean_error(output, code, str(cut), "not a complete NumPy .npz/.npy file")


# -------------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("value", "needles"),
    [
        ("alpha=[1,", ("--set alpha", "not valid JSON")),
        ('alpha={"a":', ("--set alpha", "not valid JSON")),
        ("alpha=abc", ("alpha must be a number", "'abc' (str)")),
        ('alpha={"a": 1}', ("alpha must be a number", "(dict)")),
        ("detector.n_epochs=1.5", ("n_epochs must be an integer", "1.5")),
        ("detector.n_epochs=2", ("detector was already set",)),
    ],
)
def test_malformed_set_values(artefacts: dict[str, Path], tmp_path: Path, value: str, needles: tuple[str, ...]) -> None:
    extra = ["--set", "detector=3"] if value == "detector.n_epochs=2" else []
    out = tmp_path / "det"
    before = snapshot(artefacts["gan"])
    args = ["flipad", "fit", "--generator", str(artefacts["gan"]), "--real", "digits", "--out", str(out)]
    output, code = invoke(*args, *extra, "--set", value)
    assert_clean_error(output, code, *needles)
    assert snapshot(artefacts["gan"]) == before
    assert not out.exists()


EARLIER = b"earlier artefact bytes"


def test_out_in_a_read_only_folder(public_tmp: Path) -> None:
    prefix = as_nobody()
    folder = public_tmp / "readonly"
    folder.mkdir()
    folder.chmod(0o755)
    (folder / "earlier.png").write_bytes(EARLIER)
    done = run_cli(["data", "info", "digits", "--out", str(folder / "grid")], public_tmp, prefix=prefix)
    assert_clean_error(done.stderr, done.returncode, str(folder / "grid"), "Permission denied", "--out")
    assert (folder / "earlier.png").read_bytes() == EARLIER
    assert not (folder / "grid").exists()


def test_out_on_a_read_only_file_system(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", read_only=True) as mount:
        done = run_cli(["data", "info", "digits", "--out", str(mount / "grid")], tmp_path)
        assert_clean_error(done.stderr, done.returncode, str(mount / "grid"), "Read-only file system", "--out")


def test_file_size_limit_is_an_error_not_a_kill(tmp_path: Path) -> None:
    out = tmp_path / "grid"
    out.mkdir()
    earlier = out / "digits-train-examples.png"
    earlier.write_bytes(EARLIER)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    done = run_cli(["data", "info", "digits", "--out", str(out)], tmp_path, preexec_fn=limit)
    assert done.returncode != -25, "killed by SIGXFSZ"
    assert_clean_error(done.stderr, done.returncode, str(out), "File too large", "raise the limit")
    assert earlier.read_bytes() == EARLIER
    assert sorted(p.name for p in out.iterdir()) == [earlier.name]  # no temporary file left behind


def test_full_disk_is_one_line(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small") as mount:
        out = mount / "grid"
        out.mkdir()
        earlier = out / "digits-train-examples.png"
        earlier.write_bytes(EARLIER)
        with (mount / "filler").open("wb", buffering=0) as filler, contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 4096)
        done = run_cli(["data", "info", "digits", "--out", str(out)], tmp_path)
        assert_clean_error(done.stderr, done.returncode, str(out), "Disk full", "free space or choose another --out")
        assert earlier.read_bytes() == EARLIER
        assert sorted(p.name for p in out.iterdir()) == [earlier.name]


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "Disk full at /x/y.png: free space or choose another --out."),
        (errno.EDQUOT, "Disk quota exceeded at /x/y.png"),
        (errno.EFBIG, "File too large"),
        (errno.EROFS, "Read-only file system at /x/y.png: choose a writable --out."),
        (errno.EACCES, "Permission denied at /x/y.png"),
        (errno.EPERM, "Operation not permitted at /x/y.png"),
        (errno.ENOTDIR, "A part of the path is a file, not a folder at /x/y.png"),
        (errno.EISDIR, "It is a folder, not a file at /x/y.png"),
        (errno.EEXIST, "It already exists at /x/y.png"),
    ],
)
def test_os_errors_are_named(code: int, words: str) -> None:
    assert words in os_error_message(OSError(code, os.strerror(code), "/x/y.png"), {"--out": Path("/x")})


def test_os_error_without_a_path_names_the_output_option() -> None:
    message = os_error_message(OSError(errno.ENOSPC, "No space left on device"), {"--store": Path("runs/s")})
    assert message == "Disk full at runs/s: free space or choose another --store."
    temp = os_error_message(OSError(errno.EACCES, "Permission denied", "/x/.model.json.ab12.tmp"), {})
    assert temp.startswith("Permission denied at /x:")


# ----------------------------------------------------------------------------------------------- workspaces


def test_workspace_inside_the_item_added(artefacts: dict[str, Path], tmp_path: Path) -> None:
    detector = tmp_path / "detector"
    shutil.copytree(artefacts["detector"], detector)
    before = snapshot(detector)
    ws = detector / "ws"
    output, code = invoke(
        "workspace", "add", "flipad", "--workspace", str(ws), "--name", "g", "--detector", str(detector)
    )
    assert_clean_error(output, code, str(ws), str(detector), "copied into itself")
    assert snapshot(detector) == before and not ws.exists()


def test_workspace_inside_a_recorded_part(artefacts: dict[str, Path], tmp_path: Path) -> None:
    generator = tmp_path / "gan"
    shutil.copytree(artefacts["gan"], generator)
    ws = Workspace.create(generator / "ws")
    with pytest.raises(ConfigError, match="copied into itself"):
        ws.add("g", "flipad", {"detector": artefacts["detector"], "generator": generator}, {})
    assert len(Workspace.open(generator / "ws")) == 0


@pytest.fixture
def workspace_copy(artefacts: dict[str, Path], tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    shutil.copytree(artefacts["workspace"], ws)
    return ws


def test_remove_unknown_entry(workspace_copy: Path) -> None:
    before = snapshot(workspace_copy)
    output, code = invoke("workspace", "remove", "nope", "--workspace", str(workspace_copy))
    assert_clean_error(output, code, "no entry named 'nope'", "gan, family, dtrak, sim", "workspace list")
    assert snapshot(workspace_copy) == before


def test_check_exit_codes_match_the_documentation(workspace_copy: Path, tmp_path: Path) -> None:
    output, code = invoke("workspace", "check", "--workspace", str(workspace_copy))
    assert code == 0 and "every file as added" in output
    (workspace_copy / "entries" / "dtrak" / "train.npz").write_bytes(b"changed")
    (workspace_copy / "entries" / "gan" / "detector" / "config.json").unlink()
    output, code = invoke("workspace", "check", "--workspace", str(workspace_copy))
    assert code == 1 and "Traceback" not in output
    assert "dtrak: file train.npz changed" in output and "gan: file detector/config.json is missing" in output
    output, code = invoke("workspace", "check", "--workspace", str(tmp_path / "nothing"))
    assert_clean_error(output, code, "not a genprov workspace")


def test_examples_refuse_a_truncated_png(workspace_copy: Path, tmp_path: Path) -> None:
    good = gray_png(tmp_path / "fine.png", 8)
    broken = truncated_png(tmp_path / "cut.png")
    before = snapshot(workspace_copy)
    output, code = invoke("workspace", "examples", "--workspace", str(workspace_copy), str(good), str(broken))
    assert_clean_error(output, code, str(broken), "truncated or corrupt")
    assert snapshot(workspace_copy) == before  # not even the sound one was copied


def test_examples_refuse_a_jpeg_named_png(workspace_copy: Path, tmp_path: Path) -> None:
    fake = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(fake, format="JPEG")
    before = snapshot(workspace_copy)
    output, code = invoke("workspace", "examples", "--workspace", str(workspace_copy), str(fake))
    assert_clean_error(output, code, str(fake), "is not a PNG image")
    assert snapshot(workspace_copy) == before


def test_examples_refuse_an_image_too_small_for_the_entries(workspace_copy: Path, tmp_path: Path) -> None:
    tiny = gray_png(tmp_path / "dot.png", 1)
    before = snapshot(workspace_copy)
    output, code = invoke("workspace", "examples", "--workspace", str(workspace_copy), str(tiny))
    assert_clean_error(output, code, str(tiny), "1x1 pixels", "at least 4x4")
    assert snapshot(workspace_copy) == before


def test_examples_copy_sound_pngs_byte_for_byte(workspace_copy: Path, tmp_path: Path) -> None:
    good = gray_png(tmp_path / "fine.png", 8, value=40)
    output, code = invoke("workspace", "examples", "--workspace", str(workspace_copy), str(good))
    assert code == 0, output
    assert (workspace_copy / "examples" / "fine.png").read_bytes() == good.read_bytes()


# ------------------------------------------------------------------------------------ round 2 of the battery


def test_a_colour_image_read_as_grey_is_reported(
    artefacts: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    image = tmp_path / "colour.png"
    Image.new("RGBA", (8, 8), (200, 30, 30, 128)).save(image)
    with caplog.at_level(logging.WARNING, logger="genprov.data.images"):
        output, code = invoke(*image_commands(artefacts, image, tmp_path / "out")["flipad score"], "--json")
    assert code == 0, output
    messages = [r.getMessage() for r in caplog.records]
    assert any("converted 1 of 1 colour image(s) to grey (transparency dropped)" in m and "RGBA" in m for m in messages)


@pytest.mark.parametrize("lr", ["inf", "-inf"])
def test_non_finite_option_values_are_one_line(tmp_path: Path, lr: str) -> None:
    output, code = invoke("train", "classifier", "--steps", "1", "--lr", lr, "--out", str(tmp_path / "c"))
    assert_clean_error(output, code, "lr must be a finite number")
    assert not (tmp_path / "c").exists()


def test_a_batch_larger_than_the_data_is_refused(tmp_path: Path) -> None:
    output, code = invoke("train", "classifier", "--steps", "1", "--batch-size", "5000", "--out", str(tmp_path / "c"))
    assert_clean_error(output, code, "--batch-size 5000 is larger than the 1437 training images", "at most 1437")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to "
            "allocate 57480000000000 bytes. Error code 12 (Cannot allocate memory)"
        ),
    ],
    ids=["MemoryError", "torch-cpu-allocator"],
)
def test_running_out_of_memory_is_one_line(error: BaseException) -> None:
    @handle_errors
    def command() -> None:
        raise error

    with pytest.raises(typer.Exit) as exit_info:
        command()
    assert exit_info.value.exit_code == 2


def test_out_of_memory_message_names_the_size_and_other_errors_keep_their_trace() -> None:
    message = out_of_memory_message(
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 57480000000000 bytes.")
    )
    assert message.startswith("Out of memory (it needed 53,532.4 GiB at once)") and "--batch-size" in message
    with pytest.raises(RuntimeError, match="a bug"):
        out_of_memory_message(RuntimeError("a bug"))


def test_a_duplicate_entry_names_the_cli_fix(workspace_copy: Path, artefacts: dict[str, Path]) -> None:
    before = snapshot(workspace_copy)
    output, code = invoke(
        "workspace",
        "add",
        "flipad",
        "--workspace",
        str(workspace_copy),
        "--name",
        "gan",
        "--detector",
        str(artefacts["detector"]),
    )
    line = assert_clean_error(
        output, code, "already has an entry named 'gan'", "--name", "genprov workspace remove gan"
    )
    assert "pass replace" not in line
    assert snapshot(workspace_copy) == before


@pytest.mark.parametrize("manifest", ["{", "[1]"], ids=["not-json", "a-list"])
def test_a_corrupt_manifest_is_one_line(workspace_copy: Path, manifest: str) -> None:
    (workspace_copy / "workspace.json").write_text(manifest)
    for args in (["check"], ["remove", "gan"], ["list"]):
        output, code = invoke("workspace", *args, "--workspace", str(workspace_copy))
        assert_clean_error(output, code, str(workspace_copy / "workspace.json"))


def test_a_crafted_entry_name_never_leads_outside_the_workspace(workspace_copy: Path, tmp_path: Path) -> None:
    victim = workspace_copy.parent / "victim"
    victim.mkdir()
    (victim / "data.txt").write_text("precious\n")
    data = json.loads((workspace_copy / "workspace.json").read_text())
    data["entries"][0]["name"] = "../../victim"
    (workspace_copy / "workspace.json").write_text(json.dumps(data))
    output, code = invoke("workspace", "remove", "../../victim", "--workspace", str(workspace_copy))
    assert_clean_error(output, code, "malformed entry")
    assert (victim / "data.txt").read_text() == "precious\n"


@pytest.mark.parametrize("marker", ["config.json", "state.safetensors"])
def test_an_unreadable_artefact_is_a_permission_problem_not_corruption(
    artefacts: dict[str, Path], public_tmp: Path, marker: str
) -> None:
    prefix = as_nobody()
    root = public_tmp / f"unreadable-{marker}"
    folder, gan = root / "detector", root / "gan"
    shutil.copytree(artefacts["detector"], folder)
    shutil.copytree(artefacts["gan"], gan)  # the detector records its generator relative to itself
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    (folder / marker).chmod(0o600)
    before = snapshot(folder)
    query = gray_png(public_tmp / f"query-{marker}.png", 8)
    query.chmod(0o644)
    done = run_cli(["flipad", "score", "--detector", str(folder), str(query)], public_tmp, prefix=prefix)
    line = assert_clean_error(done.stderr, done.returncode, f"Permission denied at {folder / marker}", "read access")
    assert "corrupt" not in line and "--out" not in line
    assert snapshot(folder) == before
