"""WSGI adapter: ``app.wsgi_app = SSOMiddleware(app.wsgi_app)`` in Flask.

Wrapping ``app.wsgi_app`` puts the middleware outside Flask's session handling, which is
where it must be: it reads the signed session cookie (with Werkzeug's own parser) before
Flask does, takes a revoked or unverifiable one out of the request and expires it in the
response.  Behind a reverse proxy apply ``werkzeug.middleware.proxy_fix.ProxyFix`` *outside*
this middleware (``app.wsgi_app = ProxyFix(SSOMiddleware(app.wsgi_app))``), so that the
scheme and ``Host`` it builds the default post-logout redirect URI and the same-origin check
of the logout path from are the public ones.

The store starts on the first request, in the worker (after a pre-forking server forked);
:meth:`SSOMiddleware.close` stops it, e.g. from ``atexit`` or gunicorn's ``worker_exit``.
A request whose session was just taken out carries ``environ["kc_sso.signed_out"]``: a dict
with ``reason``, ``at``, ``sid`` and ``origin``.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from http import HTTPStatus
from types import TracebackType
from typing import Any

from werkzeug.datastructures import EnvironHeaders
from werkzeug.wsgi import get_input_stream

from ._http import PASS, Request, RequestHead, Response, Verdict, url_path
from ._runner import SyncRunner
from .core import Responder, SSOCore
from .errors import ConfigurationError
from .events import Events
from .settings import Settings
from .sources import IdentitySource, default_sources
from .stores import RevocationStore, open_store

__all__ = ["SIGNED_OUT_KEY", "SSOMiddleware"]

ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

#: where a request whose session was just taken out says why
SIGNED_OUT_KEY = "kc_sso.signed_out"


class SSOMiddleware:
    """Single sign-out for a WSGI app (Flask)."""

    def __init__(
        self,
        app: WSGIApp,
        settings: Settings | None = None,
        *,
        store: RevocationStore | None = None,
        sources: Sequence[IdentitySource] | None = None,
        clock: Callable[[], float] = time.time,
        events: Events | None = None,
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
        self.store = (
            store
            if store is not None
            else open_store(self.settings.store, clock_skew=self.settings.clock_skew)
        )
        if sources is None:
            sources = default_sources(self.settings, "flask", clock, app=app, store=self.store)
        self.core = SSOCore(self.settings, self.store, sources, clock=clock, events=events)
        #: the events of this middleware: subscribe callbacks here (see events.Events)
        self.events = self.core.events
        self._runner = SyncRunner(self.settings, self.store)
        self._routes = self.core.routes
        self._check = self.core.check
        self._started = False
        self._start_lock = threading.Lock()

    def startup(self) -> None:
        """Start the store; idempotent (the first request does it when nobody did)."""
        with self._start_lock:
            if not self._started:
                self.store.start()
                self.core.prepare()
                self._started = True

    def close(self) -> None:
        """Release the HTTP client and the store's background work, once the checks
        running beside requests ended (within ``KC_SSO_HTTP_TIMEOUT``)."""
        self._runner.close()
        self.store.close()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if not self._started:
            # On first use, not at import: a forking server must not inherit threads.
            self.startup()
        cookie = environ.get("HTTP_COOKIE")
        authorization = environ.get("HTTP_AUTHORIZATION")
        path: str = environ.get("PATH_INFO", "")
        if not path.isascii():
            # PEP 3333: the path's bytes as latin-1 text; Werkzeug routes on them as UTF-8.
            path = path.encode("latin-1", "replace").decode("utf-8", "replace")
        responder = self._routes.get(path)
        bare = responder is None and cookie is None and authorization is None
        if bare and not self._check.reads_bare_requests:
            return self.app(environ, start_response)  # no session to look at
        head = RequestHead((cookie,) if cookie is not None else (), authorization)
        if responder is not None:
            return self._serve(responder, head, environ, start_response)
        verdict = self._check(head)
        while verdict.pending is not None:  # a source needed I/O to decide
            verdict = self._runner.run(verdict.pending)
        if verdict.background:
            self._runner.beside(verdict.background)
        if verdict is PASS or verdict.passes:
            return self.app(environ, start_response)
        if verdict.response is not None:
            return _respond(verdict.response, start_response)
        return self._rewritten(verdict, environ, start_response)

    def _rewritten(
        self, verdict: Verdict, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        """Call the app with the verdict's Cookie header and its cookies added to the answer."""
        environ = dict(environ)
        if verdict.cookie is not None:
            if verdict.cookie:
                environ["HTTP_COOKIE"] = verdict.cookie
            else:
                environ.pop("HTTP_COOKIE", None)
        if verdict.signed_out is not None:
            environ[SIGNED_OUT_KEY] = verdict.signed_out.as_dict()
        added = [("Set-Cookie", value) for value in verdict.set_cookies]
        if not added:
            return self.app(environ, start_response)

        def start_with_cookies(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            if not any(
                name.lower() == "set-cookie" and self.core.sets_cookie(value, verdict)
                for name, value in headers
            ):
                headers = [*headers, *added]
            return start_response(status, headers, exc_info)

        return self.app(environ, start_with_cookies)

    def _serve(
        self,
        responder: Responder,
        head: RequestHead,
        environ: dict[str, Any],
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        headers = _Headers(environ)
        method = environ.get("REQUEST_METHOD", "GET")  # case-sensitive (RFC 9110 §9.1)
        early = self.core.precheck(responder, method, headers.get("content-length"))
        if early is not None:
            return _respond(early, start_response)
        body = b""
        if method == "POST":
            limit = self.settings.backchannel_max_body
            body = get_input_stream(environ, safe_fallback=True).read(limit + 1)
        request = Request(
            method=method,
            query_string=environ.get("QUERY_STRING", ""),
            headers=headers,
            body=body,
            scheme=environ.get("wsgi.url_scheme", "http"),
            # PEP 3333: the path's bytes as latin-1 text
            root_path=url_path(environ.get("SCRIPT_NAME", "").encode("latin-1", "replace")),
            head=head,
        )
        return _respond(self._runner.run(self.core.respond(responder, request)), start_response)


#: the two headers PEP 3333 keeps without the HTTP_ prefix
_UNPREFIXED = frozenset({"CONTENT_TYPE", "CONTENT_LENGTH"})


class _Headers(Mapping[str, str]):
    """The request's headers by lower-case name, read from the environ when asked, as
    Werkzeug's ``EnvironHeaders`` reads them: the core asks for two or three, and listing
    every one costs a back-channel logout more than its own claim checks do."""

    __slots__ = ("_environ",)

    def __init__(self, environ: dict[str, Any]) -> None:
        self._environ = environ

    def __getitem__(self, name: str) -> str:
        key = name.upper().replace("-", "_")
        value = self._environ.get(key if key in _UNPREFIXED else f"HTTP_{key}")
        if not isinstance(value, str) or (not value and key in _UNPREFIXED):
            raise KeyError(name)  # an empty CONTENT_TYPE is none (as Werkzeug lists them)
        return value

    def __iter__(self) -> Iterator[str]:
        return (name.lower() for name, _ in EnvironHeaders(self._environ).items())

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _respond(response: Response, start_response: StartResponse) -> Iterable[bytes]:
    headers = [*response.headers, ("Content-Length", str(len(response.body)))]
    start_response(f"{response.status} {HTTPStatus(response.status).phrase}", headers)
    return [response.body]
