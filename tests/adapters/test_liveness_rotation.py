"""Liveness and Keycloak's refresh token rotation ("Revoke Refresh Token", max reuse 0).

With rotation on, Keycloak answers the introspection of a refresh token the app has already
used with ``active: false`` (RefreshTokenIntrospectionProvider.verifyTokenReuse ->
TokenManager.validateTokenReuse: "Maximum allowed refresh token reuse exceeded", "Stale
token") although the Keycloak session is alive and the app holds the newer token.  Such an
answer, about a superseded token, must not end the Keycloak session in every app (a sid
revocation also refuses every new SSO login into that still-alive session: a login loop).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio
from flask import Flask, jsonify, session
from flask_session import Session
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starsessions import SessionAutoloadMiddleware
from starsessions import SessionMiddleware as StarsessionsMiddleware
from starsessions.stores.redis import RedisStore

from kc_sso_middleware import asgi as asgi_adapter
from kc_sso_middleware import events as ev
from kc_sso_middleware import wsgi as wsgi_adapter
from kc_sso_middleware.stores import MemoryStore
from kc_sso_middleware.testing import StandInOP
from tests.adapters.test_serverside import _claims, redis_server, set_cookie_value  # noqa: F401
from tests.conftest import (
    HarnessFactory,
    PortalClient,
    ServerLikeWSGITransport,
    direct_grant,
    make_settings,
    refresh_grant,
    session_id_of,
    wait_until,
)


@pytest.fixture
def rotating(op: StandInOP) -> Any:
    op.revoke_refresh_token = True
    yield op
    op.revoke_refresh_token = False


def test_a_request_still_carrying_the_rotated_token_does_not_end_the_session(
    make_harness: HarnessFactory, rotating: StandInOP
) -> None:
    """The app refreshed (the browser now holds the new cookie); a request sent before the
    new cookie arrived (a parallel XHR, another tab) carries the old one when the check is
    due.  Keycloak says the used token is inactive; the session is alive."""
    op = rotating
    harness = make_harness(liveness_interval=0.5)
    tokens = direct_grant(op, "rotating-rita")
    old_cookie = harness.tokens_cookie(tokens)
    alive: list[object] = []
    harness.events.subscribe(alive.append, names=[ev.LIVENESS_ALIVE])
    assert harness.seen_session(old_cookie) != {}
    # The first check has its answer before the app refreshes: a refresh racing with it
    # makes Keycloak call that token inactive too (a different case, decided later).
    wait_until(lambda: bool(alive), "the first check found the session alive")
    new_cookie = harness.tokens_cookie(refresh_grant(op, tokens["refresh_token"]))
    time.sleep(0.6)  # the next interval
    asked = op.introspections
    harness.get("/", old_cookie)  # in flight since before the refresh
    wait_until(lambda: op.introspections > asked, "the check of the old token ran")
    time.sleep(0.3)
    # The browser's current session, and a new SSO login into the same live Keycloak
    # session, must still be served.
    assert harness.seen_session(new_cookie) != {}
    again = harness.session_cookie(op, sid=session_id_of(tokens))
    assert harness.seen_session(again) != {}


def test_a_session_whose_token_keeps_failing_is_still_ended(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """The other side: a session that still presents the token Keycloak says is inactive
    (it really ended) is refused, and its sid revoked for every app."""
    harness = make_harness(liveness_interval=0.3)
    tokens = direct_grant(op, "gone-gina")
    cookie = harness.tokens_cookie(tokens)
    before = op.introspections_answered
    assert harness.seen_session(cookie) != {}
    wait_until(lambda: op.introspections_answered > before, "the first check was answered")
    op.forget_session(session_id_of(tokens))
    time.sleep(0.4)  # the next interval
    asked = op.introspections_answered
    assert harness.seen_session(cookie) != {}  # the request that starts the check
    wait_until(lambda: op.introspections_answered > asked, "the check was answered")

    def held_back() -> bool:
        response = harness.get("/", cookie)
        return response.status_code == 503 or response.json()["session"] == {}

    # From Keycloak's answer on (once the middleware has it: a moment on a busy machine),
    # the session is held back, and never served as before again ...
    wait_until(held_back, "the session is held back")
    assert held_back()
    # ... and soon refused for good, its sid revoked for every app.
    wait_until(lambda: harness.refused_for_good(cookie), "the session is refused")
    again = harness.session_cookie(op, sid=session_id_of(tokens))
    assert harness.seen_session(again) == {}


def test_old_tokens_in_turn_do_not_keep_an_ended_session(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """A session that really ended is not kept alive by presenting its old refresh tokens
    (all inactive) in turn: each is asked about once, then the ending is recorded."""
    harness = make_harness(liveness_interval=0.3)
    tokens = direct_grant(op, "turns-tom")
    cookies = [harness.tokens_cookie(tokens)]
    for _ in range(2):
        tokens = refresh_grant(op, tokens["refresh_token"])
        cookies.append(harness.tokens_cookie(tokens))
    before = op.introspections_answered
    for cookie in cookies:
        assert harness.seen_session(cookie) != {}
    wait_until(lambda: op.introspections_answered > before, "the first check was answered")
    time.sleep(0.1)
    op.forget_session(session_id_of(tokens))
    time.sleep(0.4)

    def all_refused() -> bool:
        return all(harness.refused_for_good(cookie) for cookie in cookies)

    wait_until(all_refused, "every old cookie is refused", timeout=15)


# -- server-side sessions: the app refreshes, the middleware's reading is older ----------


def _serverside_client(kind: str, op: StandInOP, url: str, prefix: str, store: MemoryStore) -> Any:
    """A worker of an app keeping its login server-side, refreshing its tokens as the
    README asks; workers of one app share ``url``, ``prefix`` and ``store``."""
    settings = make_settings(op, liveness_interval=0.5)
    if kind == "flask-session":
        app = Flask("rotation")
        app.secret_key = "flask-secret"
        app.config.update(
            SESSION_TYPE="redis", SESSION_REDIS=redis.Redis.from_url(url), SESSION_KEY_PREFIX=prefix
        )
        Session(app)

        @app.post("/login")
        def login() -> Any:
            tokens = direct_grant(op, "server-side-sue")
            session["id_token"] = tokens["id_token"]
            session["user"] = _claims(tokens["id_token"])
            session["refresh_token"] = tokens["refresh_token"]
            return jsonify(ok=True)

        @app.post("/refresh")
        def refreshed() -> Any:
            tokens = refresh_grant(op, session["refresh_token"])
            session["id_token"] = tokens["id_token"]
            session["refresh_token"] = tokens["refresh_token"]
            return jsonify(ok=True)

        @app.get("/me")
        def me() -> Any:
            user = session.get("user")
            return (jsonify(user), 200) if user else (jsonify(error="not_logged_in"), 401)

        app.wsgi_app = wsgi_adapter.SSOMiddleware(  # type: ignore[method-assign]
            app.wsgi_app, settings, store=store
        )
        return httpx.Client(transport=ServerLikeWSGITransport(app), base_url="http://app.test")

    async def alogin(request: Request) -> JSONResponse:
        tokens = direct_grant(op, "server-side-sue")
        request.session["id_token"] = tokens["id_token"]
        request.session["user"] = _claims(tokens["id_token"])
        request.session["refresh_token"] = tokens["refresh_token"]
        return JSONResponse({"ok": True})

    async def arefresh(request: Request) -> JSONResponse:
        tokens = refresh_grant(op, request.session["refresh_token"])
        request.session["id_token"] = tokens["id_token"]
        request.session["refresh_token"] = tokens["refresh_token"]
        return JSONResponse({"ok": True})

    async def ame(request: Request) -> JSONResponse:
        user = request.session.get("user")
        if not user:
            return JSONResponse({"error": "not_logged_in"}, status_code=401)
        return JSONResponse(user)

    connection = redis.asyncio.Redis.from_url(url)
    session_store = RedisStore(connection=connection, prefix=prefix)
    starlette_app = Starlette(
        routes=[
            Route("/login", alogin, methods=["POST"]),
            Route("/refresh", arefresh, methods=["POST"]),
            Route("/me", ame),
        ],
        middleware=[
            Middleware(StarsessionsMiddleware, store=session_store, cookie_https_only=False),
            Middleware(SessionAutoloadMiddleware),
        ],
    )
    starlette_app.add_middleware(asgi_adapter.SSOMiddleware, settings=settings, store=store)
    client = PortalClient(starlette_app, "http://app.test")
    client.aclose_redis = connection.aclose  # type: ignore[attr-defined]
    return client


def _close(client: Any) -> None:
    if isinstance(client, PortalClient):
        client._portal.call(getattr(client, "aclose_redis"))  # noqa: B009
    client.close()


@pytest.mark.redis
@pytest.mark.parametrize("kind", ["flask-session", "starsessions"])
def test_a_server_side_session_another_worker_refreshed_is_not_ended(
    kind: str,
    rotating: StandInOP,
    redis_server: Any,  # noqa: F811
) -> None:
    """Worker B's reading of a server-side session (kept up to RECHECK_SECONDS) holds the
    refresh token of before worker A's refresh; B's next due check must not take
    Keycloak's answer about that used token for the end of the session."""
    op = rotating
    prefix, store = f"r{time.time_ns()}:", MemoryStore()
    worker_a = _serverside_client(kind, op, redis_server.url, prefix, store)
    worker_b = _serverside_client(kind, op, redis_server.url, prefix, store)
    try:
        sid_cookie = set_cookie_value(worker_a.post("/login"))
        assert sid_cookie

        def call(worker: Any, method: str, path: str) -> httpx.Response:
            worker.cookies.clear()
            response: httpx.Response = worker.request(
                method, path, headers={"Cookie": f"session={sid_cookie}"}
            )
            return response

        before = op.introspections_answered
        assert call(worker_b, "GET", "/me").status_code == 200  # B reads the session
        # answered before the refresh (one racing with it is a different case)
        wait_until(lambda: op.introspections_answered > before, "the first check ran")
        assert call(worker_a, "POST", "/refresh").status_code == 200  # A refreshes
        time.sleep(0.6)  # the next interval
        asked = op.introspections
        assert call(worker_b, "GET", "/me").status_code == 200
        wait_until(lambda: op.introspections > asked, "the next check ran")
        time.sleep(0.3)
        assert call(worker_a, "GET", "/me").status_code == 200
        assert call(worker_b, "GET", "/me").status_code == 200
    finally:
        _close(worker_a)
        _close(worker_b)


