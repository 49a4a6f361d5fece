"""Edge cases of the KC_SSO_* variables: each is refused with a ConfigurationError naming
the variable, never accepted with a meaning other than README's, and never echoes a secret."""

from __future__ import annotations

import re
from typing import Any

import pytest

from kc_sso_middleware import ConfigurationError, Settings

BASE = {
    "KC_SSO_ISSUER": "http://127.0.0.1:8080/realms/demo",
    "KC_SSO_CLIENT_ID": "flask-app",
    "KC_SSO_SESSION_SECRET": "s3cret-value",
    "KC_SSO_STORE": "memory://",
}
FIELDS: dict[str, Any] = {
    "issuer": BASE["KC_SSO_ISSUER"],
    "client_id": BASE["KC_SSO_CLIENT_ID"],
    "session_secret": BASE["KC_SSO_SESSION_SECRET"],
    "store": "memory://",
}


def refused(env: dict[str, str], name: str) -> str:
    """The message of the ConfigurationError ``env`` raises; it names ``name``."""
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({**BASE, **env})
    message = str(caught.value)
    assert name in message
    return message


@pytest.mark.parametrize(
    "store",
    [
        pytest.param("redis//:hunter2@h:6379/0", id="no colon"),
        pytest.param("redis:/:hunter2@h:6379/0", id="one slash"),
    ],
)
def test_a_malformed_store_url_is_not_echoed(store: str) -> None:
    """A store URL with a typo before its password is refused without showing the password."""
    message = refused({"KC_SSO_STORE": store}, "KC_SSO_STORE")
    assert "hunter2" not in message


def test_an_empty_session_secret_in_code_is_refused() -> None:
    """Settings(session_secret="") is refused as an empty KC_SSO_SESSION_SECRET is: an
    empty key signs cookies anyone can forge."""
    with pytest.raises(ConfigurationError, match="KC_SSO_SESSION_SECRET is required"):
        Settings(**{**FIELDS, "session_secret": ""})


@pytest.mark.parametrize(
    ("name", "path"),
    [
        pytest.param("KC_SSO_LOGOUT_PATH", "/k_logout", id="logout = admin k_logout"),
        pytest.param("KC_SSO_HEALTH_PATH", "/k_test_available", id="health = admin test"),
        pytest.param("KC_SSO_BACKCHANNEL_PATH", "/k_push_not_before", id="bcl = admin push"),
    ],
)
def test_a_path_colliding_with_an_admin_path_is_refused(name: str, path: str) -> None:
    """The admin protocol's paths below KC_SSO_ADMIN_PATH are served too: a path equal to
    one of them would silently lose one of the two routes."""
    message = refused({name: path}, "KC_SSO_ADMIN_PATH")
    assert "must differ" in message


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/bcl?x=1", id="query"),
        pytest.param("/bcl#x", id="fragment"),
        pytest.param("/a/../bcl", id="dot-dot"),
        pytest.param("/a/./bcl", id="dot"),
        pytest.param("//bcl", id="double slash"),
        pytest.param("/b cl", id="space"),
        pytest.param("/b%20cl", id="percent-encoded"),
        pytest.param("/b\u009bcl", id="C1 control"),
    ],
)
def test_a_path_no_request_can_reach_is_refused(path: str) -> None:
    """A served path is compared with the request's decoded path: one with a query,
    fragment, dot segment, '//', blank or escape would never match (a back-channel
    path never matching loses every logout), so it is refused."""
    refused({"KC_SSO_BACKCHANNEL_PATH": path}, "KC_SSO_BACKCHANNEL_PATH")


@pytest.mark.parametrize(
    "issuer",
    [
        pytest.param("http://h/realms/x?a=b", id="query"),
        pytest.param("http://h/realms/x#f", id="fragment"),
        pytest.param("http://h:port/realms/x", id="bad port"),
        pytest.param("http://h/realms/ x", id="space"),
    ],
)
def test_an_issuer_that_cannot_be_keycloaks_is_refused(issuer: str) -> None:
    """The issuer is compared exactly and discovery is {issuer}/.well-known/...: a query,
    a fragment, a bad port or a blank cannot work."""
    refused({"KC_SSO_ISSUER": issuer}, "KC_SSO_ISSUER")


