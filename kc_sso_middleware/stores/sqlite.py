"""``sqlite:///…``: revocations shared by every process of one host (the default store).

One database file, opened by every worker of the host.  No server, and the file survives
restarts.  It must live on a local filesystem: WAL mode needs shared memory, which network
filesystems do not provide; for several hosts use Redis.

The tables and the schema version check are in
:mod:`~kc_sso_middleware.stores._sqlite_schema`.  A file of another schema version (the
key-based rows of 0.1) is refused with a
:class:`~kc_sso_middleware.errors.ConfigurationError` at start(): its rows cannot be
turned into scoped entries, and silently starting afresh would forget revocations.

Propagation
-----------

:meth:`SQLiteStore.record` claims the ``jti`` and inserts the entries in one
``BEGIN IMMEDIATE`` transaction, then applies the entries to its own replica.  Every
process runs a follower thread that polls ``PRAGMA data_version`` every ``poll_interval``
seconds (default 10 ms), and every millisecond for 50 ms after it applied new rows
(logouts come in bursts).  That pragma reads a counter from the WAL index in shared
memory: no disk I/O and no lock, so polling is cheap.  When the counter changes, the
follower selects the rows above its last change id (and reads the table's
``AUTOINCREMENT`` counter first, so rows purged before it saw them cannot hold its
position back).  The start-up load is the same query from id 0.

Acknowledgements (see :mod:`~kc_sso_middleware.stores._following`)
-------------------------------------------------------------------

* A follower writes its row (``INSERT OR REPLACE``) whenever its position advances, and at
  least every second while idle.  It registers with ``applied = 0`` *before* its start-up
  load, so a writer either sees the new worker and waits for it, or committed before that
  load began and is part of it.
* After its commit, :meth:`~SQLiteStore.record` polls the table every millisecond until
  every other live row has ``applied`` at or above the id of its last inserted row, for
  at most ``ack_timeout``.  Rows silent for 30 seconds are deleted by the purge.
* Every write bumps ``data_version`` for every other connection, acknowledgements and
  heartbeats included.  A follower woken by one finds no rows above its position (one
  indexed query) and writes nothing, since it writes only when its position advanced or
  its heartbeat is due: the acknowledgements of one change end after one round.  The
  follower's own connection runs with ``synchronous=NORMAL`` (its rows need not survive a
  power loss), so a heartbeat costs no ``fsync``.

Forking: SQLite connections must not cross a ``fork()``.  In the child, every connection
inherited from the parent is set aside, never used and never closed.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote

from .._flows import Effect
from ..errors import ConfigurationError, StoreUnavailableError
from . import _sqlite_schema as sql
from ._following import (
    FOLLOWER_PURGE_AFTER,
    FOLLOWER_STALE_AFTER,
    FollowingStore,
    LaggingFollowers,
    Pause,
    Write,
)
from .model import Revocation, RevocationKind, StoreStatus
from .options import (
    ACK_TIMEOUT,
    BUSY_TIMEOUT,
    MAX_ENTRIES,
    POLL_INTERVAL,
    PURGE_INTERVAL,
    StoreURL,
    default_of,
    parse_store_url,
)

__all__ = ["SQLiteStore"]

logger = logging.getLogger(__name__)

# After applying new rows the follower polls every _HOT_POLL for _HOT_PERIOD: logouts
# come in bursts (one back-channel request per session and client), and each write of a
# burst then waits about a millisecond for its acknowledgements instead of a poll_interval.
_HOT_POLL = 0.001
_HOT_PERIOD = 0.05
# The follower reads new rows in pages so that a huge backlog (the start-up load) never
# holds one read transaction open for long; a long reader blocks WAL checkpoints.
_PAGE = 5000

# Connections opened before a fork(), set aside in the child: SQLite forbids using them
# there, and closing them could release or checkpoint state the parent still relies on.
_INHERITED: list[sqlite3.Connection] = []


class SQLiteStore(FollowingStore):
    """Revocations in a local SQLite file, followed by every process of the host.

    Longer than 200 lines because the follower shares this class's per-thread connections
    and position with record() and start(); apart from them it is the shared base.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        poll_interval: float = default_of(POLL_INTERVAL),
        max_entries: int = default_of(MAX_ENTRIES),
        busy_timeout_ms: int = default_of(BUSY_TIMEOUT),
        purge_interval: float = default_of(PURGE_INTERVAL),
        ack_timeout: float = default_of(ACK_TIMEOUT),
        timer: Callable[[], float] = time.time,
    ) -> None:
        self.path = os.fspath(path)
        self.description = f"SQLite store {self.path}"
        self.poll_interval = poll_interval
        self.busy_timeout_ms = busy_timeout_ms
        self.purge_interval = purge_interval
        super().__init__(max_entries=max_entries, ack_timeout=ack_timeout, timer=timer)

    def _init_process_state(self) -> None:
        super()._init_process_state()
        self._local = threading.local()
        # (owning thread, connection): strong references, so that a connection is closed
        # by us (when its thread has ended, or at close()) and not by the garbage collector
        # at an arbitrary moment, e.g. while the interpreter tears down threads after fork.
        self._connections: list[tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = []
        self._connections_lock = threading.Lock()
        self._schema_ready = False
        self._last_change_id = 0
        self._published = -1
        self._publish_failed = False

    @classmethod
    def from_url(cls, url: str, *, timer: Callable[[], float] = time.time) -> SQLiteStore:
        """``sqlite:////absolute/path.db`` or ``sqlite:///relative.db``, with options."""
        return cls.from_parsed(parse_store_url(url, schemes=frozenset({"sqlite"})), timer=timer)

    @classmethod
    def from_parsed(
        cls, parsed: StoreURL, *, timer: Callable[[], float] = time.time
    ) -> SQLiteStore:
        # Three slashes and a relative path, four for an absolute one (SQLAlchemy's
        # convention): the path after the empty host starts with the separating "/".
        path = unquote(parsed.parts.path[1:])
        if parsed.parts.netloc or not path:
            raise ConfigurationError(
                f"KC_SSO_STORE={parsed.redacted!r}: accepted forms are "
                "sqlite:////absolute/path.db and sqlite:///relative/path.db (no host)"
            )
        return cls(
            path,
            poll_interval=parsed[POLL_INTERVAL],
            max_entries=parsed[MAX_ENTRIES],
            busy_timeout_ms=parsed[BUSY_TIMEOUT],
            purge_interval=parsed[PURGE_INTERVAL],
            ack_timeout=parsed[ACK_TIMEOUT],
            timer=timer,
        )

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # -- logout paths ---------------------------------------------------------------

    def _perform(self, effect: Effect[Any]) -> object:
        """Perform one effect of the record flow on this thread's connection."""
        if isinstance(effect, Pause):
            time.sleep(effect.seconds)
            return None
        try:
            conn = self._connection()
            if isinstance(effect, Write):
                return sql.insert(
                    conn, effect.entries, effect.jti, effect.jti_expires_at, effect.now
                )
            if isinstance(effect, LaggingFollowers):
                seen_since = time.time() - FOLLOWER_STALE_AFTER
                return sql.lagging(conn, self.follower_name, seen_since, effect.position)
        except sqlite3.Error as exc:
            raise StoreUnavailableError(str(exc)) from exc
        raise TypeError(f"{self!r} cannot perform {effect!r}")

    # -- lifecycle ------------------------------------------------------------------

    def _load(self) -> None:
        """Create the file if needed, register, load every active entry.

        Raises :class:`~kc_sso_middleware.errors.ConfigurationError` when the directory
        cannot be created or written to, or the file has another schema, and
        :class:`~kc_sso_middleware.errors.StoreUnavailableError` when the database
        cannot be opened or read.
        """
        self._prepare_directory()
        try:
            conn = self._connection()
            # Register before loading: a writer that does not see this row yet
            # committed before the load below began, so the load includes its rows.
            sql.publish(conn, self.follower_name, 0)
            self._registered = True
            self._catch_up(conn)
            self._publish(conn)
        except sqlite3.Error as exc:
            self._unregister()
            raise StoreUnavailableError(
                f"{self.description}: could not open or read the database: {exc}"
            ) from exc
        self._status = StoreStatus(available=True)

    def _release(self) -> None:
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for _owner, conn in connections:
            conn.close()

    def _set_aside_inherited(self) -> None:
        _INHERITED.extend(conn for _owner, conn in self._connections)

    def _unregister(self) -> None:
        """Delete this instance's row, so that no writer waits for it (best effort)."""
        if not self._registered:
            return
        self._registered = False
        try:
            sql.unregister(self._connection(), self.follower_name)
        except (sqlite3.Error, ConfigurationError) as exc:  # it goes stale within seconds
            logger.debug("%s: could not unregister: %s", self.description, exc)

    # -- connections ----------------------------------------------------------------

    def _prepare_directory(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                f"KC_SSO_STORE: cannot create the directory {directory!r} for the SQLite "
                f"revocation store: {exc}"
            ) from exc
        # WAL mode creates -wal and -shm files next to the database, so the directory
        # itself must be writable, not only the file.
        if not os.access(directory, os.W_OK | os.X_OK) or (
            os.path.exists(self.path) and not os.access(self.path, os.R_OK | os.W_OK)
        ):
            raise ConfigurationError(
                f"KC_SSO_STORE: the SQLite revocation store {self.path!r} is not writable "
                "by this process; every worker needs read-write access to the file and to "
                "its directory"
            )

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 objects must not be used by two threads)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sql.connect(self.path, self.busy_timeout_ms / 1000)
            try:
                with self._connections_lock:
                    if not self._schema_ready:
                        sql.ensure_schema(conn, self.path)
                        self._schema_ready = True
                    alive = [(t, c) for t, c in self._connections if _is_alive(t)]
                    ended = [c for t, c in self._connections if not _is_alive(t)]
                    current = weakref.ref(threading.current_thread())
                    self._connections = [*alive, (current, conn)]
            except BaseException:
                conn.close()
                raise
            for stale in ended:
                stale.close()
            self._local.conn = conn
        return conn

    # -- follower -------------------------------------------------------------------

    def _catch_up(self, conn: sqlite3.Connection) -> None:
        """Apply every row above the last change id seen."""
        # Every id up to the counter read first is committed and, unless purged (expired),
        # read below; so the position reaches it even when its newest rows were purged.
        counter = sql.sequence(conn)
        while True:
            rows = sql.rows_after(conn, self._last_change_id, _PAGE)
            if rows:
                self._apply(_revocations(rows))
                self._last_change_id = rows[-1][0]
            if len(rows) < _PAGE:
                break
            if self._heartbeat.due():  # a long start-up load must not look like death
                self._publish(conn)
        self._last_change_id = max(self._last_change_id, counter)

    def _publish(self, conn: sqlite3.Connection) -> None:
        """Write this follower's position and heartbeat; failures only delay writers."""
        position = self._last_change_id
        self._heartbeat.beat()
        try:
            sql.publish(conn, self.follower_name, position)
        except sqlite3.Error as exc:
            if not self._publish_failed:
                logger.warning(
                    "%s: could not publish this worker's position (writers wait up to "
                    "ack_timeout for it): %s",
                    self.description,
                    exc,
                )
            self._publish_failed = True
            return
        self._publish_failed = False
        self._published = position

    def _follow(self) -> None:
        last_version: int | None = None
        next_purge = time.monotonic() + self.purge_interval
        hot_until = 0.0
        tuned = False
        while True:
            # Never sleep past a due heartbeat, whatever the poll interval.
            pause = min(self.poll_interval, self._heartbeat.seconds_left())
            if time.monotonic() < hot_until:
                pause = min(pause, _HOT_POLL)
            if self._stop.wait(max(pause, 0.0)):
                break
            try:
                conn = self._connection()
                if not tuned:
                    # Heartbeats and purges need not survive a power loss: no fsync for
                    # them.  record() commits on other connections, still with FULL.
                    conn.execute("PRAGMA synchronous=NORMAL")
                    tuned = True
                # data_version changes whenever another connection (any process, or
                # record() in this one) commits; read it before the rows so a commit
                # landing in between is caught by the next poll.
                version = sql.data_version(conn)
                if version != last_version:
                    before = self._last_change_id
                    self._catch_up(conn)
                    last_version = version
                    # Only new revocations heat the loop up: acknowledgements and
                    # heartbeats also change data_version, but find no rows.
                    if self._last_change_id != before:
                        hot_until = time.monotonic() + _HOT_PERIOD
                # At once when the position advanced (a writer is waiting for it); else
                # only when the heartbeat is due, so acknowledgements never cascade.
                if self._last_change_id != self._published or self._heartbeat.due():
                    self._publish(conn)
                self._replica.expire()
                if time.monotonic() >= next_purge:
                    # Heartbeats are wall-clock time on this host, not the injected timer.
                    sql.purge(conn, self._timer(), time.time() - FOLLOWER_PURGE_AFTER)
                    next_purge = time.monotonic() + self.purge_interval
            except Exception as exc:
                # Keep following: the error may be transient (a locked or full disk).
                # Meanwhile the status tells the core that the replica may be stale.
                if self._status.available:
                    logger.warning("%s: follower failed: %s", self.description, exc)
                self._status = StoreStatus(available=False, detail=f"follower failed: {exc}")
                last_version = None
                continue
            if not self._status.available and not self._stop.is_set():
                logger.info("%s: follower recovered", self.description)
                self._status = StoreStatus(available=True)


def _is_alive(owner: weakref.ref[threading.Thread]) -> bool:
    thread = owner()
    return thread is not None and thread.is_alive()


def _revocations(rows: Iterable[sql.Row]) -> list[Revocation]:
    return [
        Revocation(RevocationKind(kind), subject, not_before, expires_at, label)
        for _change_id, kind, subject, not_before, expires_at, label in rows
    ]
