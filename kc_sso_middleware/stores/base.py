"""The revocation store interface, shared by both adapters and every backend.

A store has two faces:

* the **request path** asks :meth:`RevocationStore.is_revoked` on every session-bearing
  request.  It must answer from process memory (a replica), never from disk or network;
  its cost is a few dict look-ups.
* the **logout paths** call :meth:`RevocationStore.record` / :meth:`arecord` (durable write,
  atomically with the replay check of the logout token's ``jti``).  They may do I/O and
  raise :class:`~kc_sso_middleware.errors.StoreUnavailableError`; the caller then never
  answers success.

Entries carry their own ``expires_at``: once every session they could match has outlived
``max_session_lifetime`` the entry can be forgotten, which keeps every store bounded.
"""

from __future__ import annotations

import abc
import asyncio
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .replica import Replica

__all__ = ["Revocation", "RevocationKind", "RevocationStore", "StoreStatus"]


class RevocationKind(str, enum.Enum):
    """What a revocation entry matches."""

    #: one Keycloak user session, by its ``sid``
    SESSION = "sid"
    #: every session of one user (``sub``) that began before ``not_before``
    USER = "sub"
    #: every session of every user that began before ``not_before`` (Keycloak's not-before
    #: push and "sign out all active sessions")
    ALL = "all"


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revocation entry.

    ``key`` is the ``sid`` or ``sub`` (empty for :attr:`RevocationKind.ALL`);
    ``not_before`` is the epoch second before which a matching session counts as revoked
    (unused for ``SESSION``); ``expires_at`` is when the entry can no longer matter.
    """

    kind: RevocationKind
    key: str
    not_before: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """Health of a store's replica, for the fail-open / fail-closed policy and for logs."""

    #: the replica is known to be current (the shared store was reachable at the last check)
    available: bool
    detail: str = ""


class RevocationStore(abc.ABC):
    """A revocation store: durable writes, in-memory reads."""

    #: URL scheme(s) the store serves, for messages
    scheme: str = ""

    # -- request path -------------------------------------------------------------

    #: the in-memory replica every store keeps; the request path reads nothing else
    replica: Replica

    def is_revoked(
        self,
        sid: str | None,
        sub: str | None,
        login_time: float | None,
        instance: str | None = None,
    ) -> bool:
        """Whether a session is revoked, answered from memory only.

        ``login_time`` is when the app session began (its ID token's ``iat``); ``None``
        means unknown, which counts as revoked whenever a user- or realm-wide entry could
        apply.  ``instance`` is a second session key: the app session's own token, which a
        local logout revokes.
        """
        return self.replica.is_revoked(sid, sub, login_time, instance)

    @abc.abstractmethod
    def status(self) -> StoreStatus:
        """Whether the in-memory replica is known to be current."""

    # -- logout paths ---------------------------------------------------------------

    @abc.abstractmethod
    def record(
        self,
        revocations: Sequence[Revocation],
        *,
        jti: str | None = None,
        jti_expires_at: float = 0.0,
    ) -> bool:
        """Durably store ``revocations`` and claim ``jti`` in one atomic step.

        Returns ``False`` (and stores nothing) if ``jti`` was claimed before: a replay.
        Raises :class:`~kc_sso_middleware.errors.StoreUnavailableError` when the write could
        not be confirmed.  After a successful return this process's replica already holds
        the entries, and for a shared store so does every live follower's (each worker's
        replica), unless the store's ``ack_timeout`` ran out first, which it logs.
        """

    async def arecord(
        self,
        revocations: Sequence[Revocation],
        *,
        jti: str | None = None,
        jti_expires_at: float = 0.0,
    ) -> bool:
        """Async :meth:`record`.  The default runs the sync one in a worker thread."""
        return await asyncio.to_thread(
            lambda: self.record(revocations, jti=jti, jti_expires_at=jti_expires_at)
        )

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:  # noqa: B027 - optional hook
        """Begin background replication, if the store has any.  Idempotent."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Stop background work and release connections.  Idempotent."""
