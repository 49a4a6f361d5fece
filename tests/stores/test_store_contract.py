"""One contract for every revocation store: memory://, sqlite:///… and redis://….

The first part runs the same tests over every store; the second part runs over the shared
stores only (a revocation recorded by one process reaches the others, and ``record()``
returns only once every live follower has applied it).  Each backend's own failure modes
are in ``test_sqlite.py`` and ``test_redis.py``.  Waiting is always "poll until true or a
generous deadline": timing itself is measured by the benchmarks, never asserted here
(beyond "it did not hang").
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest

from kc_sso_middleware.errors import StoreFullError
from kc_sso_middleware.stores import Revocation, RevocationStore, open_store
from kc_sso_middleware.stores.model import Note
from kc_sso_middleware.stores.sqlite import SQLiteStore

from ._helpers import (
    CLIENT,
    DEADLINE,
    ISSUER,
    LONG,
    Clock,
    Recorder,
    eventually,
    every_session,
    instance,
    revoked,
    session,
    user,
)
from .conftest import Backend, with_options

if TYPE_CHECKING:
    from multiprocessing.connection import Connection


# ------------------------------------------------------------------ the contract


def test_started_store_is_available(backend: Backend) -> None:
    """A started store reports its replica as current."""
    assert backend.open().status().available


def test_session_entry_revokes_only_that_sid(backend: Backend) -> None:
    """A sid entry revokes that session whatever its user or login time, and no other."""
    store = backend.open()
    assert store.record([session("sid-1", time.time() + LONG)])
    assert revoked(store, "sid-1", "someone", time.time())
    assert revoked(store, "sid-1")
    assert not revoked(store, "sid-2", "someone", time.time())


def test_instance_entry_revokes_only_that_app_session(backend: Backend) -> None:
    """A "sid#jti" entry revokes the app session of that token, not the rest of the sid."""
    store = backend.open()
    assert store.record([instance("sid-1#token-a", time.time() + LONG)])
    assert revoked(store, "sid-1", instance="sid-1#token-a")
    assert not revoked(store, "sid-1", instance="sid-1#token-b")
    assert not revoked(store, "sid-1")


def test_user_entry_revokes_sessions_that_began_strictly_before(backend: Backend) -> None:
    """A user entry revokes that user's sessions begun before not_before; equal or later survive."""
    store = backend.open()
    t = time.time()
    assert store.record([user("alice", t, t + LONG)])
    assert revoked(store, "any", "alice", t - 1)
    assert not revoked(store, "any", "alice", t)
    assert not revoked(store, "any", "alice", t + 1)
    assert not revoked(store, "any", "bob", t - 1)


def test_client_entry_revokes_every_session_that_began_strictly_before(
    backend: Backend,
) -> None:
    """A client-wide entry revokes every user's sessions of that client begun before not_before."""
    store = backend.open()
    t = time.time()
    assert store.record([every_session(t, t + LONG)])
    assert revoked(store, "a", "alice", t - 1)
    assert revoked(store, None, None, t - 0.001)
    assert not revoked(store, "a", "alice", t)
    assert not revoked(store, "b", "bob", t + 1)


def test_unknown_issue_time_counts_as_revoked_where_a_wide_entry_applies(
    backend: Backend,
) -> None:
    """issued_at=None is revoked by a user or client entry that could apply, not otherwise."""
    store = backend.open()
    t = time.time()
    assert store.record([user("alice", t, t + LONG), session("sid-1", t + LONG)])
    assert revoked(store, "other", "alice", None)
    assert not revoked(store, "other", "bob", None)
    assert store.record([every_session(t, t + LONG)])
    assert revoked(store, "other", "bob", None)


def test_latest_not_before_wins_whatever_the_recording_order(backend: Backend) -> None:
    """Two user entries merge to the later not_before, recorded in either order."""
    store = backend.open()
    t = time.time()
    assert store.record([user("alice", t, t + LONG)])
    assert store.record([user("alice", t - 100, t + LONG)])
    assert revoked(store, None, "alice", t - 50)
    assert not revoked(store, None, "alice", t)


