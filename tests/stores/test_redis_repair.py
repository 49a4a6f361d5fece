"""When Redis loses data: the workers find out and write back what they hold (real Redis).

A Redis restarted without persistence, emptied under live connections, or failed over to
a replica that missed the last writes: every revocation a surviving worker holds goes
back to Redis (and so to workers started afterwards), replayed logout tokens stay
refused, nothing comes back past its expiry, and a worker started meanwhile does not
report current before the repair.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import pytest

from devtools.redis_server import RedisServer
from kc_sso_middleware.stores import open_store

from ._helpers import LONG, Clock, eventually, revoked, session, user
from .conftest import new_prefix, with_options

if TYPE_CHECKING:
    import redis

    from kc_sso_middleware.stores.redis import RedisStore

pytest.importorskip("redis", reason="the redis extra is not installed")
pytestmark = pytest.mark.redis


def _raw(url: str) -> redis.Redis:
    import redis

    return redis.Redis.from_url(url, decode_responses=True)


def _open(url: str, timer: Clock | None = None) -> RedisStore:
    from kc_sso_middleware.stores.redis import RedisStore

    return RedisStore.from_url(url, timer=timer or time.time)


def test_restart_without_persistence_is_repaired_from_a_survivor(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis SIGKILLed and restarted empty: the surviving worker writes back every entry
    and jti claim it holds, so a worker started afterwards enforces them and a replayed
    token is still refused; the generation is a new one."""
    url = with_options(own_redis.url, prefix=new_prefix())
    survivor = _open(url)
    t = time.time()
    try:
        survivor.start()
        assert survivor.record([session("sid-a", t + LONG)], jti="jti-a", jti_expires_at=t + LONG)
        assert survivor.record([user("alice", t, t + LONG)])
        before = survivor._generation
        with caplog.at_level(logging.WARNING, logger="kc_sso_middleware"):
            own_redis.kill()
            own_redis.start()
            assert eventually(lambda: survivor.status().available)
        assert survivor._generation not in (None, before)
        assert any("Redis lost data" in r.getMessage() for r in caplog.records)
        late = _open(url)
        try:
            late.start()
            assert late.status().available
            assert revoked(late, "sid-a")
            assert revoked(late, None, "alice", t - 1)
            assert not late.record([session("replayed", t + LONG)], jti="jti-a")
            assert not revoked(late, "replayed")
        finally:
            late.close()
    finally:
        survivor.close()


def test_new_worker_waits_for_the_repair_of_a_restarted_redis(own_redis: RedisServer) -> None:
    """A worker started while Redis is down, and Redis comes back empty: it reports
    current only once the survivor has written back, and then holds the survivor's
    entries from the start."""
    url = with_options(own_redis.url, prefix=new_prefix())
    survivor = _open(url)
    newcomer = _open(url)
    t = time.time()
    try:
        survivor.start()
        assert survivor.record([session("before-the-loss", t + LONG)])
        own_redis.kill()
        newcomer.start()  # Redis is down: returns, unavailable
        assert not newcomer.status().available
        own_redis.start()
        assert eventually(lambda: newcomer.status().available)
        # Current means repaired: no polling needed for the entry.
        assert revoked(newcomer, "before-the-loss")
    finally:
        survivor.close()
        newcomer.close()


def test_new_worker_on_a_fresh_redis_starts_after_repair_wait(own_redis: RedisServer) -> None:
    """With no survivor at all (a new deployment, or everyone restarted), a worker on a
    Redis up for less than repair_wait reports current once that has passed, and every
    worker then agrees on one generation."""
    url = with_options(own_redis.url, prefix=new_prefix(), repair_wait=1)
    began = time.monotonic()
    first, second = _open(url), _open(url)
    try:
        first.start()
        second.start()
        assert first.status().available
        assert second.status().available
        assert time.monotonic() - began >= 1.0 - _uptime(own_redis) - 0.05
        assert first._generation == second._generation is not None
    finally:
        first.close()
        second.close()


def _uptime(server: RedisServer) -> float:
    raw = _raw(server.url)
    try:
        return float(raw.info("server")["uptime_in_seconds"])
    finally:
        raw.close()


def test_no_repair_wait_on_a_redis_that_has_been_up(redis_server: RedisServer) -> None:
    """A new prefix on a Redis up for longer than repair_wait is a new deployment: the
    first worker creates the generation without waiting (start() returns current)."""
    assert eventually(lambda: _uptime(redis_server) >= 1.5)
    url = with_options(redis_server.url, prefix=new_prefix(), repair_wait=1)
    store = _open(url)
    try:
        began = time.monotonic()
        store.start()
        assert store.status().available
        assert time.monotonic() - began < 1.0
    finally:
        store.close()


