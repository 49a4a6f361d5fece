"""End-to-end single sign-out against a real Keycloak, both apps under real servers.

Keycloak (the Maven Central distribution, realm ``examples/keycloak/realm.json``), a real
Redis as the shared store, the Flask example under gunicorn and the FastAPI example under
uvicorn with two workers each, all on 127.0.0.1.  Browser tests drive Debian's Chromium
through Playwright; HTTP-level tests end sessions through Keycloak's admin REST API and its
end-session endpoint.  Afterwards, every back-channel request Keycloak sent must have been
answered 200, and Keycloak's log must show no logout failure.
"""

from __future__ import annotations

import html
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest

from devtools.apps import REPO, AppServer, app_env, free_port
from devtools.keycloak import KeycloakServer, find_java
from devtools.redis_server import RedisServer
from kc_sso_middleware.testing import make_session_cookie
from tests.conftest import services_required

pytestmark = [pytest.mark.keycloak, pytest.mark.servers]

REALM_FILE = REPO / "examples" / "keycloak" / "realm.json"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CLIENTS = {"flask": ("flask-app", "flask-secret"), "fastapi": ("fastapi-app", "fastapi-secret")}
USERS = {"alice": "alice-password", "bob": "bob-password"}


def _require(condition: bool, reason: str) -> None:
    if condition:
        return
    if services_required():
        pytest.fail(f"{reason}; required in CI (KC_SSO_REQUIRE_SERVICES)", pytrace=False)
    pytest.skip(reason)


@dataclass
class Stack:
    keycloak: KeycloakServer
    apps: dict[str, AppServer]

    def session_secret(self, name: str) -> str:
        return self.apps[name].env["KC_SSO_SESSION_SECRET"]

    def cookie_name(self, name: str) -> str:
        return self.apps[name].env["KC_SSO_SESSION_COOKIE"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    _require(find_java() is not None, "no Java 17+ runtime (apt-get install openjdk-17-jre)")
    _require(shutil.which("mvn") is not None or _cached_keycloak(), "no Maven to fetch Keycloak")
    logs = tmp_path_factory.mktemp("e2e-logs")
    ports = {"flask": free_port(), "fastapi": free_port()}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    with RedisServer() as redis_server:
        keycloak = KeycloakServer(
            REALM_FILE,
            {"FLASK_APP_URL": urls["flask"], "FASTAPI_APP_URL": urls["fastapi"]},
            work_dir=logs / "keycloak",
        )
        with keycloak:
            print(f"Keycloak started in {keycloak.startup_seconds:.1f} s")
            apps: dict[str, AppServer] = {}
            try:
                for name, (client_id, secret) in CLIENTS.items():
                    env = app_env(
                        issuer=keycloak.issuer(),
                        client_id=client_id,
                        client_secret=secret,
                        cookie=f"{name}_session",
                        store=f"{redis_server.url}?prefix=e2e:",
                    )
                    apps[name] = AppServer(
                        name,
                        env,
                        port=ports[name],
                        workers=2,
                        log_dir=logs,  # type: ignore[arg-type]
                    ).start()
                yield Stack(keycloak, apps)
            finally:
                for app in apps.values():
                    app.stop()
            _assert_clean_logs(keycloak, apps)


def _cached_keycloak() -> bool:
    from devtools.keycloak import cache_dir

    return any(cache_dir().glob("keycloak-quarkus-dist-*"))


def _assert_clean_logs(keycloak: KeycloakServer, apps: dict[str, AppServer]) -> None:
    """Keycloak's side: every back-channel request answered 200, no logout failure logged."""
    log = keycloak.log_text()
    assert "KC-SERVICES0057" not in log, "Keycloak failed to deliver a back-channel logout"
    # The only logout errors allowed are the client-authentication ones the tests provoke.
    provoked = ('error="client_not_found"', 'error="invalid_client_credentials"')
    errors = [
        line for line in log.splitlines() if "LOGOUT_ERROR" in line and not line.endswith(provoked)
    ]
    assert not errors, f"Keycloak logged logout errors: {errors}"
    for name, app in apps.items():
        lines = [
            line
            for line in app.log_text(full=True).splitlines()
            if "/backchannel-logout" in line and "POST" in line
        ]
        assert lines, f"{name} received no back-channel request"
        bad = [line for line in lines if not re.search(r'" 200\b', line)]
        assert not bad, f"{name} answered back-channel requests with non-200: {bad}"


# --------------------------------------------------------------------------- HTTP helpers


def _submit_login_form(client: httpx.Client, page: httpx.Response, user: str) -> httpx.Response:
    """Fill Keycloak's login form as a browser would."""
    match = re.search(r'<form[^>]*id="kc-form-login"[^>]*action="([^"]+)"', page.text)
    assert match, f"no Keycloak login form at {page.url}: {page.text[:500]}"
    action = html.unescape(match.group(1))
    return client.post(
        urljoin(str(page.url), action),
        data={"username": user, "password": USERS[user], "credentialId": ""},
    )


def _visible_text(markup: str) -> str:
    """A page's text without markup, for assertion messages."""
    body = re.sub(r"(?s)<(script|style|head)\b.*?</\1>", " ", markup)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())[:600]


