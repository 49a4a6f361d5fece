"""``sqlite:///…``: revocations shared by every process of one host (the default store).

One database file, opened by every worker of the host.  No server, and the file survives
restarts.  It must live on a local filesystem: WAL mode needs shared memory, which network
filesystems do not provide; for several hosts use Redis.

Tables
------

``revocations``
    ``change_id`` (``INTEGER PRIMARY KEY AUTOINCREMENT``), ``kind``, ``key``,
    ``not_before``, ``expires_at``.  Rows are only ever appended (a later ``not_before``
    for the same user is a new row; the replica keeps the maximum) and deleted once
    expired.  ``AUTOINCREMENT`` guarantees a change id is never reused, even after the
    newest row was purged, so "every row above the last id I saw" is exactly "what I
    have not applied yet".  Writers are serialised by SQLite (``BEGIN IMMEDIATE``), so
    ids also become visible in increasing order.
``claimed_jtis``
    ``jti`` (primary key), ``expires_at``: the back-channel replay cache.

Propagation
-----------

:meth:`SQLiteStore.record` claims the ``jti`` and inserts the entries in one
``BEGIN IMMEDIATE`` transaction, then applies the entries to its own replica.  Every
process runs a follower thread that polls ``PRAGMA data_version`` every
``poll_interval`` seconds (default 10 ms), and every millisecond for 50 ms after it
applied new rows (logouts come in bursts).  That pragma reads a counter from the WAL
index in shared memory: no disk I/O and no lock, so polling is cheap.  When the counter
changes, the follower selects the rows above its last change id (and reads the table's
``AUTOINCREMENT`` counter first, so rows purged before it saw them cannot hold its
position back).  The start-up load is the same query from id 0.

Acknowledgements
----------------

A back-channel logout reaches one worker, and Keycloak's 200 must mean that *every*
worker refuses the session from then on.  So :meth:`~SQLiteStore.record` returns only
once every live follower has applied the new rows:

``followers``
    ``worker`` (primary key: ``"<hostname>:<pid>:<random>"``, one per store instance and
    process), ``applied`` (the highest change id the follower has applied), ``seen``
    (epoch seconds of its last heartbeat).

* A follower writes its row (``INSERT OR REPLACE``) whenever its position advances, and
  at least every second while idle (the heartbeat).  It registers with ``applied = 0``
  *before* its start-up load, so a writer either sees the new worker and waits for it,
  or committed before that load began and is part of it.
* After its commit, :meth:`~SQLiteStore.record` polls the table every millisecond until
  every other row whose ``seen`` is at most 3 seconds old has ``applied`` at or above the
  id of its last inserted row.  A row older than that belongs to a dead or hung worker
  and is ignored (and deleted after 30 seconds), so a crashed worker never blocks a
  logout.  The wait is bounded by ``ack_timeout`` (default 1 s, ``0`` disables it); when
  it runs out, the write is still a success (it is durable) and a warning names the
  followers that lag.  A ``jti`` replay returns at once.
* Every write bumps ``data_version`` for every other connection, acknowledgements and
  heartbeats included.  A follower woken by one finds no rows above its position (one
  indexed query) and writes nothing, since it writes only when its position advanced or
  its heartbeat is due: the acknowledgements of one change end after one round.  The
  follower's own connection runs with ``synchronous=NORMAL`` (its rows need not survive
  a power loss), so a heartbeat costs no ``fsync``.
* :meth:`~SQLiteStore.close` deletes the instance's row, and so does a normal
  interpreter exit (``atexit``), since servers seldom close a worker's store.

Forking (``gunicorn --preload``): SQLite connections must not cross a ``fork()``.  In
the child, every connection inherited from the parent is set aside, never used and never
closed.  The child opens its own connections, reloads a fresh replica (the parent's
replica lock may have been held at the moment of the fork), and restarts the follower if
the parent had started one.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import ConfigurationError, StoreUnavailableError
from . import _process
from .base import Revocation, RevocationKind, RevocationStore, StoreStatus
from .replica import DEFAULT_MAX_ENTRIES, Replica

__all__ = ["SQLiteStore"]

logger = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL = 0.01
DEFAULT_BUSY_TIMEOUT_MS = 5000
DEFAULT_PURGE_INTERVAL = 60.0
DEFAULT_ACK_TIMEOUT = 1.0

#: seconds between a follower's heartbeats while idle
HEARTBEAT_INTERVAL = 1.0
#: a follower whose heartbeat is older than this is dead or hung and is not waited for
FOLLOWER_STALE_AFTER = 3.0
#: rows of followers silent for this long are deleted
_FOLLOWER_PURGE_AFTER = 30.0
#: how often record() checks the followers' positions while it waits
_ACK_POLL = 0.001
# After applying new rows the follower polls every _HOT_POLL for _HOT_PERIOD: logouts
# come in bursts (one back-channel request per session and client), and each write of a
# burst then waits about a millisecond for its acknowledgements instead of a poll_interval.
_HOT_POLL = 0.001
_HOT_PERIOD = 0.05
_EXIT_JOIN_TIMEOUT = 1.0

# The follower reads new rows in pages so that a huge backlog (the start-up load) never
# holds one read transaction open for long; a long reader blocks WAL checkpoints.
_PAGE = 5000

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS revocations (
    change_id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    not_before REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS revocations_expires_at ON revocations (expires_at);
CREATE TABLE IF NOT EXISTS claimed_jtis (
    jti TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS claimed_jtis_expires_at ON claimed_jtis (expires_at);
CREATE TABLE IF NOT EXISTS followers (
    worker TEXT PRIMARY KEY,
    applied INTEGER NOT NULL,
    seen REAL NOT NULL
) WITHOUT ROWID;
COMMIT;
"""

