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
``poll_interval`` seconds (default 10 ms).  That pragma reads a counter from the WAL
index in shared memory: no disk I/O and no lock, so polling is cheap.  When the counter
changes, the follower selects the rows above its last change id.  The start-up load is
the same query from id 0.

Forking (``gunicorn --preload``): SQLite connections must not cross a ``fork()``.  In
the child, every connection inherited from the parent is set aside, never used and never
closed.  The child opens its own connections, reloads a fresh replica (the parent's
replica lock may have been held at the moment of the fork), and restarts the follower if
the parent had started one.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import ConfigurationError, StoreUnavailableError
from .base import Revocation, RevocationKind, RevocationStore, StoreStatus
from .replica import DEFAULT_MAX_ENTRIES, Replica

__all__ = ["SQLiteStore"]

logger = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL = 0.01
DEFAULT_BUSY_TIMEOUT_MS = 5000
DEFAULT_PURGE_INTERVAL = 60.0

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

_OPTIONS = {
    "poll_interval": "seconds between change checks (default 0.01)",
    "max_entries": "replica size bound (default 1000000)",
    "busy_timeout": "milliseconds to wait for another writer's lock (default 5000)",
    "purge_interval": "seconds between deletions of expired rows (default 60)",
}

# Connections opened before a fork(), set aside in the child: SQLite forbids using them
# there, and closing them could release or checkpoint state the parent still relies on.
_INHERITED: list[sqlite3.Connection] = []
_LIVE_STORES: weakref.WeakSet[SQLiteStore] = weakref.WeakSet()


def _reinit_stores_in_child() -> None:
    for store in list(_LIVE_STORES):
        store._reinit_after_fork()


if hasattr(os, "register_at_fork"):  # POSIX only; Windows has no fork()
    os.register_at_fork(after_in_child=_reinit_stores_in_child)


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
        timer: Callable[[], float] = time.time,
    ) -> None:
        self.path = os.fspath(path)
        self.poll_interval = poll_interval
        self.busy_timeout_ms = busy_timeout_ms
        self.purge_interval = purge_interval
        self._timer = timer
        self.replica = Replica(max_entries, timer)
        self._closed = False
        self._init_process_state()
        _LIVE_STORES.add(self)

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
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._status = StoreStatus(available=False, detail="not started")

    @classmethod
    def from_url(cls, url: str, *, timer: Callable[[], float] = time.time) -> SQLiteStore:
        """``sqlite:////absolute/path.db`` or ``sqlite:///relative.db``, with options.

        Options (query string): ``poll_interval``, ``max_entries``, ``busy_timeout``
        (ms), ``purge_interval``.
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

        def option(name: str, parse: Callable[[str], float], default: float) -> float:
            if name not in query:
                return default
            raw = query[name][-1]
            try:
                value = parse(raw)
            except ValueError:
                value = -1
            if not value > 0:  # also rejects nan
                raise ConfigurationError(
                    f"KC_SSO_STORE={url!r}: {name}={raw!r} must be a positive number "
                    f"({_OPTIONS[name]})"
                )
            return value

        return cls(
            path,
            poll_interval=option("poll_interval", float, DEFAULT_POLL_INTERVAL),
            max_entries=int(option("max_entries", int, DEFAULT_MAX_ENTRIES)),
            busy_timeout_ms=int(option("busy_timeout", int, DEFAULT_BUSY_TIMEOUT_MS)),
            purge_interval=option("purge_interval", float, DEFAULT_PURGE_INTERVAL),
            timer=timer,
        )

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # -- request path -------------------------------------------------------------

    def is_revoked(self, sid: str | None, sub: str | None, login_time: float | None) -> bool:
        return self.replica.is_revoked(sid, sub, login_time)

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
                if jti is not None and not conn.execute(
                    _CLAIM_JTI, (jti, jti_expires_at, now)
                ).rowcount:
                    conn.execute("ROLLBACK")
                    return False
                conn.executemany(_INSERT, rows)
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
        return True

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
                self._catch_up(self._connection())
            except sqlite3.Error as exc:
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
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for _owner, conn in connections:
            conn.close()
        _LIVE_STORES.discard(self)

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
        while True:
            rows = conn.execute(_SELECT_AFTER, (self._last_change_id, _PAGE)).fetchall()
            if not rows:
                return
            self.replica.apply(_revocations(rows))
            self._last_change_id = rows[-1][0]
            if len(rows) < _PAGE:
                return

    def _purge(self, conn: sqlite3.Connection) -> None:
        now = self._timer()
        conn.execute("DELETE FROM revocations WHERE expires_at <= ?", (now,))
        conn.execute("DELETE FROM claimed_jtis WHERE expires_at <= ?", (now,))

    def _follow(self) -> None:
        last_version: int | None = None
        next_purge = time.monotonic() + self.purge_interval
        while not self._stop.wait(self.poll_interval):
            try:
                conn = self._connection()
                # data_version changes whenever another connection (any process, or
                # record() in this one) commits; read it before the rows so a commit
                # landing in between is caught by the next poll.
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version != last_version:
                    self._catch_up(conn)
                    last_version = version
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
