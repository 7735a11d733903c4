"""Tools the shipped environments offer (actors/environments.py). Each runs in a subprocess of its own, so keep
this module's imports to the standard library: the subprocess imports it for every call."""

from __future__ import annotations


def add(a: float, b: float) -> float:
    """The calculator environment's tool."""
    return a + b