def test_an_issuer_with_credentials_is_refused_without_echoing_them() -> None:
    """Credentials in the issuer would reach repr(settings) and logs: refused, unshown."""
    message = refused({"KC_SSO_ISSUER": "http://admin:hunter2@h/realms/x"}, "KC_SSO_ISSUER")
    assert "hunter2" not in message
    message = refused({"KC_SSO_ISSUER": "http://admin:hunter2@h/realms/x/"}, "KC_SSO_ISSUER")
    assert "hunter2" not in message


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("https:///bye", id="no host"),
        pytest.param("http:bye", id="no authority"),
        pytest.param("https://u:hunter2@app.example/bye", id="credentials"),
    ],
)
def test_a_post_logout_redirect_uri_without_an_origin_is_refused(uri: str) -> None:
    """Its origin is the app's public origin: it needs a host, and holds no credentials."""
    message = refused({"KC_SSO_POST_LOGOUT_REDIRECT_URI": uri}, "KC_SSO_POST_LOGOUT_REDIRECT_URI")
    assert "hunter2" not in message


def test_a_post_logout_redirect_uri_may_name_a_single_page_apps_route() -> None:
    """A fragment is the browser's: ``https://app/#/logged-out`` is a target like any."""
    uri = "https://app.example/#/logged-out"
    settings = Settings.from_env({**BASE, "KC_SSO_POST_LOGOUT_REDIRECT_URI": uri})
    assert settings.post_logout_redirect_uri == uri


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param("https://a.example?x=1", id="query"),
        pytest.param("https://a.example#x", id="fragment"),
        pytest.param("https://u:hunter2@a.example", id="credentials"),
    ],
)
def test_an_allowlist_entry_that_is_no_prefix_is_refused(entry: str) -> None:
    """https://a.example?x=1 would allow all of a.example, not what it says."""
    message = refused(
        {"KC_SSO_LOGOUT_REDIRECT_ALLOWLIST": f"https://b.example,{entry}"},
        "KC_SSO_LOGOUT_REDIRECT_ALLOWLIST",
    )
    assert "hunter2" not in message


@pytest.mark.parametrize("name", ["my session", "a=b", "a;b", "sess\u00efon", "a,b", '"s"'])
def test_a_cookie_name_outside_rfc_6265_is_refused(name: str) -> None:
    """A cookie name is an RFC 6265 token: with a blank, '=' or ';' it can never be read
    back from a Cookie header, so no revoked session would ever be found."""
    refused({"KC_SSO_SESSION_COOKIE": name}, "KC_SSO_SESSION_COOKIE")


def test_samesite_none_without_secure_is_refused() -> None:
    """Browsers drop a SameSite=None cookie without Secure: the expiring Set-Cookie would
    be ignored and a revoked cookie kept."""
    refused({"KC_SSO_SESSION_COOKIE_SAMESITE": "None"}, "KC_SSO_SESSION_COOKIE_SECURE")
    settings = Settings.from_env(
        {**BASE, "KC_SSO_SESSION_COOKIE_SAMESITE": "None", "KC_SSO_SESSION_COOKIE_SECURE": "on"}
    )
    assert settings.session_cookie_samesite == "none"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("KC_SSO_SESSION_COOKIE_DOMAIN", "example.com; SameSite=None", id="domain"),
        pytest.param("KC_SSO_SESSION_COOKIE_DOMAIN", "exa mple.com", id="domain blank"),
        pytest.param("KC_SSO_SESSION_COOKIE_PATH", "/; Domain=evil.example", id="path"),
    ],
)
def test_a_cookie_attribute_cannot_add_attributes(name: str, value: str) -> None:
    """The expiring Set-Cookie writes these verbatim: a ';' would add attributes."""
    refused({name: value}, name)


