"""Pure ASGI adapter: ``app.add_middleware(SSOMiddleware)`` in Starlette and FastAPI.

Placement: the middleware must sit **outside** Starlette's ``SessionMiddleware``, so that it
sees the session cookie before the session middleware decodes it and can take a revoked
cookie out.  With ``add_middleware`` the last one added is the outermost, so add
``SSOMiddleware`` *after* ``SessionMiddleware``::

    settings = Settings.from_env()
    app.add_middleware(SessionMiddleware, secret_key=settings.session_secret)
    app.add_middleware(SSOMiddleware, settings=settings)

(The parsed secret for both: ``from_env`` drops blanks around a value, so the raw
variable would differ from it when it ends in a newline, and no cookie would verify.)
Placed inside it, every request raises :class:`~kc_sso_middleware.ConfigurationError`
saying so.  A websocket handshake is checked as a request is (Starlette gives websockets
the session too); ``lifespan`` is followed for the store's start and close.

Lifecycle: at ``lifespan`` startup the store starts (its schema, its first load, its
follower) in a worker thread, so the event loop never blocks on it; at shutdown the checks
still running beside requests are cancelled, then the store and the HTTP client close.
Under a server that sends no lifespan events the store starts on the first request, also
in a thread.  :meth:`SSOMiddleware.aclose` is the same shutdown for your own hooks and
tests.

A request whose session was just taken out carries ``scope["kc_sso.signed_out"]``: a dict
with ``reason``, ``at``, ``sid`` and ``origin`` (see :class:`~kc_sso_middleware.SignOut`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from functools import partial
from typing import Any

from ._http import PASS, Request, RequestHead, Response, Verdict, url_path
from ._runner import AsyncRunner
from .core import Responder, SSOCore
from .errors import ConfigurationError
from .events import Events
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
        events: Events | None = None,
    ) -> None:
        if _looks_like_wsgi(app):
            raise ConfigurationError(
                "kc_sso_middleware.asgi.SSOMiddleware wraps ASGI apps; this looks like a WSGI "
                "app (Flask?): use kc_sso_middleware.wsgi.SSOMiddleware(app.wsgi_app)"
            )
        self.app = app
        self.settings = settings if settings is not None else Settings.from_env()
        self.store = (
            store
            if store is not None
            else open_store(self.settings.store, clock_skew=self.settings.clock_skew)
        )
        if sources is None:
            sources = default_sources(self.settings, "starlette", clock, app=app, store=self.store)
        self.core = SSOCore(self.settings, self.store, sources, clock=clock, events=events)
        #: the events of this middleware: subscribe callbacks here (see events.Events)
        self.events = self.core.events
        self._runner = AsyncRunner(self.settings, self.store)
        self._routes = self.core.routes
        self._check = self.core.check
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
                self.core.prepare()
                self._started = True

    async def aclose(self) -> None:
        """Release the HTTP client and the store's background work."""
        await self._runner.aclose()
        await asyncio.to_thread(self.store.close)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Every request of the app comes through here: the common case (an HTTP request
        # to the app, its session not revoked) touches as little as possible.
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await self._websocket(scope, receive, send)
            elif scope["type"] == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        if not self._started:
            await self.startup()  # a server that sent no lifespan startup
        if "session" in scope:
            raise _misplaced()
        path: str = scope["path"]
        if path in self._routes or scope.get("root_path"):
            responder = self._own_path(scope)
            if responder is not None:
                await self._serve(responder, _head(scope["headers"]), scope, receive, send)
                return
        head = _head(scope["headers"])
        if head is _BARE and not self._check.reads_bare_requests:
            await self.app(scope, receive, send)  # no session to look at
            return
        verdict = self._check(head)
        if verdict is PASS:
            await self.app(scope, receive, send)
            return
        await self._carry_out(verdict, scope, receive, send, partial(_respond, send=send))

    async def _carry_out(
        self,
        verdict: Verdict,
        scope: Scope,
        receive: Receive,
        send: Send,
        refuse: Callable[[Response], Awaitable[None]],
    ) -> None:
        """The I/O the verdict still needs, its checks beside the request, then the app,
        ``refuse`` (the verdict's answer), or the app with the request rewritten."""
        while verdict.pending is not None:  # a source needed I/O to decide
            verdict = await self._runner.run(verdict.pending)
        if verdict.background:
            self._runner.beside(verdict.background)
        if verdict.passes:
            await self.app(scope, receive, send)
        elif verdict.response is not None:
            await refuse(verdict.response)
        else:
            await self._rewritten(verdict, scope, receive, send)

    def _own_path(self, scope: Scope) -> Responder | None:
        """The responder for the request's path below the app's root path, if any."""
        path: str = scope["path"]
        root_path: str = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]
        return self.core.route(path)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A websocket handshake is checked as a request is: Starlette's SessionMiddleware
        reads the session cookie for websockets too.  A refusal (401, 503) answers the
        handshake with that response where the server supports it, else rejects it."""
        if not self._started:
            await self.startup()
        if "session" in scope:
            raise _misplaced()
        verdict = self._check(_head(scope.get("headers", ())))
        refuse = partial(_refuse_handshake, scope=scope, receive=receive, send=send)
        await self._carry_out(verdict, scope, receive, send, refuse)

    async def _rewritten(
        self, verdict: Verdict, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Call the app with the verdict's Cookie header and its cookies added to the answer
        (the response's head, or a websocket's accept)."""
        if verdict.cookie is not None:  # None keeps every Cookie header (see Verdict)
            headers = [(n, v) for n, v in scope["headers"] if n != b"cookie"]
            if verdict.cookie:
                headers.append((b"cookie", verdict.cookie.encode("latin-1")))
            scope = dict(scope, headers=headers)
        else:
            scope = dict(scope)
        if verdict.signed_out is not None:
            scope[SIGNED_OUT_KEY] = verdict.signed_out.as_dict()
        added = [(b"set-cookie", value.encode("latin-1")) for value in verdict.set_cookies]

        async def send_with_cookies(message: Message) -> None:
            if added and message["type"] in ("http.response.start", "websocket.accept"):
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
            await _respond(early, send=send)
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
            root_path=url_path(scope.get("root_path", "")),
            head=head,
        )
        response = await self._runner.run(self.core.respond(responder, request))
        await _respond(response, send=send)


