"""Small value checks shared by the model configs' ``validate`` methods."""

from __future__ import annotations

__all__ = ["is_int", "is_positive_int"]


def is_int(value: object) -> bool:
    """Whether ``value`` is an ``int`` (``bool`` excluded)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_positive_int(value: object) -> bool:
    """Whether ``value`` is an ``int`` (``bool`` excluded) greater than 0."""
    return is_int(value) and value > 0  # type: ignore[operator]
