"""End-to-end single sign-out against a real Keycloak, every example app under a real server.

One stack for the module, all on 127.0.0.1: Keycloak (the Maven Central distribution, realm
``examples/keycloak/realm.json`` plus a second Django client), a real Redis, and four apps
with two workers each, sharing one revocation store in that Redis:

* the Flask example under gunicorn, its sessions in Flask's signed cookie;
* the FastAPI example under uvicorn with server-side sessions (starsessions, in another
  database of the same Redis);
* the Django example under gunicorn (``django-app``) and under uvicorn (``django-asgi-app``),
  database sessions.

Each app is served through :mod:`devtools.served`, so every answer names the worker that
gave it.  Browser tests drive Debian's Chromium through Playwright; HTTP-level tests log in
through Keycloak's own form and end sessions through Keycloak's admin REST API and its
end-session endpoint.  Afterwards, every app received back-channel requests and answered
each 200, and Keycloak's log shows no logout failure.
"""

from __future__ import annotations

import base64
import contextlib
import html
import http.server
import json
import math
import re
import secrets
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest
import redis

from devtools.apps import REPO, AppKind, AppServer, app_env, free_port
from devtools.keycloak import KeycloakServer, find_java
from devtools.redis_server import RedisServer
from examples._page import APP_NAMES
from kc_sso_middleware.testing import make_session_cookie
from tests.conftest import services_required

from . import _served as served

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
USERS = {"alice": "alice-password", "bob": "bob-password"}
WORKERS = 2
#: the revocation store's database and prefix, shared by every app
STORE_DB, STORE_PREFIX = 0, "e2e:"
#: the database the FastAPI app keeps its server-side sessions in
SESSIONS_DB = 1
#: starsessions' RedisStore key prefix (its default) and the example's session lifetime
STARSESSIONS_PREFIX = "starsessions."
STARSESSIONS_LIFETIME = 14 * 24 * 3600


@dataclass(frozen=True)
class AppSpec:
    """One app of the stack: how it is served, its Keycloak client, where sessions live."""

    kind: AppKind
    client_id: str
    secret: str
    #: ``cookie``: signed cookie; ``redis``: starsessions; ``django``: Django's database
    sessions: str


APPS = {
    "flask": AppSpec("flask", "flask-app", "flask-secret", "cookie"),
    "fastapi": AppSpec("fastapi", "fastapi-app", "fastapi-secret", "redis"),
    "django": AppSpec("django-wsgi", "django-app", "django-secret", "django"),
    "django-asgi": AppSpec("django-asgi", "django-asgi-app", "django-asgi-secret", "django"),
}
CLIENTS = {name: (spec.client_id, spec.secret) for name, spec in APPS.items()}
#: the apps of the README's story, which the browser tests walk through
BROWSER_APPS = ("flask", "fastapi", "django")


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
    #: a client of the Redis database the FastAPI app keeps its sessions in
    sessions_redis: redis.Redis

    def url(self, name: str) -> str:
        return self.apps[name].url

    def session_secret(self, name: str) -> str:
        return self.apps[name].env["KC_SSO_SESSION_SECRET"]

    def cookie_name(self, name: str) -> str:
        return self.apps[name].env["KC_SSO_SESSION_COOKIE"]


