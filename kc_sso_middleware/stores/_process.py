"""Process hooks shared by the stores that follow a shared backend (SQLite, Redis).

After ``fork()`` (``gunicorn --preload``) each live store re-initialises itself in the
child: new connections, a fresh replica, its follower restarted.  At interpreter exit each
one unregisters its follower: servers rarely close() their app's store when a worker exits,
and without this every write in the next few seconds would wait ``ack_timeout`` for the
departed worker.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import weakref
from typing import Protocol

__all__ = ["forget", "track"]


class FollowingStore(Protocol):
    def _reinit_after_fork(self) -> None: ...

    def _unregister_at_exit(self) -> None: ...


_LIVE_STORES: weakref.WeakSet[FollowingStore] = weakref.WeakSet()


def track(store: FollowingStore) -> None:
    """Give ``store`` the fork and exit hooks until :func:`forget`."""
    _LIVE_STORES.add(store)


def forget(store: FollowingStore) -> None:
    _LIVE_STORES.discard(store)


def _reinit_stores_in_child() -> None:
    for store in list(_LIVE_STORES):
        store._reinit_after_fork()


def _unregister_stores_at_exit() -> None:
    for store in list(_LIVE_STORES):
        with contextlib.suppress(Exception):
            store._unregister_at_exit()


if hasattr(os, "register_at_fork"):  # POSIX only; Windows has no fork()
    os.register_at_fork(after_in_child=_reinit_stores_in_child)
atexit.register(_unregister_stores_at_exit)
