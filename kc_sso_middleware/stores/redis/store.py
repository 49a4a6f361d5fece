"""The Redis store: Lua-scripted writes, a stream as change feed, a replica per process.

Writes
------

:meth:`RedisStore.record` and :meth:`~RedisStore.arecord` drive the shared stores' record
flow (:meth:`~kc_sso_middleware.stores._following.FollowingStore._record_flow`), whose
:class:`~kc_sso_middleware.stores._following.Write` this store performs with its own
small flow (:meth:`RedisStore._write_flow`) of pipelines: ``record`` runs it blocking,
``arecord`` on the running loop's own client; the logic exists once.

A write is **one round trip**: one pipeline of the record script, ``WAIT`` (when
``wait_replicas`` is set) and ``BLPOP`` on the write's own acknowledgement list.  The
record script claims the ``jti`` with ``SET NX PX`` and, on a replay, writes nothing.
Otherwise it merges the entries (``ZADD GT`` keeps the latest expiry; a ``not_before`` is
only ever raised), removes at most 100 expired entries so the keyspace stays bounded
(expired by the earlier of the writer's clock and Redis', by more than the clock skew
allowed plus a minute: a clock running ahead never deletes an entry still live for others),
increments ``seq``, appends the message with ``XADD``, and lists the live followers other
than the writer's own as the ones to wait for.  Each of them acknowledges as part of
publishing its position, and the last one releases the writer's ``BLPOP`` (see
:mod:`.scripts`); with nobody to wait for, the script releases it itself.  The ``BLPOP``
lasts at most ``ack_timeout``; if it runs out, one more script call names the followers
that still lag, for the warning (and drops those that went silent, if there is time left
to wait for the others).  When the previous write had nobody to wait for (one process),
the ``BLPOP`` is left out, and sent after the script only if a follower has turned up.
The ``jti`` value is a random token per call: a retry after a lost reply finds its own
token and reports success, not a replay.

The writer applies its entries to this process's replica as soon as the script has
answered, and remembers the write's token.  The script rings the bell of every other live
follower (see :mod:`.scripts`), not this process's own: its follower reads the message
later, when another process's write or its heartbeat wakes it, skips it (the token is the
message's ``by`` field), and publishes nothing for it, since nobody waits for it there
and the script has moved its position on.

``wait_replicas=N`` (default 1 for Redis Cluster, else 0): ``WAIT N`` makes the write
reach N replicas before it is confirmed, so a master killed right after its answer cannot
take it along into a failover.  Fewer replicas within ``ack_timeout`` is a failed write
(503).  It costs a replication round trip (on loopback about 0.08 ms at the median,
0.8 ms at p99), and a master that has lost its replicas refuses logouts until one is
back.

A write is confirmed once Redis holds it in memory (and the replicas asked for do).
Whether it also survives a Redis restart depends on Redis' persistence (``appendonly
yes``); when it does not, the workers write back what they hold (:mod:`.repair`).
"""

from __future__ import annotations

import asyncio
import collections
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
from redis.exceptions import NoScriptError, RedisError

from ..._flows import Effect, Flow, adrive, drive
from ...errors import StoreUnavailableError
from .._following import (
    FOLLOWER_STALE_AFTER,
    FollowerState,
    FollowingStore,
    Pause,
    Write,
    Written,
)
from ..model import Revocation, StoreStatus
from ..options import (
    ACK_TIMEOUT,
    MAX_ENTRIES,
    PREFIX,
    REDIS_SCHEMES,
    REPAIR_WAIT,
    SOCKET_TIMEOUT,
    STREAM_MAXLEN,
    WAIT_REPLICAS,
    StoreURL,
    default_of,
    parse_store_url,
)
from . import scripts
from .connect import RedisConnector, client_until_loop_shutdown, connector_for
from .follower import ACK_DONE_TTL_MS, Follower

__all__ = ["RedisStore"]

logger = logging.getLogger(__name__)

