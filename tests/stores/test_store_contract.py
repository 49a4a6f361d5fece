"""One contract for every revocation store: memory://, sqlite:///… and redis://….

The first part runs the same tests over every store; the second part runs over the
shared stores only (a revocation recorded by one process reaches the others, and
``record()`` returns only once every live follower has applied it); the last parts cover
each backend's own failure modes.  Waiting is always "poll until true or a generous
deadline": timing itself is measured by the benchmarks, never asserted here (beyond "it
did not hang").
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
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from devtools.redis_server import RedisSentinel, RedisServer
from kc_sso_middleware.errors import ConfigurationError, StoreUnavailableError
from kc_sso_middleware.stores import (
    MemoryStore,
    Revocation,
    RevocationKind,
    RevocationStore,
    open_store,
)
from kc_sso_middleware.stores.sqlite import SQLiteStore

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    import redis

DEADLINE = 15.0  # seconds; only ever reached when a test is about to fail
LONG = 3600.0  # an expiry that outlives every test


class Clock:
    """A clock the test moves by hand (stores and their replicas read it)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def eventually(condition: Callable[[], bool], timeout: float = DEADLINE) -> bool:
    """Poll ``condition`` until it holds or the deadline passes; the result is asserted."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def session(sid: str, expires_at: float) -> Revocation:
    return Revocation(RevocationKind.SESSION, sid, 0.0, expires_at)


def user(sub: str, not_before: float, expires_at: float) -> Revocation:
    return Revocation(RevocationKind.USER, sub, not_before, expires_at)


def realm(not_before: float, expires_at: float) -> Revocation:
    return Revocation(RevocationKind.ALL, "", not_before, expires_at)


def open_url(url: str, timer: Callable[[], float] = time.time) -> RevocationStore:
    """A store for ``url`` with an injected clock (``open_store`` has no clock parameter)."""
    if url.startswith("memory:"):
        return MemoryStore(timer=timer)
    if url.startswith("sqlite:"):
        return SQLiteStore.from_url(url, timer=timer)
    from kc_sso_middleware.stores.redis import RedisStore

    return RedisStore.from_url(url, timer=timer)


@dataclass
class Backend:
    """Opens started stores of one kind on one shared location; closes them afterwards."""

    name: str
    url: str
    #: whether two stores opened here share their revocations
    shared: bool
    opened: list[RevocationStore] = field(default_factory=list)

    def open(self, timer: Callable[[], float] = time.time) -> RevocationStore:
        store = open_url(self.url, timer)
        store.start()
        self.opened.append(store)
        return store

    def close(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the module's contract tests (each test has its own prefix)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, which the test may kill and restart."""
    with RedisServer() as server:
        yield server


def _prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}:"


def _backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if kind == "memory":
        return Backend(kind, "memory://", shared=False)
    if kind == "sqlite":
        return Backend(
            kind, f"sqlite:///{tmp_path / 'revocations.db'}?poll_interval=0.002", shared=True
        )
    server: RedisServer = request.getfixturevalue("redis_server")
    return Backend(kind, f"{server.url}?prefix={_prefix()}", shared=True)


MEMORY = pytest.param("memory", id="memory")
SQLITE = pytest.param("sqlite", id="sqlite")
REDIS = pytest.param("redis", id="redis", marks=pytest.mark.redis)


@pytest.fixture(params=[MEMORY, SQLITE, REDIS])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Every store kind."""
    built = _backend(request.param, request, tmp_path)
    yield built
    built.close()


@pytest.fixture(params=[SQLITE, REDIS])
def shared_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The store kinds shared between processes."""
    built = _backend(request.param, request, tmp_path)
    yield built
    built.close()


# ------------------------------------------------------------------ the contract


def test_started_store_is_available(backend: Backend) -> None:
    """A started store reports its replica as current."""
    assert backend.open().status().available


def test_session_entry_revokes_only_that_sid(backend: Backend) -> None:
    """A sid entry revokes that session whatever its user or login time, and no other."""
    store = backend.open()
    assert store.record([session("sid-1", time.time() + LONG)])
    assert store.is_revoked("sid-1", "someone", time.time())
    assert store.is_revoked("sid-1", None, None)
    assert not store.is_revoked("sid-2", "someone", time.time())