@pytest.mark.redis
@pytest.mark.parametrize("kind", ["flask-session", "starsessions"])
def test_a_server_side_session_the_app_refreshed_is_not_ended(
    kind: str,
    rotating: StandInOP,
    redis_server: Any,  # noqa: F811
) -> None:
    """The middleware's reading of a server-side session (kept up to RECHECK_SECONDS)
    holds the refresh token of before the app's refresh; the next due check must not
    take Keycloak's answer about that used token for the end of the session."""
    op = rotating
    client = _serverside_client(kind, op, redis_server.url, f"r{time.time_ns()}:", MemoryStore())
    try:
        response = client.post("/login")
        sid_cookie = set_cookie_value(response)
        assert sid_cookie

        def me() -> httpx.Response:
            client.cookies.clear()
            response: httpx.Response = client.get(
                "/me", headers={"Cookie": f"session={sid_cookie}"}
            )
            return response

        before = op.introspections_answered
        assert me().status_code == 200
        # answered before the refresh (one racing with it is a different case)
        wait_until(lambda: op.introspections_answered > before, "the first check ran")
        client.cookies.clear()
        response = client.post("/refresh", headers={"Cookie": f"session={sid_cookie}"})
        assert response.status_code == 200, response.text
        time.sleep(0.6)  # the next interval
        asked = op.introspections
        assert me().status_code == 200
        wait_until(lambda: op.introspections > asked, "the next check ran")
        time.sleep(0.3)
        assert me().status_code == 200
    finally:
        _close(client)