# A claim whose expiry has passed no longer counts (the memory store's TTL cache
# forgets it too), so an expired row that has not been purged yet is taken over.
_CLAIM_JTI = """
INSERT INTO claimed_jtis (jti, expires_at) VALUES (?, ?)
ON CONFLICT (jti) DO UPDATE SET expires_at = excluded.expires_at
WHERE claimed_jtis.expires_at <= ?
"""

_INSERT = "INSERT INTO revocations (kind, key, not_before, expires_at) VALUES (?, ?, ?, ?)"

_SELECT_AFTER = (
    "SELECT change_id, kind, key, not_before, expires_at FROM revocations"
    " WHERE change_id > ? ORDER BY change_id LIMIT ?"
)

# The AUTOINCREMENT counter: every id up to it is committed (writers are serialised).
_SELECT_SEQUENCE = "SELECT seq FROM sqlite_sequence WHERE name = 'revocations'"

_PUBLISH = "INSERT OR REPLACE INTO followers (worker, applied, seen) VALUES (?, ?, ?)"

_SELECT_LAGGING = (
    "SELECT worker, applied FROM followers"
    " WHERE worker != ? AND seen >= ? AND applied < ? ORDER BY worker"
)

_OPTIONS = {
    "poll_interval": "seconds between change checks (default 0.01)",
    "max_entries": "replica size bound (default 1000000)",
    "busy_timeout": "milliseconds to wait for another writer's lock (default 5000)",
    "purge_interval": "seconds between deletions of expired rows (default 60)",
    "ack_timeout": "seconds record() waits for every live worker to apply a write "
    "(default 1, 0 to not wait)",
}

# Connections opened before a fork(), set aside in the child: SQLite forbids using them
# there, and closing them could release or checkpoint state the parent still relies on.
_INHERITED: list[sqlite3.Connection] = []


