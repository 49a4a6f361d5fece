"""Following a shared backend: what the SQLite and the Redis store have in common.

Each process of a shared store runs one **follower**, a daemon thread that applies what
other workers wrote to this process's replica.  Each follower is listed in the backend
under its own name (``"<hostname>:<pid>:<random>"``, new per store instance and process)
with the position it has applied and a heartbeat; it publishes both whenever its position
advances and at least every :data:`HEARTBEAT_INTERVAL` while idle.

A write returns only once every *live* follower (heartbeat younger than
:data:`FOLLOWER_STALE_AFTER`) other than the writer's own has applied it, waiting at most
``ack_timeout``.  :meth:`FollowingStore._record_flow` puts the write (:class:`Write`) and
that wait together, and each store performs the effects in its own way (SQLite blocking,
Redis blocking or with ``await``).  A store may wait inside the write itself and answer
:class:`Written` with the followers that still lag (Redis: one round trip, the followers'
acknowledgements wake the writer); otherwise the write answers its position and the flow
waits with :func:`await_followers`, over :class:`LaggingFollowers` and :class:`Pause`
effects (SQLite).  A follower that stays silent is dead or hung and not waited for.

:class:`FollowingStore` holds the rest: the replica and listeners, the follower thread's
start and stop, and two process hooks.  After ``fork()`` (``gunicorn --preload``) each live
store re-initialises itself in the child: new connections, a fresh replica (the parent's
replica lock may have been held at the moment of the fork), its follower restarted.  At
interpreter exit each one unregisters its follower, since servers rarely close() their
app's store when a worker exits, and otherwise every write of the next seconds would wait
``ack_timeout`` for the departed worker.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import logging
import os
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .._flows import Effect, Flow, drive
from ..errors import ConfigurationError, StoreUnavailableError
from .base import StatusListener
from .model import Revocation, StoreStatus
from .replica import Listeners, Replica, ReplicaStore

__all__ = [
    "FOLLOWER_PURGE_AFTER",
    "FOLLOWER_STALE_AFTER",
    "HEARTBEAT_INTERVAL",
    "FollowerState",
    "FollowingStore",
    "Heartbeat",
    "LaggingFollowers",
    "Pause",
    "Write",
    "Written",
    "await_followers",
    "warn_lagging",
]

logger = logging.getLogger(__name__)

#: seconds between a follower's heartbeats while idle
HEARTBEAT_INTERVAL = 1.0
#: a follower whose heartbeat is older than this is dead or hung and is not waited for
FOLLOWER_STALE_AFTER = 3.0
#: followers silent for this long are deleted from the backend
FOLLOWER_PURGE_AFTER = 30.0
#: how often a writer checks the followers' positions while it waits
ACK_POLL = 0.001
#: how long interpreter exit waits for a follower thread to stop
EXIT_JOIN_TIMEOUT = 1.0
#: while stopping a follower, how often it is woken again
WAKE_AGAIN = 0.05


def _joined(thread: threading.Thread, timeout: float) -> bool:
    thread.join(timeout)
    return not thread.is_alive()


def new_follower_name() -> str:
    """A name no other follower has had: host, process and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Heartbeat:
    """When a follower must next publish its position, even with nothing new."""

    def __init__(self) -> None:
        self._next = 0.0

    def due(self) -> bool:
        return time.monotonic() >= self._next

    def beat(self) -> None:
        """Note a publication (also a failed one: the next try comes a beat later)."""
        self._next = time.monotonic() + HEARTBEAT_INTERVAL

    def seconds_left(self) -> float:
        return self._next - time.monotonic()


@dataclass(frozen=True, slots=True)
class FollowerState:
    """One follower as the backend lists it, for diagnostics (``kc-sso-check``).

    Read-only and never used by writes: a writer asks for the lagging followers itself
    (:class:`LaggingFollowers`).
    """

    #: ``"<hostname>:<pid>:<random>"``
    name: str
    #: the position it has applied (SQLite change id, Redis ``seq``)
    applied: int
    #: seconds since its last heartbeat, on the clock heartbeats use (this host's wall
    #: clock for SQLite, Redis' ``TIME`` for Redis)
    seen_age: float
    #: changes it has not applied yet: the newest position minus ``applied`` (0 or more)
    lag: int

    @property
    def alive(self) -> bool:
        """Whether writers wait for it (a heartbeat within :data:`FOLLOWER_STALE_AFTER`)."""
        return self.seen_age <= FOLLOWER_STALE_AFTER


