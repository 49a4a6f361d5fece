"""``kc-sso-check``: every decision as values, the admin API over a mock transport, the CLI.

The decisions (discovery, JWKS, client representation, realm, store, URLs, known texts)
are pure functions, so each misconfiguration is one table row: input → code, severity,
and words of the fix.  The command line runs against the stand-in OP on loopback.
"""

from __future__ import annotations

import copy
import io
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import RSAKey

from kc_sso_middleware import Settings, doctor
from kc_sso_middleware.doctor import CODES, Finding, Report, Severity, checks
from kc_sso_middleware.doctor import cli as doctor_cli
from kc_sso_middleware.doctor.admin import AdminCredentials, check_client
from kc_sso_middleware.doctor.checks import Options, run
from kc_sso_middleware.doctor.client import SecretState, client_findings
from kc_sso_middleware.doctor.explain import explain
from kc_sso_middleware.doctor.fetch import Failure, Fetched
from kc_sso_middleware.doctor.probe import probe_backchannel, probe_findings
from kc_sso_middleware.doctor.provider import (
    discovery_findings,
    jwks_findings,
    transport_findings,
)
from kc_sso_middleware.doctor.realm import parse_version, realm_findings, version_findings
from kc_sso_middleware.doctor.sqlite_file import (
    Mount,
    SQLiteLocation,
    inspect_sqlite,
    mount_of,
    parse_mountinfo,
    sqlite_findings,
)
from kc_sso_middleware.doctor.store import StoreProbe, probe_store, store_findings
from kc_sso_middleware.doctor.urls import (
    app_urls,
    effective_post_logout_uris,
    matching_redirect,
    resolve_client_url,
    same_url,
    server_of,
)
from kc_sso_middleware.stores import open_store
from kc_sso_middleware.stores._following import FollowerState
from kc_sso_middleware.testing import StandInOP

ISSUER = "https://sso.example/realms/demo"
SERVER = "https://sso.example"
APP = "https://app.example"
SECRET = "app-secret"


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "issuer": ISSUER,
        "client_id": "app",
        "client_secret": SECRET,
        "session_secret": "s",
        "store": "memory://",
    }
    values.update(overrides)
    return Settings(**values)


def codes(findings: list[Finding], severity: Severity | None = None) -> list[str]:
    return [f.code for f in findings if severity is None or f.severity is severity]


def only(findings: list[Finding], code: str) -> Finding:
    matching = [f for f in findings if f.code == code]
    assert len(matching) == 1, f"{code} not found once in {codes(findings)}"
    return matching[0]


# ------------------------------------------------------------------------ report


def test_exit_code_problem_beats_unchecked_beats_ok() -> None:
    """1 when any finding is a problem, else 2 when one is unchecked, else 0; warn never counts."""
    ok = Finding("discovery-ok", Severity.OK, "fine")
    warn = Finding("store-memory", Severity.WARN, "hm")
    problem = Finding("session-required-off", Severity.PROBLEM, "bad", "fix it")
    unchecked = Finding("issuer-unreachable", Severity.UNCHECKED, "no answer")
    assert Report.of([ok, warn]).exit_code == 0
    assert Report.of([ok, unchecked]).exit_code == 2
    assert Report.of([unchecked, problem, ok]).exit_code == 1


def test_unlisted_code_is_refused() -> None:
    """A finding code missing from the code table is an error when the finding is made."""
    with pytest.raises(ValueError, match="unlisted"):
        Finding("no-such-code", Severity.OK, "x")


def test_json_shape() -> None:
    """--json: version, result, exit code, counts per severity, context, findings with area."""
    report = Report.of(
        [
            Finding("discovery-ok", Severity.OK, "fine"),
            Finding("frontchannel-on", Severity.PROBLEM, "bad", "turn it off", {"a": 1}),
        ],
        issuer=ISSUER,
    )
    doc = json.loads(report.to_json())
    assert doc["version"] == 1
    assert doc["result"] == "problem"
    assert doc["exit_code"] == 1
    assert doc["summary"] == {"ok": 1, "info": 0, "warn": 0, "problem": 1, "unchecked": 0}
    assert doc["context"] == {"issuer": ISSUER}
    assert doc["findings"][1] == {
        "code": "frontchannel-on",
        "severity": "problem",
        "area": "client",
        "message": "bad",
        "fix": "turn it off",
        "details": {"a": 1},
    }


def test_text_names_code_message_fix_and_result() -> None:
    """The plain-text report groups findings by area and ends with the verdict and exit code."""
    text = Report.of(
        [Finding("frontchannel-on", Severity.PROBLEM, "Front channel is on.", "Turn it off.")],
        issuer=ISSUER,
    ).to_text()
    assert "issuer: " + ISSUER in text
    assert "The client in Keycloak (admin API)" in text
    assert "PROBLEM   [frontchannel-on] Front channel is on." in text
    assert "fix: Turn it off." in text
    assert text.rstrip().endswith("exit 1")


def test_every_code_is_reported_somewhere() -> None:
    """Every listed code appears in the doctor's source: no dead entries in the table."""
    package = Path(doctor.__file__).parent
    source = "".join(p.read_text() for p in package.glob("*.py") if p.name != "codes.py")
    unused = [code for code in CODES if f'"{code}"' not in source]
    assert not unused


# ------------------------------------------------------------------------ urls


def test_app_urls_from_app_url_with_prefix_and_paths() -> None:
    """Paths hang below --app-url (with its mount prefix); the Admin URL is the admin path."""
    urls = app_urls(settings(admin_path="/kc/"), "https://app.example/shop/")
    assert urls.base == "https://app.example/shop"
    assert urls.backchannel == "https://app.example/shop/backchannel-logout"
    assert urls.logout == "https://app.example/shop/logout"
    assert urls.admin == "https://app.example/shop/kc"
    assert urls.frontchannel is None
    assert urls.post_logout_redirect == "https://app.example/shop/"
    assert urls.post_logout_pattern == "https://app.example/shop/*"


def test_app_urls_derived_from_post_logout_uri_and_keycloak_address() -> None:
    """Without --app-url, the post-logout URI's origin; Keycloak may reach the app elsewhere."""
    urls = app_urls(
        settings(post_logout_redirect_uri="https://app.example/bye", frontchannel_path="/fc"),
        None,
        "http://app.internal:8000",
    )
    assert urls.source == "KC_SSO_POST_LOGOUT_REDIRECT_URI"
    assert urls.base == APP
    assert urls.backchannel == "http://app.internal:8000/backchannel-logout"
    assert urls.admin == "http://app.internal:8000"
    assert urls.frontchannel == "https://app.example/fc"
    assert urls.post_logout_redirect == "https://app.example/bye"
    assert app_urls(settings(), None).base is None
    assert app_urls(settings(admin_path=None), APP).admin is None


def test_bad_app_url_is_refused() -> None:
    with pytest.raises(ValueError, match="absolute"):
        app_urls(settings(), "app.example")


