"""A SQLite store that loses its file is repaired from the workers' replicas.

Deleted (with its -wal and -shm), replaced by another store's file, or replaced while a
write is under way: every worker writes back what it holds (entries never past their own
expiry, and the jti claims it made, so a replay is still refused) before reporting its
replica as current again, and a worker that starts meanwhile waits for the repairs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from kc_sso_middleware.stores import _sqlite_schema as sql
from kc_sso_middleware.stores.sqlite import SQLiteStore

from ._helpers import (
    LONG,
    Clock,
    eventually,
    every_session,
    keys,
    open_started,
    revoked,
    session,
    user,
)


def _delete(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


def _rows(path: Path) -> list[tuple[str, int, float, float]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(
            "SELECT kind, subject, not_before, expires_at FROM revocations"
        ).fetchall()


def _claims(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {row[0] for row in conn.execute("SELECT jti FROM claimed_jtis")}


def _generation(path: Path) -> int | None:
    """The generation of the file at ``path`` (None: no file, or not created yet)."""
    if not path.exists():
        return None
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        except sqlite3.OperationalError:
            return None
    return None if row is None else int(row[0])


def _repaired(path: Path, before: int | None, *stores: SQLiteStore) -> bool:
    """Whether every store follows a new file at ``path`` and has written back into it."""
    now = _generation(path)
    return (
        now is not None
        and now != before
        and all(
            s._generation == now and s._pending_repair is None and s.status().available
            for s in stores
        )
    )


@pytest.mark.parametrize("notifications", [True, False], ids=["notified", "polling"])
def test_deleted_file_is_written_back_by_every_worker(
    tmp_path: Path,
    stores: list[SQLiteStore],
    notifications: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After the file, -wal and -shm are deleted, the workers recreate it and write back
    every entry and their jti claims; a worker started afterwards refuses all of them,
    and a replayed logout token is still refused."""
    path = tmp_path / "revocations.db"
    options = {"notifications": notifications, "poll_interval": 0.005}
    first, second = open_started(stores, path, **options), open_started(stores, path, **options)
    t = time.time()
    assert first.record([session("s-1", t + LONG)], jti="j-1", jti_expires_at=t + LONG)
    assert second.record([user("alice", t, t + LONG)], jti="j-2", jti_expires_at=t + LONG)
    assert first.record([every_session(t, t + LONG, client="portal")])
    held = sorted(_rows(path))
    before = _generation(path)

    with caplog.at_level(logging.WARNING, logger="kc_sso_middleware"):
        _delete(path)
        assert eventually(lambda: _repaired(path, before, first, second))
    # Session entries come back up to a millisecond earlier (never later).
    back = sorted(set(_rows(path)))
    assert [row[:3] for row in back] == [row[:3] for row in held]
    assert all(was[3] - 0.002 <= now[3] <= was[3] for now, was in zip(back, held, strict=True))
    assert {"j-1", "j-2"} <= _claims(path)
    assert any("lost data" in r.getMessage() for r in caplog.records)

    late = open_started(stores, path, **options)
    assert revoked(late, "s-1")
    assert revoked(late, None, "alice", t - 1)
    assert revoked(late, None, "bob", t - 1, client="portal")
    assert not revoked(late, "never-revoked", "bob", t + 1)
    assert not late.record([session("replayed", t + LONG)], jti="j-1", jti_expires_at=t + LONG)
    assert not late.record([], jti="j-2", jti_expires_at=t + LONG)
    assert late.record([session("after", t + LONG)])
    assert revoked(first, "after")
    assert revoked(second, "after")


def test_write_right_after_the_loss_waits_for_every_worker(
    tmp_path: Path, stores: list[SQLiteStore]
) -> None:
    """A record() into the recreated file returns only once the other worker (not listed
    in the new file yet) has repaired and applied it."""
    path = tmp_path / "revocations.db"
    first, second = open_started(stores, path), open_started(stores, path)
    t = time.time()
    assert first.record([session("before", t + LONG)])
    before = _generation(path)
    _delete(path)
    assert first.record([session("right-after", t + LONG)])
    assert revoked(second, "right-after")
    assert eventually(lambda: _repaired(path, before, first, second))
    fresh = open_started(stores, path)
    assert revoked(fresh, "before")
    assert revoked(fresh, "right-after")