def _login_app(client: httpx.Client, stack: Stack, name: str, user: str = "alice") -> str:
    """Log in to an example app through Keycloak (form, or SSO); return the session's sid."""
    page = client.get(f"{stack.apps[name].url}/login")
    if "kc-form-login" in page.text:
        page = _submit_login_form(client, page, user)
    assert page.status_code == 200, _visible_text(page.text)
    assert "Logged in as" in page.text, _visible_text(page.text)
    me = client.get(f"{stack.apps[name].url}/me")
    assert me.status_code == 200
    sid: str = me.json()["sid"]
    return sid


def _me_status(client: httpx.Client, stack: Stack, name: str) -> int:
    return client.get(f"{stack.apps[name].url}/me").status_code


def _browser_client() -> httpx.Client:
    """An httpx client that keeps cookies like Chromium does on http://127.0.0.1.

    Keycloak marks its login cookies Secure; Chromium treats loopback as a secure context
    and sends them over http, the stdlib cookie jar does not.  So the flag is dropped as the
    cookies arrive (httpx copies the jar per request, so a jar policy would not stick).
    """
    client = httpx.Client(follow_redirects=True, timeout=30)

    def loopback_is_secure(response: httpx.Response) -> None:
        for cookie in client.cookies.jar:
            cookie.secure = False

    client.event_hooks["response"] = [loopback_is_secure]
    return client


def _code_flow_tokens(client: httpx.Client, stack: Stack, name: str) -> dict[str, Any]:
    """Authorization-code flow in an existing SSO session, the test playing the app's client."""
    client_id, secret = CLIENTS[name]
    redirect_uri = f"{stack.apps[name].url}/auth/callback"
    issuer = stack.keycloak.issuer()
    response = client.get(
        f"{issuer}/protocol/openid-connect/auth",
        params={
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "response_type": "code",
            "scope": "openid",
            "state": "s",
        },
        follow_redirects=False,
    )
    assert response.status_code == 302, "the client already has a Keycloak SSO session"
    location = response.headers["location"]
    code = parse_qs(urlsplit(location).query)["code"][0]
    tokens: dict[str, Any] = stack.keycloak.token(
        client_id, secret, grant_type="authorization_code", code=code, redirect_uri=redirect_uri
    )
    return tokens