@pytest.mark.parametrize(
    ("value", "root", "expected"),
    [
        pytest.param(
            "https://a.example/x", "https://r.example", "https://a.example/x", id="absolute"
        ),
        pytest.param("/x", "https://r.example/base", "https://r.example/base/x", id="root url"),
        pytest.param("/x", "${authBaseUrl}", "https://sso.example/x", id="authBaseUrl"),
        pytest.param("/x", None, "https://sso.example/x", id="no root: Keycloak's origin"),
        pytest.param("  ", None, None, id="blank"),
    ],
)
def test_resolve_client_url(value: str, root: str | None, expected: str | None) -> None:
    """Relative client URLs resolve as Keycloak's ResolveRelative does."""
    assert resolve_client_url(value, root, SERVER) == expected


def test_same_url_ignores_default_port_host_case_and_query() -> None:
    assert same_url("https://App.example:443/b?x=1", "https://app.example/b")
    assert not same_url("https://app.example/b/", "https://app.example/b")
    assert not same_url("http://app.example/b", "https://app.example/b")


def test_server_of_issuer() -> None:
    assert server_of("https://sso.example/auth/realms/my%20realm") == (
        "https://sso.example/auth",
        "my realm",
    )
    with pytest.raises(ValueError, match="Keycloak issuer"):
        server_of("https://op.example/")


@pytest.mark.parametrize(
    ("attribute", "expected"),
    [
        pytest.param(None, ["https://app.example/*"], id="absent: redirect URIs"),
        pytest.param("", ["https://app.example/*"], id="empty: redirect URIs"),
        pytest.param("-", [], id="minus: none"),
        pytest.param("https://a/x ## https://b/*", ["https://a/x", "https://b/*"], id="split"),
        pytest.param("https://a/x##+", ["https://a/x", "https://app.example/*"], id="plus"),
    ],
)
def test_effective_post_logout_uris(attribute: str | None, expected: list[str]) -> None:
    assert effective_post_logout_uris(attribute, ["https://app.example/*"]) == expected


@pytest.mark.parametrize(
    ("uri", "patterns", "allowed"),
    [
        pytest.param("https://app.example/", ["https://app.example/*"], True, id="prefix"),
        pytest.param("https://app.example", ["https://app.example/*"], True, id="no slash"),
        pytest.param("https://app.example/a?b=1", ["https://app.example/a*"], True, id="query"),
        pytest.param("https://app.example/", ["https://app.example/"], True, id="exact"),
        pytest.param("https://app.example/x", ["https://app.example/"], False, id="not exact"),
        pytest.param("https://evil.example/", ["https://app.example/*"], False, id="other"),
        pytest.param("https://app.example/", ["*"], True, id="star"),
        pytest.param("https://app.example/", ["/*"], True, id="relative to root"),
        pytest.param("https://app.example/", [], False, id="none"),
    ],
)
def test_matching_redirect(uri: str, patterns: list[str], allowed: bool) -> None:
    """Keycloak's RedirectUtils matching: exact, '*', or a trailing '*' prefix."""
    assert (matching_redirect(uri, patterns, APP, SERVER) is not None) is allowed


# ------------------------------------------------------------------------ provider


def discovery(**overrides: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "issuer": ISSUER,
        "jwks_uri": f"{ISSUER}/protocol/openid-connect/certs",
        "end_session_endpoint": f"{ISSUER}/protocol/openid-connect/logout",
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
        "frontchannel_logout_supported": True,
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not None}


DISCOVERY_URL = f"{ISSUER}/.well-known/openid-configuration"


@pytest.mark.parametrize(
    ("fetched", "code", "severity", "fix_words"),
    [
        pytest.param(
            Fetched(DISCOVERY_URL, failure=Failure.CONNECT, error="ConnectError: refused"),
            "issuer-unreachable",
            Severity.UNCHECKED,
            "reach",
            id="refused",
        ),
        pytest.param(
            Fetched(DISCOVERY_URL, failure=Failure.TIMEOUT, error="ReadTimeout"),
            "issuer-unreachable",
            Severity.UNCHECKED,
            "reach",
            id="timeout",
        ),
        pytest.param(
            Fetched(
                DISCOVERY_URL,
                failure=Failure.TLS,
                error="ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED] self-signed certificate",
            ),
            "issuer-tls-untrusted",
            Severity.PROBLEM,
            "KC_SSO_CA_BUNDLE",
            id="untrusted certificate",
        ),
        pytest.param(
            Fetched(DISCOVERY_URL, failure=Failure.TLS, error="[SSL: WRONG_VERSION_NUMBER]"),
            "issuer-tls-untrusted",
            Severity.PROBLEM,
            "scheme matches the port",
            id="https to an http port",
        ),
        pytest.param(
            Fetched(DISCOVERY_URL, 404, {"error": "Realm does not exist"}),
            "discovery-not-found",
            Severity.PROBLEM,
            "realm name",
            id="404",
        ),
        pytest.param(
            Fetched(DISCOVERY_URL, 502), "discovery-failed", Severity.UNCHECKED, "proxy", id="502"
        ),
        pytest.param(
            Fetched(DISCOVERY_URL, 200, None, "<html>"),
            "discovery-invalid",
            Severity.PROBLEM,
            "/realms/",
            id="not JSON",
        ),
        pytest.param(
            Fetched(DISCOVERY_URL, 200, discovery(issuer=ISSUER + "/")),
            "issuer-mismatch",
            Severity.PROBLEM,
            f"KC_SSO_ISSUER={ISSUER}/",
            id="trailing slash",
        ),
        pytest.param(
            Fetched(DISCOVERY_URL, 200, discovery(backchannel_logout_supported=False)),
            "backchannel-unsupported",
            Severity.PROBLEM,
            "Back-Channel",
            id="no back-channel",
        ),
        pytest.param(
            Fetched(DISCOVERY_URL, 200, discovery(backchannel_logout_session_supported=None)),
            "backchannel-session-unsupported",
            Severity.WARN,
            "sid",
            id="no sid",
        ),
        pytest.param(
            Fetched(DISCOVERY_URL, 200, discovery(end_session_endpoint=None)),
            "end-session-missing",
            Severity.WARN,
            "realm",
            id="no end-session",
        ),
    ],
)
def test_discovery_decisions(
    fetched: Fetched, code: str, severity: Severity, fix_words: str
) -> None:
    findings, _doc = discovery_findings(settings(), fetched)
    finding = only(findings, code)
    assert finding.severity is severity
    assert fix_words in finding.fix


def test_discovery_ok_returns_the_document() -> None:
    findings, doc = discovery_findings(settings(), Fetched(DISCOVERY_URL, 200, discovery()))
    assert codes(findings) == ["discovery-ok", "logout-support-ok"]
    assert doc is not None


def test_frontchannel_path_needs_frontchannel_support() -> None:
    fetched = Fetched(DISCOVERY_URL, 200, discovery(frontchannel_logout_supported=None))
    findings, _ = discovery_findings(settings(frontchannel_path="/fc"), fetched)
    assert only(findings, "frontchannel-unsupported").severity is Severity.PROBLEM


RSA_KEY: dict[str, object] = {
    **RSAKey.generate_key(2048, parameters={"kid": "k1"}).as_dict(private=False),
    "alg": "RS256",
    "use": "sig",
}
JWKS_URL = f"{ISSUER}/protocol/openid-connect/certs"