def _realm_with_asgi_django(path: Path) -> Path:
    """The demo realm plus ``django-asgi-app``, a copy of ``django-app`` at its own URL."""
    text = REALM_FILE.read_text()
    realm = json.loads(text)
    (django,) = (c for c in realm["clients"] if c["clientId"] == "django-app")
    copy = json.loads(json.dumps(django).replace("${DJANGO_APP_URL}", "${DJANGO_ASGI_APP_URL}"))
    copy.update(
        clientId="django-asgi-app", name="Django demo app (ASGI)", secret="django-asgi-secret"
    )
    realm["clients"].append(copy)
    path.write_text(json.dumps(realm, indent=2))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    _require(find_java() is not None, "no Java 17+ runtime (apt-get install openjdk-17-jre)")
    _require(shutil.which("mvn") is not None or _cached_keycloak(), "no Maven to fetch Keycloak")
    logs = tmp_path_factory.mktemp("e2e-logs")
    ports = {name: free_port() for name in APPS}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    realm = _realm_with_asgi_django(logs / "realm.json")
    with RedisServer() as redis_server:
        keycloak = KeycloakServer(
            realm,
            {
                "FLASK_APP_URL": urls["flask"],
                "FASTAPI_APP_URL": urls["fastapi"],
                "DJANGO_APP_URL": urls["django"],
                "DJANGO_ASGI_APP_URL": urls["django-asgi"],
            },
            work_dir=logs / "keycloak",
        )
        sessions_redis = redis.Redis(host="127.0.0.1", port=redis_server.port, db=SESSIONS_DB)
        with keycloak:
            print(f"Keycloak started in {keycloak.startup_seconds:.1f} s")
            apps: dict[str, AppServer] = {}
            try:
                for name, spec in APPS.items():
                    env = app_env(
                        issuer=keycloak.issuer(),
                        client_id=spec.client_id,
                        client_secret=spec.secret,
                        cookie=f"{name.replace('-', '_')}_session",
                        store=f"redis://127.0.0.1:{redis_server.port}/{STORE_DB}"
                        f"?prefix={STORE_PREFIX}",
                    )
                    if spec.sessions == "redis":
                        env["EXAMPLE_SESSION_STORE"] = (
                            f"redis://127.0.0.1:{redis_server.port}/{SESSIONS_DB}"
                        )
                    if spec.sessions == "django":
                        # The example keeps its database in the temp dir: this test's own.
                        env["TMPDIR"] = str(tmp_path_factory.mktemp(f"{name}-tmp"))
                    started = time.monotonic()
                    apps[name] = AppServer(
                        spec.kind,
                        env,
                        port=ports[name],
                        workers=WORKERS,
                        log_dir=logs,
                        module=f"devtools.served:{spec.kind.replace('-', '_')}_app",
                    ).start()
                    print(f"{name} app started in {time.monotonic() - started:.1f} s")
                yield Stack(keycloak, apps, sessions_redis)
            finally:
                for app in apps.values():
                    app.stop()
                sessions_redis.close()
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
    page = client.get(f"{stack.url(name)}/login")
    if "kc-form-login" in page.text:
        page = _submit_login_form(client, page, user)
    assert page.status_code == 200, _visible_text(page.text)
    assert str(page.url) == f"{stack.url(name)}/", page.url
    assert "Logged in as" in page.text, _visible_text(page.text)
    me = client.get(f"{stack.url(name)}/me")
    assert me.status_code == 200, me.text
    assert me.json()["preferred_username"] == user
    sid: str = me.json()["sid"]
    return sid


def _me_status(client: httpx.Client, stack: Stack, name: str) -> int:
    return client.get(f"{stack.url(name)}/me").status_code


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


def _app_session(client: httpx.Client, stack: Stack, name: str) -> dict[str, str]:
    """A copy of the app's session cookie as the browser holds it."""
    cookie = stack.cookie_name(name)
    value = client.cookies.get(cookie)
    assert value, f"no {cookie} cookie"
    return {cookie: value}


