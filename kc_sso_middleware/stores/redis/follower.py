"""The Redis store's follower: one connection's worth of keeping the replica current.

Each process runs one daemon thread (:meth:`RedisStore._follow`) on its own connection,
which makes a :class:`Follower` per (re)connection:

* :meth:`Follower.sync` loads the scripts, then checks that Redis still holds what this
  worker knows (:func:`~.repair.reconcile`: writing its replica back if Redis lost data,
  or, for a new worker, waiting for such a repair), then registers the follower at
  position 0, *before* anything else is read, so a writer either waits for it or wrote
  before the resync began and is part of it; then it resyncs: notes the feed position,
  replays the messages the feed still holds (their entries carry labels and notes, which
  the keyspace does not keep), then scans the keyspace with ``ZSCAN``.  Resyncs *merge*
  into the replica and never replace it.  Entries only disappear by expiry, so merging is
  exact; it cannot race with a concurrent ``record()`` of this process, and a Redis that
  restarted empty cannot make this worker forget what it already enforced.
* :meth:`Follower.tail` waits in ``BLPOP`` on its own bell (``wake:<name>``, which the
  record script of every *other* process rings) or until its next heartbeat, and then
  reads the feed with ``XREAD`` from the last message id applied, in the same pipeline.
  Messages must arrive with consecutive ``seq``.  A gap means the stream was
  trimmed past the follower's position, or Redis lost data: the follower syncs again.

The follower publishes its position (``HSET`` of ``followers:applied``, ``ZADD`` to
``followers:seen`` at Redis' ``TIME``, and the acknowledgements of the writes it now holds)
whenever it advanced, and at least every :data:`HEARTBEAT_INTERVAL` while idle.  Each
publication goes in one pipeline with the next wait and read, and an idle wait blocks
until the next heartbeat is due: an idle follower makes one round trip a second, a busy
one one per batch of messages, and a process's own writes cost its follower nothing.
Every publication also checks the generation, so a keyspace emptied under a live
connection (``FLUSHALL``, eviction) is found within a second.

Entries in a format this version cannot read (the key-based members and messages of 0.1)
are skipped with a warning: they cannot be turned into scoped entries.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from .._following import FOLLOWER_PURGE_AFTER, HEARTBEAT_INTERVAL
from ..model import Note, Revocation, RevocationKind
from . import scripts
from .repair import check_eviction_policy, reconcile

if TYPE_CHECKING:
    import redis

    from .store import RedisStore

__all__ = ["Follower", "GenerationChanged"]

logger = logging.getLogger(__name__)

_SCAN_BATCH = 1000
_READ_BATCH = 1000
#: the shortest XREAD block (ms): 0 would mean forever
_MIN_BLOCK_MS = 1
#: how long an acknowledgement list lives (it is popped at once by the waiting writer)
ACK_DONE_TTL_MS = 10_000
#: how long the follower leaves one of its process's own writes to the writer to apply
_DEFER_SECONDS = 0.1
#: the XREAD block while own writes are left to their writers (ms)
_DEFER_BLOCK_MS = 1


class GenerationChanged(Exception):
    """A heartbeat found another generation (or none) in Redis: sync again."""


class Follower:
    """Register, resync and tail the feed on one connection for ``store``."""

    def __init__(self, store: RedisStore, client: redis.Redis) -> None:
        self.store = store
        self.client = client
        self.last_seq = 0
        #: own writes read before their writer applied them: (token, data, read at)
        self._deferred: list[tuple[str, str, float]] = []
        #: read the feed without waiting for the bell first (after a resync, a full batch)
        self._read_now = True
        timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        # A block must end well before the socket read times out, or every idle block
        # would look like a lost connection.
        self._max_block = (
            HEARTBEAT_INTERVAL if not timeout else min(HEARTBEAT_INTERVAL, timeout / 2)
        )

    def sync(self) -> None:
        """Check Redis against this worker (repairing it if needed), register at position
        0, then resync from the keyspace."""
        self._resolve_deferred(force=True)
        with self.client.pipeline(transaction=False) as pipe:
            for script in scripts.SCRIPTS:  # for the writers' pipelines too
                pipe.script_load(script.text)
            pipe.execute()
        check_eviction_policy(self.store, self.client)
        while True:
            reconcile(self.store, self.client)
            if self.store._stop.is_set():
                # reconcile() returns at once when stopping, without looking: publishing
                # a generation it did not check would fail again and again.
                return
            # Registered at 0, whatever was applied before: after a loss the positions
            # start again, and a higher one would acknowledge writes not applied yet.
            self.last_seq = 0
            try:
                self.publish()
            except GenerationChanged:  # changed again since reconcile looked: look again
                continue
            break
        self.resync()
        self.store._synced()

    def _publish_args(self) -> tuple[list[str], list[str | int]]:
        store = self.store
        keys = store.keys
        return [*keys.followers, keys.waits, keys.generation, keys.entries, keys.not_before], [
            store.follower_name,
            self.last_seq,
            int(FOLLOWER_PURGE_AFTER * 1000),
            store._generation or "",
            keys.acks,
            ACK_DONE_TTL_MS,
        ]

    def publish(self) -> None:
        """Publish this follower's position and heartbeat (Redis errors propagate)."""
        self.store._heartbeat.beat()
        keys, args = self._publish_args()
        reply = self.client.evalsha(scripts.PUBLISH.sha, len(keys), *keys, *args)
        self._published(reply)

    def _published(self, reply: Any) -> None:
        if not int(reply):
            raise GenerationChanged
        self.store._registered = True

    def resync(self) -> None:
        """Merge every active entry from the keyspace; then follow from the noted position."""
        store = self.store
        keys = store.keys
        # Position first, entries second: anything written in between is both in the scan
        # and after the position, and applying it twice is harmless.
        with self.client.pipeline(transaction=True) as pipe:
            pipe.get(keys.seq)
            pipe.xrevrange(keys.feed, count=1)
            seq, newest = pipe.execute()
        last_id, resynced_to = "", int(seq or 0)
        if newest:
            last_id, fields = newest[0]
            # A newest message without a seq (a foreign XADD) says nothing of the position;
            # the seq key, read in the same transaction, is the newest written one.
            newest_seq = _seq(fields)
            if newest_seq is not None:
                resynced_to = newest_seq
        # Until the scan is done, the position published stays the one before the resync.
        # The feed first: its entries carry the labels and notes the keyspace does not
        # keep, so a worker that starts (or resyncs) after a logout can still say why a
        # session ended.  What the feed no longer holds comes from the scan, bare.
        unreadable = self._replay_feed(last_id) if last_id else 0
        if unreadable:
            logger.warning(
                "%s: %d change feed messages are not in this version's format (written by "
                "an older kc_sso_middleware?) and are ignored",
                store.description,
                unreadable,
            )
        now = store._timer()
        batch: list[tuple[str, float]] = []
        skipped = 0
        for member, expires_at in self.client.zscan_iter(keys.entries, count=_SCAN_BATCH):
            # "gen:…" is the generation's copy (see scripts), no entry.
            if expires_at > now and not member.startswith(scripts.GENERATION_COPY):
                batch.append((member, expires_at))
            if len(batch) >= _SCAN_BATCH:
                skipped += self._apply_scanned(batch)
                batch = []
                if store._heartbeat.due():  # a long scan is not death
                    self.publish()
        skipped += self._apply_scanned(batch)
        if skipped:
            logger.warning(
                "%s: %d entries in the keyspace are not in this version's format (written "
                "by an older kc_sso_middleware?) and are ignored",
                store.description,
                skipped,
            )
        store._last_id = last_id
        self.last_seq = resynced_to
        # Read the feed before the first wait: what was written since the position was
        # noted rang no bell that this follower will still hear.
        self._read_now = True
        self.publish()

    def _replay_feed(self, last_id: str) -> int:
        """Apply the messages the feed still holds, up to ``last_id``; return how many
        could not be read.  At most ``stream_maxlen`` (about) messages, read in batches."""
        store = self.store
        start, unreadable = "-", 0
        while True:
            # decode_responses: ids and fields are str (redis-py types them as either)
            reply: Any = self.client.xrange(store.keys.feed, start, last_id, count=_READ_BATCH)
            messages: list[tuple[str, dict[str, str]]] = list(reply or ())
            batch: list[Revocation] = []
            for _msg_id, fields in messages:
                entries = _entries(fields.get("data", ""))
                if entries is None:
                    unreadable += 1
                else:
                    batch.extend(entries)
            store._apply(batch)
            if len(messages) < _READ_BATCH or messages[-1][0] == last_id:
                return unreadable
            start = _next_id(messages[-1][0])  # exclusive start, on any Redis version
            if store._heartbeat.due():  # a long replay is not death
                self.publish()

    def _apply_scanned(self, batch: list[tuple[str, float]]) -> int:
        """Apply scanned members; return how many could not be read."""
        parsed: list[tuple[str, RevocationKind, int, float]] = []
        for member, expires_at in batch:
            kind_text, _, digits = member.partition(":")
            try:
                parsed.append((member, RevocationKind(kind_text), int(digits), expires_at))
            except ValueError:
                continue
        wide = [m for m, kind, _, _ in parsed if kind is not RevocationKind.SESSION]
        values = self.client.hmget(self.store.keys.not_before, wide) if wide else []
        not_before = {m: float(v) for m, v in zip(wide, values, strict=True) if v is not None}
        entries = []
        for member, kind, subject, expires_at in parsed:
            if kind is RevocationKind.SESSION:
                entries.append(Revocation(kind, subject, 0.0, expires_at))
            elif member in not_before:  # else purged between the scan and the HMGET
                entries.append(Revocation(kind, subject, not_before[member], expires_at))
        self.store._apply(entries)
        return len(batch) - len(parsed)

    def tail(self) -> None:
        """Apply feed messages until the store stops; sync again on a gap or a new
        generation."""
        store = self.store
        bell = store.keys.wake(store.follower_name)
        publish = False  # sync() has just published
        while not store._stop.is_set():
            if publish:
                store._heartbeat.beat()  # before the block: it lasts until the next beat
            block = min(self._max_block, store._heartbeat.seconds_left())
            block_ms = max(_MIN_BLOCK_MS, int(block * 1000))
            if self._deferred:
                block_ms = _DEFER_BLOCK_MS
            streams: dict[Any, Any] = {store.keys.feed: store._last_id or "0-0"}
            # One round trip: the position (when it moved), the wait for the bell that
            # other processes' writes ring (see scripts.RECORD), then the feed.  Blocking on
            # the bell rather than on the feed (XREAD BLOCK) keeps this process's own
            # writes, which it applies itself, from waking this thread.
            with self.client.pipeline(transaction=False) as pipe:
                if publish:
                    keys, args = self._publish_args()
                    pipe.evalsha(scripts.PUBLISH.sha, len(keys), *keys, *args)
                if not self._read_now:
                    pipe.blpop([bell], timeout=block_ms / 1000)
                pipe.xread(streams, count=_READ_BATCH)
                replies = pipe.execute()
            try:
                if publish:
                    self._published(replies[0])
                messages = _messages(replies[-1])
                # A full batch: the rest at once.  (A resync in there sets it again.)
                self._read_now = len(messages) >= _READ_BATCH
                publish = self._apply_messages(messages)
                self._resolve_deferred()
            except GenerationChanged:
                logger.warning(
                    "%s: the generation in Redis changed (it lost data, or another worker "
                    "found that it did); checking and syncing again",
                    store.description,
                )
                self.sync()
                publish = False
                continue
            store._replica.expire()
            # At once after applying others' writes (their writers are waiting); else when
            # the heartbeat is due.
            publish = publish or store._heartbeat.due()

    def _apply_messages(self, messages: list[tuple[str, dict[str, str]]]) -> bool:
        """Apply the messages of one XREAD; whether they held others' writes, which are
        waiting for this follower's acknowledgement.  A gap syncs again."""
        store = self.store
        foreign = False
        for msg_id, fields in messages:
            seq = _seq(fields)
            if seq is None:
                # Not one of ours (a foreign XADD to the feed): no seq was used up, so the
                # next message still follows last_seq.  Step past it, or it would stop
                # this follower (and every other one) for good.
                logger.warning(
                    "%s: change feed message %s has no integer seq (not written by "
                    "kc_sso_middleware?) and is ignored",
                    store.description,
                    msg_id,
                )
                store._last_id = msg_id
                continue
            if seq != self.last_seq + 1:
                logger.warning(
                    "%s: change feed gap (seq %d after %d); full resync",
                    store.description,
                    seq,
                    self.last_seq,
                )
                self.sync()  # publishes the position it resynced to
                return False
            # This process's own writes: nobody waits for this follower on them, and the
            # record script has moved its position on.  The writer applies them itself
            # (then they are skipped here), or hands them back by forgetting the token.
            token = fields.get("by", "")
            own = store._own_writes.get(token)
            if own is None:
                store._apply(_decode(store.description, fields.get("data", "")))
            elif own:
                store._own_writes.pop(token, None)
            else:
                self._deferred.append((token, fields.get("data", ""), time.monotonic()))
            store._last_id, self.last_seq = msg_id, seq
            foreign = foreign or own is None
        return foreign

    def _resolve_deferred(self, *, force: bool = False) -> None:
        """Drop the own writes their writers have applied; apply those handed back (or
        left for too long, or all when ``force``)."""
        if not self._deferred:
            return
        store = self.store
        own = store._own_writes
        now = time.monotonic()
        left = []
        for token, data, read_at in self._deferred:
            state = own.get(token)
            if state:
                own.pop(token, None)
            elif force or state is None or now - read_at > _DEFER_SECONDS:
                store._apply(_decode(store.description, data))
            else:
                left.append((token, data, read_at))
        self._deferred = left