@pytest.mark.parametrize(
    ("fetched", "code", "severity"),
    [
        pytest.param(Fetched(JWKS_URL, 200, {"keys": [RSA_KEY]}), "jwks-ok", Severity.OK, id="ok"),
        pytest.param(
            Fetched(JWKS_URL, 200, {"keys": [{k: v for k, v in RSA_KEY.items() if k != "alg"}]}),
            "jwks-ok",
            Severity.OK,
            id="no alg, RSA",
        ),
        pytest.param(
            Fetched(JWKS_URL, 200, {"keys": [{**RSA_KEY, "alg": "PS256"}]}),
            "jwks-no-usable-key",
            Severity.PROBLEM,
            id="other algorithm",
        ),
        pytest.param(
            Fetched(JWKS_URL, 200, {"keys": [{**RSA_KEY, "use": "enc", "alg": "RSA-OAEP"}]}),
            "jwks-no-usable-key",
            Severity.PROBLEM,
            id="encryption key only",
        ),
        pytest.param(Fetched(JWKS_URL, 500), "jwks-invalid", Severity.PROBLEM, id="500"),
        pytest.param(
            Fetched(JWKS_URL, 200, {"keys": [{"kty": "RSA"}]}),
            "jwks-invalid",
            Severity.PROBLEM,
            id="broken key",
        ),
        pytest.param(
            Fetched(JWKS_URL, failure=Failure.CONNECT, error="refused"),
            "jwks-unreachable",
            Severity.UNCHECKED,
            id="unreachable",
        ),
    ],
)
def test_jwks_decisions(fetched: Fetched, code: str, severity: Severity) -> None:
    finding = only(jwks_findings(settings(), fetched), code)
    assert finding.severity is severity


def test_transport_settings() -> None:
    """A missing CA bundle is a problem; verification off and plain http are warnings."""
    findings = transport_findings(
        settings(ca_bundle="/nonexistent/ca.pem", tls_verify=False, issuer="http://sso/realms/x")
    )
    assert codes(findings) == ["ca-bundle-unreadable", "tls-verify-off", "issuer-plain-http"]
    assert codes(findings, Severity.PROBLEM) == ["ca-bundle-unreadable"]
    assert transport_findings(settings(issuer="http://127.0.0.1:8080/realms/x")) == []


# ------------------------------------------------------------------------ client


GOOD_CLIENT: dict[str, object] = {
    "id": "7f0c-uuid",
    "clientId": "app",
    "enabled": True,
    "protocol": "openid-connect",
    "publicClient": False,
    "bearerOnly": False,
    "clientAuthenticatorType": "client-secret",
    "secret": SECRET,
    "rootUrl": APP,
    "baseUrl": f"{APP}/",
    "adminUrl": APP,
    "redirectUris": [f"{APP}/*"],
    "frontchannelLogout": False,
    "attributes": {
        "backchannel.logout.url": f"{APP}/backchannel-logout",
        "backchannel.logout.session.required": "true",
        "backchannel.logout.revoke.offline.tokens": "false",
        "post.logout.redirect.uris": f"{APP}/*",
    },
}
KNOWN = SecretState("known", SECRET)


def client(**changes: object) -> dict[str, object]:
    """GOOD_CLIENT with top-level changes; ``attributes`` entries merge (None removes)."""
    rep = copy.deepcopy(GOOD_CLIENT)
    attributes = changes.pop("attributes", {})
    assert isinstance(attributes, dict)
    rep.update(changes)
    merged = dict(rep["attributes"])  # type: ignore[call-overload]
    merged.update(attributes)
    rep["attributes"] = {k: v for k, v in merged.items() if v is not None}
    return {k: v for k, v in rep.items() if v is not None}


def compare(
    rep: Mapping[str, object],
    secret: SecretState = KNOWN,
    app_url: str | None = APP,
    **overrides: Any,
) -> list[Finding]:
    s = settings(**overrides)
    return client_findings(rep, s, app_urls(s, app_url), SERVER, secret)


def test_correct_client_has_no_problem_and_no_warning() -> None:
    findings = compare(GOOD_CLIENT)
    assert codes(findings) == [
        "backchannel-url-ok",
        "session-required-ok",
        "post-logout-uri-ok",
        "admin-url-ok",
        "client-secret-ok",
    ]


@pytest.mark.parametrize(
    ("rep", "code", "severity", "fix_words"),
    [
        pytest.param(
            client(attributes={"backchannel.logout.session.required": None}),
            "session-required-off",
            Severity.PROBLEM,
            "backchannel.logout.session.required",
            id="session required absent (realm import)",
        ),
        pytest.param(
            client(attributes={"backchannel.logout.session.required": "false"}),
            "session-required-off",
            Severity.PROBLEM,
            "Backchannel logout session required",
            id="session required off",
        ),
        pytest.param(
            client(frontchannelLogout=True),
            "frontchannel-on",
            Severity.PROBLEM,
            "Front channel logout",
            id="front-channel on",
        ),
        pytest.param(
            client(attributes={"backchannel.logout.url": None}),
            "backchannel-url-missing",
            Severity.PROBLEM,
            f"{APP}/backchannel-logout",
            id="no back-channel URL",
        ),
        pytest.param(
            client(attributes={"backchannel.logout.url": f"{APP}/wrong"}),
            "backchannel-url-wrong",
            Severity.PROBLEM,
            f"{APP}/backchannel-logout",
            id="wrong path",
        ),
        pytest.param(
            client(attributes={"backchannel.logout.url": f"{APP}/backchannel-logout/"}),
            "backchannel-url-wrong",
            Severity.PROBLEM,
            f"{APP}/backchannel-logout",
            id="trailing slash",
        ),
        pytest.param(
            client(
                attributes={"backchannel.logout.url": "https://other.example/backchannel-logout"}
            ),
            "backchannel-url-wrong",
            Severity.PROBLEM,
            "--app-url-for-keycloak",
            id="other host",
        ),
        pytest.param(
            client(
                attributes={
                    "backchannel.logout.url": "http://${application.session.host}/backchannel-logout"
                }
            ),
            "backchannel-url-session-host",
            Severity.PROBLEM,
            f"{APP}/backchannel-logout",
            id="application.session.host",
        ),
        pytest.param(
            client(attributes={"backchannel.logout.url": "http://localhost/backchannel-logout"}),
            "backchannel-url-loopback",
            Severity.WARN,
            "Keycloak's host can reach",
            id="loopback",
        ),
        pytest.param(
            client(attributes={"post.logout.redirect.uris": None}, redirectUris=["https://x/*"]),
            "post-logout-uri-missing",
            Severity.PROBLEM,
            f"{APP}/*",
            id="post-logout absent, redirect URIs elsewhere",
        ),
        pytest.param(
            client(attributes={"post.logout.redirect.uris": "-"}),
            "post-logout-uri-missing",
            Severity.PROBLEM,
            "post.logout.redirect.uris",
            id="post-logout none",
        ),
        pytest.param(
            client(attributes={"post.logout.redirect.uris": f"{APP}/"}),
            "post-logout-uri-missing",
            Severity.PROBLEM,
            f"{APP}/*",
            id="post-logout only the root, not the return path",
        ),
        pytest.param(
            client(adminUrl=None),
            "admin-url-missing",
            Severity.WARN,
            f"'Admin URL' to {APP}",
            id="no admin URL",
        ),
        pytest.param(
            client(adminUrl="https://other.example"),
            "admin-url-wrong",
            Severity.WARN,
            APP,
            id="admin URL elsewhere",
        ),
        pytest.param(
            client(secret="regenerated"),
            "client-secret-wrong",
            Severity.PROBLEM,
            "Credentials tab",
            id="wrong secret",
        ),
        pytest.param(
            client(clientAuthenticatorType="client-jwt"),
            "client-auth-type",
            Severity.PROBLEM,
            "Client Id and Secret",
            id="signed JWT authentication",
        ),
        pytest.param(
            client(publicClient=True, secret=None),
            "client-public",
            Severity.PROBLEM,
            "Client authentication",
            id="public client",
        ),
        pytest.param(
            client(enabled=False), "client-disabled", Severity.PROBLEM, "Enable", id="disabled"
        ),
        pytest.param(
            client(bearerOnly=True),
            "client-bearer-only",
            Severity.PROBLEM,
            "confidential",
            id="bearer-only",
        ),
        pytest.param(
            client(attributes={"logout.confirmation.enabled": "true"}),
            "logout-confirmation-on",
            Severity.WARN,
            "Logout settings",
            id="logout confirmation",
        ),
    ],
)
def test_client_misconfigurations(
    rep: dict[str, object], code: str, severity: Severity, fix_words: str
) -> None:
    """Each misconfiguration of the client gives its code, severity and fix."""
    secret = SecretState("known", str(rep["secret"])) if "secret" in rep else SecretState("none")
    finding = only(compare(rep, secret), code)
    assert finding.severity is severity
    assert fix_words in finding.fix