def test_user_entry_revokes_sessions_that_began_strictly_before(backend: Backend) -> None:
    """A user entry revokes that user's sessions begun before not_before; equal or later survive."""
    store = backend.open()
    t = time.time()
    assert store.record([user("alice", t, t + LONG)])
    assert store.is_revoked("any", "alice", t - 1)
    assert not store.is_revoked("any", "alice", t)
    assert not store.is_revoked("any", "alice", t + 1)
    assert not store.is_revoked("any", "bob", t - 1)


def test_realm_entry_revokes_every_session_that_began_strictly_before(
    backend: Backend,
) -> None:
    """A realm-wide entry revokes every user's sessions begun before not_before."""
    store = backend.open()
    t = time.time()
    assert store.record([realm(t, t + LONG)])
    assert store.is_revoked("a", "alice", t - 1)
    assert store.is_revoked(None, None, t - 0.001)
    assert not store.is_revoked("a", "alice", t)
    assert not store.is_revoked("b", "bob", t + 1)


def test_unknown_login_time_counts_as_revoked_where_a_wide_entry_applies(
    backend: Backend,
) -> None:
    """login_time=None is revoked by a user or realm entry that could apply, not otherwise."""
    store = backend.open()
    t = time.time()
    assert store.record([user("alice", t, t + LONG), session("sid-1", t + LONG)])
    assert store.is_revoked("other", "alice", None)
    assert not store.is_revoked("other", "bob", None)
    assert store.record([realm(t, t + LONG)])
    assert store.is_revoked("other", "bob", None)


def test_latest_not_before_wins_whatever_the_recording_order(backend: Backend) -> None:
    """Two user entries merge to the later not_before, recorded in either order."""
    store = backend.open()
    t = time.time()
    assert store.record([user("alice", t, t + LONG)])
    assert store.record([user("alice", t - 100, t + LONG)])
    assert store.is_revoked(None, "alice", t - 50)
    assert not store.is_revoked(None, "alice", t)


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
    assert not store.is_revoked("second", "alice", t - 1)
    if backend.shared:
        # A fresh replica loads what was written: the replayed entries never were.
        fresh = backend.open()
        assert fresh.is_revoked("first", None, None)
        assert fresh.is_revoked("third", None, None)
        assert not fresh.is_revoked("second", "alice", t - 1)


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
    assert stores[winner % len(stores)].is_revoked(f"racer-{winner}", None, None)


def test_expired_entries_are_forgotten(backend: Backend) -> None:
    """Entries stop matching once expires_at passes, and a fresh replica does not load them."""
    clock = Clock()
    store = backend.open(clock)
    t = clock.now
    assert store.record([session("s", t + 10), user("alice", t, t + 10), realm(t - 5, t + 10)])
    assert store.record([session("already-expired", t - 1)])
    assert store.is_revoked("s", None, None)
    assert store.is_revoked(None, "alice", t - 1)
    assert store.is_revoked(None, "bob", t - 6)
    assert not store.is_revoked("already-expired", "carol", t)
    clock.now = t + 11
    assert not store.is_revoked("s", None, None)
    assert not store.is_revoked(None, "alice", t - 1)
    assert not store.is_revoked(None, "bob", t - 6)
    if backend.shared:
        fresh = backend.open(clock)
        assert not fresh.is_revoked("s", "alice", None)


def test_expired_jti_claim_can_be_claimed_again(backend: Backend) -> None:
    """The replay cache is bounded too: a jti whose claim expired is accepted again."""
    store = backend.open()
    assert store.record([], jti="short-lived", jti_expires_at=time.time() + 0.2)
    assert not store.record([], jti="short-lived", jti_expires_at=time.time() + 0.2)
    # Redis expires keys on its own clock, so this waits in real time.
    assert eventually(
        lambda: store.record([], jti="short-lived", jti_expires_at=time.time() + LONG)
    )


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
    assert store.is_revoked("async-1", None, None)
    assert not store.is_revoked("async-2", None, None)
    # A second event loop must work too (one client per loop), and closing the first
    # loop must have closed its connections: an unclosed one would warn (an error here).
    assert asyncio.run(store.arecord([session("async-3", t + LONG)]))
    gc.collect()


