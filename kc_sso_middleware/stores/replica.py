"""TEMPORARY minimal replica (replaced by the stores branch)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable

from .model import Revocation, RevocationKind, SessionKeys

_VERSIONS = itertools.count()


class Replica:
    def __init__(
        self, max_entries: int = 1_000_000, timer: Callable[[], float] = time.time
    ) -> None:
        self.max_entries = max_entries
        self._timer = timer
        self._sessions: dict[int, float] = {}
        self._wide: dict[int, tuple[float, float]] = {}
        self.version = next(_VERSIONS)
        self._lock = threading.Lock()

    def is_revoked(self, keys: SessionKeys) -> bool:
        now = self._timer()
        for subject in (keys.session, keys.instance):
            if subject is not None:
                exp = self._sessions.get(subject)
                if exp is not None and exp > now:
                    return True
        for subject in (keys.user, keys.client):
            if subject is None:
                continue
            entry = self._wide.get(subject)
            if (
                entry is not None
                and entry[1] > now
                and (keys.issued_at is None or keys.issued_at < entry[0])
            ):
                return True
        return False

    def apply(self, revocations: Iterable[Revocation]) -> list[Revocation]:
        now = self._timer()
        new = []
        with self._lock:
            for entry in revocations:
                if entry.expires_at <= now:
                    continue
                if entry.kind is RevocationKind.SESSION:
                    self._sessions[entry.subject] = max(
                        self._sessions.get(entry.subject, 0.0), entry.expires_at
                    )
                else:
                    nb, exp = self._wide.get(entry.subject, (0.0, 0.0))
                    self._wide[entry.subject] = (
                        max(nb, entry.not_before),
                        max(exp, entry.expires_at),
                    )
                new.append(entry)
            self.version = next(_VERSIONS)
        return new

    def __len__(self) -> int:
        return len(self._sessions) + len(self._wide)
