"""SQLite workers tell each other about news by datagram, commit together, and poll only
when datagrams are unavailable; the contract holds either way and in a mix of both."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kc_sso_middleware.stores._sqlite_group import GroupCommit
from kc_sso_middleware.stores._sqlite_notify import Channel, socket_directory
from kc_sso_middleware.stores.sqlite import SQLiteStore

from ._helpers import LONG, eventually, open_started, revoked, session


def test_sqlite_followers_get_sockets_beside_the_file(
    tmp_path: Path, stores: list[SQLiteStore]
) -> None:
    """Each started store binds its two sockets in <file>.kc-sso/ and removes them at close."""
    path = tmp_path / "revocations.db"
    first, second = open_started(stores, path), open_started(stores, path)
    assert first.notified
    assert second.notified
    directory = Path(socket_directory(str(path)))
    sockets = sorted(p.suffix for p in directory.iterdir() if p.suffix in {".f", ".w"})
    assert sockets == [".f", ".f", ".w", ".w"]
    second.close()
    assert sorted(p.suffix for p in directory.iterdir() if p.suffix in {".f", ".w"}) == [
        ".f",
        ".w",
    ]


def test_sqlite_record_waits_for_every_worker_when_some_poll(
    tmp_path: Path, stores: list[SQLiteStore]
) -> None:
    """A notified and a polling follower side by side: a record() from either returns only
    once the other has applied it (asked right after the return, no waiting)."""
    path = tmp_path / "revocations.db"
    notified = open_started(stores, path)
    polling = open_started(stores, path, notifications=False, poll_interval=0.05)
    assert notified.notified
    assert not polling.notified
    t = time.time()
    for round_ in range(5):
        assert notified.record([session(f"from-notified-{round_}", t + LONG)])
        assert revoked(polling, f"from-notified-{round_}")
        assert polling.record([session(f"from-polling-{round_}", t + LONG)])
        assert revoked(notified, f"from-polling-{round_}")


def test_sqlite_polls_where_sockets_cannot_be_made(
    tmp_path: Path, stores: list[SQLiteStore], caplog: pytest.LogCaptureFixture
) -> None:
    """A socket directory that cannot be created: every worker polls, says so once, and
    the contract still holds."""
    path = tmp_path / "revocations.db"
    Path(socket_directory(str(path))).write_text("in the way")
    with caplog.at_level(logging.WARNING, logger="kc_sso_middleware"):
        first, second = open_started(stores, path), open_started(stores, path)
    assert not first.notified
    assert not second.notified
    said = [r for r in caplog.records if "cannot notify each other" in r.getMessage()]
    assert len(said) == 1
    t = time.time()
    assert first.record([session("polled", t + LONG)], jti="p-1", jti_expires_at=t + LONG)
    assert revoked(second, "polled")
    assert not second.record([session("replay", t + LONG)], jti="p-1", jti_expires_at=t + LONG)


def test_sqlite_long_paths_are_reached_through_the_directory_descriptor(
    tmp_path: Path, stores: list[SQLiteStore]
) -> None:
    """A database so deep that its socket addresses exceed sun_path still notifies."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    path = deep / "revocations.db"
    assert len(os.fsencode(socket_directory(str(path)))) > 110
    first, second = open_started(stores, path), open_started(stores, path)
    assert first.notified
    assert second.notified
    assert first.record([session("deep", time.time() + LONG)])
    assert revoked(second, "deep")


def test_sqlite_idle_follower_waits_for_news_not_a_poll(
    tmp_path: Path, stores: list[SQLiteStore]
) -> None:
    """With notifications, a follower with nothing to do publishes once per heartbeat:
    its row's heartbeat moves about once a second, not a hundred times."""
    path = tmp_path / "revocations.db"
    store = open_started(stores, path)

    def seen() -> float:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            row = conn.execute(
                "SELECT seen FROM followers WHERE worker = ?", (store.follower_name,)
            ).fetchone()
        return float(row[0])

    first = seen()
    assert eventually(lambda: seen() != first)  # a heartbeat came
    beats = {seen()}
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        beats.add(seen())
        time.sleep(0.01)
    assert len(beats) <= 2


