"""Pure ASGI adapter: ``app.add_middleware(SSOMiddleware)`` in Starlette and FastAPI.

Placement: the middleware must sit **outside** Starlette's ``SessionMiddleware``, so that it
sees the session cookie before the session middleware decodes it and can take a revoked
cookie out.  With ``add_middleware`` the last one added is the outermost, so add
``SSOMiddleware`` *after* ``SessionMiddleware``::

    app.add_middleware(SessionMiddleware, secret_key=os.environ["KC_SSO_SESSION_SECRET"])
    app.add_middleware(SSOMiddleware)

Placed inside it, the first request raises :class:`~kc_sso_middleware.ConfigurationError`
saying so.  Non-HTTP scopes (``lifespan``, ``websocket``) pass through untouched.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._io import AsyncRunner
from .core import PASS, Request, Response, Route, SSOCore
from .errors import ConfigurationError
from .settings import Settings
from .stores import RevocationStore, open_store

__all__ = ["SSOMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


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
        self.core = SSOCore(self.settings, self.store, native_format="starlette", clock=clock)
        self.runner = AsyncRunner(self.settings, self.store)
        self._expire = (b"set-cookie", self.core.expire_cookie_header[1].encode("latin-1"))
        self._started = False

    async def aclose(self) -> None:
        """Release the HTTP client and the store's background work (e.g. in tests)."""
        await self.runner.aclose()
        self.store.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._started:
            # Started on first use, not at import: a forking server must not inherit threads.
            self.store.start()
            self._started = True
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
        route = self.core.routes.get(path)
        if route is not None:
            await self._serve(route, path, scope, receive, send)
            return

        # Raw bytes go to the core: it caches by the exact header, so a repeat request
        # costs no decoding at all.  Several Cookie headers (HTTP/2) are joined with "; ".
        cookie: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"cookie":
                cookie = value if cookie is None else b"; ".join((cookie, value))
        verdict = self.core.check_session(cookie)
        if verdict is PASS:
            await self.app(scope, receive, send)
            return
        if verdict.response is not None:
            await self._respond(verdict.response, send)
            return

        assert cookie is not None
        headers = [(n, v) for n, v in scope["headers"] if n != b"cookie"]
        remaining = self.core.strip_cookie(cookie.decode("latin-1"))
        if remaining:
            headers.append((b"cookie", remaining.encode("latin-1")))
        scope = dict(scope, headers=headers)

        async def send_expiring_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = list(message.get("headers", []))
                if not any(
                    n.lower() == b"set-cookie"
                    and self.core.sets_session_cookie(v.decode("latin-1"))
                    for n, v in response_headers
                ):
                    response_headers.append(self._expire)
                message = {**message, "headers": response_headers}
            await send(message)

        await self.app(scope, receive, send_expiring_cookie)

    async def _serve(
        self, route: Route, path: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}; {value}" if name in headers else value
        method: str = scope["method"]
        body = b""
        if method == "POST":
            too_large = self.core.body_too_large(headers.get("content-length"))
            if too_large is not None:
                await self._respond(too_large, send)
                return
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
            path=path,
            query_string=scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
            body=body,
            scheme=scope.get("scheme", "http"),
            root_path=scope.get("root_path", ""),
        )
        response = await self.runner.run(self.core.handle(route, request))
        await self._respond(response, send)

    @staticmethod
    async def _respond(response: Response, send: Send) -> None:
        raw_headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in response.headers
        ]
        raw_headers.append((b"content-length", str(len(response.body)).encode()))
        await send(
            {"type": "http.response.start", "status": response.status, "headers": raw_headers}
        )
        await send({"type": "http.response.body", "body": response.body})