def _every_worker(
    stack: Stack,
    name: str,
    path: str,
    expect: int,
    *,
    cookies: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> set[str]:
    """Requests until both workers answered (at least 12); each must get ``expect``.

    Fresh connections, held in pairs (see :func:`_served.held_round`), each carrying only
    ``cookies`` and ``headers``.  Returns the ``WWW-Authenticate`` challenges seen (their
    first part; ``""`` for none).
    """
    sent = dict(headers or {})
    if cookies:
        sent["Cookie"] = "; ".join(f"{key}={value}" for key, value in cookies.items())
    url = f"{stack.url(name)}{path}"
    replies = served.sample(url, sent, WORKERS, expect, what=f"{name}{path}", minimum=12)
    return {reply.headers.get("www-authenticate", "").split(",")[0] for reply in replies}


def _code_flow_tokens(client: httpx.Client, stack: Stack, name: str) -> dict[str, Any]:
    """Authorization-code flow in an existing SSO session, the test playing the app's client."""
    client_id, secret = CLIENTS[name]
    redirect_uri = f"{stack.url(name)}/auth/callback"
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


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def _app_cookie(stack: Stack, name: str, tokens: dict[str, Any]) -> dict[str, str]:
    """A session holding these tokens, made as the app itself would make it; its cookie.

    A cookie-session app gets the session signed into its cookie; the server-side FastAPI
    app gets it written into its Redis as starsessions writes it (its ``RedisStore`` key
    prefix, its JSON serializer with the ``__metadata__`` it keeps, the lifetime as expiry),
    and the cookie holds only the new session id.
    """
    session: dict[str, Any] = {"id_token": tokens["id_token"], "user": _claims(tokens["id_token"])}
    sessions = APPS[name].sessions
    if sessions == "cookie":
        value = make_session_cookie(stack.session_secret(name), session, format="flask")
    elif sessions == "redis":
        value = secrets.token_hex(16)  # starsessions.session.generate_session_id
        now = time.time()
        session["__metadata__"] = {
            "lifetime": STARSESSIONS_LIFETIME,
            "created": now,
            "last_access": now,
        }
        stack.sessions_redis.set(
            f"{STARSESSIONS_PREFIX}{value}", json.dumps(session), ex=STARSESSIONS_LIFETIME
        )
    else:
        raise ValueError(f"{name}: Django sessions are made by logging in")
    return {stack.cookie_name(name): value}


def _status_with_cookie(stack: Stack, name: str, cookies: dict[str, str]) -> int:
    with httpx.Client(cookies=cookies, timeout=10) as client:
        return client.get(f"{stack.url(name)}/me").status_code


def _runtime_app(
    stack: Stack,
    client_id: str,
    stop: contextlib.ExitStack,
    *,
    store: str,
    attributes: dict[str, str] | None = None,
    fields: dict[str, Any] | None = None,
    **variables: str,
) -> AppServer:
    """A client registered at runtime (a copy of flask-app, ``attributes`` and top-level
    ``fields`` changed; ``{url}`` in an attribute is the app's URL) and the Flask example
    serving it on ``store`` with these ``KC_SSO_*`` ``variables``."""
    keycloak, port = stack.keycloak, free_port()
    url = f"http://127.0.0.1:{port}"
    (template,) = (
        c for c in json.loads(REALM_FILE.read_text())["clients"] if c["clientId"] == "flask-app"
    )
    client = json.loads(json.dumps(template).replace("${FLASK_APP_URL}", url))
    client.update(clientId=client_id, name=client_id, secret=f"{client_id}-secret")
    client["attributes"].update({k: v.format(url=url) for k, v in (attributes or {}).items()})
    client.update(fields or {})
    keycloak.admin_post(f"{keycloak.realm}/clients", client)
    (created,) = keycloak.admin_get(f"{keycloak.realm}/clients", clientId=client_id)
    # Gone with the test: a later "sign out all" must not reach a stopped app.
    stop.callback(keycloak.admin_delete, f"{keycloak.realm}/clients/{created['id']}")
    env = app_env(
        issuer=keycloak.issuer(),
        client_id=client_id,
        client_secret=f"{client_id}-secret",
        cookie="runtime_session",
        store=store,
        **variables,
    )
    env["EXAMPLE_EVENT_LOG"] = "1"  # the middleware's events in the log, one JSON line each
    log_dir = Path(store.removeprefix("sqlite:///")).parent
    return stop.enter_context(AppServer("flask", env, port=port, workers=WORKERS, log_dir=log_dir))


def _runtime_user(keycloak: KeycloakServer, stop: contextlib.ExitStack) -> tuple[str, str]:
    """A user created for one test (deleted with it): (username, password)."""
    username, password = f"sam-{uuid.uuid4().hex[:8]}", "sam-password"
    keycloak.admin_post(
        f"{keycloak.realm}/users",
        {
            "username": username,
            "enabled": True,
            "email": f"{username}@example.com",
            "emailVerified": True,
            "firstName": "Sam",
            "lastName": "Scope",
            "credentials": [{"type": "password", "value": password, "temporary": False}],
        },
    )
    stop.callback(keycloak.admin_delete, f"{keycloak.realm}/users/{keycloak.user_id(username)}")
    return username, password


def _granted_cookie(
    keycloak: KeycloakServer, app: AppServer, username: str, password: str
) -> tuple[str, str]:
    """A new Keycloak session of ``username`` in ``app``'s client (a direct grant) and the
    app's session cookie holding it, as the example stores a login: (sid, cookie)."""
    client_id = app.env["KC_SSO_CLIENT_ID"]
    tokens = keycloak.password_grant(client_id, f"{client_id}-secret", username, password)
    claims = _claims(tokens["id_token"])
    session = {"id_token": tokens["id_token"], "user": claims}
    signing = app.env["KC_SSO_SESSION_SECRET"]
    return claims["sid"], make_session_cookie(signing, session, format="flask")


def _runtime_me(app: AppServer, cookie: str) -> int:
    url = f"{app.url}/me"
    return httpx.get(url, cookies={"runtime_session": cookie}, timeout=10).status_code


def test_log_out_user_ends_every_session_under_user_scope(stack: Stack, tmp_path: Path) -> None:
    """Keycloak's admin "log out user" of a user with two sessions in each of two apps:
    the app with KC_SSO_SID_LOGOUT_SCOPE=user refuses both of its sessions, whatever sid
    Keycloak's logout tokens name (keycloak#22914: one token, one sid, before 26.7); the
    app keeping the default ``session`` scope refuses exactly the sessions Keycloak named."""
    keycloak = stack.keycloak
    with contextlib.ExitStack() as stop:
        username, password = _runtime_user(keycloak, stop)
        apps = {
            scope: _runtime_app(
                stack,
                f"scope-{scope}-app",
                stop,
                store=f"sqlite:///{tmp_path / f'scope-{scope}.db'}",
                sid_logout_scope=scope,
            )
            for scope in ("user", "session")
        }
        cookies = {
            scope: [_granted_cookie(keycloak, app, username, password)[1] for _ in range(2)]
            for scope, app in apps.items()  # two devices: two Keycloak sessions per app
        }

        def me(scope: str, cookie: str) -> int:
            return _runtime_me(apps[scope], cookie)

        for scope, values in cookies.items():
            assert [me(scope, cookie) for cookie in values] == [200, 200], scope
        keycloak.admin_post(f"{keycloak.realm}/users/{keycloak.user_id(username)}/logout")

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(me("user", c) != 401 for c in cookies["user"]):
            time.sleep(0.2)
        assert [me("user", cookie) for cookie in cookies["user"]] == [401, 401]
        named = [me("session", cookie) for cookie in cookies["session"]]
        assert 401 in named, "Keycloak's logout reached the session-scoped app"
        sent = apps["session"].log_text(full=True).count("POST /backchannel-logout")
        # Each back-channel request names one sid: the session scope ends one per request.
        assert named.count(401) == min(sent, 2), (named, sent)


def test_a_logout_token_without_sid_ends_that_clients_sessions_only(
    stack: Stack, tmp_path: Path
) -> None:
    """Keycloak leaves ``sid`` out of the logout token of a client whose "Backchannel
    logout session required" is off (``DefaultTokenManager.initLogoutToken``), also when
    it ends one session.  Two apps sharing one store, one such client and one with the
    default, the user signed in to each (two Keycloak sessions, two sessions in the first
    app): ending one session of the first app ends the user's sessions in that app (BCL
    §2.4: every session of the user at the RP), and the other app's session lives on."""
    keycloak = stack.keycloak
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    with contextlib.ExitStack() as stop:
        username, password = _runtime_user(keycloak, stop)
        sidless = _runtime_app(
            stack,
            "sidless-app",
            stop,
            store=store,
            attributes={"backchannel.logout.session.required": "false"},
        )
        other = _runtime_app(stack, "sid-app", stop, store=store)
        (ended, first), (_, second) = (
            _granted_cookie(keycloak, sidless, username, password) for _ in range(2)
        )
        _, kept = _granted_cookie(keycloak, other, username, password)
        assert [_runtime_me(sidless, c) for c in (first, second)] == [200, 200]
        assert _runtime_me(other, kept) == 200

        keycloak.admin_delete(f"{keycloak.realm}/sessions/{ended}")

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _runtime_me(sidless, first) != 401:
            time.sleep(0.2)
        # Every worker of both apps: the entry is in the store they share.
        for _ in range(4 * WORKERS):
            assert [_runtime_me(sidless, c) for c in (first, second)] == [401, 401]
            assert _runtime_me(other, kept) == 200
        log = sidless.log_text(full=True)
        assert log.count("POST /backchannel-logout") == 1, log
        assert '"scope":"user"' in log, "the token Keycloak sent named a sid"
        assert "POST /backchannel-logout" not in other.log_text(full=True)


# --------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _require(Path(CHROMIUM).exists(), "Debian's chromium is not installed")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@contextlib.contextmanager
def _browser_page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A page in a fresh browser context; a screenshot in test-artifacts/ if the test fails."""
    context = browser.new_context()
    page = context.new_page()
    try:
        yield page
    except BaseException:
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / f"{request.node.name.replace('/', '_')}.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot saved to {shot}")
        raise
    finally:
        context.close()


def _redirect_chain(response: Any) -> list[tuple[str, int]]:
    """The (URL, status) of every hop that led to ``response``, the first first."""
    hops = []
    request = response.request
    while request is not None:
        answer = request.response()
        hops.append((request.url, answer.status if answer is not None else 0))
        request = request.redirected_from
    return hops[::-1]


@pytest.mark.browser
@pytest.mark.parametrize(
    ("first", "leaver"),
    [
        pytest.param("flask", "fastapi", id="log in at flask, log out of fastapi"),
        pytest.param("fastapi", "django", id="log in at fastapi, log out of django"),
        pytest.param("django", "flask", id="log in at django, log out of flask"),
    ],
)
def test_browser_single_sign_out(
    first: str, leaver: str, stack: Stack, browser: Any, request: pytest.FixtureRequest
) -> None:
    """One password at one app, SSO into the other two, logout in one: through Keycloak and
    the verified return back to its root, and the other two show why they logged you out."""
    others = [name for name in BROWSER_APPS if name != leaver]
    with _browser_page(browser, request) as page:
        page.goto(f"{stack.url(first)}/")
        assert page.inner_text("#status") == "Not logged in."
        page.click("#login")
        page.fill("#username", "alice")
        page.fill("#password", USERS["alice"])
        page.click("#kc-login")
        page.wait_for_url(f"{stack.url(first)}/")
        assert "Logged in as" in page.inner_text("#status")
        sid = page.inner_text("#sid")

        for name in BROWSER_APPS:
            if name == first:
                continue
            page.goto(f"{stack.url(name)}/")
            assert page.inner_text("#status") == "Not logged in."
            page.click("#login")  # through Keycloak, which asks nothing: SSO
            page.wait_for_url(f"{stack.url(name)}/")
            assert page.inner_text("#username") == "alice", f"{name}: SSO, no password asked"
            assert page.inner_text("#sid") == sid, f"{name}: the same Keycloak session"

        page.goto(f"{stack.url(leaver)}/")
        with page.expect_navigation(url=f"{stack.url(leaver)}/") as landing:
            page.click("#logout")
        chain = _redirect_chain(landing.value)
        urls = [url for url, _ in chain]
        assert urls[0] == f"{stack.url(leaver)}/logout", chain
        assert urls[1].startswith(f"{stack.keycloak.issuer()}/protocol/openid-connect/logout?")
        assert re.fullmatch(
            re.escape(stack.url(leaver)) + r"/logout/complete\?state=[^&]+", urls[2]
        )
        assert [status for _, status in chain] == [302, 302, 302, 200], chain
        assert urls[-1] == f"{stack.url(leaver)}/", "the app root, not the 400 page"
        assert page.inner_text("#status") == "Not logged in."
        assert "could not be confirmed" not in page.content()

        why = f"You were signed out because you logged out of {APP_NAMES[CLIENTS[leaver][0]]}"
        for name in others:
            page.goto(f"{stack.url(name)}/")
            assert page.inner_text("#status") == "Not logged in.", name
            sentence = page.inner_text("#signed-out")
            assert re.fullmatch(re.escape(why) + r" \d+ s ago\.", sentence), (name, sentence)
            response = page.goto(f"{stack.url(name)}/me")
            assert response is not None
            assert response.status == 401, name


@pytest.mark.browser
def test_front_channel_logout_through_keycloaks_iframes(
    stack: Stack, browser: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A client with front-channel logout on gets its logouts only through the browser:
    Keycloak's logout page frames the app's ``KC_SSO_FRONTCHANNEL_PATH`` with ``iss`` and
    ``sid``.  In Chromium, logged in to such an app, logged out at Keycloak's end-session
    endpoint: the page was loaded (no back-channel request), the browser's session cookie
    is expired, and a copy of it is refused by the app's workers (the sid revoked)."""
    with contextlib.ExitStack() as stop:
        app = _runtime_app(
            stack,
            "front-app",
            stop,
            store=f"sqlite:///{tmp_path / 'front.db'}",
            attributes={
                "frontchannel.logout.url": "{url}/frontchannel-logout",
                "frontchannel.logout.session.required": "true",
                "backchannel.logout.url": "",
            },
            fields={"frontchannelLogout": True},
            frontchannel_path="/frontchannel-logout",
        )
        page = stop.enter_context(_browser_page(browser, request))
        page.goto(f"{app.url}/login")
        page.fill("#username", "bob")
        page.fill("#password", USERS["bob"])
        page.click("#kc-login")
        page.wait_for_url(f"{app.url}/")
        assert "Logged in as" in page.inner_text("#status")
        (cookie,) = (c for c in page.context.cookies() if c["name"] == "runtime_session")
        assert _runtime_me(app, cookie["value"]) == 200

        page.goto(f"{stack.keycloak.issuer()}/protocol/openid-connect/logout")
        with page.expect_response(lambda r: "/frontchannel-logout?" in r.url) as framed:
            page.click("#kc-logout")  # Keycloak's "Do you want to log out?"
        assert framed.value.status == 200, framed.value.url
        query = parse_qs(urlsplit(framed.value.url).query)
        assert query["iss"] == [stack.keycloak.issuer()], query

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
            c["name"] == "runtime_session" for c in page.context.cookies()
        ):
            time.sleep(0.1)
        assert not [c for c in page.context.cookies() if c["name"] == "runtime_session"]
        for _ in range(4 * WORKERS):
            assert _runtime_me(app, cookie["value"]) == 401
        log = app.log_text(full=True)
        assert "GET /frontchannel-logout?" in log, log[-2000:]
        assert "POST /backchannel-logout" not in log


