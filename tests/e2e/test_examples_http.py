"""Both example apps under their real servers, against the stand-in OP, over real HTTP.

Log in to one app, get SSO in the other, log out of one: the OP back-channels both, and
each app's next request is anonymous (``/me`` 401).  Fast and OP-agnostic; the same story
against a real Keycloak lives in ``test_keycloak_e2e.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devtools.apps import AppServer, app_env, free_port
from kc_sso_middleware.testing import StandInOP

pytestmark = pytest.mark.servers


@dataclass
class Deployment:
    op: StandInOP
    flask: AppServer
    fastapi: AppServer


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    log_dir = tmp_path_factory.mktemp("logs")
    store = f"sqlite:///{tmp_path_factory.mktemp('store') / 'revocations.db'}"
    flask_port, fastapi_port = free_port(), free_port()
    with StandInOP() as op:
        op.register_client(
            "flask-app", "flask-secret", f"http://127.0.0.1:{flask_port}/backchannel-logout"
        )
        op.register_client(
            "fastapi-app",
            "fastapi-secret",
            f"http://127.0.0.1:{fastapi_port}/backchannel-logout",
        )
        flask_env = app_env(
            issuer=op.issuer,
            client_id="flask-app",
            client_secret="flask-secret",
            cookie="flask_session",
            store=store,
        )
        fastapi_env = app_env(
            issuer=op.issuer,
            client_id="fastapi-app",
            client_secret="fastapi-secret",
            cookie="fastapi_session",
            store=store,
        )
        with (
            AppServer("flask", flask_env, port=flask_port, workers=2, log_dir=log_dir) as flask,
            AppServer(
                "fastapi", fastapi_env, port=fastapi_port, workers=2, log_dir=log_dir
            ) as fastapi,
        ):
            yield Deployment(op, flask, fastapi)


def _browser() -> httpx.Client:
    return httpx.Client(follow_redirects=True, timeout=15)


def _login(browser: httpx.Client, app: AppServer) -> dict[str, object]:
    page = browser.get(f"{app.url}/login")
    assert page.status_code == 200, page.text
    assert "Logged in as" in page.text
    me = browser.get(f"{app.url}/me")
    assert me.status_code == 200, me.text
    claims: dict[str, object] = me.json()
    return claims


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param("flask", "fastapi", id="log out of flask"),
        pytest.param("fastapi", "flask", id="log out of fastapi"),
    ],
)
def test_single_sign_out_across_both_apps(
    first: str, second: str, deployment: Deployment, tmp_path: Path
) -> None:
    """Logging out of one app ends the session in both, on their very next request."""
    apps = {"flask": deployment.flask, "fastapi": deployment.fastapi}
    with _browser() as browser:
        claims = _login(browser, apps[first])
        sso_claims = _login(browser, apps[second])
        assert sso_claims["sid"] == claims["sid"], "the second app got the same OP session"
        saved_cookies = dict(browser.cookies.items())

        landing = browser.get(f"{apps[first].url}/logout")

        assert landing.status_code == 200
        assert str(landing.url).startswith(apps[first].url), "back on the app after logout"
        assert "Not logged in" in landing.text
        for app in apps.values():
            assert browser.get(f"{app.url}/me").status_code == 401

    # A copy of the old cookies (taken before logout) is refused by every worker.
    with httpx.Client(cookies=saved_cookies, timeout=10) as replay:
        for app in apps.values():
            for _ in range(6):
                assert replay.get(f"{app.url}/me").status_code == 401


def test_backchannel_deliveries_all_answered_200(deployment: Deployment) -> None:
    """Every back-channel request the OP sent during these tests was answered 200."""
    with _browser() as browser:
        _login(browser, deployment.flask)
        _login(browser, deployment.fastapi)
        browser.get(f"{deployment.fastapi.url}/logout")
    assert deployment.op.deliveries
    assert all(d.status == 200 for d in deployment.op.deliveries), deployment.op.deliveries


def _websocket_user(app: AppServer, cookies: dict[str, str]) -> object:
    """The user ``/ws/me`` sends over a real websocket carrying ``cookies``; the close
    code when the handshake or the app refused it."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    header = "; ".join(f"{name}={value}" for name, value in cookies.items())
    url = app.url.replace("http://", "ws://") + "/ws/me"
    try:
        with connect(url, additional_headers={"Cookie": header}, open_timeout=10) as socket:
            return json.loads(socket.recv(timeout=10))
    except ConnectionClosed as closed:
        return None if closed.rcvd is None else closed.rcvd.code
    except InvalidStatus as refused:
        return refused.response.status_code


def test_a_logged_out_session_does_not_open_a_websocket(deployment: Deployment) -> None:
    """uvicorn serves websockets with the session Starlette decodes: before the logout the
    app's /ws/me sends the user, afterwards a copy of the cookie opens no session there."""
    app = deployment.fastapi
    with _browser() as browser:
        claims = _login(browser, app)
        saved = dict(browser.cookies.items())
        user = _websocket_user(app, saved)
        assert isinstance(user, dict)
        assert user["sid"] == claims["sid"]
        browser.get(f"{app.url}/logout")
    for _ in range(4):  # both workers
        # The app saw no session and closed before accepting: uvicorn answers 403.
        assert _websocket_user(app, saved) == 403


@pytest.mark.parametrize("kind", ["flask", "fastapi"])
def test_a_graceful_shutdown_reports_no_store_outage(kind: str, tmp_path: Path) -> None:
    """Every deploy stops the workers, and each closes its store: a "revocation store
    unavailable" warning (and ``store.unavailable`` event) then would page an operator,
    and count an outage, once per worker per deploy."""
    with StandInOP() as op:
        op.register_client(f"{kind}-app", "secret")
        env = app_env(
            issuer=op.issuer,
            client_id=f"{kind}-app",
            client_secret="secret",
            cookie="session",
            store=f"sqlite:///{tmp_path / 'revocations.db'}",
        )
        server = AppServer(kind, env, workers=2, log_dir=tmp_path)
        with server:
            assert httpx.get(f"{server.url}/", timeout=10).status_code == 200
        log = server.log_text(full=True)
    if kind == "fastapi":  # the lifespan shutdown (which closes the store) ran in each worker
        assert log.count("Application shutdown complete") == 2, log
    assert "revocation store unavailable" not in log, log
