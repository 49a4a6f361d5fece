"""The example apps themselves (``examples/``), in-process against the stand-in OP.

Users copy the examples into production, so what they show must be the right way to log
in, not only the right way to wrap an app: PKCE (RFC 9700 §2.1.1), a new session id at
login for server-side sessions (OWASP session fixation), the session cookie's flags as
configured, a clean page for a failed login callback (Keycloak's error, a state this
browser did not start, an ID token whose nonce is not this login's), and a realm file
that registers exact redirect URIs (RFC 9700 §4.1.3).

The Flask and FastAPI examples are imported fresh for each test with the variables
``devtools.apps.app_env`` gives them under a real server; the Django example's backend runs
in ``test_django``'s project.
"""

# ruff: noqa: F811 - the fixtures of test_django are imported by name

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from devtools.apps import app_env
from devtools.redis_server import RedisServer
from kc_sso_middleware import asgi as asgi_adapter
from kc_sso_middleware.testing import StandInOP
from tests.adapters.test_django import (  # noqa: F401 - fixtures, used by name
    BASE_URL,
    HarnessFactory,
    _database,
    _op_endpoints,
    make_harness,
)
from tests.conftest import CLIENT_ID, CLIENT_SECRET, PortalClient, ServerLikeWSGITransport

Kind = Literal["flask", "fastapi"]
KINDS: list[Kind] = ["flask", "fastapi"]
MODULES = {"flask": "examples.flask_app", "fastapi": "examples.fastapi_app"}
COOKIE = "example_session"
REALM_FILE = Path(__file__).resolve().parents[2] / "examples" / "keycloak" / "realm.json"


class _Portal(PortalClient):
    """conftest's one-loop ASGI client, which can also run a coroutine on that loop."""

    def run(self, function: Callable[[], Any]) -> Any:
        return self._portal.call(function)


class ExampleApp:
    """One example app, imported with its variables, and a browser for it and the OP."""

    def __init__(self, kind: Kind, module: ModuleType) -> None:
        self.kind = kind
        self.module = module
        self.client: httpx.Client | _Portal
        if kind == "flask":
            self.client = httpx.Client(
                transport=ServerLikeWSGITransport(module.app), base_url=BASE_URL
            )
        else:
            self.client = _Portal(module.app, BASE_URL)
        #: the browser's cookies at the OP (its SSO session), kept apart from the app's
        self.op_browser = httpx.Client(timeout=10)

    def close(self) -> None:
        if isinstance(self.client, _Portal):
            middleware = _asgi_middleware(self.module.app)
            if middleware is not None:
                self.client.run(middleware.aclose)
            # the example's starsessions Redis client (its sockets, else left to the GC,
            # which warns in whichever later test it happens to run)
            session_redis = getattr(self.module, "session_redis", None)
            if session_redis is not None:
                self.client.run(session_redis.aclose)
        else:
            self.module.app.wsgi_app.close()
            session_redis = self.module.app.config.get("SESSION_REDIS")
            if session_redis is not None:
                session_redis.close()
        self.client.close()
        self.op_browser.close()
        self.module.bearer.close()

    def start_login(self) -> httpx.Response:
        """``/login``: the redirect to the OP's authorization endpoint."""
        start = self.client.get("/login")
        assert start.status_code == 302, start.text
        return start

    def authorize(self, location: str) -> str:
        """The OP's answer to an authorization request: the callback URL it sends back."""
        authorized = self.op_browser.get(location)
        assert authorized.status_code == 302, authorized.text
        callback: str = authorized.headers["location"]
        assert callback.startswith(f"{BASE_URL}/auth/callback?"), callback
        return callback

    def callback(self, url: str) -> httpx.Response:
        return self.client.get(url)

    def login(self) -> httpx.Response:
        """The whole login: ``/login``, the OP, the callback (whose answer is returned)."""
        return self.callback(self.authorize(self.start_login().headers["location"]))


