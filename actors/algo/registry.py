"""Name → implementation tables, so variants are chosen by config string instead of if/elif chains."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of variants of one kind of thing (KL estimators, losses, ...).

    >>> reg = Registry("kl estimator")
    >>> @reg.register("k1")
    ... def k1(logp, ref_logp): ...
    >>> reg.get("k1") is k1
    True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that files the decorated object under `name`; registering a name twice is a bug."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """The entry filed under `name`; KeyError naming the known entries and the closest match."""
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(self._unknown_name_message(name)) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def _unknown_name_message(self, name: str) -> str:
        message = f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or '(none)'}"
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        if close:
            message += f". Did you mean {close[0]!r}?"
        return message
