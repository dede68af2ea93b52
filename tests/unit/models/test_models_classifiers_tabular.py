"""CNN classifier and tabular GAN modules."""

from __future__ import annotations

import pytest
import torch

from genprov.exceptions import ConfigError
from genprov.models.classifiers import ClassifierConfig, CNNClassifier
from genprov.models.tabular import TabularDiscriminator, TabularGANConfig, TabularGenerator, build_tabular_gan
from genprov.utils.seeding import torch_generator


@pytest.mark.parametrize(
    ("size", "channels", "n_conv", "n_pool"), [(8, 1, 2, 1), (16, 3, 3, 2), (28, 1, 2, 0), (32, 3, 4, 3)]
)
def test_classifier_shapes(size: int, channels: int, n_conv: int, n_pool: int) -> None:
    config = ClassifierConfig(
        image_size=size, channels=channels, n_classes=4, width=4, n_conv=n_conv, n_pool=n_pool, feature_dim=7
    )
    model = CNNClassifier(config)
    x = torch.rand(3, channels, size, size, generator=torch_generator(0)) * 2 - 1
    feats = model.features(x).detach()
    assert feats.shape == (3, 7)
    assert float(feats.min()) >= 0
    torch.testing.assert_close(model(x).detach(), model.head(feats).detach())
    assert model(x).shape == (3, 4)


def test_last_conv_is_the_last_conv_layer_and_keeps_a_spatial_map() -> None:
    model = CNNClassifier(ClassifierConfig(image_size=8, width=4, n_conv=3, n_pool=2))
    convs = [m for m in model.conv if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3
    assert model.last_conv is convs[-1]
    seen: list[torch.Tensor] = []
    handle = model.last_conv.register_forward_hook(lambda _m, _i, out: seen.append(out))
    model(torch.zeros(2, 1, 8, 8))
    handle.remove()
    assert seen[0].shape == (2, 16, 2, 2)
    # the layer is stored once (no duplicate state-dict entries)
    assert not any(k.startswith("last_conv") for k in model.state_dict())


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"n_conv": 1}, "n_conv"),
        ({"n_classes": 1}, "n_classes"),
        ({"n_pool": 3}, "n_pool"),
        ({"image_size": 2, "n_pool": 2}, "image_size"),
    ],
)
def test_classifier_config_validation(changes: dict[str, int], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ClassifierConfig(**changes)


def test_tabular_generator_final_layer_is_linear_identity(tiny_table: torch.Tensor) -> None:
    config = TabularGANConfig(n_features=5, latent_dim=4, hidden=(8, 6))
    G = TabularGenerator(config).eval()
    z = G.sample_latent(10, seed=0)
    h = G.penultimate(z)
    assert h.shape == (10, 6)
    assert isinstance(G.final_layer, torch.nn.Linear)
    assert G.final_activation == "identity"
    torch.testing.assert_close(G.final_layer(h), G(z), rtol=0, atol=0)
    D = build_tabular_gan(config)["discriminator"]
    assert isinstance(D, TabularDiscriminator)
    assert D(tiny_table).shape == (64,)


def test_tabular_config_validation() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'lsgan'"):
        TabularGANConfig(arch="lsgn")
    with pytest.raises(ConfigError, match="tabular"):
        TabularGANConfig(arch="ebgan")
    with pytest.raises(ConfigError, match="hidden"):
        TabularGANConfig(hidden=())
    assert TabularGANConfig.from_dict(TabularGANConfig(hidden=(3, 4)).to_dict()).hidden == (3, 4)