def test_issuers_sharing_a_store_never_match_each_other(backend: Backend) -> None:
    """Two issuers using the same sid and sub strings: an entry of one never revokes the other's."""
    store = backend.open()
    t = time.time()
    one, two = "https://sso.example/realms/one", "https://sso.example/realms/two"
    assert store.record([session("shared-sid", t + LONG, issuer=one)])
    assert store.record([user("shared-sub", t, t + LONG, issuer=one)])
    assert store.record([every_session(t, t + LONG, issuer=one, client="portal")])
    assert revoked(store, "shared-sid", issuer=one)
    assert not revoked(store, "shared-sid", issuer=two)
    assert revoked(store, None, "shared-sub", t - 1, issuer=one)
    assert not revoked(store, None, "shared-sub", t - 1, issuer=two)
    assert revoked(store, None, None, t - 1, issuer=one, client="portal")
    assert not revoked(store, None, None, t - 1, issuer=two, client="portal")


def test_client_entry_does_not_revoke_another_client_of_the_same_issuer(
    backend: Backend,
) -> None:
    """A not-before push for client A leaves client B's sessions (same issuer, user, sid) alone."""
    store = backend.open()
    t = time.time()
    assert store.record([every_session(t, t + LONG, client="client-a")])
    assert revoked(store, "sid", "alice", t - 1, client="client-a")
    assert not revoked(store, "sid", "alice", t - 1, client="client-b")
    assert not revoked(store, "sid", "alice", None, client="client-b")


def test_version_changes_with_every_new_entry(backend: Backend) -> None:
    """version moves when the replica gains an entry, so a cached verdict is asked again."""
    store = backend.open()
    seen = {store.version}
    for index in range(3):
        assert store.record([session(f"v-{index}", time.time() + LONG)])
        assert store.version not in seen
        seen.add(store.version)


def test_replayed_jti_returns_false_and_writes_nothing(backend: Backend) -> None:
    """A second record with the same jti is refused and none of its entries are stored."""
    store = backend.open()
    t = time.time()
    assert store.record([session("first", t + LONG)], jti="jti-1", jti_expires_at=t + LONG)
    assert not store.record(
        [session("second", t + LONG), user("alice", t, t + LONG)],
        jti="jti-1",
        jti_expires_at=t + LONG,
    )
    assert store.record([session("third", t + LONG)], jti="jti-2", jti_expires_at=t + LONG)
    assert not revoked(store, "second", "alice", t - 1)
    if backend.shared:
        # A fresh replica loads what was written: the replayed entries never were.
        fresh = backend.open()
        assert revoked(fresh, "first")
        assert revoked(fresh, "third")
        assert not revoked(fresh, "second", "alice", t - 1)


def test_concurrent_claims_of_one_jti_have_exactly_one_winner(backend: Backend) -> None:
    """Eight threads racing to record with one jti: exactly one succeeds."""
    stores = [backend.open(), backend.open()] if backend.shared else [backend.open()]
    t = time.time()
    barrier = threading.Barrier(8)

    def attempt(index: int) -> bool:
        barrier.wait()
        store = stores[index % len(stores)]
        return store.record(
            [session(f"racer-{index}", t + LONG)], jti="contested", jti_expires_at=t + LONG
        )

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(8)))
    assert results.count(True) == 1
    winner = results.index(True)
    assert revoked(stores[winner % len(stores)], f"racer-{winner}")


def test_expired_entries_are_forgotten(backend: Backend) -> None:
    """Entries stop matching once expired, and a fresh replica does not load them.

    User and client entries stop at their expires_at; session entries at the latest one
    expiry bucket later (a quarter to half of their lifetime), never earlier.
    """
    clock = Clock()
    store = backend.open(clock)
    t = clock.now
    assert store.record(
        [session("s", t + 10), user("alice", t, t + 10), every_session(t - 5, t + 10)]
    )
    assert store.record([session("already-expired", t - 1)])
    assert revoked(store, "s")
    assert revoked(store, None, "alice", t - 1)
    assert revoked(store, None, "bob", t - 6)
    assert not revoked(store, "already-expired", "carol", t)
    clock.now = t + 9.9
    assert revoked(store, "s")
    clock.now = t + 11
    assert not revoked(store, None, "alice", t - 1)
    assert not revoked(store, None, "bob", t - 6)
    clock.now = t + 20
    assert store.record([])  # a write drops what expired (as the followers do meanwhile)
    assert not revoked(store, "s")
    if backend.shared:
        fresh = backend.open(clock)
        assert not revoked(fresh, "s", "alice", None)