#: the head of a request with neither a Cookie nor an Authorization header
_BARE = RequestHead()
_READ_HEADERS = frozenset((b"cookie", b"authorization"))


def _head(raw_headers: Any) -> RequestHead:
    """The Cookie headers (all, in order) and the Authorization header(s), several joined
    with "," as Django's ASGI handler joins them (an app may read any of them)."""
    # A plain loop: every request comes through here.  One set look-up per name beats
    # two comparisons by a sixth (and building a dict of them by a third); most names are
    # neither.
    cookies: tuple[bytes, ...] | None = None
    authorization: bytes | None = None
    for name, value in raw_headers:
        if name in _READ_HEADERS:
            if name == b"cookie":
                cookies = (value,) if cookies is None else (*cookies, value)
            else:
                authorization = (
                    value if authorization is None else b"%b,%b" % (authorization, value)
                )
    if cookies is None:
        return _BARE if authorization is None else RequestHead((), authorization)
    return RequestHead(cookies, authorization)


def _raw_headers(response: Response) -> list[tuple[bytes, bytes]]:
    raw_headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in response.headers
    ]
    raw_headers.append((b"content-length", str(len(response.body)).encode()))
    return raw_headers


async def _respond(response: Response, *, send: Send, prefix: str = "http") -> None:
    """Send ``response``; ``prefix`` ``websocket.http`` answers a websocket handshake."""
    start = {"type": f"{prefix}.response.start", "status": response.status}
    await send({**start, "headers": _raw_headers(response)})
    await send({"type": f"{prefix}.response.body", "body": response.body})


def _misplaced() -> ConfigurationError:
    return ConfigurationError(
        "SSOMiddleware runs inside SessionMiddleware, too late to take out a revoked "
        "session cookie: add SSOMiddleware after SessionMiddleware "
        "(app.add_middleware(SSOMiddleware) as the last add_middleware call)"
    )


async def _refuse_handshake(response: Response, scope: Scope, receive: Receive, send: Send) -> None:
    """Refuse a websocket handshake: with ``response`` itself where the server speaks the
    ASGI ``websocket.http.response`` extension, else by closing before accepting (the
    server then answers 403)."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return  # the client went away first
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await _respond(response, send=send, prefix="websocket.http")
        return
    # 1008: policy violation (a revoked session); 1013: try again later (store down).
    await send({"type": "websocket.close", "code": 1013 if response.status == 503 else 1008})
