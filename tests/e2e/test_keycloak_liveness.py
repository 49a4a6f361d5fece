"""Liveness against a real Keycloak: the endings Keycloak never announces are caught.

A realm with a short "SSO Session Idle" (15 s) whose clients' back-channel URLs point
nowhere, so no logout ever reaches the apps; the Flask and the Django example under
gunicorn (2 workers each) with ``KC_SSO_LIVENESS_INTERVAL=2``.  An idle session is
refused soon after Keycloak expires it, and a session ended in Keycloak while its
back-channel request was lost is refused within the interval, well before it would idle
out (for Django, a session from a real login through Keycloak's form).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.apps import AppServer, app_env, free_port
from devtools.keycloak import KeycloakServer, find_java
from kc_sso_middleware.testing import make_session_cookie
from tests.e2e.test_keycloak_e2e import (
    REALM_FILE,
    USERS,
    _browser_client,
    _cached_keycloak,
    _require,
    _submit_login_form,
)

pytestmark = [pytest.mark.keycloak, pytest.mark.servers]

IDLE = 15
INTERVAL = 2


@dataclass
class Idle:
    keycloak: KeycloakServer
    app: AppServer
    #: the Django example (its backend keeps the refresh token at login)
    django: AppServer


def _idle_realm(path: Path) -> Path:
    realm = json.loads(REALM_FILE.read_text())
    realm["realm"] = "idle"
    realm["ssoSessionIdleTimeout"] = IDLE
    realm["clients"] = [c for c in realm["clients"] if c["clientId"] in ("flask-app", "django-app")]
    for client in realm["clients"]:
        # Nothing listens there: every back-channel logout is lost, as when the app is down.
        client["attributes"]["backchannel.logout.url"] = "http://127.0.0.1:9/lost"
    path.write_text(json.dumps(realm))
    return path


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idle]:
    _require(find_java() is not None, "no Java 17+ runtime (apt-get install openjdk-17-jre)")
    _require(_cached_keycloak(), "no Keycloak distribution cached (scripts/bootstrap.sh)")
    work = tmp_path_factory.mktemp("liveness")
    port, django_port = free_port(), free_port()
    url, django_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{django_port}"
    realm = _idle_realm(work / "realm.json")
    urls = {"FLASK_APP_URL": url, "DJANGO_APP_URL": django_url}
    with KeycloakServer(realm, urls, work_dir=work / "keycloak") as keycloak:

        def env(client: str, cookie: str) -> dict[str, str]:
            """One example's variables: its client, the shared store, liveness checks."""
            return app_env(
                issuer=keycloak.issuer(),
                client_id=f"{client}-app",
                client_secret=f"{client}-secret",
                cookie=cookie,
                store=f"sqlite:///{work / 'revocations.db'}",
                liveness_interval=str(INTERVAL),
            )

        flask_env = env("flask", "idle_session")
        # The Django example keeps its database in the temp dir: this test's own.
        django_env = {**env("django", "sessionid"), "TMPDIR": str(work)}
        with (
            AppServer("flask", flask_env, port=port, workers=2, log_dir=work) as app,
            AppServer("django-wsgi", django_env, port=django_port, workers=2, log_dir=work) as dj,
        ):
            yield Idle(keycloak, app, dj)


def _session(idle: Idle) -> tuple[dict[str, Any], str]:
    tokens = idle.keycloak.password_grant("flask-app", "flask-secret", "alice", USERS["alice"])
    data = {
        "id_token": tokens["id_token"],
        "refresh_token": tokens["refresh_token"],
        "user": {"sub": "alice", "sid": tokens["session_state"]},
    }
    secret = idle.app.env["KC_SSO_SESSION_SECRET"]
    return tokens, make_session_cookie(secret, data)


def _me(idle: Idle, cookie: str) -> int:
    response = httpx.get(f"{idle.app.url}/me", cookies={"idle_session": cookie}, timeout=5)
    return response.status_code


