"""What a logout leaves behind, run through both adapters: nothing of the session.

* The session cookie must end in the browser with the attributes the framework set it
  with (a cookie is replaced only by one of the same name, Domain and Path).
* A server-side session must be deleted from its backend by the logout itself: the
  request names it, so neither the revocation store nor the Redis index is needed for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import httpx
import pytest
from flask import Flask, jsonify, session
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kc_sso_middleware import asgi as asgi_adapter
from kc_sso_middleware import wsgi as wsgi_adapter
from kc_sso_middleware.errors import StoreUnavailableError
from kc_sso_middleware.settings import Settings
from kc_sso_middleware.stores import MemoryStore
from kc_sso_middleware.stores.model import Revocation
from kc_sso_middleware.testing import StandInOP
from tests.conftest import (
    SESSION_SECRET,
    Harness,
    PortalClient,
    ServerLikeWSGITransport,
    make_settings,
)

# ------------------------------------------------------------ the cookie's own attributes


def _flask_cookie_app(op: StandInOP, token: str, **config: Any) -> Flask:
    app = Flask("cookie-attributes")
    app.secret_key = SESSION_SECRET
    app.config.update(config)

    @app.get("/login")
    def login() -> Any:
        session["id_token"] = token
        return jsonify(ok=True)

    @app.get("/")
    def show() -> Any:
        return jsonify(session=dict(session))

    app.wsgi_app = wsgi_adapter.SSOMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, make_settings(op), store=MemoryStore()
    )
    return app


def _starlette_cookie_app(op: StandInOP, token: str, **options: Any) -> Starlette:
    async def login(request: Request) -> JSONResponse:
        request.session["id_token"] = token
        return JSONResponse({"ok": True})

    async def show(request: Request) -> JSONResponse:
        return JSONResponse({"session": dict(request.session)})

    app = Starlette(
        routes=[Route("/login", login), Route("/", show)],
        middleware=[Middleware(SessionMiddleware, secret_key=SESSION_SECRET, **options)],
    )
    app.add_middleware(asgi_adapter.SSOMiddleware, settings=make_settings(op), store=MemoryStore())
    return app


@pytest.fixture(params=["asgi", "wsgi"])
def cookie_client(request: pytest.FixtureRequest, op: StandInOP) -> Iterator[Any]:
    """A client (with a cookie jar, as a browser) of an app whose framework sets its
    session cookie with ``Domain=app.test`` (Flask ``SESSION_COOKIE_DOMAIN``, Starlette
    ``SessionMiddleware(domain=...)``), the middleware configured by default."""
    token = Harness("asgi", make_settings(op)).id_token(op, sid="cookie-attributes")
    client: Any
    if request.param == "wsgi":
        flask_app = _flask_cookie_app(op, token, SESSION_COOKIE_DOMAIN="app.test")
        client = httpx.Client(
            transport=ServerLikeWSGITransport(flask_app), base_url="http://app.test"
        )
    else:
        starlette_app = _starlette_cookie_app(op, token, domain="app.test")
        client = PortalClient(starlette_app, "http://app.test")
    yield client
    client.close()


def _session_cookies(jar: httpx.Cookies) -> list[Any]:
    return [cookie for cookie in jar.jar if cookie.name == "session"]


def test_logout_ends_the_session_cookie_the_framework_set(cookie_client: Any) -> None:
    """The framework set the session cookie with a Domain: the logout's expiry must name
    the same Domain (and Path), or the browser keeps the cookie (RFC 6265 §5.3 step 11:
    only a cookie of the same name, domain and path is replaced)."""
    assert cookie_client.get("/login").status_code == 200
    assert len(_session_cookies(cookie_client.cookies)) == 1

    logout = cookie_client.get("/logout")

    assert logout.status_code == 302
    assert _session_cookies(cookie_client.cookies) == [], logout.headers.get_list("set-cookie")


# ------------------------------------------------------------ server-side sessions


class WriteFailingStore(MemoryStore):
    """A revocation store whose writes fail (Redis not confirming a write, a full disk),
    its replica still serving reads."""

    def record(self, revocations: Sequence[Revocation], **kwargs: Any) -> bool:
        raise StoreUnavailableError("the write was not confirmed")

    async def arecord(self, revocations: Sequence[Revocation], **kwargs: Any) -> bool:
        raise StoreUnavailableError("the write was not confirmed")


@contextlib.contextmanager
def serverside_worker(
    kind: str, settings: Settings, store: str, prefix: str
) -> Iterator[tuple[Any, Callable[[str], bool]]]:
    """A Flask-Session (cachelib) or starsessions (in-memory) app with no Redis index,
    its revocation store working or failing every write; (the worker, whether the
    backend still holds a session id)."""
    from cachelib import SimpleCache
    from starsessions import InMemoryStore

    from tests.adapters.test_serverside import Worker

    cache = SimpleCache()
    memory = InMemoryStore()
    worker = Worker(
        kind,  # type: ignore[arg-type]
        settings,
        "redis://unused",
        prefix,
        MemoryStore() if store == "working" else WriteFailingStore(),
        session_store=memory,
        SESSION_TYPE="cachelib",
        SESSION_CACHELIB=cache,
    )

    def stored(cookie: str) -> bool:
        if kind == "flask-session":
            return cache.get(f"{prefix}{cookie}") is not None
        return cookie in memory.data

    try:
        yield worker, stored
    finally:
        worker.close()


@pytest.mark.parametrize("kind", ["flask-session", "starsessions"])
@pytest.mark.parametrize("store", ["working", "write-failing"])
def test_logout_deletes_its_own_server_side_session(kind: str, store: str, op: StandInOP) -> None:
    """The logout path ends this browser's server-side session in its backend, whatever
    the backend (no Redis index here) and even when the revocation cannot be recorded:
    a copy of the session id must not log in again afterwards."""
    from tests.adapters.test_serverside import _sid, id_token

    with serverside_worker(kind, make_settings(op), store, "t-logout:") as (worker, stored):
        cookie = worker.login(id_token(op, _sid()))
        assert worker.me(cookie).status_code == 200

        response = worker.request("GET", "/logout", cookie)

        assert response.status_code == 302
        assert not stored(cookie), "the session is still in the backend after the logout"
        assert worker.me(cookie).status_code == 401


# ------------------------------------------------------------ a mount prefix from the URL


def test_the_unconfirmed_return_page_escapes_the_mount_prefix(op: StandInOP) -> None:
    """Under a Starlette ``Mount`` with a path parameter, ``root_path`` is text of the
    request's URL: the "logout not confirmed" page must escape it as the confirmation
    page does, or a link puts markup into the app's origin (reflected XSS)."""
    from starlette.routing import Mount

    inner = Starlette(routes=[Route("/", lambda request: JSONResponse({}))])
    inner.add_middleware(SessionMiddleware, secret_key=SESSION_SECRET)
    inner.add_middleware(
        asgi_adapter.SSOMiddleware, settings=make_settings(op), store=MemoryStore()
    )
    client = PortalClient(Starlette(routes=[Mount("/{tenant}", app=inner)]), "http://app.test")
    try:
        response = client.get("/t'onmouseover='alert(1)/logout/complete", params={"state": "x"})
    finally:
        client.close()

    assert response.status_code == 400
    assert "'onmouseover='" not in response.text, response.text


