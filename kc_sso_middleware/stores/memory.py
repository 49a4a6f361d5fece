"""``memory://``: revocations in this process only.

Right for a single process (the Flask dev server, ``uvicorn`` without ``--workers``) and for
tests.  **Wrong** for any multi-process or multi-host deployment: Keycloak delivers its
back-channel request to one worker, and every other worker would keep accepting the
session.  Use the default SQLite store (one host) or Redis (many hosts) there.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Sequence

from ..errors import ConfigurationError
from .base import StatusListener
from .model import Revocation, StoreStatus
from .options import MAX_ENTRIES, StoreURL, parse_store_url
from .replica import DEFAULT_MAX_ENTRIES, Listeners, Replica, ReplicaStore

__all__ = ["ClaimedJtis", "MemoryStore"]


_ALWAYS_AVAILABLE = StoreStatus(available=True)


class ClaimedJtis:
    """The replay cache: each claim lasts until its own expiry, and only expiry removes it.

    Not thread-safe; the store's lock guards it.
    """

    def __init__(self, timer: Callable[[], float] = time.time) -> None:
        self._timer = timer
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def claim(self, jti: str, expires_at: float) -> bool:
        """Claim ``jti`` until ``expires_at``; False if a live claim holds it."""
        now = self._timer()
        heap = self._heap
        while heap and heap[0][0] <= now:
            expired_at, old = heapq.heappop(heap)
            if self._expiry.get(old) == expired_at:
                del self._expiry[old]
        current = self._expiry.get(jti)
        if current is not None and current > now:
            return False
        self._expiry[jti] = expires_at
        heapq.heappush(heap, (expires_at, jti))
        return True


class MemoryStore(ReplicaStore):
    """Revocations and the ``jti`` replay cache in the memory of this process."""

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        timer: Callable[[], float] = time.time,
    ) -> None:
        self._replica = Replica(max_entries, timer)
        self._jtis = ClaimedJtis(timer)
        self._listeners = Listeners()
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, *, timer: Callable[[], float] = time.time) -> MemoryStore:
        """``memory://``, optionally ``?max_entries=N``."""
        return cls.from_parsed(parse_store_url(url, schemes=frozenset({"memory"})), timer=timer)

    @classmethod
    def from_parsed(
        cls, parsed: StoreURL, *, timer: Callable[[], float] = time.time
    ) -> MemoryStore:
        if parsed.parts.netloc or parsed.parts.path not in {"", "/"}:
            raise ConfigurationError(
                f"KC_SSO_STORE={parsed.redacted!r}: memory:// takes no host or path"
            )
        return cls(parsed[MAX_ENTRIES], timer)

    def __repr__(self) -> str:
        return "MemoryStore()"

    def status(self) -> StoreStatus:
        return _ALWAYS_AVAILABLE

    def add_status_listener(self, listener: StatusListener) -> None:
        """Always available: there is never a change to announce (and, followed, the
        request check need not ask for the status on every request)."""

    def record(
        self,
        revocations: Sequence[Revocation],
        *,
        jti: str | None = None,
        jti_expires_at: float = 0.0,
        authenticated: bool = True,
    ) -> bool:
        with self._lock:
            self._replica.check_room(authenticated=authenticated, store="memory:// store")
            if jti is not None and not self._jtis.claim(jti, jti_expires_at):
                return False
            applied = self._replica.apply(revocations)
        self._listeners.notify(applied)
        return True

    async def arecord(
        self,
        revocations: Sequence[Revocation],
        *,
        jti: str | None = None,
        jti_expires_at: float = 0.0,
        authenticated: bool = True,
    ) -> bool:
        # Nothing here blocks, so no thread hop.
        return self.record(
            revocations, jti=jti, jti_expires_at=jti_expires_at, authenticated=authenticated
        )