def test_expired_jti_claim_can_be_claimed_again(backend: Backend) -> None:
    """The replay cache is bounded too: a jti whose claim expired is accepted again."""
    store = backend.open()
    assert store.record([], jti="short-lived", jti_expires_at=time.time() + 0.2)
    assert not store.record([], jti="short-lived", jti_expires_at=time.time() + 0.2)
    # Redis expires keys on its own clock, so this waits in real time.
    assert eventually(
        lambda: store.record([], jti="short-lived", jti_expires_at=time.time() + LONG)
    )


def test_unexpired_claims_are_never_evicted(backend: Backend) -> None:
    """However many jtis are claimed after it, a live claim still refuses its replay."""
    store = backend.open(max_entries=10)
    t = time.time()
    assert store.record([], jti="first", jti_expires_at=t + LONG)
    for index in range(50):
        assert store.record([], jti=f"other-{index}", jti_expires_at=t + LONG)
    assert not store.record([session("replay", t + LONG)], jti="first", jti_expires_at=t + LONG)


def test_arecord_works_under_asyncio(backend: Backend) -> None:
    """arecord stores entries, refuses a replay and lets exactly one concurrent claim win."""
    store = backend.open()
    t = time.time()

    async def scenario() -> list[bool]:
        first = await store.arecord(
            [session("async-1", t + LONG)], jti="a-1", jti_expires_at=t + LONG
        )
        replay = await store.arecord(
            [session("async-2", t + LONG)], jti="a-1", jti_expires_at=t + LONG
        )
        racers = await asyncio.gather(
            *(
                store.arecord(
                    [session(f"async-race-{i}", t + LONG)], jti="a-race", jti_expires_at=t + LONG
                )
                for i in range(5)
            )
        )
        return [first, replay, *racers]

    first, replay, *racers = asyncio.run(scenario())
    assert first
    assert not replay
    assert racers.count(True) == 1
    assert revoked(store, "async-1")
    assert not revoked(store, "async-2")
    # A second event loop must work too (one client per loop), and closing the first
    # loop must have closed its connections: an unclosed one would warn (an error here).
    assert asyncio.run(store.arecord([session("async-3", t + LONG)]))
    gc.collect()


# ------------------------------------------------------------------ the bound


