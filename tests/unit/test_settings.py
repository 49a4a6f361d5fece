"""Settings are parsed once from KC_SSO_* variables, with errors that name the variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kc_sso_middleware import VARIABLES, ConfigurationError, Settings
from kc_sso_middleware import asgi as asgi_adapter
from kc_sso_middleware import wsgi as wsgi_adapter
from kc_sso_middleware.doctor.cli import CHECK_VARIABLES

BASE = {
    "KC_SSO_ISSUER": "http://127.0.0.1:8080/realms/demo",
    "KC_SSO_CLIENT_ID": "flask-app",
    "KC_SSO_SESSION_SECRET": "s3cret-value",
}


def test_defaults() -> None:
    """Only issuer, client id and session secret are needed; the rest has defaults."""
    settings = Settings.from_env(BASE)
    assert settings.logout_path == "/logout"
    assert settings.backchannel_path == "/backchannel-logout"
    assert settings.session_cookie == "session"
    assert settings.algorithms == ("RS256",)
    assert settings.store.startswith("sqlite:///")
    assert settings.typ_policy == "lenient"


def test_every_variable_is_parsed() -> None:
    """Each documented variable reaches its field."""
    env = {
        **BASE,
        "KC_SSO_CLIENT_SECRET": "cs",
        "KC_SSO_SESSION_COOKIE": "sid_cookie",
        "KC_SSO_SESSION_FORMAT": "Starlette",
        "KC_SSO_LOGOUT_PATH": "/auth/logout",
        "KC_SSO_BACKCHANNEL_PATH": "/auth/bcl",
        "KC_SSO_FRONTCHANNEL_PATH": "off",
        "KC_SSO_ADMIN_PATH": "/kc",
        "KC_SSO_POST_LOGOUT_REDIRECT_URI": "https://app.example/bye",
        "KC_SSO_LOGOUT_REDIRECT_ALLOWLIST": "https://a.example, https://b.example/x",
        "KC_SSO_LEGACY_REDIRECT_URI": "yes",
        "KC_SSO_STORE": "memory://",
        "KC_SSO_STORE_FAILURE": "open",
        "KC_SSO_ALGORITHMS": "RS256,ES256",
        "KC_SSO_CLOCK_SKEW": "5",
        "KC_SSO_ALLOW_MISSING_EXP": "true",
        "KC_SSO_TYP_POLICY": "strict",
        "KC_SSO_REVOKED_ACTION": "401",
        "KC_SSO_HTTP_TIMEOUT": "2.5",
    }
    settings = Settings.from_env(env)
    assert settings.client_secret == "cs"
    assert settings.session_format == "starlette"
    assert settings.frontchannel_path is None
    assert settings.admin_path == "/kc"
    assert settings.logout_redirect_allowlist == ("https://a.example", "https://b.example/x")
    assert settings.legacy_redirect_uri is True
    assert settings.algorithms == ("RS256", "ES256")
    assert settings.clock_skew == 5
    assert settings.revoked_action == "401"
    assert settings.http_timeout == 2.5


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        pytest.param("KC_SSO_ISSUER", "", "KC_SSO_ISSUER is required", id="missing issuer"),
        pytest.param("KC_SSO_ISSUER", "localhost/realms/x", "KC_SSO_ISSUER", id="issuer no scheme"),
        pytest.param(
            "KC_SSO_ISSUER",
            "http://h/realms/x/",
            "must not end with '/'",
            id="issuer trailing slash",
        ),
        pytest.param("KC_SSO_ALGORITHMS", "HS256", "only asymmetric", id="HMAC algorithm"),
        pytest.param("KC_SSO_ALGORITHMS", "none", "only asymmetric", id="none algorithm"),
        pytest.param(
            "KC_SSO_CLOCK_SKEW", "soon", "KC_SSO_CLOCK_SKEW='soon' is not valid", id="not a number"
        ),
        pytest.param("KC_SSO_TYP_POLICY", "loose", "accepted: lenient, strict", id="bad choice"),
        pytest.param("KC_SSO_LOGOUT_PATH", "logout", "must start with '/'", id="relative path"),
        pytest.param("KC_SSO_BACKCHANNEL_PATH", "/logout", "must differ", id="same paths"),
        pytest.param("KC_SSO_STORE", "mongo://x", "unknown scheme", id="unknown store"),
        pytest.param(
            "KC_SSO_LEGACY_REDIRECT_URI", "maybe", "accepted: true/false", id="bad boolean"
        ),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, message: str) -> None:
    """A bad value raises ConfigurationError naming the variable and the accepted forms."""
    with pytest.raises(ConfigurationError, match=re.escape(message)) as caught:
        Settings.from_env({**BASE, name: value})
    assert name in str(caught.value) or "KC_SSO_LOGOUT_PATH" in str(caught.value)


def test_session_secret_is_required() -> None:
    """Without KC_SSO_SESSION_SECRET the cookie cannot be read: a clear error."""
    env = {k: v for k, v in BASE.items() if k != "KC_SSO_SESSION_SECRET"}
    with pytest.raises(ConfigurationError, match="KC_SSO_SESSION_SECRET is required"):
        Settings.from_env(env)


def test_secrets_never_printed() -> None:
    """Secrets appear neither in repr nor in error messages."""
    settings = Settings.from_env(
        {
            **BASE,
            "KC_SSO_CLIENT_SECRET": "top-secret-cs",
            "KC_SSO_STORE": "redis+sentinel://:master-pw@h1,h2/m?sentinel_password=sentinel-pw",
        }
    )
    for secret in ("s3cret-value", "top-secret-cs", "master-pw", "sentinel-pw"):
        assert secret not in repr(settings)
        assert secret not in str(settings)


def test_readme_table_is_the_variable_table() -> None:
    """README.rst's configuration table is VARIABLES: names, meanings, accepted forms, defaults."""
    from devtools.readme_table import documented, rows

    readme = (Path(__file__).parents[2] / "README.rst").read_text()
    assert documented(readme) == rows()
    mentioned = set(re.findall(r"``(KC_SSO_[A-Z_]+)``", readme))
    assert mentioned <= {variable.name for variable in VARIABLES} | set(CHECK_VARIABLES)