def _app_cookie(stack: Stack, name: str, tokens: dict[str, Any]) -> dict[str, str]:
    """A session cookie holding these tokens, signed as the app itself would."""
    import base64
    import json

    payload = tokens["id_token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    session = {"id_token": tokens["id_token"], "user": claims}
    fmt = "flask" if name == "flask" else "starlette"
    value = make_session_cookie(stack.session_secret(name), session, format=fmt)
    return {stack.cookie_name(name): value}


def _status_with_cookie(stack: Stack, name: str, cookies: dict[str, str]) -> int:
    with httpx.Client(cookies=cookies, timeout=10) as client:
        return client.get(f"{stack.apps[name].url}/me").status_code


# --------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _require(Path(CHROMIUM).exists(), "Debian's chromium is not installed")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.mark.browser
@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param("flask", "fastapi", id="log out of flask"),
        pytest.param("fastapi", "flask", id="log out of fastapi"),
    ],
)
def test_browser_single_sign_out(
    first: str, second: str, stack: Stack, browser: Any, request: pytest.FixtureRequest
) -> None:
    """Real login form, SSO into the other app, logout in one: the other shows logged out."""
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{stack.apps[first].url}/login")
        page.fill("#username", "alice")
        page.fill("#password", USERS["alice"])
        page.click("#kc-login")
        page.wait_for_url(f"{stack.apps[first].url}/")
        assert "Logged in as" in page.inner_text("#status")

        page.goto(f"{stack.apps[second].url}/login")
        page.wait_for_url(f"{stack.apps[second].url}/")
        assert page.inner_text("#username") == "alice", "SSO: no password asked"

        page.goto(f"{stack.apps[first].url}/")
        page.click("#logout")
        # Keycloak sends the browser back with the state appended: /?state=...
        page.wait_for_url(re.compile(re.escape(stack.apps[first].url) + r"/(\?state=[^&]+)?$"))
        assert page.inner_text("#status") == "Not logged in."

        response = page.goto(f"{stack.apps[second].url}/me")
        assert response is not None
        assert response.status == 401
        page.goto(f"{stack.apps[second].url}/")
        assert page.inner_text("#status") == "Not logged in."
    except BaseException:
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / f"{request.node.name.replace('/', '_')}.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot saved to {shot}")
        raise
    finally:
        context.close()


# --------------------------------------------------------------------------- HTTP level


@pytest.mark.parametrize(
    "how",
    [
        pytest.param("admin-delete-session", id="admin REST deletes the user session"),
        pytest.param("admin-logout-user", id="admin logs the user out"),
        pytest.param("refresh-token-logout", id="refresh-token logout at end-session"),
    ],
)
def test_keycloak_side_logout_ends_both_apps(how: str, stack: Stack) -> None:
    """Each way Keycloak ends a session reaches both apps: their next requests are anonymous."""
    with _browser_client() as client:
        sid = _login_app(client, stack, "flask", user="bob")
        assert _login_app(client, stack, "fastapi", user="bob") == sid
        tokens = _code_flow_tokens(client, stack, "flask")
        assert tokens["session_state"] == sid

        keycloak = stack.keycloak
        if how == "admin-delete-session":
            keycloak.admin_delete(f"{keycloak.realm}/sessions/{sid}")
        elif how == "admin-logout-user":
            keycloak.admin_post(f"{keycloak.realm}/users/{keycloak.user_id('bob')}/logout")
        else:
            client_id, secret = CLIENTS["flask"]
            response = keycloak.http.post(
                f"{keycloak.issuer()}/protocol/openid-connect/logout",
                data={
                    "client_id": client_id,
                    "client_secret": secret,
                    "refresh_token": tokens["refresh_token"],
                },
            )
            assert response.status_code == 204, response.text

        assert _me_status(client, stack, "flask") == 401
        assert _me_status(client, stack, "fastapi") == 401


def test_direct_grant_sessions_end_in_both_apps(stack: Stack) -> None:
    """Sessions from direct grants, one per app, end with one admin "log out user"."""
    keycloak = stack.keycloak
    cookies = {
        name: _app_cookie(
            stack, name, keycloak.password_grant(*CLIENTS[name], "alice", USERS["alice"])
        )
        for name in CLIENTS
    }
    for name in CLIENTS:
        assert _status_with_cookie(stack, name, cookies[name]) == 200
    keycloak.admin_post(f"{keycloak.realm}/users/{keycloak.user_id('alice')}/logout")
    for name in CLIENTS:
        assert _status_with_cookie(stack, name, cookies[name]) == 401


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        pytest.param({}, 401, "invalid_client", id="no client identification"),
        pytest.param(
            {"client_id": "flask-app"}, 401, "unauthorized_client", id="client_id without secret"
        ),
    ],
)
def test_refresh_token_logout_needs_client_identification(
    form: dict[str, str], status: int, error: str, stack: Stack
) -> None:
    """Keycloak refuses a refresh-token logout without client authentication; nothing ends."""
    keycloak = stack.keycloak
    tokens = keycloak.password_grant(*CLIENTS["flask"], "alice", USERS["alice"])
    cookies = _app_cookie(stack, "flask", tokens)
    response = keycloak.http.post(
        f"{keycloak.issuer()}/protocol/openid-connect/logout",
        data={"refresh_token": tokens["refresh_token"], **form},
    )
    assert response.status_code == status
    assert response.json()["error"] == error
    assert _status_with_cookie(stack, "flask", cookies) == 200