def test_frontchannel_on_without_url_says_nothing_is_sent() -> None:
    finding = only(compare(client(frontchannelLogout=True)), "frontchannel-on")
    assert "no logout by either channel" in finding.message
    assert "Some clients have not been logged out" in finding.message


def test_relative_urls_resolve_against_the_root_url() -> None:
    """'/backchannel-logout' and '/' with Root URL set are this app's URLs, as in Keycloak."""
    rep = client(attributes={"backchannel.logout.url": "/backchannel-logout"}, adminUrl="/")
    assert not codes(compare(rep), Severity.PROBLEM)
    assert "admin-url-ok" in codes(compare(rep))


def test_unknown_app_url_compares_paths_only() -> None:
    findings = compare(GOOD_CLIENT, app_url=None)
    assert "backchannel-url-ok" in codes(findings)
    assert "post-logout-uri-ok" not in codes(findings)
    bad = compare(client(attributes={"backchannel.logout.url": f"{APP}/x"}), app_url=None)
    assert only(bad, "backchannel-url-wrong").severity is Severity.PROBLEM


def test_app_reached_by_keycloak_at_another_address() -> None:
    """--app-url-for-keycloak: the back-channel and Admin URL are expected there."""
    inner = "http://app.internal:8000"
    rep = client(
        attributes={"backchannel.logout.url": f"{inner}/backchannel-logout"}, adminUrl=inner
    )
    s = settings()
    findings = client_findings(rep, s, app_urls(s, APP, inner), SERVER, KNOWN)
    assert not codes(findings, Severity.PROBLEM)
    assert not codes(findings, Severity.WARN)


@pytest.mark.parametrize(
    ("secret", "overrides", "code", "severity"),
    [
        pytest.param(
            SecretState("unreadable", reason="HTTP 403"),
            {},
            "client-secret-unchecked",
            Severity.UNCHECKED,
            id="unreadable",
        ),
        pytest.param(
            SecretState("none"),
            {},
            "client-secret-wrong",
            Severity.PROBLEM,
            id="no secret in Keycloak",
        ),
        pytest.param(
            SecretState("none"),
            {"client_secret": None},
            "client-secret-missing",
            Severity.WARN,
            id="not configured",
        ),
    ],
)
def test_secret_states(
    secret: SecretState, overrides: dict[str, Any], code: str, severity: Severity
) -> None:
    assert only(compare(client(secret=None), secret, **overrides), code).severity is severity


def test_secret_never_in_findings() -> None:
    """Neither the configured nor Keycloak's secret appears in any message, fix or detail."""
    findings = compare(
        client(secret="regenerated-value"), SecretState("known", "regenerated-value")
    )
    text = Report.of(findings).to_json()
    assert SECRET not in text
    assert "regenerated-value" not in text


def test_frontchannel_mode_when_the_middleware_serves_it() -> None:
    """KC_SSO_FRONTCHANNEL_PATH set and front-channel on: a warning, the URL compared."""
    rep = client(frontchannelLogout=True, attributes={"frontchannel.logout.url": f"{APP}/fc"})
    findings = compare(rep, frontchannel_path="/fc")
    assert codes(findings, Severity.WARN) == ["frontchannel-replaces-backchannel"]
    assert not codes(findings, Severity.PROBLEM)
    wrong = compare(
        client(frontchannelLogout=True, attributes={"frontchannel.logout.url": f"{APP}/x"}),
        frontchannel_path="/fc",
    )
    assert "frontchannel-url-wrong" in codes(wrong, Severity.PROBLEM)
    missing = compare(client(frontchannelLogout=True), frontchannel_path="/fc")
    assert "frontchannel-url-missing" in codes(missing, Severity.PROBLEM)
    unused = compare(GOOD_CLIENT, frontchannel_path="/fc")
    assert only(unused, "frontchannel-path-unused").severity is Severity.INFO


def test_frontchannel_frames_need_iss_and_sid() -> None:
    """With the client's 'Front channel logout session required' off, Keycloak frames the
    app without iss and sid, which KC_SSO_FRONTCHANNEL_SESSION_REQUIRED refuses: a problem.
    Absent is Keycloak's default (on); with the setting off the app accepts such frames."""

    def framed(required: str | None, **overrides: Any) -> list[Finding]:
        attributes = {
            "frontchannel.logout.url": f"{APP}/fc",
            "frontchannel.logout.session.required": required,
        }
        rep = client(frontchannelLogout=True, attributes=attributes)
        return compare(rep, frontchannel_path="/fc", **overrides)

    off = only(framed("false"), "frontchannel-session-required-off")
    assert off.severity is Severity.PROBLEM
    assert "frontchannel.logout.session.required" in off.fix
    for findings in (
        framed("true"),
        framed(None),
        framed("false", frontchannel_session_required=False),
    ):
        assert "frontchannel-session-required-off" not in codes(findings)
        assert not codes(findings, Severity.PROBLEM)


def test_admin_path_off() -> None:
    findings = compare(GOOD_CLIENT, admin_path=None)
    assert only(findings, "admin-url-unserved").severity is Severity.WARN
    assert "admin-url-missing" not in codes(compare(client(adminUrl=None), admin_path=None))


def test_allowlisted_targets_must_be_allowed_too() -> None:
    """With KC_SSO_POST_LOGOUT_PATH=off the requested targets themselves go to Keycloak."""
    findings = compare(
        GOOD_CLIENT, logout_redirect_allowlist=("https://www.example/",), post_logout_path=None
    )
    narrow = only(findings, "post-logout-uri-narrow")
    assert "https://www.example/…" in narrow.message


# ------------------------------------------------------------------------ realm and version


