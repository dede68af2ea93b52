"""Configuration base class.

Every method, model and experiment in genprov is configured by a frozen, keyword-only dataclass that
derives from :class:`Config`. A config validates itself on construction, round-trips through plain JSON
(``to_dict`` / ``from_dict``), and answers an unknown key with a "did you mean" suggestion. The CLI, the
web form and the on-disk manifests are all generated from these classes, so each parameter is declared
exactly once.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True, kw_only=True)
    ... class LassoConfig(Config):
    ...     alpha: float = 5e-4
    ...     def validate(self) -> None:
    ...         require(self.alpha > 0, "alpha", "a positive number", self.alpha)
    >>> LassoConfig.from_dict({"alpha": 1e-3}).alpha
    0.001
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, Union, get_args, get_origin

import numpy as np

from genprov.exceptions import ConfigError

__all__ = ["Config", "did_you_mean", "is_int", "is_positive_int", "require", "require_choices", "require_ints"]

C = TypeVar("C", bound="Config")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return a ``" Did you mean 'x'?"`` hint for ``name`` among ``choices`` (empty if none is close)."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def is_int(value: object, *, minimum: int | None = None) -> bool:
    """Whether ``value`` is an ``int`` (``bool`` excluded), at least ``minimum`` when given (for config checks)."""
    return isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)


def is_positive_int(value: object) -> bool:
    """Whether ``value`` is an ``int`` (``bool`` excluded) greater than 0."""
    return is_int(value, minimum=1)


def require(condition: bool, name: str, expected: str, got: object) -> None:
    """Raise :class:`ConfigError` naming ``name``, what was ``expected`` and what was ``got``.

    Args:
        condition: The check; nothing happens when it is true.
        name: The parameter's name as the user types it.
        expected: What a valid value looks like, e.g. ``"a positive integer"``.
        got: The value that was given.
    """
    if not condition:
        raise ConfigError(f"{name} must be {expected}; got {got!r}.")


def require_ints(config: object, names: Iterable[str], *, minimum: int) -> None:
    """:func:`require` each named field of ``config`` to be an ``int`` (``bool`` excluded) of at least ``minimum``
    (expected: "a positive integer" for 1, "a non-negative integer" for 0, else "an integer >= minimum")."""
    expected = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
    for name in names:
        value = getattr(config, name)
        require(is_int(value, minimum=minimum), name, expected, value)


def require_choices(config: object, choices: Mapping[str, Iterable[str]]) -> None:
    """:func:`require` each field of ``config`` named in ``choices`` to be one of its choices."""
    for name, allowed in choices.items():
        allowed = list(allowed)
        value = getattr(config, name)
        require(value in allowed, name, f"one of {', '.join(allowed)}", value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Frozen keyword-only configuration; subclasses add fields and override :meth:`validate`."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # configs are stored as JSON, which has no NaN or infinity
            if not _all_finite(getattr(self, f.name)):
                raise ConfigError(
                    f"{type(self).__name__}: {f.name} must be a finite number; got {getattr(self, f.name)!r}."
                )
        self.validate()

    def validate(self) -> None:
        """Check field values; raise :class:`ConfigError` naming the field and the fix."""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (tuples become lists, nested configs become dicts)."""
        return {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Build a config from a dict such as ``to_dict`` returns.

        Raises:
            ConfigError: On an unknown key (with a "did you mean" hint) or an invalid value.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__} expects a mapping of field names to values; got {type(data).__name__}.")
        names = cls.field_names()
        unknown = [k for k in data if k not in names]
        if unknown:
            key = unknown[0]
            raise ConfigError(
                f"{cls.__name__} has no parameter {key!r}.{did_you_mean(key, names)} "
                f"Valid parameters: {', '.join(sorted(names))}."
            )
        hints = typing.get_type_hints(cls)
        for key, value in data.items():
            expected = _type_mismatch(value, hints.get(key, Any))
            if expected is not None:
                raise ConfigError(f"{cls.__name__}: {key} must be {expected}; got {value!r} ({type(value).__name__}).")
        kwargs = {k: _from_plain(v, hints.get(k, Any)) for k, v in data.items()}
        try:
            return cls(**kwargs)
        except TypeError as err:  # e.g. a wrong type passed to a comparison in validate()
            raise ConfigError(f"{cls.__name__}: {err}") from err

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of the config's parameters, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self: C, **changes: Any) -> C:
        """Return a copy with ``changes`` applied (validated, with "did you mean" on unknown names)."""
        names = self.field_names()
        for key in changes:
            if key not in names:
                raise ConfigError(f"{type(self).__name__} has no parameter {key!r}.{did_you_mean(key, names)}")
        return dataclasses.replace(self, **changes)

    def diff(self, other: Config) -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ between ``self`` and ``other``: ``{name: (mine, theirs)}``."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {
            k: (mine.get(k), theirs.get(k)) for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)
        }


def _all_finite(value: Any) -> bool:
    """Whether every float in ``value`` (a field value, possibly a tuple or list of them) is finite."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (tuple, list)):
        return all(_all_finite(v) for v in value)
    return True


def _to_plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _to_plain(v) for k, v in value.items()}
    return value


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _type_mismatch(value: Any, hint: Any) -> str | None:
    """What ``hint`` expects, in words, when ``value`` (a JSON-like value) does not fit it; else ``None``.

    Checks the annotations configs use (bool, int, float, str, Literal, optional and union types, tuples,
    dicts, nested configs); any other annotation accepts every value (``validate`` checks it).
    """
    origin = get_origin(hint)
    if hint is Any:
        return None
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        problems = [_type_mismatch(value, o) for o in options if o is not type(None)]
        if any(p is None for p in problems):
            return None
        return " or ".join(str(p) for p in problems) + (" or null" if type(None) in options else "")
    if origin is typing.Literal:
        choices = get_args(hint)
        return None if value in choices else "one of " + ", ".join(repr(c) for c in choices)
    if hint is bool:
        return None if isinstance(value, (bool, np.bool_)) else _TYPE_NAMES[bool]
    if hint is int:
        ok = isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))
        return None if ok else _TYPE_NAMES[int]
    if hint is float:
        ok = isinstance(value, (numbers.Real, np.number)) and not isinstance(value, (bool, np.bool_))
        return None if ok else _TYPE_NAMES[float]
    if hint is str:
        return None if isinstance(value, str) else _TYPE_NAMES[str]
    if isinstance(hint, type) and issubclass(hint, Config):
        return None if isinstance(value, (Mapping, hint)) else f"a mapping of {hint.__name__} parameters"
    if origin is dict or hint is dict:
        return None if isinstance(value, Mapping) else "a mapping"
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return "a list"
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            inner = [_type_mismatch(v, args[0]) for v in value]
            bad = next((p for p in inner if p is not None), None)
            return None if bad is None else f"a list whose items are each {bad}"
        if args and len(args) != len(value):
            return f"a list of {len(args)} items"
        bad = next((p for p, v in zip(args, value, strict=False) if _type_mismatch(v, p) is not None), None)
        return None if bad is None else "a list of " + ", ".join(_TYPE_NAMES.get(a, str(a)) for a in args)
    return None


def _from_plain(value: Any, hint: Any) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        if value is None or len(options) != 1:
            return value
        return _from_plain(value, options[0])
    if isinstance(hint, type) and issubclass(hint, Config) and isinstance(value, Mapping):
        return hint.from_dict(value)
    if origin is tuple and isinstance(value, list):
        args = get_args(hint)
        inner = args[0] if args and (len(args) == 2 and args[1] is Ellipsis) else Any
        return tuple(_from_plain(v, inner) for v in value)
    return value
