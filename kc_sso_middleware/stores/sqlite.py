"""``sqlite:///…``: revocations shared by every process of one host (the default store).

One database file, opened by every worker of the host.  No server, and the file survives
restarts when it lives on a persistent local disk (see
:func:`~kc_sso_middleware._variables.default_store_url` for the default location; a file
in a tmpfs or a private temp directory is warned about at start-up).  It must be on a
local filesystem: WAL mode needs shared memory, which network filesystems do not
provide; for several hosts use Redis.

The tables and the schema version check are in
:mod:`~kc_sso_middleware.stores._sqlite_schema`.  A file of another schema version (the
key-based rows of 0.1) is refused with a
:class:`~kc_sso_middleware.errors.ConfigurationError` at start(): its rows cannot be
turned into scoped entries, and silently starting afresh would forget revocations.

Writes
------

:meth:`SQLiteStore.record` claims the ``jti`` and inserts the entries in one
``BEGIN IMMEDIATE`` transaction, committed with ``synchronous=NORMAL`` (no fsync yet),
sends the datagrams, then waits until the WAL is on disk
(:mod:`~kc_sso_middleware.stores._sqlite_sync`: one fsync covers every commit of every
process written before it began), then applies the entries to its own replica.
Concurrent ``record()`` calls of one process (threads, or ``arecord`` tasks in their
threads) share one transaction (:mod:`~kc_sso_middleware.stores._sqlite_group`), each
call's claim still atomic with its own entries and a replay refused for that call alone.
Across processes the batches take turns on ``flock`` (see
:mod:`~kc_sso_middleware.stores._sqlite_notify`) before SQLite's own lock.

Propagation and acknowledgements
--------------------------------

Every process runs a follower thread.  With notifications (Unix datagram sockets in
``<file>.kc-sso/``, :mod:`~kc_sso_middleware.stores._sqlite_notify`), after its commit a
write sends one datagram to each live follower listed in the ``followers`` table; the
follower, blocked in ``poll()`` until then, reads the rows above its last change id (and
the table's ``AUTOINCREMENT`` counter first, so rows purged before it saw them cannot hold
its position back), applies them, writes its position into its row, and sends it back
to the writer's socket.  The writer returns once every live follower other than its own
has answered with a position at or above its last row, for at most ``ack_timeout``.  An
idle follower wakes only for its heartbeat (once a second: its row's ``seen``, written
with ``synchronous=NORMAL``, no fsync).  A follower that cannot be reached by datagram is
waited for through the table as before.

Without notifications (no ``AF_UNIX`` datagrams, a directory that cannot be written; said
once in the log), followers poll ``PRAGMA data_version`` every ``poll_interval`` seconds
(default 10 ms; every millisecond for 50 ms after new rows) and writers poll the table
every millisecond for the acknowledgements.

A follower registers with ``applied = 0`` *before* its start-up load, so a writer either
sees the new worker and waits for it, or committed before that load began and is part of
it.  Rows silent for 30 seconds are deleted by the purge.

When the store loses data
-------------------------

The file can be deleted underneath running workers (a temp-directory cleaner, a person),
replaced by another file, or put back to an older copy.  Each follower checks on every
wake and heartbeat: the file at the path is still the one it opened (device and inode),
of the same *generation* (a random number written when the file was created), and its
change counter has not gone back.  If not, it first reads what is left in the file it
had open (rows committed there before it noticed), opens the file at the path (creating
it), lists itself in ``repairs`` and writes back every unexpired entry of its replica,
with the ``jti`` claims this process made, that the file does not hold yet (one repair at
a time per file, so later ones add only what earlier ones lacked), and only then reports
the store as current again.  Entries come back with expiries never later than their own.
A write whose file was replaced under its commit is written again into the new file.

A worker that starts asks every follower socket in the directory first and waits (up to
:data:`PEER_WAIT`) until each has answered: an answer comes only after that worker has
checked the file (and repaired it).  While any other worker is listed in ``repairs``, a
new worker reports its replica as not current (``KC_SSO_STORE_FAILURE`` decides what
requests get).

Forking: SQLite connections must not cross a ``fork()``.  In the child, every connection
inherited from the parent is set aside, never used and never closed; inherited sockets are
closed (their files belong to the parent).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote

from .._flows import Effect, Flow
from ..errors import ConfigurationError, StoreUnavailableError
from . import _sqlite_schema as sql
from ._following import (
    FOLLOWER_PURGE_AFTER,
    FOLLOWER_STALE_AFTER,
    HEARTBEAT_INTERVAL,
    FollowerState,
    FollowingStore,
)
from ._mounts import location_warnings
from ._sqlite_group import GroupCommit
from ._sqlite_notify import (
    Channel,
    FileLock,
    Sender,
    Unavailable,
    file_identity,
    socket_directory,
    socket_id,
)
from ._sqlite_sync import WalSync
from .model import Note, Revocation, RevocationKind, StoreStatus
from .options import (
    ACK_TIMEOUT,
    BUSY_TIMEOUT,
    MAX_ENTRIES,
    POLL_INTERVAL,
    PURGE_INTERVAL,
    StoreURL,
    default_of,
    parse_store_url,
)

__all__ = ["PEER_WAIT", "SQLiteStore"]

logger = logging.getLogger(__name__)

# Without notifications: after applying new rows the follower polls every _HOT_POLL for
# _HOT_PERIOD, since logouts come in bursts (one back-channel request per session and
# client), and each write of a burst then waits about a millisecond instead of a
# poll_interval.
_HOT_POLL = 0.001
_HOT_PERIOD = 0.05
# The follower reads new rows in pages so that a huge backlog (the start-up load) never
# holds one read transaction open for long; a long reader blocks WAL checkpoints.
_PAGE = 5000
#: how often a writer reads the table while it waits for followers it cannot notify
#: (or whose queue was full), and how often otherwise (to drop a follower that died)
_ACK_POLL = 0.001
_ACK_RECHECK = 0.05
#: how long a starting worker waits for the other workers to answer (each checks, and
#: if need be repairs, the file first)
PEER_WAIT = 2.0
#: how long a repair's listing in ``repairs`` holds unless renewed (wall clock seconds)
_REPAIR_LEASE = 10.0
#: entries per transaction of a repair
_REPAIR_CHUNK = 5000
#: after a failed follower step, the next try comes this much later (with notifications)
_RETRY = 0.1
#: a position not written into the follower's row during a burst is written this soon
_DEFERRED_PUBLISH = 0.005
#: with notifications, a follower writes its row with news at most this often: the
#: writers it answers by datagram do not read it, and a write of the row on every
#: logout takes the write lock (and a WAL frame) as often as the logouts themselves
_PUBLISH_EVERY = 0.05
#: how many times a write is written again because its file was replaced meanwhile
_MOVES = 3

# Connections opened before a fork(), set aside in the child: SQLite forbids using them
# there, and closing them could release or checkpoint state the parent still relies on.
_INHERITED: list[sqlite3.Connection] = []
# What this process has already said once (the file's location, polling instead of
# notifications).
_SAID: set[tuple[str, str]] = set()


def _say_once(level: int, key: tuple[str, str], message: str, *args: object) -> None:
    if key not in _SAID:
        _SAID.add(key)
        logger.log(level, message, *args)


class _Wait:
    """The acknowledgement wait of one batch: the first of its writes to ask waits, the
    others wait for that one's outcome (so that each answer wakes one thread, not all)."""

    __slots__ = ("done", "lock", "outcome", "taken")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.taken = False
        self.outcome = "timeout"