def test_new_worker_waits_while_a_repairer_is_listed(redis_server: RedisServer) -> None:
    """A worker that starts while another one writes back does not report current until
    the repairer leaves the list (or its lease runs out)."""
    url = with_options(redis_server.url, prefix=new_prefix())
    first = _open(url)
    try:
        first.start()
        raw = _raw(redis_server.url)
        seconds, _ = raw.time()
        raw.zadd(first.keys.repairers, {"someone-repairing": (seconds + 60) * 1000})
        waiting = _open(url)
        starting = threading.Thread(target=waiting.start)  # start() waits for the first sync
        try:
            starting.start()
            assert eventually(lambda: "write back" in waiting.status().detail)
            assert not waiting.status().available
            raw.zrem(first.keys.repairers, "someone-repairing")
            assert eventually(lambda: waiting.status().available)
            starting.join()
        finally:
            starting.join()
            waiting.close()
            raw.close()
    finally:
        first.close()


def test_emptied_under_live_connections_is_found_by_the_heartbeat(
    redis_server: RedisServer,
) -> None:
    """The keyspace deleted while every connection stays up (FLUSHALL, eviction): the
    next heartbeat finds the generation gone and the workers write back."""
    url = with_options(redis_server.url, prefix=new_prefix())
    one, two = _open(url), _open(url)
    t = time.time()
    try:
        one.start()
        two.start()
        assert one.record([session("flushed", t + LONG)])
        raw = _raw(redis_server.url)
        names = raw.keys(f"{one.prefix}*")
        raw.delete(*names)
        assert eventually(lambda: raw.zscore(one.keys.entries, _member("flushed")) is not None)
        raw.close()
        assert eventually(lambda: one.status().available and two.status().available)
        fresh = _open(url)
        try:
            fresh.start()
            assert revoked(fresh, "flushed")
        finally:
            fresh.close()
    finally:
        one.close()
        two.close()


def _member(sid: str) -> str:
    return f"sid:{session(sid, 0).subject}"


def _written_then_trimmed(store: RedisStore, t: float) -> None:
    """Record "kept" and alice's user entry, then enough others that the capped feed
    (stream_maxlen=1) no longer holds them: only the keyspace (and replicas) do."""
    assert store.record([session("kept", t + LONG), user("alice", t, t + LONG)])
    for i in range(300):
        assert store.record([session(f"filler-{i}", t + LONG)])


@pytest.mark.parametrize("evicted", ["entries", "not_before"])
def test_evicted_entries_are_found_by_the_heartbeat(
    redis_server: RedisServer, evicted: str
) -> None:
    """Redis evicting the entries zset (and seq) or the not_before hash under maxmemory,
    while the generation, read every heartbeat, stays: the generation's copy goes with
    it, so the worker finds the loss and writes back; a worker started afterwards
    enforces the entries the feed no longer holds."""
    url = with_options(redis_server.url, prefix=new_prefix(), stream_maxlen=1)
    survivor = _open(url)
    t = time.time()
    try:
        survivor.start()
        _written_then_trimmed(survivor, t)
        generation = survivor._generation
        raw = _raw(redis_server.url)
        try:
            if evicted == "entries":
                raw.delete(survivor.keys.entries, survivor.keys.seq)
            else:
                raw.delete(survivor.keys.not_before)
            assert eventually(lambda: survivor._generation != generation)
            assert eventually(
                lambda: raw.zscore(survivor.keys.entries, _member("kept")) is not None
            )
            assert eventually(lambda: raw.hlen(survivor.keys.not_before) == 2)  # alice, copy
        finally:
            raw.close()
        assert eventually(lambda: survivor.status().available)
        fresh = _open(url)
        try:
            fresh.start()
            assert revoked(fresh, "kept")
            assert revoked(fresh, None, "alice", t - 1)
        finally:
            fresh.close()
    finally:
        survivor.close()


def test_new_worker_waits_for_the_repair_of_evicted_entries(redis_server: RedisServer) -> None:
    """A worker that starts right after the entries were evicted (before any survivor's
    heartbeat noticed) starts a new generation and waits for the survivors' write-back
    rather than syncing without the entries."""
    url = with_options(redis_server.url, prefix=new_prefix(), stream_maxlen=1)
    survivor = _open(url)
    t = time.time()
    try:
        survivor.start()
        _written_then_trimmed(survivor, t)
        raw = _raw(redis_server.url)
        raw.delete(survivor.keys.entries, survivor.keys.not_before, survivor.keys.seq)
        raw.close()
        late = _open(url)
        try:
            late.start()
            assert late.status().available
            assert revoked(late, "kept")
            assert revoked(late, None, "alice", t - 1)
        finally:
            late.close()
    finally:
        survivor.close()


