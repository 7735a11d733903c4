"""Tools the shipped environments offer (actors/environments.py). Each runs in a subprocess of its own, so keep
this module's imports to the standard library: the subprocess imports it for every call."""

from __future__ import annotations


def add(a: float, b: float) -> float:
    """The calculator environment's tool. Numbers only: a model that sends "1" and "2" is told so, instead of
    reading back the string "12" as their sum."""
    for name, value in (("a", a), ("b", b)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    return a + b
