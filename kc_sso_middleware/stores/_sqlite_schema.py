"""The SQLite store's schema and statements, one small function per statement.

Every function takes the calling thread's connection and lets ``sqlite3.Error`` through:
the store (:mod:`kc_sso_middleware.stores.sqlite`) decides what a failure means.

Tables (schema version 2, in ``PRAGMA user_version``)
-----------------------------------------------------

``revocations``
    ``change_id`` (``INTEGER PRIMARY KEY AUTOINCREMENT``), ``kind``, ``subject`` (the
    entry's 60-bit digest, see :mod:`~kc_sso_middleware.stores.model`), ``not_before``,
    ``expires_at``, ``label`` (the plain key, or NULL).  Rows are only ever appended (a later
    ``not_before`` for the same user is a new row; the replica keeps the maximum) and
    deleted once expired.  ``AUTOINCREMENT`` guarantees a change id is never reused, even
    after the newest row was purged, so "every row above the last id I saw" is exactly
    "what I have not applied yet".  Writers are serialised by SQLite (``BEGIN IMMEDIATE``),
    so ids also become visible in increasing order.
``claimed_jtis``
    ``jti`` (primary key), ``expires_at``: the back-channel replay cache.
``followers``
    ``worker`` (the follower's name), ``applied`` (the highest change id it has applied),
    ``seen`` (epoch seconds of its last heartbeat).

:func:`ensure_schema` creates the tables in a new file and refuses a file of any other
version: 0.1 left ``user_version`` at 0 with a key-based ``revocations`` table (version 1).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from ..errors import ConfigurationError
from .model import Revocation

__all__ = ["SCHEMA_VERSION", "connect", "ensure_schema", "insert"]

#: ``PRAGMA user_version`` of the files this module writes.  1 was the key-based schema
#: of 0.1 (it left user_version at 0).
SCHEMA_VERSION = 2

#: change_id, kind, subject, not_before, expires_at, label
Row = tuple[int, str, int, float, float, str | None]

_TABLES = (
    """
    CREATE TABLE IF NOT EXISTS revocations (
        change_id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        subject INTEGER NOT NULL,
        not_before REAL NOT NULL,
        expires_at REAL NOT NULL,
        label TEXT
    )
    """,
    "CREATE INDEX IF NOT EXISTS revocations_expires_at ON revocations (expires_at)",
    """
    CREATE TABLE IF NOT EXISTS claimed_jtis (
        jti TEXT PRIMARY KEY,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID
    """,
    "CREATE INDEX IF NOT EXISTS claimed_jtis_expires_at ON claimed_jtis (expires_at)",
    """
    CREATE TABLE IF NOT EXISTS followers (
        worker TEXT PRIMARY KEY,
        applied INTEGER NOT NULL,
        seen REAL NOT NULL
    ) WITHOUT ROWID
    """,
)

# A claim whose expiry has passed no longer counts (the memory store forgets it too),
# so an expired row that has not been purged yet is taken over.
_CLAIM_JTI = """
INSERT INTO claimed_jtis (jti, expires_at) VALUES (?, ?)
ON CONFLICT (jti) DO UPDATE SET expires_at = excluded.expires_at
WHERE claimed_jtis.expires_at <= ?
"""

_INSERT = (
    "INSERT INTO revocations (kind, subject, not_before, expires_at, label) VALUES (?, ?, ?, ?, ?)"
)

_SELECT_AFTER = (
    "SELECT change_id, kind, subject, not_before, expires_at, label FROM revocations"
    " WHERE change_id > ? ORDER BY change_id LIMIT ?"
)

_PUBLISH = "INSERT OR REPLACE INTO followers (worker, applied, seen) VALUES (?, ?, ?)"

_SELECT_LAGGING = (
    "SELECT worker, applied FROM followers"
    " WHERE worker != ? AND seen >= ? AND applied < ? ORDER BY worker"
)


def connect(path: str, busy_timeout: float) -> sqlite3.Connection:
    """A connection in WAL mode with ``synchronous=FULL``."""
    # isolation_level=None: the sqlite3 module must not open transactions on its own;
    # insert() issues BEGIN IMMEDIATE itself.  check_same_thread=False only so that
    # close() may close every thread's connection; each is still used by one thread.
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(
                f"WAL journal mode is unavailable (got {mode!r}); the file must be on a "
                "local filesystem"
            )
        # A logout acknowledged to Keycloak must survive a power loss: with NORMAL, WAL
        # commits are not fsynced and the last revocations could vanish.
        conn.execute("PRAGMA synchronous=FULL")
    except BaseException:
        conn.close()
        raise
    return conn


def ensure_schema(conn: sqlite3.Connection, path: str) -> None:
    """Create the tables in a new file; refuse a file of another schema version."""
    if _version(conn) == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")  # two workers creating the same file: one at a time
    try:
        version = _version(conn)
        if (
            version == 0
            and conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'revocations'"
            ).fetchone()
        ):
            version = 1
        if version == 0:
            for statement in _TABLES:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            written_by = "an older" if version < SCHEMA_VERSION else "a newer"
            raise ConfigurationError(
                f"KC_SSO_STORE: the SQLite revocation store {path!r} has schema version "
                f"{version}, written by {written_by} kc_sso_middleware; this one reads only "
                f"version {SCHEMA_VERSION}.  Point KC_SSO_STORE to a new file, or delete this "
                "one (with its -wal and -shm files) once no worker of the other version "
                "uses it; the revocations it holds are then forgotten"
            )
        conn.execute("COMMIT")
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def insert(
    conn: sqlite3.Connection,
    entries: Sequence[Revocation],
    jti: str | None,
    jti_expires_at: float,
    now: float,
) -> int | None:
    """Claim ``jti`` and insert ``entries`` in one transaction.

    Returns ``None`` for a replay (nothing written), else the change id of the last row
    inserted (0 if none).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        if jti is not None and not conn.execute(_CLAIM_JTI, (jti, jti_expires_at, now)).rowcount:
            return None
        conn.executemany(
            _INSERT,
            [(e.kind.value, e.subject, e.not_before, e.expires_at, e.label) for e in entries],
        )
        # executemany() leaves Cursor.lastrowid alone; the connection knows.
        position = int(conn.execute("SELECT last_insert_rowid()").fetchone()[0]) if entries else 0
        conn.execute("COMMIT")
        return position
    finally:
        # Reached with a transaction still open on a replay or when a statement failed.
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def rows_after(conn: sqlite3.Connection, change_id: int, limit: int) -> list[Row]:
    return conn.execute(_SELECT_AFTER, (change_id, limit)).fetchall()


def sequence(conn: sqlite3.Connection) -> int:
    """The AUTOINCREMENT counter: every change id up to it is committed."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'revocations'").fetchone()
    return 0 if row is None else int(row[0])


def data_version(conn: sqlite3.Connection) -> int:
    """Changes whenever another connection commits (read from shared memory: cheap)."""
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


def publish(conn: sqlite3.Connection, worker: str, applied: int) -> None:
    # Heartbeats are wall-clock time on this host, never the store's injected timer:
    # the followers of every process compare them.
    conn.execute(_PUBLISH, (worker, applied, time.time()))


def unregister(conn: sqlite3.Connection, worker: str) -> None:
    conn.execute("DELETE FROM followers WHERE worker = ?", (worker,))


def lagging(
    conn: sqlite3.Connection, worker: str, seen_since: float, position: int
) -> list[tuple[str, int]]:
    """The followers other than ``worker`` seen since ``seen_since`` and below ``position``."""
    rows = conn.execute(_SELECT_LAGGING, (worker, seen_since, position)).fetchall()
    return [(str(name), int(applied)) for name, applied in rows]


def purge(conn: sqlite3.Connection, now: float, silent_since: float) -> None:
    """Delete expired entries and claims, and followers silent since ``silent_since``."""
    conn.execute("DELETE FROM revocations WHERE expires_at <= ?", (now,))
    conn.execute("DELETE FROM claimed_jtis WHERE expires_at <= ?", (now,))
    conn.execute("DELETE FROM followers WHERE seen < ?", (silent_since,))
