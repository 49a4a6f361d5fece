"""Revocation stores: ``memory://``, ``sqlite:///…`` (default) and ``redis://…``.

:func:`open_store` opens the store a ``KC_SSO_STORE`` URL names; the URL's options are
listed, with their defaults and ranges, in :mod:`kc_sso_middleware.stores.options`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .base import RevocationListener, RevocationStore
from .memory import MemoryStore
from .model import Revocation, RevocationKind, SessionKeys, StoreStatus
from .options import parse_store_url

__all__ = [
    "MemoryStore",
    "Revocation",
    "RevocationKind",
    "RevocationListener",
    "RevocationStore",
    "SessionKeys",
    "StoreStatus",
    "open_store",
]


def open_store(
    url: str, *, timer: Callable[[], float] = time.time, clock_skew: float = 60.0
) -> RevocationStore:
    """Open the store a ``KC_SSO_STORE`` URL names (no I/O happens before ``start()``).

    Every option is checked here: an unknown or out-of-range one raises
    :class:`~kc_sso_middleware.errors.ConfigurationError` naming it.  ``timer`` is the
    clock entries' expiry is compared with (tests inject one).  ``clock_skew``
    (``Settings.clock_skew``): how far workers' clocks may differ; the Redis store purges
    expired entries no earlier than that.
    """
    parsed = parse_store_url(url)
    if parsed.scheme == "memory":
        return MemoryStore.from_parsed(parsed, timer=timer)
    if parsed.scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore.from_parsed(parsed, timer=timer)
    from .redis import RedisStore  # the redis extra is needed only here

    return RedisStore.from_parsed(parsed, clock_skew=clock_skew, timer=timer)
