from __future__ import annotations

import dataclasses

import pytest

from genprov.config import Config
from genprov.exceptions import ConfigError
from genprov.registry import Registry


@dataclasses.dataclass(frozen=True, kw_only=True)
class _ScaleConfig(Config):
    factor: float = 2.0


class _Scale:
    def __init__(self, base: float, *, config: _ScaleConfig) -> None:
        self.value = base * config.factor


def _registry() -> Registry[object]:
    reg: Registry[object] = Registry("widget")
    reg.register("scale", config=_ScaleConfig)(_Scale)
    reg.register("plain")(lambda: "plain")
    return reg


def test_create_with_default_dict_and_object_configs() -> None:
    reg = _registry()
    assert reg.create("scale", 3.0).value == 6.0  # type: ignore[attr-defined]
    assert reg.create("scale", 3.0, config={"factor": 3.0}).value == 9.0  # type: ignore[attr-defined]
    assert reg.create("scale", 1.0, config=_ScaleConfig(factor=5.0)).value == 5.0  # type: ignore[attr-defined]
    assert reg.create("plain") == "plain"
    assert reg.names() == ["plain", "scale"]
    assert reg.config_type("scale") is _ScaleConfig
    assert reg.default_config("plain") is None
    assert "scale" in reg and len(reg) == 2


def test_unknown_name_suggests_and_lists_choices() -> None:
    with pytest.raises(ConfigError, match=r"Unknown widget 'scal'\. Did you mean 'scale'\?.*plain, scale"):
        _registry().create("scal")


def test_bad_registrations_and_configs() -> None:
    reg = _registry()
    with pytest.raises(ConfigError, match="kebab-case"):
        reg.register("Grad_CAM")
    with pytest.raises(ConfigError, match="already registered"):
        reg.register("scale")(_Scale)
    with pytest.raises(ConfigError, match="takes no config"):
        reg.create("plain", config={"x": 1})
    with pytest.raises(ConfigError, match="takes a _ScaleConfig"):
        reg.create("scale", 1.0, config=Config())
