"""The Redis store's own forms and failure modes, against real redis-server processes."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from devtools.redis_server import RedisSentinel, RedisServer
from kc_sso_middleware.errors import ConfigurationError, StoreUnavailableError
from kc_sso_middleware.stores import _following as following
from kc_sso_middleware.stores import open_store
from kc_sso_middleware.stores._following import Write
from kc_sso_middleware.stores.model import Note
from kc_sso_middleware.stores.redis import follower as redis_follower

from ._helpers import LONG, Clock, Recorder, eventually, revoked, session, user
from .conftest import new_prefix

if TYPE_CHECKING:
    import redis

    from kc_sso_middleware.stores.redis import RedisStore

pytest.importorskip("redis", reason="the redis extra is not installed")


def _raw_client(url: str) -> redis.Redis:
    """A plain client, to tamper with the store's keys behind its back."""
    import redis

    return redis.Redis.from_url(url, decode_responses=True)


def _xreads(raw: redis.Redis) -> int:
    """How many XREAD calls the server has run."""
    stats = raw.info("commandstats").get("cmdstat_xread", {})
    return int(stats.get("calls", 0))


def _idle(raw: redis.Redis, bells: list[str]) -> bool:
    """Whether every follower of ``bells`` waits on its bell, with none left ringing and
    no read for longer than a follower leaves its own writes to their writer (it reads
    every millisecond meanwhile, and would look blocked in between)."""
    reads = _xreads(raw)
    time.sleep(2 * redis_follower._DEFER_SECONDS)
    blocked = sum("b" in client["flags"] for client in raw.client_list())
    ringing = any(raw.llen(bell) for bell in bells)
    return blocked >= len(bells) and not ringing and _xreads(raw) == reads


def _store(url: str, timer: Clock | None = None) -> RedisStore:
    from kc_sso_middleware.stores.redis import RedisStore

    return RedisStore.from_url(url, timer=timer or time.time)


def test_redis_url_forms() -> None:
    """Store options are taken from the query, redis-py's checked ones passed on; bad ones
    fail early."""
    store = _store(
        "rediss://user:secret@cache.example:6380/2?prefix={kc}:&max_entries=5&stream_maxlen=50"
        "&socket_timeout=3"
    )
    assert store.prefix == "{kc}:"
    assert store._replica.max_entries == 5
    assert store.stream_maxlen == 50
    assert "secret" not in repr(store)
    assert "secret" not in store.connector.description
    assert store._client.connection_pool.connection_kwargs["socket_timeout"] == 3
    assert store._client.connection_pool.connection_kwargs["db"] == 2
    assert store.ack_timeout == 1.0
    assert _store("redis://h/0?ack_timeout=0").ack_timeout == 0
    assert _store("redis://h/0?ack_timeout=0.25").ack_timeout == 0.25
    assert (
        _store("unix:///run/redis.sock?db=4")._client.connection_pool.connection_kwargs["db"] == 4
    )
    sentinel = _store("redis+sentinel://:pw@s1:26380,s2/mymaster/1?ack_timeout=2")
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
            _store(bad)


@pytest.mark.redis
def test_redis_password_and_database_from_the_url() -> None:
    """A password-protected server and a non-zero database number work from the URL."""
    with RedisServer(password="s3cret") as server:
        url = server.url.replace("/0", "/3")
        store = open_store(f"{url}?prefix=pw:&repair_wait=0")
        try:
            store.start()
            assert store.status().available
            assert store.record([session("sid", time.time() + LONG)])
            raw = _raw_client(url)
            # The entry, not the generation's copy (score +inf)
            assert raw.zcount("pw:entries", "-inf", "(+inf") == 1
            raw.close()
        finally:
            store.close()


