"""Entries, look-ups and waiting, shared by the store tests."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

from kc_sso_middleware.stores import Revocation, RevocationStore, SessionKeys
from kc_sso_middleware.stores.sqlite import SQLiteStore

DEADLINE = 15.0  # seconds; only ever reached when a test is about to fail
LONG = 3600.0  # an expiry that outlives every test
ISSUER = "https://sso.example/realms/one"
CLIENT = "app"


class Clock:
    """A clock the test moves by hand (stores and their replicas read it)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def open_started(
    opened: list[SQLiteStore], path: str | os.PathLike[str], **options: object
) -> SQLiteStore:
    """A started SQLite store on ``path``, listed in ``opened`` (the ``stores`` fixture)."""
    store = SQLiteStore(path, **options)  # type: ignore[arg-type]
    opened.append(store)
    store.start()
    return store


def eventually(condition: Callable[[], bool], timeout: float = DEADLINE) -> bool:
    """Poll ``condition`` until it holds or the deadline passes; the result is asserted."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def session(
    sid: str, expires_at: float, *, issuer: str = ISSUER, client: str | None = CLIENT
) -> Revocation:
    return Revocation.session(issuer, sid, client_id=client, expires_at=expires_at)


def instance(key: str, expires_at: float, *, issuer: str = ISSUER) -> Revocation:
    """An app-session entry (``"sid#jti"``), as a local logout writes it."""
    return Revocation.instance(issuer, key, expires_at=expires_at)


def user(sub: str, not_before: float, expires_at: float, *, issuer: str = ISSUER) -> Revocation:
    return Revocation.user(issuer, sub, not_before=not_before, expires_at=expires_at)


def every_session(
    not_before: float, expires_at: float, *, client: str = CLIENT, issuer: str = ISSUER
) -> Revocation:
    """A client-wide entry (Keycloak's not-before push) for ``client`` of ``issuer``."""
    return Revocation.all_sessions(issuer, client, not_before=not_before, expires_at=expires_at)


def keys(
    sid: str | None = None,
    sub: str | None = None,
    issued_at: float | None = None,
    *,
    instance: str | None = None,
    issuer: str = ISSUER,
    client: str = CLIENT,
) -> SessionKeys:
    return SessionKeys.of(issuer, client, sid=sid, sub=sub, instance=instance, issued_at=issued_at)


def revoked(
    store: RevocationStore,
    sid: str | None = None,
    sub: str | None = None,
    issued_at: float | None = None,
    **scope: str,
) -> bool:
    """Whether ``store`` revokes the session with these claims (``scope``: issuer, client,
    instance)."""
    return store.is_revoked(keys(sid, sub, issued_at, **scope))


class Recorder:
    """A listener that keeps every batch it is called with."""

    def __init__(self) -> None:
        self.batches: list[Sequence[Revocation]] = []

    def __call__(self, entries: Sequence[Revocation]) -> None:
        self.batches.append(list(entries))

    @property
    def subjects(self) -> list[int]:
        return [entry.subject for batch in self.batches for entry in batch]

    @property
    def labels(self) -> list[str | None]:
        return [entry.label for batch in self.batches for entry in batch]
