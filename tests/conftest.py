"""Shared fixtures: a stand-in OP on loopback and one harness per adapter.

The behaviour tables run through :class:`Harness` for both the ASGI adapter (a Starlette app
with ``SessionMiddleware``) and the WSGI adapter (a Flask app), so the two cannot drift.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal, TypeVar

import anyio.from_thread
import httpx
import pytest
from flask import Flask, jsonify, session
from joserfc import jws
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kc_sso_middleware import Settings
from kc_sso_middleware import asgi as asgi_adapter
from kc_sso_middleware import wsgi as wsgi_adapter
from kc_sso_middleware.events import Events
from kc_sso_middleware.stores import MemoryStore, RevocationStore
from kc_sso_middleware.testing import StandInOP, make_session_cookie, mint_jwt

SESSION_SECRET = "test-session-secret"
CLIENT_ID = "app"
CLIENT_SECRET = "app-secret"


def services_required() -> bool:
    """In CI (or with KC_SSO_REQUIRE_SERVICES=1) a missing Keycloak, Redis or browser fails."""
    return bool(os.environ.get("CI")) or os.environ.get("KC_SSO_REQUIRE_SERVICES") == "1"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Where services are required, any skipped test turns the run red: nothing skips silently."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if services_required() and skipped and exitstatus == 0:
        reporter.write_line(
            f"FAILED: {len(skipped)} test(s) skipped while services are required (CI)", red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def op() -> Iterator[StandInOP]:
    with StandInOP() as stand_in:
        stand_in.register_client(CLIENT_ID, CLIENT_SECRET)
        yield stand_in


def make_settings(op: StandInOP, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "issuer": op.issuer,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "session_secret": SESSION_SECRET,
        "store": "memory://",
    }
    values.update(overrides)
    return Settings(**values)


class Clock:
    """An injectable clock that tests move by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _starlette_app() -> Starlette:
    async def show(request: Request) -> JSONResponse:
        return JSONResponse(
            {"session": dict(request.session), "cookie": request.headers.get("cookie")}
        )

    async def login_again(request: Request) -> JSONResponse:
        request.session["fresh"] = True
        return JSONResponse({"ok": True})

    async def api(request: Request) -> JSONResponse:
        return JSONResponse({"authorization": request.headers.get("authorization")})

    async def marker(request: Request) -> JSONResponse:
        return JSONResponse({"signed_out": request.scope.get("kc_sso.signed_out")})

    return Starlette(
        routes=[
            Route("/", show),
            Route("/login-again", login_again),
            Route("/api", api),
            Route("/marker", marker),
        ],
        middleware=[Middleware(SessionMiddleware, secret_key=SESSION_SECRET)],
    )


def _flask_app() -> Flask:
    app = Flask("behaviour")
    app.secret_key = SESSION_SECRET

    @app.get("/")
    def show() -> Any:
        from flask import request

        return jsonify(session=dict(session), cookie=request.headers.get("Cookie"))

    @app.get("/login-again")
    def login_again() -> Any:
        session["fresh"] = True
        return jsonify(ok=True)

    @app.get("/api")
    def api() -> Any:
        from flask import request

        return jsonify(authorization=request.headers.get("Authorization"))

    @app.get("/marker")
    def marker() -> Any:
        from flask import request

        return jsonify(signed_out=request.environ.get("kc_sso.signed_out"))

    return app


class ServerLikeWSGITransport(httpx.WSGITransport):
    """httpx's WSGI transport, handing header values to the app as latin-1 text as WSGI
    servers do (PEP 3333; gunicorn, Werkzeug's server), where httpx's own fails on any
    byte beyond ASCII: attacks send such bytes."""

    _MARK = "x-latin1:"

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(app=self._restore, **kwargs)
        self._app = app

    def _restore(self, environ: dict[str, Any], start_response: Any) -> Any:
        for key, value in list(environ.items()):
            if key.startswith("HTTP_") and value.startswith(self._MARK):
                environ[key] = bytes.fromhex(value[len(self._MARK) :]).decode("latin-1")
        return self._app(environ, start_response)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.headers = httpx.Headers(
            [
                (key, value if value.isascii() else self._MARK.encode() + value.hex().encode())
                for key, value in request.headers.raw
            ]
        )
        return super().handle_request(request)


T = TypeVar("T")


def sso_middleware(node: Any) -> asgi_adapter.SSOMiddleware:
    """The SSO middleware inside a built Starlette middleware stack."""
    while not isinstance(node, asgi_adapter.SSOMiddleware):
        node = node.app
    return node


class PortalClient:
    """A blocking facade over ``httpx.AsyncClient`` on one event loop kept for its lifetime.

    One loop matters: the ASGI adapter's async HTTP client must not hop between loops.
    """

    def __init__(self, app: Any, base_url: str) -> None:
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            return await self._client.request(method, url, **kwargs)

        return self._portal.call(call)

    @property
    def cookies(self) -> httpx.Cookies:
        return self._client.cookies

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def call(self, function: Callable[[], Awaitable[T]]) -> T:
        """Run ``function`` on this client's event loop."""
        return self._portal.call(function)

    def close(self) -> None:
        self._portal.call(self._client.aclose)
        self._portal_cm.__exit__(None, None, None)