@pytest.mark.redis
def test_redis_killed_reports_unavailable_and_refuses_writes(own_redis: RedisServer) -> None:
    """Redis killed: status() turns unavailable and record()/arecord() raise; both recover."""
    store = open_store(f"{own_redis.url}?repair_wait=0")
    try:
        store.start()
        assert store.status().available
        own_redis.kill()
        assert eventually(lambda: not store.status().available)
        with pytest.raises(StoreUnavailableError):
            store.record([session("during-outage", time.time() + LONG)])
        with pytest.raises(StoreUnavailableError):
            asyncio.run(store.arecord([session("during-outage", time.time() + LONG)]))
        assert not revoked(store, "during-outage")
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
    store = open_store(own_redis.url)
    other = open_store(own_redis.url)
    try:
        store.start()
        assert not store.status().available
        own_redis.start()
        assert other.record([session("written-while-follower-was-away", time.time() + LONG)])
        assert eventually(lambda: store.status().available)
        assert eventually(lambda: revoked(store, "written-while-follower-was-away"))
    finally:
        store.close()
        other.close()


@pytest.mark.redis
def test_redis_restart_resyncs_from_the_keyspace(own_redis: RedisServer) -> None:
    """After a restart the follower resyncs, so entries it was never notified of arrive
    (without their label: labels live only in the feed)."""
    store = _store(f"{own_redis.url}?repair_wait=0")
    other = open_store(own_redis.url)
    recorder = Recorder()
    store.add_listener(recorder)
    t = time.time()
    silent = user("silent", t, t + LONG)
    try:
        store.start()
        # An entry in the keyspace without a feed message: a lost notification.
        raw = _raw_client(own_redis.url)
        raw.zadd(store.keys.entries, {f"sub:{silent.subject}": t + LONG})
        raw.hset(store.keys.not_before, f"sub:{silent.subject}", t)
        raw.close()
        own_redis.stop(save=True)
        assert eventually(lambda: not store.status().available)
        with pytest.raises(StoreUnavailableError):
            other.record([session("refused", t + LONG)])
        own_redis.start()
        assert other.record([session("after-restart", t + LONG)])
        assert eventually(lambda: store.status().available)
        assert eventually(lambda: revoked(store, "after-restart"))
        assert eventually(lambda: revoked(store, None, "silent", t - 1))
        # Each once; the silent one without a label (the resync finds it in the keyspace).
        after = session("after-restart", t + LONG)
        assert sorted(recorder.subjects) == sorted([silent.subject, after.subject])
        assert None in recorder.labels
    finally:
        store.close()
        other.close()