def test_realm_signature_algorithm_and_lifetime() -> None:
    realm = {"defaultSignatureAlgorithm": "ES256", "ssoSessionMaxLifespan": 86400}
    findings = realm_findings(realm, GOOD_CLIENT, settings())
    assert only(findings, "logout-token-alg").severity is Severity.PROBLEM
    assert only(findings, "session-lifetime").severity is Severity.WARN
    assert "KC_SSO_MAX_SESSION_LIFETIME=86400" in only(findings, "session-lifetime").fix
    client_alg = client(attributes={"id.token.signed.response.alg": "RS256"})
    assert "logout-token-alg" not in codes(realm_findings(realm, client_alg, settings()))
    assert realm_findings({}, GOOD_CLIENT, settings()) == []
    remember = {"rememberMe": True, "ssoSessionMaxLifespanRememberMe": 999999}
    assert "session-lifetime" in codes(realm_findings(remember, GOOD_CLIENT, settings()))


def test_admin_url_tokens_use_the_realms_default_algorithm() -> None:
    """Keycloak signs k_logout / k_push_not_before with the realm's default algorithm, not
    the client's ID-token algorithm that its logout tokens use."""
    realm = {"defaultSignatureAlgorithm": "RS256"}
    es256_client = client(attributes={"id.token.signed.response.alg": "ES256"})
    findings = realm_findings(realm, es256_client, settings(algorithms=("ES256",)))
    admin = only(findings, "admin-token-alg")
    assert admin.severity is Severity.PROBLEM
    assert "RS256" in admin.message
    assert "Add RS256 to KC_SSO_ALGORITHMS" in admin.fix
    assert "logout-token-alg" not in codes(findings)
    # No admin URL: Keycloak sends no admin-URL requests, nothing to say.
    no_admin = client(adminUrl=None, attributes={"id.token.signed.response.alg": "ES256"})
    assert "admin-token-alg" not in codes(
        realm_findings(realm, no_admin, settings(algorithms=("ES256",)))
    )
    # Both algorithms allowed: nothing refused.
    both = settings(algorithms=("ES256", "RS256"))
    assert "admin-token-alg" not in codes(realm_findings(realm, es256_client, both))
    # The realm's default unset is RS256, Keycloak's own default.
    assert "admin-token-alg" in codes(
        realm_findings({}, es256_client, settings(algorithms=("ES256",)))
    )


@pytest.mark.parametrize(
    ("version", "overrides", "code", "severity"),
    [
        pytest.param(
            "26.5.6",
            {"legacy_redirect_uri": True},
            "legacy-redirect-uri",
            Severity.PROBLEM,
            id="legacy on 26",
        ),
        pytest.param(
            "21.1.2",
            {"legacy_redirect_uri": True},
            "legacy-redirect-uri",
            Severity.PROBLEM,
            id="legacy on 21",
        ),
        pytest.param(
            None,
            {"legacy_redirect_uri": True},
            "legacy-redirect-uri",
            Severity.WARN,
            id="legacy, version unknown",
        ),
        pytest.param(
            "24.0.5",
            {"typ_policy": "strict"},
            "typ-policy-strict",
            Severity.PROBLEM,
            id="strict typ on 24",
        ),
        pytest.param("22.0.5", {}, "logout-token-no-exp", Severity.PROBLEM, id="no exp on 22"),
    ],
)
def test_version_decisions(
    version: str | None, overrides: dict[str, Any], code: str, severity: Severity
) -> None:
    assert only(version_findings(version, settings(**overrides)), code).severity is severity


def test_version_without_problems() -> None:
    assert codes(version_findings("26.5.6", settings())) == ["keycloak-version"]
    assert version_findings(
        "17.0.1", settings(legacy_redirect_uri=True, allow_missing_exp=True)
    ) == [version_findings("17.0.1", settings(allow_missing_exp=True))[0]]
    assert parse_version("999.0.0-SNAPSHOT") == (999, 0, 0)
    assert parse_version("nightly") is None


# ------------------------------------------------------------------------ store


MOUNTINFO = r"""
22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
30 22 0:26 / /tmp rw,nosuid - tmpfs tmpfs rw
41 22 8:1 /tmp/systemd-private-abc-app.service-XyZ/tmp /srv/private\040tmp rw - ext4 /dev/sda1 rw
52 22 0:50 / /mnt/share rw - nfs4 server:/export rw
53 22 0:50 / /mnt/share rw - cifs //server/export rw
"""


def test_mountinfo_and_the_mount_of_a_path() -> None:
    """The longest mount point above a path; the last of several on one point; escapes."""
    mounts = parse_mountinfo(MOUNTINFO)
    assert [m.mount_point for m in mounts] == [
        "/",
        "/tmp",  # noqa: S108
        "/srv/private tmp",
        "/mnt/share",
        "/mnt/share",
    ]
    assert mount_of("/tmp/x", mounts) == mounts[1]  # noqa: S108
    assert mount_of("/tmpfoo", mounts) == mounts[0]  # noqa: S108
    assert mount_of("/srv/private tmp", mounts) == mounts[2]
    mount = mount_of("/mnt/share/a/b", mounts)
    assert mount is not None
    assert mount.fstype == "cifs"


def location(**overrides: Any) -> SQLiteLocation:
    values: dict[str, Any] = {
        "path": "/var/lib/app/revocations.db",
        "is_default": False,
        "exists": True,
        "directory": "/var/lib/app",
        "directory_exists": True,
        "directory_writable": True,
        "file_writable": True,
        "owner": "app",
        "mode": 0o640,
        "user": "app",
        "mount": Mount("/", "/", "ext4", "/dev/sda1"),
    }
    values.update(overrides)
    return SQLiteLocation(**values)


@pytest.mark.parametrize(
    ("overrides", "code", "severity"),
    [
        pytest.param(
            {"mount": Mount("/tmp", "/", "tmpfs", "tmpfs")},  # noqa: S108
            "sqlite-on-tmpfs",
            Severity.WARN,
            id="tmpfs",
        ),
        pytest.param(
            {
                "mount": Mount(
                    "/tmp",  # noqa: S108
                    "/tmp/systemd-private-1-app.service-2/tmp",  # noqa: S108
                    "ext4",
                    "/dev/sda1",
                )
            },
            "sqlite-private-tmp",
            Severity.WARN,
            id="PrivateTmp",
        ),
        pytest.param(
            {"mount": Mount("/srv", "/", "nfs4", "nas:/x")},
            "sqlite-network-fs",
            Severity.PROBLEM,
            id="nfs",
        ),
        pytest.param(
            {"file_writable": False, "owner": "root", "mode": 0o644, "user": "www-data"},
            "sqlite-not-writable",
            Severity.PROBLEM,
            id="file of another user",
        ),
        pytest.param(
            {"exists": False, "directory_writable": False},
            "sqlite-not-writable",
            Severity.PROBLEM,
            id="directory not writable",
        ),
    ],
)
def test_sqlite_location_decisions(
    overrides: dict[str, Any], code: str, severity: Severity
) -> None:
    findings = sqlite_findings(location(**overrides))
    assert codes(findings)[0] == "sqlite-location"
    assert only(findings, code).severity is severity


def test_sqlite_location_says_who_can_write() -> None:
    info = only(sqlite_findings(location(mode=0o664)), "sqlite-location")
    assert "writable by app and its group" in info.message
    assert "PrivateTmp" in info.message
    assert sqlite_findings(location())[1:] == []


