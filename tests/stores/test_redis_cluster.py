"""``redis+cluster://``: the Redis store on a real Redis Cluster started on loopback.

Three masters and three replicas (Debian's ``redis-server --cluster-enabled yes``, joined
with ``redis-cli --cluster create``; :class:`devtools.redis_server.RedisCluster`).  Every
key of the store is in the slot of the prefix's hash tag; writes and following work
through the slot's master; and when that master is SIGKILLed mid-traffic, no write that
was confirmed is lost (on the workers, and in the cluster for a worker started after),
while the writes of the failover window fail rather than succeed falsely.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from devtools.redis_server import RedisCluster
from kc_sso_middleware.errors import ConfigurationError, StoreUnavailableError
from kc_sso_middleware.stores import StoreStatus, open_store

from ._helpers import LONG, eventually, revoked, session
from .conftest import new_prefix, with_options

if TYPE_CHECKING:
    import redis

    from kc_sso_middleware.stores.redis import RedisStore

pytest.importorskip("redis", reason="the redis extra is not installed")


def _store(url: str) -> RedisStore:
    from kc_sso_middleware.stores.redis import RedisStore

    return RedisStore.from_url(url)


def test_cluster_url_forms() -> None:
    """Nodes, credentials and options come from the URL; the prefix must hold a hash tag
    (default ``{kcsso}:``); a path, a database or a prefix without a tag is refused."""
    store = _store("redis+cluster://user:secret@n1:7000,n2,[::1]:7002?ack_timeout=2")
    assert store.prefix == "{kcsso}:"
    assert store.wait_replicas == 1
    assert store.ack_timeout == 2
    assert store.connector.description == "redis+cluster://n1:7000,n2:6379,::1:7002"
    assert "secret" not in repr(store)
    assert _store("redis+cluster://n1/?prefix=app:{kc}:&wait_replicas=0").wait_replicas == 0
    for bad, reason in [
        ("redis+cluster://n1?prefix=kcsso:", "hash tag"),
        ("redis+cluster://n1?prefix={}:", "hash tag"),
        ("redis+cluster://n1?prefix=}{kc:", "hash tag"),
        ("redis+cluster://n1/0", "no path"),
        ("redis+cluster://n1?db=1", "unknown option 'db'"),
        ("redis+cluster://", "accepted form"),
        ("redis+cluster://n1:x", "cluster node address"),
    ]:
        with pytest.raises(ConfigurationError, match=reason):
            open_store(bad)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster() as started:
        yield started


def _tag(prefix: str) -> str:
    return prefix[prefix.index("{") : prefix.index("}") + 1]


def _cluster_prefix() -> str:
    return "{" + new_prefix().rstrip(":") + "}:"


def _node_client(cluster: RedisCluster, port: int) -> redis.Redis:
    import redis

    return redis.Redis(host="127.0.0.1", port=port, decode_responses=True)


@pytest.mark.redis
def test_cluster_store_writes_follows_and_keeps_its_keys_in_one_slot(
    cluster: RedisCluster,
) -> None:
    """Two stores on the cluster: writes (sync and async), replays and acknowledgements
    work, and every key the store made, jti claims and acknowledgement keys included,
    is in the slot of the prefix's hash tag, on that slot's master."""
    prefix = _cluster_prefix()
    url = with_options(cluster.url, prefix=prefix)
    first, second = _store(url), _store(url)
    try:
        first.start()
        second.start()
        assert first.status().available
        assert second.status().available
        t = time.time()
        for index in range(5):
            assert first.record(
                [session(f"cluster-{index}", t + LONG)], jti=f"j-{index}", jti_expires_at=t + LONG
            )
            # Acknowledged: the other worker holds it at once, no polling.
            assert revoked(second, f"cluster-{index}")
        assert asyncio.run(second.arecord([session("cluster-async", t + LONG)]))
        assert revoked(first, "cluster-async")
        assert not first.record([session("replay", t + LONG)], jti="j-0", jti_expires_at=t + LONG)
        assert {first.follower_name, second.follower_name} <= {s.name for s in first.followers()}

        master = cluster.master_of(_tag(prefix))
        found: dict[int, list[str]] = {}
        for node in cluster.nodes:
            client = _node_client(cluster, node.port)
            try:
                if client.info("replication")["role"] == "master":
                    found[node.port] = list(client.scan_iter(match=f"{prefix}*", count=1000))
                    slots = {client.cluster("keyslot", key) for key in found[node.port]}
                    assert slots <= {client.cluster("keyslot", _tag(prefix))}
            finally:
                client.close()
        assert {port for port, keys in found.items() if keys} == {master.port}
        assert any(":jti:" in key for key in found[master.port])
        assert f"{prefix}generation" in found[master.port]
    finally:
        first.close()
        second.close()


@dataclass
class Traffic:
    """Logouts recorded one after another by each store, in threads, until stopped."""

    stores: list[RedisStore]
    confirmed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    statuses: list[StoreStatus] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def _run(self, store: RedisStore, use_async: bool) -> None:
        while not self.stop.is_set():
            sid = f"traffic-{uuid.uuid4()}"
            entry = [session(sid, time.time() + LONG)]
            try:
                if use_async:
                    ok = asyncio.run(store.arecord(entry, jti=sid, jti_expires_at=time.time() + 60))
                else:
                    ok = store.record(entry, jti=sid, jti_expires_at=time.time() + 60)
            except StoreUnavailableError:
                self.refused.append(sid)
                time.sleep(0.05)
                continue
            assert ok
            self.confirmed.append(sid)
            time.sleep(0.005)

    @contextlib.contextmanager
    def running(self) -> Iterator[Traffic]:
        for store in self.stores:
            store.add_status_listener(self.statuses.append)
        threads = [
            threading.Thread(target=self._run, args=(store, index % 2 == 1), daemon=True)
            for index, store in enumerate(self.stores)
        ]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(30)


@pytest.mark.redis
@pytest.mark.parametrize("wait_replicas", [1, 0])
def test_killing_the_master_of_the_slot_mid_traffic_loses_no_confirmed_write(
    cluster: RedisCluster, wait_replicas: int
) -> None:
    """SIGKILL the master holding the store's slot while two stores record (one sync, one
    async): writes fail while the cluster fails over (never a false success), the
    followers reconnect to the promoted replica, and every confirmed write is enforced
    by both stores and found in the cluster by a store started after it all.  With
    ``wait_replicas=1`` (the default) each confirmed write had reached the replica; with
    0 the workers write back what the replica missed."""
    prefix = _cluster_prefix()
    url = with_options(cluster.url, prefix=prefix, wait_replicas=wait_replicas)
    stores = [_store(url), _store(url)]
    try:
        for store in stores:
            store.start()
        traffic = Traffic(stores)
        with traffic.running():
            assert eventually(lambda: len(traffic.confirmed) >= 20)
            victim = cluster.kill_master_of(_tag(prefix))  # returns once a replica took over
            assert eventually(lambda: all(s.status().available for s in stores), 30)
            if wait_replicas:  # no replica left to reach until the victim is back
                cluster.rejoin(victim)
            else:
                before = len(traffic.confirmed)
                assert eventually(lambda: len(traffic.confirmed) >= before + 20, 30)
                cluster.rejoin(victim)
            confirmed_after = len(traffic.confirmed)
            assert eventually(lambda: len(traffic.confirmed) >= confirmed_after + 20, 30)
        assert traffic.refused, "no write failed while the master was down"
        assert any(not status.available for status in traffic.statuses)
        for store in stores:
            assert store.status().available
            missing = [sid for sid in traffic.confirmed if not revoked(store, sid)]
            assert not missing, f"{len(missing)} confirmed revocations not enforced"
        late = _store(url)
        try:
            late.start()
            assert late.status().available
            missing = [sid for sid in traffic.confirmed if not revoked(late, sid)]
            assert not missing, f"{len(missing)} confirmed revocations lost by the cluster"
            # The jti claims survived too: a confirmed token replayed is refused.
            assert not late.record([], jti=traffic.confirmed[0], jti_expires_at=time.time() + 60)
        finally:
            late.close()
    finally:
        for store in stores:
            store.close()
