"""Pure ASGI adapter: ``app.add_middleware(SSOMiddleware)`` in Starlette and FastAPI.

Placement: the middleware must sit **outside** Starlette's ``SessionMiddleware``, so that it
sees the session cookie before the session middleware decodes it and can take a revoked
cookie out.  With ``add_middleware`` the last one added is the outermost, so add
``SSOMiddleware`` *after* ``SessionMiddleware``::

    app.add_middleware(SessionMiddleware, secret_key=os.environ["KC_SSO_SESSION_SECRET"])
    app.add_middleware(SSOMiddleware)

Placed inside it, every request raises :class:`~kc_sso_middleware.ConfigurationError`
saying so.  Non-HTTP scopes (``websocket``) pass through untouched.

Lifecycle: at ``lifespan`` startup the store starts (its schema, its first load, its
follower) in a worker thread, so the event loop never blocks on it; at shutdown the store
and the HTTP client close.  Under a server that sends no lifespan events the store starts
on the first request, also in a thread.  :meth:`SSOMiddleware.aclose` is the same shutdown
for your own hooks and tests.

A request whose session was just taken out carries ``scope["kc_sso.signed_out"]``: a dict
with ``reason``, ``at``, ``sid`` and ``origin`` (see :class:`~kc_sso_middleware.SignOut`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from ._http import PASS, Request, RequestHead, Response, Verdict
from ._runner import AsyncRunner
from .core import Responder, SSOCore
from .errors import ConfigurationError
from .settings import Settings
from .sources import IdentitySource, default_sources
from .stores import RevocationStore, open_store

__all__ = ["SIGNED_OUT_KEY", "SSOMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: where a request whose session was just taken out says why
SIGNED_OUT_KEY = "kc_sso.signed_out"


def _looks_like_wsgi(app: object) -> bool:
    # Flask and Werkzeug apps expose wsgi_app; an ASGI app never does.
    return hasattr(app, "wsgi_app")


class SSOMiddleware:
    """Single sign-out for an ASGI app (Starlette, FastAPI)."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings | None = None,
        *,
        store: RevocationStore | None = None,
        sources: Sequence[IdentitySource] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if _looks_like_wsgi(app):
            raise ConfigurationError(
                "kc_sso_middleware.asgi.SSOMiddleware wraps ASGI apps; this looks like a WSGI "
                "app (Flask?): use kc_sso_middleware.wsgi.SSOMiddleware(app.wsgi_app)"
            )
        self.app = app
        self.settings = settings if settings is not None else Settings.from_env()
        self.store = store if store is not None else open_store(self.settings.store)
        if sources is None:
            sources = default_sources(self.settings, "starlette", clock)
        self.core = SSOCore(self.settings, self.store, sources, clock=clock)
        self._runner = AsyncRunner(self.settings, self.store)
        self._started = False
        self._start_lock: asyncio.Lock | None = None

    async def startup(self) -> None:
        """Start the store (in a worker thread); idempotent."""
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if not self._started:
                await asyncio.to_thread(self.store.start)
                self._started = True

    async def aclose(self) -> None:
        """Release the HTTP client and the store's background work."""
        await self._runner.aclose()
        await asyncio.to_thread(self.store.close)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind != "http":
            await self.app(scope, receive, send)
            return
        if not self._started:
            await self.startup()  # a server that sent no lifespan startup
        if "session" in scope:
            raise ConfigurationError(
                "SSOMiddleware runs inside SessionMiddleware, too late to take out a revoked "
                "session cookie: add SSOMiddleware after SessionMiddleware "
                "(app.add_middleware(SSOMiddleware) as the last add_middleware call)"
            )
        path: str = scope["path"]
        root_path: str = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]
        responder = self.core.route(path)
        head = _head(scope["headers"])
        if responder is not None:
            await self._serve(responder, head, scope, receive, send)
            return
        verdict = self.core.check(head)
        if verdict is PASS:
            await self.app(scope, receive, send)
        elif verdict.response is not None:
            await _respond(verdict.response, send)
        else:
            await self._rewritten(verdict, scope, receive, send)

    async def _rewritten(
        self, verdict: Verdict, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Call the app with the verdict's Cookie header and its cookies added to the answer."""
        headers = [(n, v) for n, v in scope["headers"] if n != b"cookie"]
        if verdict.cookie:
            headers.append((b"cookie", verdict.cookie.encode("latin-1")))
        scope = dict(scope, headers=headers)
        if verdict.signed_out is not None:
            scope[SIGNED_OUT_KEY] = verdict.signed_out.as_dict()
        added = [(b"set-cookie", value.encode("latin-1")) for value in verdict.set_cookies]

        async def send_with_cookies(message: Message) -> None:
            if added and message["type"] == "http.response.start":
                response_headers = list(message.get("headers", []))
                if not any(
                    n.lower() == b"set-cookie"
                    and self.core.sets_cookie(v.decode("latin-1"), verdict)
                    for n, v in response_headers
                ):
                    response_headers.extend(added)
                message = {**message, "headers": response_headers}
            await send(message)

        await self.app(scope, receive, send_with_cookies)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_starting_store() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
            return message

        async def send_closing_store(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.aclose()
            await send(message)

        await self.app(scope, receive_starting_store, send_closing_store)

    async def _serve(
        self, responder: Responder, head: RequestHead, scope: Scope, receive: Receive, send: Send
    ) -> None:
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            if name not in headers:  # the first of repeated headers, as Starlette reads it
                headers[name] = raw_value.decode("latin-1")
        method: str = scope["method"]
        early = self.core.precheck(responder, method, headers.get("content-length"))
        if early is not None:
            await _respond(early, send)
            return
        body = b""
        if method == "POST":
            limit = self.settings.backchannel_max_body
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > limit:
                    break  # the core answers 413; the rest is never read
        request = Request(
            method=method,
            query_string=scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
            body=body,
            scheme=scope.get("scheme", "http"),
            root_path=scope.get("root_path", ""),
            head=head,
        )
        response = await self._runner.run(self.core.respond(responder, request))
        await _respond(response, send)


def _head(raw_headers: Any) -> RequestHead:
    cookies: list[bytes] = []
    authorization: bytes | None = None
    for name, value in raw_headers:
        if name == b"cookie":
            cookies.append(value)
        elif name == b"authorization" and authorization is None:
            authorization = value
    return RequestHead(tuple(cookies), authorization)


async def _respond(response: Response, send: Send) -> None:
    raw_headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in response.headers
    ]
    raw_headers.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": response.body})