def test_inspect_sqlite_of_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "revocations.db"
    path.write_bytes(b"")
    path.chmod(0o600)
    found = inspect_sqlite(str(path), settings(store=f"sqlite:///{path}"), MOUNTINFO)
    assert found.exists
    assert found.file_writable
    assert found.mode == 0o600
    assert found.mount is not None
    missing = inspect_sqlite(str(tmp_path / "a" / "b.db"), settings(), "")
    assert not missing.exists
    assert missing.directory_writable  # the nearest existing directory is writable
    assert missing.mount is None


def follower(name: str, applied: int, lag: int, age: float = 0.5) -> FollowerState:
    return FollowerState(name, applied, age, lag)


@pytest.mark.parametrize(
    ("probe", "expected"),
    [
        pytest.param(
            StoreProbe("memory://", "memory", started=True, write_seconds=0.0),
            ["store-memory", "store-ok", "store-writable"],
            id="memory",
        ),
        pytest.param(
            StoreProbe("redis://h/0", "redis", config_error="unknown option 'x'"),
            ["store-config"],
            id="bad option",
        ),
        pytest.param(
            StoreProbe("redis://h/0", "redis", unavailable="disconnected (refused)"),
            ["store-unreachable"],
            id="redis down",
        ),
        pytest.param(
            StoreProbe("sqlite:////x.db", "sqlite", unavailable="disk I/O error"),
            ["store-unavailable"],
            id="sqlite unreadable",
        ),
        pytest.param(
            StoreProbe("redis://h/0", "redis", started=True, write_error="READONLY", followers=()),
            ["store-ok", "store-write-failed", "store-no-workers"],
            id="read-only replica",
        ),
        pytest.param(
            StoreProbe(
                "redis://h/0",
                "redis",
                started=True,
                write_seconds=0.001,
                followers=(follower("w1", 7, 0),),
                evicting=("allkeys-lru", 4 << 20),
            ),
            ["store-ok", "store-evicting", "store-writable", "store-followers"],
            id="an evicting Redis",
        ),
        pytest.param(
            StoreProbe("sqlite:////x.db", "sqlite", not_created=True), [], id="no file yet"
        ),
        pytest.param(
            StoreProbe(
                "sqlite:////x.db",
                "sqlite",
                started=True,
                write_seconds=0.002,
                followers=(follower("w1", 7, 0), follower("w2", 3, 4, age=12.0)),
            ),
            ["store-ok", "store-writable", "store-followers", "store-follower-stale"],
            id="a dead worker",
        ),
        pytest.param(
            StoreProbe(
                "sqlite:////x.db",
                "sqlite",
                started=True,
                write_seconds=0.002,
                followers=(follower("w1", 7, 0), follower("w2", 3, 4)),
                followers_later=(follower("w1", 7, 0), follower("w2", 3, 4)),
            ),
            ["store-ok", "store-writable", "store-followers", "store-follower-lagging"],
            id="a stuck worker",
        ),
        pytest.param(
            StoreProbe(
                "sqlite:////x.db",
                "sqlite",
                started=True,
                write_seconds=0.002,
                followers=(follower("w1", 7, 0), follower("w2", 3, 4)),
                followers_later=(follower("w1", 7, 0), follower("w2", 7, 0)),
            ),
            ["store-ok", "store-writable", "store-followers"],
            id="a worker that caught up",
        ),
        pytest.param(
            StoreProbe("redis://h/0", "redis", started=True, followers_error="timeout"),
            ["store-ok", "store-followers-unreadable"],
            id="followers unreadable",
        ),
    ],
)
def test_store_decisions(probe: StoreProbe, expected: list[str]) -> None:
    assert codes(store_findings(probe)) == expected


def test_store_severities() -> None:
    assert (
        only(
            store_findings(StoreProbe("redis://", "redis", unavailable="x")), "store-unreachable"
        ).severity
        is Severity.UNCHECKED
    )
    assert (
        only(
            store_findings(StoreProbe("sqlite:///", "sqlite", unavailable="x")), "store-unavailable"
        ).severity
        is Severity.PROBLEM
    )


def test_probe_store_sees_a_live_worker_and_writes_nothing_revoking(tmp_path: Path) -> None:
    """Against a real SQLite file with one worker following it: available, writable, the
    worker listed and caught up, and no revocation left behind."""
    url = f"sqlite:///{tmp_path / 'revocations.db'}?poll_interval=0.002"
    worker = open_store(url)
    worker.start()
    try:
        version = worker.version
        probe = probe_store(settings(store=url), settle=0.2)
        assert probe.started
        assert probe.write_error is None
        assert probe.followers is not None
        assert [f.name for f in probe.followers] == [worker.follower_name]  # type: ignore[attr-defined]
        assert codes(store_findings(probe)) == ["store-ok", "store-writable", "store-followers"]
        time.sleep(0.05)
        assert worker.version == version, "the test write changed a worker's replica"
    finally:
        worker.close()


def test_probe_store_does_not_create_a_missing_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "revocations.db"
    probe = probe_store(settings(store=f"sqlite:///{path}"))
    assert probe.not_created
    assert not path.exists()


def test_probe_store_reports_configuration_errors() -> None:
    probe = probe_store(settings(store="memory://"), opener=lambda url: open_store("memory://?x=1"))
    assert probe.config_error is not None
    assert "unknown option" in probe.config_error


# ------------------------------------------------------------------------ probe and explain


@pytest.mark.parametrize(
    ("fetched", "code"),
    [
        pytest.param(
            Fetched(
                f"{APP}/backchannel-logout",
                400,
                {
                    "error": "invalid_request",
                    "error_description": "missing_logout_token: exactly one",
                },
            ),
            "backchannel-probe-ok",
            id="middleware",
        ),
        pytest.param(Fetched(f"{APP}/backchannel-logout", 404), "backchannel-not-served", id="404"),
        pytest.param(
            Fetched(f"{APP}/backchannel-logout", 503, {"error": "temporarily_unavailable"}),
            "backchannel-not-served",
            id="503 store down",
        ),
        pytest.param(
            Fetched(f"{APP}/backchannel-logout", failure=Failure.CONNECT, error="refused"),
            "app-unreachable",
            id="down",
        ),
        pytest.param(
            Fetched(
                f"{APP}/backchannel-logout", failure=Failure.TLS, error="CERTIFICATE_VERIFY_FAILED"
            ),
            "app-tls-untrusted",
            id="tls",
        ),
    ],
)
def test_probe_decisions(fetched: Fetched, code: str) -> None:
    assert codes(probe_findings(fetched)) == [code]


