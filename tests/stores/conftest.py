"""Fixtures of the store tests: every store kind on a fresh location, real Redis servers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devtools.redis_server import RedisServer
from kc_sso_middleware.stores import RevocationStore, open_store
from kc_sso_middleware.stores.sqlite import SQLiteStore


def with_options(url: str, **options: object) -> str:
    """``url`` with query options appended (a repeated option: the last one wins)."""
    if not options:
        return url
    extra = "&".join(f"{name}={value}" for name, value in options.items())
    return f"{url}{'&' if '?' in url else '?'}{extra}"


@dataclass
class Backend:
    """Opens started stores of one kind on one shared location; closes them afterwards."""

    name: str
    url: str
    #: whether two stores opened here share their revocations
    shared: bool
    opened: list[RevocationStore] = field(default_factory=list)

    def open(
        self, timer: Callable[[], float] = time.time, *, start: bool = True, **options: object
    ) -> RevocationStore:
        store = open_store(with_options(self.url, **options), timer=timer)
        self.opened.append(store)
        if start:
            store.start()
        return store

    def close(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the run's tests (each test has its own prefix)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, which the test may kill and restart."""
    with RedisServer() as server:
        yield server


def new_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}:"


def _backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if kind == "memory":
        return Backend(kind, "memory://", shared=False)
    if kind == "sqlite":
        return Backend(
            kind, f"sqlite:///{tmp_path / 'revocations.db'}?poll_interval=0.002", shared=True
        )
    server: RedisServer = request.getfixturevalue("redis_server")
    return Backend(kind, f"{server.url}?prefix={new_prefix()}", shared=True)


MEMORY = pytest.param("memory", id="memory")
SQLITE = pytest.param("sqlite", id="sqlite")
REDIS = pytest.param("redis", id="redis", marks=pytest.mark.redis)


@pytest.fixture(params=[MEMORY, SQLITE, REDIS])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Every store kind."""
    built = _backend(request.param, request, tmp_path)
    yield built
    built.close()


@pytest.fixture(params=[SQLITE, REDIS])
def shared_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The store kinds shared between processes."""
    built = _backend(request.param, request, tmp_path)
    yield built
    built.close()


@pytest.fixture
def stores() -> Iterator[list[SQLiteStore]]:
    """SQLite stores a test opens (with :func:`._helpers.open_started`); closed afterwards."""
    opened: list[SQLiteStore] = []
    yield opened
    for store in opened:
        store.close()
