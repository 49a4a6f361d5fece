"""News between the processes of one host that share a SQLite store: Unix datagrams.

Every started store binds two Unix datagram sockets in a directory beside the database
file, ``<file>.kc-sso/``, both named after a digest of its follower name (16 hex digits,
so a writer finds a follower's socket from the row it registered in ``followers``):

``<id>.f``
    The follower's.  It blocks in ``poll()`` on it, with the time until its next heartbeat
    as the timeout: an idle worker wakes once per heartbeat, otherwise only when there is
    news.  It receives ``N`` ("I committed rows; answer with your position"), ``P``
    (the same, no answer wanted) and ``W`` (close() waking it).
``<id>.w``
    The writer's.  A store sends its ``N`` from here, and each follower answers there, once
    it has applied what it found, with ``A`` + the file's generation + its position (the
    highest change id it has applied).  A writer waiting for these acknowledgements blocks
    on it; when several threads of a process wait, one reads and the others wait on a
    condition (:class:`Acknowledgements`).

A follower whose socket cannot be reached (``ENOENT``, ``ECONNREFUSED``: not this kind of
worker, or dead) is followed through the table as before; a stale socket of a dead
process is deleted by whoever finds it.  A full receive queue (``EAGAIN``) is retried.

Also here: ``write.lock`` in the same directory, which every process's writes take
(``flock``) before ``BEGIN IMMEDIATE``.  SQLite serialises writers anyway, but a writer that
finds the database locked sleeps 1, 2, 5, 10 ms… in SQLite's busy handler; on ``flock``
it sleeps in the kernel until the lock is free, and a group of writers of one process
commits together meanwhile.  And ``repair.lock``, which makes the repairs of several
workers run one after the other (each writes back only what the file does not hold yet).
And ``synced``, a lock file whose content says how far the WAL is known to be on disk
(:mod:`~kc_sso_middleware.stores._sqlite_sync`).

Paths longer than a socket address allows (about 107 bytes) are reached through
``/proc/self/fd/<directory fd>/`` on Linux.  Where none of this works (no ``AF_UNIX``
datagrams, a read-only directory), :meth:`Channel.open` says why, and the store polls.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

__all__ = [
    "Acknowledgements",
    "Channel",
    "FileLock",
    "Inbox",
    "Sender",
    "file_identity",
    "socket_directory",
    "socket_id",
]

logger = logging.getLogger(__name__)

#: the acknowledgement: b"A", generation, applied position
_ACK = struct.Struct("!cqq")
#: after ``N``: the file's change counter before the batch (older versions send ``N`` alone,
#: and read only the first byte)
_BEFORE = struct.Struct("!q")
NOTIFY, POKE, WAKE, ACK = b"N", b"P", b"W", b"A"
_FOLLOWER, _WRITER = ".f", ".w"
# sun_path holds 108 bytes on Linux, 104 on the BSDs and macOS, with the final NUL.
_MAX_ADDRESS = (104 if sys.platform == "darwin" or "bsd" in sys.platform else 108) - 1
_PROC_FD = "/proc/self/fd"
#: how long a follower keeps retrying an acknowledgement a full queue refused
ACK_RETRY_FOR = 0.05
#: how long a listing of the socket directory is used while the directory is unchanged
RELIST_AFTER = 0.5
# File times tick with the kernel's clock tick (1 to 10 ms), behind time.time().
_COARSE = 0.05


def socket_directory(db_path: str) -> str:
    """``<file>.kc-sso``, beside the database file (absolute)."""
    return os.path.abspath(db_path) + ".kc-sso"


def socket_id(follower_name: str) -> str:
    """The 16 hex digits a follower's socket files are named by."""
    return hashlib.blake2b(follower_name.encode(), digest_size=8).hexdigest()


class Unavailable(Exception):
    """Notifications cannot be used here (the reason is the message)."""