_LOG_HEAD = "2026-12-01 10:00:00,000 WARN  [org.keycloak.services] (executor-thread-1) "
KEYCLOAK_LOG = (
    f"{_LOG_HEAD}KC-SERVICES0057: Logout for client 'flask-app' failed: "
    "org.apache.http.conn.HttpHostConnectException: Connect to 127.0.0.1:1 failed\n"
    f"{_LOG_HEAD}KC-SERVICES0057: Logout for client 'flask-app' failed: "
    "javax.net.ssl.SSLHandshakeException: PKIX path building failed: "
    "unable to find valid certification path to requested target\n"
    '2026-12-01 10:00:02,000 WARN  [org.keycloak.events] type="LOGOUT_ERROR", realmId="r", '
    'clientId="null", userId="null", ipAddress="127.0.0.1", error="invalid_token", '
    'reason="Invalid token"\n'
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            KEYCLOAK_LOG,
            ["text-kc-services0057", "text-pkix", "text-logout-error-invalid-token"],
            id="log",
        ),
        pytest.param(
            "KC-SERVICES0051: Failed to logout client, continuing",
            ["text-kc-services0051"],
            id="0051",
        ),
        pytest.param(
            "We are sorry... Invalid parameter: redirect_uri",
            ["text-redirect-uri-unsupported"],
            id="redirect_uri",
        ),
        pytest.param(
            "We are sorry... Invalid redirect uri", ["text-invalid-redirect-uri"], id="post-logout"
        ),
        pytest.param(
            '{"error":"unauthorized_client",'
            '"error_description":"Invalid client or Invalid client credentials"}',
            ["text-client-not-identified"],
            id="unauthorized_client",
        ),
        pytest.param(
            '{"error":"invalid_client"}', ["text-client-not-identified"], id="invalid_client"
        ),
        pytest.param(
            "WARN Some clients have not been logged out for user alice in demo realm: app",
            ["text-clients-not-logged-out"],
            id="front-channel",
        ),
        pytest.param("all good", ["text-none-known"], id="nothing known"),
    ],
)
def test_explain_known_texts(text: str, expected: list[str]) -> None:
    findings = explain(text)
    assert codes(findings) == expected
    assert all(f.fix for f in findings)


def test_explain_tls_toward_the_app_is_keycloaks_side() -> None:
    pkix = only(explain(KEYCLOAK_LOG), "text-pkix")
    assert "Keycloak's side" in pkix.message
    assert "--truststore-paths" in pkix.fix
    assert only(explain(KEYCLOAK_LOG), "text-kc-services0057").details["lines"] == 2


# ------------------------------------------------------------------------ admin API (mock)


class FakeKeycloak:
    """Keycloak's token and admin endpoints, enough for the check, over httpx.MockTransport."""

    def __init__(self, rep: dict[str, object] | None = None, realm: str = "demo") -> None:
        self.name = realm
        self.rep = copy.deepcopy(rep if rep is not None else GOOD_CLIENT)
        self.realm: dict[str, object] | None = {
            "realm": "demo",
            "defaultSignatureAlgorithm": "RS256",
            "ssoSessionMaxLifespan": 36000,
        }
        self.login_status = 200
        self.list_status = 200
        self.secret_status = 200
        self.version = "26.5.6"
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.seen.append(f"{request.method} {path}")
        if path.endswith("/protocol/openid-connect/token"):
            if self.login_status != 200:
                return httpx.Response(self.login_status, json={"error": "invalid_grant"})
            return httpx.Response(200, json={"access_token": "t", "expires_in": 60})
        assert request.headers["authorization"] == "Bearer t"
        api = f"/admin/realms/{self.name}"
        if path == f"{api}/clients":
            if self.list_status != 200:
                return httpx.Response(self.list_status, json={"error": "unknown_error"})
            wanted = request.url.params["clientId"]
            return httpx.Response(200, json=[self.rep] if self.rep["clientId"] == wanted else [])
        if path == f"{api}/clients/{self.rep['id']}/client-secret":
            return httpx.Response(self.secret_status, json={"type": "secret", "value": SECRET})
        if path == api:
            return httpx.Response(200, json=self.realm) if self.realm else httpx.Response(403)
        if path == "/admin/serverinfo":
            return httpx.Response(200, json={"systemInfo": {"version": self.version}})
        return httpx.Response(404)


USER = AdminCredentials(user="admin", password="pw")


def admin_check(
    fake: FakeKeycloak, credentials: AdminCredentials = USER, **overrides: Any
) -> tuple[list[str], str | None]:
    s = settings(**overrides)
    with httpx.Client(transport=httpx.MockTransport(fake)) as http:
        result = check_client(s, app_urls(s, APP), credentials, http, SERVER, "demo")
    return codes(result.findings), result.version


def test_admin_correct_client() -> None:
    fake = FakeKeycloak()
    found, version = admin_check(fake)
    assert version == "26.5.6"
    assert found == [
        "backchannel-url-ok",
        "session-required-ok",
        "post-logout-uri-ok",
        "admin-url-ok",
        "client-secret-ok",
    ]
    assert fake.seen[0] == "POST /realms/master/protocol/openid-connect/token"


def test_admin_service_account_logs_in_to_the_app_realm() -> None:
    fake = FakeKeycloak()
    admin_check(fake, AdminCredentials(client_id="doctor", client_secret="s"))
    assert fake.seen[0] == "POST /realms/demo/protocol/openid-connect/token"


def test_admin_reads_the_secret_when_the_list_omits_it() -> None:
    fake = FakeKeycloak(client(secret=None))
    assert "client-secret-ok" in admin_check(fake)[0]
    fake.secret_status = 403
    assert "client-secret-unchecked" in admin_check(fake)[0]


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        pytest.param(
            lambda f: setattr(f, "login_status", 401), ["admin-login-failed"], id="bad password"
        ),
        pytest.param(
            lambda f: setattr(f, "list_status", 403), ["admin-forbidden"], id="no view-clients"
        ),
        pytest.param(
            lambda f: f.rep.update(clientId="other"), ["client-not-found"], id="no such client"
        ),
    ],
)
def test_admin_failures(setup: Callable[[FakeKeycloak], object], expected: list[str]) -> None:
    fake = FakeKeycloak()
    setup(fake)
    assert admin_check(fake)[0] == expected


def test_admin_realm_unreadable_is_only_info() -> None:
    """403, or the name-only answer an account without view-realm gets: info, not compared."""
    fake = FakeKeycloak()
    fake.realm = None
    assert admin_check(fake)[0][-1] == "realm-not-read"
    fake.realm = {"realm": "demo", "displayName": "Demo"}
    assert admin_check(fake)[0][-1] == "realm-not-read"
    fake.realm = {"ssoSessionMaxLifespan": 86400}
    assert admin_check(fake)[0][-1] == "session-lifetime"


def test_admin_not_asked() -> None:
    found, version = admin_check(FakeKeycloak(), AdminCredentials())
    assert found == ["client-not-checked"]
    assert version is None


def test_credentials_repr_hides_secrets() -> None:
    shown = repr(AdminCredentials(user="admin", password="pw-123", client_secret="cs-456"))
    assert "pw-123" not in shown
    assert "cs-456" not in shown


# ------------------------------------------------------------------------ whole run and CLI


def test_run_with_mocked_keycloak_and_memory_store(op: StandInOP) -> None:
    """One run over the stand-in OP's discovery and JWKS and a mocked admin API."""
    fake = FakeKeycloak(realm="test")
    real = httpx.Client()

    def handler(request: httpx.Request) -> httpx.Response:
        if "/admin/" in request.url.path or request.url.path.endswith("/token"):
            return fake(request)
        response = real.get(str(request.url))
        return httpx.Response(
            response.status_code, content=response.content, headers=response.headers
        )

    s = settings(issuer=op.issuer)
    fake_server = op.issuer.rpartition("/realms/")[0]
    fake.rep["attributes"]["backchannel.logout.url"] = f"{APP}/backchannel-logout"  # type: ignore[index]
    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        report = run(s, Options(app_url=APP, admin=USER), http=http)
    real.close()
    assert report.exit_code == 0, report.to_text()
    assert report.codes()[:3] == ["discovery-ok", "logout-support-ok", "jwks-ok"]
    assert "store-memory" in report.codes(Severity.WARN)
    assert report.context["keycloak_version"] == "26.5.6"
    assert fake_server in str(report.context["issuer"])


