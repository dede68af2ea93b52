"""Exceptions raised by genprov.

Every error a user can trigger is a subclass of :class:`GenprovError`, with a message that names the
parameter or file, what was expected, what came, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "GenprovError",
    "MissingDependencyError",
    "NotFittedError",
    "StoreMismatchError",
]


class GenprovError(Exception):
    """Base class of every error genprov raises on purpose."""


class ConfigError(GenprovError, ValueError):
    """A configuration value or a registry name is invalid."""


class NotFittedError(GenprovError, RuntimeError):
    """A method that needs learned state was called before ``fit``."""


class DataError(GenprovError, ValueError):
    """Input data is missing, unreadable, of the wrong shape or range, or contains NaN."""


class StoreMismatchError(GenprovError):
    """An on-disk store was written with a different configuration than the one asked for."""


class CheckpointError(GenprovError):
    """A model checkpoint is missing, unreadable, or does not match its config."""


class MissingDependencyError(GenprovError, ImportError):
    """An optional dependency is needed for this feature and is not installed."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        super().__init__(
            f"{feature} needs the optional package {package!r}, which is not installed. "
            f"Install it with: pip install 'genprov[{extra}]'"
        )
        self.package = package
        self.extra = extra