def test_a_generation_without_copies_is_no_loss(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A keyspace whose generation an older version wrote (no copies in entries and
    not_before) is followed as before: no repair, no new generation."""
    url = with_options(redis_server.url, prefix=new_prefix())
    store = _open(url)
    raw = _raw(redis_server.url)
    t = time.time()
    raw.set(store.keys.generation, "0123456789abcdef")
    raw.zadd(store.keys.entries, {_member("older"): t + LONG})
    raw.close()
    try:
        with caplog.at_level(logging.INFO, logger="kc_sso_middleware"):
            store.start()
            assert store.status().available
            assert revoked(store, "older")
            assert store.record([session("newer", t + LONG)])
            time.sleep(1.5)  # a heartbeat
            assert store.status().available
        assert store._generation == "0123456789abcdef"
        assert not any("repairing" in r.getMessage() for r in caplog.records)
    finally:
        store.close()


def test_failover_to_a_replica_that_missed_writes_is_repaired(redis_server: RedisServer) -> None:
    """Same generation, but the feed no longer holds the last message a worker applied
    (a failover to a lagging replica, simulated): on reconnecting, the worker writes back
    what went missing, starts a new generation, and the others write back as well."""
    url = with_options(redis_server.url, prefix=new_prefix())
    one, two = _open(url), _open(url)
    t = time.time()
    try:
        one.start()
        two.start()
        assert one.record([session("kept", t + LONG)])
        assert one.record([session("missed-by-the-replica", t + LONG)])
        generation = two._generation
        raw = _raw(redis_server.url)
        # The "replica" never got the last write: its message and its entry are gone.
        (last_id, _fields), *_ = raw.xrevrange(one.keys.feed, count=1)
        raw.xdel(one.keys.feed, last_id)
        raw.zrem(one.keys.entries, _member("missed-by-the-replica"))
        for store in (one, two):  # the failover drops every connection
            raw.client_kill_filter(_id=store._follower_id)
        assert eventually(lambda: two._generation != generation)
        assert eventually(
            lambda: raw.zscore(one.keys.entries, _member("missed-by-the-replica")) is not None
        )
        raw.close()
        assert eventually(lambda: one.status().available and two.status().available)
    finally:
        one.close()
        two.close()


def test_write_back_never_outlives_an_entry_and_is_idempotent(
    own_redis: RedisServer,
) -> None:
    """An entry that expired on the worker's clock is not written back; two survivors
    writing back the same entries leave one copy with the true expiry, not later."""
    clock = Clock()
    url = with_options(own_redis.url, prefix=new_prefix())
    one, two = _open(url, clock), _open(url, clock)
    t = clock.now
    try:
        one.start()
        two.start()
        assert one.record([session("short", t + 20), session("long", t + LONG)])
        assert eventually(lambda: revoked(two, "long"))
        clock.now = t + 30  # "short" has expired on the workers' clock
        own_redis.kill()
        own_redis.start()
        assert eventually(lambda: one.status().available and two.status().available)
        raw = _raw(own_redis.url)
        try:
            held = raw.zrange(one.keys.entries, 0, -1, withscores=True)
            entries = {m: score for m, score in held if not m.startswith("gen:")}  # no copy
        finally:
            raw.close()
        assert _member("short") not in entries
        assert entries[_member("long")] <= t + LONG
        assert len(entries) == 1
    finally:
        one.close()
        two.close()


def test_open_store_accepts_repair_options() -> None:
    """repair_wait and wait_replicas are store options of every Redis scheme."""
    store = open_store("redis://h/0?repair_wait=0.5&wait_replicas=2")
    assert store.repair_wait == 0.5  # type: ignore[attr-defined]
    assert store.wait_replicas == 2  # type: ignore[attr-defined]
    assert open_store("redis://h/0").wait_replicas == 0  # type: ignore[attr-defined]


def test_a_sync_under_a_changed_generation_ends_when_the_store_closes(
    redis_server: RedisServer,
) -> None:
    """Closing while a follower syncs against a generation it has not checked yet (another
    worker just found a loss) ends the sync; it used to publish the stale generation,
    be refused, and try again for ever, so close() never returned."""
    import contextlib

    from kc_sso_middleware.stores.redis.follower import Follower

    url = with_options(redis_server.url, prefix=new_prefix())
    store = _open(url)
    store.start()
    try:
        assert store.record([session("before", time.time() + LONG)])
        with contextlib.ExitStack() as connection:
            client = store.connector.sync_client(True, connection)
            store._generation = "a generation Redis no longer holds"
            store._stop.set()
            syncing = threading.Thread(target=Follower(store, client).sync, daemon=True)
            syncing.start()
            syncing.join(10)
            assert not syncing.is_alive()
    finally:
        store.close()