def test_wsgi_adapter_refuses_an_asgi_app() -> None:
    """Wrapping an ASGI app with the WSGI adapter fails with a message naming the fix."""

    async def asgi_app(scope: object, receive: object, send: object) -> None:
        return None

    settings = Settings.from_env({**BASE, "KC_SSO_STORE": "memory://"})
    with pytest.raises(ConfigurationError, match=r"asgi\.SSOMiddleware"):
        wsgi_adapter.SSOMiddleware(asgi_app, settings)  # type: ignore[arg-type]


def test_asgi_adapter_refuses_a_flask_app() -> None:
    """Wrapping a Flask app with the ASGI adapter fails with a message naming the fix."""
    from flask import Flask

    settings = Settings.from_env({**BASE, "KC_SSO_STORE": "memory://"})
    with pytest.raises(ConfigurationError, match=r"wsgi.SSOMiddleware\(app.wsgi_app\)"):
        asgi_adapter.SSOMiddleware(Flask("x"), settings)  # type: ignore[arg-type]


def test_asgi_adapter_inside_session_middleware_is_reported() -> None:
    """Placed inside SessionMiddleware the middleware says so instead of silently failing."""
    import anyio
    from starlette.middleware.sessions import SessionMiddleware
    from starlette.responses import PlainTextResponse

    settings = Settings.from_env({**BASE, "KC_SSO_STORE": "memory://"})
    inner = asgi_adapter.SSOMiddleware(PlainTextResponse("hi"), settings)
    app = SessionMiddleware(inner, secret_key="k")

    async def call() -> None:
        scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b""}

        async def send(message: object) -> None:
            return None

        await app(scope, receive, send)

    with pytest.raises(ConfigurationError, match=r"after SessionMiddleware"):
        anyio.run(call)


def test_non_http_scopes_pass_through() -> None:
    """lifespan, and a websocket handshake without a session, reach the app untouched."""
    import anyio

    seen: list[str] = []

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        seen.append(str(scope["type"]))

    settings = Settings.from_env({**BASE, "KC_SSO_STORE": "memory://"})
    middleware = asgi_adapter.SSOMiddleware(app, settings)

    async def call() -> None:
        for kind in ("lifespan", "websocket"):
            await middleware({"type": kind}, None, None)  # type: ignore[arg-type]

    anyio.run(call)
    assert seen == ["lifespan", "websocket"]


def test_readme_events_table_is_the_event_table() -> None:
    """README.rst's table of events is EVENT_NAMES: every name, with its meaning."""
    from kc_sso_middleware.events import EVENT_NAMES

    readme = (Path(__file__).parents[2] / "README.rst").read_text()
    start = readme.index("   * - Event\n     - Meaning\n")
    block = readme[start:].split("\n\n", 1)[0]
    rows = re.findall(r"   \* - ``([a-z_.]+)``\n     - (.*?)(?=\n   \* |\Z)", block, re.S)
    documented = {name: " ".join(meaning.split()) for name, meaning in rows}
    assert documented == dict(EVENT_NAMES)
