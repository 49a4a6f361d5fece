"""Durable commits with one WAL fsync for many of them, across the processes of a host.

``synchronous=FULL`` fsyncs the WAL inside every commit, while the commit holds the write
lock: the writers of all processes then take turns on the disk, one fsync each, and
nothing else can overlap it.  Instead, writes commit with ``synchronous=NORMAL`` (in the
WAL, not yet on disk; SQLite still fsyncs before and after each checkpoint, so a WAL
reset never loses a commit) and then call :meth:`WalSync.through` with the number their
batch took from the file's commit counter (``meta.commits``, incremented in every batch):

* under ``flock`` on the state file (``synced`` in the socket directory), which says up to
  which commit number of which file generation the WAL is known to be on disk;
* if that covers the commit, someone else's fsync, begun after it was written, did the
  work: return;
* else read the counter afresh (every commit up to it has been written to the WAL), fsync
  the WAL, and record that number.

While one process fsyncs, the others commit and queue on the lock; the next fsync covers
all of them.  So the write lock is held for microseconds, a lone write costs one fsync
(overlapped by its caller with the followers' work: the datagrams go out first), and
under load a batch of every process shares one.  A commit is reported durable only once
an fsync that began after it was written has returned.

Without a state file (no socket directory: another OS, a read-only directory) every call
fsyncs the WAL, as ``FULL`` would.  :meth:`WalSync.forget` drops the recorded number (the
file went back to an older copy of the same generation, whose counter is lower).
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable

from ._sqlite_notify import FileLock

__all__ = ["WalSync"]

_STATE = struct.Struct("<qq")  # generation, commit number synced through


class WalSync:
    """The shared "synced through" mark of one SQLite file's WAL."""

    def __init__(self, database: str, state_path: str | None) -> None:
        self._wal = f"{database}-wal"
        # The mark is the lock file's content, read and written only while it is held.
        self._lock = FileLock(state_path)
        #: fsyncs done by this process, and calls another process's (or thread's) covered
        self.fsyncs = 0
        self.covered = 0

    def through(self, generation: int, commit: int, latest: Callable[[], int]) -> None:
        """Return once commit number ``commit`` of ``generation`` is on disk.

        ``latest`` reads the file's commit counter (called only when this call fsyncs,
        before it does).  Raises :class:`OSError` when the WAL cannot be synced.
        """
        with self._lock.held() as fd:
            if fd is None:
                self._fsync_wal()
                return
            synced_generation, synced = _read(fd)
            if synced_generation == generation and synced >= commit:
                self.covered += 1
                return
            upto = max(commit, latest())
            self._fsync_wal()
            os.pwrite(fd, _STATE.pack(generation, upto), 0)
            self.fsyncs += 1

    def forget(self) -> None:
        """Drop the recorded mark: the next commit fsyncs whatever the mark said."""
        with contextlib.suppress(OSError), self._lock.held() as fd:
            if fd is not None:
                os.pwrite(fd, _STATE.pack(0, 0), 0)

    def close(self) -> None:
        self._lock.close()

    def _fsync_wal(self) -> None:
        # Opened for each fsync: the WAL file may have been deleted and created again
        # since (by the last connection closing and the next opening), and an fsync of
        # an old descriptor would cover nothing of the new file.
        fd = os.open(self._wal, os.O_RDONLY)
        try:
            _datasync(fd)
        finally:
            os.close(fd)


def _read(fd: int) -> tuple[int, int]:
    data = os.pread(fd, _STATE.size, 0)
    if len(data) != _STATE.size:
        return 0, 0
    generation, synced = _STATE.unpack(data)
    return int(generation), int(synced)


# What SQLite itself calls where it can: the data (and the size, when it grew), without
# the modification time's own journal commit.
_datasync = getattr(os, "fdatasync", os.fsync)
