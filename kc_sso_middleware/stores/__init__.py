"""TEMPORARY (replaced by the stores branch)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from ..errors import ConfigurationError
from .base import RevocationStore
from .memory import MemoryStore
from .model import Revocation, RevocationKind, SessionKeys, StoreStatus

__all__ = [
    "MemoryStore",
    "Revocation",
    "RevocationKind",
    "RevocationStore",
    "SessionKeys",
    "StoreStatus",
    "open_store",
]


def open_store(url: str) -> RevocationStore:
    parts = urlsplit(url)
    if parts.scheme == "memory":
        query = parse_qs(parts.query)
        return (
            MemoryStore(int(query["max_entries"][0])) if "max_entries" in query else MemoryStore()
        )
    raise ConfigurationError(f"KC_SSO_STORE={url!r}: not available on this branch yet")