@dataclass
class Inbox:
    """What one wake of the follower found in its socket."""

    #: writer socket ids that asked for an answer
    asking: set[str] = field(default_factory=set)
    #: any ``N`` or ``P`` (new rows somewhere), including from writers without a socket
    news: bool = False
    #: an ``N`` from a writer whose socket has no address: it will read the table
    anonymous: bool = False
    #: the lowest change counter a writer saw before its batch, of the ``N`` that carry
    #: one (None: none did, e.g. an older version's): below the follower's position, the
    #: counter went back (the file was restored in place) and the follower must look
    before: int | None = None


class _Directory:
    """The socket directory, addressed directly or, for long paths, through its fd."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(path, exist_ok=True)
        self.fd: int | None = None
        self.identity = file_identity(path)
        if len(os.fsencode(os.path.join(path, "0" * 16 + _FOLLOWER))) > _MAX_ADDRESS:
            if not os.path.isdir(_PROC_FD):
                raise Unavailable(f"the socket directory's path is too long: {path}")
            self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))

    def address(self, name: str) -> str:
        if self.fd is None:
            return os.path.join(self.path, name)
        return f"{_PROC_FD}/{self.fd}/{name}"

    def file(self, name: str) -> str:
        """The file's path for os calls (the fd form works for them too)."""
        return self.address(name)

    def entries(self) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(self.path) as found:
                return list(found)
        except OSError:
            return []

    def moved(self) -> bool:
        """Whether the directory was deleted or replaced since it was opened."""
        return file_identity(self.path) != self.identity

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def file_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``; None if there is none."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _bound(directory: _Directory, name: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        address = directory.address(name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)  # a leftover of a process that had this name: impossible
        sock.bind(address)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Channel:
    """One store instance's two sockets in the directory beside its database file.

    Built by :meth:`open`; the follower thread owns :meth:`receive` and :meth:`answer`,
    writers use :meth:`notify` and :attr:`acks`.  :meth:`refresh` (each heartbeat)
    re-creates what someone deleted.
    """

    def __init__(self, path: str, follower_name: str) -> None:
        if not hasattr(socket, "AF_UNIX"):
            raise Unavailable("this platform has no Unix domain sockets")
        self.id = socket_id(follower_name)
        self._path = path
        self._lock = threading.Lock()
        self._retired: list[socket.socket] = []
        self._pending_answers: dict[str, tuple[bytes, float]] = {}
        #: when the directory was last listed, and each peer socket's time then
        self._listed: tuple[float, dict[str, float]] | None = None
        self._build()
        self.acks = Acknowledgements(lambda: self._writer)

    @classmethod
    def open(cls, db_path: str, follower_name: str) -> Channel:
        """Bind this follower's sockets; raise :class:`Unavailable` saying why not."""
        try:
            return cls(socket_directory(db_path), follower_name)
        except Unavailable:
            raise
        except OSError as exc:
            raise Unavailable(f"{socket_directory(db_path)}: {exc.strerror or exc}") from exc

    def _build(self) -> None:
        directory = _Directory(self._path)
        try:
            follower = _bound(directory, self.id + _FOLLOWER)
            try:
                writer = _bound(directory, self.id + _WRITER)
            except BaseException:
                follower.close()
                raise
        except BaseException:
            directory.close()
            raise
        self._directory, self._follower, self._writer = directory, follower, writer
        self._follower_poll = select.poll()
        self._follower_poll.register(follower, select.POLLIN)
        self._inode = os.stat(directory.file(self.id + _FOLLOWER)).st_ino

    # -- the follower's side -----------------------------------------------------------

    def receive(self, timeout: float) -> Inbox | None:
        """Wait up to ``timeout`` seconds for news; ``None`` if none came.  Drains the queue."""
        wait = timeout if not self._pending_answers else min(timeout, 0.001)
        events = self._follower_poll.poll(max(0, int(wait * 1000 + 0.999)))
        self._retry_answers()
        if not events:
            return None
        inbox = Inbox()
        got = False
        while True:
            try:
                data, sender = self._follower.recvfrom(64)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            got = True
            kind = data[:1]
            if kind in (NOTIFY, POKE):
                inbox.news = True
                if kind == NOTIFY:
                    if len(data) == 1 + _BEFORE.size:
                        before = _BEFORE.unpack_from(data, 1)[0]
                        if inbox.before is None or before < inbox.before:
                            inbox.before = before
                    origin = _sender_id(sender, _WRITER)
                    if origin is None:
                        inbox.anonymous = True
                    else:
                        inbox.asking.add(origin)
        return inbox if got else None

    def pending(self) -> bool:
        """Whether more datagrams are already waiting (a burst goes on)."""
        return bool(self._follower_poll.poll(0))

    def answer(self, writers: Iterable[str], generation: int, applied: int) -> None:
        """Send each writer that asked this follower's position (what it has applied)."""
        message = _ACK.pack(ACK, generation, applied)
        deadline = time.monotonic() + ACK_RETRY_FOR
        for writer in writers:
            if self._send(writer + _WRITER, message, self._follower) == "busy":
                self._pending_answers[writer] = (message, deadline)
            else:
                # An older answer still waiting must not arrive after this one: the writer
                # keeps the last answer it gets.
                self._pending_answers.pop(writer, None)

    def _retry_answers(self) -> None:
        if not self._pending_answers:
            return
        now = time.monotonic()
        for writer, (message, deadline) in list(self._pending_answers.items()):
            if self._send(writer + _WRITER, message, self._follower) != "busy" or now > deadline:
                del self._pending_answers[writer]

    def drop_answers(self) -> None:
        """Forget the answers still to be sent again: positions of a history the file no
        longer has (it went back), which would vouch for reused change ids."""
        self._pending_answers.clear()

    def wake(self) -> None:
        """Interrupt the follower's wait (close())."""
        self._send(self.id + _FOLLOWER, WAKE, self._writer)

    # -- the writer's side -------------------------------------------------------------

    def notify_ids(
        self, ids: Iterable[str], *, answer: bool = True, before: int | None = None
    ) -> dict[str, str]:
        """Tell these followers (by socket id) there are new rows; per id ``"sent"``,
        ``"busy"`` (its queue is full: try again) or ``"gone"`` (no socket: follow it through
        the table).

        ``before``: the file's change counter before the batch, so that a follower already
        past it knows the counter went back and does not answer with its old position."""
        message = _notification(answer, before)
        return {fid: self._send(fid + _FOLLOWER, message, self._writer) for fid in ids}

    def peers(self, stale_after: float) -> list[str]:
        """The socket ids of the other live followers in the directory.

        Live: its socket file was touched within ``stale_after`` seconds (each follower
        touches its own at every heartbeat, :meth:`refresh`), so that a hung process is
        not waited for; a dead one's is refused, and deleted, when it is sent to.

        The listing is kept while the directory does not change (one ``stat`` of it per
        call instead of one per socket), re-read at least every :data:`RELIST_AFTER`
        for the sockets' own times.  A directory changed less than
        :data:`_COARSE` before the listing was made is listed again: file times tick
        coarsely (the kernel's clock tick), so a socket bound just after the listing
        could carry the same time.
        """
        now = time.time()
        try:
            changed = os.stat(self._directory.path).st_mtime
        except OSError:
            return []
        listed = self._listed
        if listed is None or changed > listed[0] - _COARSE or now - listed[0] > RELIST_AFTER:
            listed = self._listed = (now, _socket_times(self._directory, self.id))
        since = now - stale_after
        return [peer for peer, touched in listed[1].items() if touched >= since]

    def alive(self, peer: str, stale_after: float) -> bool:
        """Whether ``peer``'s socket file is there and was touched within ``stale_after``."""
        try:
            touched = os.stat(self._directory.file(peer + _FOLLOWER)).st_mtime
        except OSError:
            return False
        return touched >= time.time() - stale_after

    def _send(self, name: str, message: bytes, via: socket.socket) -> str:
        address = self._directory.address(name)
        try:
            via.sendto(message, address)
        except (BlockingIOError, InterruptedError):
            return "busy"
        except ConnectionRefusedError:
            # A socket file nobody is bound to: its process is gone.
            if name.endswith(_FOLLOWER) and name != self.id + _FOLLOWER:
                with contextlib.suppress(OSError):
                    os.unlink(self._directory.file(name))
                    os.unlink(self._directory.file(name[: -len(_FOLLOWER)] + _WRITER))
            return "gone"
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ENOBUFS):
                return "busy"
            return "gone"  # ENOENT, EACCES, …: followed through the table
        return "sent"

    # -- upkeep ------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Each heartbeat: touch the socket files (so that tmp cleaners leave them alone)
        and, if the directory or a socket file was deleted, bind new ones.  True if it did."""
        for old in self._retired:
            old.close()
        self._retired = []
        try:
            os.utime(self._directory.file(self.id + _FOLLOWER))
            os.utime(self._directory.file(self.id + _WRITER))
            intact = (
                not self._directory.moved()
                and os.stat(self._directory.file(self.id + _FOLLOWER)).st_ino == self._inode
            )
        except OSError:
            intact = False
        if intact:
            return False
        with self._lock:
            directory, follower, writer = self._directory, self._follower, self._writer
            self._build()
        self._retired = [follower, writer]  # a writer may still be polling the old one
        directory.close()
        logger.info("%s: the socket files were deleted; bound new ones", self._path)
        return True

    def close(self) -> None:
        """Delete this follower's socket files and close everything."""
        with contextlib.suppress(OSError):
            os.unlink(self._directory.file(self.id + _FOLLOWER))
        with contextlib.suppress(OSError):
            os.unlink(self._directory.file(self.id + _WRITER))
        self.set_aside()

    def set_aside(self) -> None:
        """Close the descriptors and leave the files (a forked child's inherited copy)."""
        for sock in (self._follower, self._writer, *self._retired):
            sock.close()
        self._retired = []
        self._directory.close()