def test_repair_never_writes_an_entry_past_its_expiry(
    tmp_path: Path, stores: list[SQLiteStore]
) -> None:
    """Written-back entries expire no later than they did, and expired ones stay gone."""
    clock = Clock()
    path = tmp_path / "revocations.db"
    store = open_started(stores, path, timer=clock)
    t = clock.now
    assert store.record([session("short", t + 30), session("long", t + 7200.123)])
    assert store.record([user("alice", t, t + 30)])
    clock.now = t + 60  # "short" and alice's entry have expired
    before = _generation(path)
    _delete(path)
    assert eventually(lambda: _repaired(path, before, store))
    rows = _rows(path)
    assert len(rows) == 1
    kind, _subject, _not_before, expires_at = rows[0]
    assert kind == "sid"
    assert t + 7200.123 - 0.002 <= expires_at <= t + 7200.123
    assert revoked(store, "long")


def test_file_replaced_by_another_store_is_repaired(
    tmp_path: Path, stores: list[SQLiteStore]
) -> None:
    """A file of another generation moved over the path (a restored or foreign copy)."""
    path = tmp_path / "revocations.db"
    store = open_started(stores, path)
    t = time.time()
    assert store.record([session("kept", t + LONG)], jti="k", jti_expires_at=t + LONG)
    other = tmp_path / "other.db"
    with contextlib.closing(sql.connect(str(other), 5)) as conn:
        sql.ensure_schema(conn, str(other))
    before = _generation(path)
    _delete(path)  # its -wal and -shm too: they would be read as the other file's
    os.replace(other, path)
    assert eventually(lambda: _repaired(path, before, store))
    assert [row[0] for row in _rows(path)] == ["sid"]
    assert "k" in _claims(path)


def test_older_copy_put_back_is_repaired(tmp_path: Path, stores: list[SQLiteStore]) -> None:
    """A backup of the same store put back over it: same generation, fewer changes."""
    path = tmp_path / "revocations.db"
    store = open_started(stores, path)
    t = time.time()
    assert store.record([session("old", t + LONG)])
    backup = tmp_path / "backup.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"VACUUM INTO '{backup}'")
    assert store.record([session("newer", t + LONG)])
    _delete(path)
    shutil.copyfile(backup, path)
    assert eventually(lambda: len(_rows(path)) == 2 and store.status().available)
    fresh = open_started(stores, path)
    assert revoked(fresh, "old")
    assert revoked(fresh, "newer")


@pytest.mark.parametrize("notifications", [True, False], ids=["notified", "polling"])
def test_older_copy_restored_in_place_is_no_acknowledgement(
    tmp_path: Path, stores: list[SQLiteStore], notifications: bool
) -> None:
    """A backup restored into the same file (SQLite's backup API, ``.restore``: same inode,
    same generation, a lower change counter) reuses change ids.  A follower past the restored
    counter must not take the new rows for those it applied, nor answer the writer with its
    old position: every write after the restore is applied by every worker before its 200
    (before the next heartbeat's check), and what the restore took is written back."""
    path = tmp_path / "revocations.db"
    options = {"notifications": notifications, "poll_interval": 0.005}
    writer = open_started(stores, path, **options)
    other = open_started(stores, path, **options)
    t = time.time()
    assert writer.record([session("kept", t + LONG)])
    backup = tmp_path / "backup.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"VACUUM INTO '{backup}'")
    for i in range(6):
        assert writer.record([session(f"taken-{i}", t + LONG)])
    assert eventually(lambda: revoked(other, "taken-5"))
    inode = os.stat(path).st_ino
    with (
        contextlib.closing(sqlite3.connect(backup)) as source,
        contextlib.closing(sqlite3.connect(path)) as target,
    ):
        source.backup(target)
    assert os.stat(path).st_ino == inode
    for i in range(8):
        assert writer.record([session(f"after-{i}", t + LONG)])
        # Acknowledged, so applied: at once, not at some later check.
        assert other.is_revoked(keys(f"after-{i}")), f"after-{i} acknowledged, not applied"
    fresh_keys = [f"taken-{i}" for i in range(6)] + [f"after-{i}" for i in range(8)]
    assert eventually(lambda: writer.status().available and other.status().available)
    fresh = open_started(stores, path)
    assert all(revoked(fresh, sid) for sid in ["kept", *fresh_keys])