def test_middleware_surfaces_missing_client_secret(stack: Stack) -> None:
    """The middleware's API logout without KC_SSO_CLIENT_SECRET passes Keycloak's error on."""
    from flask import Flask

    from kc_sso_middleware import Settings
    from kc_sso_middleware.wsgi import SSOMiddleware

    keycloak = stack.keycloak
    tokens = keycloak.password_grant(*CLIENTS["flask"], "alice", USERS["alice"])
    settings = Settings(
        issuer=keycloak.issuer(),
        client_id="flask-app",
        client_secret=None,
        session_secret="x",
        store="memory://",
    )
    app = SSOMiddleware(Flask("no-secret").wsgi_app, settings)
    try:
        with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://a") as client:
            response = client.post(
                "/logout",
                data={"refresh_token": tokens["refresh_token"]},
                headers={
                    "Accept": "application/json",
                    "Authorization": f"Bearer {tokens['access_token']}",
                },
            )
    finally:
        app.close()
    assert response.status_code == 502
    body = response.json()
    assert body["op_error"] == "unauthorized_client"
    assert "KC_SSO_CLIENT_SECRET" in body["error_description"]


def test_a_stolen_refresh_token_does_not_end_the_keycloak_session(stack: Stack) -> None:
    """Posted without the session's cookie or bearer token, a refresh token ends nothing."""
    keycloak = stack.keycloak
    tokens = keycloak.password_grant(*CLIENTS["fastapi"], "alice", USERS["alice"])
    cookies = _app_cookie(stack, "fastapi", tokens)
    with httpx.Client(timeout=10) as client:
        response = client.post(
            f"{stack.apps['fastapi'].url}/logout",
            data={"refresh_token": tokens["refresh_token"]},
            headers={"Accept": "application/json"},
        )
    assert response.status_code == 401
    sessions = keycloak.admin_get(f"{keycloak.realm}/users/{keycloak.user_id('alice')}/sessions")
    assert tokens["session_state"] in {s["id"] for s in sessions}
    assert _status_with_cookie(stack, "fastapi", cookies) == 200


def test_api_logout_through_the_middleware(stack: Stack) -> None:
    """An API client's POST /logout with its refresh token ends the Keycloak session."""
    keycloak = stack.keycloak
    tokens = keycloak.password_grant(*CLIENTS["fastapi"], "alice", USERS["alice"])
    cookies = _app_cookie(stack, "fastapi", tokens)
    with httpx.Client(cookies=cookies, timeout=10) as client:
        response = client.post(
            f"{stack.apps['fastapi'].url}/logout",
            data={"refresh_token": tokens["refresh_token"]},
            headers={"Accept": "application/json"},
        )
    assert response.status_code == 200, response.text
    assert response.json()["op_session_ended"] is True
    sessions = keycloak.admin_get(f"{keycloak.realm}/users/{keycloak.user_id('alice')}/sessions")
    assert tokens["session_state"] not in {s["id"] for s in sessions}
    assert _status_with_cookie(stack, "fastapi", cookies) == 401


def test_sign_out_all_sessions_reaches_apps_via_admin_url(stack: Stack) -> None:
    """Realm "Sign out all active sessions" arrives as the legacy k_logout and ends sessions."""
    with _browser_client() as client:
        _login_app(client, stack, "flask", user="alice")
        _login_app(client, stack, "fastapi", user="alice")
        stack.keycloak.admin_post(f"{stack.keycloak.realm}/logout-all")
        assert _me_status(client, stack, "flask") == 401
        assert _me_status(client, stack, "fastapi") == 401
