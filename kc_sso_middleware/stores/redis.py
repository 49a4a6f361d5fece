"""``redis://…``: revocations shared by every worker of every host, through Redis.

URLs: ``redis://[[user]:password@]host:port/db``, ``rediss://…`` (TLS), ``unix:///path.sock``
and ``redis+sentinel://[[user]:password@]host:port[,host:port…]/service_name[/db]`` (the
master is found through Sentinel, and failovers are followed).  This store's own query
options are ``prefix`` (default ``kcsso:``), ``max_entries`` (replica bound),
``stream_maxlen`` (change-feed length, default 10000), ``ack_timeout`` (seconds a write
waits for every live worker to apply it, default 1, ``0`` to not wait) and, for Sentinel,
``sentinel_password``.  Other query options go to redis-py unchanged (``socket_timeout``,
``ssl_cert_reqs``, …).  Needs Redis 6.2 or later (``ZADD GT``, ``ZRANGE … BYSCORE``).

Keys (``P`` is the prefix)
--------------------------

``P entries``
    Sorted set of every active entry.  The member is ``"<kind>:<key>"`` (``sid:…``,
    ``sub:…``, or ``all:``) and the score is ``expires_at``.
``P not_before``
    Hash from the same members to ``not_before``, for user and realm entries.
``P feed``
    Stream, the change feed.  One message per :meth:`RedisStore.record`, with fields
    ``seq`` and ``data`` (JSON ``[[kind, key, not_before, expires_at], …]``).  It is
    trimmed with ``XADD MAXLEN ~ stream_maxlen``.
``P seq``
    Counter, the ``seq`` of the newest message.
``P jti:<jti>``
    String with a TTL, a claimed logout-token ``jti``.
``P followers:applied``
    Hash from each follower's name (``"<hostname>:<pid>:<random>"``, one per store
    instance and process) to the ``seq`` it has applied.
``P followers:seen``
    Sorted set of the same names, scored by their last heartbeat (Redis' own clock, in
    milliseconds, so the hosts' clocks do not matter).

Writes
------

:meth:`RedisStore.record` runs one Lua script (atomic by Redis' guarantee).  The script
claims the ``jti`` with ``SET NX PX`` and returns 0 on a replay, writing nothing.
Otherwise it merges the entries (``ZADD GT`` keeps the latest expiry; a ``not_before``
is only ever raised), removes at most 100 expired entries so the keyspace stays bounded,
increments ``seq``, appends the message with ``XADD`` and returns the new ``seq``.  The
``jti`` value is a random token per call.  A retry after a lost reply then finds its own
token and reports success, not a replay (it returns the current ``seq``, which is at or
past the first attempt's).  A call with no live entry writes no message and returns -1.

A write is confirmed once Redis holds it in memory.  Whether it also survives a Redis
restart depends on Redis' persistence (``appendonly yes``).  Workers that have already
applied an entry keep enforcing it either way.

Following
---------

Each process runs one daemon thread on its own connection: ``XREAD BLOCK`` from the
last message id it applied.  Messages must arrive with consecutive ``seq``.  A gap
means the stream was trimmed past the follower's position, or Redis lost data.  The
follower then does a full resync: it notes the feed position, then scans the keyspace
with ``ZSCAN``.  It also does a full resync after every (re)connection, so a missed message
never loses a revocation.  Resyncs *merge* into the replica and never replace it.
Entries only disappear by expiry, so merging is exact; it cannot race with a concurrent
:meth:`~RedisStore.record` of this process, and a Redis that restarted empty cannot make
this worker forget what it already enforced.  While the follower is disconnected,
:meth:`~RedisStore.status` reports ``available=False``, and the follower reconnects with
jittered exponential backoff.  Redis being down at start-up is not an error.

Acknowledgements
----------------

A back-channel logout reaches one worker, and Keycloak's 200 must mean that *every*
worker, on every host, refuses the session from then on.  So :meth:`~RedisStore.record`
and :meth:`~RedisStore.arecord` return only once every live follower has applied the new
message:

* A follower publishes its position (one small script: ``HSET`` of ``followers:applied``,
  ``ZADD`` to ``followers:seen`` at ``TIME``) after every batch it applies and after each
  resync (the position it resynced to), and at least once a second while idle (its
  ``XREAD BLOCK`` lasts half a second).  On every (re)connection it registers with
  position 0 *before* its resync, so a writer either waits for it or wrote before the
  resync began and is part of it.
* After its script, a writer checks the positions every millisecond (one read-only script:
  the followers seen in the last 3 seconds, other than itself, whose position is below the
  new ``seq``) until none is left.  A follower silent for longer is dead or hung and is not
  waited for; the heartbeat script deletes followers silent for 30 seconds.  The wait is
  bounded by ``ack_timeout`` (default 1 s): when it runs out the write is still a success
  (it is in Redis) and a warning names the followers that lag.  ``arecord`` waits with
  ``asyncio.sleep`` on the loop's own client.  A ``jti`` replay returns at once.
* :meth:`~RedisStore.close` deletes the instance's entries, and so does a normal
  interpreter exit (``atexit``), since servers seldom close a worker's store.

Redis Cluster
-------------

The key layout is ready for Cluster.  The scripts touch up to five keys, which Cluster
requires to share one hash slot (otherwise it answers ``CROSSSLOT``).  Put a hash tag in
the prefix (``?prefix={kcsso}:``); every key, each ``jti`` key included, then hashes on
``kcsso`` alone, so the whole store lives on one shard.  The URL forms above connect to
one master (standalone or through Sentinel).  Cluster also needs a
:class:`RedisConnector` whose clients route to that slot's master.  This module does
not provide one, and Cluster is not tested.

Protocol: these connections speak RESP2 (``protocol=2``), because the follower parses
the replies itself.  The URL's ``protocol`` option is therefore rejected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import socket
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.sentinel
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from ..errors import ConfigurationError, StoreUnavailableError
from . import _process
from .base import Revocation, RevocationKind, RevocationStore, StoreStatus
from .replica import DEFAULT_MAX_ENTRIES, Replica

__all__ = ["RedisConnector", "RedisStore"]

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "kcsso:"
DEFAULT_STREAM_MAXLEN = 10_000
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_ACK_TIMEOUT = 1.0

#: seconds between a follower's heartbeats while idle
HEARTBEAT_INTERVAL = 1.0
#: a follower whose heartbeat is older than this is dead or hung and is not waited for
FOLLOWER_STALE_AFTER = 3.0
_FOLLOWER_PURGE_AFTER = 30.0  # followers silent this long are deleted
_ACK_POLL = 0.001  # how often a writer checks the followers' positions while it waits
_EXIT_JOIN_TIMEOUT = 1.0

# XREAD BLOCK; close() interrupts it with CLIENT UNBLOCK.  Half the heartbeat interval,
# so an idle follower's heartbeats are at most 1.5 s apart.
_BLOCK_SECONDS = 0.5
_MIN_BACKOFF = 0.05
_MAX_BACKOFF = 5.0
_START_WAIT = 10.0  # how long start() waits for the first sync before returning anyway
_SCAN_BATCH = 1000
_READ_BATCH = 1000

# Defaults for our connections; the URL's own query options win over these.
_CONNECTION_DEFAULTS: dict[str, Any] = {
    "decode_responses": True,
    "socket_timeout": 5.0,
    "socket_connect_timeout": 2.0,
    "client_name": "kc-sso-middleware",
    "protocol": 2,
}

_RECORD_LUA = """
-- KEYS: entries zset, not_before hash, feed stream, seq counter, [jti key]
-- ARGV: now, stream maxlen, feed payload, jti ttl ms, call token,
--       then (member, not_before, expires_at) per entry
if KEYS[5] then
  if not redis.call('SET', KEYS[5], ARGV[5], 'NX', 'PX', ARGV[4]) then
    -- Our own earlier attempt, retried after its reply was lost, is not a replay; the
    -- current seq is at or past the one that attempt wrote.
    if redis.call('GET', KEYS[5]) == ARGV[5] then
      local current = tonumber(redis.call('GET', KEYS[4]) or '0')
      if current > 0 then return current end
      return -1
    end
    return 0
  end
