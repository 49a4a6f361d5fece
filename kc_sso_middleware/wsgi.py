"""WSGI adapter: ``app.wsgi_app = SSOMiddleware(app.wsgi_app)`` in Flask.

Wrapping ``app.wsgi_app`` puts the middleware outside Flask's session handling, which is
where it must be: it reads the signed session cookie before Flask does, takes a revoked one
out of the request and expires it in the response.  Behind a reverse proxy, apply
``werkzeug.middleware.proxy_fix.ProxyFix`` *inside* or *outside* as usual: the middleware
only uses the scheme and ``Host`` to build the default post-logout redirect URI.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from types import TracebackType
from typing import Any

from werkzeug.datastructures import EnvironHeaders
from werkzeug.wsgi import get_input_stream

from ._io import SyncRunner
from .core import PASS, Request, Response, Route, SSOCore
from .errors import ConfigurationError
from .settings import Settings
from .stores import RevocationStore, open_store

__all__ = ["SSOMiddleware"]

ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class SSOMiddleware:
    """Single sign-out for a WSGI app (Flask)."""

    def __init__(
        self,
        app: WSGIApp,
        settings: Settings | None = None,
        *,
        store: RevocationStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(
            getattr(app, "__call__", None)  # noqa: B004 - we inspect the method itself
        ):
            raise ConfigurationError(
                "kc_sso_middleware.wsgi.SSOMiddleware wraps WSGI apps; this is an ASGI app: "
                "use kc_sso_middleware.asgi.SSOMiddleware (app.add_middleware(SSOMiddleware))"
            )
        self.app = app
        self.settings = settings if settings is not None else Settings.from_env()
        self.store = store if store is not None else open_store(self.settings.store)
        self.core = SSOCore(self.settings, self.store, native_format="flask", clock=clock)
        self.runner = SyncRunner(self.settings, self.store)
        self._started = False

    def close(self) -> None:
        """Release the HTTP client and the store's background work (e.g. in tests)."""
        self.runner.close()
        self.store.close()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if not self._started:
            # Started on first use, not at import: a forking server must not inherit threads.
            self.store.start()
            self._started = True
        route = self.core.routes.get(environ.get("PATH_INFO", ""))
        if route is not None:
            return self._serve(route, environ, start_response)

        cookie = environ.get("HTTP_COOKIE")
        verdict = self.core.check_session(cookie)
        if verdict is PASS:
            return self.app(environ, start_response)
        if verdict.response is not None:
            return self._respond(verdict.response, start_response)

        assert cookie is not None
        environ = dict(environ)
        remaining = self.core.strip_cookie(cookie)
        if remaining:
            environ["HTTP_COOKIE"] = remaining
        else:
            environ.pop("HTTP_COOKIE", None)
        expire = self.core.expire_cookie_header

        def start_expiring_cookie(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            if not any(
                name.lower() == "set-cookie" and self.core.sets_session_cookie(value)
                for name, value in headers
            ):
                headers = [*headers, expire]
            return start_response(status, headers, exc_info)

        return self.app(environ, start_expiring_cookie)

    def _serve(
        self, route: Route, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        headers = {name.lower(): value for name, value in EnvironHeaders(environ).items()}
        method = environ.get("REQUEST_METHOD", "GET").upper()
        body = b""
        if method == "POST":
            too_large = self.core.body_too_large(headers.get("content-length"))
            if too_large is not None:
                return self._respond(too_large, start_response)
            limit = self.settings.backchannel_max_body
            body = get_input_stream(environ, safe_fallback=True).read(limit + 1)
        request = Request(
            method=method,
            path=environ.get("PATH_INFO", ""),
            query_string=environ.get("QUERY_STRING", ""),
            headers=headers,
            body=body,
            scheme=environ.get("wsgi.url_scheme", "http"),
            root_path=environ.get("SCRIPT_NAME", ""),
        )
        return self._respond(self.runner.run(self.core.handle(route, request)), start_response)

    @staticmethod
    def _respond(response: Response, start_response: StartResponse) -> Iterable[bytes]:
        headers = [*response.headers, ("Content-Length", str(len(response.body)))]
        start_response(f"{response.status} {HTTPStatus(response.status).phrase}", headers)
        return [response.body]
