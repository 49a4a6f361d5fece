"""The revocation store interface, shared by both adapters and every backend.

A store has two faces:

* the **request path** asks :meth:`RevocationStore.is_revoked` on session-bearing requests.
  It answers from process memory (the store's replica), never from disk or network; its
  cost is a few set look-ups.  :attr:`RevocationStore.version` changes with every change
  to that memory, so a caller that found a session not revoked at version V need not ask
  again until the version moves.
* the **logout paths** call :meth:`RevocationStore.record` / :meth:`arecord` (durable write,
  atomically with the replay check of the logout token's ``jti``).  They may do I/O and
  raise :class:`~kc_sso_middleware.errors.StoreUnavailableError`; the caller then never
  answers success.

Entries carry their own ``expires_at`` and are never dropped before it: a bounded store
refuses new *unauthenticated* writes when full (:class:`~kc_sso_middleware.errors.StoreFullError`)
rather than forget a revocation early.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Sequence

from .model import Revocation, SessionKeys, StoreStatus

__all__ = ["RevocationListener", "RevocationStore", "StatusListener"]

#: Called with the entries a replica has just applied (in the thread that applied them).
RevocationListener = Callable[[Sequence[Revocation]], None]
#: Called with the new status when a store's replica stops or starts being current.
StatusListener = Callable[[StoreStatus], None]


class RevocationStore(abc.ABC):
    """A revocation store: durable writes, in-memory reads."""

    # -- request path -------------------------------------------------------------

    @abc.abstractmethod
    def is_revoked(self, keys: SessionKeys) -> bool:
        """Whether the session ``keys`` describe is revoked; memory only, no I/O."""

    def holds(self, revocation: Revocation) -> bool:
        """Whether writing ``revocation`` again would add nothing (a session entry this
        process's replica already holds); memory only.  A store without a replica says
        False."""
        return False

    def revoked_by(self, keys: SessionKeys) -> str | None:
        """Which kind of entry revokes ``keys`` (``"sid"``, ``"instance"``, ``"user"``,
        ``"client"``), or ``None``; for explaining a refusal, never on the hot path."""
        return "sid" if self.is_revoked(keys) else None

    @property
    @abc.abstractmethod
    def version(self) -> int:
        """Changes whenever the in-memory replica changes; never repeats in a process."""

    def replica_state(self) -> tuple[int, float]:
        """(entries this process's replica holds, when it last changed): for health and
        metrics; a store without a replica says (0, 0.0)."""
        return 0, 0.0

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
        authenticated: bool = True,
    ) -> bool:
        """Durably store ``revocations`` and claim ``jti`` in one atomic step.

        Returns ``False`` (and stores nothing) if ``jti`` was claimed before: a replay.
        ``authenticated`` says whether the OP (a signed token) or the session itself (its
        own verified cookie) vouches for the write; an unauthenticated write is refused
        with :class:`~kc_sso_middleware.errors.StoreFullError` once the store holds its
        configured bound of entries.  Raises
        :class:`~kc_sso_middleware.errors.StoreUnavailableError` when the write could not
        be confirmed.  After a successful return this process's replica already holds the
        entries, and for a shared store so does every live follower's (each worker's
        replica), unless the store's ``ack_timeout`` ran out first, which it logs.
        """

    async def arecord(
        self,
        revocations: Sequence[Revocation],
        *,
        jti: str | None = None,
        jti_expires_at: float = 0.0,
        authenticated: bool = True,
    ) -> bool:
        """Async :meth:`record`.  The default runs the sync one in a worker thread."""
        return await asyncio.to_thread(
            lambda: self.record(
                revocations, jti=jti, jti_expires_at=jti_expires_at, authenticated=authenticated
            )
        )

    # -- events -----------------------------------------------------------------------

    @abc.abstractmethod
    def add_listener(self, listener: RevocationListener) -> None:
        """Call ``listener`` with every batch of entries this process's replica applies,
        whoever wrote them: of each batch, the entries that were new to the replica (or
        raised a ``not_before`` or ``expires_at`` it held), so each entry is reported
        once per process, however many times it is written or echoed back by the
        follower; a start-up load or a resync reports what it loaded.  Entries carry their
        ``label`` where the backend had it (not after a Redis resync from the keyspace).
        It runs in the thread that applied them (a request's, or the follower's) and must
        be quick; an exception it raises is logged and ignored."""

    def add_status_listener(self, listener: StatusListener) -> None:  # noqa: B027
        """Call ``listener`` whenever :meth:`status` turns available or unavailable.

        A store whose replica is always current (``memory://``) never calls it.
        """

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:  # noqa: B027 - optional hook
        """Begin background replication, if the store has any.  Idempotent; may block
        (the ASGI adapter runs it in a thread at lifespan startup)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Stop background work and release connections.  Idempotent."""