# -- the acknowledgement wait ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Written:
    """A write that also waited for the other live followers (up to ``ack_timeout``)."""

    #: the position written (0 or less: nothing was written)
    position: int
    #: the live followers that had not applied it when the wait ended, ``(name, applied)``
    lagging: tuple[tuple[str, int], ...] = ()
    #: whether the store has applied the entries to this process's replica already
    applied: bool = False


@dataclass(frozen=True, slots=True)
class Write(Effect[int | Written | None]):
    """Claim ``jti`` (if any) and store ``entries`` durably, in one atomic step.

    The result is ``None`` for a replay (nothing written), else either the position every
    other live follower must reach (0 or less: none, nothing was written to wait for), or
    :class:`Written` when the store waited for them itself.  A backend failure is a
    StoreUnavailableError.
    """

    entries: tuple[Revocation, ...]
    jti: str | None
    jti_expires_at: float
    now: float


@dataclass(frozen=True, slots=True)
class LaggingFollowers(Effect[list[tuple[str, int]]]):
    """The live followers, other than the writer's own, not yet at ``position``:
    ``(name, applied)`` pairs.  A backend failure is a StoreUnavailableError."""

    position: int


@dataclass(frozen=True, slots=True)
class Pause(Effect[None]):
    """Sleep ``seconds`` (``time.sleep`` or ``asyncio.sleep``)."""

    seconds: float


def await_followers(store: str, position: int, ack_timeout: float) -> Flow[None]:
    """Wait until every other live follower has applied ``position``, or ``ack_timeout``.

    Never fails: the write is durable whatever happens here; a timeout or a failed check
    is logged, naming the followers that lag.
    """
    if ack_timeout <= 0:
        return
    deadline = time.monotonic() + ack_timeout
    while True:
        try:
            lagging = yield from LaggingFollowers(position)
        except StoreUnavailableError as exc:
            logger.warning(
                "%s: change %d is recorded, but whether every worker applied it could not "
                "be checked: %s",
                store,
                position,
                exc,
            )
            return
        if not lagging:
            return
        if time.monotonic() >= deadline:
            warn_lagging(store, position, ack_timeout, lagging)
            return
        yield from Pause(ACK_POLL)


def warn_lagging(
    store: str, position: int, ack_timeout: float, lagging: Sequence[tuple[str, int]]
) -> None:
    """Log that ``lagging`` followers had not applied ``position`` within ``ack_timeout``."""
    logger.warning(
        "%s: change %d is recorded, but after ack_timeout=%gs %d worker(s) had not "
        "applied it and may accept the revoked session(s) until they do: %s",
        store,
        position,
        ack_timeout,
        len(lagging),
        ", ".join(f"{name} (at {applied})" for name, applied in lagging),
    )


# -- the store base -----------------------------------------------------------------


