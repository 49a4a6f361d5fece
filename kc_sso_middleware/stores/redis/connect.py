"""From a store URL to Redis clients: plain, TLS, Unix socket, the master through Sentinel,
or the master of the store's slot in a Redis Cluster.

:class:`RedisConnector` says how to build clients for one deployment and performs no I/O
until a client is used.  Every client speaks RESP2 (``protocol=2``, the follower parses
the replies itself), decodes replies to ``str`` and gets only the keyword arguments the
options table (:mod:`~kc_sso_middleware.stores.options`) has checked.

Redis Cluster (``redis+cluster://``): the prefix holds a hash tag, so every key of the
store hashes to one slot and every command of the store goes to that slot's master.  The
clients are then ordinary :class:`redis.Redis` clients whose connections find that master
the way Sentinel's do: :class:`SlotMaster` asks the cluster through redis-py's
:class:`~redis.cluster.RedisCluster` (``CLUSTER SLOTS``) when a connection is made, and
forgets the answer when a connection fails or a node answers ``MOVED``, ``ASK``,
``TRYAGAIN`` or ``CLUSTERDOWN`` (a failover), which then reaches the caller as a
:class:`~redis.exceptions.ConnectionError`.  So a pipeline (the record script, ``WAIT``
and the acknowledgement ``BLPOP``) and the follower's blocking ``XREAD`` stay on one
connection to one node, which a cluster pipeline cannot promise for the keyless ``WAIT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis
import redis.asyncio
import redis.asyncio.connection
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.cluster
import redis.connection
import redis.sentinel
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)
from redis.retry import Retry

from ...errors import ConfigurationError
from ..options import DB, PREFIX, SENTINEL_PASSWORD, StoreURL, redact

__all__ = [
    "DEFAULT_REDIS_PORT",
    "DEFAULT_SENTINEL_PORT",
    "RedisConnector",
    "SlotMaster",
    "client_until_loop_shutdown",
    "connector_for",
]

DEFAULT_REDIS_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379

#: what a node answers when it no longer serves the slot (a failover, a resharding)
_NOT_HERE = (MovedError, AskError, TryAgainError, ClusterDownError, ReadOnlyError)

# Fixed for our connections, whatever the URL says.
_FIXED: dict[str, Any] = {
    "decode_responses": True,
    "client_name": "kc-sso-middleware",
    "protocol": 2,
}


@dataclass(frozen=True)
class RedisConnector:
    """How to build clients for one Redis deployment; no I/O until a client is used.

    ``sync_client(dedicated, stack)`` returns a sync client.  With ``dedicated=True`` it
    must be a client pinned to one connection, for the follower's blocking reads (a pool
    of one: its pipelines use that connection too, so ``CLIENT UNBLOCK`` of its id reaches
    a pipelined ``XREAD``, which ``single_connection_client`` would not).
    ``async_client(stack)`` returns an asyncio client for the running event loop.  Both
    push onto ``stack`` whatever must be closed with the client: with Sentinel, that
    includes the clients of the sentinels themselves.  ``description`` names the
    deployment in messages and carries no password.
    """

    sync_client: Callable[[bool, contextlib.ExitStack[bool | None]], redis.Redis]
    async_client: Callable[[contextlib.AsyncExitStack[bool | None]], redis.asyncio.Redis]
    description: str
    #: releases what the clients share (the cluster client of a SlotMaster), at close()
    close: Callable[[], None] = lambda: None

    @classmethod
    def from_url(cls, url: str, **connection_kwargs: Any) -> RedisConnector:
        """A connector for a ``redis://``, ``rediss://`` or ``unix://`` URL without query."""
        common = {**connection_kwargs, **_FIXED}

        def sync_client(dedicated: bool, stack: contextlib.ExitStack[bool | None]) -> redis.Redis:
            client = redis.Redis.from_url(
                url, **common, **_sync_retry(dedicated), **_one(dedicated)
            )
            stack.callback(client.close)
            return client

        def async_client(stack: contextlib.AsyncExitStack[bool | None]) -> redis.asyncio.Redis:
            client = redis.asyncio.Redis.from_url(url, **common, **_async_retry())
            stack.push_async_callback(client.aclose)
            return client

        return cls(sync_client, async_client, redact(url))

    @classmethod
    def sentinel(
        cls,
        sentinels: Sequence[tuple[str, int]],
        service_name: str,
        *,
        sentinel_kwargs: dict[str, Any] | None = None,
        **connection_kwargs: Any,
    ) -> RedisConnector:
        """A connector for the master of ``service_name``, found through Sentinel."""
        common = {**connection_kwargs, **_FIXED}
        # Sentinels are asked only for the master's address: socket options, no auth
        # unless given (sentinels usually have a password of their own, or none).
        probe = {k: v for k, v in common.items() if k.startswith("socket_")}
        probe.update(sentinel_kwargs or {})

        def sync_client(dedicated: bool, stack: contextlib.ExitStack[bool | None]) -> redis.Redis:
            # Older redis-py releases leave their Sentinel classes unannotated, hence the ignores
            # (unused since redis-py annotates them, as 8.2 does).
            manager = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
                sentinels, sentinel_kwargs=probe, **common, **_sync_retry(dedicated)
            )
            for sentinel in manager.sentinels:
                stack.callback(sentinel.close)
            client: redis.Redis
            if dedicated:
                pool = redis.sentinel.SentinelConnectionPool(  # type: ignore[no-untyped-call, unused-ignore]
                    service_name, manager, **manager.connection_kwargs, **_one(dedicated)
                )
                stack.callback(pool.disconnect)
                client = redis.Redis(connection_pool=pool)
            else:
                client = manager.master_for(service_name)  # type: ignore[no-untyped-call, unused-ignore]
            stack.callback(client.close)
            return client

        def async_client(stack: contextlib.AsyncExitStack[bool | None]) -> redis.asyncio.Redis:
            manager = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
                sentinels, sentinel_kwargs=probe, **common, **_async_retry()
            )
            for sentinel in manager.sentinels:
                stack.push_async_callback(sentinel.aclose)
            client: redis.asyncio.Redis = manager.master_for(service_name)
            stack.push_async_callback(client.aclose)
            return client

        hosts = ",".join(f"{host}:{port}" for host, port in sentinels)
        return cls(sync_client, async_client, f"redis+sentinel://{hosts}/{service_name}")

    @classmethod
    def cluster(
        cls, nodes: Sequence[tuple[str, int]], slot_key: str, **connection_kwargs: Any
    ) -> RedisConnector:
        """A connector for the master of ``slot_key``'s slot in the cluster ``nodes`` are of."""
        common = {**connection_kwargs, **_FIXED}
        master = SlotMaster(nodes, slot_key, common)

        def sync_client(dedicated: bool, stack: contextlib.ExitStack[bool | None]) -> redis.Redis:
            pool = redis.ConnectionPool(
                connection_class=SlotMasterConnection,
                slot_master=master,
                **common,
                **_sync_retry(dedicated),
                **_one(dedicated),
            )
            stack.callback(pool.disconnect)
            client = redis.Redis(connection_pool=pool)
            stack.callback(client.close)
            return client

        def async_client(stack: contextlib.AsyncExitStack[bool | None]) -> redis.asyncio.Redis:
            pool = redis.asyncio.ConnectionPool(
                connection_class=AsyncSlotMasterConnection,
                slot_master=master,
                **common,
                **_async_retry(),
            )
            client = redis.asyncio.Redis(connection_pool=pool)
            stack.push_async_callback(pool.disconnect)
            stack.push_async_callback(client.aclose)
            return client

        hosts = ",".join(f"{host}:{port}" for host, port in nodes)
        return cls(sync_client, async_client, f"redis+cluster://{hosts}", master.close)