# ------------------------------------------------------------------ shared stores


def test_existing_entries_are_loaded_at_start(shared_backend: Backend) -> None:
    """A store started after a revocation was recorded holds it as soon as start() returns."""
    t = time.time()
    assert shared_backend.open().record(
        [session("before-start", t + LONG), user("alice", t, t + LONG)]
    )
    late = shared_backend.open()
    assert late.is_revoked("before-start", None, None)
    assert late.is_revoked(None, "alice", t - 1)


def test_revocation_reaches_another_instance_in_both_directions(
    shared_backend: Backend,
) -> None:
    """What one instance records reaches a second instance's replica, and back."""
    first, second = shared_backend.open(), shared_backend.open()
    t = time.time()
    assert first.record([session("from-first", t + LONG)])
    assert eventually(lambda: second.is_revoked("from-first", None, None))
    assert second.record([user("alice", t, t + LONG)])
    assert eventually(lambda: first.is_revoked(None, "alice", t - 1))
    assert second.record([realm(t, t + LONG)])
    assert eventually(lambda: first.is_revoked(None, "bob", t - 1))


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
    assert eventually(
        lambda: all(store.is_revoked(f"process-{i}", None, None) for i in range(workers))
    )
    assert eventually(lambda: store.is_revoked(f"contested-{winner}", None, None))
    losers = [i for i in range(workers) if i != winner]
    assert not any(store.is_revoked(f"contested-{i}", None, None) for i in losers)


@pytest.mark.filterwarnings(
    # Python 3.12+ warns on every fork() of a threaded process; forking a started store
    # is exactly what gunicorn --preload does and what this test checks.
    "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"
)
def test_store_keeps_working_in_a_forked_child(shared_backend: Backend) -> None:
    """A store started before fork() records and follows in the child (gunicorn --preload)."""
    store = shared_backend.open()
    t = time.time()
    assert store.record([session("before-fork", t + LONG)])

    def child() -> None:
        ok = store.is_revoked("before-fork", None, None)
        ok = ok and store.record([session("from-child", t + LONG)])
        ok = ok and eventually(lambda: store.is_revoked("from-parent", None, None))
        raise SystemExit(0 if ok else 1)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    try:
        assert eventually(lambda: store.is_revoked("from-child", None, None))
        assert store.record([session("from-parent", t + LONG)])
    finally:
        process.join(DEADLINE)
    assert process.exitcode == 0


# ------------------------------------------------------------------ acknowledgements


def _with_options(url: str, **options: object) -> str:
    """``url`` with query options appended (a repeated option: the last one wins)."""
    extra = "&".join(f"{name}={value}" for name, value in options.items())
    return f"{url}{'&' if '?' in url else '?'}{extra}"


def _followers(store: RevocationStore) -> dict[str, int]:
    """The followers a shared store's backend lists, with their applied positions."""
    if isinstance(store, SQLiteStore):
        with contextlib.closing(sqlite3.connect(store.path)) as conn:
            return dict(conn.execute("SELECT worker, applied FROM followers").fetchall())
    from kc_sso_middleware.stores.redis import RedisStore

    assert isinstance(store, RedisStore)
    applied = store._client.hgetall(f"{store.prefix}followers:applied")
    return {name: int(value) for name, value in applied.items()}


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
    store._client.hset(f"{store.prefix}followers:applied", name, 0)
    store._client.zadd(f"{store.prefix}followers:seen", {name: now_ms - int(heartbeat_age * 1000)})


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
                conn.send(store.is_revoked(sid, None, None))
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
        _with_options(shared_backend.url, poll_interval=0.05)
        if (shared_backend.name == "sqlite")
        else shared_backend.url
    )
    store = open_url(url)
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
            assert store.is_revoked(sid, None, None), f"round {round_}: not applied here"
    finally:
        with contextlib.suppress(OSError):
            parent_end.send(("stop", ""))
        child.join(DEADLINE)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    gc.collect()


