"""The issuer's discovery document and JWKS: reachable, trusted, exact, advertising logout.

:func:`discovery_findings` and :func:`jwks_findings` decide over fetched values;
:func:`check_provider` is the thin I/O around them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import httpx
from joserfc.errors import JoseError

from .._oidc import _usable_keys
from .._tokens import candidate_keys
from ..settings import Settings
from .fetch import Failure, Fetched, get
from .report import Finding, Severity
from .urls import is_loopback

__all__ = [
    "check_provider",
    "discovery_findings",
    "jwks_findings",
    "transport_findings",
]


def transport_findings(settings: Settings) -> list[Finding]:
    """TLS settings problems that need no network: the CA bundle, verification off, http."""
    findings = []
    if settings.ca_bundle and not os.path.isfile(settings.ca_bundle):
        findings.append(
            Finding(
                "ca-bundle-unreadable",
                Severity.PROBLEM,
                f"KC_SSO_CA_BUNDLE={settings.ca_bundle} is not a file: the middleware cannot "
                "reach Keycloak over TLS at all.",
                "Point KC_SSO_CA_BUNDLE at the PEM file of the CA that signed Keycloak's "
                "certificate (readable by the app's user), or unset it to use the system CAs.",
            )
        )
    if not settings.tls_verify:
        findings.append(
            Finding(
                "tls-verify-off",
                Severity.WARN,
                "KC_SSO_TLS_VERIFY=false: Keycloak's certificate is not verified, so anyone "
                "on the path can serve the middleware forged keys and forged logout tokens.",
                "Set KC_SSO_TLS_VERIFY=true and KC_SSO_CA_BUNDLE=/path/to/ca.pem if "
                "Keycloak's certificate is signed by a private CA.",
            )
        )
    if settings.issuer.startswith("http://") and not is_loopback(settings.issuer):
        findings.append(
            Finding(
                "issuer-plain-http",
                Severity.WARN,
                f"The issuer {settings.issuer} is plain http on a host that is not loopback: "
                "tokens and keys travel unprotected.",
                "Serve Keycloak over https (or behind a TLS proxy with --hostname set to the "
                "https URL) and change KC_SSO_ISSUER to match.",
            )
        )
    return findings


def _transport_failure(
    fetched: Fetched, what: str, codes: tuple[str, str], settings: Settings
) -> Finding:
    """The finding for a fetch that got no answer; ``codes`` = (unreachable, tls)."""
    unreachable, untrusted = codes
    if fetched.failure is Failure.TLS:
        trusted_by = (
            f"the CA bundle KC_SSO_CA_BUNDLE={settings.ca_bundle}"
            if settings.ca_bundle
            else "the system's CA certificates"
        )
        if "CERTIFICATE_VERIFY_FAILED" in fetched.error or "certificate" in fetched.error:
            fix = (
                "Set KC_SSO_CA_BUNDLE to the PEM file of the CA that signed Keycloak's "
                "certificate (a self-signed certificate: the certificate itself), or have "
                "Keycloak serve a certificate from a public CA; check that the certificate "
                "names the issuer's host.  Never set KC_SSO_TLS_VERIFY=false in production."
            )
        else:
            fix = (
                "Check that the URL's scheme matches the port (https to a plain-http port "
                "fails like this) and that a proxy in between does not break TLS."
            )
        return Finding(
            untrusted,
            Severity.PROBLEM,
            f"{what} {fetched.url}: TLS failed ({fetched.error}); the certificate is checked "
            f"against {trusted_by}.",
            fix,
        )
    return Finding(
        unreachable,
        Severity.UNCHECKED,
        f"{what} {fetched.url} could not be fetched: {fetched.error}.",
        "Check KC_SSO_ISSUER's host and port, that Keycloak runs, and that this host can "
        "reach it (firewall, DNS, HTTPS_PROXY/NO_PROXY); run the check on the app's host.",
    )


def discovery_findings(
    settings: Settings, fetched: Fetched
) -> tuple[list[Finding], Mapping[str, object] | None]:
    """Findings about the discovery document, and the document when it is usable."""
    what = "The discovery document"
    if not fetched.answered:
        codes = ("issuer-unreachable", "issuer-tls-untrusted")
        return [_transport_failure(fetched, what, codes, settings)], None
    if fetched.status == 404:
        return [
            Finding(
                "discovery-not-found",
                Severity.PROBLEM,
                f"{what} {fetched.url} answered 404: there is no realm at KC_SSO_ISSUER.",
                "Check the realm name (case-sensitive) in KC_SSO_ISSUER="
                f"{settings.issuer}; Keycloak before 17 (and later ones started with "
                "--http-relative-path=/auth) need /auth before /realms.",
            )
        ], None
    if fetched.status is not None and 300 <= fetched.status < 400:
        # The middleware follows no redirect (anything but 200 is a DiscoveryError), so
        # this fails for good, unlike an error status that may pass.
        location = fetched.headers.get("location", "")
        return [
            Finding(
                "discovery-failed",
                Severity.PROBLEM,
                f"{what} {fetched.url} answered HTTP {fetched.status}, a redirect"
                + (f" to {location}" if location else "")
                + ": the middleware does not follow redirects, so it never loads Keycloak's "
                "keys and refuses every logout token.",
                "Set KC_SSO_ISSUER to the issuer Keycloak names at the redirect's target "
                "(often the https URL), exactly, with no trailing slash.",
                {"status": fetched.status, "location": location},
            )
        ], None
    if fetched.status != 200:
        return [
            Finding(
                "discovery-failed",
                Severity.UNCHECKED,
                f"{what} {fetched.url} answered HTTP {fetched.status}.",
                "Check Keycloak's log and that nothing between (a proxy) answers instead.",
                {"status": fetched.status},
            )
        ], None
    doc = fetched.json_object()
    if (
        doc is None
        or not isinstance(doc.get("issuer"), str)
        or not isinstance(doc.get("jwks_uri"), str)
    ):
        return [
            Finding(
                "discovery-invalid",
                Severity.PROBLEM,
                f"{what} {fetched.url} is not a JSON object with issuer and jwks_uri "
                "(is that URL Keycloak's?).",
                "Point KC_SSO_ISSUER at the realm: https://keycloak.example/realms/<realm>.",
            )
        ], None
    issuer = str(doc["issuer"])
    if issuer != settings.issuer:
        return [
            Finding(
                "issuer-mismatch",
                Severity.PROBLEM,
                f"{what} names the issuer {issuer!r}, but KC_SSO_ISSUER is "
                f"{settings.issuer!r}: the middleware refuses a document that names another "
                "issuer, and Keycloak's tokens carry the document's.",
                f"Set KC_SSO_ISSUER={issuer} exactly (scheme, host, port, no trailing "
                "slash), or, if that is not the URL apps should use, fix Keycloak's "
                "--hostname so that it issues the URL you expect.",
                {"advertised": issuer},
            )
        ], None
    findings = [
        Finding(
            "discovery-ok",
            Severity.OK,
            f"{what} {fetched.url} answers, is trusted and names KC_SSO_ISSUER exactly.",
        )
    ]
    findings += _logout_support(settings, doc)
    return findings, doc


def _logout_support(settings: Settings, doc: Mapping[str, object]) -> list[Finding]:
    findings = []
    if doc.get("backchannel_logout_supported") is not True:
        findings.append(
            Finding(
                "backchannel-unsupported",
                Severity.PROBLEM,
                "The OP does not advertise backchannel_logout_supported: it will not tell "
                "the app when a session ends.",
                "Use a Keycloak (or OP) with OIDC Back-Channel Logout; Keycloak has it since 12.",
            )
        )
    elif doc.get("backchannel_logout_session_supported") is not True:
        findings.append(
            Finding(
                "backchannel-session-unsupported",
                Severity.WARN,
                "The OP does not advertise backchannel_logout_session_supported: its logout "
                "tokens may name only the user (sub), and each logout then ends every "
                "session of that user in this app.",
                "Use an OP that puts sid in logout tokens (Keycloak does).",
            )
        )
    else:
        findings.append(
            Finding(
                "logout-support-ok",
                Severity.OK,
                "Back-channel logout with sid is advertised.",
            )
        )
    if settings.frontchannel_path and doc.get("frontchannel_logout_supported") is not True:
        findings.append(
            Finding(
                "frontchannel-unsupported",
                Severity.PROBLEM,
                "KC_SSO_FRONTCHANNEL_PATH is set but the OP does not advertise "
                "frontchannel_logout_supported.",
                "Turn KC_SSO_FRONTCHANNEL_PATH off and use back-channel logout.",
            )
        )
    if not isinstance(doc.get("end_session_endpoint"), str):
        findings.append(
            Finding(
                "end-session-missing",
                Severity.WARN,
                "No end_session_endpoint is advertised; the middleware's logout falls back "
                "to Keycloak's path /protocol/openid-connect/logout below the issuer.",
                "Check that KC_SSO_ISSUER is a Keycloak realm.",
            )
        )
    return findings


def jwks_findings(settings: Settings, fetched: Fetched) -> list[Finding]:
    what = "The JWKS"
    if not fetched.answered:
        codes = ("jwks-unreachable", "jwks-tls-untrusted")
        return [_transport_failure(fetched, what, codes, settings)]
    body = fetched.json_object()
    try:
        if fetched.status != 200 or body is None:
            raise ValueError(f"HTTP {fetched.status}")
        # Judged as the middleware judges it: each key on its own (one it cannot use is
        # left out, RFC 7517 §5), RSA keys under 2048 bits and symmetric ones left out.
        key_set = _usable_keys(body)
    except (ValueError, KeyError, TypeError, AttributeError, JoseError) as exc:
        return [
            Finding(
                "jwks-invalid",
                Severity.PROBLEM,
                f"{what} {fetched.url} is not a usable key set ({exc}): every logout token "
                "would be refused.",
                "Check the realm's keys (Realm settings → Keys) and that jwks_uri is reached "
                "directly, not through a proxy answering something else.",
            )
        ]
    # The algorithms a logout token could be verified with: the keys the middleware would
    # try for a token of that alg (key type, use, alg and EC curve matching).
    usable = [alg for alg in settings.algorithms if candidate_keys(key_set, {}, alg)]
    offered = sorted({str(k.get("alg")) for k in key_set if k.get("use") in (None, "sig")})
    raw = body.get("keys")
    left_out = (len(raw) if isinstance(raw, list) else 0) - len(list(key_set))
    unused = f"; {left_out} key(s) left out as unusable" if left_out else ""
    if not usable:
        return [
            Finding(
                "jwks-no-usable-key",
                Severity.PROBLEM,
                f"{what} has no signing key for KC_SSO_ALGORITHMS="
                f"{','.join(settings.algorithms)} (it offers {', '.join(offered) or 'none'}"
                f"{unused}): every logout token would be refused.",
                "Add the realm's signature algorithm to KC_SSO_ALGORITHMS, or give the realm "
                "an active key of an accepted algorithm (Realm settings → Keys).",
                {"offered": offered},
            )
        ]
    return [
        Finding(
            "jwks-ok",
            Severity.OK,
            f"{what} answers with signing keys for {', '.join(usable)}.",
            details={"offered": offered},
        )
    ]


def check_provider(settings: Settings, http: httpx.Client) -> list[Finding]:
    """Fetch discovery, then the JWKS it names."""
    url = f"{settings.issuer}/.well-known/openid-configuration"
    discovery = get(http, url)
    findings, doc = discovery_findings(settings, discovery)
    if doc is not None:
        findings += jwks_findings(settings, get(http, str(doc["jwks_uri"])))
    return findings