# --------------------------------------------------------------------------- HTTP level


@pytest.mark.parametrize("leaver", list(APPS))
def test_logout_through_one_app_ends_every_app(leaver: str, stack: Stack) -> None:
    """/logout in one app: Keycloak's end-session, the verified return to the app's root;
    every app's next request is anonymous, and the old cookies are refused by every worker."""
    with _browser_client() as client:
        sid = _login_app(client, stack, leaver)
        for name in APPS:
            if name != leaver:
                assert _login_app(client, stack, name) == sid
        copies = {name: _app_session(client, stack, name) for name in APPS}
        for name in APPS:
            _every_worker(stack, name, "/me", 200, cookies=copies[name])

        landing = client.get(f"{stack.url(leaver)}/logout")

        assert landing.status_code == 200
        hops = [str(r.url) for r in landing.history]
        assert any(f"{stack.url(leaver)}/logout/complete?state=" in hop for hop in hops), hops
        assert str(landing.url) == f"{stack.url(leaver)}/", landing.url
        assert "Not logged in" in landing.text
        for name in APPS:
            assert _me_status(client, stack, name) == 401, name
    for name in APPS:
        _every_worker(stack, name, "/me", 401, cookies=copies[name])


@pytest.mark.parametrize(
    "how",
    [
        pytest.param("admin-delete-session", id="admin REST deletes the user session"),
        pytest.param("admin-logout-user", id="admin logs the user out"),
        pytest.param("refresh-token-logout", id="refresh-token logout at end-session"),
    ],
)
def test_keycloak_side_logout_ends_every_app(how: str, stack: Stack) -> None:
    """Each way Keycloak ends a session reaches every app: their next requests are anonymous."""
    with _browser_client() as client:
        sid = _login_app(client, stack, "flask", user="bob")
        for name in APPS:
            if name != "flask":
                assert _login_app(client, stack, name, user="bob") == sid
        tokens = _code_flow_tokens(client, stack, "flask")
        assert tokens["session_state"] == sid
        copies = {name: _app_session(client, stack, name) for name in APPS}

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

        for name in APPS:
            assert _me_status(client, stack, name) == 401, name
    for name in APPS:
        _every_worker(stack, name, "/me", 401, cookies=copies[name])