def test_followers_register_and_unregister(shared_backend: Backend) -> None:
    """A started store lists its follower at the position it applied; close() removes it,
    and so does a process that exits without closing its store (servers rarely close it).
    """
    first, second = shared_backend.open(), shared_backend.open()
    assert first.record([session("registered", time.time() + LONG)])
    listed = _followers(first)
    assert {first.follower_name, second.follower_name} <= set(listed)  # type: ignore[attr-defined]
    assert listed[second.follower_name] >= 1  # type: ignore[attr-defined]
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
    store = open_url(_with_options(shared_backend.url, ack_timeout=0.3))
    shared_backend.opened.append(store)
    store.start()
    _fake_follower(store, "hung-worker", heartbeat_age=0.0)
    t = time.time()
    with caplog.at_level(logging.WARNING, logger="kc_sso_middleware"):
        began = time.monotonic()
        assert store.record(
            [session("despite-hung", t + LONG)], jti="hung-1", jti_expires_at=t + LONG
        )
        waited = time.monotonic() - began
    assert 0.25 <= waited < 5.0
    assert store.is_revoked("despite-hung", None, None)
    lagging = [r.getMessage() for r in caplog.records if "hung-worker" in r.getMessage()]
    assert lagging, "no warning names the lagging follower"
    assert "ack_timeout" in lagging[0]

    began = time.monotonic()
    assert not store.record([session("replayed", t + LONG)], jti="hung-1", jti_expires_at=t + LONG)
    assert time.monotonic() - began < 0.25, "a replay waited for the followers"

    impatient = open_url(_with_options(shared_backend.url, ack_timeout=0))
    shared_backend.opened.append(impatient)
    began = time.monotonic()
    assert impatient.record([session("no-wait", t + LONG)])
    assert time.monotonic() - began < 0.25, "ack_timeout=0 waited"