def _messages(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """The messages of a RESP2 XREAD reply: ``[[stream, [(id, fields), …]], …]``."""
    return [message for _stream, messages in reply or () for message in messages]


def _seq(fields: dict[str, str]) -> int | None:
    """A feed message's ``seq``; ``None`` when it has none that is an integer."""
    try:
        return int(fields["seq"])
    except (KeyError, ValueError):
        return None


def _next_id(msg_id: str) -> str:
    """The smallest stream id after ``msg_id`` (``ms-seq``)."""
    millis, _, seq = msg_id.partition("-")
    return f"{millis}-{int(seq or 0) + 1}"


def _decode(store: str, data: str) -> list[Revocation]:
    """A feed message's entries; one in an unreadable format is skipped with a warning."""
    entries = _entries(data)
    if entries is not None:
        return entries
    logger.warning(
        "%s: a change feed message is not in this version's format (written by an older "
        "kc_sso_middleware?) and is ignored",
        store,
    )
    return []


def _entries(data: str) -> list[Revocation] | None:
    """A feed message's entries; ``None`` when this version cannot read it."""
    try:
        entries = [
            Revocation(
                RevocationKind(kind),
                subject,
                float(not_before),
                float(expires_at),
                label,
                Note.decode(note[0] if note else None),
            )
            # 0.2's first messages had no note: five fields
            for kind, subject, not_before, expires_at, label, *note in json.loads(data)
        ]
        if all(isinstance(e.subject, int) for e in entries):
            return entries
    except (ValueError, TypeError):
        pass
    return None