def test_direct_grant_sessions_end_in_both_apps(stack: Stack) -> None:
    """Sessions from direct grants, one per app, end with one admin "log out user"."""
    keycloak = stack.keycloak
    minted = ("flask", "fastapi")  # Django's sessions come from its own login only
    cookies = {
        name: _app_cookie(
            stack, name, keycloak.password_grant(*CLIENTS[name], "alice", USERS["alice"])
        )
        for name in minted
    }
    for name in minted:
        assert _status_with_cookie(stack, name, cookies[name]) == 200
    keycloak.admin_post(f"{keycloak.realm}/users/{keycloak.user_id('alice')}/logout")
    for name in minted:
        assert _status_with_cookie(stack, name, cookies[name]) == 401


@pytest.mark.parametrize(
    "how",
    [
        pytest.param("admin-delete-session", id="admin deletes the session"),
        pytest.param("refresh-token-logout", id="refresh-token logout"),
    ],
)
@pytest.mark.parametrize("name", list(APPS))
def test_bearer_token_refused_once_its_session_ended(name: str, how: str, stack: Stack) -> None:
    """/api/me accepts a direct grant's access token on every app; once Keycloak ends its
    session (back-channel to the token's client), every app answers 401 invalid_token."""
    keycloak = stack.keycloak
    client_id, secret = CLIENTS[name]
    tokens = keycloak.password_grant(client_id, secret, "alice", USERS["alice"])
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    for app in APPS:
        assert _every_worker(stack, app, "/api/me", 200, headers=bearer) == {""}
    with httpx.Client(timeout=10) as client:
        me = client.get(f"{stack.url(name)}/api/me", headers=bearer).json()
    assert me["sid"] == tokens["session_state"]
    assert me["preferred_username"] == "alice"

    if how == "admin-delete-session":
        keycloak.admin_delete(f"{keycloak.realm}/sessions/{tokens['session_state']}")
    else:
        ended = keycloak.http.post(
            f"{keycloak.issuer()}/protocol/openid-connect/logout",
            data={
                "client_id": client_id,
                "client_secret": secret,
                "refresh_token": tokens["refresh_token"],
            },
        )
        assert ended.status_code == 204, ended.text

    for app in APPS:  # they share the store: the token's client told them all
        challenges = _every_worker(stack, app, "/api/me", 401, headers=bearer)
        assert challenges == {'Bearer error="invalid_token"'}, (app, challenges)