class SQLiteStore(RevocationStore):
    """Revocations in a local SQLite file, followed by every process of the host."""

    scheme = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        purge_interval: float = DEFAULT_PURGE_INTERVAL,
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
        timer: Callable[[], float] = time.time,
    ) -> None:
        self.path = os.fspath(path)
        self.poll_interval = poll_interval
        self.busy_timeout_ms = busy_timeout_ms
        self.purge_interval = purge_interval
        self.ack_timeout = ack_timeout
        self._timer = timer
        self.replica = Replica(max_entries, timer)
        self._closed = False
        self._init_process_state()
        _process.track(self)

    def _init_process_state(self) -> None:
        """Everything that belongs to one process: connections, locks, the follower."""
        self._local = threading.local()
        # (owning thread, connection): strong references, so that a connection is closed
        # by us (when its thread has ended, or at close()) and not by the garbage collector
        # at an arbitrary moment, e.g. while the interpreter tears down threads after fork.
        self._connections: list[tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = []
        self._connections_lock = threading.Lock()
        self._lifecycle_lock = threading.Lock()
        self._schema_ready = False
        self._last_change_id = 0
        #: this instance's row in ``followers``; new in every process (see fork)
        self.follower_name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._registered = False
        self._published = -1
        self._next_heartbeat = 0.0
        self._publish_failed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._status = StoreStatus(available=False, detail="not started")

    @classmethod
    def from_url(cls, url: str, *, timer: Callable[[], float] = time.time) -> SQLiteStore:
        """``sqlite:////absolute/path.db`` or ``sqlite:///relative.db``, with options.

        Options (query string): ``poll_interval``, ``max_entries``, ``busy_timeout``
        (ms), ``purge_interval``, ``ack_timeout`` (seconds, ``0`` allowed).
        """
        parts = urlsplit(url)
        if parts.scheme != "sqlite":
            raise ConfigurationError(f"KC_SSO_STORE={url!r} is not a sqlite:/// URL")
        # Three slashes and a relative path, four for an absolute one (SQLAlchemy's
        # convention): the path after the empty host starts with the separating "/".
        path = unquote(parts.path[1:])
        if parts.netloc or not path:
            raise ConfigurationError(
                f"KC_SSO_STORE={url!r}: accepted forms are sqlite:////absolute/path.db "
                "and sqlite:///relative/path.db (no host)"
            )
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = set(query) - set(_OPTIONS)
        if unknown:
            accepted = "; ".join(f"{name}: {meaning}" for name, meaning in _OPTIONS.items())
            raise ConfigurationError(
                f"KC_SSO_STORE={url!r}: unknown option(s) {sorted(unknown)}; accepted: {accepted}"
            )

        def option(
            name: str, parse: Callable[[str], float], default: float, *, zero: bool = False
        ) -> float:
            if name not in query:
                return default
            raw = query[name][-1]
            try:
                value = parse(raw)
            except ValueError:
                value = -1
            if not (value > 0 or (zero and value == 0)) or math.isinf(value):  # nan too
                kind = "a non-negative" if zero else "a positive"
                raise ConfigurationError(
                    f"KC_SSO_STORE={url!r}: {name}={raw!r} must be {kind} number ({_OPTIONS[name]})"
                )
            return value

        return cls(
            path,
            poll_interval=option("poll_interval", float, DEFAULT_POLL_INTERVAL),
            max_entries=int(option("max_entries", int, DEFAULT_MAX_ENTRIES)),
            busy_timeout_ms=int(option("busy_timeout", int, DEFAULT_BUSY_TIMEOUT_MS)),
            purge_interval=option("purge_interval", float, DEFAULT_PURGE_INTERVAL),
            ack_timeout=option("ack_timeout", float, DEFAULT_ACK_TIMEOUT, zero=True),
            timer=timer,
        )

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # -- request path -------------------------------------------------------------

    def status(self) -> StoreStatus:
        return self._status

    # -- logout paths ---------------------------------------------------------------

    def record(
        self,
        revocations: Sequence[Revocation],
        *,
        jti: str | None = None,
        jti_expires_at: float = 0.0,
    ) -> bool:
        if self._closed:
            raise StoreUnavailableError(f"{self!r} is closed")
        now = self._timer()
        rows = [
            (entry.kind.value, entry.key, entry.not_before, entry.expires_at)
            for entry in revocations
            if entry.expires_at > now
        ]
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                if (
                    jti is not None
                    and not conn.execute(_CLAIM_JTI, (jti, jti_expires_at, now)).rowcount
                ):
                    conn.execute("ROLLBACK")
                    return False
                conn.executemany(_INSERT, rows)
                # executemany() leaves Cursor.lastrowid alone; the connection knows.
                position = conn.execute("SELECT last_insert_rowid()").fetchone()[0] if rows else 0
                conn.execute("COMMIT")
            finally:
                # Reached with a transaction still open only when a statement failed.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise StoreUnavailableError(
                f"SQLite store {self.path}: could not record revocations: {exc}"
            ) from exc
        self.replica.apply(revocations)
        if position:
            self._await_followers(conn, position)
        return True

    def _await_followers(self, conn: sqlite3.Connection, position: int) -> None:
        """Wait until every other live follower has applied ``position``, or ack_timeout.

        Never raises: the write is durable whatever happens here.
        """
        if self.ack_timeout <= 0:
            return
        deadline = time.monotonic() + self.ack_timeout
        while True:
            try:
                lagging: list[tuple[str, int]] = conn.execute(
                    _SELECT_LAGGING,
                    (self.follower_name, time.time() - FOLLOWER_STALE_AFTER, position),
                ).fetchall()
            except sqlite3.Error as exc:
                logger.warning(
                    "SQLite store %s: change %d is recorded, but whether every worker applied "
                    "it could not be checked: %s",
                    self.path,
                    position,
                    exc,
                )
                return
            if not lagging:
                return
            if time.monotonic() >= deadline:
                logger.warning(
                    "SQLite store %s: change %d is recorded, but after ack_timeout=%gs "
                    "%d worker(s) had not applied it and may accept the revoked session(s) "
                    "until they do: %s",
                    self.path,
                    position,
                    self.ack_timeout,
                    len(lagging),
                    ", ".join(f"{name} (at {applied})" for name, applied in lagging),
                )
                return
            time.sleep(_ACK_POLL)

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Create the file if needed, load every active entry, start the follower.

        Raises :class:`~kc_sso_middleware.errors.ConfigurationError` when the directory
        cannot be created or written to, and
        :class:`~kc_sso_middleware.errors.StoreUnavailableError` when the database
        cannot be opened or read.
        """
        with self._lifecycle_lock:
            if self._closed:
                raise StoreUnavailableError(f"{self!r} is closed")
            if self._thread is not None:
                return
            self._prepare_directory()
            try:
                conn = self._connection()
                # Register before loading: a writer that does not see this row yet
                # committed before the load below began, so the load includes its rows.
                conn.execute(_PUBLISH, (self.follower_name, 0, time.time()))
                self._registered = True
                self._catch_up(conn)
                self._publish(conn)
            except sqlite3.Error as exc:
                self._unregister()
                raise StoreUnavailableError(
                    f"SQLite store {self.path}: could not open or read the database: {exc}"
                ) from exc
            self._status = StoreStatus(available=True)
            self._thread = threading.Thread(
                target=self._follow, name=f"kc-sso-sqlite-follower {self.path}", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        with self._lifecycle_lock:
            self._closed = True
            self._stop.set()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        # After the join, so that a last follower iteration cannot overwrite it.
        self._status = StoreStatus(available=False, detail="closed")
        self._unregister()
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for _owner, conn in connections:
            conn.close()
        _process.forget(self)

    # -- internals ------------------------------------------------------------------

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
            conn = self._open()
            self._local.conn = conn
        return conn

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: the sqlite3 module must not open transactions on its own;
        # record() issues BEGIN IMMEDIATE itself.  check_same_thread=False only so that
        # close() may close every thread's connection; each is still used by one thread.
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(
                    f"WAL journal mode is unavailable (got {mode!r}); the file must be on a "
                    "local filesystem"
                )
            # A logout acknowledged to Keycloak must survive a power loss: with NORMAL,
            # WAL commits are not fsynced and the last revocations could vanish.
            conn.execute("PRAGMA synchronous=FULL")
            with self._connections_lock:
                if not self._schema_ready:
                    conn.executescript(_SCHEMA)
                    self._schema_ready = True
                alive = [(t, c) for t, c in self._connections if _is_alive(t)]
                ended = [c for t, c in self._connections if not _is_alive(t)]
                self._connections = [*alive, (weakref.ref(threading.current_thread()), conn)]
        except BaseException:
            conn.close()
            raise
        for stale in ended:
            stale.close()
        return conn

    def _catch_up(self, conn: sqlite3.Connection) -> None:
        """Apply every row above the last change id seen."""
        # Every id up to the counter read first is committed and, unless purged (expired),
        # read below; so the position reaches it even when its newest rows were purged.
        counter = conn.execute(_SELECT_SEQUENCE).fetchone()
        while True:
            rows = conn.execute(_SELECT_AFTER, (self._last_change_id, _PAGE)).fetchall()
            if rows:
                self.replica.apply(_revocations(rows))
                self._last_change_id = rows[-1][0]
            if len(rows) < _PAGE:
                break
            # A long start-up load must not look like a dead worker.
            if time.monotonic() >= self._next_heartbeat:
                self._publish(conn)
        if counter is not None and counter[0] > self._last_change_id:
            self._last_change_id = counter[0]

    def _publish(self, conn: sqlite3.Connection) -> None:
        """Write this follower's position and heartbeat; failures only delay writers."""
        position = self._last_change_id
        # Also after a failure: the next attempt comes with the next poll, not in a loop.
        self._next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL
        try:
            conn.execute(_PUBLISH, (self.follower_name, position, time.time()))
        except sqlite3.Error as exc:
            if not self._publish_failed:
                logger.warning(
                    "SQLite store %s: could not publish this worker's position (writers "
                    "wait up to ack_timeout for it): %s",
                    self.path,
                    exc,
                )
            self._publish_failed = True
            return
        self._publish_failed = False
        self._published = position

    def _unregister_at_exit(self) -> None:
        """At interpreter exit: stop following, then delete the row (bounded waits)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_EXIT_JOIN_TIMEOUT)  # so that no last heartbeat brings it back
        self._unregister()

    def _unregister(self) -> None:
        """Delete this instance's row, so that no writer waits for it (best effort)."""
        if not self._registered:
            return
        self._registered = False
        try:
            self._connection().execute(
                "DELETE FROM followers WHERE worker = ?", (self.follower_name,)
            )
        except sqlite3.Error as exc:  # it goes stale and is ignored within seconds
            logger.debug("SQLite store %s: could not unregister: %s", self.path, exc)

    def _purge(self, conn: sqlite3.Connection) -> None:
        now = self._timer()
        conn.execute("DELETE FROM revocations WHERE expires_at <= ?", (now,))
        conn.execute("DELETE FROM claimed_jtis WHERE expires_at <= ?", (now,))
        # Heartbeats are wall-clock time on this host, not the injectable timer.
        conn.execute("DELETE FROM followers WHERE seen < ?", (time.time() - _FOLLOWER_PURGE_AFTER,))

    def _follow(self) -> None:
        last_version: int | None = None
        next_purge = time.monotonic() + self.purge_interval
        hot_until = 0.0
        tuned = False
        while True:
            now = time.monotonic()
            # Never sleep past a due heartbeat, whatever the poll interval.
            pause = min(self.poll_interval, self._next_heartbeat - now)
            if now < hot_until:
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
                # landing in between is caught by the next poll.  Acknowledgements
                # change it too; then the query below finds nothing and costs little.
                version = conn.execute("PRAGMA data_version").fetchone()[0]
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
                if (
                    self._last_change_id != self._published
                    or time.monotonic() >= self._next_heartbeat
                ):
                    self._publish(conn)
                if time.monotonic() >= next_purge:
                    self._purge(conn)
                    next_purge = time.monotonic() + self.purge_interval
            except Exception as exc:
                # Keep following: the error may be transient (a locked or full disk).
                # Meanwhile the status tells the core that the replica may be stale.
                if self._status.available:
                    logger.warning("SQLite store %s: follower failed: %s", self.path, exc)
                self._status = StoreStatus(available=False, detail=f"follower failed: {exc}")
                last_version = None
                continue
            if not self._status.available and not self._stop.is_set():
                logger.info("SQLite store %s: follower recovered", self.path)
                self._status = StoreStatus(available=True)

    def _reinit_after_fork(self) -> None:
        """Runs in a forked child: drop the parent's connections, reload, refollow."""
        was_following = self._thread is not None
        _INHERITED.extend(conn for _owner, conn in self._connections)
        # A fresh replica: the parent's replica lock may have been held by another thread
        # at the moment of the fork, and would then stay locked forever in the child.
        self.replica = Replica(self.replica.max_entries, self._timer)
        self._init_process_state()
        if was_following and not self._closed:
            try:
                self.start()
            except (ConfigurationError, StoreUnavailableError) as exc:
                self._status = StoreStatus(available=False, detail=f"restart after fork: {exc}")
                logger.error("SQLite store %s: restart after fork failed: %s", self.path, exc)


def _is_alive(owner: weakref.ref[threading.Thread]) -> bool:
    thread = owner()
    return thread is not None and thread.is_alive()


def _revocations(rows: Iterable[tuple[int, str, str, float, float]]) -> Iterable[Revocation]:
    for _change_id, kind, key, not_before, expires_at in rows:
        yield Revocation(RevocationKind(kind), key, not_before, expires_at)