def test_group_commit_batches_what_arrives_during_a_commit() -> None:
    """Writes that arrive while a commit is under way are committed together, in order,
    each with its own result; a lone write commits at once."""
    batches: list[list[int]] = []
    first_entered, release = threading.Event(), threading.Event()

    def commit(writes: Sequence[int]) -> list[int]:
        batches.append(list(writes))
        if len(batches) == 1:
            first_entered.set()
            release.wait()
        return [w * 10 for w in writes]

    group: GroupCommit[int, int] = GroupCommit(commit)
    with ThreadPoolExecutor(6) as pool:
        leader = pool.submit(group.submit, 0)
        assert first_entered.wait(5)
        followers = [pool.submit(group.submit, n) for n in range(1, 6)]
        assert eventually(lambda: len(group._queue) == 5)
        release.set()
        assert leader.result() == 0
        assert [f.result() for f in followers] == [10, 20, 30, 40, 50]
    assert batches[0] == [0]
    assert sorted(batches[1]) == [1, 2, 3, 4, 5]
    assert len(batches) == 2
    assert group.submit(7) == 70
    assert (group.batches, group.writes) == (3, 7)


def test_group_commit_hands_a_failure_to_every_write_of_the_batch() -> None:
    """A commit that raises fails each of its writes, and the next batch works again."""
    calls = 0

    def commit(writes: Sequence[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return list(writes)

    group: GroupCommit[int, int] = GroupCommit(commit)
    with pytest.raises(sqlite3.OperationalError):
        group.submit(1)
    assert group.submit(2) == 2


def test_sqlite_concurrent_records_keep_each_claim_and_entry_together(
    tmp_path: Path, stores: list[SQLiteStore]
) -> None:
    """Sixteen threads recording at once (some with the same jti): exactly one write per
    jti wins, each winner's entries are stored and each loser's are not."""
    path = tmp_path / "revocations.db"
    store, other = open_started(stores, path), open_started(stores, path)
    t = time.time()
    barrier = threading.Barrier(16)

    def attempt(index: int) -> bool:
        barrier.wait()
        return store.record(
            [session(f"c-{index}", t + LONG)], jti=f"jti-{index % 8}", jti_expires_at=t + LONG
        )

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(attempt, range(16)))
    for group_index in range(8):
        pair = [results[group_index], results[group_index + 8]]
        assert pair.count(True) == 1
    winners = [i for i, won in enumerate(results) if won]
    losers = [i for i, won in enumerate(results) if not won]
    assert all(revoked(other, f"c-{i}") for i in winners)
    assert not any(revoked(store, f"c-{i}") or revoked(other, f"c-{i}") for i in losers)
    fresh = open_started(stores, path)
    assert all(revoked(fresh, f"c-{i}") for i in winners)
    assert not any(revoked(fresh, f"c-{i}") for i in losers)


def test_an_answer_sent_drops_the_older_one_waiting_to_be_resent(tmp_path: Path) -> None:
    """A writer keeps the last answer each follower sends (after a restore in place the lower
    position is the truth), so an answer held back while the writer's socket was full must
    not be resent after a newer one went through."""
    db = str(tmp_path / "revocations.db")
    follower, writer = Channel.open(db, "follower"), Channel.open(db, "writer")
    try:
        sent = 0
        while not follower._pending_answers:  # fill the writer's queue until one waits
            follower.answer([writer.id], generation=1, applied=5)
            sent += 1
            assert sent < 100_000
        writer.acks.mark()  # the writer reads its queue
        follower.answer([writer.id], generation=1, applied=9)  # goes through
        follower._retry_answers()
        writer.acks.mark()
        latest = writer.acks.latest(follower.id)
        assert latest is not None
        assert latest[:2] == (1, 9)
    finally:
        follower.close()
        writer.close()