def test_backchannel_logout_deletes_the_server_side_session(stack: Stack) -> None:
    """The FastAPI app keeps sessions in Redis: Keycloak's back-channel request deletes the
    session's starsessions key before Keycloak's admin call returns; a copied id is dead."""
    with _browser_client() as client:
        sid = _login_app(client, stack, "fastapi", user="bob")
        copy = _app_session(client, stack, "fastapi")
        key = f"{STARSESSIONS_PREFIX}{copy[stack.cookie_name('fastapi')]}"
        stored = stack.sessions_redis.get(key)
        assert stored is not None, f"no {key} in the sessions' Redis"
        assert json.loads(stored)["user"]["sid"] == sid

        stack.keycloak.admin_delete(f"{stack.keycloak.realm}/sessions/{sid}")

        assert stack.sessions_redis.exists(key) == 0, "the session is still in Redis"
        assert _me_status(client, stack, "fastapi") == 401
    _every_worker(stack, "fastapi", "/me", 401, cookies=copy)


def test_minted_server_side_session_is_deleted_too(stack: Stack) -> None:
    """A session written into Redis as starsessions writes it is the app's own: it is served,
    and a back-channel logout deletes it, though the app never saw it being made."""
    keycloak = stack.keycloak
    tokens = keycloak.password_grant(*CLIENTS["fastapi"], "alice", USERS["alice"])
    cookies = _app_cookie(stack, "fastapi", tokens)
    key = f"{STARSESSIONS_PREFIX}{cookies[stack.cookie_name('fastapi')]}"
    with httpx.Client(cookies=cookies, timeout=10) as client:
        me = client.get(f"{stack.url('fastapi')}/me")
    assert me.status_code == 200, me.text
    assert me.json()["sid"] == tokens["session_state"]

    keycloak.admin_delete(f"{keycloak.realm}/sessions/{tokens['session_state']}")

    assert stack.sessions_redis.exists(key) == 0
    assert _status_with_cookie(stack, "fastapi", cookies) == 401


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