end
-- Returns 0 for a replay, else the seq of the message written, or -1 when none was.
if #ARGV < 6 then return -1 end
for i = 6, #ARGV, 3 do
  redis.call('ZADD', KEYS[1], 'GT', ARGV[i + 2], ARGV[i])
  if string.sub(ARGV[i], 1, 4) ~= 'sid:' then
    local current = redis.call('HGET', KEYS[2], ARGV[i])
    if not current or tonumber(current) < tonumber(ARGV[i + 1]) then
      redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    end
  end
end
local expired = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, 100)
if #expired > 0 then
  redis.call('ZREM', KEYS[1], unpack(expired))
  redis.call('HDEL', KEYS[2], unpack(expired))
end
local seq = redis.call('INCR', KEYS[4])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'seq', seq, 'data', ARGV[3])
return seq
"""

# Redis' clock, not the hosts': followers on several hosts compare their heartbeats.
_PUBLISH_LUA = """
-- KEYS: followers:applied hash, followers:seen zset
-- ARGV: follower name, applied seq, purge age ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
local dead = redis.call('ZRANGE', KEYS[2], '-inf', now - tonumber(ARGV[3]), 'BYSCORE',
                        'LIMIT', 0, 100)
if #dead > 0 then
  redis.call('ZREM', KEYS[2], unpack(dead))
  redis.call('HDEL', KEYS[1], unpack(dead))