def _socket_times(directory: _Directory, own: str | None) -> dict[str, float]:
    """Every follower socket but ``own`` in the directory, with its modification time."""
    times = {}
    for entry in directory.entries():
        name = entry.name
        if not name.endswith(_FOLLOWER) or name[: -len(_FOLLOWER)] == own:
            continue
        with contextlib.suppress(OSError):
            times[name[: -len(_FOLLOWER)]] = entry.stat().st_mtime
    return times


def _live_peers(directory: _Directory, own: str | None, stale_after: float) -> list[str]:
    since = time.time() - stale_after
    return [peer for peer, touched in _socket_times(directory, own).items() if touched >= since]


class Sender:
    """Datagrams from a store without sockets of its own (one used without ``start()``):
    a follower told by an ``N`` without a return address publishes its position in the
    table at once, which such a writer reads."""

    def __init__(self, db_path: str) -> None:
        path = socket_directory(db_path)
        if not hasattr(socket, "AF_UNIX") or not os.path.isdir(path):
            raise Unavailable(f"no socket directory {path}")
        try:
            self._directory = _Directory(path)
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        except OSError as exc:
            raise Unavailable(f"{path}: {exc.strerror or exc}") from exc
        self._sock.setblocking(False)

    def notify(self, stale_after: float) -> None:
        for peer in _live_peers(self._directory, None, stale_after):
            with contextlib.suppress(OSError):
                self._sock.sendto(NOTIFY, self._directory.address(peer + _FOLLOWER))

    def close(self) -> None:
        self._sock.close()
        self._directory.close()