def test_a_cookie_attribute_from_code_cannot_split_the_header() -> None:
    """Settings built in code is checked the same: no CR/LF into a Set-Cookie header."""
    with pytest.raises(ConfigurationError, match=re.escape("KC_SSO_SESSION_COOKIE_DOMAIN")):
        Settings(**{**FIELDS, "session_cookie_domain": "example.com\r\nX-Evil: 1"})


@pytest.mark.parametrize(
    ("env", "name"),
    [
        pytest.param(
            {"KC_SSO_FRONTCHANNEL_REVOKE_OTHERS": "true"},
            "KC_SSO_FRONTCHANNEL_PATH",
            id="revoke-others without front-channel",
        ),
        pytest.param(
            {"KC_SSO_LIVENESS_FAILURE": "closed"},
            "KC_SSO_LIVENESS_INTERVAL",
            id="liveness failure without liveness",
        ),
    ],
)
def test_an_option_of_a_feature_that_is_off_is_refused(env: dict[str, str], name: str) -> None:
    """An option whose feature is off would be silently ignored: refused, naming both."""
    refused(env, name)


def test_paths_that_are_fine_stay_accepted() -> None:
    """Trailing slashes, deep paths and the characters a path may hold are accepted."""
    settings = Settings.from_env(
        {
            **BASE,
            "KC_SSO_BACKCHANNEL_PATH": "/auth/bcl/",
            "KC_SSO_LOGOUT_PATH": "/a-b_c.d~e/logout;v=1",
            "KC_SSO_ADMIN_PATH": "/kc/",
            "KC_SSO_SESSION_COOKIE": "__Host-my_session.v1",
            "KC_SSO_SESSION_COOKIE_DOMAIN": ".example.com",
            "KC_SSO_POST_LOGOUT_REDIRECT_URI": "https://app.example:8443/bye?x=1",
            "KC_SSO_LOGOUT_REDIRECT_ALLOWLIST": "https://a.example/, https://b.example/x,",
        }
    )
    assert settings.backchannel_path == "/auth/bcl/"
    assert settings.logout_redirect_allowlist == ("https://a.example/", "https://b.example/x")


def test_the_admin_names_settings_checks_are_the_ones_served() -> None:
    """Settings checks collisions against the admin protocol's paths the facade serves."""
    from kc_sso_middleware._variable_checks import ADMIN_ACTION_NAMES
    from kc_sso_middleware.core.admin import ADMIN_ACTIONS

    assert set(ADMIN_ACTION_NAMES) == set(ADMIN_ACTIONS)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KC_SSO_CLOCK_SKEW", "1_0"),  # int() reads 10
        ("KC_SSO_CLOCK_SKEW", "\u0661\u0662"),  # int() reads Arabic-Indic digits as 12
        ("KC_SSO_MAX_SESSION_LIFETIME", "0x10"),
        ("KC_SSO_HTTP_TIMEOUT", "1_0.5"),  # float() reads 10.5
        ("KC_SSO_HTTP_TIMEOUT", "\u0661.\u0665"),
        ("KC_SSO_HTTP_TIMEOUT", "infinity"),
    ],
)
def test_a_number_is_plain_ascii_decimal(name: str, value: str) -> None:
    """What Python's int() and float() take beyond plain decimals is refused, not read as a
    number its reader would not see in it."""
    assert "not a decimal" in refused({name: value}, name)


def test_plain_decimals_stay_accepted() -> None:
    settings = Settings.from_env(
        {**BASE, "KC_SSO_CLOCK_SKEW": " 30 ", "KC_SSO_HTTP_TIMEOUT": "2.5"}
    )
    assert (settings.clock_skew, settings.http_timeout) == (30, 2.5)
    assert Settings.from_env({**BASE, "KC_SSO_HTTP_TIMEOUT": ".5"}).http_timeout == 0.5
