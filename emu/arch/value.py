"""Equality, hashing and repr for the small records of a run, derived from their __slots__.

The records (paging registers, translations, decoded I/O instructions, code paths) are values:
caches key by them and tests compare them. They are plain slotted classes rather than
dataclasses because importing and building dataclasses costs a plain run's start-up more than
everything these records do; this base gives them a dataclass's value semantics in one place.
"""
from __future__ import annotations

from operator import attrgetter
from typing import Any, Callable


class Value:
    """A record compared, hashed and shown by its __slots__, in their order."""

    __slots__ = ()
    _fields: Callable[[Any], tuple]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names = cls.__slots__
        getter = attrgetter(*names)
        cls._fields = (lambda self: (getter(self),)) if len(names) == 1 else getter

    def _key(self) -> tuple:
        return self._fields(self)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._fields(self) == other._fields(other)  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._fields(self))

    def __repr__(self) -> str:
        return (type(self).__name__ + "(" + ", ".join(
            f"{name}={value!r}" for name, value in zip(self.__slots__, self._fields(self))) + ")")
