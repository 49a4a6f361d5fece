"""TEMPORARY minimal memory store (replaced by the stores branch)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from ..errors import StoreFullError
from .base import RevocationListener, RevocationStore
from .model import Revocation, SessionKeys, StoreStatus
from .replica import Replica

logger = logging.getLogger(__name__)
_AVAILABLE = StoreStatus(available=True)


class MemoryStore(RevocationStore):
    def __init__(
        self, max_entries: int = 1_000_000, timer: Callable[[], float] = time.time
    ) -> None:
        self._replica = Replica(max_entries, timer)
        self._timer = timer
        self._jtis: dict[str, float] = {}
        self._lock = threading.Lock()
        self._listeners: list[RevocationListener] = []

    def is_revoked(self, keys: SessionKeys) -> bool:
        return self._replica.is_revoked(keys)

    @property
    def version(self) -> int:
        return self._replica.version

    def status(self) -> StoreStatus:
        return _AVAILABLE

    def add_listener(self, listener: RevocationListener) -> None:
        self._listeners.append(listener)

    def record(
        self,
        revocations: Sequence[Revocation],
        *,
        jti: str | None = None,
        jti_expires_at: float = 0.0,
        authenticated: bool = True,
    ) -> bool:
        with self._lock:
            now = self._timer()
            if jti is not None:
                if self._jtis.get(jti, 0.0) > now:
                    return False
                self._jtis[jti] = jti_expires_at
            if not authenticated and len(self._replica) >= self._replica.max_entries:
                raise StoreFullError("the store holds its bound of entries")
            new = self._replica.apply(revocations)
        for listener in self._listeners:
            try:
                listener(new)
            except Exception:
                logger.exception("revocation listener failed")
        return True

    async def arecord(
        self,
        revocations: Sequence[Revocation],
        *,
        jti: str | None = None,
        jti_expires_at: float = 0.0,
        authenticated: bool = True,
    ) -> bool:
        return self.record(
            revocations, jti=jti, jti_expires_at=jti_expires_at, authenticated=authenticated
        )
