"""Named registries of interchangeable building blocks.

A :class:`Registry` maps kebab-case names (``"squared-l2-norm"``, ``"grad-cam"``) to factories (usually
classes) and their config classes, so the CLI, the web service and the contract tests can enumerate and
build every entry the same way.

Example:
    >>> PROJECTORS: Registry[object] = Registry("projector")
    >>> @PROJECTORS.register("identity")
    ... class Identity:
    ...     def __init__(self, config=None): self.config = config
    >>> PROJECTORS.names()
    ['identity']
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from genprov.config import Config, did_you_mean
from genprov.exceptions import ConfigError

__all__ = ["Registry", "RegistryEntry"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


@dataclass(frozen=True)
class RegistryEntry(Generic[T]):
    """One registered factory and the config class it takes (``None`` if it takes none)."""

    name: str
    factory: Callable[..., T]
    config: type[Config] | None


class Registry(Generic[T]):
    """A name -> factory table for one role (``kind``), e.g. ``Registry("explainer")``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, RegistryEntry[T]] = {}

    def register(self, name: str, *, config: type[Config] | None = None) -> Callable[[F], F]:
        """Decorator registering a factory under the kebab-case ``name`` with its ``config`` class."""
        if not _NAME.match(name):
            raise ConfigError(f"{self.kind} names must be kebab-case (e.g. 'grad-cam'); got {name!r}.")

        def decorator(factory: F) -> F:
            if name in self._entries:
                raise ConfigError(f"{self.kind} {name!r} is already registered.")
            self._entries[name] = RegistryEntry(name, factory, config)
            return factory

        return decorator

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def entry(self, name: str) -> RegistryEntry[T]:
        """The entry for ``name``; unknown names raise :class:`ConfigError` with a suggestion."""
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"Unknown {self.kind} {name!r}.{did_you_mean(name, self._entries)} "
                f"Choose one of: {', '.join(self.names())}."
            ) from None

    def config_type(self, name: str) -> type[Config] | None:
        """The config class the entry ``name`` takes, or ``None``."""
        return self.entry(name).config

    def default_config(self, name: str) -> Config | None:
        """A default-constructed config for ``name`` (``None`` if it takes no config)."""
        cfg = self.config_type(name)
        return cfg() if cfg is not None else None

    def create(self, name: str, *args: Any, config: Config | dict[str, Any] | None = None, **kwargs: Any) -> T:
        """Build the entry ``name``; ``config`` may be a config object, a plain dict, or ``None`` (defaults).

        Positional ``args`` (the object studied, e.g. a model) are passed first, then ``config=``.
        """
        entry = self.entry(name)
        if entry.config is None:
            if config is not None:
                raise ConfigError(f"{self.kind} {name!r} takes no config; got {config!r}.")
            return entry.factory(*args, **kwargs)
        if config is None:
            config = entry.config()
        elif isinstance(config, dict):
            config = entry.config.from_dict(config)
        elif not isinstance(config, entry.config):
            raise ConfigError(f"{self.kind} {name!r} takes a {entry.config.__name__}; got {type(config).__name__}.")
        return entry.factory(*args, config=config, **kwargs)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)
