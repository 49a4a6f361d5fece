"""starsessions' server-side sessions as an identity source (ASGI, asyncio I/O).

Used automatically by :class:`kc_sso_middleware.asgi.SSOMiddleware` when starsessions'
``SessionMiddleware`` sits inside it (``app.add_middleware(SSOMiddleware)`` added after
starsessions' middleware); the app stores the login in ``request.session`` at its login
callback as with cookie sessions.

Read exactly as starsessions reads it: the id is ``connection.cookies.get(cookie_name)``
(Starlette's parser, last value wins) and its data is
``serializer.deserialize(await store.read(id, lifetime=lifetime))`` with the middleware's
own store and serializer.  A revoked session is deleted with ``await store.remove(id)``
and its cookie expired the way starsessions expires it (same name, path, domain, flags).

At login: the source puts a thin wrapper around the middleware's store (every call goes
to the app's store unchanged), so when starsessions writes session data holding a Keycloak
login, the session is indexed at once.  Sessions found by a worker that did not see the
login are indexed when it first reads them.

Every store works for refusing and for deleting a revoked session when it is presented;
only ``RedisStore`` has the index, kept under the store's own prefix, that deletes
sessions the moment they are revoked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from starsessions import SessionMiddleware, SessionStore
from starsessions.serializers import Serializer

from .._effects import BackendCall
from ..settings import Settings
from ..stores.base import RevocationStore
from ._session_index import SessionIndex
from .cookie_views import StarletteView
from .serverside import Data, ServerSideSessionSource

__all__ = ["ObservedSerializer", "ObservedStore", "StarsessionsSource"]

logger = logging.getLogger("kc_sso_middleware")


class StarsessionsSource(ServerSideSessionSource):
    """Sessions of an ASGI app behind starsessions' ``SessionMiddleware``."""

    name = "starsessions"

    def __init__(
        self,
        settings: Settings,
        middleware: SessionMiddleware,
        *,
        store: RevocationStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``middleware`` is starsessions' ``SessionMiddleware`` instance the app runs."""
        backend = middleware.store
        if isinstance(backend, ObservedStore):  # a second source for the same middleware
            backend = backend.inner
        serializer = middleware.serializer
        if isinstance(serializer, ObservedSerializer):
            serializer = serializer.inner
        self._backend = backend
        self._serializer = serializer
        self._middleware = middleware
        self._cookie_path = middleware.cookie_path
        self._session_lifetime = middleware.lifetime
        super().__init__(
            settings,
            cookie_name=middleware.cookie_name,
            view=StarletteView(),
            expire=_expired_cookie(middleware),
            clock=clock,
            store=store,
            index=_index(backend, middleware, settings),
        )
        self._observed_serializer = ObservedSerializer(serializer)
        middleware.serializer = self._observed_serializer
        middleware.store = ObservedStore(backend, self)

    def _read(self, session_id: str) -> BackendCall[Data | None]:
        backend, serializer, lifetime = self._backend, self._serializer, self._session_lifetime

        async def read() -> Data | None:
            raw = await backend.read(session_id=session_id, lifetime=lifetime)
            return serializer.deserialize(raw) if raw else None

        return BackendCall(aio=read, what="read a starsessions session")

    def _delete(self, session_id: str) -> BackendCall[None]:
        backend = self._backend

        async def delete() -> None:
            await backend.remove(session_id)

        return BackendCall(aio=delete, what="delete a starsessions session")

    def made_from(self, data: bytes) -> Data | None:
        """The session dict starsessions just serialized into ``data``, if it was this."""
        return self._observed_serializer.made_from(data)

    def wrote(
        self, session_id: str, data: bytes, made_from: Data | None = None
    ) -> BackendCall[None] | None:
        """starsessions just wrote ``data`` under ``session_id``: learn what it holds; the
        index write to await when it holds a login new here (at login), else ``None``.

        ``made_from``, the dict those bytes were serialized from, spares decoding them:
        starsessions saves the session on every response, so this is synchronous and the
        common case (the same login saved again) costs a few look-ups.
        """
        try:
            decoded = made_from
            if decoded is None and data:
                decoded = self._serializer.deserialize(data)
            return self.observed(session_id, decoded)
        except Exception as exc:  # never break the app's response for the index
            logger.error("%s: could not index a session at login: %s", self.name, exc)
            return None

    async def index(self, index_write: BackendCall[None]) -> None:
        """Perform the index write :meth:`wrote` asked for (errors logged, never raised)."""
        try:
            if index_write.aio is not None:
                await index_write.aio()
        except Exception as exc:  # never break the app's response for the index
            logger.error("%s: could not index a session at login: %s", self.name, exc)

    def expiry_headers(self, root_path: str = "") -> tuple[str, ...]:
        # Without a cookie_path, starsessions sets its cookie on the request's root path.
        if root_path and not self._cookie_path:
            return (_expired_cookie(self._middleware, root_path),)
        return super().expiry_headers(root_path)

    def removed(self, session_id: str) -> None:
        """starsessions just removed ``session_id`` (the app emptied the session)."""
        self.observed(session_id, None)


class ObservedSerializer(Serializer):
    """The app's starsessions serializer, unchanged, remembering what it last serialized.

    starsessions serializes the session and hands the bytes to the store's ``write`` in
    one expression, with no ``await`` between: the store (:class:`ObservedStore`) asks for
    the dict behind the very bytes object it was given, at once, and gets it only if it
    is still the last one made.
    """

    def __init__(self, inner: Serializer) -> None:
        self.inner = inner
        self._last: tuple[bytes, Data] | None = None
        # Reads need no observing: the inner serializer's own method, without a layer.
        self.deserialize = inner.deserialize  # type: ignore[method-assign]

    def serialize(self, data: Any) -> bytes:
        raw = self.inner.serialize(data)
        self._last = (raw, data)
        return raw

    def deserialize(self, data: bytes) -> dict[str, Any]:
        return self.inner.deserialize(data)

    def made_from(self, raw: bytes) -> Data | None:
        last, self._last = self._last, None
        return last[1] if last is not None and last[0] is raw else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class ObservedStore(SessionStore):
    """The app's starsessions store, unchanged, telling the source what it writes."""

    def __init__(self, inner: SessionStore, source: StarsessionsSource) -> None:
        self.inner = inner
        self._source = source
        # Reads need no observing: the inner store's own method, without a layer between.
        self.read = inner.read  # type: ignore[method-assign]

    async def read(self, session_id: str, lifetime: int) -> bytes:
        return await self.inner.read(session_id=session_id, lifetime=lifetime)

    async def write(self, session_id: str, data: bytes, lifetime: int, ttl: int) -> str:
        made_from = self._source.made_from(data)  # before any await: see ObservedSerializer
        written = await self.inner.write(
            session_id=session_id, data=data, lifetime=lifetime, ttl=ttl
        )
        index_write = self._source.wrote(written, data, made_from)
        if index_write is not None:
            await self._source.index(index_write)
        return written

    async def remove(self, session_id: str) -> None:
        await self.inner.remove(session_id)
        self._source.removed(session_id)

    def __getattr__(self, name: str) -> Any:
        # Anything else the app reaches for on its store (its connection, its prefix).
        return getattr(self.inner, name)


def _expired_cookie(middleware: SessionMiddleware, root_path: str = "") -> str:
    """A ``Set-Cookie`` ending the session cookie the way starsessions ends it (on
    ``cookie_path``, else the request's root path, else ``/``)."""
    parts = [
        f"{middleware.cookie_name}=''",
        f"path={middleware.cookie_path or root_path or '/'}",
        "expires=Thu, 01 Jan 1970 00:00:00 GMT",
        middleware.security_flags,
    ]
    if middleware.cookie_domain:
        parts.append(f"domain={middleware.cookie_domain}")
    return "; ".join(parts)


def _index(
    backend: SessionStore, middleware: SessionMiddleware, settings: Settings
) -> SessionIndex | None:
    if not _is_redis_store(backend):
        logger.info(
            "starsessions: %s has no index: a revoked session is deleted when it is next "
            "presented, not at once",
            type(backend).__name__,
        )
        return None
    return SessionIndex(
        backend._connection,  # type: ignore[attr-defined]
        key=backend.prefix,  # type: ignore[attr-defined]
        decode=middleware.serializer.deserialize,
        asynchronous=True,
        lifetime=settings.max_session_lifetime,
        client_id=settings.client_id,
    )


def _is_redis_store(backend: SessionStore) -> bool:
    try:
        from starsessions.stores.redis import RedisStore
    except ImportError:  # pragma: no cover - redis is not installed
        return False
    return isinstance(backend, RedisStore)
