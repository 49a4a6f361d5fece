"""Readings remembered under the last characters of what they were read from.

A browser or API client sends the very same header request after request, but a real
server hands the middleware a new object each time, whose hash must be computed anew:
hashing a short tail costs less than hashing a whole header or token.  The caller confirms
a hit by comparing the whole text (``entry[0] == text``), so two texts ending alike never
answer for each other; the later one replaces the earlier.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["TAIL", "TailMemory"]

#: characters of a text's end it is remembered under (a JWT's: its signature)
TAIL = 48

T = TypeVar("T")


class TailMemory(Generic[T]):
    """Text → reading, keyed by the text's :data:`TAIL`, within a bound in bytes.

    Look up with ``memory.entries.get(text[-TAIL:])``, a plain dict read (atomic under the
    GIL, no lock, no method call on the hot path), and compare the entry's text.  When the
    bound is reached everything is forgotten at once: live clients refill it with one
    reading each.
    """

    __slots__ = ("_bound", "_lock", "_overhead", "_weigh", "entries", "size")

    def __init__(self, bound: int, overhead: int, weigh: Callable[[T], int] | None = None) -> None:
        """``bound``: bytes of texts, counting ``overhead`` more for each entry, and what
        ``weigh`` says a reading holds beyond that (one read from a text may hold many
        objects: a header naming many sessions)."""
        #: tail -> (the whole text, its reading)
        self.entries: dict[str | bytes, tuple[str | bytes, T]] = {}
        #: bytes counted for the entries held
        self.size = 0
        self._bound = bound
        self._overhead = overhead
        self._weigh = weigh
        self._lock = threading.Lock()

    def _cost(self, text: str | bytes, reading: T) -> int:
        held = self._weigh(reading) if self._weigh is not None else 0
        return len(text) + self._overhead + held

    def put(self, text: str | bytes, reading: T) -> None:
        key = text[-TAIL:]
        cost = self._cost(text, reading)
        with self._lock:
            replaced = self.entries.get(key)
            if replaced is not None:  # read again, or another text with the same tail
                self.size -= self._cost(*replaced)
            if self.size + cost > self._bound:
                self.entries.clear()
                self.size = 0
            self.entries[key] = (text, reading)
            self.size += cost