def test_dead_follower_is_not_waited_for(
    shared_backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A follower whose heartbeat is stale (a crashed worker) never delays record()."""
    store = open_url(_with_options(shared_backend.url, ack_timeout=60))
    shared_backend.opened.append(store)
    store.start()
    live = shared_backend.open()
    _fake_follower(store, "dead-worker", heartbeat_age=10.0)
    with caplog.at_level(logging.WARNING, logger="kc_sso_middleware"):
        began = time.monotonic()
        assert store.record([session("despite-dead", time.time() + LONG)])
        assert time.monotonic() - began < 5.0  # it would take 60 s if it waited
    assert live.is_revoked("despite-dead", None, None)  # the live one was waited for
    assert not [r for r in caplog.records if "dead-worker" in r.getMessage()]


# ------------------------------------------------------------------ sqlite


def test_sqlite_url_forms() -> None:
    """Absolute and relative paths and the query options parse; bad ones name the problem."""
    absolute = SQLiteStore.from_url(
        "sqlite:////var/lib/kc/revocations.db?poll_interval=0.005"
        "&max_entries=10&busy_timeout=250&purge_interval=5"
    )
    assert absolute.path == "/var/lib/kc/revocations.db"
    assert absolute.poll_interval == 0.005
    assert absolute.replica.max_entries == 10
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


def test_sqlite_unusable_directory_is_a_configuration_error(tmp_path: Path) -> None:
    """A directory that cannot be created fails start() with the path in the message."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    store = SQLiteStore(blocker / "revocations.db")
    with pytest.raises(ConfigurationError, match="not-a-directory"):
        store.start()
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
            with sqlite3.connect(path) as conn:
                return (
                    conn.execute("SELECT count(*) FROM revocations").fetchone()[0],
                    conn.execute("SELECT count(*) FROM claimed_jtis").fetchone()[0],
                )

        assert eventually(lambda: counts() == (1, 1))
        assert store.is_revoked("live", None, None)
    finally:
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


# ------------------------------------------------------------------ redis


def _raw_client(url: str) -> redis.Redis:
    """A plain client, to tamper with the store's keys behind its back."""
    import redis  # the redis extra is optional: only the redis tests need it

    return redis.Redis.from_url(url, decode_responses=True)


def test_redis_url_forms() -> None:
    """Store options are taken from the query; the rest goes to redis-py; bad ones fail early."""
    pytest.importorskip("redis", reason="the redis extra is not installed")
    from kc_sso_middleware.stores.redis import RedisStore

    store = RedisStore.from_url(
        "rediss://user:secret@cache.example:6380/2?prefix={kc}:&max_entries=5&stream_maxlen=50"
        "&socket_timeout=3"
    )
    assert store.prefix == "{kc}:"
    assert store.replica.max_entries == 5
    assert store.stream_maxlen == 50
    assert "secret" not in repr(store)
    assert "secret" not in store.connector.description
    assert store.ack_timeout == 1.0
    assert RedisStore.from_url("redis://h/0?ack_timeout=0").ack_timeout == 0
    assert RedisStore.from_url("redis://h/0?ack_timeout=0.25").ack_timeout == 0.25
    sentinel = RedisStore.from_url("redis+sentinel://:pw@s1:26380,s2/mymaster/1?ack_timeout=2")
    assert sentinel.ack_timeout == 2
    assert sentinel.connector.description == "redis+sentinel://s1:26380,s2:26379/mymaster"
    for bad, reason in [
        ("redis://h/0?prefix=", "prefix"),
        ("redis://h/0?max_entries=0", "positive"),
        ("redis://h/0?ack_timeout=-1", "non-negative"),
        ("redis://h/0?ack_timeout=nan", "non-negative"),
        ("redis://h/0?protocol=3", "protocol"),
        ("redis+sentinel://s1/", "accepted form"),
        ("redis+sentinel://s1:x/m", "sentinel address"),
        ("redis+sentinel://s1/m?bogus=1", "unknown option"),
    ]:
        with pytest.raises(ConfigurationError, match=reason):
            RedisStore.from_url(bad)


@pytest.mark.redis
def test_redis_password_and_database_from_the_url() -> None:
    """A password-protected server and a non-zero database number work from the URL."""
    with RedisServer(password="s3cret") as server:
        url = server.url.replace("/0", "/3")
        store = open_url(f"{url}?prefix=pw:")
        try:
            store.start()
            assert store.status().available
            assert store.record([session("sid", time.time() + LONG)])
            raw = _raw_client(url)
            assert raw.zcard("pw:entries") == 1
            raw.close()
        finally:
            store.close()


@pytest.mark.redis
def test_redis_killed_reports_unavailable_and_refuses_writes(own_redis: RedisServer) -> None:
    """Redis killed: status() turns unavailable and record()/arecord() raise; both recover."""
    store = open_url(own_redis.url)
    try:
        store.start()
        assert store.status().available
        own_redis.kill()
        assert eventually(lambda: not store.status().available)
        with pytest.raises(StoreUnavailableError):
            store.record([session("during-outage", time.time() + LONG)])
        with pytest.raises(StoreUnavailableError):
            asyncio.run(store.arecord([session("during-outage", time.time() + LONG)]))
        assert not store.is_revoked("during-outage", None, None)
        own_redis.start()
        assert eventually(lambda: store.status().available)
        assert store.record([session("after-outage", time.time() + LONG)])
    finally:
        store.close()
    gc.collect()


@pytest.mark.redis
def test_redis_down_at_start_does_not_crash_and_recovers(own_redis: RedisServer) -> None:
    """start() with Redis down returns; the follower keeps retrying and syncs once it is up."""
    own_redis.kill()
    store = open_url(own_redis.url)
    other = open_url(own_redis.url)
    try:
        store.start()
        assert not store.status().available
        own_redis.start()
        assert other.record([session("written-while-follower-was-away", time.time() + LONG)])
        assert eventually(lambda: store.status().available)
        assert eventually(lambda: store.is_revoked("written-while-follower-was-away", None, None))
    finally:
        store.close()
        other.close()


@pytest.mark.redis
def test_redis_restart_resyncs_from_the_keyspace(own_redis: RedisServer) -> None:
    """After a restart the follower resyncs, so entries it was never notified of arrive."""
    from kc_sso_middleware.stores.redis import RedisStore

    store = RedisStore.from_url(own_redis.url)
    other = open_url(own_redis.url)
    t = time.time()
    try:
        store.start()
        # An entry in the keyspace without a feed message: a lost notification.
        raw = _raw_client(own_redis.url)
        raw.zadd(f"{store.prefix}entries", {"sub:silent": t + LONG})
        raw.hset(f"{store.prefix}not_before", "sub:silent", t)
        raw.close()
        own_redis.stop(save=True)
        assert eventually(lambda: not store.status().available)
        with pytest.raises(StoreUnavailableError):
            other.record([session("refused", t + LONG)])
        own_redis.start()
        assert other.record([session("after-restart", t + LONG)])
        assert eventually(lambda: store.status().available)
        assert eventually(lambda: store.is_revoked("after-restart", None, None))
        assert eventually(lambda: store.is_revoked(None, "silent", t - 1))
    finally:
        store.close()
        other.close()


@pytest.mark.redis
def test_redis_feed_gap_triggers_full_resync(redis_server: RedisServer) -> None:
    """A feed message whose seq skips ahead (a trimmed feed) makes the follower resync."""
    from kc_sso_middleware.stores.redis import RedisStore

    url = f"{redis_server.url}?prefix={_prefix()}"
    store = RedisStore.from_url(url)
    t = time.time()
    try:
        store.start()
        raw = _raw_client(redis_server.url)
        raw.zadd(f"{store.prefix}entries", {"sid:only-in-keyspace": t + LONG})
        raw.xadd(f"{store.prefix}feed", {"seq": "1000", "data": "[]"})
        raw.close()
        assert eventually(lambda: store.is_revoked("only-in-keyspace", None, None))
    finally:
        store.close()


@pytest.mark.redis
def test_redis_purges_expired_entries(redis_server: RedisServer) -> None:
    """Each write removes expired entries, so the keyspace stays bounded."""
    clock = Clock()
    prefix = _prefix()
    store = open_url(f"{redis_server.url}?prefix={prefix}", clock)
    try:
        t = clock.now
        assert store.record([session("old", t + 10), user("alice", t, t + 10)])
        clock.now = t + 11
        assert store.record([session("new", t + LONG)])
        raw = _raw_client(redis_server.url)
        assert raw.zrange(f"{prefix}entries", 0, -1) == ["sid:new"]
        assert raw.hlen(f"{prefix}not_before") == 0
        raw.close()
    finally:
        store.close()


@pytest.mark.redis
def test_redis_retried_write_is_not_a_replay(redis_server: RedisServer) -> None:
    """The same script call run twice (a retry after a lost reply) succeeds both times.

    Both report a seq to wait for (the retry's is at or past the first attempt's); only a
    real replay reports 0.
    """
    from kc_sso_middleware.stores.redis import RedisStore

    store = RedisStore.from_url(f"{redis_server.url}?prefix={_prefix()}")
    try:
        t = time.time()
        keys, args = store._script_call([session("retried", t + LONG)], "jti-r", t + LONG)
        first = store._script(keys=keys, args=args)
        assert first >= 1
        assert store._script(keys=keys, args=args) >= first
        assert not store.record([session("replay", t + LONG)], jti="jti-r", jti_expires_at=t + LONG)
    finally:
        store.close()


@pytest.mark.redis
def test_redis_through_sentinel(redis_server: RedisServer) -> None:
    """A redis+sentinel:// URL finds the master; writes, async writes and following work."""
    with RedisSentinel(redis_server) as sentinel:
        url = f"{sentinel.url}?prefix={_prefix()}"
        first, second = open_url(url), open_url(url)
        try:
            first.start()
            second.start()
            assert first.status().available
            t = time.time()
            assert first.record([session("via-sentinel", t + LONG)])
            assert asyncio.run(first.arecord([session("via-sentinel-async", t + LONG)]))
            assert eventually(lambda: second.is_revoked("via-sentinel", None, None))
            assert eventually(lambda: second.is_revoked("via-sentinel-async", None, None))
        finally:
            first.close()
            second.close()
        gc.collect()
