from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from genprov.exceptions import DataError
from genprov.utils import (
    atomic_open,
    atomic_save_npz,
    atomic_write_json,
    check_images,
    check_matrix,
    derive_seed,
    numpy_rng,
    progress,
    read_json,
    torch_generator,
)


def test_atomic_write_replaces_and_failure_keeps_old_file(tmp_path) -> None:
    target = tmp_path / "sub" / "out.json"
    atomic_write_json(target, {"a": 1})
    assert read_json(target) == {"a": 1}

    def crash_midway() -> None:
        with atomic_open(target, "w") as handle:
            handle.write('{"half": ')
            raise RuntimeError("crash midway")

    with pytest.raises(RuntimeError):
        crash_midway()
    assert read_json(target) == {"a": 1}
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]  # no temp file left behind


def test_atomic_json_refuses_nan(tmp_path) -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        atomic_write_json(tmp_path / "x.json", {"a": float("nan")})
    assert not (tmp_path / "x.json").exists()


def test_atomic_npz_loads_without_pickle(tmp_path) -> None:
    atomic_save_npz(tmp_path / "a.npz", {"x": np.arange(3)})
    with np.load(tmp_path / "a.npz", allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["x"], np.arange(3))


def test_seeds_are_stable_and_key_dependent() -> None:
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    assert len({derive_seed(0, 1, 2), derive_seed(0, 2, 1), derive_seed(1, 1, 2)}) == 3
    a = torch.randn(4, generator=torch_generator(3, "noise", 7))
    b = torch.randn(4, generator=torch_generator(3, "noise", 7))
    assert torch.equal(a, b)
    assert numpy_rng(1).integers(0, 100) == numpy_rng(1).integers(0, 100)


def test_check_images_messages() -> None:
    good = torch.zeros(2, 1, 8, 8)
    assert check_images(good, channels=1, size=8) is good
    with pytest.raises(DataError, match=r"shape \(n, C, H, W\); got shape \(1, 8, 8\).*unsqueeze"):
        check_images(torch.zeros(1, 8, 8))
    with pytest.raises(DataError, match="3 channel"):
        check_images(good, channels=3)
    with pytest.raises(DataError, match="must be 16x16 pixels; got 8x8"):
        check_images(good, size=16)
    with pytest.raises(DataError, match="NaN"):
        check_images(torch.full((1, 1, 2, 2), float("nan")))
    with pytest.raises(DataError, match=r"values in \[-1.0, 1.0\]"):
        check_images(torch.full((1, 1, 2, 2), 255.0))
    with pytest.raises(DataError, match="float tensor"):
        check_images(torch.zeros(1, 1, 2, 2, dtype=torch.uint8))
    with pytest.raises(DataError, match="2-D tensor"):
        check_matrix(torch.zeros(3), "features")


def test_progress_passes_items_through() -> None:
    assert list(progress(range(3), desc="x", show=False)) == [0, 1, 2]


def test_torchvision_is_not_importable() -> None:
    """torchvision beside CPU torch 2.13 fails to import and breaks diffusers: it must never be installed."""
    assert importlib.util.find_spec("torchvision") is None, (
        "torchvision is installed in this environment; genprov must not depend on it (nor on timm, "
        "open-clip-torch or zennit). Remove it: pip uninstall torchvision"
    )


def test_json_safe_nulls_undefined_numbers_and_unwraps_numpy() -> None:
    from genprov.utils.io import json_safe

    raw = {1: [float("nan"), np.float32(0.5), (np.int64(3), float("inf"))], "ok": np.float64(np.nan), "s": "x"}
    assert json_safe(raw) == {"1": [None, 0.5, [3, None]], "ok": None, "s": "x"}
    assert type(json_safe(np.float32(0.5))) is float


def test_signed_safetensors_bytes_do_not_depend_on_metadata_order() -> None:
    """safetensors writes metadata in hash-map order (it differs between processes): signing sorts the keys and
    puts the checksum last, so equal tensors and metadata give equal bytes, and the file still loads."""
    from safetensors.torch import load, save

    from genprov.utils.checksums import SAFETENSORS_SHA256_KEY, sign_safetensors, verify_safetensors

    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(4, dtype=torch.int64)}
    data = save(tensors, metadata={"format": "pt", "lora_adapter_metadata": "{}"})
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    reordered = dict(reversed(list(header["__metadata__"].items())))
    encoded = json.dumps({**header, "__metadata__": reordered}, separators=(",", ":")).encode()
    encoded += b" " * (-(8 + len(encoded)) % 8)
    other = len(encoded).to_bytes(8, "little") + encoded + data[8 + length :]
    assert other != data  # the same file with its metadata keys in the other order
    signed = sign_safetensors(data)
    assert sign_safetensors(other) == signed
    assert list(json.loads(signed[8 : 8 + int.from_bytes(signed[:8], "little")])["__metadata__"]) == [
        "format",
        "lora_adapter_metadata",
        SAFETENSORS_SHA256_KEY,
    ]
    verify_safetensors(signed, "x.safetensors")
    loaded = load(signed)
    assert all(torch.equal(loaded[name], tensors[name]) for name in tensors)
