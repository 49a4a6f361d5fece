"""A worker's in-memory copy of the active revocations: the only thing the request path reads.

Every store keeps one.  ``memory://`` writes straight into it; the shared stores write to
SQLite or Redis first and then into it, and a background follower applies what other
workers wrote.  Entries are held in cachetools' ``TLRUCache`` (per-entry expiry, bounded
size); user- and realm-wide entries compare the session's login time with ``not_before``,
as Keycloak compares a token's ``iat`` with its not-before (strictly earlier is revoked).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable

from cachetools import Cache, TLRUCache

from .base import Revocation, RevocationKind

__all__ = ["Replica"]

DEFAULT_MAX_ENTRIES = 1_000_000
_VERSIONS = itertools.count()


def _session_expiry(_key: str, expires_at: float, _now: float) -> float:
    return expires_at


def _user_expiry(_key: str, value: tuple[float, float], _now: float) -> float:
    return value[1]


class Replica:
    """Active revocations in process memory; thread-safe; reads are a few dict look-ups."""

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        timer: Callable[[], float] = time.time,
    ) -> None:
        self.max_entries = max_entries
        self._timer = timer
        self._sessions: TLRUCache[str, float] = TLRUCache(max_entries, _session_expiry, timer)
        self._users: TLRUCache[str, tuple[float, float]] = TLRUCache(
            max_entries, _user_expiry, timer
        )
        self._all_not_before = 0.0
        self._all_expires_at = 0.0
        #: changed by every write: a verdict reached at one version holds until it changes
        #: (entries only ever appear, or expire, which cannot revoke anything).  Drawn from
        #: one process-wide counter, so a new replica (e.g. after fork) never repeats one.
        self.version = next(_VERSIONS)
        # cachetools caches are not thread-safe: writes and snapshots hold the lock.
        self._lock = threading.Lock()

    def is_revoked(
        self,
        sid: str | None,
        sub: str | None,
        login_time: float | None,
        instance: str | None = None,
    ) -> bool:
        """The request path: a few dict look-ups, without the lock.

        TLRUCache reads do not reorder anything: ``in`` and ``get`` look an entry up and
        compare its expiry, dict operations the GIL makes atomic, so a concurrent write is
        seen either whole or not yet (and ``record()`` has not returned before it is
        whole).  A TLRUCache's ``len()`` purges expired entries, which is slow and which
        writes do anyway: emptiness is tested with the base class's plain count.
        """
        sessions = self._sessions
        if Cache.__len__(sessions) and (
            (sid is not None and sid in sessions) or (instance is not None and instance in sessions)
        ):
            return True
        if (
            self._all_not_before
            and (login_time is None or login_time < self._all_not_before)
            and self._timer() < self._all_expires_at
        ):
            return True
        users = self._users
        if sub is not None and Cache.__len__(users):
            try:
                entry = users.get(sub)
            except KeyError:  # being written this very moment: not whole yet
                return False
            if entry is not None and (login_time is None or login_time < entry[0]):
                return True
        return False

    def apply(self, revocations: Iterable[Revocation]) -> None:
        """Add entries; a later ``not_before`` for the same user or realm wins."""
        now = self._timer()
        with self._lock:
            for entry in revocations:
                if entry.expires_at <= now:
                    continue
                if entry.kind is RevocationKind.SESSION:
                    current = self._sessions.get(entry.key)
                    if current is None or current < entry.expires_at:
                        self._sessions[entry.key] = entry.expires_at
                elif entry.kind is RevocationKind.USER:
                    previous = self._users.get(entry.key)
                    if previous is None:
                        self._users[entry.key] = (entry.not_before, entry.expires_at)
                    else:
                        self._users[entry.key] = (
                            max(previous[0], entry.not_before),
                            max(previous[1], entry.expires_at),
                        )
                elif entry.not_before > self._all_not_before or (
                    entry.not_before == self._all_not_before
                    and entry.expires_at > self._all_expires_at
                ):
                    self._all_not_before = entry.not_before
                    self._all_expires_at = max(self._all_expires_at, entry.expires_at)
            # After the entries: a reader reads the version before it checks, so one that
            # saw only part of this write has cached the old version and checks again.
            self.version = next(_VERSIONS)

    def replace(self, revocations: Iterable[Revocation]) -> None:
        """Swap the whole content for a fresh snapshot (full resync)."""
        fresh = Replica(self.max_entries, self._timer)
        fresh.apply(revocations)
        with self._lock:
            self._sessions = fresh._sessions
            self._users = fresh._users
            self._all_not_before = fresh._all_not_before
            self._all_expires_at = fresh._all_expires_at
            self.version = next(_VERSIONS)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions) + len(self._users) + (1 if self._all_not_before else 0)

    def entries(self) -> list[Revocation]:
        """A snapshot of the active entries (for tests, resync and diagnostics)."""
        with self._lock:
            out = [
                Revocation(RevocationKind.SESSION, sid, 0.0, expires)
                for sid, expires in self._sessions.items()
            ]
            out.extend(
                Revocation(RevocationKind.USER, sub, nb, expires)
                for sub, (nb, expires) in self._users.items()
            )
            if self._all_not_before and self._timer() < self._all_expires_at:
                out.append(
                    Revocation(RevocationKind.ALL, "", self._all_not_before, self._all_expires_at)
                )
        return out
