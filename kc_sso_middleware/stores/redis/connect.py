"""From a store URL to Redis clients: plain, TLS, Unix socket, or the master through Sentinel.

:class:`RedisConnector` says how to build clients for one deployment and performs no I/O
until a client is used.  Every client speaks RESP2 (``protocol=2``, the follower parses
the replies itself), decodes replies to ``str`` and gets only the keyword arguments the
options table (:mod:`~kc_sso_middleware.stores.options`) has checked.

Redis Cluster: the key layout is ready for it (put a hash tag in the prefix,
``?prefix={kcsso}:``, and every key hashes to one slot), but these URL forms connect to
one master, and Cluster needs a connector whose clients route to that slot's master.
This module does not provide one, and Cluster is not tested.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.sentinel
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from ...errors import ConfigurationError
from ..options import DB, SENTINEL_PASSWORD, StoreURL, redact

__all__ = ["DEFAULT_SENTINEL_PORT", "RedisConnector", "client_until_loop_shutdown", "connector_for"]

DEFAULT_SENTINEL_PORT = 26379

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
    must be a client pinned to one connection, for the follower's blocking reads.
    ``async_client(stack)`` returns an asyncio client for the running event loop.  Both
    push onto ``stack`` whatever must be closed with the client: with Sentinel, that
    includes the clients of the sentinels themselves.  ``description`` names the
    deployment in messages and carries no password.
    """

    sync_client: Callable[[bool, contextlib.ExitStack[bool | None]], redis.Redis]
    async_client: Callable[[contextlib.AsyncExitStack[bool | None]], redis.asyncio.Redis]
    description: str

    @classmethod
    def from_url(cls, url: str, **connection_kwargs: Any) -> RedisConnector:
        """A connector for a ``redis://``, ``rediss://`` or ``unix://`` URL without query."""
        common = {**connection_kwargs, **_FIXED}

        def sync_client(dedicated: bool, stack: contextlib.ExitStack[bool | None]) -> redis.Redis:
            client = redis.Redis.from_url(
                url, **common, **_sync_retry(dedicated), single_connection_client=dedicated
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
            # redis-py's Sentinel classes are unannotated, hence the ignores.
            manager = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
                sentinels, sentinel_kwargs=probe, **common, **_sync_retry(dedicated)
            )
            for sentinel in manager.sentinels:
                stack.callback(sentinel.close)
            client: redis.Redis
            if dedicated:
                pool = redis.sentinel.SentinelConnectionPool(  # type: ignore[no-untyped-call]
                    service_name, manager, **manager.connection_kwargs
                )
                stack.callback(pool.disconnect)
                client = redis.Redis(connection_pool=pool, single_connection_client=True)
            else:
                client = manager.master_for(service_name)  # type: ignore[no-untyped-call]
            stack.callback(client.close)
            return client

        def async_client(stack: contextlib.AsyncExitStack[bool | None]) -> redis.asyncio.Redis:
            manager = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
                sentinels, sentinel_kwargs=probe, **common, **_async_retry()
            )
            for sentinel in manager.sentinels:
                stack.push_async_callback(sentinel.aclose)
            client: redis.asyncio.Redis = manager.master_for(service_name)
            stack.push_async_callback(client.aclose)
            return client

        hosts = ",".join(f"{host}:{port}" for host, port in sentinels)
        return cls(sync_client, async_client, f"redis+sentinel://{hosts}/{service_name}")


def connector_for(parsed: StoreURL) -> RedisConnector:
    """The connector a checked ``redis://``, ``rediss://``, ``unix://`` or
    ``redis+sentinel://`` URL names."""
    kwargs = parsed.redis_kwargs()
    if parsed.scheme == "redis+sentinel":
        return _sentinel_connector(parsed, kwargs)
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


def _sentinel_connector(parsed: StoreURL, kwargs: dict[str, Any]) -> RedisConnector:
    userinfo, _, hostlist = parsed.parts.netloc.rpartition("@")
    segments = [unquote(s) for s in parsed.parts.path.split("/") if s]
    if not hostlist or not segments or len(segments) > 2:
        raise ConfigurationError(
            f"KC_SSO_STORE={parsed.redacted!r}: accepted form is "
            "redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/service_name[/db]"
        )
    sentinels = []
    for item in hostlist.split(","):
        if item.startswith("["):  # [IPv6]:port
            host, _, port = item[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = item.partition(":")
        if not host or (port and not port.isdigit()):
            raise ConfigurationError(
                f"KC_SSO_STORE={parsed.redacted!r}: bad sentinel address {item!r}"
            )
        sentinels.append((host, int(port) if port else DEFAULT_SENTINEL_PORT))
    if userinfo:
        user, has_password, password = userinfo.partition(":")
        if user:
            kwargs["username"] = unquote(user)
        if has_password:
            kwargs["password"] = unquote(password)
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