def _sender_id(address: object, suffix: str) -> str | None:
    """The socket id of a datagram's sender (by the file name it bound), if it has one."""
    if not isinstance(address, str) or not address.endswith(suffix):
        return None
    name = os.path.basename(address)[: -len(suffix)]
    return name if len(name) == 16 else None


class Acknowledgements:
    """The acknowledgements a process's writers receive, shared by its waiting threads.

    One waiting thread reads the writer socket at a time; the others wait on a condition
    that the reader signals after each read.  :meth:`latest` is the last position each
    follower (by socket id) reported, with the generation of the file it follows and the
    :attr:`serial` number of its arrival: a writer counts only answers that arrived after
    its commit, since a position reported before it can only vouch for that commit if
    the change ids were reused (an older copy of the file restored in place).  The last
    answer is kept, not the highest: after such a restore the lower one is the truth.
    """

    def __init__(self, writer: Callable[[], socket.socket]) -> None:
        self._writer = writer
        self._condition = threading.Condition()
        self._reading = False
        self._latest: dict[str, tuple[int, int, int]] = {}
        #: how many answers arrived (the serial number of the last one)
        self.serial = 0
        # Held while datagrams taken off the socket are recorded, so that mark() sees
        # every answer that was in the socket when it was called.
        self._recording = threading.Lock()

    def mark(self) -> int:
        """The serial number after every answer already sent to this process: called
        after a commit, answers with a higher one were sent after it."""
        with self._recording:
            self._record(self._writer())
            return self.serial

    def _record(self, sock: socket.socket) -> None:
        for follower_id, generation, applied in _drain_acks(sock):
            # One follower's answers arrive in the order it sent them.
            self.serial += 1
            self._latest[follower_id] = (generation, applied, self.serial)

    def latest(self, follower_id: str) -> tuple[int, int, int] | None:
        """(generation, position, serial number of its arrival) of the follower's last
        answer."""
        return self._latest.get(follower_id)

    def wait(self, timeout: float) -> None:
        """Return after ``timeout`` seconds or once new acknowledgements were read."""
        with self._condition:
            if self._reading:
                self._condition.wait(timeout)
                return
            self._reading = True
        try:
            sock = self._writer()
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            if poller.poll(max(0, int(timeout * 1000 + 0.999))):
                with self._recording:
                    self._record(sock)
        finally:
            with self._condition:
                self._reading = False
                self._condition.notify_all()