def _eventually(condition: Callable[[], bool], what: str, timeout: float) -> float:
    """Seconds until ``condition`` held (fails after ``timeout``)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"gave up after {timeout:.0f} s waiting until {what}")
        time.sleep(0.25)
    return time.monotonic() - start


def test_an_idle_session_is_refused_after_keycloak_expires_it(idle: Idle) -> None:
    """Keycloak sends nothing at idle expiry; liveness notices within the interval."""
    _tokens, cookie = _session(idle)
    assert _me(idle, cookie) == 200
    time.sleep(IDLE + 1)  # Keycloak's session is idle-expired now
    # Requests keep coming (the user is active in the app, not in Keycloak).
    waited = _eventually(lambda: _me(idle, cookie) == 401, "the idle session is refused", 30)
    assert waited <= 3 * INTERVAL + 5


def test_a_lost_back_channel_logout_is_caught(idle: Idle) -> None:
    """The session is ended in Keycloak; its back-channel request goes nowhere; still refused."""
    tokens, cookie = _session(idle)
    assert _me(idle, cookie) == 200
    started = time.monotonic()
    idle.keycloak.admin_delete(f"idle/sessions/{tokens['session_state']}")
    _eventually(lambda: _me(idle, cookie) == 401, "the ended session is refused", 30)
    assert time.monotonic() - started < IDLE, "refused by liveness, not by idle expiry"
    assert "KC-SERVICES0057" in idle.keycloak.log_text()  # the back-channel really was lost


def test_a_django_session_ended_in_keycloak_is_caught(idle: Idle) -> None:
    """The Django example under gunicorn (2 workers) logs in through Keycloak's form; its
    session is ended in Keycloak and the back-channel request is lost: liveness refuses
    it within the interval, on every worker."""
    with _browser_client() as browser:
        page = browser.get(f"{idle.django.url}/login")
        page = _submit_login_form(browser, page, "bob")
        assert "Logged in as" in page.text, page.text[:500]
        me = browser.get(f"{idle.django.url}/me")
        assert me.status_code == 200, me.text
        sid = me.json()["sid"]
        session_key = browser.cookies.get("sessionid")
    assert session_key

    def status() -> int:
        response = httpx.get(f"{idle.django.url}/me", cookies={"sessionid": session_key}, timeout=5)
        return response.status_code

    assert status() == 200
    started = time.monotonic()
    idle.keycloak.admin_delete(f"idle/sessions/{sid}")
    _eventually(lambda: status() == 401, "the ended Django session is refused", 30)
    assert time.monotonic() - started < IDLE, "refused by liveness, not by idle expiry"
    assert [status() for _ in range(6)] == [401] * 6  # both workers


def test_a_rotated_refresh_token_does_not_end_the_session(idle: Idle) -> None:
    """With the realm's "Revoke Refresh Token" on, Keycloak introspects a refresh token the
    app has already used as inactive while the session lives on under the newer one.  A
    request still carrying the old cookie when a check is due must not end the session:
    the cookie with the newer token keeps working on both workers."""
    keycloak = idle.keycloak
    realm = keycloak.admin_get("idle")
    # Rotation on, and refresh tokens that live well beyond KC_SSO_CLOCK_SKEW (within it an
    # "inactive" is taken as this client's idle end, the narrower ending).
    rotating = {
        **realm,
        "revokeRefreshToken": True,
        "refreshTokenMaxReuse": 0,
        "ssoSessionIdleTimeout": 600,
    }
    keycloak.admin_request("PUT", "idle", json=rotating).raise_for_status()
    try:
        tokens, old_cookie = _session(idle)
        assert _me(idle, old_cookie) == 200  # its first check: alive
        time.sleep(1)  # that check has its answer before the app refreshes
        fresh = keycloak.token(
            "flask-app",
            "flask-secret",
            grant_type="refresh_token",
            refresh_token=tokens["refresh_token"],
        )
        # The premise, as Keycloak itself answers it: the used token is inactive.
        used = keycloak.http.post(
            f"{keycloak.issuer()}/protocol/openid-connect/token/introspect",
            data={
                "token": tokens["refresh_token"],
                "token_type_hint": "refresh_token",
                "client_id": "flask-app",
                "client_secret": "flask-secret",
            },
        )
        assert used.json().get("active") is False, used.text
        data = {
            "id_token": fresh["id_token"],
            "refresh_token": fresh["refresh_token"],
            "user": {"sub": "alice", "sid": fresh["session_state"]},
        }
        new_cookie = make_session_cookie(idle.app.env["KC_SSO_SESSION_SECRET"], data)
        time.sleep(INTERVAL + 0.5)  # a check is due again
        for _ in range(4):  # a request still in flight with the old cookie, on each worker
            assert _me(idle, old_cookie) in (200, 503)
        deadline = time.monotonic() + 3 * INTERVAL + 2
        while time.monotonic() < deadline:  # the checks and their confirmation window
            assert _me(idle, new_cookie) == 200, "the live session was ended"
            time.sleep(0.25)
    finally:
        keycloak.admin_request("PUT", "idle", json=realm).raise_for_status()
