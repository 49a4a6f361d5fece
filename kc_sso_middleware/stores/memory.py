"""``memory://``: revocations in this process only.

Right for a single process (the Flask dev server, ``uvicorn`` without ``--workers``) and for
tests.  **Wrong** for any multi-process or multi-host deployment: Keycloak delivers its
back-channel request to one worker, and every other worker would keep accepting the
session.  Use the default SQLite store (one host) or Redis (many hosts) there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from cachetools import TLRUCache

from .base import Revocation, RevocationStore, StoreStatus
from .replica import DEFAULT_MAX_ENTRIES, Replica

__all__ = ["MemoryStore"]


_ALWAYS_AVAILABLE = StoreStatus(available=True)


def _jti_expiry(_key: str, expires_at: float, _now: float) -> float:
    return expires_at


class MemoryStore(RevocationStore):
    """Revocations and the ``jti`` replay cache in cachetools TTL caches of this process."""

    scheme = "memory"

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        timer: Callable[[], float] = time.time,
    ) -> None:
        self.replica = Replica(max_entries, timer)
        self._jtis: TLRUCache[str, float] = TLRUCache(max_entries, _jti_expiry, timer)
        self._lock = threading.Lock()

    def status(self) -> StoreStatus:
        return _ALWAYS_AVAILABLE

    def record(
        self,
        revocations: Sequence[Revocation],
        *,
        jti: str | None = None,
        jti_expires_at: float = 0.0,
    ) -> bool:
        with self._lock:
            if jti is not None:
                if jti in self._jtis:
                    return False
                self._jtis[jti] = jti_expires_at
            self.replica.apply(revocations)
        return True

    async def arecord(
        self,
        revocations: Sequence[Revocation],
        *,
        jti: str | None = None,
        jti_expires_at: float = 0.0,
    ) -> bool:
        # Nothing here blocks, so no thread hop.
        return self.record(revocations, jti=jti, jti_expires_at=jti_expires_at)