def test_a_follower_past_the_counter_is_lagging(tmp_path: Path, stores: list[SQLiteStore]) -> None:
    """Writers without a datagram from a follower read its row: a position above the file's
    change counter (it went back) is no acknowledgement of anything."""
    path = tmp_path / "revocations.db"
    store = open_started(stores, path)
    assert store.record([session("one", time.time() + LONG)])
    now = time.time()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        counter = sql.sequence(conn)
        conn.execute(
            "INSERT INTO followers (worker, applied, seen) VALUES ('caught-up', ?, ?),"
            " ('behind', ?, ?), ('past-the-counter', ?, ?)",
            (counter, now, counter - 1, now, counter + 5, now),
        )
        lagging = dict(sql.lagging(conn, store.follower_name, now - 10, counter))
    assert lagging == {"behind": counter - 1, "past-the-counter": counter + 5}


def test_new_worker_is_not_current_while_another_repairs(
    tmp_path: Path, stores: list[SQLiteStore]
) -> None:
    """A worker that starts while another is listed as repairing reports its replica as
    not current until that repair ends (or its claim runs out)."""
    path = tmp_path / "revocations.db"
    open_started(stores, path).close()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        sql.claim_repair(conn, "host:1:repairing", time.time() + 60)
    late = open_started(stores, path)
    status = late.status()
    assert not status.available
    assert "writing back" in status.detail
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        sql.end_repair(conn, "host:1:repairing")
    assert eventually(lambda: late.status().available)

    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        sql.claim_repair(conn, "host:2:died-repairing", time.time() + 0.5)
    later = open_started(stores, path)
    assert not later.status().available
    assert eventually(lambda: later.status().available)  # its claim ran out


def test_version_3_file_is_upgraded_in_place(tmp_path: Path, stores: list[SQLiteStore]) -> None:
    """A file of schema 3 (no generation, no repairs) is upgraded and its rows are kept."""
    path = tmp_path / "revocations.db"
    entry = session("from-v3", time.time() + LONG)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for statement in sql._TABLES:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO revocations (kind, subject, not_before, expires_at) VALUES (?, ?, ?, ?)",
            ("sid", entry.subject, 0.0, entry.expires_at),
        )
        conn.execute("PRAGMA user_version = 3")
        conn.commit()
    store = open_started(stores, path)
    assert revoked(store, "from-v3")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == sql.SCHEMA_VERSION
        generation = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
    assert generation is not None
    assert generation[0] > 0


def test_own_write_during_the_followers_check_is_no_loss(
    tmp_path: Path,
    stores: list[SQLiteStore],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The follower reads the file's state, then this process commits and moves the
    position past it before the follower compares: the file did not go back."""
    path = tmp_path / "revocations.db"
    store = open_started(stores, path)
    t = time.time()
    assert store.record([session("first", t + LONG)])
    read_state = sql.file_state

    def state_then_a_write(*args: object, **kwargs: object) -> sql.FileState:
        state = read_state(*args, **kwargs)  # type: ignore[arg-type]
        monkeypatch.setattr(sql, "file_state", read_state)
        writer = threading.Thread(target=store.record, args=([session("meanwhile", t + LONG)],))
        writer.start()
        writer.join()
        return state

    monkeypatch.setattr(sql, "file_state", state_then_a_write)
    with caplog.at_level(logging.ERROR):
        store._checked_connection()
    assert "lost data" not in caplog.text
    assert store._pending_repair is None
    assert store.status().available
    assert revoked(store, "meanwhile")
