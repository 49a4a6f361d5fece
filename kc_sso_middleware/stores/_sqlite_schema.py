"""The SQLite store's schema and statements, one small function per statement.

Every function takes the calling thread's connection and lets ``sqlite3.Error`` through:
the store (:mod:`kc_sso_middleware.stores.sqlite`) decides what a failure means.

Tables (schema version 4, in ``PRAGMA user_version``)
-----------------------------------------------------

``revocations``
    ``change_id`` (``INTEGER PRIMARY KEY AUTOINCREMENT``), ``kind``, ``subject`` (the
    entry's 60-bit digest, see :mod:`~kc_sso_middleware.stores.model`), ``not_before``,
    ``expires_at``, ``label`` (the plain key, or NULL), ``note`` (why and when, as
    :meth:`~kc_sso_middleware.stores.model.Note.encode` writes it, or NULL).  Rows are
    only ever appended (a later ``not_before`` for the same user is a new row; the
    replica keeps the maximum) and
    deleted once expired.  ``AUTOINCREMENT`` guarantees a change id is never reused, even
    after the newest row was purged, so "every row above the last id I saw" is exactly
    "what I have not applied yet".  Writers are serialised by SQLite (``BEGIN IMMEDIATE``),
    so ids also become visible in increasing order.
``claimed_jtis``
    ``jti`` (primary key), ``expires_at``: the back-channel replay cache.
``followers``
    ``worker`` (the follower's name), ``applied`` (the highest change id it has applied),
    ``seen`` (epoch seconds of its last heartbeat).
``meta``
    ``key``, ``value``: ``generation``, a random number written once, when the file is
    created.  A follower that finds another generation (or another file at the path, or
    the change counter below what it has applied) knows the store lost data.
    ``commits``: a counter every write batch increments, so that one WAL fsync can
    vouch for every batch up to a number (:mod:`~kc_sso_middleware.stores._sqlite_sync`).
``repairs``
    ``worker``, ``until``: a worker writing back what the store lost, and until when its
    claim holds unless renewed.  A worker that starts while one is listed does not report
    its replica as current.

:func:`ensure_schema` creates the tables in a new file, adds ``meta`` and ``repairs`` to a
version 3 file (nothing else changed), and refuses a file of any other version: 0.1 left
``user_version`` at 0 with a key-based ``revocations`` table (version 1); version 2 had no
``note``.
"""

from __future__ import annotations

import functools
import secrets
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import ConfigurationError
from .model import Revocation, RevocationKind

__all__ = [
    "SCHEMA_VERSION",
    "BatchWrite",
    "FileState",
    "connect",
    "ensure_schema",
    "insert_batch",
]

#: ``PRAGMA user_version`` of the files this module writes.  1 was the key-based schema
#: of 0.1 (it left user_version at 0); 3 is upgraded in place (it lacks meta and repairs).
SCHEMA_VERSION = 4
_UPGRADABLE = 3

#: change_id, kind, subject, not_before, expires_at, label, note
Row = tuple[int, str, int, float, float, str | None, str | None]

