"""Revocation stores: ``memory://``, ``sqlite:///…`` (default) and ``redis://…``."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from ..errors import ConfigurationError
from .base import Revocation, RevocationKind, RevocationStore, StoreStatus
from .memory import MemoryStore
from .replica import Replica

__all__ = [
    "MemoryStore",
    "Replica",
    "Revocation",
    "RevocationKind",
    "RevocationStore",
    "StoreStatus",
    "open_store",
]


def open_store(url: str) -> RevocationStore:
    """Open the store a ``KC_SSO_STORE`` URL names (no I/O happens before ``start()``)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if parts.scheme == "memory":
        max_entries = query.get("max_entries")
        try:
            return MemoryStore(int(max_entries[0])) if max_entries else MemoryStore()
        except ValueError:
            raise ConfigurationError(
                f"KC_SSO_STORE={url!r}: max_entries must be a whole number"
            ) from None
    if parts.scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore.from_url(url)
    if parts.scheme in {"redis", "rediss", "redis+sentinel", "unix"}:
        from .redis import RedisStore

        return RedisStore.from_url(url)
    raise ConfigurationError(
        f"KC_SSO_STORE={url!r} has an unknown scheme; accepted: memory://, "
        "sqlite:///path/file.db, redis://host:port/db, rediss://…, redis+sentinel://…"
    )
