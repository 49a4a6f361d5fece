"""A worker's in-memory copy of the active revocations: the only thing the request path reads.

Every store keeps one (privately).  ``memory://`` writes straight into it; the shared stores
write to SQLite or Redis first and then into it, and a background follower applies what
other workers wrote.

Layout, for a small footprint and a look-up of a few set probes:

* **Session entries** (by far the most) are bare subjects (60-bit ints, 32 bytes each) in a
  handful of sets, one per *expiry bucket*.  A bucket holds every entry expiring in one
  window of ``width`` seconds and is dropped whole once the window's end has passed.  The
  width is a power of two, at least a quarter of the entries' remaining lifetime, so the
  entries of one ``max_session_lifetime`` fill 3 to 5 buckets.  An entry is thus held up to
  one width past its ``expires_at``: harmless, since by then every session it could match
  is over its maximum lifetime anyway; and none is ever dropped before it.  About 60 to 90
  bytes per entry (the int and its slot in a set at 30 to 60 % load).
* **User and client-wide entries** (rare) are small dicts from subject to
  ``(not_before, expires_at)``, compared exactly; a heap of expiries removes them.
* **A journal** beside each bucket keeps every session entry's ``expires_at`` (two
  ``array`` columns: the subject, and milliseconds before the bucket's end, rounded so
  that the expiry read back is never later: 12 bytes an entry), read only by
  :meth:`Replica.snapshot`: when the shared store lost data, the workers write their
  entries back, and none must outlive its own expiry there.

Nothing is ever dropped to make room: the bound (``max_entries``) only makes
:meth:`Replica.check_room` refuse *unauthenticated* writes, with
:class:`~kc_sso_middleware.errors.StoreFullError`.

Threads: writes take a lock; :meth:`Replica.is_revoked` takes none.  Under the GIL each
``in`` on a set and each ``dict.get`` is one atomic step, and a write changes the structure
only by ``set.add``, dict assignment and by swapping in a new tuple of buckets, each
atomic too.  So a reader sees every entry either whole or not yet, and a write that
``record()`` has returned from is whole.  (Free-threaded builds would need a lock here.)
Dropped buckets are emptied one int at a time outside the lock, so freeing millions of
ints never holds the GIL for long.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import math
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence

from ..errors import StoreFullError
from .base import RevocationListener, RevocationStore
from .model import Revocation, RevocationKind, SessionKeys
from .options import MAX_ENTRIES, default_of

__all__ = ["Listeners", "Replica", "ReplicaStore"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_ENTRIES = default_of(MAX_ENTRIES)

#: one process-wide sequence: a new replica (after fork too) never repeats a version
_VERSIONS = itertools.count(1)
#: how often, at most, a full replica logs that it refuses unauthenticated writes
_FULL_LOG_INTERVAL = 60.0


#: the widest bucket: the journal keeps milliseconds before a bucket's end in 32 bits
#: (2**22 s is 48.5 days; longer lifetimes fill more buckets)
_MAX_WIDTH_LOG2 = 22


def _width(remaining: float) -> float:
    """The bucket width for entries with ``remaining`` seconds to live: 2**k >= remaining/4,
    at most 2**_MAX_WIDTH_LOG2."""
    exponent = math.ceil(math.log2(max(remaining / 4, 1.0)))
    return float(2 ** min(max(0, exponent), _MAX_WIDTH_LOG2))


class Replica:
    """Active revocations in process memory; writes under a lock, lock-free reads."""

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        timer: Callable[[], float] = time.time,
    ) -> None:
        self.max_entries = max_entries
        self._timer = timer
        self._lock = threading.Lock()
        #: bucket ends, ascending, and the session subjects of each bucket
        self._ends: list[float] = []
        self._by_end: dict[float, set[int]] = {}
        #: per bucket end, every session entry's subject and expiry (for snapshot)
        self._journal: dict[float, tuple[array[int], array[int]]] = {}
        #: the same sets, as one tuple: what is_revoked iterates (replaced, never mutated)
        self._buckets: tuple[set[int], ...] = ()
        self._users: dict[int, tuple[float, float]] = {}
        self._clients: dict[int, tuple[float, float]] = {}
        #: (expires_at, subject, is_user) of every wide entry written, earliest first
        self._wide_expiry: list[tuple[float, int, bool]] = []
        self._size = 0
        self._next_full_log = 0.0
        #: changed by every write: a verdict reached at one version holds until it changes
        self.version = next(_VERSIONS)
        #: when the version last changed (epoch seconds): for the health endpoint
        self.changed_at = time.time()

    def __len__(self) -> int:
        """Entries held (including any past their expiry whose bucket is not yet dropped)."""
        return self._size

    # -- request path -------------------------------------------------------------

    def is_revoked(self, keys: SessionKeys) -> bool:
        """A few set and dict probes, no lock (see the module docstring)."""
        session, instance, realm_session = keys.session, keys.instance, keys.realm_session
        # ``None in bucket`` is simply False: no subject is None.
        for bucket in self._buckets:
            if session in bucket or instance in bucket or realm_session in bucket:
                return True
        issued_at, users, clients = keys.issued_at, self._users, self._clients
        if users and keys.user is not None:
            if _wide_revokes(users.get(keys.user), issued_at, self._timer):
                return True
            client_user = keys.client_user
            if client_user is not None and _wide_revokes(
                users.get(client_user), issued_at, self._timer
            ):
                return True
        return bool(clients) and _wide_revokes(clients.get(keys.client), issued_at, self._timer)

    def revoked_by(self, keys: SessionKeys) -> str | None:
        """Which entry revokes ``keys``: ``"sid"``, ``"instance"``, ``"user"``, ``"client"``.

        For explaining a refusal, off the hot path: the probes of :meth:`is_revoked`, told
        apart.
        """
        for bucket in self._buckets:
            if keys.session in bucket or keys.realm_session in bucket:
                return "sid"
            if keys.instance in bucket:
                return "instance"
        if any(
            _wide_revokes(self._users.get(subject), keys.issued_at, self._timer)
            for subject in (keys.user, keys.client_user)
            if subject is not None
        ):
            return "user"
        if _wide_revokes(self._clients.get(keys.client), keys.issued_at, self._timer):
            return "client"
        return None

    # -- writes -----------------------------------------------------------------------

    def holds(self, entry: Revocation) -> bool:
        """Whether a session entry is held already, so that writing it again adds nothing.

        A session subject names one session (a Keycloak ``sid``, one app session's token),
        begun before its first entry was written: that entry outlives every session it can
        match, and a later copy is redundant.  (Wide entries are never redundant this
        way: a later one may raise the ``not_before``.)
        """
        if entry.kind is not RevocationKind.SESSION:
            return False
        subject = entry.subject
        return any(subject in bucket for bucket in self._buckets)

    def check_room(self, *, authenticated: bool, store: str) -> None:
        """Refuse an unauthenticated write once ``max_entries`` are held (StoreFullError)."""
        if authenticated or self._size < self.max_entries:
            return
        self.expire()  # what has expired no longer counts (no follower may have dropped it)
        if self._size < self.max_entries:
            return
        now = time.monotonic()
        if now >= self._next_full_log:
            self._next_full_log = now + _FULL_LOG_INTERVAL
            logger.error(
                "%s holds %d revocations (max_entries=%d): unauthenticated writes "
                "(front-channel logouts) are refused until entries expire; raise "
                "max_entries if this is legitimate load",
                store,
                self._size,
                self.max_entries,
            )
        raise StoreFullError(
            f"{store} holds its bound of {self.max_entries} revocations; an unauthenticated "
            "write is refused (no active revocation is ever dropped to make room)"
        )

    def apply(self, revocations: Iterable[Revocation]) -> list[Revocation]:
        """Add entries; return those this replica did not hold yet (or held weaker).

        A later ``not_before`` or ``expires_at`` for the same user or client wins; an entry
        already expired is skipped.
        """
        now = self._timer()
        live = [entry for entry in revocations if entry.expires_at > now]
        with self._lock:
            retired = self._drop_expired(now)
            changed = self._add(live, now) if live else []
            if changed or retired:
                # After the entries: a reader reads the version before it checks, so one
                # that saw only part of this write has cached the old version and checks
                # again.
                self.version = next(_VERSIONS)
                self.changed_at = time.time()
        _drain(retired)
        return changed

    def snapshot(self) -> Iterator[Revocation]:
        """Every live entry with its exact ``expires_at`` (what a repair writes back).

        Labels and notes are not kept here: the entries come back without them.
        """
        now = self._timer()
        with self._lock:
            columns = list(self._journal.items())
            users, clients = list(self._users.items()), list(self._clients.items())
        for end, (subjects, before_end) in columns:
            for subject, millis in zip(subjects, before_end, strict=True):
                expires_at = end - millis / 1000
                if expires_at > now:
                    yield Revocation(RevocationKind.SESSION, subject, 0.0, expires_at)
        for kind, table in ((RevocationKind.USER, users), (RevocationKind.ALL, clients)):
            for subject, (not_before, expires_at) in table:
                if expires_at > now:
                    yield Revocation(kind, subject, not_before, expires_at)

    def expire(self) -> None:
        """Drop what has expired (writes do it too; followers call it while idle)."""
        now = self._timer()
        if (self._ends and self._ends[0] <= now) or (
            self._wide_expiry and self._wide_expiry[0][0] <= now
        ):
            self.apply(())

    def _add(self, live: Sequence[Revocation], now: float) -> list[Revocation]:
        changed: list[Revocation] = []
        sessions = [entry for entry in live if entry.kind is RevocationKind.SESSION]
        if sessions:
            # One width per batch, from its longest-lived entry, so that a start-up load
            # of mixed lifetimes lands in a few wide buckets rather than many narrow ones.
            width = _width(max(entry.expires_at for entry in sessions) - now)
            for entry in sessions:
                if self._add_session(entry.subject, entry.expires_at, width):
                    changed.append(entry)
        for entry in live:
            if entry.kind is RevocationKind.SESSION:
                continue
            table = self._users if entry.kind is RevocationKind.USER else self._clients
            previous = table.get(entry.subject)
            if previous is None:
                merged = (entry.not_before, entry.expires_at)
                self._size += 1
            else:
                merged = (max(previous[0], entry.not_before), max(previous[1], entry.expires_at))
                if merged == previous:
                    continue
            table[entry.subject] = merged
            heapq.heappush(
                self._wide_expiry,
                (merged[1], entry.subject, entry.kind is RevocationKind.USER),
            )
            changed.append(entry)
        return changed

    def _add_session(self, subject: int, expires_at: float, width: float) -> bool:
        """Hold ``subject`` until at least ``expires_at``; False if it already was."""
        first = bisect.bisect_left(self._ends, expires_at)
        for end in self._ends[first:]:
            if subject in self._by_end[end]:
                return False
        end = math.ceil(expires_at / width) * width
        bucket = self._by_end.get(end)
        if bucket is None:
            bucket = self._by_end[end] = set()
            bisect.insort(self._ends, end)
            self._buckets = tuple(self._by_end[e] for e in self._ends)
        bucket.add(subject)
        subjects, before_end = self._journal.setdefault(end, (array("q"), array("I")))
        subjects.append(subject)
        before_end.append(math.ceil((end - expires_at) * 1000))
        self._size += 1
        return True

    def _drop_expired(self, now: float) -> list[set[int]]:
        """Unlink every bucket whose end has passed; the caller empties them unlocked."""
        retired = []
        while self._ends and self._ends[0] <= now:
            end = self._ends.pop(0)
            self._journal.pop(end, None)
            bucket = self._by_end.pop(end)
            self._size -= len(bucket)
            retired.append(bucket)
        if retired:
            self._buckets = tuple(self._by_end[e] for e in self._ends)
        heap = self._wide_expiry
        while heap and heap[0][0] <= now:
            _expires_at, subject, is_user = heapq.heappop(heap)
            table = self._users if is_user else self._clients
            current = table.get(subject)
            if current is not None and current[1] <= now:
                del table[subject]
                self._size -= 1
        return retired


def _wide_revokes(
    entry: tuple[float, float] | None, issued_at: float | None, timer: Callable[[], float]
) -> bool:
    """Whether a user or client entry ``(not_before, expires_at)`` revokes a session issued
    at ``issued_at`` (unknown counts as before): strictly earlier, as Keycloak compares."""
    return entry is not None and (issued_at is None or issued_at < entry[0]) and timer() < entry[1]


def _drain(buckets: list[set[int]]) -> None:
    """Empty dropped buckets one int at a time: freeing a million at once (``clear()``, or
    the last reference going) holds the GIL for tens of milliseconds, while this Python
    loop lets other threads run between its steps."""
    for bucket in buckets:
        while bucket:
            bucket.pop()


class Listeners:
    """The callbacks a store calls with the entries its replica has just applied."""

    def __init__(self) -> None:
        self._callbacks: tuple[RevocationListener, ...] = ()

    def add(self, listener: RevocationListener) -> None:
        self._callbacks = (*self._callbacks, listener)

    def notify(self, entries: Sequence[Revocation]) -> None:
        """Call each listener with ``entries`` (if any); log and swallow what they raise."""
        if not entries:
            return
        for callback in self._callbacks:
            try:
                callback(entries)
            except Exception:
                logger.exception("revocation listener %r failed", callback)


class ReplicaStore(RevocationStore):
    """The request path and the listeners of a store whose reads come from ``_replica``.

    Subclasses set ``_replica`` (and may replace it, after fork) and ``_listeners``.
    """

    _replica: Replica
    _listeners: Listeners

    def is_revoked(self, keys: SessionKeys) -> bool:
        return self._replica.is_revoked(keys)

    def revoked_by(self, keys: SessionKeys) -> str | None:
        return self._replica.revoked_by(keys)

    def holds(self, revocation: Revocation) -> bool:
        return self._replica.holds(revocation)

    @property
    def version(self) -> int:
        return self._replica.version

    def replica_state(self) -> tuple[int, float]:
        return len(self._replica), self._replica.changed_at

    def add_listener(self, listener: RevocationListener) -> None:
        self._listeners.add(listener)