_MIN_BACKOFF = 0.05
# Survivors of a Redis restart reconnect within about this, so that a new worker's
# repair_wait can be short.
_MAX_BACKOFF = 1.0
_START_WAIT = 10.0  # how long start() waits for the first sync before returning anyway
#: what a pipeline may block in all (WAIT + BLPOP), as a share of the socket timeout
_BLOCKING_SHARE = 0.8
#: the live window writers use: a follower silent for longer is not waited for
_LIVE_MS = int(FOLLOWER_STALE_AFTER * 1000)
#: own writes remembered for the follower (far more than can be in flight)
_OWN_WRITES = 10_000
#: how often a write Redis could not wait for (it lost data moments ago) looks again
_CONFIRM_POLL = 0.01
#: the clock skew allowed when none is given (``Settings.clock_skew``'s default)
DEFAULT_CLOCK_SKEW = 60.0
#: how much longer than the clock skew allowed an expired entry is kept before a write
#: purges it (seconds): a purge is only housekeeping, deleting early loses a revocation
_PURGE_SLACK = 60.0


@dataclass(frozen=True, slots=True)
class _Pipeline(Effect[list[Any]]):
    """Send ``commands`` in one pipeline; the replies, errors of single commands included."""

    commands: tuple[tuple[Any, ...], ...]


@dataclass
class _AsyncHandle:
    client: redis.asyncio.Redis
    #: the suspended generator that owns ``client``; kept referenced until the loop ends
    owner: AsyncIterator[redis.asyncio.Redis]