def test_only_keycloaks_access_token_authenticates_an_api_logout(stack: Stack) -> None:
    """Keycloak's own tokens of one session: its ID token (``"typ": "ID"``) sent as the
    bearer token does not authenticate the refresh token (401, the session lives on); its
    access token (``"typ": "Bearer"``, ``azp`` this client) does, and the session ends."""
    keycloak = stack.keycloak
    tokens = keycloak.password_grant(*CLIENTS["fastapi"], "alice", USERS["alice"])

    def api_logout(bearer: str) -> httpx.Response:
        with httpx.Client(timeout=10) as client:
            return client.post(
                f"{stack.url('fastapi')}/logout",
                data={"refresh_token": tokens["refresh_token"]},
                headers={"Accept": "application/json", "Authorization": f"Bearer {bearer}"},
            )

    def alive() -> bool:
        user = keycloak.user_id("alice")
        sessions = keycloak.admin_get(f"{keycloak.realm}/users/{user}/sessions")
        return tokens["session_state"] in {s["id"] for s in sessions}

    refused = api_logout(tokens["id_token"])
    assert refused.status_code == 401, refused.text
    assert refused.headers["www-authenticate"].startswith("Bearer ")
    assert alive()
    ended = api_logout(tokens["access_token"])
    assert ended.status_code == 200, ended.text
    assert ended.json()["op_session_ended"] is True
    assert not alive()


def test_a_stolen_refresh_token_does_not_end_the_keycloak_session(stack: Stack) -> None:
    """Posted without the session's cookie or bearer token, a refresh token ends nothing."""
    keycloak = stack.keycloak
    tokens = keycloak.password_grant(*CLIENTS["fastapi"], "alice", USERS["alice"])
    cookies = _app_cookie(stack, "fastapi", tokens)
    with httpx.Client(timeout=10) as client:
        response = client.post(
            f"{stack.url('fastapi')}/logout",
            data={"refresh_token": tokens["refresh_token"]},
            headers={"Accept": "application/json"},
        )
    assert response.status_code == 401
    sessions = keycloak.admin_get(f"{keycloak.realm}/users/{keycloak.user_id('alice')}/sessions")
    assert tokens["session_state"] in {s["id"] for s in sessions}
    assert _status_with_cookie(stack, "fastapi", cookies) == 200


@contextlib.contextmanager
def _client_attributes(keycloak: KeycloakServer, client_id: str, **changed: str) -> Iterator[None]:
    """``client_id``'s attributes changed in Keycloak (``backchannel_logout_url`` for
    ``backchannel.logout.url``), and put back afterwards."""
    (client,) = keycloak.admin_get(f"{keycloak.realm}/clients", clientId=client_id)
    path = f"{keycloak.realm}/clients/{client['id']}"
    original = dict(client["attributes"])
    client["attributes"].update({k.replace("_", "."): v for k, v in changed.items()})
    keycloak.admin_request("PUT", path, json=client).raise_for_status()
    try:
        yield
    finally:
        client["attributes"] = original
        keycloak.admin_request("PUT", path, json=client).raise_for_status()