def test_bound_refuses_only_unauthenticated_writes_and_keeps_every_entry(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """At max_entries, unauthenticated writes get StoreFullError (logged once); authenticated
    ones are stored beyond the bound; no entry held is ever dropped to make room."""
    store = backend.open(max_entries=5)
    t = time.time()
    for index in range(5):
        assert store.record([session(f"early-{index}", t + LONG)], authenticated=False)
    with caplog.at_level(logging.ERROR, logger="kc_sso_middleware"):
        for index in range(50):
            with pytest.raises(StoreFullError):
                store.record([session(f"junk-{index}", t + LONG)], authenticated=False)
            with pytest.raises(StoreFullError):
                asyncio.run(
                    store.arecord([session(f"junk-{index}", t + LONG)], authenticated=False)
                )
    assert len([r for r in caplog.records if "max_entries" in r.getMessage()]) == 1
    for index in range(5):
        assert store.record([session(f"real-{index}", t + LONG)], jti=f"j-{index}")
    assert all(revoked(store, f"early-{index}") for index in range(5))
    assert all(revoked(store, f"real-{index}") for index in range(5))
    assert not any(revoked(store, f"junk-{index}") for index in range(50))


def test_bound_frees_up_as_entries_expire(backend: Backend) -> None:
    """Once entries expire (and are dropped), unauthenticated writes are accepted again."""
    clock = Clock()
    store = backend.open(clock, max_entries=2)
    t = clock.now
    assert store.record([session("a", t + 10), session("b", t + 10)], authenticated=False)
    with pytest.raises(StoreFullError):
        store.record([session("c", t + LONG)], authenticated=False)
    clock.now = t + 30
    assert store.record([])
    assert store.record([session("c", t + LONG)], authenticated=False)
    assert revoked(store, "c")


# ------------------------------------------------------------------ listeners


def _failing_listener(_entries: object) -> None:
    raise RuntimeError("listener bug")


def test_listeners_get_each_own_write_once_and_a_failing_one_breaks_nothing(
    backend: Backend,
) -> None:
    """Every listener gets each new entry (with its label) once; one that raises is logged
    and neither the write nor the other listeners notice."""
    store = backend.open()
    recorder = Recorder()
    store.add_listener(_failing_listener)
    store.add_listener(recorder)
    t = time.time()
    assert store.record([session("own-1", t + LONG), user("alice", t, t + LONG)])
    assert store.record([session("own-2", t + LONG)], jti="lj", jti_expires_at=t + LONG)
    assert not store.record([session("replayed", t + LONG)], jti="lj", jti_expires_at=t + LONG)
    assert revoked(store, "own-2")
    time.sleep(0.1)  # room for a follower's echo of the own writes, which must not count
    assert sorted(label or "" for label in recorder.labels) == ["alice", "own-1", "own-2"]


def test_listeners_get_followed_writes_once_with_their_label(shared_backend: Backend) -> None:
    """What another instance writes reaches this one's listeners once, labels included; a
    listener failing in the follower's thread does not stop the follower."""
    here, there = shared_backend.open(), shared_backend.open()
    recorder = Recorder()
    here.add_listener(_failing_listener)
    here.add_listener(recorder)
    t = time.time()
    assert there.record([session("from-there", t + LONG)])
    assert there.record([every_session(t, t + LONG, client="portal")])
    assert eventually(lambda: len(recorder.labels) == 2)
    assert there.record([session("later", t + LONG)])
    assert eventually(lambda: revoked(here, "later"))
    assert here.status().available
    time.sleep(0.1)
    assert sorted(label or "" for label in recorder.labels) == ["from-there", "later", "portal"]
    assert all(isinstance(entry, Revocation) for batch in recorder.batches for entry in batch)


# ------------------------------------------------------------------ shared stores


def test_existing_entries_are_loaded_at_start(shared_backend: Backend) -> None:
    """A store started after a revocation was recorded holds it as soon as start() returns."""
    t = time.time()
    assert shared_backend.open().record(
        [session("before-start", t + LONG), user("alice", t, t + LONG)]
    )
    late = shared_backend.open()
    assert revoked(late, "before-start")
    assert revoked(late, None, "alice", t - 1)


def test_a_store_started_later_gets_labels_and_notes_of_earlier_entries(
    shared_backend: Backend,
) -> None:
    """A worker that starts after a logout still learns why each session ended: its
    listeners get the entries recorded before it started with their labels and notes."""
    t = time.time()
    local = Note("local_logout", t - 2, "flask-app")
    told = Note("backchannel", t - 1)
    writer = shared_backend.open()
    assert writer.record(
        [Revocation.instance(ISSUER, "sid-1#app", expires_at=t + LONG, note=local)]
    )
    assert writer.record(
        [Revocation.session(ISSUER, "sid-1", client_id=CLIENT, expires_at=t + LONG, note=told)]
    )
    late = shared_backend.open(start=False)
    recorder = Recorder()
    late.add_listener(recorder)
    late.start()
    assert revoked(late, "sid-1")
    notes = {entry.label: entry.note for batch in recorder.batches for entry in batch}
    assert notes == {"sid-1#app": local, "sid-1": told}


def test_revocation_reaches_another_instance_in_both_directions(
    shared_backend: Backend,
) -> None:
    """What one instance records reaches a second instance's replica, and back."""
    first, second = shared_backend.open(), shared_backend.open()
    t = time.time()
    assert first.record([session("from-first", t + LONG)])
    assert eventually(lambda: revoked(second, "from-first"))
    assert second.record([user("alice", t, t + LONG)])
    assert eventually(lambda: revoked(first, None, "alice", t - 1))
    assert second.record([every_session(t, t + LONG)])
    assert eventually(lambda: revoked(first, None, "bob", t - 1))


def test_followers_apply_authenticated_writes_beyond_their_bound(shared_backend: Backend) -> None:
    """A follower keeps everything others wrote, whatever its own max_entries."""
    writer = shared_backend.open()
    small = shared_backend.open(max_entries=3)
    t = time.time()
    assert writer.record([session(f"many-{index}", t + LONG) for index in range(20)])
    assert all(revoked(small, f"many-{index}") for index in range(20))
    with pytest.raises(StoreFullError):
        small.record([session("junk", t + LONG)], authenticated=False)


def _record_in_child(job: tuple[str, int]) -> tuple[bool, bool]:
    """Runs in a spawned process: record its own entry, then race for a shared jti."""
    url, index = job
    store = open_store(url)
    try:
        t = time.time()
        own = store.record(
            [session(f"process-{index}", t + LONG)], jti=f"own-{index}", jti_expires_at=t + LONG
        )
        contested = store.record(
            [session(f"contested-{index}", t + LONG)], jti="contested", jti_expires_at=t + LONG
        )
        return own, contested
    finally:
        store.close()


def test_revocations_from_other_processes_reach_this_replica(shared_backend: Backend) -> None:
    """Four processes record concurrently: all their entries arrive, and one jti claim wins."""
    store = shared_backend.open()
    workers = 4
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results = pool.map(_record_in_child, [(shared_backend.url, i) for i in range(workers)])
    assert all(own for own, _ in results)
    assert [contested for _, contested in results].count(True) == 1
    winner = [contested for _, contested in results].index(True)
    assert eventually(lambda: all(revoked(store, f"process-{i}") for i in range(workers)))
    assert eventually(lambda: revoked(store, f"contested-{winner}"))
    losers = [i for i in range(workers) if i != winner]
    assert not any(revoked(store, f"contested-{i}") for i in losers)


@pytest.mark.filterwarnings(
    # Python 3.12+ warns on every fork() of a threaded process; forking a started store
    # is exactly what gunicorn --preload does and what this test checks.
    "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"
)
def test_store_keeps_working_in_a_forked_child(shared_backend: Backend) -> None:
    """A store started before fork() records and follows in the child (gunicorn --preload),
    and its version there never repeats one the parent had."""
    store = shared_backend.open()
    t = time.time()
    assert store.record([session("before-fork", t + LONG)])
    versions_before_fork = set(range(store.version + 1))

    def child() -> None:
        ok = store.version not in versions_before_fork
        ok = ok and revoked(store, "before-fork")
        ok = ok and store.record([session("from-child", t + LONG)])
        ok = ok and eventually(lambda: revoked(store, "from-parent"))
        raise SystemExit(0 if ok else 1)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    try:
        assert eventually(lambda: revoked(store, "from-child"))
        assert store.record([session("from-parent", t + LONG)])
    finally:
        process.join(DEADLINE)
    assert process.exitcode == 0


# ------------------------------------------------------------------ acknowledgements


def _followers(store: RevocationStore) -> dict[str, int]:
    """The followers a shared store's backend lists, with their applied positions."""
    if isinstance(store, SQLiteStore):
        with contextlib.closing(sqlite3.connect(store.path)) as conn:
            return dict(conn.execute("SELECT worker, applied FROM followers").fetchall())
    from kc_sso_middleware.stores.redis import RedisStore

    assert isinstance(store, RedisStore)
    applied = store._client.hgetall(store.keys.followers[0])
    return {str(name): int(value) for name, value in applied.items()}


def _fake_follower(store: RevocationStore, name: str, *, heartbeat_age: float) -> None:
    """A follower row at position 0 whose last heartbeat is ``heartbeat_age`` seconds old.

    Nothing ever advances it: fresh, it is a hung worker; old, a dead one.
    """
    if isinstance(store, SQLiteStore):
        with contextlib.closing(sqlite3.connect(store.path)) as conn, conn:
            conn.execute(
                "INSERT OR REPLACE INTO followers (worker, applied, seen) VALUES (?, 0, ?)",
                (name, time.time() - heartbeat_age),
            )
        return
    from kc_sso_middleware.stores.redis import RedisStore

    assert isinstance(store, RedisStore)
    seconds, micros = store._client.time()  # heartbeats are on Redis' clock
    now_ms = seconds * 1000 + micros // 1000
    applied, seen = store.keys.followers
    store._client.hset(applied, name, 0)
    store._client.zadd(seen, {name: now_ms - int(heartbeat_age * 1000)})


def _replica_in_child(url: str, conn: Connection) -> None:
    """Runs in a spawned process: one started store, driven over ``conn``.

    ``("check", sid)`` answers whether the replica revokes ``sid`` right now (memory only,
    no waiting); ``("record", sid)`` records it and answers record()'s result.
    """
    store = open_store(url)
    store.start()
    try:
        conn.send("ready")
        while True:
            command, sid = conn.recv()
            if command == "check":
                conn.send(revoked(store, sid))
            elif command == "record":
                conn.send(store.record([session(sid, time.time() + LONG)]))
            else:
                return
    finally:
        store.close()


def test_record_returns_once_another_process_has_applied_it(shared_backend: Backend) -> None:
    """Once record() or arecord() returns, another process's replica already holds the entry.

    The other process is asked right after the return, with no polling: that is the
    single sign-out guarantee (a back-channel 200 means every worker refuses the session).
    SQLite followers poll every 50 ms here, so a record() that did not wait would be caught.
    """
    url = (
        with_options(shared_backend.url, poll_interval=0.05)
        if shared_backend.name == "sqlite"
        else shared_backend.url
    )
    store = open_store(url)
    shared_backend.opened.append(store)
    store.start()
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    child = context.Process(target=_replica_in_child, args=(url, child_end))
    child.start()
    try:
        assert parent_end.poll(DEADLINE), "the child process did not start its store"
        assert parent_end.recv() == "ready"

        def ask(command: str, sid: str) -> Any:
            parent_end.send((command, sid))
            assert parent_end.poll(DEADLINE), f"the child did not answer {command}"
            return parent_end.recv()

        for round_ in range(10):
            sid = f"from-parent-{round_}"
            expires = time.time() + LONG
            if round_ % 2:
                assert asyncio.run(store.arecord([session(sid, expires)]))
            else:
                assert store.record([session(sid, expires)])
            assert ask("check", sid) is True, f"round {round_}: the child has not applied it"

            sid = f"from-child-{round_}"
            assert ask("record", sid) is True
            assert revoked(store, sid), f"round {round_}: not applied here"
    finally:
        with contextlib.suppress(OSError):
            parent_end.send(("stop", ""))
        child.join(DEADLINE)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    gc.collect()


def test_followers_register_and_unregister(shared_backend: Backend) -> None:
    """A started store lists its follower, soon at the position it applied (the writer
    learns it from the follower's answer; the listing may follow a moment later); close()
    removes it, and so does a process that exits without closing its store (servers
    rarely close it).
    """
    first, second = shared_backend.open(), shared_backend.open()
    assert first.record([session("registered", time.time() + LONG)])
    listed = _followers(first)
    assert {first.follower_name, second.follower_name} <= set(listed)  # type: ignore[attr-defined]
    assert eventually(lambda: _followers(first)[second.follower_name] >= 1)  # type: ignore[attr-defined]
    second.close()
    assert second.follower_name not in _followers(first)  # type: ignore[attr-defined]
    assert first.follower_name in _followers(first)  # type: ignore[attr-defined]

    script = (
        "import sys\n"
        "from kc_sso_middleware.stores import open_store\n"
        "store = open_store(sys.argv[1])\n"
        "store.start()\n"
        "print(store.follower_name)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, shared_backend.url],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=True,
    )
    departed = done.stdout.strip()
    assert departed
    assert departed not in _followers(first)


def test_hung_follower_delays_record_at_most_ack_timeout(
    shared_backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A live-looking follower that never applies: record() waits ack_timeout, succeeds, warns.

    A replay does not wait at all, and ack_timeout=0 does not wait either.
    """
    store = shared_backend.open(ack_timeout=0.3)
    _fake_follower(store, "hung-worker", heartbeat_age=0.0)
    t = time.time()
    with caplog.at_level(logging.WARNING, logger="kc_sso_middleware"):
        began = time.monotonic()
        assert store.record(
            [session("despite-hung", t + LONG)], jti="hung-1", jti_expires_at=t + LONG
        )
        waited = time.monotonic() - began
        assert asyncio.run(store.arecord([session("despite-hung-async", t + LONG)]))
    assert 0.25 <= waited < 5.0
    assert revoked(store, "despite-hung")
    lagging = [r.getMessage() for r in caplog.records if "hung-worker" in r.getMessage()]
    assert len(lagging) == 2, "no warning names the lagging follower"
    assert "ack_timeout" in lagging[0]

    began = time.monotonic()
    assert not store.record([session("replayed", t + LONG)], jti="hung-1", jti_expires_at=t + LONG)
    assert time.monotonic() - began < 0.25, "a replay waited for the followers"

    impatient = shared_backend.open(start=False, ack_timeout=0)
    began = time.monotonic()
    assert impatient.record([session("no-wait", t + LONG)])
    assert time.monotonic() - began < 0.25, "ack_timeout=0 waited"


def test_dead_follower_is_not_waited_for(
    shared_backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A follower whose heartbeat is stale (a crashed worker) never delays record()."""
    store = shared_backend.open(ack_timeout=60)
    live = shared_backend.open()
    _fake_follower(store, "dead-worker", heartbeat_age=10.0)
    with caplog.at_level(logging.WARNING, logger="kc_sso_middleware"):
        began = time.monotonic()
        assert store.record([session("despite-dead", time.time() + LONG)])
        assert time.monotonic() - began < 5.0  # it would take 60 s if it waited
    assert revoked(live, "despite-dead")  # the live one was waited for
    assert not [r for r in caplog.records if "dead-worker" in r.getMessage()]


# ------------------------------------------------------------------ diagnostics


def test_followers_lists_positions_heartbeats_and_lag(shared_backend: Backend) -> None:
    """followers() lists every follower with its position, heartbeat age and lag, and writes
    nothing: a caught-up live worker, a hung one (fresh heartbeat, never advances) and a
    dead one (stale heartbeat, not purged yet) are told apart; a closed store is gone."""
    first, second = shared_backend.open(ack_timeout=2), shared_backend.open()
    names = [first.follower_name, second.follower_name]  # type: ignore[attr-defined]
    for n in range(3):
        assert first.record([session(f"diagnosed-{n}", time.time() + LONG)])
    # The writer learns a follower's position from its answer; its listing follows soon.
    assert eventually(
        lambda: all(s.lag == 0 for s in first.followers() if s.name in names)  # type: ignore[attr-defined]
    )
    _fake_follower(first, "hung-worker", heartbeat_age=0.0)
    _fake_follower(first, "dead-worker", heartbeat_age=10.0)
    before = _followers(first)

    states = {state.name: state for state in first.followers()}  # type: ignore[attr-defined]

    assert _followers(first) == before, "followers() wrote to the backend"
    assert list(states) == sorted(states)
    assert set(states) == {*names, "hung-worker", "dead-worker"}
    for name in names:
        assert states[name].alive
        assert states[name].lag == 0
        assert states[name].seen_age < 3.0
    hung, dead = states["hung-worker"], states["dead-worker"]
    assert hung.alive
    assert hung.applied == 0
    assert hung.lag == states[names[1]].applied >= 3
    assert not dead.alive
    assert 9.0 < dead.seen_age < 30.0
    assert dead.lag == hung.lag

    second.close()
    assert names[1] not in {s.name for s in first.followers()}  # type: ignore[attr-defined]
