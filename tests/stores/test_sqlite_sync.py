"""Durable SQLite commits: one WAL fsync vouches for every commit written before it began,
across threads and processes (:mod:`kc_sso_middleware.stores._sqlite_sync`)."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kc_sso_middleware.errors import StoreUnavailableError
from kc_sso_middleware.stores import _sqlite_sync
from kc_sso_middleware.stores._sqlite_sync import WalSync
from kc_sso_middleware.stores.sqlite import SQLiteStore

from ._helpers import LONG, eventually, revoked, session


class FsyncLog:
    """Records which files ``os.fsync`` was called on (by inode), optionally slowly."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, delay: float = 0.0) -> None:
        self.inodes: list[int] = []
        self.delay = delay
        real = _sqlite_sync._datasync

        def fsync(fd: int) -> None:
            self.inodes.append(os.fstat(fd).st_ino)
            if self.delay:
                time.sleep(self.delay)
            real(fd)

        monkeypatch.setattr(_sqlite_sync, "_datasync", fsync)


def _wal_sync(tmp_path: Path) -> tuple[WalSync, Path]:
    database = tmp_path / "r.db"
    wal = Path(f"{database}-wal")
    wal.write_bytes(b"frames")
    return WalSync(str(database), str(tmp_path / "synced")), wal


def test_a_commit_not_covered_fsyncs_the_wal_and_records_the_counter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync, wal = _wal_sync(tmp_path)
    log = FsyncLog(monkeypatch)

    sync.through(7, 3, lambda: 5)  # commits up to 5 are written; this one is 3

    assert log.inodes == [wal.stat().st_ino]
    # Commits 4 and 5 were written before that fsync began: covered, no fsync.
    sync.through(7, 5, lambda: pytest.fail("not read when covered"))
    assert log.inodes == [wal.stat().st_ino]
    assert (sync.fsyncs, sync.covered) == (1, 1)
    sync.through(7, 6, lambda: 6)
    assert len(log.inodes) == 2


def test_the_mark_of_another_generation_vouches_for_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync, _ = _wal_sync(tmp_path)
    log = FsyncLog(monkeypatch)
    sync.through(1, 10, lambda: 10)

    sync.through(2, 1, lambda: 1)  # a new file: its commit 1 is not the old file's

    assert len(log.inodes) == 2


def test_forget_drops_the_mark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file put back to an older copy (same generation, lower counter) must not be
    vouched for by the mark of the newer one."""
    sync, _ = _wal_sync(tmp_path)
    log = FsyncLog(monkeypatch)
    sync.through(1, 100, lambda: 100)

    sync.forget()
    sync.through(1, 4, lambda: 4)

    assert len(log.inodes) == 2


def test_the_mark_is_shared_by_every_instance_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = _wal_sync(tmp_path)
    second = WalSync(str(tmp_path / "r.db"), str(tmp_path / "synced"))
    log = FsyncLog(monkeypatch)

    first.through(1, 2, lambda: 9)
    second.through(1, 9, lambda: pytest.fail("covered by the first one's fsync"))

    assert len(log.inodes) == 1
    assert second.covered == 1


def test_without_a_state_file_every_commit_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "r.db"
    Path(f"{database}-wal").write_bytes(b"")
    sync = WalSync(str(database), str(tmp_path / "no-such-directory" / "synced"))
    log = FsyncLog(monkeypatch)

    for commit in (1, 1, 1):
        sync.through(1, commit, lambda: 1)

    assert len(log.inodes) == 3


def test_commits_waiting_during_an_fsync_share_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one fsync runs, the commits written meanwhile wait; then one fsync (by
    whichever of them goes first) covers all of them."""
    sync, _ = _wal_sync(tmp_path)
    log = FsyncLog(monkeypatch, delay=0.2)
    counter = [1]
    started = threading.Event()

    def first() -> None:
        started.set()
        sync.through(1, 1, lambda: 1)

    leader = threading.Thread(target=first)
    leader.start()
    started.wait()
    time.sleep(0.05)  # inside the first fsync
    waiting = []
    for commit in (2, 3, 4, 5):
        counter[0] = commit
        # Each thread has its own instance, as each process has its own.
        other = WalSync(str(tmp_path / "r.db"), str(tmp_path / "synced"))
        thread = threading.Thread(target=other.through, args=(1, commit, lambda: counter[0]))
        thread.start()
        waiting.append(thread)
    for thread in [leader, *waiting]:
        thread.join(10)

    assert len(log.inodes) == 2


def test_a_missing_wal_is_an_error(tmp_path: Path) -> None:
    sync = WalSync(str(tmp_path / "r.db"), str(tmp_path / "synced"))
    with pytest.raises(FileNotFoundError):
        sync.through(1, 1, lambda: 1)


# ------------------------------------------------------------------ in the store


def test_an_acknowledged_record_fsynced_the_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """record() returns only after an fsync of the WAL (the commit itself does not sync),
    and a replay, which writes nothing new, is still synced (its claim check committed)."""
    path = tmp_path / "revocations.db"
    store = SQLiteStore(path)
    try:
        store.start()
        log = FsyncLog(monkeypatch)
        assert store.record(
            [session("durable", time.time() + LONG)], jti="j-1", jti_expires_at=time.time() + 60
        )
        wal = Path(f"{path}-wal").stat().st_ino
        assert log.inodes.count(wal) == 1
        assert not store.record(
            [session("again", time.time() + LONG)], jti="j-1", jti_expires_at=time.time() + 60
        )
        assert log.inodes.count(wal) == 2
    finally:
        store.close()


def test_a_failed_fsync_is_not_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that cannot be put on disk is refused (Keycloak gets a 503), never
    reported as recorded; the entry still revokes here (refusing early is safe)."""
    store = SQLiteStore(tmp_path / "revocations.db")
    try:
        store.start()

        def failing(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(_sqlite_sync, "_datasync", failing)
        with pytest.raises(StoreUnavailableError, match="could not sync the write to disk"):
            store.record([session("not-durable", time.time() + LONG)])
        monkeypatch.undo()
        assert eventually(lambda: revoked(store, "not-durable"))
        assert store.record([session("durable", time.time() + LONG)])
        assert revoked(store, "durable")
    finally:
        store.close()


def _commit_in_child(url: str, count: int, barrier: Any, results: Any) -> None:
    try:
        store = SQLiteStore(url)
        store.start()
        try:
            barrier.wait(30)
            for n in range(count):
                store.record([session(f"{os.getpid()}-{n}", time.time() + LONG)])
            results.put((store._wal_sync.fsyncs, store._wal_sync.covered))
        finally:
            store.close()
    except BaseException as exc:  # said by the test, not lost in the child's stderr
        results.put(repr(exc))
        raise


def test_processes_committing_together_share_fsyncs(tmp_path: Path) -> None:
    """Four processes, each committing one write after another: fewer fsyncs than
    commits, and every write is in the file."""
    path = str(tmp_path / "revocations.db")
    SQLiteStore(path).close()
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    children = [
        context.Process(target=_commit_in_child, args=(path, 50, barrier, results))
        for _ in range(4)
    ]
    for child in children:
        child.start()
    counts = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(30)
    assert all(isinstance(c, tuple) for c in counts), counts

    fsyncs, covered = sum(c[0] for c in counts), sum(c[1] for c in counts)
    assert fsyncs + covered == 200, counts
    assert covered > 0, counts
    reader = SQLiteStore(path)
    try:
        reader.start()
        assert eventually(lambda: len(reader._replica) >= 200)
    finally:
        reader.close()