def _asgi_middleware(app: Any) -> asgi_adapter.SSOMiddleware | None:
    """The single sign-out middleware in a FastAPI app's built middleware stack."""
    layer = getattr(app, "middleware_stack", None)
    while layer is not None:
        if isinstance(layer, asgi_adapter.SSOMiddleware):
            return layer
        layer = getattr(layer, "app", None)
    return None


ExampleFactory = Callable[..., ExampleApp]


@pytest.fixture
def make_example(
    op: StandInOP, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., ExampleApp]]:
    """Import an example afresh with its variables (extra ones as keyword arguments)."""
    built: list[ExampleApp] = []

    def factory(kind: Kind, session_store: str | None = None, **extra: str) -> ExampleApp:
        env = app_env(
            issuer=op.issuer,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            cookie=COOKIE,
            store="memory://",
            **extra,
        )
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        if session_store is None:
            monkeypatch.delenv("EXAMPLE_SESSION_STORE", raising=False)
        else:
            monkeypatch.setenv("EXAMPLE_SESSION_STORE", session_store)
        sys.modules.pop(MODULES[kind], None)  # its settings are read at import
        example = ExampleApp(kind, importlib.import_module(MODULES[kind]))
        built.append(example)
        return example

    yield factory
    for example in built:
        example.close()
    for module in MODULES.values():
        sys.modules.pop(module, None)


def _set_cookie(response: httpx.Response, name: str) -> str:
    """The ``Set-Cookie`` header of the response that sets cookie ``name``."""
    (header,) = [
        value
        for value in response.headers.get_list("set-cookie")
        if value.strip().startswith(f"{name}=")
    ]
    return header


def _cookie_value(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0].split("=", 1)[1].strip('"')


def _with_params(url: str, **params: str) -> str:
    """``url`` with some query parameters replaced."""
    parts = urlsplit(url)
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


# --------------------------------------------------------------------------- login


@pytest.mark.parametrize("kind", KINDS)
def test_login_logs_in(make_example: ExampleFactory, kind: Kind) -> None:
    """The baseline: the code flow ends on the home page, logged in, /me has the claims."""
    example = make_example(kind)
    landed = example.login()
    assert landed.status_code in (302, 303), landed.text
    me = example.client.get("/me")
    assert me.status_code == 200, me.text
    assert me.json()["preferred_username"] == "alice"


@pytest.mark.parametrize("kind", KINDS)
def test_login_uses_pkce(make_example: ExampleFactory, kind: Kind) -> None:
    """The authorization request carries an S256 code challenge (RFC 9700 §2.1.1: PKCE for
    confidential clients too; the Django example has it with OIDC_USE_PKCE), besides state
    and nonce."""
    example = make_example(kind)
    location = example.start_login().headers["location"]
    params = parse_qs(urlsplit(location).query)
    assert params.get("code_challenge_method") == ["S256"], location
    assert params.get("code_challenge"), location
    assert params.get("state"), location
    assert params.get("nonce"), location