@contextlib.contextmanager
def _logouts_swallowed(keycloak: KeycloakServer, client_id: str) -> Iterator[None]:
    """Keycloak's logouts of ``client_id`` delivered to a loopback server that answers 200
    and does nothing (so Keycloak logs no failure), as if the app had lost them."""

    class Swallow(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Swallow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sink = f"http://127.0.0.1:{server.server_address[1]}/lost"
    try:
        with _client_attributes(keycloak, client_id, backchannel_logout_url=sink):
            yield
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("sid_in_token", ["true", "false"], ids=["sid", "no-sid"])
def test_django_user_switch_over_a_stale_session_leaves_no_session_keycloak_cannot_end(
    sid_in_token: str, stack: Stack
) -> None:
    """alice's Django session outlives her Keycloak session (its logout never arrived);
    bob then logs in through Keycloak's form in the same browser.  Django's ``login()``
    flushes a session it finds another user in, after mozilla-django-oidc stored bob's ID
    token in it, so bob's Django session would hold no Keycloak login.  Whatever the app
    does with that session, once Keycloak logs bob out no copy of the session cookie
    reaches a view as bob, on any worker (also when Keycloak's logout token names no sid:
    the client's "Backchannel logout session required" off); and bob's next login works."""
    keycloak = stack.keycloak
    client_id = CLIENTS["django"][0]
    with _browser_client() as client:
        alice = _login_app(client, stack, "django", user="alice")
        with _logouts_swallowed(keycloak, client_id):
            keycloak.admin_delete(f"{keycloak.realm}/sessions/{alice}")
        assert _me_status(client, stack, "django") == 200, "alice's logout reached the app"

        page = client.get(f"{stack.url('django')}/login")
        assert "kc-form-login" in page.text, "Keycloak still had a session"
        # The session cookie mozilla-django-oidc's callback answers with (the app may
        # end that session on the very next request, which is one of the right answers).
        cookie, set_by_callback = stack.cookie_name("django"), []

        def remember_callback_cookie(response: httpx.Response) -> None:
            if response.request.url.path.startswith("/oidc/callback"):
                for header in response.headers.get_list("set-cookie"):
                    name, _, rest = header.partition("=")
                    if name == cookie and rest.split(";")[0]:
                        set_by_callback.append(rest.split(";")[0])

        client.event_hooks["response"].append(remember_callback_cookie)
        landed = _submit_login_form(client, page, "bob")
        client.event_hooks["response"].remove(remember_callback_cookie)
        assert landed.status_code == 200, _visible_text(landed.text)
        assert str(landed.url) == f"{stack.url('django')}/", landed.url
        assert set_by_callback, "the callback set no session cookie"
        copy = {cookie: set_by_callback[-1]}

        required = {"backchannel_logout_session_required": sid_in_token}
        with _client_attributes(keycloak, client_id, **required):
            keycloak.admin_post(f"{keycloak.realm}/users/{keycloak.user_id('bob')}/logout")
            logged_out_by = time.time()  # the tokens' iat is no later (Keycloak's clock is ours)
        _every_worker(stack, "django", "/me", 401, cookies=copy)

        # A token without sid ends the user's sessions begun up to its iat's second (whole
        # seconds: one begun in that very second cannot be told apart, so it counts as
        # earlier).  A new login in that second would be refused too, as it should be.
        time.sleep(max(0.0, math.floor(logged_out_by) + 1.1 - time.time()))
        client.cookies.clear()
        bob = _login_app(client, stack, "django", user="bob")
        keycloak.admin_delete(f"{keycloak.realm}/sessions/{bob}")
        _every_worker(stack, "django", "/me", 401, cookies=_app_session(client, stack, "django"))


def test_api_logout_through_the_middleware(stack: Stack) -> None:
    """An API client's POST /logout with its refresh token ends the Keycloak session."""
    keycloak = stack.keycloak
    tokens = keycloak.password_grant(*CLIENTS["fastapi"], "alice", USERS["alice"])
    cookies = _app_cookie(stack, "fastapi", tokens)
    with httpx.Client(cookies=cookies, timeout=10) as client:
        response = client.post(
            f"{stack.url('fastapi')}/logout",
            data={"refresh_token": tokens["refresh_token"]},
            headers={"Accept": "application/json"},
        )
    assert response.status_code == 200, response.text
    assert response.json()["op_session_ended"] is True
    sessions = keycloak.admin_get(f"{keycloak.realm}/users/{keycloak.user_id('alice')}/sessions")
    assert tokens["session_state"] not in {s["id"] for s in sessions}
    assert _status_with_cookie(stack, "fastapi", cookies) == 401


# Last: it revokes every session of every client begun up to it, its own second included.
def test_sign_out_all_sessions_reaches_apps_via_admin_url(stack: Stack) -> None:
    """Realm "Sign out all active sessions" arrives as the legacy k_logout and ends sessions."""
    with _browser_client() as client:
        for name in APPS:
            _login_app(client, stack, name, user="alice")
        copies = {name: _app_session(client, stack, name) for name in APPS}
        stack.keycloak.admin_post(f"{stack.keycloak.realm}/logout-all")
        for name in APPS:
            assert _me_status(client, stack, name) == 401, name
    for name in APPS:
        _every_worker(stack, name, "/me", 401, cookies=copies[name])
