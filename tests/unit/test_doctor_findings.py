"""``kc-sso-check`` held to what the middleware really does: review findings, one test each.

Each test names a case where the check said something the middleware contradicts (a
configuration passed that the middleware refuses, or flagged that it accepts), or where bad
input gave a traceback or an unbounded read instead of a finding with a code.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey, RSAKey

from kc_sso_middleware.doctor import Severity, fetch
from kc_sso_middleware.doctor import cli as doctor_cli
from kc_sso_middleware.doctor.admin import AdminCredentials, check_client
from kc_sso_middleware.doctor.fetch import Failure, Fetched, get
from kc_sso_middleware.doctor.provider import check_provider, discovery_findings, jwks_findings
from kc_sso_middleware.doctor.urls import app_urls
from kc_sso_middleware.testing import StandInOP
from tests.unit.test_doctor import (
    APP,
    ISSUER,
    JWKS_URL,
    RSA_KEY,
    SERVER,
    client,
    codes,
    compare,
    discovery,
    only,
    settings,
)

# ------------------------------------------------------------------ post-logout redirect URI


def test_post_logout_checks_the_return_path_keycloak_is_sent() -> None:
    """With KC_SSO_POST_LOGOUT_PATH on (the default) the logout sends Keycloak
    ``<app>/logout/complete``, not the final target: a client allowing only the target
    refuses every logout with "Invalid redirect uri"."""
    only_target = client(attributes={"post.logout.redirect.uris": f"{APP}/"})
    finding = only(compare(only_target), "post-logout-uri-missing")
    assert finding.severity is Severity.PROBLEM
    assert f"{APP}/logout/complete" in finding.message
    assert f"{APP}/*" in finding.fix
    # The return path alone is enough: the final target never reaches Keycloak.
    return_path = client(attributes={"post.logout.redirect.uris": f"{APP}/logout/complete"})
    found = compare(return_path, logout_redirect_allowlist=("https://www.example/",))
    assert "post-logout-uri-ok" in codes(found)
    assert "post-logout-uri-narrow" not in codes(found)


def test_post_logout_path_off_checks_the_final_target() -> None:
    """KC_SSO_POST_LOGOUT_PATH=off sends the final target itself, as before."""
    only_target = client(attributes={"post.logout.redirect.uris": f"{APP}/"})
    found = compare(only_target, post_logout_path=None)
    assert "post-logout-uri-ok" in codes(found)
    assert only(found, "post-logout-uri-narrow").severity is Severity.WARN
    return_path = client(attributes={"post.logout.redirect.uris": f"{APP}/logout/complete"})
    assert "post-logout-uri-missing" in codes(compare(return_path, post_logout_path=None))


def test_post_logout_return_path_below_the_mount_prefix() -> None:
    """The return path hangs below --app-url's prefix, as the middleware's root_path."""
    rep = client(attributes={"post.logout.redirect.uris": f"{APP}/shop/logout/complete"})
    assert "post-logout-uri-ok" in codes(compare(rep, app_url=f"{APP}/shop"))
    assert "post-logout-uri-missing" in codes(compare(rep))


# ------------------------------------------------------------------ JWKS as the middleware sees it


def _quietly(fetched: Fetched, **overrides: Any) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc warns about the short key it imports
        return codes(jwks_findings(settings(**overrides), fetched))


with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the short key is the point
    SHORT_RSA: dict[str, object] = {
        **RSAKey.generate_key(1024, parameters={"kid": "short"}).as_dict(private=False),
        "alg": "RS256",
        "use": "sig",
    }


def test_jwks_with_only_a_short_rsa_key_is_a_problem() -> None:
    """The middleware leaves RSA keys under 2048 bits out (RFC 7518 §3.3), so a realm whose
    only key is 1024 bits gets every logout token refused: not jwks-ok."""
    found = _quietly(Fetched(JWKS_URL, 200, {"keys": [SHORT_RSA]}))
    assert "jwks-ok" not in found
    assert set(found) & {"jwks-invalid", "jwks-no-usable-key"}


def test_jwks_with_one_unreadable_key_beside_a_good_one_is_ok() -> None:
    """RFC 7517 §5 and the middleware ignore a key they cannot use; the good one serves."""
    broken = {"kty": "RSA", "kid": "broken", "n": "AQAB"}  # no "e"
    odd_curve = {"kty": "EC", "kid": "odd", "crv": "P-999", "x": "AA", "y": "AA"}
    for extra in (broken, odd_curve):
        assert _quietly(Fetched(JWKS_URL, 200, {"keys": [extra, RSA_KEY]})) == ["jwks-ok"]


def test_jwks_ec_key_of_another_curve_is_not_usable() -> None:
    """An ES256 token is verified only with a P-256 key: a P-384 key without alg is none."""
    p384 = ECKey.generate_key("P-384", parameters={"kid": "e"}, private=True).as_dict(private=False)
    found = _quietly(Fetched(JWKS_URL, 200, {"keys": [p384]}), algorithms=("ES256",))
    assert found == ["jwks-no-usable-key"]


# ------------------------------------------------------------------ malformed URLs


def _mock(handler: Any) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


def test_malformed_jwks_uri_is_a_finding_not_a_traceback() -> None:
    """httpx.InvalidURL is no httpx.HTTPError: a jwks_uri like http://[::1 must still
    end in a finding with a code."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=discovery(jwks_uri="http://[::1/certs"))

    with _mock(handler) as http:
        found = check_provider(settings(), http)
    finding = only(found, "jwks-unreachable")
    assert finding.severity is Severity.UNCHECKED
    assert "http://[::1/certs" in finding.message


