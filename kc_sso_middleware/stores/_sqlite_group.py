"""Group commit: the concurrent writes of one process share one transaction, one fsync.

A write that finds no commit under way leads: it takes every write queued so far
(its own first) and commits them together.  Writes that arrive meanwhile queue, and when
the leader is done one of them leads the next batch with all of them.  So a lone write
commits at once, and under load a batch grows by itself to what arrived during the
previous commit; nothing ever waits for a batch to fill.

What a batch does per write (a ``jti`` replay refused for that write alone, its entries
stored with its claim or not at all) is the commit function's business
(:func:`~kc_sso_middleware.stores._sqlite_schema.insert_batch`).  If the commit raises,
every write of the batch gets the exception.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

W = TypeVar("W")
R = TypeVar("R")


class _Slot(Generic[W, R]):
    """One write waiting in a batch; its lock is held until the write is done, or until it
    is to lead the next batch (one wake-up per waiting thread, never a herd)."""

    __slots__ = ("batch", "error", "ready", "result", "write")

    def __init__(self, write: W) -> None:
        self.write = write
        self.result: R | None = None
        self.error: BaseException | None = None
        #: set when this write is to lead: the batch it commits
        self.batch: list[_Slot[W, R]] | None = None
        self.ready = threading.Lock()
        self.ready.acquire()


class GroupCommit(Generic[W, R]):
    """Batches concurrent :meth:`submit` calls into calls of ``commit``.

    ``commit`` gets the batch's writes in arrival order and returns one result per write,
    in the same order; it runs in the leading caller's thread.
    """

    def __init__(self, commit: Callable[[Sequence[W]], Sequence[R]]) -> None:
        self._commit = commit
        self._mutex = threading.Lock()
        self._queue: list[_Slot[W, R]] = []
        self._leading = False
        #: batches committed and writes in them (for the benchmarks)
        self.batches = 0
        self.writes = 0

    def submit(self, write: W) -> R:
        """Commit ``write`` (with whatever else is queued); its result, or its exception."""
        slot: _Slot[W, R] = _Slot(write)
        with self._mutex:
            if self._leading:
                self._queue.append(slot)
            else:
                self._leading = True
                slot.batch = [slot]
        if slot.batch is None:
            slot.ready.acquire()  # released when done, or when this write is to lead
        if slot.batch is not None:
            self._lead(slot.batch)
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _lead(self, batch: list[_Slot[W, R]]) -> None:
        try:
            results = self._commit([slot.write for slot in batch])
            if len(results) != len(batch):
                raise RuntimeError("a group commit returned the wrong number of results")
            for slot, result in zip(batch, results, strict=True):
                slot.result = result
        except BaseException as exc:
            for slot in batch:
                slot.error = exc
        finally:
            with self._mutex:
                self.batches += 1
                self.writes += len(batch)
                following, self._queue = self._queue, []
                if following:
                    following[0].batch = following  # the first of them leads the next
                else:
                    self._leading = False
            for slot in batch:
                slot.batch = None
                if slot is not batch[0]:
                    slot.ready.release()
            if following:
                following[0].ready.release()
