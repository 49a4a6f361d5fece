"""The Redis store's follower: one connection's worth of keeping the replica current.

Each process runs one daemon thread (:meth:`RedisStore._follow`) on its own connection,
which makes a :class:`Follower` per (re)connection:

* :meth:`Follower.sync` registers the follower at position 0, *before* anything else, so a
  writer either waits for it or wrote before the resync began and is part of it; then it
  resyncs: notes the feed position, then scans the keyspace with ``ZSCAN``.  Resyncs
  *merge* into the replica and never replace it.  Entries only disappear by expiry, so
  merging is exact; it cannot race with a concurrent ``record()`` of this process, and a
  Redis that restarted empty cannot make this worker forget what it already enforced.
* :meth:`Follower.tail` reads the feed with ``XREAD BLOCK`` from the last message id
  applied.  Messages must arrive with consecutive ``seq``.  A gap means the stream was
  trimmed past the follower's position, or Redis lost data: the follower resyncs.

A follower publishes its position (``HSET`` of ``followers:applied``, ``ZADD`` to
``followers:seen`` at Redis' ``TIME``) after every batch it applies and after each resync,
and at least once a second while idle (its ``XREAD BLOCK`` lasts half a second).

Entries in a format this version cannot read (the key-based members and messages of 0.1)
are skipped with a warning: they cannot be turned into scoped entries.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .._following import FOLLOWER_PURGE_AFTER, HEARTBEAT_INTERVAL
from ..model import Revocation, RevocationKind

if TYPE_CHECKING:
    import redis

    from .store import RedisStore

__all__ = ["Follower"]

logger = logging.getLogger(__name__)

# XREAD BLOCK; close() interrupts it with CLIENT UNBLOCK.  Half the heartbeat interval,
# so an idle follower's heartbeats are at most 1.5 s apart.
_BLOCK_SECONDS = HEARTBEAT_INTERVAL / 2
_SCAN_BATCH = 1000
_READ_BATCH = 1000


class Follower:
    """Register, resync and tail the feed on one connection for ``store``."""

    def __init__(self, store: RedisStore, client: redis.Redis) -> None:
        self.store = store
        self.client = client
        self.last_id = "0-0"
        self.last_seq = 0

    def sync(self) -> None:
        """Register at position 0, then resync from the keyspace."""
        self.publish()
        self.resync()

    def publish(self) -> None:
        """Publish this follower's position and heartbeat (Redis errors propagate)."""
        store = self.store
        store._heartbeat.beat()
        store._publish_script(
            store.keys.followers,
            [store.follower_name, self.last_seq, int(FOLLOWER_PURGE_AFTER * 1000)],
            client=self.client,
        )
        store._registered = True

    def resync(self) -> None:
        """Merge every active entry from the keyspace; then follow from the noted position."""
        keys = self.store.keys
        # Position first, entries second: anything written in between is both in the scan
        # and after the position, and applying it twice is harmless.
        with self.client.pipeline(transaction=True) as pipe:
            pipe.get(keys.seq)
            pipe.xrevrange(keys.feed, count=1)
            seq, newest = pipe.execute()
        if newest:
            self.last_id, fields = newest[0]
            resynced_to = int(fields["seq"])
        else:
            self.last_id, resynced_to = "0-0", int(seq or 0)
        # Until the scan is done, the position published stays the one before the resync.
        now = self.store._timer()
        batch: list[tuple[str, float]] = []
        skipped = 0
        for member, expires_at in self.client.zscan_iter(keys.entries, count=_SCAN_BATCH):
            if expires_at > now:
                batch.append((member, expires_at))
            if len(batch) >= _SCAN_BATCH:
                skipped += self._apply_scanned(batch)
                batch = []
                if self.store._heartbeat.due():  # a long scan is not death
                    self.publish()
        skipped += self._apply_scanned(batch)
        if skipped:
            logger.warning(
                "%s: %d entries in the keyspace are not in this version's format (written "
                "by an older kc_sso_middleware?) and are ignored",
                self.store.description,
                skipped,
            )
        self.last_seq = resynced_to
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
        """Apply feed messages until the store stops; resync on a gap."""
        store = self.store
        timeout = self.client.connection_pool.connection_kwargs.get("socket_timeout")
        # The block must end well before the socket read times out, or every idle block
        # would look like a lost connection.
        block = _BLOCK_SECONDS if not timeout else min(_BLOCK_SECONDS, timeout / 2)
        while not store._stop.is_set():
            reply = self.client.xread(
                {store.keys.feed: self.last_id}, count=_READ_BATCH, block=int(block * 1000)
            )
            applied = False
            for msg_id, fields in _messages(reply):
                seq = int(fields["seq"])
                if seq != self.last_seq + 1:
                    logger.warning(
                        "%s: change feed gap (seq %d after %d); full resync",
                        store.description,
                        seq,
                        self.last_seq,
                    )
                    self.resync()  # publishes the position it resynced to
                    applied = False
                    break
                store._apply(_decode(store.description, fields.get("data", "")))
                self.last_id, self.last_seq = msg_id, seq
                applied = True
            store._replica.expire()
            # At once after applying (a writer is waiting); else when the heartbeat is due.
            if applied or store._heartbeat.due():
                self.publish()


def _messages(reply: Any) -> Iterable[tuple[str, dict[str, str]]]:
    """The messages of a RESP2 XREAD reply: ``[[stream, [(id, fields), …]], …]``."""
    return [message for _stream, messages in reply or () for message in messages]


def _decode(store: str, data: str) -> list[Revocation]:
    """A feed message's entries; one in an unreadable format is skipped with a warning."""
    try:
        entries = [
            Revocation(RevocationKind(kind), subject, float(not_before), float(expires_at), label)
            for kind, subject, not_before, expires_at, label in json.loads(data)
        ]
        if all(isinstance(e.subject, int) for e in entries):
            return entries
    except (ValueError, TypeError):
        pass
    logger.warning(
        "%s: a change feed message is not in this version's format (written by an older "
        "kc_sso_middleware?) and is ignored",
        store,
    )
    return []