class RedisStore(FollowingStore):
    """Revocations in Redis, followed by every worker of every host.

    Longer than 200 lines because the write flow's two performers (blocking and async)
    and the lifecycle hooks share its clients and keys; the follower and the repair are
    in their own modules.

    URLs and options: :mod:`~kc_sso_middleware.stores.options`; keys and scripts:
    :mod:`~kc_sso_middleware.stores.redis.scripts`; following:
    :mod:`~kc_sso_middleware.stores.redis.follower`; lost data:
    :mod:`~kc_sso_middleware.stores.redis.repair`.
    """

    def __init__(
        self,
        connector: RedisConnector,
        *,
        prefix: str = default_of(PREFIX),
        max_entries: int = default_of(MAX_ENTRIES),
        stream_maxlen: int = default_of(STREAM_MAXLEN),
        ack_timeout: float = default_of(ACK_TIMEOUT),
        wait_replicas: int = default_of(WAIT_REPLICAS),
        repair_wait: float = default_of(REPAIR_WAIT),
        clock_skew: float = DEFAULT_CLOCK_SKEW,
        timer: Callable[[], float] = time.time,
    ) -> None:
        self.connector = connector
        self.description = f"Redis store {connector.description}"
        self.prefix = prefix
        self.stream_maxlen = stream_maxlen
        self.wait_replicas = wait_replicas
        self.repair_wait = repair_wait
        # Workers' clocks (and Redis') differ: the record script purges an entry only this
        # long after it expired by the earlier of the writer's clock and Redis'.
        self.purge_margin = max(0.0, clock_skew) + _PURGE_SLACK
        self.keys = scripts.Keys(prefix)
        self._resources = contextlib.ExitStack()
        self._resources.callback(connector.close)
        self._client = connector.sync_client(False, self._resources)
        timeout = self._client.connection_pool.connection_kwargs.get("socket_timeout")
        self._blocking_budget = (timeout or default_of(SOCKET_TIMEOUT)) * _BLOCKING_SHARE
        super().__init__(max_entries=max_entries, ack_timeout=ack_timeout, timer=timer)

    def _init_process_state(self) -> None:
        super()._init_process_state()
        self._first_sync = threading.Event()
        self._follower_id: int | None = None
        #: the generation this process synced with (None: never synced; see .repair)
        self._generation: str | None = None
        #: the id of the last feed message this process applied ("" for none)
        self._last_id = ""
        #: the risky eviction setting last reported (see repair.check_eviction_policy)
        self._eviction_reported: tuple[str, int] | None = None
        #: whether the last write had other live followers to wait for
        self._others_live = True
        #: this process's recent writes, by token: whether the replica holds them yet (the
        #: follower then skips their messages); oldest first, bounded
        self._own_writes: collections.OrderedDict[str, bool] = collections.OrderedDict()
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncHandle] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        clock_skew: float = DEFAULT_CLOCK_SKEW,
        timer: Callable[[], float] = time.time,
    ) -> RedisStore:
        """Open ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://`` or
        ``redis+cluster://`` (no I/O).  ``clock_skew``: the seconds workers' clocks may
        differ by (``Settings.clock_skew``); expired entries are purged no earlier."""
        parsed = parse_store_url(url, schemes=REDIS_SCHEMES)
        return cls.from_parsed(parsed, clock_skew=clock_skew, timer=timer)

    @classmethod
    def from_parsed(
        cls,
        parsed: StoreURL,
        *,
        clock_skew: float = DEFAULT_CLOCK_SKEW,
        timer: Callable[[], float] = time.time,
    ) -> RedisStore:
        return cls(
            connector_for(parsed),
            prefix=parsed[PREFIX],
            max_entries=parsed[MAX_ENTRIES],
            stream_maxlen=parsed[STREAM_MAXLEN],
            ack_timeout=parsed[ACK_TIMEOUT],
            wait_replicas=parsed[WAIT_REPLICAS],
            repair_wait=parsed[REPAIR_WAIT],
            clock_skew=clock_skew,
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

    def _script_call(
        self, write: Write, token: str, *, blpop: bool = True
    ) -> tuple[list[str], list[str | int]]:
        """The record script's keys and arguments for ``write``."""
        payload = json.dumps(
            [
                [
                    e.kind.value,
                    e.subject,
                    e.not_before,
                    e.expires_at,
                    e.label,
                    None if e.note is None else e.note.encode(),
                ]
                for e in write.entries
            ],
            separators=(",", ":"),
        )
        keys = self.keys
        names = [keys.entries]
        jti_ttl_ms = 0
        if write.jti is not None:
            names.append(keys.jti(write.jti))
            # PX needs a positive integer; a claim already expired lives 1 ms.
            jti_ttl_ms = max(1, int((write.jti_expires_at - write.now) * 1000))
        args: list[str | int] = [
            repr(write.now),
            self.stream_maxlen,
            payload,
            jti_ttl_ms,
            token,
            self.follower_name,
            _LIVE_MS,
            # The wait set outlives the wait; 0: nobody waits.
            int(self.ack_timeout * 1000) + ACK_DONE_TTL_MS if self.ack_timeout > 0 else 0,
            "1" if blpop else "0",
            self._generation or "",
            repr(self.purge_margin),
        ]
        for entry in write.entries:
            # repr() round-trips floats exactly; Lua only compares, Redis stores the text.
            args += [member(entry), repr(entry.not_before), repr(entry.expires_at)]
        return names, args

    def _write_flow(self, write: Write) -> Flow[Written | None]:
        """The record script, WAIT and the acknowledgement wait: one pipeline, normally.

        Returns None for a replay.  Raises StoreUnavailableError when the write failed or
        did not reach ``wait_replicas`` replicas.
        """
        token = secrets.token_hex(16)
        own = self._own_writes
        own[token] = False
        if len(own) > _OWN_WRITES:  # tokens whose message the follower never saw
            own.popitem(last=False)
        try:
            return (yield from self._write_and_wait(write, token))
        finally:
            if own.get(token) is False:  # not applied here: the follower applies it
                own.pop(token, None)

    def _write_and_wait(self, write: Write, token: str) -> Flow[Written | None]:
        deadline = time.monotonic() + self.ack_timeout
        budget = self._blocking_budget
        wait_s = min(self.ack_timeout or 1.0, budget / 2) if self.wait_replicas else 0.0
        blpop_s = min(self.ack_timeout, budget - wait_s)
        # The BLPOP goes along with the script when the last write had others to wait
        # for; otherwise (one process) only if the script says there are some now.
        pipelined = blpop_s > 0 and self._others_live
        keys, args = self._script_call(write, token, blpop=pipelined)
        commands: list[tuple[Any, ...]] = [("EVALSHA", scripts.RECORD.sha, len(keys), *keys, *args)]
        if self.wait_replicas:
            commands.append(("WAIT", self.wait_replicas, max(1, int(wait_s * 1000))))
        if pipelined:
            commands.append(("BLPOP", self.keys.done(token), blpop_s))
        replies = yield from _Pipeline(tuple(commands))
        if _is_noscript(replies[0]):  # Redis restarted or failed over: load, then again
            yield from _Pipeline((("SCRIPT", "LOAD", scripts.RECORD.text),))
            replies = yield from _Pipeline(tuple(commands))
        if isinstance(replies[0], Exception):
            raise StoreUnavailableError(str(replies[0]))
        position, waiting = (int(value) for value in replies[0])
        applied = position > 0
        if applied:
            # Applied here, at once: the follower then skips the message, and the replica
            # holds the entries even if what follows fails (as the other workers' do).
            self._apply(write.entries)
            self._own_writes[token] = True
        if position == 0:  # a replay: nothing was written, nothing to wait for
            return None
        for reply in replies[1:]:
            if isinstance(reply, Exception):
                raise StoreUnavailableError(str(reply))
        if self.wait_replicas:
            reached = int(replies[1])
            if reached < self.wait_replicas:
                raise StoreUnavailableError(
                    f"the write reached {reached} of wait_replicas={self.wait_replicas} "
                    f"replicas within {wait_s:g}s, so a failover could lose it; it is "
                    "held by the master (set wait_replicas=0 to confirm writes without "
                    "replicas)"
                )
        if waiting < 0:  # Redis lost data moments ago: whom to wait for is not known
            return (yield from self._confirm(position, deadline))
        if blpop_s > 0:
            self._others_live = waiting > 0
        if not waiting or blpop_s <= 0:
            return Written(position, applied=applied)
        if not pipelined:
            (popped,) = yield from _Pipeline((("BLPOP", self.keys.done(token), blpop_s),))
            replies = [*replies, popped]
        if replies[-1] is not None and not isinstance(replies[-1], Exception):
            return Written(position, applied=applied)
        # The BLPOP ran out: who lags?  (Drop the silent; wait on while time is left.)
        wait_keys = [
            self.keys.wait(token),
            *self.keys.followers,
            self.keys.waits,
            self.keys.done(token),
        ]
        while True:
            remaining = deadline - time.monotonic()
            stop = "1" if remaining <= 0.001 else "0"
            call = ("EVALSHA", scripts.WAITING.sha, len(wait_keys), *wait_keys)
            (lagging,) = yield from _Pipeline(((*call, _LIVE_MS, token, stop),))
            if isinstance(lagging, Exception):  # the write stands; only the check failed
                logger.warning(
                    "%s: change %d is recorded, but whether every worker applied it could "
                    "not be checked: %s",
                    self.description,
                    position,
                    lagging,
                )
                return Written(position, applied=applied)
            pairs = _pairs(lagging)
            if not pairs or stop == "1":
                return Written(position, tuple(pairs), applied=applied)
            (popped,) = yield from _Pipeline(
                (("BLPOP", self.keys.done(token), min(remaining, budget)),)
            )
            if popped is not None and not isinstance(popped, Exception):
                return Written(position, applied=applied)

    def _confirm(self, position: int, deadline: float) -> Flow[Written]:
        """Wait, up to ``ack_timeout``, for a write the record script could not wait for:
        Redis lost its data moments ago, and with it the list of live followers.  Done
        once the keyspace's generation is this worker's and was not renewed within the
        live window (every worker still current has re-registered by then, or found the
        loss and stopped reporting current) and every follower listed has the write."""
        keys = self.keys
        names = [keys.generation, keys.renewed, *keys.followers]
        pairs: list[tuple[str, int]] = [("(followers unknown: Redis lost data)", -1)]
        while time.monotonic() < deadline:
            args = (self._generation or "", position, _LIVE_MS, self.follower_name)
            call = ("EVALSHA", scripts.CONFIRM.sha, len(names), *names, *args)
            (reply,) = yield from _Pipeline((call,))
            if _is_noscript(reply):
                yield from _Pipeline((("SCRIPT", "LOAD", scripts.CONFIRM.text),))
                continue
            if isinstance(reply, Exception):
                break
            settled, *rest = reply
            pairs = _pairs(rest) if int(settled) else pairs
            if int(settled) and not pairs:
                return Written(position, applied=True)
            yield from Pause(_CONFIRM_POLL)
        return Written(position, tuple(pairs), applied=True)

    def _perform(self, effect: Effect[Any]) -> object:
        """Perform one effect of the record flow, blocking."""
        if isinstance(effect, Write):
            return drive(self._write_flow(effect), self._perform)
        if isinstance(effect, Pause):
            time.sleep(effect.seconds)
            return None
        if isinstance(effect, _Pipeline):
            try:
                if len(effect.commands) == 1:  # no pipeline object needed
                    try:
                        return [self._client.execute_command(*effect.commands[0])]  # type: ignore[no-untyped-call]
                    except (redis.ConnectionError, redis.TimeoutError):
                        raise
                    except RedisError as exc:  # one command's error, as a pipeline has it
                        return [exc]
                with self._client.pipeline(transaction=False) as pipe:
                    for command in effect.commands:
                        pipe.execute_command(*command)  # type: ignore[no-untyped-call]
                    return pipe.execute(raise_on_error=False)
            except (RedisError, OSError) as exc:
                raise StoreUnavailableError(str(exc)) from exc
        raise TypeError(f"{self!r} cannot perform {effect!r}")

    async def _aperform(self, effect: Effect[Any]) -> object:
        """Perform one effect of the record flow on the running loop's client."""
        if isinstance(effect, Write):
            return await adrive(self._write_flow(effect), self._aperform)
        if isinstance(effect, Pause):
            await asyncio.sleep(effect.seconds)
            return None
        if isinstance(effect, _Pipeline):
            try:
                handle = await self._async_handle()
                if len(effect.commands) == 1:
                    try:
                        return [await handle.client.execute_command(*effect.commands[0])]  # type: ignore[no-untyped-call]
                    except (redis.ConnectionError, redis.TimeoutError):
                        raise
                    except RedisError as exc:
                        return [exc]
                async with handle.client.pipeline(transaction=False) as pipe:
                    for command in effect.commands:
                        pipe.execute_command(*command)
                    return await pipe.execute(raise_on_error=False)
            except (RedisError, OSError) as exc:
                raise StoreUnavailableError(str(exc)) from exc
        raise TypeError(f"{self!r} cannot perform {effect!r}")

    async def _async_handle(self) -> _AsyncHandle:
        loop = asyncio.get_running_loop()
        handle = self._async.get(loop)
        if handle is None:
            owner = client_until_loop_shutdown(self.connector)
            client = await owner.__anext__()  # first iteration: the loop now tracks it
            handle = _AsyncHandle(client, owner)
            self._async[loop] = handle
        return handle

    @property
    def eviction_risk(self) -> tuple[str, int] | None:
        """``(maxmemory-policy, maxmemory)`` when Redis, as last seen at a connection, may
        evict this store's keys (an ``allkeys-*`` policy with a limit); else ``None``."""
        return self._eviction_reported

    def followers(self) -> list[FollowerState]:
        applied_key, seen_key = self.keys.followers
        try:
            # MULTI/EXEC: Redis' clock, the newest seq and both follower keys in one snapshot.
            with self._client.pipeline(transaction=True) as pipe:
                pipe.time()
                pipe.get(self.keys.seq)
                pipe.hgetall(applied_key)
                pipe.zrange(seen_key, 0, -1, withscores=True)
                (seconds, micros), seq, applied, seen = pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(
                f"{self.description}: could not read the followers: {exc}"
            ) from exc
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        head = int(seq or 0)
        seen_ms = {str(name): float(score) for name, score in seen}
        states = []
        for name in sorted(set(applied) | set(seen_ms)):
            position = int(applied.get(name, -1))
            age = max(0.0, (now_ms - seen_ms[name]) / 1000) if name in seen_ms else float("inf")
            states.append(FollowerState(name, position, age, max(0, head - position)))
        return states

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
            pipe.zrem(self.keys.repairers, self.follower_name)
            pipe.execute()

    def _release(self) -> None:
        self._resources.close()
        # Async clients close with their event loops (see client_until_loop_shutdown).
        self._async.clear()

    # -- follower -------------------------------------------------------------------

    def _synced(self) -> None:
        """The follower has synced: the replica is current (again)."""
        if not self._status.available:
            logger.info("%s: following changes", self.description)
        self._status = StoreStatus(available=True)
        self._first_sync.set()

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


def _is_noscript(reply: object) -> bool:
    return isinstance(reply, NoScriptError)


def _pairs(reply: Any) -> list[tuple[str, int]]:
    """``[name, applied, name, applied, …]`` as ``(name, applied)`` pairs."""
    flat = list(reply or ())
    return [(str(name), int(applied)) for name, applied in zip(flat[::2], flat[1::2], strict=True)]