@pytest.mark.parametrize("kind", KINDS)
def test_session_cookie_is_secure_when_configured(make_example: ExampleFactory, kind: Kind) -> None:
    """KC_SSO_SESSION_COOKIE_SECURE=true (an https deployment) gives the session cookie
    Secure, as in the Django example: the login's state is in it already, and so is the
    login afterwards.  HttpOnly always; unset, the http://127.0.0.1 demo keeps working."""
    example = make_example(kind, session_cookie_secure="true")
    header = _set_cookie(example.start_login(), COOKIE)
    attributes = {part.split("=", 1)[0].strip().lower() for part in header.split(";")[1:]}
    assert {"httponly", "secure"} <= attributes, header


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "case",
    ["keycloak error", "state of another login", "no state", "nonce of another login"],
)
def test_a_failed_login_callback_gets_a_clean_page(
    make_example: ExampleFactory, kind: Kind, case: str
) -> None:
    """A callback that is no login (Keycloak's error, e.g. the user cancelled; a state this
    browser did not start: CSRF, a stale or replayed callback; an ID token whose nonce is not
    this login's: an injected code) is refused with a page that offers a new login: a 400,
    never a 500, nothing of the request echoed, and nobody logged in."""
    example = make_example(kind)
    location = example.start_login().headers["location"]
    if case == "keycloak error":
        url = _with_params(
            f"{BASE_URL}/auth/callback",
            error="access_denied",
            error_description="<script>alert(1)</script>",
            state=parse_qs(urlsplit(location).query)["state"][0],
        )
    elif case == "state of another login":
        url = _with_params(example.authorize(location), state="not-this-browsers-state")
    elif case == "no state":
        callback = urlsplit(example.authorize(location))
        code = parse_qs(callback.query)["code"][0]
        url = f"{BASE_URL}/auth/callback?code={code}"
    else:  # the OP signs the nonce it was sent: one the browser's login never made
        url = example.authorize(_with_params(location, nonce="someone-elses-nonce"))
    answer = example.callback(url)
    assert answer.status_code == 400, (answer.status_code, answer.text[:300])
    assert answer.headers["content-type"].startswith("text/html")
    assert 'href="/login"' in answer.text
    assert "<script>" not in answer.text
    assert example.client.get("/me").status_code == 401


# --------------------------------------------------------------------------- sessions


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.mark.redis
@pytest.mark.parametrize("kind", KINDS)
def test_login_gives_a_server_side_session_a_new_id(
    make_example: ExampleFactory, kind: Kind, redis_server: RedisServer
) -> None:
    """With server-side sessions (EXAMPLE_SESSION_STORE: Flask-Session, starsessions) the
    session id the browser had before login is not the one that is logged in: an id an
    attacker planted (or read) before the login stays anonymous (OWASP session fixation).
    Cookie sessions have no id; Django's login() cycles its key."""
    example = make_example(kind, session_store=f"{redis_server.url}/0")
    start = example.start_login()
    before = _cookie_value(_set_cookie(start, COOKIE))
    landed = example.callback(example.authorize(start.headers["location"]))
    after = _cookie_value(_set_cookie(landed, COOKIE))
    assert after != before, "the login kept the session id the browser had before it"
    assert example.client.get("/me").status_code == 200
    example.client.cookies.clear()
    planted = example.client.get("/me", headers={"Cookie": f"{COOKIE}={before}"})
    assert planted.status_code == 401, "the id from before the login is logged in"


# --------------------------------------------------------------------------- Django


def test_django_callback_whose_code_keycloak_refuses_is_a_failed_login(
    make_harness: HarnessFactory,
) -> None:
    """The Django example's backend: a callback whose code Keycloak refuses (used already,
    expired, another client's) is a failed login, mozilla-django-oidc's failure URL, not a
    500 from the token request's HTTPError."""
    harness = make_harness()
    start = harness.get("/login")
    callback = harness.op_browser.get(start.headers["location"]).headers["location"]
    answer = harness.get(_with_params(callback, code="a-code-keycloak-never-issued"))
    assert answer.status_code == 302, (answer.status_code, answer.text[:300])
    assert answer.headers["location"] == "/"
    assert harness.get("/me").status_code == 401


# --------------------------------------------------------------------------- the realm


def test_demo_realm_registers_only_the_login_callbacks() -> None:
    """Each client of the demo realm accepts exactly its app's login callback as redirect
    URI (RFC 9700 §4.1.3: exact matching; a ``/*`` wildcard lets a code go to any page of
    the app), as a copy of it should."""
    callbacks = {
        "flask-app": ["${FLASK_APP_URL}/auth/callback"],
        "fastapi-app": ["${FASTAPI_APP_URL}/auth/callback"],
        "django-app": ["${DJANGO_APP_URL}/oidc/callback/"],
    }
    realm = json.loads(REALM_FILE.read_text())
    registered = {client["clientId"]: client["redirectUris"] for client in realm["clients"]}
    assert registered == callbacks