class SlotMaster:
    """Where the master of one hash slot is, as the cluster says; remembered until a
    connection to it fails.  Thread-safe; the cluster client is made on first use."""

    def __init__(
        self, nodes: Sequence[tuple[str, int]], slot_key: str, kwargs: dict[str, Any]
    ) -> None:
        self.nodes = list(nodes)
        self.slot = key_slot(slot_key.encode())
        # The cluster client refuses a retry object (it retries on its own level).
        self._kwargs = {k: v for k, v in kwargs.items() if k != "retry"}
        self._init_process_state()

    def _init_process_state(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._cluster: redis.cluster.RedisCluster | None = None
        self._address: tuple[str, int] | None = None

    def cached(self) -> tuple[str, int] | None:
        """The address known, if any (no I/O)."""
        return self._address if self._pid == os.getpid() else None

    def address(self) -> tuple[str, int]:
        """The slot's master, asking the cluster when it is not known (blocking I/O).

        Raises :class:`~redis.exceptions.ConnectionError` when no node answers or none
        serves the slot.
        """
        if self._pid != os.getpid():  # forked: the parent's lock and sockets are not ours
            self._init_process_state()
        with self._lock:
            if self._address is None:
                try:
                    if self._cluster is None:
                        # redis-py's connection and cluster classes are partly unannotated,
                        # hence the ignores in this module.
                        startup = [
                            redis.cluster.ClusterNode(h, p)  # type: ignore[no-untyped-call, unused-ignore]
                            for h, p in self.nodes
                        ]
                        self._cluster = redis.cluster.RedisCluster(
                            startup_nodes=startup, **self._kwargs
                        )
                    else:
                        self._cluster.nodes_manager.initialize()
                    node = self._cluster.nodes_manager.get_node_from_slot(self.slot)
                except RedisError as exc:
                    raise redis.ConnectionError(
                        f"no node of the cluster {_hosts(self.nodes)} named the master of "
                        f"slot {self.slot}: {exc}"
                    ) from exc
                self._address = (str(node.host), int(node.port))
            return self._address

    def forget(self) -> None:
        """The master known is not (or no longer) the slot's: ask again next time."""
        self._address = None

    def close(self) -> None:
        with self._lock:
            cluster, self._cluster, self._address = self._cluster, None, None
        if cluster is not None:
            cluster.close()


class SlotMasterConnection(redis.connection.Connection):
    """A connection to the master of :class:`SlotMaster`'s slot, wherever it is now."""

    def __init__(self, *, slot_master: SlotMaster, **kwargs: Any) -> None:
        self.slot_master = slot_master
        super().__init__(**kwargs)  # type: ignore[no-untyped-call, unused-ignore]

    def _connect(self) -> Any:
        self.host, self.port = self.slot_master.address()
        try:
            return super()._connect()  # type: ignore[no-untyped-call, unused-ignore]
        except OSError:
            self.slot_master.forget()
            raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except _NOT_HERE as exc:
            self.slot_master.forget()
            self.disconnect()  # type: ignore[no-untyped-call, unused-ignore]
            raise redis.ConnectionError(
                f"{self.host}:{self.port} does not serve slot {self.slot_master.slot} now: {exc}"
            ) from exc
        except redis.ConnectionError:
            self.slot_master.forget()
            raise


class AsyncSlotMasterConnection(redis.asyncio.connection.Connection):
    """The asyncio twin of :class:`SlotMasterConnection` (the cluster is asked in a thread)."""

    def __init__(self, *, slot_master: SlotMaster, **kwargs: Any) -> None:
        self.slot_master = slot_master
        super().__init__(**kwargs)

    async def _connect(self) -> None:
        address = self.slot_master.cached()
        if address is None:
            address = await asyncio.to_thread(self.slot_master.address)
        self.host, self.port = address
        try:
            await super()._connect()  # type: ignore[no-untyped-call, unused-ignore]
        except OSError:
            self.slot_master.forget()
            raise

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except _NOT_HERE as exc:
            self.slot_master.forget()
            await self.disconnect()
            raise redis.ConnectionError(
                f"{self.host}:{self.port} does not serve slot {self.slot_master.slot} now: {exc}"
            ) from exc
        except redis.ConnectionError:
            self.slot_master.forget()
            raise


def _hosts(nodes: Sequence[tuple[str, int]]) -> str:
    return ",".join(f"{host}:{port}" for host, port in nodes)


def connector_for(parsed: StoreURL) -> RedisConnector:
    """The connector a checked ``redis://``, ``rediss://``, ``unix://``,
    ``redis+sentinel://`` or ``redis+cluster://`` URL names."""
    kwargs = parsed.redis_kwargs()
    if parsed.scheme == "redis+sentinel":
        return _sentinel_connector(parsed, kwargs)
    if parsed.scheme == "redis+cluster":
        return _cluster_connector(parsed, kwargs)
    if parsed.scheme != "unix":
        path_db = parsed.parts.path.strip("/")
        if path_db:
            if not path_db.isdigit():
                raise ConfigurationError(
                    f"KC_SSO_STORE={parsed.redacted!r}: the path must be a database number"
                )
            _one_db(parsed, int(path_db), kwargs)
    return RedisConnector.from_url(parsed.without_query, **kwargs)


def _one_db(parsed: StoreURL, path_db: int, kwargs: dict[str, Any]) -> None:
    query_db = parsed.get(DB)
    if query_db is not None and query_db != path_db:
        raise ConfigurationError(
            f"KC_SSO_STORE={parsed.redacted!r}: the database is given twice "
            f"({path_db} in the path, db={query_db}); give it once"
        )
    kwargs["db"] = path_db


def _host_list(
    parsed: StoreURL, hostlist: str, default_port: int, what: str
) -> list[tuple[str, int]]:
    """``host[:port],[IPv6]:port,…`` as (host, port) pairs."""
    addresses = []
    for item in hostlist.split(","):
        if item.startswith("["):  # [IPv6]:port
            host, _, port = item[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = item.partition(":")
        if not host or (port and not port.isdigit()):
            raise ConfigurationError(
                f"KC_SSO_STORE={parsed.redacted!r}: bad {what} address {item!r}"
            )
        addresses.append((host, int(port) if port else default_port))
    return addresses


def _credentials(userinfo: str, kwargs: dict[str, Any]) -> None:
    """The URL's ``user:password@`` part as redis-py's ``username`` and ``password``."""
    if userinfo:
        user, has_password, password = userinfo.partition(":")
        if user:
            kwargs["username"] = unquote(user)
        if has_password:
            kwargs["password"] = unquote(password)


def _cluster_connector(parsed: StoreURL, kwargs: dict[str, Any]) -> RedisConnector:
    userinfo, _, hostlist = parsed.parts.netloc.rpartition("@")
    if not hostlist or parsed.parts.path.strip("/"):
        raise ConfigurationError(
            f"KC_SSO_STORE={parsed.redacted!r}: accepted form is "
            "redis+cluster://[[user]:password@]host[:port][,host[:port]…] (no path: a "
            "cluster has only database 0)"
        )
    nodes = _host_list(parsed, hostlist, DEFAULT_REDIS_PORT, "cluster node")
    _credentials(userinfo, kwargs)
    return RedisConnector.cluster(nodes, parsed[PREFIX], **kwargs)


def _sentinel_connector(parsed: StoreURL, kwargs: dict[str, Any]) -> RedisConnector:
    userinfo, _, hostlist = parsed.parts.netloc.rpartition("@")
    segments = [unquote(s) for s in parsed.parts.path.split("/") if s]
    if not hostlist or not segments or len(segments) > 2:
        raise ConfigurationError(
            f"KC_SSO_STORE={parsed.redacted!r}: accepted form is "
            "redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/service_name[/db]"
        )
    sentinels = _host_list(parsed, hostlist, DEFAULT_SENTINEL_PORT, "sentinel")
    _credentials(userinfo, kwargs)
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise ConfigurationError(
                f"KC_SSO_STORE={parsed.redacted!r}: the database must be a number"
            )
        _one_db(parsed, int(segments[1]), kwargs)
    sentinel_password = parsed.get(SENTINEL_PASSWORD)
    return RedisConnector.sentinel(
        sentinels,
        segments[0],
        sentinel_kwargs=None if sentinel_password is None else {"password": sentinel_password},
        **kwargs,
    )


def _one(dedicated: bool) -> dict[str, Any]:
    """A dedicated client's pool holds one connection, used by one thread in turn."""
    return {"max_connections": 1} if dedicated else {}


def _sync_retry(dedicated: bool) -> dict[str, Any]:
    if dedicated:
        # The follower reconnects (and resyncs) itself; a hidden retry would hide the
        # disconnection from it.
        return {"retry": Retry(NoBackoff(), 0)}
    # One quick retry replaces a pooled connection that died while Redis restarted.  The
    # record script is safe to run twice (see its comments); more retries would only
    # delay the error the back-channel endpoint must answer with.
    return {"retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 1)}


def _async_retry() -> dict[str, Any]:
    return {"retry": redis.asyncio.retry.Retry(ExponentialBackoff(cap=0.2, base=0.02), 1)}


async def client_until_loop_shutdown(
    connector: RedisConnector,
) -> AsyncIterator[redis.asyncio.Redis]:
    """An async generator that yields one client and stays suspended.

    Its event loop's ``shutdown_asyncgens()`` (run by asyncio.run, uvicorn, anyio) closes
    it, and the exit stack then closes the client while that loop can still run the
    closing handshake.  The client's connections belong to the loop; closed any later,
    they would leave "unclosed Connection" ResourceWarnings behind.
    """
    async with contextlib.AsyncExitStack() as stack:
        yield connector.async_client(stack)