_TABLES = (
    """
    CREATE TABLE IF NOT EXISTS revocations (
        change_id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        subject INTEGER NOT NULL,
        not_before REAL NOT NULL,
        expires_at REAL NOT NULL,
        label TEXT,
        note TEXT
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
# Added by version 4.
_NEW_TABLES = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    """
    CREATE TABLE IF NOT EXISTS repairs (
        worker TEXT PRIMARY KEY,
        until REAL NOT NULL
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

# A claim this process already won (written again into a replacement file, or written
# back by a repair): never a replay, the later expiry wins.
_RECLAIM_JTI = """
INSERT INTO claimed_jtis (jti, expires_at) VALUES (?, ?)
ON CONFLICT (jti) DO UPDATE SET expires_at = max(expires_at, excluded.expires_at)
"""

_INSERT = (
    "INSERT INTO revocations (kind, subject, not_before, expires_at, label, note)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)

_SELECT_AFTER = (
    "SELECT change_id, kind, subject, not_before, expires_at, label, note FROM revocations"
    " WHERE change_id > ? ORDER BY change_id LIMIT ?"
)

_PUBLISH = "INSERT OR REPLACE INTO followers (worker, applied, seen) VALUES (?, ?, ?)"

# One statement, so the newest change id and the rows are one snapshot.
_SELECT_FOLLOWERS = (
    "SELECT worker, applied, seen,"
    " (SELECT seq FROM sqlite_sequence WHERE name = 'revocations')"
    " FROM followers ORDER BY worker"
)

# A follower past the change counter is behind too: it applied rows of a history the file
# no longer has (an older copy restored in place, whose change ids are reused).
_SELECT_LAGGING = (
    "SELECT worker, applied FROM followers"
    " WHERE worker != ? AND seen >= ? AND (applied < ? OR applied >"
    " (SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'revocations'))"
    " ORDER BY worker"
)

_SELECT_STATE = (
    "SELECT (SELECT value FROM meta WHERE key = 'generation'),"
    " (SELECT seq FROM sqlite_sequence WHERE name = 'revocations'),"
    " (SELECT count(*) FROM repairs WHERE worker != ? AND until > ?)"
)


def connect(path: str, busy_timeout: float) -> sqlite3.Connection:
    """A connection in WAL mode with ``synchronous=FULL`` (the store's writers and
    followers lower it to ``NORMAL`` and sync the WAL themselves, see ``_sqlite_sync``)."""
    # isolation_level=None: the sqlite3 module must not open transactions on its own;
    # the writes issue BEGIN IMMEDIATE themselves.  check_same_thread=False only so that
    # close() may close every thread's connection; each is still used by one thread.
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        mode = _into_wal(conn, busy_timeout)
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


def _into_wal(conn: sqlite3.Connection, busy_timeout: float) -> object:
    """``PRAGMA journal_mode=WAL``, retried while another connection holds the lock.

    Two workers opening a new file (the first start, or after the file was lost) both
    read it, then both ask for the write lock to switch it to WAL; SQLite refuses one of
    them at once, without waiting on the busy timeout (either waiting would deadlock).
    The refused one tries again: the other has switched the file by then.
    """
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            return conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(0.005)


def ensure_schema(conn: sqlite3.Connection, path: str) -> None:
    """Create the tables in a new file, upgrade a version 3 file, refuse any other."""
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
        if version in (0, _UPGRADABLE):
            for statement in (*_TABLES, *_NEW_TABLES) if version == 0 else _NEW_TABLES:
                conn.execute(statement)
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', ?)",
                (new_generation(),),
            )
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


def new_generation() -> int:
    """A random positive 63-bit number (fits SQLite's integers and a signed 64-bit field)."""
    return secrets.randbits(63) or 1


def _version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


@dataclass(frozen=True, slots=True)
class BatchWrite:
    """One caller's part of a group commit: its entries and its ``jti`` claim."""

    entries: Sequence[Revocation]
    jti: str | None
    jti_expires_at: float
    now: float
    #: the claim was won before (the write is repeated in a replacement file): no replay
    reclaim: bool = False


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one transaction of :func:`insert_batch` did."""

    #: per write, in order: ``None`` for a replay, else the change id of its last row (0
    #: when it had no entries)
    positions: list[int | None]
    #: the file's generation and its change counter before the first row of the batch
    generation: int
    sequence_before: int
    #: the last change id the batch inserted (0 if none)
    last: int
    #: the live followers other than the writer's own: ``(name, applied)``
    followers: list[tuple[str, int]]
    #: the number this batch took from the file's commit counter (for the WAL sync)
    commit: int = 0


def insert_batch(
    conn: sqlite3.Connection,
    writes: Sequence[BatchWrite],
    *,
    worker: str,
    seen_since: float,
) -> BatchResult:
    """Claim every write's ``jti`` and insert its entries, all in one transaction.

    A write whose ``jti`` is already claimed (by an earlier write of the same batch too)
    stores nothing and gets ``None``.  The live followers other than ``worker`` are read
    in the same transaction.

    Few statements, whatever the batch's size (one claim, one insert, one read), because
    each one lets go of the GIL, and under load the committing thread then waits for
    request threads to hand it back: the claims are one upsert that returns the ``jti``
    values it took, the rows one multi-row insert (whose change ids are consecutive: the
    transaction holds the write lock).
    """
    now = max((write.now for write in writes), default=0.0)
    conn.execute("BEGIN IMMEDIATE")
    try:
        won = _claim(conn, writes, now)
        rows = [
            _row(entry)
            for write, ok in zip(writes, won, strict=True)
            if ok
            for entry in write.entries
        ]
        last = _insert(conn, rows)
        listed = conn.execute(_SELECT_FOLLOWERS_AND_GENERATION, (worker, seen_since)).fetchall()
        commit = _count_commit(conn)
        conn.execute("COMMIT")
    finally:
        # Reached with a transaction still open when a statement failed.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    positions: list[int | None] = []
    position = last - len(rows)
    for write, ok in zip(writes, won, strict=True):
        if not ok:
            positions.append(None)
        elif not write.entries:
            positions.append(0)
        else:
            position += len(write.entries)
            positions.append(position)
    generation = next((int(applied) for name, applied in listed if name is None), 0)
    followers = [(str(name), int(applied)) for name, applied in listed if name is not None]
    return BatchResult(positions, generation, last - len(rows), last, followers, commit)


def _count_commit(conn: sqlite3.Connection) -> int:
    """Take the next number of the file's commit counter (inside the write transaction)."""
    if _RETURNING:
        return int(conn.execute(_COUNT_COMMIT).fetchone()[0])
    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('commits', 0)")
    conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'commits'")
    return commits(conn)


def commits(conn: sqlite3.Connection) -> int:
    """The file's commit counter: every batch up to it has committed (0: none yet)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'commits'").fetchone()
    return 0 if row is None else int(row[0])


_COUNT_COMMIT = (
    "INSERT INTO meta (key, value) VALUES ('commits', 1)"
    " ON CONFLICT (key) DO UPDATE SET value = value + 1 RETURNING value"
)


# The file's generation (as a row with no worker) and the live followers, in one read.
_SELECT_FOLLOWERS_AND_GENERATION = (
    "SELECT NULL, value FROM meta WHERE key = 'generation'"
    " UNION ALL SELECT worker, applied FROM followers WHERE worker != ? AND seen >= ?"
)
_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
#: rows per multi-row INSERT and claims per upsert: within SQLite's oldest limit of 999
#: bound variables
_ROWS_PER_INSERT = 999 // 6
_CLAIMS_PER_UPSERT = (999 - 1) // 2


@functools.lru_cache(maxsize=64)
def _insert_rows_sql(count: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * count)  # only placeholders are joined in
    columns = "kind, subject, not_before, expires_at, label, note"
    return f"INSERT INTO revocations ({columns}) VALUES {values}"  # noqa: S608


@functools.lru_cache(maxsize=64)
def _claim_sql(count: int) -> str:
    values = ", ".join(["(?, ?)"] * count)
    return (  # only placeholders are joined in
        f"INSERT INTO claimed_jtis (jti, expires_at) VALUES {values}"  # noqa: S608
        " ON CONFLICT (jti) DO UPDATE SET expires_at = excluded.expires_at"
        " WHERE claimed_jtis.expires_at <= ? RETURNING jti"
    )


def _claim(conn: sqlite3.Connection, writes: Sequence[BatchWrite], now: float) -> list[bool]:
    """Claim each write's ``jti``; per write whether it may store its entries.

    Of several writes of the batch with one ``jti``, the first wins (the upsert takes
    the rows in order; a later duplicate meets the first's unexpired claim).
    """
    fresh = [(w.jti, w.jti_expires_at) for w in writes if w.jti is not None and not w.reclaim]
    taken: set[str] = set()
    if not _RETURNING:  # SQLite before 3.35: one upsert per claim, its rowcount says
        for jti, expires_at in fresh:
            if jti not in taken and conn.execute(_CLAIM_JTI, (jti, expires_at, now)).rowcount:
                taken.add(jti)
        fresh = []
    for start in range(0, len(fresh), _CLAIMS_PER_UPSERT):
        chunk = fresh[start : start + _CLAIMS_PER_UPSERT]
        params = [value for claim in chunk for value in claim]
        taken.update(row[0] for row in conn.execute(_claim_sql(len(chunk)), (*params, now)))
    again = [(w.jti, w.jti_expires_at) for w in writes if w.jti is not None and w.reclaim]
    if again:
        conn.executemany(_RECLAIM_JTI, again)
    won = []
    for write in writes:
        if write.jti is None or write.reclaim:
            won.append(True)
        elif write.jti in taken:
            taken.discard(write.jti)  # a later write with the same jti is a replay
            won.append(True)
        else:
            won.append(False)
    return won


def _insert(conn: sqlite3.Connection, rows: Sequence[tuple[object, ...]]) -> int:
    """Insert ``rows``; the change id of the last (0 if none)."""
    last = 0
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start : start + _ROWS_PER_INSERT]
        cursor = conn.execute(_insert_rows_sql(len(chunk)), [v for row in chunk for v in row])
        last = int(cursor.lastrowid or 0)
    return last


def _row(entry: Revocation) -> tuple[str, int, float, float, str | None, str | None]:
    return (
        entry.kind.value,
        entry.subject,
        entry.not_before,
        entry.expires_at,
        entry.label,
        None if entry.note is None else entry.note.encode(),
    )


def rows_after(conn: sqlite3.Connection, change_id: int, limit: int) -> list[Row]:
    return conn.execute(_SELECT_AFTER, (change_id, limit)).fetchall()


@dataclass(frozen=True, slots=True)
class FileState:
    """What a follower checks on every wake: which file, how far, who repairs it."""

    #: the random number the file was created with (0: none, a file being created)
    generation: int
    #: the AUTOINCREMENT counter: every change id up to it is committed
    sequence: int
    #: other workers writing back what the store lost, whose claim still holds
    repairs: int


def file_state(conn: sqlite3.Connection, worker: str, now: float) -> FileState:
    """One statement: generation, change counter, other workers' live repairs."""
    generation, sequence, repairs = conn.execute(_SELECT_STATE, (worker, now)).fetchone()
    return FileState(int(generation or 0), int(sequence or 0), int(repairs or 0))


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
    """The followers other than ``worker`` seen since ``seen_since`` and below ``position``,
    or past the change counter (which went back: their position vouches for nothing)."""
    rows = conn.execute(_SELECT_LAGGING, (worker, seen_since, position)).fetchall()
    return [(str(name), int(applied)) for name, applied in rows]


def followers(conn: sqlite3.Connection) -> list[tuple[str, int, float, int]]:
    """Every follower row: ``(worker, applied, seen, newest change id)``."""
    rows = conn.execute(_SELECT_FOLLOWERS).fetchall()
    return [(str(w), int(a), float(s), int(head or 0)) for w, a, s, head in rows]


def purge(conn: sqlite3.Connection, now: float, silent_since: float) -> None:
    """Delete expired entries, claims and repairs, and followers silent since ``silent_since``."""
    conn.execute("DELETE FROM revocations WHERE expires_at <= ?", (now,))
    conn.execute("DELETE FROM claimed_jtis WHERE expires_at <= ?", (now,))
    conn.execute("DELETE FROM followers WHERE seen < ?", (silent_since,))
    conn.execute("DELETE FROM repairs WHERE until <= ?", (time.time(),))


# -- repair ----------------------------------------------------------------------------


def claim_repair(conn: sqlite3.Connection, worker: str, until: float) -> None:
    """List ``worker`` as writing back what the store lost, until ``until`` (wall clock)."""
    conn.execute("INSERT OR REPLACE INTO repairs (worker, until) VALUES (?, ?)", (worker, until))


def end_repair(conn: sqlite3.Connection, worker: str) -> None:
    conn.execute("DELETE FROM repairs WHERE worker = ?", (worker,))


def held(conn: sqlite3.Connection, now: float) -> dict[int, tuple[float, float]]:
    """Every live subject the file holds: ``subject -> (max not_before, max expires_at)``.

    A subject is a digest of its kind, scope and key, so it alone names an entry.
    """
    rows = conn.execute(
        "SELECT subject, max(not_before), max(expires_at) FROM revocations"
        " WHERE expires_at > ? GROUP BY subject",
        (now,),
    )
    return {int(subject): (float(nb), float(exp)) for subject, nb, exp in rows}


def write_back(
    conn: sqlite3.Connection,
    entries: Iterable[Revocation],
    claims: Iterable[tuple[str, float]],
    *,
    worker: str,
    until: float,
    last: bool,
) -> None:
    """One transaction of a repair: entries and claims back in, the repair claim renewed
    (or, for the ``last`` one, ended)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(_INSERT, [_row(entry) for entry in entries])
        conn.executemany(_RECLAIM_JTI, list(claims))
        if last:
            end_repair(conn, worker)
        else:
            claim_repair(conn, worker, until)
        conn.execute("COMMIT")
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def covered(entry: Revocation, held: dict[int, tuple[float, float]]) -> bool:
    """Whether the file already holds ``entry`` at least as strongly."""
    found = held.get(entry.subject)
    if found is None:
        return False
    not_before, expires_at = found
    if entry.kind is RevocationKind.SESSION:
        return expires_at >= entry.expires_at
    return expires_at >= entry.expires_at and not_before >= entry.not_before
