"""The Redis store: Lua-scripted writes, a stream as change feed, a replica per process.

Writes
------

:meth:`RedisStore.record` and :meth:`~RedisStore.arecord` drive the shared stores' record
flow (:meth:`~kc_sso_middleware.stores._following.FollowingStore._record_flow`): its
:class:`~kc_sso_middleware.stores._following.Write` runs the record script, then the
acknowledgement wait's ``LaggingFollowers`` and ``Pause`` run the lagging script and sleep.
``record`` performs them blocking, ``arecord`` on the running loop's own client; the logic
exists once.

The record script claims the ``jti`` with ``SET NX PX`` and returns 0 on a replay, writing
nothing.  Otherwise it merges the entries (``ZADD GT`` keeps the latest expiry; a
``not_before`` is only ever raised), removes at most 100 expired entries so the keyspace
stays bounded, increments ``seq``, appends the message with ``XADD`` and returns the new
``seq``.  The ``jti`` value is a random token per call: a retry after a lost reply finds
its own token and reports success, not a replay.  A call with no live entry writes no
message and returns -1.

A write is confirmed once Redis holds it in memory.  Whether it also survives a Redis
restart depends on Redis' persistence (``appendonly yes``).  Workers that have already
applied an entry keep enforcing it either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
from redis.commands.core import AsyncScript, Script
from redis.exceptions import RedisError

from ..._flows import Effect, adrive
from ...errors import StoreUnavailableError
from .._following import FOLLOWER_STALE_AFTER, FollowingStore, LaggingFollowers, Pause, Write
from ..model import Revocation, StoreStatus
from ..options import (
    ACK_TIMEOUT,
    MAX_ENTRIES,
    PREFIX,
    STREAM_MAXLEN,
    StoreURL,
    default_of,
    parse_store_url,
)
from . import scripts
from .connect import RedisConnector, client_until_loop_shutdown, connector_for
from .follower import Follower

__all__ = ["RedisStore"]

logger = logging.getLogger(__name__)

_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "redis+sentinel"})
_MIN_BACKOFF = 0.05
_MAX_BACKOFF = 5.0
_START_WAIT = 10.0  # how long start() waits for the first sync before returning anyway


@dataclass
class _AsyncHandle:
    client: redis.asyncio.Redis
    record: AsyncScript
    lagging: AsyncScript
    #: the suspended generator that owns ``client``; kept referenced until the loop ends
    owner: AsyncIterator[redis.asyncio.Redis]


class RedisStore(FollowingStore):
    """Revocations in Redis, followed by every worker of every host.

    Longer than 200 lines because the record flow's two performers (blocking and async)
    and the lifecycle hooks share its clients and keys; the follower is in its own module.

    URLs and options: :mod:`~kc_sso_middleware.stores.options`; keys and scripts:
    :mod:`~kc_sso_middleware.stores.redis.scripts`; following:
    :mod:`~kc_sso_middleware.stores.redis.follower`.
    """

    def __init__(
        self,
        connector: RedisConnector,
        *,
        prefix: str = default_of(PREFIX),
        max_entries: int = default_of(MAX_ENTRIES),
        stream_maxlen: int = default_of(STREAM_MAXLEN),
        ack_timeout: float = default_of(ACK_TIMEOUT),
        timer: Callable[[], float] = time.time,
    ) -> None:
        self.connector = connector
        self.description = f"Redis store {connector.description}"
        self.prefix = prefix
        self.stream_maxlen = stream_maxlen
        self.keys = scripts.Keys(prefix)
        self._resources = contextlib.ExitStack()
        self._client = connector.sync_client(False, self._resources)
        # Script objects only hold the SHA; each call names the client that runs it.
        self._record_script: Script = self._client.register_script(scripts.RECORD)
        self._publish_script: Script = self._client.register_script(scripts.PUBLISH)
        self._lagging_script: Script = self._client.register_script(scripts.LAGGING)
        super().__init__(max_entries=max_entries, ack_timeout=ack_timeout, timer=timer)

    def _init_process_state(self) -> None:
        super()._init_process_state()
        self._first_sync = threading.Event()
        self._follower_id: int | None = None
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncHandle] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def from_url(cls, url: str, *, timer: Callable[[], float] = time.time) -> RedisStore:
        """Open ``redis://``, ``rediss://``, ``unix://`` or ``redis+sentinel://`` (no I/O)."""
        return cls.from_parsed(parse_store_url(url, schemes=_REDIS_SCHEMES), timer=timer)

    @classmethod
    def from_parsed(cls, parsed: StoreURL, *, timer: Callable[[], float] = time.time) -> RedisStore:
        return cls(
            connector_for(parsed),
            prefix=parsed[PREFIX],
            max_entries=parsed[MAX_ENTRIES],
            stream_maxlen=parsed[STREAM_MAXLEN],
            ack_timeout=parsed[ACK_TIMEOUT],
            timer=timer,
        )

    def __repr__(self) -> str:
        return f"RedisStore({self.connector.description!r}, prefix={self.prefix!r})"

    # -- logout paths ---------------------------------------------------------------

    async def arecord(
        self,
        revocations: Sequence[Revocation],
        *,
        jti: str | None = None,
        jti_expires_at: float = 0.0,
        authenticated: bool = True,
    ) -> bool:
        return await adrive(
            self._record_flow(revocations, jti, jti_expires_at, authenticated), self._aperform
        )

    def _script_call(self, write: Write) -> tuple[list[str], list[str | int]]:
        """The record script's keys and arguments for ``write``."""
        payload = json.dumps(
            [[e.kind.value, e.subject, e.not_before, e.expires_at, e.label] for e in write.entries],
            separators=(",", ":"),
        )
        keys = [self.keys.entries, self.keys.not_before, self.keys.feed, self.keys.seq]
        jti_ttl_ms = 0
        if write.jti is not None:
            keys.append(self.keys.jti(write.jti))
            # PX needs a positive integer; a claim already expired lives 1 ms.
            jti_ttl_ms = max(1, int((write.jti_expires_at - write.now) * 1000))
        args: list[str | int] = [
            repr(write.now),
            self.stream_maxlen,
            payload,
            jti_ttl_ms,
            secrets.token_hex(16),
        ]
        for entry in write.entries:
            # repr() round-trips floats exactly; Lua only compares, Redis stores the text.
            args += [member(entry), repr(entry.not_before), repr(entry.expires_at)]
        return keys, args

    def _lagging_args(self, position: int) -> list[str | int]:
        return [position, int(FOLLOWER_STALE_AFTER * 1000), self.follower_name]

    def _perform(self, effect: Effect[Any]) -> object:
        """Perform one effect of the record flow, blocking."""
        if isinstance(effect, Pause):
            time.sleep(effect.seconds)
            return None
        try:
            if isinstance(effect, Write):
                keys, args = self._script_call(effect)
                return _position(self._record_script(keys, args, client=self._client))
            if isinstance(effect, LaggingFollowers):
                args = self._lagging_args(effect.position)
                return _pairs(self._lagging_script(self.keys.followers, args, client=self._client))
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(str(exc)) from exc
        raise TypeError(f"{self!r} cannot perform {effect!r}")

    async def _aperform(self, effect: Effect[Any]) -> object:
        """Perform one effect of the record flow on the running loop's client."""
        if isinstance(effect, Pause):
            await asyncio.sleep(effect.seconds)
            return None
        try:
            if isinstance(effect, Write):
                handle = await self._async_handle()
                keys, args = self._script_call(effect)
                return _position(await handle.record(keys, args, client=handle.client))
            if isinstance(effect, LaggingFollowers):
                handle = await self._async_handle()
                args = self._lagging_args(effect.position)
                return _pairs(await handle.lagging(self.keys.followers, args, client=handle.client))
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(str(exc)) from exc
        raise TypeError(f"{self!r} cannot perform {effect!r}")

    async def _async_handle(self) -> _AsyncHandle:
        loop = asyncio.get_running_loop()
        handle = self._async.get(loop)
        if handle is None:
            owner = client_until_loop_shutdown(self.connector)
            client = await owner.__anext__()  # first iteration: the loop now tracks it
            handle = _AsyncHandle(
                client,
                client.register_script(scripts.RECORD),
                client.register_script(scripts.LAGGING),
                owner,
            )
            self._async[loop] = handle
        return handle

    # -- lifecycle ------------------------------------------------------------------

    def _started(self) -> None:
        """start() waits (briefly) for the follower's first full sync.

        It never raises because Redis is unreachable: the follower keeps retrying and
        :meth:`status` says ``available=False`` until it succeeds.
        """
        self._first_sync.wait(_START_WAIT)

    def _wake(self) -> None:
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
        applied, seen = self.keys.followers
        with contextlib.suppress(RedisError, OSError), self._client.pipeline() as pipe:
            pipe.hdel(applied, self.follower_name)
            pipe.zrem(seen, self.follower_name)
            pipe.execute()

    def _release(self) -> None:
        self._resources.close()
        # Async clients close with their event loops (see client_until_loop_shutdown).
        self._async.clear()

    # -- follower -------------------------------------------------------------------

    def _follow(self) -> None:
        """Follow on a dedicated connection; on any failure reconnect with backoff."""
        backoff = _MIN_BACKOFF
        while not self._stop.is_set():
            try:
                with contextlib.ExitStack() as connection:
                    client = self.connector.sync_client(True, connection)
                    self._follower_id = client.client_id()
                    try:
                        follower = Follower(self, client)
                        follower.sync()
                        if not self._status.available:
                            logger.info("%s: following changes", self.description)
                        self._status = StoreStatus(available=True)
                        self._first_sync.set()
                        backoff = _MIN_BACKOFF
                        follower.tail()
                    finally:
                        self._follower_id = None
            except Exception as exc:
                # RedisError/OSError mean Redis is unreachable; anything else is logged
                # the same way rather than killing the thread, which would leave the
                # replica silently stale.
                delay = backoff * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not security
                detail = f"disconnected ({exc}); retrying in {delay:.2f}s"
                if self._status.available or not self._first_sync.is_set():
                    logger.warning("%s: %s", self.description, detail)
                self._status = StoreStatus(available=False, detail=detail)
                self._first_sync.set()
                self._stop.wait(delay)
                backoff = min(backoff * 2, _MAX_BACKOFF)


def member(entry: Revocation) -> str:
    """The entry's member in ``P entries``: ``"<kind>:<subject>"``."""
    return f"{entry.kind.value}:{entry.subject}"


def _position(reply: Any) -> int | None:
    """The record script's reply: 0 (a replay) is None, else the seq to wait for (-1: none)."""
    return int(reply) or None


def _pairs(reply: Any) -> list[tuple[str, int]]:
    """``[name, applied, name, applied, …]`` as ``(name, applied)`` pairs."""
    flat = list(reply or ())
    return [(str(name), int(applied)) for name, applied in zip(flat[::2], flat[1::2], strict=True)]