def test_malformed_admin_url_is_a_finding_not_a_traceback() -> None:
    """--admin-url is not validated by the command line; a bad one is admin-unreachable."""
    s = settings()
    credentials = AdminCredentials(user="admin", password="pw", base_url="http://[::1")
    with _mock(lambda request: httpx.Response(500)) as http:
        result = check_client(s, app_urls(s, APP), credentials, http, SERVER, "demo")
    assert codes(result.findings) == ["admin-unreachable"]


@pytest.mark.parametrize(
    "variable",
    ["KC_SSO_ISSUER", "KC_SSO_POST_LOGOUT_REDIRECT_URI", "KC_SSO_LOGOUT_REDIRECT_ALLOWLIST"],
)
def test_unparsable_url_in_the_environment_is_config_invalid(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str
) -> None:
    """urlsplit raises ValueError for http://[::1: the app refuses to start, and the check
    says so (config-invalid, exit 1) instead of an internal error with a traceback."""
    for name, value in {
        "KC_SSO_ISSUER": ISSUER,
        "KC_SSO_CLIENT_ID": "app",
        "KC_SSO_SESSION_SECRET": "s",
        "KC_SSO_STORE": "memory://",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(variable, "http://[::1/realms/demo")
    assert doctor_cli.main(["--json"]) == 1
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert [f["code"] for f in doc["findings"]] == ["config-invalid"]
    assert variable in doc["findings"][0]["message"]
    assert "Traceback" not in captured.err


# ------------------------------------------------------------------ bounded answers


class Endless:
    """A body of ``total`` bytes in 64 KiB chunks, ``pause`` seconds apart; counts reads."""

    def __init__(self, total: int, pause: float = 0.0) -> None:
        self.total, self.pause, self.sent = total, pause, 0

    def __iter__(self) -> Iterator[bytes]:
        chunk = b" " * 65536
        while self.sent < self.total:
            if self.pause:
                time.sleep(self.pause)
            self.sent += len(chunk)
            yield chunk


def test_a_huge_answer_is_not_read_whole() -> None:
    """A discovery URL that answers with an endless body (a wrong host, a proxy's download)
    is cut off after fetch.MAX_BODY bytes with a finding, not read into memory to the end."""
    body = Endless(fetch.MAX_BODY * 4)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    with _mock(handler) as http:
        fetched = get(http, f"{ISSUER}/.well-known/openid-configuration")
        assert fetched.failure is fetch.Failure.TOO_LARGE
        assert body.sent <= fetch.MAX_BODY + 65536
        found = check_provider(settings(), http)
    assert only(found, "issuer-unreachable").severity is Severity.UNCHECKED


def test_a_trickling_answer_ends_at_a_deadline() -> None:
    """A body that keeps coming, each piece within the read timeout, must still end."""
    body = Endless(200 * 65536, pause=0.02)  # 4 s in all without a deadline

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    began = time.monotonic()
    with httpx.Client(transport=httpx.MockTransport(handler), timeout=0.1) as http:
        fetched = get(http, f"{ISSUER}/.well-known/openid-configuration")
    assert time.monotonic() - began < 2.0
    assert fetched.failure is Failure.TIMEOUT


def test_a_normal_answer_is_still_read(op: StandInOP) -> None:
    """The bounded read keeps status, JSON body, text and headers of an ordinary answer."""
    with httpx.Client() as http:
        fetched = get(http, f"{op.issuer}/.well-known/openid-configuration")
    assert fetched.status == 200
    assert (fetched.json_object() or {}).get("issuer") == op.issuer
    assert fetched.text.startswith("{")
    assert fetched.headers.get("content-type", "").startswith("application/json")


# ------------------------------------------------------------------ redirects


def test_a_redirected_discovery_url_is_a_problem_not_unchecked() -> None:
    """The middleware follows no redirect (status 200 or DiscoveryError): an issuer whose
    discovery answers 301 (http to https, a moved realm) fails for good, which is exit 1,
    not "could not be checked"."""
    location = "https://sso.example/realms/demo/.well-known/openid-configuration"
    fetched = Fetched(
        f"{ISSUER}/.well-known/openid-configuration", 301, headers={"location": location}
    )
    finding = only(discovery_findings(settings(), fetched)[0], "discovery-failed")
    assert finding.severity is Severity.PROBLEM
    assert location in finding.message
    assert "KC_SSO_ISSUER" in finding.fix