end
return 1
"""

_LAGGING_LUA = """
-- KEYS: followers:applied hash, followers:seen zset
-- ARGV: seq to reach, live window ms, the asking follower's own name
-- Returns name, applied, name, applied, ... of the live followers below the seq.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGE', KEYS[2], now - tonumber(ARGV[2]), '+inf', 'BYSCORE')
local target = tonumber(ARGV[1])
local lagging = {}
for _, name in ipairs(live) do
  if name ~= ARGV[3] then
    local applied = tonumber(redis.call('HGET', KEYS[1], name) or '-1')
    if applied < target then
      lagging[#lagging + 1] = name
      lagging[#lagging + 1] = tostring(applied)
    end
  end
end
return lagging
"""


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
    def from_url(cls, url: str) -> RedisConnector:
        """A connector for ``redis://``, ``rediss://`` or ``unix://`` (no store options)."""

        def sync_client(dedicated: bool, stack: contextlib.ExitStack[bool | None]) -> redis.Redis:
            client = redis.Redis.from_url(
                url,
                **{**_CONNECTION_DEFAULTS, **_sync_retry(dedicated)},
                single_connection_client=dedicated,
            )
            stack.callback(client.close)
            return client

        def async_client(stack: contextlib.AsyncExitStack[bool | None]) -> redis.asyncio.Redis:
            client = redis.asyncio.Redis.from_url(url, **_CONNECTION_DEFAULTS, **_async_retry())
            stack.push_async_callback(client.aclose)
            return client

        return cls(sync_client, async_client, _redact(url))

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
        common = {**_CONNECTION_DEFAULTS, **connection_kwargs}
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


def _sync_retry(dedicated: bool) -> dict[str, Any]:
    if dedicated:
        # The follower reconnects (and resyncs) itself; a hidden retry would hide the
        # disconnection from it.
        return {"retry": Retry(NoBackoff(), 0)}
    # One quick retry replaces a pooled connection that died while Redis restarted.
    # The script is safe to run twice (see the module docstring); more retries would
    # only delay the error the back-channel endpoint must answer with.
    return {"retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 1)}


def _async_retry() -> dict[str, Any]:
    return {"retry": redis.asyncio.retry.Retry(ExponentialBackoff(cap=0.2, base=0.02), 1)}


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return urlunsplit(parts._replace(query=""))
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}", query=""))


@dataclass
class _AsyncHandle:
    client: redis.asyncio.Redis
    script: Any
    lagging: Any
    #: the suspended generator that owns ``client``; kept referenced until the loop ends
    owner: AsyncIterator[redis.asyncio.Redis]


async def _client_until_loop_shutdown(
    connector: RedisConnector,
) -> AsyncIterator[redis.asyncio.Redis]:
    # An async generator that stays suspended after yielding its client.  Its event loop's
    # shutdown_asyncgens() (run by asyncio.run, uvicorn, anyio) closes it, and the exit
    # stack then closes the client while that loop can still run the closing handshake.
    # The client's connections belong to the loop; closed any later, they would leave
    # "unclosed Connection" ResourceWarnings behind.
    async with contextlib.AsyncExitStack() as stack:
        yield connector.async_client(stack)


class RedisStore(RevocationStore):
    """Revocations in Redis: Lua-scripted writes, a stream as change feed, local replicas."""

    scheme = "redis"

    def __init__(
        self,
        connector: RedisConnector,
        *,
        prefix: str = DEFAULT_PREFIX,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        stream_maxlen: int = DEFAULT_STREAM_MAXLEN,
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
        timer: Callable[[], float] = time.time,
    ) -> None:
        self.connector = connector
        self.prefix = prefix
        self.stream_maxlen = stream_maxlen
        self.ack_timeout = ack_timeout
        self._timer = timer
        self.replica = Replica(max_entries, timer)
        self._entries_key = f"{prefix}entries"
        self._not_before_key = f"{prefix}not_before"
        self._feed_key = f"{prefix}feed"
        self._seq_key = f"{prefix}seq"
        self._followers_keys = [f"{prefix}followers:applied", f"{prefix}followers:seen"]
        self._closed = False
        self._resources = contextlib.ExitStack()
        self._client = connector.sync_client(False, self._resources)
        self._script = self._client.register_script(_RECORD_LUA)
        # Script objects only hold the SHA; each call names the client that runs it.
        self._publish_script = self._client.register_script(_PUBLISH_LUA)
        self._lagging_script = self._client.register_script(_LAGGING_LUA)
        self._init_process_state()
        _process.track(self)

    def _init_process_state(self) -> None:
        """Everything that belongs to one process: locks, the follower, async clients."""
        self._lifecycle_lock = threading.Lock()
        self._stop = threading.Event()
        self._first_sync = threading.Event()
        self._thread: threading.Thread | None = None
        self._follower_id: int | None = None
        self._last_id = "0-0"
        self._last_seq = 0
        #: this instance's name among the followers; new in every process (see fork)
        self.follower_name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._registered = False
        self._next_heartbeat = 0.0
        self._status = StoreStatus(available=False, detail="not started")
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncHandle] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def from_url(cls, url: str, *, timer: Callable[[], float] = time.time) -> RedisStore:
        """Open ``redis://``, ``rediss://``, ``unix://`` or ``redis+sentinel://`` (no I/O)."""
        parts = urlsplit(url)
        query = parse_qs(parts.query, keep_blank_values=True)
        own = {name: query.pop(name)[-1] for name in _OWN_OPTIONS if name in query}
        if "protocol" in query:
            raise ConfigurationError(
                f"KC_SSO_STORE={_redact(url)!r}: the protocol option is not supported "
                "(the store speaks RESP2 on its own connections)"
            )
        prefix = own.get("prefix", DEFAULT_PREFIX)
        if not prefix:
            raise ConfigurationError(f"KC_SSO_STORE={_redact(url)!r}: prefix must not be empty")
        max_entries = _positive_int(url, own, "max_entries", DEFAULT_MAX_ENTRIES)
        stream_maxlen = _positive_int(url, own, "stream_maxlen", DEFAULT_STREAM_MAXLEN)
        ack_timeout = _non_negative_float(url, own, "ack_timeout", DEFAULT_ACK_TIMEOUT)
        if parts.scheme == "redis+sentinel":
            connector = _sentinel_connector(url, parts.netloc, parts.path, query, own)
        elif parts.scheme in {"redis", "rediss", "unix"}:
            rest = urlencode(query, doseq=True)
            connector = RedisConnector.from_url(urlunsplit(parts._replace(query=rest)))
        else:
            raise ConfigurationError(
                f"KC_SSO_STORE={_redact(url)!r} is not a redis://, rediss://, unix:// or "
                "redis+sentinel:// URL"
            )
        return cls(
            connector,
            prefix=prefix,
            max_entries=max_entries,
            stream_maxlen=stream_maxlen,
            ack_timeout=ack_timeout,
            timer=timer,
        )

    def __repr__(self) -> str:
        return f"RedisStore({self.connector.description!r}, prefix={self.prefix!r})"

    # -- request path -------------------------------------------------------------

    def status(self) -> StoreStatus:
        return self._status

    # -- logout paths ---------------------------------------------------------------

    def record(
        self,
        revocations: Sequence[Revocation],
        *,
        jti: str | None = None,
        jti_expires_at: float = 0.0,
    ) -> bool:
        steps = self._record_steps(revocations, jti, jti_expires_at)
        reply: Any = None
        error: Exception | None = None
        while True:
            try:
                step = steps.throw(error) if error is not None else steps.send(reply)
            except StopIteration as done:
                return bool(done.value)
            reply, error = None, None
            try:
                if step[0] == "record":
                    reply = self._script(keys=step[1], args=step[2], client=self._client)
                elif step[0] == "lagging":
                    reply = self._lagging_script(
                        keys=self._followers_keys, args=step[1], client=self._client
                    )
                else:
                    time.sleep(_ACK_POLL)
            except (RedisError, OSError) as exc:
                error = exc

    async def arecord(
        self,
        revocations: Sequence[Revocation],
        *,
        jti: str | None = None,
        jti_expires_at: float = 0.0,
    ) -> bool:
        steps = self._record_steps(revocations, jti, jti_expires_at)
        reply: Any = None
        error: Exception | None = None
        while True:
            try:
                step = steps.throw(error) if error is not None else steps.send(reply)
            except StopIteration as done:
                return bool(done.value)
            reply, error = None, None
            try:
                if step[0] == "record":
                    handle = await self._async_handle()
                    reply = await handle.script(keys=step[1], args=step[2], client=handle.client)
                elif step[0] == "lagging":
                    handle = await self._async_handle()
                    reply = await handle.lagging(
                        keys=self._followers_keys, args=step[1], client=handle.client
                    )
                else:
                    await asyncio.sleep(_ACK_POLL)
            except (RedisError, OSError) as exc:
                error = exc

    def _record_steps(
        self, revocations: Sequence[Revocation], jti: str | None, jti_expires_at: float
    ) -> Generator[tuple[Any, ...], Any, bool]:
        """The logic of record()/arecord(), once: it yields each Redis call (or a pause)
        and is sent the reply; record() and arecord() only differ in how they perform them.
        """
        keys, args = self._script_call(revocations, jti, jti_expires_at)
        try:
            reply = yield ("record", keys, args)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        position = self._recorded(reply, revocations)
        if position is None:
            return False
        if position > 0 and self.ack_timeout > 0:
            deadline = time.monotonic() + self.ack_timeout
            while True:
                try:
                    lagging = yield ("lagging", self._lagging_args(position))
                except (RedisError, OSError) as exc:
                    self._unconfirmed(position, exc)
                    break
                if not lagging or self._timed_out(position, lagging, deadline):
                    break
                yield ("pause",)
        return True

    def _script_call(
        self, revocations: Sequence[Revocation], jti: str | None, jti_expires_at: float
    ) -> tuple[list[str], list[str | int]]:
        if self._closed:
            raise StoreUnavailableError(f"{self!r} is closed")
        now = self._timer()
        live = [entry for entry in revocations if entry.expires_at > now]
        payload = json.dumps(
            [[e.kind.value, e.key, e.not_before, e.expires_at] for e in live],
            separators=(",", ":"),
        )
        keys = [self._entries_key, self._not_before_key, self._feed_key, self._seq_key]
        jti_ttl_ms = 0
        if jti is not None:
            keys.append(f"{self.prefix}jti:{jti}")
            # PX needs a positive integer; a claim already expired lives 1 ms.
            jti_ttl_ms = max(1, int((jti_expires_at - now) * 1000))
        args: list[str | int] = [
            repr(now),
            self.stream_maxlen,
            payload,
            jti_ttl_ms,
            secrets.token_hex(16),
        ]
        for entry in live:
            # repr() round-trips floats exactly; Lua only compares, Redis stores the text.
            args += [_member(entry), repr(entry.not_before), repr(entry.expires_at)]
        return keys, args

    def _recorded(self, reply: Any, revocations: Sequence[Revocation]) -> int | None:
        """``None`` for a replay, else the ``seq`` every live follower must reach (or -1)."""
        if not reply:
            return None
        self.replica.apply(revocations)
        return int(reply)

    def _lagging_args(self, position: int) -> list[str | int]:
        return [position, int(FOLLOWER_STALE_AFTER * 1000), self.follower_name]

    def _timed_out(self, position: int, lagging: list[str], deadline: float) -> bool:
        """Whether to stop waiting for ``lagging`` (``[name, applied, …]``); warns if so."""
        if time.monotonic() < deadline:
            return False
        pairs = zip(lagging[::2], lagging[1::2], strict=True)
        names = ", ".join(f"{name} (at {applied})" for name, applied in pairs)
        logger.warning(
            "Redis store %s: change %d is recorded, but after ack_timeout=%gs %d worker(s) "
            "had not applied it and may accept the revoked session(s) until they do: %s",
            self.connector.description,
            position,
            self.ack_timeout,
            len(lagging) // 2,
            names,
        )
        return True

    def _unconfirmed(self, position: int, exc: BaseException) -> None:
        logger.warning(
            "Redis store %s: change %d is recorded, but whether every worker applied it "
            "could not be checked: %s",
            self.connector.description,
            position,
            exc,
        )

    def _unavailable(self, exc: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"Redis store {self.connector.description}: could not record revocations: {exc}"
        )

    async def _async_handle(self) -> _AsyncHandle:
        loop = asyncio.get_running_loop()
        handle = self._async.get(loop)
        if handle is None:
            owner = _client_until_loop_shutdown(self.connector)
            client = await owner.__anext__()  # first iteration: the loop now tracks it
            handle = _AsyncHandle(
                client,
                client.register_script(_RECORD_LUA),
                client.register_script(_LAGGING_LUA),
                owner,
            )
            self._async[loop] = handle
        return handle

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start the follower and wait (briefly) for its first full sync.

        Never raises because Redis is unreachable: the follower keeps retrying and
        :meth:`status` says ``available=False`` until it succeeds.
        """
        with self._lifecycle_lock:
            if self._closed:
                raise StoreUnavailableError(f"{self!r} is closed")
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._follow,
                name=f"kc-sso-redis-follower {self.connector.description}",
                daemon=True,
            )
            self._thread.start()
        self._first_sync.wait(_START_WAIT)

    def close(self) -> None:
        with self._lifecycle_lock:
            self._closed = True
            self._stop.set()
            thread, self._thread = self._thread, None
        self._unblock_follower()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._status = StoreStatus(available=False, detail="closed")
        # After the join, so that no last heartbeat brings the entries back.
        self._unregister()
        self._resources.close()
        # Async clients close with their event loops (see _client_until_loop_shutdown).
        self._async.clear()
        _process.forget(self)

    def _unblock_follower(self) -> None:
        follower_id = self._follower_id
        if follower_id is not None:
            # Wake the follower from XREAD BLOCK now rather than when the block times out.
            # Failing means the follower is not blocked on a live connection anyway.
            with contextlib.suppress(RedisError, OSError):
                self._client.client_unblock(follower_id)

    def _unregister(self) -> None:
        """Delete this follower's entries (best effort: else they go stale in seconds)."""
        if not self._registered:
            return
        self._registered = False
        with contextlib.suppress(RedisError, OSError), self._client.pipeline() as pipe:
            pipe.hdel(self._followers_keys[0], self.follower_name)
            pipe.zrem(self._followers_keys[1], self.follower_name)
            pipe.execute()

    def _unregister_at_exit(self) -> None:
        """At interpreter exit: stop following, then unregister (bounded waits)."""
        if not self._registered or not self._status.available:
            return  # nothing to delete, or Redis is away and would only delay the exit
        self._stop.set()
        self._unblock_follower()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_EXIT_JOIN_TIMEOUT)
        self._unregister()

    # -- follower -------------------------------------------------------------------

    def _follow(self) -> None:
        backoff = _MIN_BACKOFF
        while not self._stop.is_set():
            try:
                with contextlib.ExitStack() as connection:
                    client = self.connector.sync_client(True, connection)
                    self._follower_id = client.client_id()
                    try:
                        # Register (at position 0) before the resync: a writer that does
                        # not see this follower yet wrote before the resync began.
                        self._last_seq = 0
                        self._publish(client)
                        self._resync(client)
                        if not self._status.available:
                            logger.info(
                                "Redis store %s: following changes", self.connector.description
                            )
                        self._status = StoreStatus(available=True)
                        self._first_sync.set()
                        backoff = _MIN_BACKOFF
                        self._tail(client)
                    finally:
                        self._follower_id = None
            except Exception as exc:
                # RedisError/OSError mean Redis is unreachable; anything else is logged
                # the same way rather than killing the thread, which would leave the
                # replica silently stale.
                delay = backoff * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not security
                detail = f"disconnected ({exc}); retrying in {delay:.2f}s"
                if self._status.available or not self._first_sync.is_set():
                    logger.warning("Redis store %s: %s", self.connector.description, detail)
                self._status = StoreStatus(available=False, detail=detail)
                self._first_sync.set()
                self._stop.wait(delay)
                backoff = min(backoff * 2, _MAX_BACKOFF)

    def _resync(self, client: redis.Redis) -> None:
        """Merge every active entry from the keyspace; then follow from the noted position."""
        # Position first, entries second: anything written in between is both in the scan
        # and after the position, and applying it twice is harmless.
        previous = self._last_seq
        with client.pipeline(transaction=True) as pipe:
            pipe.get(self._seq_key)
            pipe.xrevrange(self._feed_key, count=1)
            seq, newest = pipe.execute()
        if newest:
            self._last_id, fields = newest[0]
            self._last_seq = int(fields["seq"])
        else:
            self._last_id, self._last_seq = "0-0", int(seq or 0)
        # Until the scan is done, the position published stays the one before the resync.
        resynced_to, self._last_seq = self._last_seq, previous
        now = self._timer()
        batch: list[tuple[str, float]] = []
        for member, expires_at in client.zscan_iter(self._entries_key, count=_SCAN_BATCH):
            if expires_at > now:
                batch.append((member, expires_at))
            if len(batch) >= _SCAN_BATCH:
                self._apply_scanned(client, batch)
                batch = []
                if time.monotonic() >= self._next_heartbeat:  # a long scan is not death
                    self._publish(client)
        self._apply_scanned(client, batch)
        self._last_seq = resynced_to
        self._publish(client)

    def _apply_scanned(self, client: redis.Redis, batch: list[tuple[str, float]]) -> None:
        wide = [member for member, _ in batch if not member.startswith("sid:")]
        values = client.hmget(self._not_before_key, wide) if wide else []
        not_before = {m: v for m, v in zip(wide, values, strict=True) if v is not None}
        entries = []
        for member, expires_at in batch:
            kind, _, key = member.partition(":")
            if kind == RevocationKind.SESSION.value:
                entries.append(Revocation(RevocationKind.SESSION, key, 0.0, expires_at))
            elif member in not_before:  # else purged between the scan and the HMGET
                nb = float(not_before[member])
                entries.append(Revocation(RevocationKind(kind), key, nb, expires_at))
        self.replica.apply(entries)

    def _tail(self, client: redis.Redis) -> None:
        timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        # The block must end well before the socket read times out, or every idle block
        # would look like a lost connection.
        block = _BLOCK_SECONDS if not timeout else min(_BLOCK_SECONDS, timeout / 2)
        while not self._stop.is_set():
            reply = client.xread(
                {self._feed_key: self._last_id}, count=_READ_BATCH, block=int(block * 1000)
            )
            applied = False
            for msg_id, fields in _messages(reply):
                seq = int(fields["seq"])
                if seq != self._last_seq + 1:
                    logger.warning(
                        "Redis store %s: change feed gap (seq %d after %d); full resync",
                        self.connector.description,
                        seq,
                        self._last_seq,
                    )
                    self._resync(client)  # publishes the position it resynced to
                    applied = False
                    break
                self.replica.apply(_decode(fields["data"]))
                self._last_id, self._last_seq = msg_id, seq
                applied = True
            # At once after applying (a writer is waiting); else when the heartbeat is due.
            if applied or time.monotonic() >= self._next_heartbeat:
                self._publish(client)

    def _publish(self, client: redis.Redis) -> None:
        """Publish this follower's position and heartbeat (Redis errors propagate)."""
        self._next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL
        self._publish_script(
            keys=self._followers_keys,
            args=[self.follower_name, self._last_seq, int(_FOLLOWER_PURGE_AFTER * 1000)],
            client=client,
        )
        self._registered = True

    def _reinit_after_fork(self) -> None:
        """Runs in a forked child: new follower, fresh replica; redis-py resets its pools."""
        was_following = self._thread is not None
        # A fresh replica: the parent's replica lock may have been held by another thread
        # at the moment of the fork, and would then stay locked forever in the child.
        self.replica = Replica(self.replica.max_entries, self._timer)
        self._init_process_state()
        if was_following and not self._closed:
            self.start()