def starsessions_cookies_left(
    settings: Settings, token: str, path: str, params: dict[str, str] | None = None
) -> tuple[list[Any], httpx.Response]:
    """A starsessions app (no ``cookie_path``) served under the root path ``/app``, logged
    in with ``token``, then ``GET /app<path>``: the session cookies the browser holds
    afterwards, and that answer."""
    import anyio.from_thread
    from starsessions import InMemoryStore, SessionAutoloadMiddleware
    from starsessions import SessionMiddleware as StarsessionsMiddleware

    async def login(request: Request) -> JSONResponse:
        request.session["id_token"] = token
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[Route("/login", login)],
        middleware=[
            Middleware(StarsessionsMiddleware, store=InMemoryStore(), cookie_https_only=False),
            Middleware(SessionAutoloadMiddleware),
        ],
    )
    app.add_middleware(asgi_adapter.SSOMiddleware, settings=settings, store=MemoryStore())
    transport = httpx.ASGITransport(app=app, root_path="/app")
    with anyio.from_thread.start_blocking_portal() as portal:
        client = httpx.AsyncClient(transport=transport, base_url="http://app.test")
        try:
            assert portal.call(client.get, "/app/login").status_code == 200
            assert [c.path for c in client.cookies.jar if c.name == "session"] == ["/app"]
            response = portal.call(partial(client.get, f"/app{path}", params=params))
            return [c for c in client.cookies.jar if c.name == "session"], response
        finally:
            portal.call(client.aclose)


def test_logout_ends_the_starsessions_cookie_under_a_root_path(op: StandInOP) -> None:
    """starsessions sets its cookie with ``path=<root_path>`` when no ``cookie_path`` is
    given (``SessionMiddleware``: ``self.cookie_path or scope["root_path"] or "/"``); the
    logout's expiry must name that path, or the browser keeps the cookie."""
    token = Harness("asgi", make_settings(op)).id_token(op, sid="starsessions-root-path")
    left, logout = starsessions_cookies_left(make_settings(op), token, "/logout")
    assert logout.status_code == 302
    assert left == [], logout.headers.get_list("set-cookie")