def _drain_acks(sock: socket.socket) -> Iterator[tuple[str, int, int]]:
    while True:
        try:
            data, sender = sock.recvfrom(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        origin = _sender_id(sender, _FOLLOWER)
        if origin is None or len(data) != _ACK.size or data[:1] != ACK:
            continue
        _kind, generation, applied = _ACK.unpack(data)
        yield origin, generation, applied


class FileLock:
    """``flock`` on a file in the socket directory, through this object's own descriptor.

    Each user (the writers of a process, its follower) opens its own, so that they exclude
    each other too.  Without a lock file (another OS, a read-only directory) it does
    nothing, and SQLite's own locking alone serialises the writers.
    """

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._opened = 0.0

    def _descriptor(self) -> int | None:
        if self._path is None:
            return None
        now = time.monotonic()
        if self._fd is not None and now - self._opened < 1.0:
            return self._fd
        # At most once a second: is it still the file others lock (not deleted)?
        if self._fd is not None and file_identity(self._path) == self._identity:
            self._opened = now
            return self._fd
        self.close()
        try:
            import fcntl  # noqa: F401 - POSIX only

            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o666)
        except (ImportError, OSError):
            self._path = None
            return None
        self._fd, self._opened = fd, now
        self._identity = file_identity(self._path)
        return fd

    def held(self) -> _Held:
        """Hold the lock; gives the locked file's descriptor (None: no lock is held, so
        the file must not be read or written as if it were)."""
        return _Held(self)

    def try_hold(self) -> bool:
        """Take the lock if it is free (True), without waiting; :meth:`release` it."""
        fd = self._descriptor()
        if fd is None:
            return True
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None


class _Held:
    """:meth:`FileLock.held`: the lock from ``__enter__`` to ``__exit__``.

    A class, not a generator-based context manager: every commit takes the lock, and a
    ``contextlib.contextmanager`` costs it about a hundred bytecode instructions more.
    """

    __slots__ = ("_fd", "_lock")

    def __init__(self, lock: FileLock) -> None:
        self._lock = lock
        self._fd: int | None = None

    def __enter__(self) -> int | None:
        fd = self._lock._descriptor()
        if fd is None:
            return None
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # releases the GIL while it waits
        except OSError:
            return None
        self._fd = fd
        return fd

    def __exit__(self, *exc: object) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            import fcntl

            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)


def _notification(answer: bool, before: int | None) -> bytes:
    if not answer:
        return POKE
    return NOTIFY if before is None else NOTIFY + _BEFORE.pack(before)