class FollowingStore(ReplicaStore):
    """A store whose replica a follower thread keeps current: the part SQLite and Redis share.

    Subclasses implement :meth:`_follow` (the thread's body) and :meth:`_unregister`,
    record by driving :meth:`_record_flow` with a ``perform`` for its effects, and may
    hook into :meth:`start` (:meth:`_load`, :meth:`_started`), :meth:`close`
    (:meth:`_wake`, :meth:`_release`) and fork (:meth:`_set_aside_inherited`).  State that
    belongs to one process is set in :meth:`_init_process_state`, which fork runs again.
    """

    #: the store in messages ("SQLite store /var/lib/kc.db"); never a password
    description: str

    def __init__(self, *, max_entries: int, ack_timeout: float, timer: Callable[[], float]) -> None:
        self.ack_timeout = ack_timeout
        self._max_entries = max_entries
        self._timer = timer
        self._listeners = Listeners()
        #: jti claims this process made, until they expire (see recent_claims)
        self._claims: dict[str, float] = {}
        self._closed = False
        self._replica = Replica(max_entries, timer)
        self._init_process_state()
        _LIVE_STORES.add(self)

    def _init_process_state(self) -> None:
        self._lifecycle_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: this instance's name among the followers; new in every process (see fork)
        self.follower_name = new_follower_name()
        self._registered = False
        self._heartbeat = Heartbeat()
        self._status = StoreStatus(available=False, detail="not started")

    def status(self) -> StoreStatus:
        return self._status

    def _remember_claim(self, jti: str, expires_at: float) -> None:
        """Keep a ``jti`` this process claimed until it expires: if the shared store loses
        its data, the claim is written back with the entries, so a replay is still refused."""
        now = self._timer()
        claims = self._claims
        if len(claims) >= 1024 and len(claims) % 1024 == 0:
            for old in [k for k, until in claims.items() if until <= now]:
                del claims[old]
        claims[jti] = expires_at

    def recent_claims(self) -> list[tuple[str, float]]:
        """The unexpired ``jti`` claims this process made (for a repair)."""
        now = self._timer()
        return [(jti, until) for jti, until in list(self._claims.items()) if until > now]

    _status_listeners: tuple[StatusListener, ...] = ()

    @property
    def _status(self) -> StoreStatus:
        return self._current_status

    @_status.setter
    def _status(self, status: StoreStatus) -> None:
        previous: StoreStatus | None = getattr(self, "_current_status", None)
        self._current_status = status
        if previous is None or previous.available == status.available:
            return
        for listener in self._status_listeners:
            try:
                listener(status)
            except Exception:
                logger.exception("store status listener %r failed", listener)

    def add_status_listener(self, listener: StatusListener) -> None:
        self._status_listeners = (*self._status_listeners, listener)

    # -- for the subclasses' writes and followers ---------------------------------------

    def _admit(self, *, authenticated: bool) -> None:
        """Raise unless a write may go ahead: the store is open and, if the write is
        unauthenticated, the replica below its bound."""
        if self._closed:
            raise StoreUnavailableError(f"{self!r} is closed")
        self._replica.check_room(authenticated=authenticated, store=self.description)

    def _apply(self, entries: Sequence[Revocation]) -> None:
        """Apply entries to the replica; tell the listeners those that were new to it."""
        self._listeners.notify(self._replica.apply(entries))

    def record(
        self,
        revocations: Sequence[Revocation],
        *,
        jti: str | None = None,
        jti_expires_at: float = 0.0,
        authenticated: bool = True,
    ) -> bool:
        return drive(
            self._record_flow(revocations, jti, jti_expires_at, authenticated), self._perform
        )

    @abc.abstractmethod
    def _perform(self, effect: Effect[Any]) -> object:
        """Perform one effect of :meth:`_record_flow`, blocking."""

    @abc.abstractmethod
    def followers(self) -> list[FollowerState]:
        """Every follower the backend lists (live, or silent but not purged yet), by name.

        This store's own follower is among them (:attr:`follower_name`).  One read of the
        backend, no write; for diagnostics only.  Raises
        :class:`~kc_sso_middleware.errors.StoreUnavailableError` when it cannot be read.
        """

    def _record_flow(
        self,
        revocations: Sequence[Revocation],
        jti: str | None,
        jti_expires_at: float,
        authenticated: bool,
    ) -> Flow[bool]:
        """record(): the write, then the acknowledgement wait.

        The Redis store drives it with its own ``perform`` (blocking, or on the running
        loop).  The SQLite store has its own flow of the same steps, because its commit
        is shared by concurrent writers (group commit) and its acknowledgements are
        awaited once per batch.
        """
        now, live = self._admitted(revocations, authenticated)
        try:
            result = yield from Write(live, jti, jti_expires_at, now)
        except StoreUnavailableError as exc:
            raise self._not_recorded(exc) from exc
        if result is None:
            return False
        if jti is not None:
            self._remember_claim(jti, jti_expires_at)
        if not (isinstance(result, Written) and result.applied):
            self._apply(live)
        if isinstance(result, Written):
            if result.lagging:
                warn_lagging(self.description, result.position, self.ack_timeout, result.lagging)
        elif result > 0:
            yield from await_followers(self.description, result, self.ack_timeout)
        return True

    def _admitted(
        self, revocations: Sequence[Revocation], authenticated: bool
    ) -> tuple[float, tuple[Revocation, ...]]:
        """The start of every record flow: admitted (or refused), the time, and the
        entries still worth storing at it."""
        self._admit(authenticated=authenticated)
        now = self._timer()
        return now, tuple(entry for entry in revocations if entry.expires_at > now)

    def _not_recorded(self, exc: StoreUnavailableError) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"{self.description}: could not record revocations: {exc.description}"
        )

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        with self._lifecycle_lock:
            if self._closed:
                raise StoreUnavailableError(f"{self!r} is closed")
            if self._thread is not None:
                return
            self._load()
            self._thread = threading.Thread(
                target=self._follow, name=f"kc-sso-follower {self.description}", daemon=True
            )
            self._thread.start()
        self._started()

    def close(self) -> None:
        with self._lifecycle_lock:
            self._closed = True
            self._stop.set()
            thread, self._thread = self._thread, None
        self._wake()
        if thread is not None and thread is not threading.current_thread():
            # Again while it runs: a wake that came just before the follower blocked is
            # lost on it.
            while not _joined(thread, WAKE_AGAIN):
                self._wake()
        # After the join, so that no last heartbeat of the follower brings it back.
        self._status = StoreStatus(available=False, detail="closed", closed=True)
        self._unregister()
        self._release()
        _LIVE_STORES.discard(self)

    def _unregister_at_exit(self) -> None:
        """At interpreter exit: stop following, then unregister (bounded waits)."""
        if not self._registered or not self._status.available:
            return  # nothing to delete, or the backend is away and would delay the exit
        self._stop.set()
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            deadline = time.monotonic() + EXIT_JOIN_TIMEOUT
            while not _joined(thread, WAKE_AGAIN) and time.monotonic() < deadline:
                self._wake()
        self._unregister()

    def _reinit_after_fork(self) -> None:
        """Runs in a forked child: new process state and replica, follower restarted."""
        was_following = self._thread is not None
        self._set_aside_inherited()
        self._replica = Replica(self._max_entries, self._timer)
        self._init_process_state()
        if was_following and not self._closed:
            try:
                self.start()
            except (ConfigurationError, StoreUnavailableError) as exc:
                self._status = StoreStatus(available=False, detail=f"restart after fork: {exc}")
                logger.error("%s: restart after fork failed: %s", self.description, exc)

    # -- hooks ----------------------------------------------------------------------

    @abc.abstractmethod
    def _follow(self) -> None:
        """The follower thread: apply what others write until ``_stop`` is set."""

    @abc.abstractmethod
    def _unregister(self) -> None:
        """Delete this follower from the backend (best effort), if ``_registered``."""

    def _load(self) -> None:
        """In start(), before the follower starts; may raise (SQLite loads here)."""

    def _started(self) -> None:
        """At the end of start(), outside its lock (Redis waits for the first sync)."""

    def _wake(self) -> None:
        """Interrupt a follower blocked in a read, so that it sees ``_stop`` now."""

    def _release(self) -> None:
        """At close(), after unregistering: close connections."""

    def _set_aside_inherited(self) -> None:
        """In a forked child, before new process state: drop the parent's connections."""


# -- process hooks ----------------------------------------------------------------------

_LIVE_STORES: weakref.WeakSet[FollowingStore] = weakref.WeakSet()


def _reinit_stores_in_child() -> None:
    for store in list(_LIVE_STORES):
        store._reinit_after_fork()


def _unregister_stores_at_exit() -> None:
    for store in list(_LIVE_STORES):
        with contextlib.suppress(Exception):
            store._unregister_at_exit()


if hasattr(os, "register_at_fork"):  # POSIX only; Windows has no fork()
    os.register_at_fork(after_in_child=_reinit_stores_in_child)
atexit.register(_unregister_stores_at_exit)