@pytest.mark.redis
def test_redis_start_replays_the_whole_feed_for_labels_and_notes(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A starting worker reads every message the feed holds, over several batches, so
    its entries come with their labels and notes; an unreadable message is counted once
    and the rest still apply; the follower then tails from the feed's end."""
    store_url = f"{redis_server.url}?prefix={new_prefix()}"
    store = _store(store_url)
    recorder = Recorder()
    store.add_listener(recorder)
    t = time.time()
    count = 2_345  # more than two XRANGE batches
    raw = _raw_client(redis_server.url)
    with raw.pipeline(transaction=False) as pipe:
        for n in range(1, count + 1):
            entry = session(f"replayed-{n}", t + LONG)
            note = Note("backchannel", t, f"client-{n}").encode()
            data = [[entry.kind.value, entry.subject, 0.0, t + LONG, entry.label, note]]
            pipe.xadd(store.keys.feed, {"seq": n, "data": json.dumps(data), "by": "x"})
        pipe.xadd(store.keys.feed, {"seq": count + 1, "data": "not json", "by": "x"})
        pipe.set(store.keys.seq, count + 1)
        pipe.execute()
    raw.close()
    with caplog.at_level(logging.WARNING, logger="kc_sso_middleware"):
        try:
            store.start()
            notes = {e.label: e.note for batch in recorder.batches for e in batch}
            assert len(notes) == count
            assert notes["replayed-1"] == Note("backchannel", t, "client-1")
            assert notes[f"replayed-{count}"] == Note("backchannel", t, f"client-{count}")
            assert revoked(store, f"replayed-{count}")
            other = open_store(store_url)
            try:
                assert other.record([session("after-the-replay", t + LONG)])
            finally:
                other.close()
            assert eventually(lambda: revoked(store, "after-the-replay"))
        finally:
            store.close()
    messages = [r.getMessage() for r in caplog.records]
    assert not any("gap" in m for m in messages)  # tailing went on from the feed's end
    assert (
        sum("1 change feed messages are not in this version's format" in m for m in messages) == 1
    )


@pytest.mark.redis
def test_redis_scripts_flushed_behind_the_store_are_loaded_again(
    redis_server: RedisServer,
) -> None:
    """``SCRIPT FLUSH`` (or a failover to a replica without the scripts): the next write
    gets NOSCRIPT, loads the script and is recorded; the follower's heartbeat script is
    loaded again too, and entries keep arriving from another worker."""
    url = f"{redis_server.url}?prefix={new_prefix()}"
    store, other = _store(url), open_store(url)
    t = time.time()
    raw = _raw_client(redis_server.url)
    try:
        store.start()
        raw.script_flush()
        assert store.record([session("after-the-flush", t + LONG)])
        assert revoked(store, "after-the-flush")
        raw.script_flush()
        time.sleep(1.5)  # past a heartbeat: the follower's PUBLISH meets NOSCRIPT
        assert other.record([session("from-another", t + LONG)])
        assert eventually(lambda: revoked(store, "from-another"))
        assert store.status().available
    finally:
        raw.close()
        store.close()
        other.close()


@pytest.mark.redis
def test_redis_store_works_with_redis_py_own_parser() -> None:
    """Where hiredis cannot be installed, redis-py parses replies itself: the store's
    contract, its script reload and its feed replay hold with that parser too."""
    root = Path(__file__).resolve().parents[2]
    tests = [
        "tests/stores/test_store_contract.py",
        "tests/stores/test_redis.py::test_redis_scripts_flushed_behind_the_store_are_loaded_again",
        "tests/stores/test_redis.py::test_redis_start_replays_the_whole_feed_for_labels_and_notes",
    ]
    plugins = ["-p", "tests._pure_python_redis", "-p", "no:cacheprovider"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *plugins, "-k", "redis", *tests],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "redis-py parser: pure Python (hiredis hidden)" in output
    assert re.search(r"\b[1-9]\d* passed", output), output[-2000:]
    assert "skipped" not in output, output[-2000:]


@pytest.mark.redis
def test_redis_a_write_wakes_the_other_followers_and_not_its_own(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each write rings the bell of every other live follower, which reads it at once
    (with heartbeats 30 s apart, nothing else could wake it) and acknowledges it before
    record() returns; the writer's own follower is not woken at all: its process applied
    the write itself."""
    monkeypatch.setattr(following, "HEARTBEAT_INTERVAL", 30.0)
    monkeypatch.setattr(redis_follower, "HEARTBEAT_INTERVAL", 30.0)
    here, there = _store(own_redis.url), _store(own_redis.url)
    raw = _raw_client(own_redis.url)
    t = time.time()
    writes = 20
    try:
        here.start()
        there.start()
        assert there.record([session("settle", t + LONG)])  # both followers past start-up
        assert revoked(here, "settle")
        # Both idle before counting: a follower still starting up may read a write in its
        # resync and then hear that write's bell, or read its own write before its writer
        # applied it and read again until then; either is a read more after the count began.
        bells = [s.keys.wake(s.follower_name) for s in (here, there)]
        assert eventually(lambda: _idle(raw, bells))
        before = _xreads(raw)
        with caplog.at_level(logging.WARNING, logger="kc_sso_middleware"):
            for n in range(writes):
                assert here.record([session(f"rung-{n}", t + LONG)])
                # Acknowledged: applied there before record() returned.
                assert revoked(there, f"rung-{n}"), n
        reads = _xreads(raw) - before
    finally:
        raw.close()
        here.close()
        there.close()
    assert not [r for r in caplog.records if "ack_timeout" in r.getMessage()]
    # One read per write by the other follower (fewer if two writes shared a wake-up),
    # none by the writer's own.  Woken by its own writes too, it would read about twice
    # as often.
    assert 1 <= reads <= writes, reads


@pytest.mark.redis
def test_redis_feed_gap_triggers_full_resync(redis_server: RedisServer) -> None:
    """A feed message whose seq skips ahead (a trimmed feed) makes the follower resync."""
    store = _store(f"{redis_server.url}?prefix={new_prefix()}")
    t = time.time()
    entry = session("only-in-keyspace", t + LONG)
    try:
        store.start()
        raw = _raw_client(redis_server.url)
        raw.zadd(store.keys.entries, {f"sid:{entry.subject}": t + LONG})
        raw.xadd(store.keys.feed, {"seq": "1000", "data": "[]"})
        raw.close()
        assert eventually(lambda: revoked(store, "only-in-keyspace"))
    finally:
        store.close()


@pytest.mark.redis
def test_redis_feed_message_without_seq_is_skipped(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A foreign message on the feed (no integer seq) is skipped with a warning naming
    it: the followers stay available, a worker that starts while it is the newest message
    syncs, and later writes reach everyone (no gap is assumed past it)."""
    url = f"{redis_server.url}?prefix={new_prefix()}"
    writer, reader = _store(url), _store(url)
    raw = _raw_client(redis_server.url)
    t = time.time()
    try:
        with caplog.at_level(logging.WARNING, logger="kc_sso_middleware"):
            writer.start()
            reader.start()
            assert writer.record([session("before", t + LONG)])
            foreign = raw.xadd(writer.keys.feed, {"hello": "world"})
            odd = raw.xadd(writer.keys.feed, {"seq": "not-a-number", "data": "[]"})
            assert eventually(lambda: reader._last_id == odd)
            assert reader.status().available
            late = _store(url)
            try:
                late.start()  # the newest message has no seq: the position is the seq key's
                assert late.status().available, late.status()
                written = writer.record([session("after", t + LONG)])
                assert written
                assert eventually(lambda: revoked(reader, "after") and revoked(late, "after"))
                assert revoked(late, "before")
                assert reader.status().available
                assert late.status().available
            finally:
                late.close()
    finally:
        writer.close()
        reader.close()
        raw.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"message {foreign} has no integer seq" in m for m in messages)
    assert not any("disconnected" in m or "feed gap" in m for m in messages), messages


@pytest.mark.redis
def test_redis_entries_of_the_old_format_are_ignored_without_harm(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Key-based members and messages of 0.1 under the same prefix are skipped with a
    warning; the follower keeps following and new entries still work."""
    store = _store(f"{redis_server.url}?prefix={new_prefix()}")
    t = time.time()
    raw = _raw_client(redis_server.url)
    raw.zadd(store.keys.entries, {"sid:3f2a-old-uuid": t + LONG, "all:": t + LONG})
    with caplog.at_level(logging.WARNING, logger="kc_sso_middleware"):
        try:
            store.start()
            assert store.status().available
            seq = raw.incr(store.keys.seq)
            raw.xadd(store.keys.feed, {"seq": seq, "data": json.dumps([["sid", "x", 0, t + 9]])})
            assert store.record([session("new-format", t + LONG)])
            assert revoked(store, "new-format")
            assert store.status().available
        finally:
            store.close()
            raw.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any("2 entries in the keyspace" in m for m in messages)
    assert any("feed message is not in this version's format" in m for m in messages)


@pytest.mark.redis
def test_redis_purges_expired_entries(redis_server: RedisServer) -> None:
    """Each write removes entries expired by more than the purge margin (the clock skew
    allowed plus a minute), so the keyspace stays bounded."""
    clock = Clock()
    store = _store(f"{redis_server.url}?prefix={new_prefix()}", clock)
    try:
        t = clock.now
        clock.now = t - store.purge_margin - 20  # written long ago, expired since
        assert store.record([session("old", clock.now + 10), user("alice", t, clock.now + 10)])
        clock.now = t
        new = session("new", t + LONG)
        assert store.record([new])
        raw = _raw_client(redis_server.url)
        assert raw.zrange(store.keys.entries, 0, -1) == [f"sid:{new.subject}"]
        assert raw.hlen(store.keys.not_before) == 0
        raw.close()
    finally:
        store.close()


@pytest.mark.redis
def test_redis_a_clock_running_ahead_purges_no_live_entry(redis_server: RedisServer) -> None:
    """A worker whose clock is 10 minutes fast deletes none of the entries still live for
    the others (Redis' clock bounds the purge, less the clock skew allowed): a worker
    started after the feed dropped their messages still loads them from the keyspace."""
    url = f"{redis_server.url}?prefix={new_prefix()}&stream_maxlen=1"
    t = time.time()
    on_time = _store(url)
    fast = _store(url, lambda: time.time() + 600)
    try:
        assert on_time.record([session("live", t + 300), user("alice", t, t + 300)])
        for i in range(200):  # the capped feed no longer holds the entry's message
            assert on_time.record([session(f"filler-{i}", t + LONG)])
        assert fast.record([session("fast-write", t + LONG)])
        raw = _raw_client(redis_server.url)
        held = raw.zrange(on_time.keys.entries, 0, -1)
        raw.close()
        assert f"sid:{session('live', 0).subject}" in held
        late = _store(url)
        try:
            late.start()
            assert revoked(late, "live")
            assert revoked(late, None, "alice", t - 1)
        finally:
            late.close()
    finally:
        on_time.close()
        fast.close()


@pytest.mark.redis
def test_redis_purge_margin_is_at_least_the_clock_skew_allowed() -> None:
    """The configured clock skew (KC_SSO_CLOCK_SKEW) widens the purge margin."""
    from kc_sso_middleware.stores.redis import RedisStore

    wide = RedisStore.from_url("redis://127.0.0.1:1/0", clock_skew=600)
    narrow = open_store("redis://127.0.0.1:1/0", clock_skew=0)  # no I/O before start()
    try:
        assert wide.purge_margin >= 600
        assert isinstance(narrow, RedisStore)
        assert narrow.purge_margin > 0
    finally:
        wide.close()
        narrow.close()


@pytest.mark.redis
def test_redis_an_evicting_maxmemory_policy_is_an_error(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """maxmemory with an allkeys-* policy may evict the store's keys (they have no TTL):
    the store says so at ERROR level when it connects; noeviction and volatile-* are
    fine, as is a Redis without maxmemory."""
    raw = _raw_client(own_redis.url)
    try:
        for memory, policy, risky in [
            ("0", "allkeys-lru", False),
            ("1gb", "volatile-lru", False),
            ("1gb", "noeviction", False),
            ("1gb", "allkeys-lru", True),
        ]:
            raw.config_set("maxmemory", memory)
            raw.config_set("maxmemory-policy", policy)
            caplog.clear()
            store = _store(f"{own_redis.url}?prefix={new_prefix()}")
            with caplog.at_level(logging.ERROR, logger="kc_sso_middleware"):
                try:
                    store.start()
                    assert store.status().available
                    risk = store.eviction_risk
                finally:
                    store.close()
            # What kc-sso-check reports as store-evicting.
            assert risk == ((policy, 1 << 30) if risky else None), (memory, policy, risk)
            errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            if risky:
                assert len(errors) == 1, errors
                assert "maxmemory-policy allkeys-lru" in errors[0]
                assert "noeviction" in errors[0]
                assert "volatile-" in errors[0]
            else:
                assert not errors, (memory, policy, errors)
    finally:
        raw.close()


@pytest.mark.redis
def test_the_check_reports_an_evicting_redis(own_redis: RedisServer) -> None:
    """kc-sso-check against a real Redis with maxmemory and allkeys-lru: store-evicting,
    a problem; with noeviction, nothing of the kind."""
    from kc_sso_middleware import Settings
    from kc_sso_middleware.doctor.report import Severity
    from kc_sso_middleware.doctor.store import probe_store, store_findings

    def check(policy: str) -> dict[str, Severity]:
        raw.config_set("maxmemory-policy", policy)
        settings = Settings(
            issuer="https://sso.example/realms/r",
            client_id="app",
            client_secret="x",
            session_secret="s",
            store=f"{own_redis.url}?prefix={new_prefix()}",
        )
        return {f.code: f.severity for f in store_findings(probe_store(settings))}

    raw = _raw_client(own_redis.url)
    try:
        raw.config_set("maxmemory", "1gb")
        assert check("allkeys-lfu").get("store-evicting") is Severity.PROBLEM
        assert "store-evicting" not in check("noeviction")
    finally:
        raw.config_set("maxmemory", "0")
        raw.config_set("maxmemory-policy", "noeviction")
        raw.close()


@pytest.mark.redis
def test_redis_info_refused_does_not_stop_the_store(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A user that may not run INFO (as on some managed Redis) still gets a working
    store; the eviction policy is then not checked (a debug message says so)."""
    raw = _raw_client(own_redis.url)
    raw.acl_setuser(
        "limited",
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-info"],
    )
    raw.close()
    url = own_redis.url.replace("redis://", "redis://limited:pw@", 1)
    store = _store(f"{url}?prefix={new_prefix()}&repair_wait=0")
    with caplog.at_level(logging.DEBUG, logger="kc_sso_middleware"):
        try:
            store.start()
            assert store.status().available
            assert store.record([session("still-works", time.time() + LONG)])
        finally:
            store.close()
    assert any("INFO memory refused" in r.getMessage() for r in caplog.records)


@pytest.mark.redis
def test_redis_retried_write_is_not_a_replay(redis_server: RedisServer) -> None:
    """The same script call run twice (a retry after a lost reply) succeeds both times.

    Both report a seq to wait for (the retry's is at or past the first attempt's); only a
    real replay reports 0.
    """
    from kc_sso_middleware.stores.redis import scripts
    from kc_sso_middleware.stores.redis.repair import run_script

    store = _store(f"{redis_server.url}?prefix={new_prefix()}")
    try:
        t = time.time()
        keys, args = store._script_call(
            Write((session("retried", t + LONG),), "jti-r", t + LONG, t), "token-1"
        )
        first, _waiting = run_script(store._client, scripts.RECORD, keys, args)
        assert first >= 1
        again, _waiting = run_script(store._client, scripts.RECORD, keys, args)
        assert again >= first
        assert not store.record([session("replay", t + LONG)], jti="jti-r", jti_expires_at=t + LONG)
    finally:
        store.close()


@pytest.mark.redis
def test_redis_through_sentinel(redis_server: RedisServer) -> None:
    """A redis+sentinel:// URL finds the master; writes, async writes and following work."""
    with RedisSentinel(redis_server) as sentinel:
        url = f"{sentinel.url}?prefix={new_prefix()}"
        first, second = open_store(url), open_store(url)
        try:
            first.start()
            second.start()
            assert first.status().available
            t = time.time()
            assert first.record([session("via-sentinel", t + LONG)])
            assert asyncio.run(first.arecord([session("via-sentinel-async", t + LONG)]))
            assert eventually(lambda: revoked(second, "via-sentinel"))
            assert eventually(lambda: revoked(second, "via-sentinel-async"))
        finally:
            first.close()
            second.close()
        gc.collect()


@pytest.mark.redis
def test_redis_followers_unreadable_while_down(own_redis: RedisServer) -> None:
    """followers() raises StoreUnavailableError while Redis is down, and reads again after."""
    store = _store(f"{own_redis.url}?socket_timeout=1&socket_connect_timeout=1&repair_wait=0")
    try:
        store.start()
        assert store.follower_name in {state.name for state in store.followers()}
        own_redis.kill()
        with pytest.raises(StoreUnavailableError, match="could not read the followers"):
            store.followers()
        own_redis.start()
        assert eventually(lambda: store.follower_name in {s.name for s in store.followers()})
    finally:
        store.close()
