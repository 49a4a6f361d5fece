"""The SQLite store's own forms and failure modes."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

import pytest

from kc_sso_middleware.errors import ConfigurationError, StoreUnavailableError
from kc_sso_middleware.stores.sqlite import SQLiteStore

from ._helpers import LONG, Clock, eventually, revoked, session, user


def test_sqlite_url_forms() -> None:
    """Absolute and relative paths and the query options parse; bad ones name the problem."""
    absolute = SQLiteStore.from_url(
        "sqlite:////var/lib/kc/revocations.db?poll_interval=0.005"
        "&max_entries=10&busy_timeout=250&purge_interval=5"
    )
    assert absolute.path == "/var/lib/kc/revocations.db"
    assert absolute.poll_interval == 0.005
    assert absolute._replica.max_entries == 10
    assert absolute.busy_timeout_ms == 250
    assert absolute.purge_interval == 5
    assert SQLiteStore.from_url("sqlite:///relative/revocations.db").path == (
        "relative/revocations.db"
    )
    assert SQLiteStore.from_url("sqlite:///x.db").ack_timeout == 1.0
    assert SQLiteStore.from_url("sqlite:///x.db?ack_timeout=0").ack_timeout == 0
    assert SQLiteStore.from_url("sqlite:///x.db?ack_timeout=2.5").ack_timeout == 2.5
    for bad, reason in [
        ("sqlite:///x.db?ack_timeout=-1", "non-negative"),
        ("sqlite:///x.db?ack_timeout=inf", "non-negative"),
        ("sqlite://host/x.db", "no host"),
        ("sqlite:///", "accepted forms"),
        ("sqlite:///x.db?poll=1", "unknown option"),
        ("sqlite:///x.db?poll_interval=0", "positive"),
        ("sqlite:///x.db?max_entries=many", "positive"),
    ]:
        with pytest.raises(ConfigurationError, match=reason):
            SQLiteStore.from_url(bad)


def test_sqlite_creates_missing_parent_directories(tmp_path: Path) -> None:
    """start() creates the database's missing parent directories."""
    path = tmp_path / "a" / "b" / "revocations.db"
    store = SQLiteStore(path)
    try:
        store.start()
        assert path.exists()
    finally:
        store.close()


def test_a_worker_opening_a_new_file_another_is_writing_waits_for_it(tmp_path: Path) -> None:
    """Two workers creating the same new file (the first start, or after the file was
    lost): SQLite refuses the switch to WAL at once, without the busy timeout, to
    whichever finds the other holding the write lock.  The store must wait its turn, not
    fail: after a loss that failure was a write answered 503, a logout Keycloak never
    sends again."""
    import threading

    path = tmp_path / "revocations.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE t (x)")  # a new file, not in WAL mode yet
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t VALUES (1)")
    released = threading.Timer(0.3, other.execute, ("COMMIT",))
    released.start()
    store = SQLiteStore(path, busy_timeout_ms=5000)
    try:
        assert store.record([session("while-another-wrote", time.time() + LONG)])
        assert revoked(store, "while-another-wrote")
    finally:
        released.join()
        store.close()
        other.close()


