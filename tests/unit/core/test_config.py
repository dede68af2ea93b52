from __future__ import annotations

import dataclasses

import pytest

from genprov.config import Config, did_you_mean, require
from genprov.exceptions import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Inner(Config):
    width: int = 4


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Cfg(Config):
    alpha: float = 0.5
    timesteps: tuple[int, ...] = (0, 100)
    name: str | None = None
    inner: _Inner = dataclasses.field(default_factory=_Inner)

    def validate(self) -> None:
        require(self.alpha > 0, "alpha", "a positive number", self.alpha)


def test_round_trip_through_plain_dict() -> None:
    cfg = _Cfg(alpha=0.1, timesteps=(1, 2, 3), name="x", inner=_Inner(width=8))
    plain = cfg.to_dict()
    assert plain == {"alpha": 0.1, "timesteps": [1, 2, 3], "name": "x", "inner": {"width": 8}}
    assert _Cfg.from_dict(plain) == cfg


def test_validate_runs_on_construction_and_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"alpha must be a positive number; got -1"):
        _Cfg(alpha=-1)


def test_unknown_key_suggests_the_closest_name() -> None:
    with pytest.raises(ConfigError, match=r"no parameter 'alpah'.*Did you mean 'alpha'"):
        _Cfg.from_dict({"alpah": 1.0})


def test_replace_validates_and_rejects_unknown_names() -> None:
    cfg = _Cfg()
    assert cfg.replace(alpha=2.0).alpha == 2.0
    with pytest.raises(ConfigError, match="Did you mean 'timesteps'"):
        cfg.replace(timestep=(1,))
    with pytest.raises(ConfigError):
        cfg.replace(alpha=0.0)


def test_frozen_and_diff() -> None:
    cfg = _Cfg()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.alpha = 3.0  # type: ignore[misc]
    assert cfg.diff(cfg.replace(alpha=0.25)) == {"alpha": (0.5, 0.25)}


def test_from_dict_rejects_non_mapping() -> None:
    with pytest.raises(ConfigError, match="expects a mapping"):
        _Cfg.from_dict([1, 2])  # type: ignore[arg-type]


def test_did_you_mean_empty_when_nothing_close() -> None:
    assert did_you_mean("zzzz", ["alpha", "beta"]) == ""
