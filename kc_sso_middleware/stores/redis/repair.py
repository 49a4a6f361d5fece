"""When Redis lost data: finding out, and writing it back from the workers' replicas.

Redis may come back with less than it acknowledged: restarted without persistence (the
default of many installations and managed services), or failed over (Sentinel, Cluster)
to a replica that had not received the last writes.  Workers that stayed up still hold
every entry in their replicas (a resync merges and never replaces), so the knowledge is
in the system; :func:`reconcile` writes it back.  It runs on every (re)connection and
resync of a follower, before the follower registers, and a heartbeat that finds another
generation leads to it as well.

* **Detection** (the contact script, :data:`~.scripts.CONTACT`): ``P generation`` is a
  random token, written once per keyspace history; each worker remembers the one it
  synced with.  Missing means the keyspace was emptied; different means another worker
  found a loss; the same, but the feed no longer holding the last message this worker
  applied, means a failover to a replica that had not received it.  The last two cover
  Sentinel and Cluster failovers, whose replicas carry the generation along.  The
  generation's copies in ``P entries`` and ``P not_before`` missing means those keys were
  evicted (``maxmemory`` with an ``allkeys-*`` policy, which
  :func:`check_eviction_policy` warns of at every connection); a new worker that finds
  this starts a new generation, so that the workers holding the entries write them back,
  and waits ``repair_wait`` for them.
* **Repair**: such a worker is listed in ``P repairers`` (with a lease) and unregistered
  as a follower, atomically with the finding; a loss it found itself also starts a new
  generation, so that every other worker writes back too when it next checks.  It then
  writes back every unexpired entry of its replica (:meth:`Replica.snapshot`: never with
  a later expiry than the entry's own) and every ``jti`` claim it made, idempotently
  (``ZADD GT``, a ``not_before`` only raised, ``SET NX``); what the store did not hold goes
  out on the feed, so every follower applies it at once.  Several workers repairing at
  once only merge the same entries.  Then it leaves the list and follows as usual.
* **New workers** (an empty replica, nothing to give) load only once no repairer is
  listed.  One that finds no generation at all cannot tell a new deployment from a Redis
  that lost everything while the other workers have not reconnected yet: if Redis has
  been up for less than ``repair_wait`` seconds, it waits until then (surviving workers
  reconnect within about a second), and it writes the first generation only after that.

What cannot be recovered: entries no surviving worker holds (every worker restarted while
Redis lost its data), and claims made by workers that are gone (their replayed tokens are
accepted again; they only revoke the same session again).
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError, RedisError, ResponseError

from .._following import FOLLOWER_STALE_AFTER
from ..model import Revocation, StoreStatus
from . import scripts

if TYPE_CHECKING:
    import redis

    from .store import RedisStore

__all__ = ["check_eviction_policy", "reconcile", "run_script"]

logger = logging.getLogger(__name__)

#: a repairer's lease; renewed by every batch it writes back
LEASE_SECONDS = 3.0
#: how often a new worker looks again while it waits for a repair
WAIT_STEP = 0.1
#: entries per write-back script call (claims: as many again at most)
BATCH = 500


def run_script(
    client: redis.Redis, script: scripts.Script, keys: list[str], args: list[Any]
) -> Any:
    """``EVALSHA``, loading the script first if Redis does not know it (blocking)."""
    try:
        return client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        pass
    client.script_load(script.text)
    return client.evalsha(script.sha, len(keys), *keys, *args)


def reconcile(store: RedisStore, client: redis.Redis) -> None:
    """Make sure the store holds what this worker knows, or wait until it may load.

    Returns once this worker may register and resync; blocks while a new worker waits
    for a repair (or for ``repair_wait``), and while this worker writes back.  Redis
    errors propagate (the follower reconnects).
    """
    absent_until: float | None = None
    why = "Redis holds no generation of this store"
    while not store._stop.is_set():
        verdict, generation, repairers = _contact(store, client, create=False)
        if store._generation is not None:  # this worker synced before: it may hold more
            if verdict != "current":
                _repair(store, client, verdict)
            store._generation = generation
            return
        now = time.monotonic()
        if verdict == "evicted":
            # This worker found the loss and started a new generation: the workers that
            # hold the entries list themselves as repairers at their next heartbeat.
            # Give them repair_wait to (the contact says 'current' from now on).
            why = "Redis evicted this store's entries"
            logger.warning("%s: %s (see maxmemory-policy)", store.description, why)
            absent_until = now + store.repair_wait
            verdict = "current"
        if verdict == "absent" and not repairers:
            if absent_until is None:
                absent_until = now + max(0.0, store.repair_wait - _uptime(client))
            if now >= absent_until:
                # Nobody came to repair: a new keyspace (or nothing to recover).
                verdict, generation, repairers = _contact(store, client, create=True)
        waited = absent_until is None or now >= absent_until
        if verdict == "current" and not repairers and waited:
            store._generation = generation
            return
        detail = (
            f"waiting for {repairers} worker(s) to write back what Redis lost"
            if repairers
            else f"{why}: waiting up to repair_wait={store.repair_wait:g}s for a surviving "
            "worker to write back what it may have lost"
        )
        if store._status.detail != detail:
            logger.info("%s: %s", store.description, detail)
        store._status = StoreStatus(available=False, detail=detail)
        store._stop.wait(WAIT_STEP)


def _contact(store: RedisStore, client: redis.Redis, *, create: bool) -> tuple[str, str, int]:
    keys = store.keys
    reply = run_script(
        client,
        scripts.CONTACT,
        [
            keys.generation,
            keys.repairers,
            keys.feed,
            *keys.followers,
            keys.entries,
            keys.not_before,
        ],
        [
            store._generation or "",
            store._last_id,
            secrets.token_hex(8),
            store.follower_name,
            int(LEASE_SECONDS * 1000),
            "1" if create else "0",
            int(FOLLOWER_STALE_AFTER * 1000),
        ],
    )
    verdict, generation, repairers = reply
    return str(verdict), str(generation), int(repairers)


def _uptime(client: redis.Redis) -> float:
    """Seconds the server has been up; 0 when it does not say (INFO may be disabled)."""
    try:
        return float(client.info("server").get("uptime_in_seconds", 0))
    except (RedisError, ValueError, TypeError):
        return 0.0


def check_eviction_policy(store: RedisStore, client: redis.Redis) -> None:
    """Log an error when Redis may evict the store's keys: a ``maxmemory`` with an
    ``allkeys-*`` policy.  Once per finding and store (a reconnect repeats it only when the
    setting changed, as after a failover to a node configured otherwise).

    Read from ``INFO memory``, since managed Redis often refuses ``CONFIG GET``; a refused
    ``INFO`` is logged at debug level only.  With Redis Cluster the client is connected to
    the master of the store's slot, the node that holds (and would evict) its keys.
    """
    try:
        memory = client.info("memory")
    except ResponseError as exc:
        logger.debug(
            "%s: INFO memory refused (%s); the eviction policy is not checked",
            store.description,
            exc,
        )
        return
    policy = str(memory.get("maxmemory_policy", ""))
    try:
        limit = int(memory.get("maxmemory", 0))
    except (TypeError, ValueError):
        limit = 0
    finding = (policy, limit) if limit > 0 and policy.startswith("allkeys-") else None
    if finding is not None and finding != store._eviction_reported:
        logger.error(
            "%s: Redis has maxmemory %d bytes and maxmemory-policy %s: when memory runs "
            "short it evicts any key, this store's too (they have no TTL), and revocations "
            "are forgotten: a worker started afterwards accepts sessions that were logged "
            "out.  Workers that hold them write them back when they notice, but not those "
            "no running worker holds.  Set maxmemory-policy noeviction (or a volatile-* "
            "policy, which evicts only keys with a TTL), or give the store a Redis of its "
            "own.",
            store.description,
            limit,
            policy,
        )
    store._eviction_reported = finding


_WHY = {
    "lost": "Redis lost data (no generation, its entries evicted, or the change feed no "
    "longer holds the last change this worker applied: a restart without persistence, "
    "or a failover to a replica that had not received it)",
    "changed": "another worker found that Redis lost data",
    "trimmed": "this worker was further behind than the change feed reaches",
}


def _repair(store: RedisStore, client: redis.Redis, verdict: str) -> None:
    """Write this worker's replica and claims back, then leave the repairers' list."""
    store._registered = False  # the contact script unregistered the follower
    detail = f"repairing: {_WHY.get(verdict, verdict)}; writing this worker's revocations back"
    store._status = StoreStatus(available=False, detail=detail)
    log = logger.warning if verdict != "trimmed" else logger.info
    log("%s: %s", store.description, detail)
    began = time.monotonic()
    sent, restored = _write_back(store, client)
    client.zrem(store.keys.repairers, store.follower_name)
    log(
        "%s: wrote back %d revocations and jti claims in %.2fs; %d of the revocations "
        "were missing from Redis",
        store.description,
        sent,
        time.monotonic() - began,
        restored,
    )


def _write_back(store: RedisStore, client: redis.Redis) -> tuple[int, int]:
    """(entries and claims sent, entries Redis did not hold)."""
    keys = store.keys
    base = [keys.entries, keys.not_before, keys.feed, keys.seq, keys.repairers]
    lease = int(LEASE_SECONDS * 1000)
    entries: Iterator[Revocation] = store._replica.snapshot()
    claims = iter(store.recent_claims())
    sent = restored = 0
    from .store import member  # a cycle at import time otherwise

    while True:
        batch = list(itertools.islice(entries, BATCH))
        claimed = list(itertools.islice(claims, BATCH))
        if not batch and not claimed:
            return sent, restored
        now = store._timer()
        args: list[Any] = [store.stream_maxlen, store.follower_name, lease, len(batch)]
        for entry in batch:
            args += [member(entry), repr(entry.not_before), repr(entry.expires_at)]
        args += [max(1, int((until - now) * 1000)) for _jti, until in claimed]
        jti_keys = [keys.jti(jti) for jti, _until in claimed]
        restored += int(run_script(client, scripts.WRITEBACK, [*base, *jti_keys], args))
        sent += len(batch) + len(claimed)