def test_sqlite_unusable_directory_is_a_configuration_error(tmp_path: Path) -> None:
    """A directory that cannot be created fails start() with the path in the message."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    store = SQLiteStore(blocker / "revocations.db")
    with pytest.raises(ConfigurationError, match="not-a-directory"):
        store.start()
    store.close()


_OLD_SCHEMA = """
CREATE TABLE revocations (
    change_id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL, key TEXT NOT NULL, not_before REAL NOT NULL, expires_at REAL NOT NULL
);
CREATE TABLE followers (worker TEXT PRIMARY KEY, applied INTEGER NOT NULL, seen REAL NOT NULL);
INSERT INTO revocations (kind, key, not_before, expires_at) VALUES ('sid', 'abc', 0, 1e10);
"""


@pytest.mark.parametrize(
    ("prepare", "words"),
    [
        pytest.param(_OLD_SCHEMA, "schema version 1, written by an older", id="0.1 file"),
        pytest.param(
            "PRAGMA user_version = 9;", "schema version 9, written by a newer", id="newer"
        ),
    ],
)
def test_sqlite_file_of_another_schema_is_refused_clearly(
    tmp_path: Path, prepare: str, words: str
) -> None:
    """A file of another schema version fails start() with a ConfigurationError saying what
    to do; the file is left as it was."""
    path = tmp_path / "revocations.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(prepare)
    store = SQLiteStore(path)
    with pytest.raises(ConfigurationError, match=words):
        store.start()
    store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] in {0, 9}


def test_sqlite_rows_hold_the_subject_and_label(tmp_path: Path) -> None:
    """A row stores the scoped subject as an integer and the plain key as its label."""
    path = tmp_path / "revocations.db"
    store = SQLiteStore(path)
    try:
        store.start()
        entry = session("sid-x", time.time() + LONG)
        assert store.record([entry])
        with contextlib.closing(sqlite3.connect(path)) as conn:
            row = conn.execute("SELECT kind, subject, label FROM revocations").fetchone()
        assert row == ("sid", entry.subject, "sid-x")
    finally:
        store.close()


def test_sqlite_purges_expired_rows(tmp_path: Path) -> None:
    """The follower deletes expired entries and jti claims, so the file stays bounded."""
    clock = Clock()
    path = tmp_path / "revocations.db"
    store = SQLiteStore(path, poll_interval=0.002, purge_interval=0.01, timer=clock)
    try:
        store.start()
        t = clock.now
        assert store.record(
            [session("old", t + 10), user("alice", t, t + 10)], jti="old-jti", jti_expires_at=t + 10
        )
        assert store.record([session("live", t + LONG)], jti="live-jti", jti_expires_at=t + LONG)
        clock.now = t + 11

        def counts() -> tuple[int, int]:
            with contextlib.closing(sqlite3.connect(path)) as conn:
                return (
                    conn.execute("SELECT count(*) FROM revocations").fetchone()[0],
                    conn.execute("SELECT count(*) FROM claimed_jtis").fetchone()[0],
                )

        assert eventually(lambda: counts() == (1, 1))
        assert revoked(store, "live")
    finally:
        store.close()


def test_rows_this_version_cannot_read_are_skipped_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A row of an unknown kind (a newer version's, mid-deploy) or with a subject that is no
    integer is skipped with a warning: the followers move past it and apply what comes after,
    stay available, and a worker starting later loads the rest."""
    path = tmp_path / "revocations.db"
    writer = SQLiteStore(path, poll_interval=0.002)
    reader = SQLiteStore(path, poll_interval=0.002)
    late = SQLiteStore(path, poll_interval=0.002)
    try:
        writer.start()
        reader.start()
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.execute(
                "INSERT INTO revocations (kind, subject, not_before, expires_at)"
                " VALUES ('jti', 1, 0, ?), ('sid', 'not-a-digest', 0, ?)",
                (time.time() + LONG, time.time() + LONG),
            )
        assert writer.record([session("after-the-bad-rows", time.time() + LONG)])
        assert revoked(reader, "after-the-bad-rows")
        assert reader.status().available, reader.status()
        late.start()
        assert revoked(late, "after-the-bad-rows")
        assert late.status().available
        skipped = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
        assert skipped, "no warning names the skipped rows"
    finally:
        for store in (late, reader, writer):
            store.close()


def test_sqlite_close_stops_recording(tmp_path: Path) -> None:
    """After close(), record() raises StoreUnavailableError and status() is unavailable."""
    store = SQLiteStore(tmp_path / "revocations.db")
    store.start()
    store.close()
    store.close()  # idempotent
    assert not store.status().available
    with pytest.raises(StoreUnavailableError):
        store.record([session("late", time.time() + LONG)])