@pytest.fixture
def check_env(monkeypatch: pytest.MonkeyPatch, op: StandInOP) -> pytest.MonkeyPatch:
    for name in list(__import__("os").environ):
        if name.startswith("KC_SSO_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KC_SSO_ISSUER", op.issuer)
    monkeypatch.setenv("KC_SSO_CLIENT_ID", "app")
    monkeypatch.setenv("KC_SSO_SESSION_SECRET", "s")
    monkeypatch.setenv("KC_SSO_STORE", "memory://")
    return monkeypatch


def test_cli_json_exit_0(check_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert doctor_cli.main(["--json", "--app-url", APP]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["result"] == "ok"
    assert doc["context"]["urls"]["backchannel_logout_url"] == f"{APP}/backchannel-logout"


def test_cli_invalid_environment_exit_1(
    check_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    check_env.setenv("KC_SSO_CLOCK_SKEW", "soon")
    assert doctor_cli.main(["--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [f["code"] for f in doc["findings"]] == ["config-invalid"]
    assert "KC_SSO_CLOCK_SKEW" in doc["findings"][0]["message"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_cli_unreachable_issuer_exit_2(
    check_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    check_env.setenv("KC_SSO_ISSUER", f"http://127.0.0.1:{_closed_port()}/realms/demo")
    assert doctor_cli.main(["--admin-user", "admin", "--admin-password", "x"]) == 2
    out = capsys.readouterr().out
    assert "[issuer-unreachable]" in out
    assert "[admin-unreachable]" in out
    assert out.rstrip().endswith("exit 2")


def test_cli_problem_exit_1(check_env: pytest.MonkeyPatch) -> None:
    check_env.setenv("KC_SSO_ALGORITHMS", "ES256")  # the stand-in OP signs with RSA
    assert doctor_cli.main(["--no-store"]) == 1


def test_cli_explain(check_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    check_env.setattr("sys.stdin", io.StringIO(KEYCLOAK_LOG))
    assert doctor_cli.main(["--explain", "-", "--json"]) == 1
    found = [f["code"] for f in json.loads(capsys.readouterr().out)["findings"]]
    assert found == ["text-kc-services0057", "text-pkix", "text-logout-error-invalid-token"]
    assert doctor_cli.main(["--explain", "nothing to see"]) == 0


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        pytest.param(["--admin-user", "a", "--admin-client-id", "b"], "not both", id="both logins"),
        pytest.param(["--admin-client-id", "b"], "--admin-client-secret", id="no secret"),
        pytest.param(["--app-url", "app.example"], "absolute", id="bad app URL"),
    ],
)
def test_cli_usage_errors_exit_2(
    check_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        doctor_cli.main(argv)
    assert exited.value.code == 2
    assert words in capsys.readouterr().err


def test_admin_password_from_the_environment(check_env: pytest.MonkeyPatch) -> None:
    check_env.setenv("KC_SSO_CHECK_ADMIN_USER", "admin")
    check_env.setenv("KC_SSO_CHECK_ADMIN_PASSWORD", "from-env")
    ns = doctor_cli.build_parser().parse_args([])
    options = doctor_cli._options(ns, __import__("os").environ, doctor_cli.build_parser())
    assert options.admin.user == "admin"
    assert options.admin.password == "from-env"


def test_python_dash_m_dispatch() -> None:
    """``python -m kc_sso_middleware check --help`` works; no command is a usage error."""
    shown = subprocess.run(
        [sys.executable, "-m", "kc_sso_middleware", "check", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert shown.returncode == 0
    assert "--admin-user" in shown.stdout
    assert re.search(r"usage: python -m kc_sso_middleware check", shown.stdout)
    bare = subprocess.run(
        [sys.executable, "-m", "kc_sso_middleware"], capture_output=True, text=True, check=False
    )
    assert bare.returncode == 2
    assert "check" in bare.stderr


def test_run_with_an_unreadable_ca_bundle_checks_nothing_over_the_network() -> None:
    """The app cannot reach Keycloak with that bundle: one problem, no fetch with other trust."""
    report = run(settings(ca_bundle="/nonexistent/ca.pem"), Options(app_url=APP, check_store=False))
    assert report.codes() == ["ca-bundle-unreadable", "app-urls", "backchannel-tls"]
    assert report.exit_code == 1


def test_run_does_not_open_an_unwritable_sqlite_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """A file this user cannot write is reported once, and not opened."""
    unwritable = location(file_writable=False, owner="root", mode=0o600, user="www-data")
    monkeypatch.setattr(checks, "inspect_sqlite", lambda *args: unwritable)
    opened: list[str] = []

    def opener(url: str) -> Any:
        opened.append(url)
        return open_store(url)

    s = settings(store="sqlite:////var/lib/app/revocations.db", ca_bundle="/nonexistent")
    report = run(s, Options(app_url=APP), store_opener=opener)
    assert report.codes()[-2:] == ["sqlite-location", "sqlite-not-writable"]
    assert opened == []


def test_check_variables_are_listed() -> None:
    """Every KC_SSO_CHECK_* name the command reads is in CHECK_VARIABLES (README test)."""
    source = Path(doctor_cli.__file__).read_text()
    used = set(re.findall(r'"(KC_SSO_CHECK_[A-Z_]+)"', source))
    assert used == set(doctor_cli.CHECK_VARIABLES)


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_probe_against_the_real_middleware(op: StandInOP, kind: str) -> None:
    """The middleware's own answer to the empty probe is recognised; the app's 404 is not."""
    from tests.conftest import Harness, make_settings

    harness = Harness(kind, make_settings(op))  # type: ignore[arg-type]
    try:
        client: Any = harness.client  # httpx.Client, or its blocking facade for ASGI

        def post(url: str) -> Fetched:
            if isinstance(client, httpx.Client):
                return probe_backchannel(client, url)
            # The ASGI facade has no streaming send: the probe's form, its answer as a Fetched.
            response = client.post(url, data={"logout_token": ""})
            try:
                body = response.json()
            except ValueError:
                body = None
            return Fetched(url, response.status_code, body, response.text)

        assert codes(probe_findings(post("http://app.test/backchannel-logout"))) == [
            "backchannel-probe-ok"
        ]
        assert codes(probe_findings(post("http://app.test/elsewhere"))) == [
            "backchannel-not-served"
        ]
    finally:
        harness.close()


def test_readme_counts_every_finding_code() -> None:
    """README.rst's "N in all" is the number of codes the doctor has."""
    import re
    from pathlib import Path

    from kc_sso_middleware.doctor.codes import CODES

    readme = (Path(__file__).parents[2] / "README.rst").read_text()
    match = re.search(r"…; (\d+) in all\)", readme)
    assert match is not None
    assert int(match.group(1)) == len(CODES)