class Harness:
    """One adapter around a small real app, driven in-process over httpx."""

    def __init__(
        self,
        kind: Literal["asgi", "wsgi"],
        settings: Settings,
        *,
        store: RevocationStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kind = kind
        self.settings = settings
        self.store = store if store is not None else MemoryStore()
        #: the middleware's events (subscribe callbacks in tests)
        self.events = Events(settings.client_id)
        self.clock = clock
        self.format: Literal["flask", "starlette"] = "starlette" if kind == "asgi" else "flask"
        if kind == "asgi":
            starlette_app = _starlette_app()
            starlette_app.add_middleware(
                asgi_adapter.SSOMiddleware,
                settings=settings,
                store=self.store,
                clock=clock,
                events=self.events,
            )
            self.app: Any = starlette_app
            self.client: PortalClient | httpx.Client = PortalClient(
                starlette_app, "http://app.test"
            )
        else:
            flask_app = _flask_app()
            flask_app.wsgi_app = wsgi_adapter.SSOMiddleware(  # type: ignore[method-assign]
                flask_app.wsgi_app, settings, store=self.store, clock=clock, events=self.events
            )
            self.app = flask_app
            self.client = httpx.Client(
                transport=ServerLikeWSGITransport(flask_app), base_url="http://app.test"
            )

    def close(self) -> None:
        """Shut down as a server does: the middleware's HTTP client and checks first (the
        ASGI one on its own loop, before the loop ends), then the client driving it."""
        built = getattr(self.app, "middleware_stack", None)  # None before a first request
        if isinstance(self.client, PortalClient) and built is not None:
            self.client.call(sso_middleware(built)._runner.aclose)
        self.client.close()

    def id_token(
        self,
        op: StandInOP,
        *,
        sid: str = "session-1",
        sub: str = "user-1",
        auth_time: float | None = None,
        issued_at: float | None = None,
    ) -> str:
        now = int(self.clock())
        if issued_at is None:  # by default issued at login, like the token an app stores
            issued_at = auth_time if auth_time is not None else now
        return mint_jwt(
            op.key,
            {
                "iss": op.issuer,
                "aud": CLIENT_ID,
                "sub": sub,
                "sid": sid,
                "iat": int(issued_at),
                "exp": now + 300,
                "auth_time": int(auth_time if auth_time is not None else now),
            },
        )

    def session_cookie(self, op: StandInOP, **claims: Any) -> str:
        """A signed session holding an ID token, in this adapter's framework format."""
        extra = claims.pop("extra", {})
        session_data = {"id_token": self.id_token(op, **claims), **extra}
        return make_session_cookie(SESSION_SECRET, session_data, format=self.format)

    def tokens_cookie(self, tokens: dict[str, Any]) -> str:
        """A signed session holding a token response's ID and refresh tokens."""
        session_data = {"id_token": tokens["id_token"], "refresh_token": tokens["refresh_token"]}
        return make_session_cookie(SESSION_SECRET, session_data, format=self.format)

    def refused_for_good(self, cookie: str) -> bool:
        """Whether ``cookie``'s session is refused (a 503 is a wait for confirmation)."""
        response = self.get("/", cookie)
        if response.status_code == 503:
            return False
        assert response.status_code == 200, response.text
        return bool(response.json()["session"] == {})

    def get(self, path: str, cookie: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if cookie is not None:
            headers["Cookie"] = f"{self.settings.session_cookie}={cookie}"
        return self.client.get(path, headers=headers, **kwargs)

    def seen_session(self, cookie: str) -> dict[str, Any]:
        """The session the app saw for a request carrying ``cookie``."""
        response = self.get("/", cookie)
        assert response.status_code == 200, response.text
        session_data: dict[str, Any] = response.json()["session"]
        return session_data


HarnessFactory = Callable[..., Harness]


@pytest.fixture(params=["asgi", "wsgi"])
def make_harness(request: pytest.FixtureRequest, op: StandInOP) -> Iterator[HarnessFactory]:
    """Build harnesses for the parametrised adapter; all are closed afterwards."""
    built: list[Harness] = []

    def factory(
        store: RevocationStore | None = None,
        clock: Callable[[], float] = time.time,
        **overrides: Any,
    ) -> Harness:
        harness = Harness(request.param, make_settings(op, **overrides), store=store, clock=clock)
        built.append(harness)
        return harness

    yield factory
    for harness in built:
        harness.close()


def direct_grant(op: StandInOP, username: str = "erin") -> dict[str, Any]:
    """Tokens of a fresh OP session from a password grant (access, ID and refresh token)."""
    form = {"grant_type": "password", "username": username, "password": "x", "scope": "openid"}
    return _token_request(op, form)


def refresh_grant(op: StandInOP, refresh_token: str) -> dict[str, Any]:
    """What an app does to keep its session alive: the refresh token grant."""
    return _token_request(op, {"grant_type": "refresh_token", "refresh_token": refresh_token})


def _token_request(op: StandInOP, form: dict[str, str]) -> dict[str, Any]:
    response = httpx.post(
        f"{op.issuer}/protocol/openid-connect/token",
        data={**form, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
    )
    response.raise_for_status()
    tokens: dict[str, Any] = response.json()
    return tokens


def session_id_of(tokens: dict[str, Any]) -> str:
    """The ``sid`` of the ID token in a token response."""
    sid: str = json.loads(jws.extract_compact(tokens["id_token"].encode()).payload)["sid"]
    return sid


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail the test naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting until {what}")
        time.sleep(0.02)


def admin_token(op: StandInOP, kind: str, **claims: Any) -> str:
    """A legacy admin-URL token of action ``kind``; a claim given as ``None`` is left out."""
    payload = {
        "id": str(uuid.uuid4()),
        "expiration": int(time.time()) + 30,
        "resource": CLIENT_ID,
        "action": kind,
        "notBefore": 0,
    }
    payload.update(claims)
    return mint_jwt(op.key, {k: v for k, v in payload.items() if v is not None}, {"typ": "JWT"})


def post_admin(harness: Harness, path: str, body: str) -> httpx.Response:
    """POST ``body`` to an admin-URL path as Keycloak does (a bare JWS, text/plain)."""
    return harness.client.post(path, content=body, headers={"Content-Type": "text/plain"})