@dataclass(frozen=True, slots=True)
class Written:
    """Where one write landed, and whom it waits for."""

    #: the file's identity and generation
    file: tuple[int, int] | None
    generation: int
    #: the change id of the write's last row (0: no rows), and of its batch's last row
    position: int
    last: int
    #: the file's change counter before the batch (sent with every notification)
    before: int
    #: the serial number of the last acknowledgement this process had received at the
    #: commit: only later ones count for it
    acks_from: int
    #: the other live followers reached by datagram: socket id and how the notification
    #: went ("sent"; "busy": its queue was full, send again; "gone": no longer there)
    peers: tuple[tuple[str, str], ...]
    #: the live followers of the table without a socket here: their rows are read
    polled: tuple[str, ...]
    wait: _Wait = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Commit(Effect[Written | None]):
    """Commit one write (with the process's concurrent ones); None for a replay."""

    write: sql.BatchWrite


@dataclass(frozen=True, slots=True)
class AwaitAcks(Effect[str]):
    """Wait until every follower of ``written`` has applied it: ``"done"``,
    ``"timeout"`` (logged) or ``"moved"`` (the file was replaced: write it again)."""

    written: Written


class SQLiteStore(FollowingStore):
    """Revocations in a local SQLite file, followed by every process of the host.

    Longer than 200 lines because the follower shares this class's per-thread connections,
    position and file identity with record() and start(); the sockets, the group commit
    and the statements are in their own modules.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        poll_interval: float = default_of(POLL_INTERVAL),
        max_entries: int = default_of(MAX_ENTRIES),
        busy_timeout_ms: int = default_of(BUSY_TIMEOUT),
        purge_interval: float = default_of(PURGE_INTERVAL),
        ack_timeout: float = default_of(ACK_TIMEOUT),
        timer: Callable[[], float] = time.time,
        notifications: bool = True,
    ) -> None:
        """``notifications=False``: bind no sockets, poll as if they could not be bound
        (the others are still sent datagrams if their directory is there)."""
        self.path = os.fspath(path)
        self.description = f"SQLite store {self.path}"
        self.poll_interval = poll_interval
        self.busy_timeout_ms = busy_timeout_ms
        self.purge_interval = purge_interval
        self.notifications = notifications
        super().__init__(max_entries=max_entries, ack_timeout=ack_timeout, timer=timer)

    def _init_process_state(self) -> None:
        super()._init_process_state()
        self._local = threading.local()
        # (owning thread, connection): strong references, so that a connection is closed
        # by us (when its thread has ended, or at close()) and not by the garbage collector
        # at an arbitrary moment, e.g. while the interpreter tears down threads after fork.
        self._connections: list[tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = []
        self._connections_lock = threading.Lock()
        #: the follower's position in the file it follows, and that file (identity and
        #: generation); changed together, under the lock (writers fast-forward it)
        self._position_lock = threading.Lock()
        self._last_change_id = 0
        self._file: tuple[int, int] | None = None
        self._generation = 0
        self._published = -1
        self._publish_failed = False
        #: the last try to write this follower's row found the lock taken
        self._row_stale = False
        self._published_at = 0.0
        #: why the file must still be repaired (a repair that failed is tried again)
        self._pending_repair: str | None = None
        #: a new worker waits while others repair; others' live repairs seen last
        self._awaiting_repairs = False
        #: a write of this process found the change counter below this follower's position
        self._counter_went_back = False
        self._repairs_elsewhere = 0
        self._channel: Channel | None = None
        self._channel_lock = threading.Lock()
        self._unbound: Sender | None = None
        self._sender_tried = False
        directory = socket_directory(self.path)
        self._write_lock = FileLock(os.path.join(directory, "write.lock"))
        self._follower_lock = FileLock(os.path.join(directory, "write.lock"))
        self._repair_lock = FileLock(os.path.join(directory, "repair.lock"))
        self._group: GroupCommit[sql.BatchWrite, Written | None] = GroupCommit(self._commit)
        self._wal_sync = WalSync(self.path, os.path.join(directory, "synced"))

    @classmethod
    def from_url(cls, url: str, *, timer: Callable[[], float] = time.time) -> SQLiteStore:
        """``sqlite:////absolute/path.db`` or ``sqlite:///relative.db``, with options."""
        return cls.from_parsed(parse_store_url(url, schemes=frozenset({"sqlite"})), timer=timer)

    @classmethod
    def from_parsed(
        cls, parsed: StoreURL, *, timer: Callable[[], float] = time.time
    ) -> SQLiteStore:
        # Three slashes and a relative path, four for an absolute one (SQLAlchemy's
        # convention): the path after the empty host starts with the separating "/".
        path = unquote(parsed.parts.path[1:])
        if parsed.parts.netloc or not path:
            raise ConfigurationError(
                f"KC_SSO_STORE={parsed.redacted!r}: accepted forms are "
                "sqlite:////absolute/path.db and sqlite:///relative/path.db (no host)"
            )
        return cls(
            path,
            poll_interval=parsed[POLL_INTERVAL],
            max_entries=parsed[MAX_ENTRIES],
            busy_timeout_ms=parsed[BUSY_TIMEOUT],
            purge_interval=parsed[PURGE_INTERVAL],
            ack_timeout=parsed[ACK_TIMEOUT],
            timer=timer,
        )

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    @property
    def notified(self) -> bool:
        """Whether this store's follower is woken by notifications (else it polls)."""
        return self._channel is not None

    # -- logout paths ---------------------------------------------------------------

    def _record_flow(
        self,
        revocations: Sequence[Revocation],
        jti: str | None,
        jti_expires_at: float,
        authenticated: bool,
    ) -> Flow[bool]:
        """The shared record flow, with SQLite's own commit and acknowledgement wait."""
        now, live = self._admitted(revocations, authenticated)
        write = sql.BatchWrite(live, jti, jti_expires_at, now)
        try:
            written = yield from Commit(write)
        except StoreUnavailableError as exc:
            raise self._not_recorded(exc) from exc
        if written is None:
            return False
        if jti is not None:
            self._remember_claim(jti, jti_expires_at)
        self._apply(live)
        for _ in range(_MOVES):
            if written is None or written.position <= 0 or self.ack_timeout <= 0:
                break
            outcome = yield from AwaitAcks(written)
            if outcome != "moved":
                break
            # The file was replaced after the commit: write it again, into the new one.
            position = written.position
            try:
                written = yield from Commit(replace(write, reclaim=True))
            except StoreUnavailableError as exc:
                logger.warning(
                    "%s: change %d is recorded in a file that was replaced since; writing "
                    "it into the new one failed (this worker's repair writes it back): %s",
                    self.description,
                    position,
                    exc,
                )
                break
        return True

    def _perform(self, effect: Effect[Any]) -> object:
        """Perform one effect of the record flow (blocking)."""
        if isinstance(effect, Commit):
            try:
                return self._group.submit(effect.write)
            except sqlite3.Error as exc:
                raise StoreUnavailableError(str(exc)) from exc
            except OSError as exc:  # the WAL could not be synced: not known to be durable
                raise StoreUnavailableError(f"could not sync the write to disk: {exc}") from exc
        if isinstance(effect, AwaitAcks):
            return self._await_acks(effect.written)
        raise TypeError(f"{self!r} cannot perform {effect!r}")

    def _commit(self, writes: Sequence[sql.BatchWrite]) -> list[Written | None]:
        """One transaction for a batch of writes (in the leading writer's thread), then a
        datagram to every other live follower, then the WAL synced to disk.

        The transaction commits without an fsync (``synchronous=NORMAL``), so that the
        write lock is held for microseconds; the fsync comes after the datagrams (the
        followers apply the rows meanwhile) and is shared with the commits of the other
        processes (:mod:`~kc_sso_middleware.stores._sqlite_sync`).  A follower may so
        apply a row before it is on disk, which only ever revokes early.
        """
        results: list[Written | None] = [None] * len(writes)
        todo = list(range(len(writes)))
        for attempt in range(_MOVES):
            # Whether the path still names this connection's file is checked after the
            # commit (once, not twice: a write that went to a replaced file is redone).
            if attempt == 0:
                conn, file = self._connection(), self._local.file
            else:
                conn, file = self._writer_connection()
            self._without_commit_fsync(conn)
            # Read before the commit: this worker's follower applies only committed rows,
            # so the counter before the batch is at least this, unless it went back.
            applied_before = self._last_change_id
            with self._write_lock.held():
                batch = sql.insert_batch(
                    conn,
                    [writes[i] for i in todo],
                    worker=self.follower_name,
                    seen_since=time.time() - FOLLOWER_STALE_AFTER,
                )
            acks_from = self._channel.acks.mark() if self._channel is not None else 0
            if batch.sequence_before < applied_before and file == self._file:
                # The counter went back (the file was restored in place, keeping its
                # inode and generation): this worker's follower must look, and recover.
                self._counter_went_back = True
                self._wake()
            peers, polled = self._notify_followers(
                (name for name, _ in batch.followers), batch.sequence_before
            )
            wait = _Wait()
            for i, position in zip(todo, batch.positions, strict=True):
                results[i] = (
                    None
                    if position is None
                    else Written(
                        file,
                        batch.generation,
                        position,
                        batch.last,
                        batch.sequence_before,
                        acks_from,
                        peers,
                        polled,
                        wait,
                    )
                )
            if file_identity(self.path) == file and self._synced(conn, file, batch):
                if batch.last:
                    # If this store's own follower was at the counter before the batch,
                    # it needs to read none of it (the flow applies the entries).
                    with self._position_lock:
                        if file == self._file and self._last_change_id == batch.sequence_before:
                            self._last_change_id = self._published = batch.last
                break
            # Replaced under the commit, which may have gone to the old file: write the
            # batch's non-replays again into the new one (claims won are kept).
            todo = [i for i in todo if results[i] is not None]
            writes = [
                replace(w, reclaim=True) if results[i] is not None else w
                for i, w in enumerate(writes)
            ]
            self._wake()
        return results

    def _synced(
        self, conn: sqlite3.Connection, file: tuple[int, int] | None, batch: sql.BatchResult
    ) -> bool:
        """The batch's commit is on disk (True), or its file left the path meanwhile
        (False: the batch is written again into the new one)."""
        counter = functools.partial(sql.commits, conn)
        try:
            self._wal_sync.through(batch.generation, batch.commit, counter)
        except FileNotFoundError:  # the WAL went with its file
            if file_identity(self.path) != file:
                return False
            self._wake()
            raise
        except OSError:
            # Not acknowledged, but committed: the other workers apply the rows, and so
            # must this one's follower (the flow will not).
            self._wake()
            raise
        return True

    def _without_commit_fsync(self, conn: sqlite3.Connection) -> None:
        """``synchronous=NORMAL`` on this thread's connection: its writes are synced by
        :class:`WalSync` (repairs set ``FULL`` for themselves)."""
        if getattr(self._local, "tuned", None) is not conn:
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.tuned = conn

    def _notify_followers(
        self, listed: Iterable[str], before: int
    ) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
        """Send every other live follower socket a datagram; (socket id and how it went,
        followers of the table to read instead).

        The sockets are listed after the commit: a worker whose socket is not there yet
        binds it, registers and loads after this commit, so its load has these rows.  A
        worker of a file replaced a moment ago, not registered in the new one yet, is
        waited for too (it answers once it has written its replica back).
        """
        channel = self._channel
        listed = list(listed)
        if channel is None:
            sender = self._sender()
            if sender is not None and listed:
                sender.notify(FOLLOWER_STALE_AFTER)  # they publish; the table is read
            return (), tuple(listed)
        peers = channel.notify_ids(channel.peers(FOLLOWER_STALE_AFTER), before=before)
        reached = {peer for peer, how in peers.items() if how != "gone"}
        polled = tuple(name for name in listed if socket_id(name) not in reached)
        return tuple((peer, how) for peer, how in peers.items() if how != "gone"), polled

    def _sender(self) -> Sender | None:
        """Datagrams for a store that was not started (it has no sockets of its own)."""
        sender = self._unbound
        if sender is None and not self._sender_tried:
            self._sender_tried = True
            with contextlib.suppress(Unavailable):
                sender = self._unbound = Sender(self.path)
        return sender

    def _await_acks(self, written: Written) -> str:
        """Wait until every follower ``written`` names has applied it (see AwaitAcks):
        once per batch, for its last row."""
        shared = written.wait
        with shared.lock:
            leading, shared.taken = not shared.taken, True
        if not leading:
            shared.done.wait()
            return shared.outcome
        try:
            shared.outcome = self._await_batch(written)
        finally:
            shared.done.set()
        return shared.outcome

    def _await_batch(self, written: Written) -> str:
        position = written.last
        deadline = time.monotonic() + self.ack_timeout
        peers = dict(written.peers)
        polled = set(written.polled)
        channel = self._channel
        # Followers without a socket are read from the table at once and every
        # millisecond; the others answer by datagram, and are looked at again (and sent
        # another datagram) every _ACK_RECHECK in case one was lost.
        next_check = time.monotonic() if polled else time.monotonic() + _ACK_RECHECK
        resend_at = time.monotonic() + _ACK_RECHECK
        while True:
            foreign = False
            if channel is not None:
                for peer in list(peers):
                    latest = channel.acks.latest(peer)
                    if latest is None:
                        continue
                    if latest[2] <= written.acks_from:
                        continue  # sent before the commit: it cannot vouch for it
                    if latest[0] != written.generation:
                        foreign = True
                    elif latest[1] >= position:
                        del peers[peer]
            if not peers and not polled:
                return "done"
            if foreign and file_identity(self.path) != written.file:
                return "moved"
            now = time.monotonic()
            if now >= deadline:
                self._log_lagging(written, peers, polled)
                return "timeout"
            if now >= next_check:
                if polled:
                    try:
                        lagging = sql.lagging(
                            self._writer_connection()[0],
                            self.follower_name,
                            time.time() - FOLLOWER_STALE_AFTER,
                            position,
                        )
                    except sqlite3.Error as exc:
                        logger.warning(
                            "%s: change %d is recorded, but whether every worker applied it "
                            "could not be checked: %s",
                            self.description,
                            position,
                            exc,
                        )
                        return "timeout"
                    polled &= {name for name, _ in lagging}
                if channel is not None and peers:
                    everyone = now >= resend_at
                    if everyone:
                        resend_at = now + _ACK_RECHECK
                    again = [peer for peer, how in peers.items() if everyone or how == "busy"]
                    for peer, how in channel.notify_ids(again, before=written.before).items():
                        if how == "gone" or not channel.alive(peer, FOLLOWER_STALE_AFTER):
                            del peers[peer]
                        else:
                            peers[peer] = how
                busy = "busy" in peers.values()
                next_check = now + (_ACK_POLL if polled or busy else _ACK_RECHECK)
                continue
            pause = max(0.0, min(next_check, deadline) - now)
            if channel is None:
                time.sleep(pause)
            else:
                channel.acks.wait(pause)

    def _log_lagging(self, written: Written, peers: dict[str, str], polled: set[str]) -> None:
        positions: dict[str, int] = {}
        with contextlib.suppress(sqlite3.Error):
            positions = dict(sql.lagging(self._connection(), self.follower_name, 0.0, written.last))
        channel = self._channel
        lagging = {name: positions.get(name, 0) for name in polled}
        names = {socket_id(name): name for name in positions}
        for peer in peers:
            latest = channel.acks.latest(peer) if channel is not None else None
            name = names.get(peer, f"socket {peer}")
            at = positions.get(name, 0)
            if latest is not None and latest[0] == written.generation:
                at = max(at, latest[1])
            lagging[name] = at
        logger.warning(
            "%s: change %d is recorded, but after ack_timeout=%gs %d worker(s) had not "
            "applied it and may accept the revoked session(s) until they do: %s",
            self.description,
            written.last,
            self.ack_timeout,
            len(lagging),
            ", ".join(f"{name} (at {at})" for name, at in sorted(lagging.items())),
        )

    def followers(self) -> list[FollowerState]:
        try:
            rows = sql.followers(self._connection())
        except sqlite3.Error as exc:
            raise StoreUnavailableError(
                f"{self.description}: could not read the followers: {exc}"
            ) from exc
        now = time.time()  # heartbeats are this host's wall clock
        own = self._last_change_id if file_identity(self.path) == self._file else 0
        return [
            FollowerState(name, applied, max(0.0, now - seen), max(0, head - applied))
            for name, applied, seen, head in (
                # This store's own row says where it was at its last heartbeat or answer;
                # its position now is known here (its own writes move it without a read).
                (n, max(a, own) if n == self.follower_name else a, s, h)
                for n, a, s, h in rows
            )
        ]

    # -- lifecycle ------------------------------------------------------------------

    def _load(self) -> None:
        """Create the file if needed, register, hear from the other workers, load every
        active entry.

        Raises :class:`~kc_sso_middleware.errors.ConfigurationError` when the directory
        cannot be created or written to, or the file has another schema, and
        :class:`~kc_sso_middleware.errors.StoreUnavailableError` when the database
        cannot be opened or read.
        """
        self._prepare_directory()
        self._say_where()
        self._open_channel()
        try:
            conn = self._connection()
            with self._position_lock:
                self._file = self._local.file
                self._generation = sql.file_state(conn, self.follower_name, 0.0).generation
            # Register before loading: a writer that does not see this row yet
            # committed before the load below began, so the load includes its rows.
            with self._follower_lock.held():
                sql.publish(conn, self.follower_name, 0)
            self._registered = True
            askers = self._hear_from_peers()
            state = sql.file_state(conn, self.follower_name, time.time())
            self._catch_up(conn, state.sequence)
            self._publish(conn)
            if askers and self._channel is not None:
                self._channel.answer(askers, self._generation, self._last_change_id)
        except sqlite3.Error as exc:
            self._unregister()
            self._close_channel()
            raise StoreUnavailableError(
                f"{self.description}: could not open or read the database: {exc}"
            ) from exc
        self._repairs_elsewhere = state.repairs
        self._awaiting_repairs = state.repairs > 0
        self._status = self._current()

    def _say_where(self) -> None:
        path = os.path.abspath(self.path)
        warnings = location_warnings(path)
        if warnings:
            _say_once(
                logging.WARNING,
                ("where", path),
                "%s: THE REVOCATION STORE MAY BE LOST: %s.  Sessions logged out before then "
                "would be accepted again.  Set KC_SSO_STORE=sqlite:////var/lib/<app>/"
                "revocations.db (or run the service with StateDirectory=) on a local disk "
                "that persists.",
                self.description,
                "; ".join(warnings),
            )
        else:
            _say_once(
                logging.INFO,
                ("where", path),
                "%s: revocations are kept in %s, shared by every worker of this host",
                self.description,
                path,
            )

    def _open_channel(self) -> None:
        if not self.notifications:
            return
        try:
            channel = Channel.open(self.path, self.follower_name)
        except Unavailable as exc:
            _say_once(
                logging.WARNING,
                ("poll", socket_directory(self.path)),
                "%s: workers cannot notify each other (%s); each polls the file every %gs instead",
                self.description,
                exc,
                self.poll_interval,
            )
            return
        with self._channel_lock:
            self._channel = channel

    def _close_channel(self) -> None:
        with self._channel_lock:
            channel, self._channel = self._channel, None
            sender, self._unbound = self._unbound, None
        if channel is not None:
            channel.close()
        if sender is not None:
            sender.close()

    def _hear_from_peers(self) -> set[str]:
        """Ask every other follower socket and wait until each has answered (it checks,
        and if need be repairs, the file before answering), at most PEER_WAIT seconds.

        Meanwhile answers others that start at the same time (with position 0: this
        worker has nothing to contribute yet), so that they do not wait for each other;
        returns who asked, to be answered again once the load is done.
        """
        channel = self._channel
        if channel is None:
            return set()
        peers = channel.peers(FOLLOWER_STALE_AFTER)
        if not peers:
            return set()
        asked = channel.notify_ids(peers)
        waiting = {peer for peer, how in asked.items() if how != "gone"}
        askers: set[str] = set()
        deadline = time.monotonic() + PEER_WAIT
        while waiting and time.monotonic() < deadline:
            inbox = channel.receive(0)
            if inbox is not None and inbox.asking:
                channel.answer(inbox.asking, self._generation, 0)
                askers |= inbox.asking
            channel.acks.wait(0.005)
            waiting = {peer for peer in waiting if channel.acks.latest(peer) is None}
            busy = [peer for peer in waiting if asked.get(peer) == "busy"]
            if busy:
                asked.update(channel.notify_ids(busy))
        if waiting:
            logger.warning(
                "%s: %d other worker(s) did not answer within %gs at start-up: %s",
                self.description,
                len(waiting),
                PEER_WAIT,
                ", ".join(sorted(waiting)),
            )
        return askers

    def _wake(self) -> None:
        channel = self._channel
        if channel is not None:
            channel.wake()

    def _release(self) -> None:
        self._close_channel()
        for lock in (self._write_lock, self._follower_lock, self._repair_lock):
            lock.close()
        self._wal_sync.close()
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for _owner, conn in connections:
            conn.close()

    def _set_aside_inherited(self) -> None:
        _INHERITED.extend(conn for _owner, conn in self._connections)
        channel = self._channel
        if channel is not None:
            channel.set_aside()  # the descriptors are ours to close, the files the parent's
        for lock in (self._write_lock, self._follower_lock, self._repair_lock):
            lock.close()  # flock belongs to the open file: the parent keeps its own
        self._wal_sync.close()

    def _unregister(self) -> None:
        """Delete this instance's row, so that no writer waits for it (best effort)."""
        if not self._registered:
            return
        self._registered = False
        try:
            sql.unregister(self._connection(), self.follower_name)
        except (sqlite3.Error, ConfigurationError) as exc:  # it goes stale within seconds
            logger.debug("%s: could not unregister: %s", self.description, exc)

    def _unregister_at_exit(self) -> None:
        super()._unregister_at_exit()
        self._close_channel()

    # -- connections ----------------------------------------------------------------

    def _prepare_directory(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                f"KC_SSO_STORE: cannot create the directory {directory!r} for the SQLite "
                f"revocation store: {exc}"
            ) from exc
        # WAL mode creates -wal and -shm files next to the database, so the directory
        # itself must be writable, not only the file.
        if not os.access(directory, os.W_OK | os.X_OK) or (
            os.path.exists(self.path) and not os.access(self.path, os.R_OK | os.W_OK)
        ):
            raise ConfigurationError(
                f"KC_SSO_STORE: the SQLite revocation store {self.path!r} is not writable "
                "by this process; every worker needs read-write access to the file and to "
                "its directory"
            )

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 objects must not be used by two threads)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sql.connect(self.path, self.busy_timeout_ms / 1000)
            try:
                file = file_identity(self.path)  # the file the connection has just opened
                sql.ensure_schema(conn, self.path)
                with self._connections_lock:
                    alive = [(t, c) for t, c in self._connections if _is_alive(t)]
                    ended = [c for t, c in self._connections if not _is_alive(t)]
                    current = weakref.ref(threading.current_thread())
                    self._connections = [*alive, (current, conn)]
            except BaseException:
                conn.close()
                raise
            for stale in ended:
                stale.close()
            self._local.conn, self._local.file = conn, file
        return conn

    def _drop_connection(self) -> None:
        """Close this thread's connection (its file was replaced)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            return
        self._local.conn = None
        with self._connections_lock:
            self._connections = [(t, c) for t, c in self._connections if c is not conn]
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    def _writer_connection(self) -> tuple[sqlite3.Connection, tuple[int, int] | None]:
        """This thread's connection, to the file now at the path (reopened if the file
        was replaced or deleted, and this store's follower woken to repair it)."""
        conn = self._connection()
        file = file_identity(self.path)
        if file is not None and file == self._local.file:
            return conn, file
        self._drop_connection()
        self._prepare_directory()
        self._wake()
        conn = self._connection()
        file = self._local.file
        return conn, file

    # -- follower -------------------------------------------------------------------

    def _current(self) -> StoreStatus:
        """The status the follower's last successful step stands for."""
        if self._pending_repair is not None:
            return StoreStatus(
                available=False,
                detail=f"the store file {self._pending_repair}; writing back this worker's entries",
            )
        if self._awaiting_repairs and self._repairs_elsewhere:
            return StoreStatus(
                available=False,
                detail=f"{self._repairs_elsewhere} other worker(s) are writing back what the "
                "store lost",
            )
        self._awaiting_repairs = False
        return StoreStatus(available=True)

    def _checked_connection(
        self, *, deep: bool = True
    ) -> tuple[sqlite3.Connection, sql.FileState | None]:
        """The follower's connection, after checking that the store did not lose data
        (and repairing it if it did); with the file's state.

        Not ``deep``: only whether the path still names the file (one ``stat``); the
        state is then None.
        """
        conn = self._connection()
        # Heartbeats and purges need not survive a power loss: no fsync for them.
        # Repairs set FULL for themselves.
        self._without_commit_fsync(conn)
        lost = self._pending_repair
        if lost is None:
            file = file_identity(self.path)
            if file != self._file:
                lost = "was deleted" if file is None else "was replaced by another file"
            elif not deep:
                return conn, None
            else:
                # Read before the file: a write of this process may move the position
                # past what the read below sees, which is no sign of a lost change.
                with self._position_lock:
                    applied = self._last_change_id
                state = sql.file_state(conn, self.follower_name, time.time())
                self._repairs_elsewhere = state.repairs
                if state.generation != self._generation:
                    lost = "was replaced by another store (another generation)"
                elif state.sequence < applied:
                    lost = (
                        f"went back to change {state.sequence} (this worker had applied {applied})"
                    )
                else:
                    return conn, state
            # First what the old file still holds: rows committed before the switch.
            with contextlib.suppress(sqlite3.Error):
                self._catch_up(conn, sql.sequence(conn))
            self._drop_connection()
            self._prepare_directory()
            conn = self._connection()
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.tuned = conn
        self._recover(conn, lost)
        state = sql.file_state(conn, self.follower_name, time.time())
        self._repairs_elsewhere = state.repairs
        return conn, state

    def _recover(self, conn: sqlite3.Connection, lost: str) -> None:
        """Follow the file now at the path and write back this worker's replica into it."""
        if self._pending_repair is None:
            logger.error(
                "%s: the store file %s: it lost data.  Writing back this worker's "
                "revocations and jti claims; until then its replica is not reported as "
                "current",
                self.description,
                lost,
            )
        self._pending_repair = lost
        self._status = self._current()
        if self._channel is not None:
            self._channel.drop_answers()
        # The mark may be of an older copy of this file (same generation, higher
        # counter): never let it vouch for commits of this one.
        self._wal_sync.forget()
        with self._position_lock:
            self._file = self._local.file
            self._generation = sql.file_state(conn, self.follower_name, 0.0).generation
            self._last_change_id = 0
            self._published = -1
        with self._follower_lock.held():
            sql.publish(conn, self.follower_name, 0)  # listed in the new file
        entries, claims = self._repair(conn)
        self._catch_up(conn, sql.sequence(conn))
        self._publish(conn)
        self._pending_repair = None
        # Reported at once: the replica is current now, not at the follower's next step.
        self._status = self._current()
        logger.warning(
            "%s: wrote back %d revocation(s) and %d jti claim(s) the store had lost",
            self.description,
            entries,
            claims,
        )
        channel = self._channel
        if channel is not None:  # new rows for everyone, and a repair ended
            channel.notify_ids(channel.peers(FOLLOWER_STALE_AFTER), answer=False)

    def _repair(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """Write back what the file lacks of this replica and of this process's claims:
        one repair at a time per file, listed in ``repairs`` meanwhile."""
        worker = self.follower_name
        with self._follower_lock.held():
            sql.claim_repair(conn, worker, time.time() + _REPAIR_LEASE)
        while not self._repair_lock.try_hold():
            if self._stop.wait(0.05):
                raise StoreUnavailableError("closed during a repair")
            with self._follower_lock.held():
                sql.claim_repair(conn, worker, time.time() + _REPAIR_LEASE)
        written = 0
        claims = self.recent_claims()
        claim_count = len(claims)
        try:
            conn.execute("PRAGMA synchronous=FULL")  # acknowledged revocations, again
            held = sql.held(conn, self._timer())
            missing = (e for e in self._replica.snapshot() if not sql.covered(e, held))
            while True:
                chunk = list(itertools.islice(missing, _REPAIR_CHUNK))
                if not chunk and not claims:
                    break
                with self._follower_lock.held():
                    sql.write_back(
                        conn,
                        chunk,
                        claims,
                        worker=worker,
                        until=time.time() + _REPAIR_LEASE,
                        last=False,
                    )
                written += len(chunk)
                claims = []
                if len(chunk) < _REPAIR_CHUNK:
                    break
            with self._follower_lock.held():
                sql.end_repair(conn, worker)
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA synchronous=NORMAL")
            self._repair_lock.release()
        return written, claim_count

    def _catch_up(self, conn: sqlite3.Connection, counter: int) -> None:
        """Apply every row above the last change id seen (``counter``: the file's change
        counter read before, so the position reaches it even when its newest rows were
        purged)."""
        with self._position_lock:
            position = self._last_change_id
        while True:
            rows = sql.rows_after(conn, position, _PAGE)
            if rows:
                self._apply(_revocations(rows))
                position = rows[-1][0]
            if len(rows) < _PAGE:
                break
            if self._heartbeat.due():  # a long start-up load must not look like death
                self._advance(position)
                self._publish(conn, wait=False)
        self._advance(max(position, counter))

    def _advance(self, position: int) -> None:
        with self._position_lock:
            self._last_change_id = max(self._last_change_id, position)

    def _publish(self, conn: sqlite3.Connection, *, wait: bool = True) -> bool:
        """Write this follower's position and heartbeat; failures only delay writers.

        Not ``wait``: only if no write holds the lock now (else False, nothing written,
        and the row is tried again soon).  The follower thread never waits for the lock:
        ``flock`` is not fair, and under a steady stream of commits a waiting follower
        could wait for seconds, answering nobody meanwhile.
        """
        position = self._last_change_id
        if not wait:
            if not self._follower_lock.try_hold():
                self._heartbeat.beat()  # the next try comes soon anyway (_row_stale)
                self._row_stale = True
                return False
            held: contextlib.AbstractContextManager[object] = _Released(self._follower_lock)
        else:
            held = self._follower_lock.held()
        self._heartbeat.beat()
        try:
            with held:
                sql.publish(conn, self.follower_name, position)
        except sqlite3.Error as exc:
            if not self._publish_failed:
                logger.warning(
                    "%s: could not publish this worker's position (writers wait up to "
                    "ack_timeout for it): %s",
                    self.description,
                    exc,
                )
            self._publish_failed = True
            return True
        self._publish_failed = False
        self._row_stale = False
        self._published = position
        self._published_at = time.monotonic()
        return True

    def _follow(self) -> None:
        channel = self._channel
        if channel is None:
            self._follow_polling()
        else:
            self._follow_notified(channel)

    def _follow_notified(self, channel: Channel) -> None:
        """Block until news or the next heartbeat; apply, publish, answer.

        Per wake, with news: one ``stat`` (is it still the file?), the new rows, and a
        datagram to each writer that asked (it carries the position).  This follower's
        row (its position, as ``_following`` promises writers that cannot be answered by
        datagram, and diagnostics) is written after the answers, once a burst ends (no
        more news waiting), and at most every ``_PUBLISH_EVERY``.
        The file's generation, change counter and the repairs listed are read at each
        heartbeat (and while this worker waits for others' repairs).
        """
        next_purge = time.monotonic() + self.purge_interval
        # The socket files are touched on their own clock: the row's heartbeat is put
        # off by every write of the row, which under load comes far more often.
        next_touch = time.monotonic() + HEARTBEAT_INTERVAL
        retry_at = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            timeout = min(self._heartbeat.seconds_left(), next_purge - now, next_touch - now)
            if retry_at:
                timeout = min(timeout, retry_at - now)
            if self._row_stale:
                timeout = min(timeout, _DEFERRED_PUBLISH)
            elif self._last_change_id != self._published:
                timeout = min(timeout, self._published_at + _PUBLISH_EVERY - now)
            inbox = channel.receive(max(timeout, 0.0))
            if self._stop.is_set():
                break
            try:
                due = self._heartbeat.due()
                # A writer's counter before its batch below this follower's position:
                # the counter went back, and the rows above it are not the ones applied.
                went_back = self._counter_went_back or (
                    inbox is not None
                    and inbox.before is not None
                    and inbox.before < self._last_change_id
                )
                self._counter_went_back = False
                deep = due or bool(retry_at) or self._awaiting_repairs or went_back
                conn, state = self._checked_connection(deep=deep)
                if inbox is not None or deep:
                    self._catch_up(conn, 0 if state is None else state.sequence)
                anonymous = inbox is not None and inbox.anonymous
                if inbox is not None and inbox.asking:
                    channel.answer(inbox.asking, self._generation, self._last_change_id)
                behind = self._last_change_id != self._published and (
                    time.monotonic() >= self._published_at + _PUBLISH_EVERY
                )
                quiet = inbox is None or not channel.pending()
                if (behind and quiet) or due or anonymous or self._row_stale:
                    # If a write holds the lock, a moment later.
                    self._publish(conn, wait=False)
                self._replica.expire()
                if time.monotonic() >= next_touch:
                    channel.refresh()
                    next_touch = time.monotonic() + HEARTBEAT_INTERVAL
                if time.monotonic() >= next_purge:
                    next_purge = self._purge(conn)
            except Exception as exc:
                self._failed(exc)
                retry_at = time.monotonic() + _RETRY
                continue
            retry_at = 0.0
            self._succeeded()

    def _follow_polling(self) -> None:
        """Poll ``PRAGMA data_version``; apply and publish when it moves."""
        last_version: int | None = None
        next_purge = time.monotonic() + self.purge_interval
        hot_until = 0.0
        while True:
            # Never sleep past a due heartbeat, whatever the poll interval.
            pause = min(self.poll_interval, self._heartbeat.seconds_left())
            if time.monotonic() < hot_until:
                pause = min(pause, _HOT_POLL)
            if self._stop.wait(max(pause, 0.0)):
                break
            try:
                conn, _ = self._checked_connection(deep=False)
                # data_version changes whenever another connection (any process, or
                # record() in this one) commits; read it before the rows so a commit
                # landing in between is caught by the next poll.
                version = sql.data_version(conn)
                if version != last_version or self._heartbeat.due():
                    conn, state = self._checked_connection()
                    assert state is not None
                    before = self._last_change_id
                    self._catch_up(conn, state.sequence)
                    last_version = version
                    # Only new revocations heat the loop up: acknowledgements and
                    # heartbeats also change data_version, but find no rows.
                    if self._last_change_id != before:
                        hot_until = time.monotonic() + _HOT_PERIOD
                # At once when the position advanced (a writer is waiting for it); else
                # only when the heartbeat is due, so acknowledgements never cascade.  If
                # a write holds the lock, the next poll tries again.
                if (
                    self._last_change_id != self._published
                    or self._heartbeat.due()
                    or self._row_stale
                ):
                    self._publish(conn, wait=False)
                self._replica.expire()
                if time.monotonic() >= next_purge:
                    next_purge = self._purge(conn)
            except Exception as exc:
                self._failed(exc)
                last_version = None
                continue
            self._succeeded()

    def _purge(self, conn: sqlite3.Connection) -> float:
        """Delete what expired, unless a write holds the lock; when to purge next."""
        if not self._follower_lock.try_hold():
            return time.monotonic() + _DEFERRED_PUBLISH  # never wait for it (see _publish)
        with _Released(self._follower_lock):
            # Heartbeats are wall-clock time on this host, not the injected timer.
            sql.purge(conn, self._timer(), time.time() - FOLLOWER_PURGE_AFTER)
        return time.monotonic() + self.purge_interval

    def _failed(self, exc: Exception) -> None:
        # Keep following: the error may be transient (a locked or full disk).  Meanwhile
        # the status tells the core that the replica may be stale.
        if self._status.available:
            logger.warning("%s: follower failed: %s", self.description, exc)
        self._status = StoreStatus(available=False, detail=f"follower failed: {exc}")

    def _succeeded(self) -> None:
        if self._stop.is_set():
            return
        status = self._current()
        if status.available and not self._status.available:
            logger.info("%s: follower recovered", self.description)
        if status != self._status:
            self._status = status


class _Released:
    """Releases a :class:`FileLock` taken with ``try_hold`` on leaving the block."""

    def __init__(self, lock: FileLock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def _is_alive(owner: weakref.ref[threading.Thread]) -> bool:
    thread = owner()
    return thread is not None and thread.is_alive()


def _revocations(rows: Iterable[sql.Row]) -> list[Revocation]:
    """The rows as entries, without those this version cannot read.

    A row of a kind a newer version writes (during a rolling deploy), or one a foreign
    writer left, is skipped with a warning, as the Redis follower skips such messages: the
    follower moves past it instead of failing on it at every step (which would leave every
    worker unavailable and every later entry unapplied).
    """
    entries = []
    for change_id, kind, subject, not_before, expires_at, label, note in rows:
        try:
            if not isinstance(subject, int) or isinstance(subject, bool):
                raise TypeError(f"subject {subject!r} is not an integer")
            entry = Revocation(
                RevocationKind(kind),
                subject,
                float(not_before),
                float(expires_at),
                label if isinstance(label, str) else None,
                Note.decode(note if isinstance(note, str) else None),
            )
        except (ValueError, TypeError) as exc:
            logger.warning(
                "SQLite store: change %s cannot be read by this version and is skipped: %s",
                change_id,
                exc,
            )
            continue
        entries.append(entry)
    return entries