_OWN_OPTIONS = ("prefix", "max_entries", "stream_maxlen", "ack_timeout", "sentinel_password")


def _positive_int(url: str, options: dict[str, str], name: str, default: int) -> int:
    raw = options.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigurationError(
            f"KC_SSO_STORE={_redact(url)!r}: {name}={raw!r} must be a positive whole number"
        )
    return value


def _non_negative_float(url: str, options: dict[str, str], name: str, default: float) -> float:
    raw = options.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):  # also rejects nan
        raise ConfigurationError(
            f"KC_SSO_STORE={_redact(url)!r}: {name}={raw!r} must be a non-negative number"
        )
    return value


def _sentinel_connector(
    url: str, netloc: str, path: str, query: dict[str, list[str]], own: dict[str, str]
) -> RedisConnector:
    userinfo, _, hostlist = netloc.rpartition("@")
    segments = [unquote(s) for s in path.split("/") if s]
    if not hostlist or not segments or len(segments) > 2:
        raise ConfigurationError(
            f"KC_SSO_STORE={_redact(url)!r}: accepted form is "
            "redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/service_name[/db]"
        )
    sentinels = []
    for item in hostlist.split(","):
        if item.startswith("["):  # [IPv6]:port
            host, _, port = item[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = item.partition(":")
        try:
            sentinels.append((host, int(port) if port else DEFAULT_SENTINEL_PORT))
        except ValueError:
            raise ConfigurationError(
                f"KC_SSO_STORE={_redact(url)!r}: bad sentinel address {item!r}"
            ) from None
    kwargs: dict[str, Any] = {}
    if userinfo:
        user, has_password, password = userinfo.partition(":")
        if user:
            kwargs["username"] = unquote(user)
        if has_password:
            kwargs["password"] = unquote(password)
    if len(segments) == 2:
        try:
            kwargs["db"] = int(segments[1])
        except ValueError:
            raise ConfigurationError(
                f"KC_SSO_STORE={_redact(url)!r}: the database must be a number"
            ) from None
    parsers: dict[str, Callable[[str], Any]] = {
        "socket_timeout": float,
        "socket_connect_timeout": float,
        "db": int,
        "ssl": lambda v: v.lower() in {"1", "true", "yes", "on"},
        "ssl_cert_reqs": str,
        "ssl_ca_certs": str,
        "ssl_certfile": str,
        "ssl_keyfile": str,
    }
    for name, values in query.items():
        if name not in parsers:
            raise ConfigurationError(
                f"KC_SSO_STORE={_redact(url)!r}: unknown option {name!r} for "
                f"redis+sentinel://; accepted: {', '.join([*_OWN_OPTIONS, *parsers])}"
            )
        try:
            kwargs[name] = parsers[name](values[-1])
        except ValueError:
            raise ConfigurationError(
                f"KC_SSO_STORE={_redact(url)!r}: bad value for {name}"
            ) from None
    sentinel_kwargs = {"password": own["sentinel_password"]} if "sentinel_password" in own else None
    return RedisConnector.sentinel(
        sentinels, segments[0], sentinel_kwargs=sentinel_kwargs, **kwargs
    )


def _member(entry: Revocation) -> str:
    return f"{entry.kind.value}:{entry.key}"


def _messages(reply: Any) -> Iterable[tuple[str, dict[str, str]]]:
    """The messages of a RESP2 XREAD reply: ``[[stream, [(id, fields), …]], …]``."""
    return [message for _stream, messages in reply or () for message in messages]


def _decode(data: str) -> list[Revocation]:
    return [
        Revocation(RevocationKind(kind), key, float(not_before), float(expires_at))
        for kind, key, not_before, expires_at in json.loads(data)
    ]
