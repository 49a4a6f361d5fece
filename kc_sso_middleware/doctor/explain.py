"""Known failure texts of Keycloak and of logout requests, explained with their fix.

``kc-sso-check --explain TEXT`` (``-`` reads standard input, e.g. Keycloak's log) names
every known text found in TEXT.  Sources: Keycloak's ``ServicesLogger`` (``KC-SERVICES0057``
"Logout for client '%s' failed" for I/O errors such as a refused connection or a TLS
failure, ``KC-SERVICES0051`` "Failed to logout client, continuing" for any other),
``LogoutEndpoint``'s error pages and events, and the token endpoint's client
authentication errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .report import Finding, Severity

__all__ = ["KNOWN_TEXTS", "KnownText", "explain"]


@dataclass(frozen=True, slots=True)
class KnownText:
    code: str
    pattern: re.Pattern[str]
    explanation: str
    fix: str


def _known(code: str, pattern: str, explanation: str, fix: str) -> KnownText:
    return KnownText(code, re.compile(pattern, re.IGNORECASE), explanation, fix)


_TRUST_FIX = (
    "Give Keycloak the CA that signed the app's certificate: put its PEM file in Keycloak's "
    "conf/truststores directory, or start Keycloak with --truststore-paths=/path/to/ca.pem "
    "(Keycloak 24+; older versions: the spi-truststore-file-* options, or the JVM's "
    "cacerts).  Check with `openssl s_client -connect app-host:443 -showcerts` from "
    "Keycloak's host that the app sends its whole certificate chain."
)

#: every known text, in the order they are reported
KNOWN_TEXTS: tuple[KnownText, ...] = (
    _known(
        "text-kc-services0057",
        r"KC-SERVICES0057|Logout for client '[^']*' failed",
        "Keycloak could not deliver a back-channel logout to the client's Backchannel logout "
        "URL: the connection was refused or timed out, or TLS failed (the stack trace below "
        "the line says which).  Keycloak completes the logout anyway and never retries, so "
        "the app was not told and keeps accepting that session.",
        "From Keycloak's host, check that the back-channel URL is reachable (curl -X POST "
        "<url> should answer 400 from the middleware).  If the trace shows PKIX or "
        "SSLHandshakeException, it is a TLS trust problem on Keycloak's side: " + _TRUST_FIX,
    ),
    _known(
        "text-pkix",
        r"PKIX path building failed|unable to find valid certification path|"
        r"SSLHandshakeException",
        "Keycloak's Java runtime does not trust the certificate of the server it called "
        "(for a logout: the app's back-channel or Admin URL).  This is on Keycloak's side: "
        "the app cannot fix it by its own settings, and KC_SSO_CA_BUNDLE is about the other "
        "direction (the app trusting Keycloak).",
        _TRUST_FIX,
    ),
    _known(
        "text-kc-services0051",
        r"KC-SERVICES0051|Failed to logout client, continuing",
        "A back-channel logout failed before anything was sent (not a network error): for "
        "example a Backchannel logout URL with ${application.session.host}, which only "
        "Keycloak's old adapters fill in, or an invalid URL.",
        "Set the client's Backchannel logout URL to the app's plain URL, e.g. "
        "https://app.example/backchannel-logout.",
    ),
    _known(
        "text-logout-error-invalid-token",
        r"LOGOUT_ERROR.*error=\"?invalid_token|Invalid parameter: id_token_hint",
        "Keycloak refused the token of a logout: the id_token_hint (or a refresh token for a "
        "server-side logout) is signed by a key the realm no longer has (keys rotated and the "
        "old one removed, realm re-created, another Keycloak), belongs to another realm, or "
        'was issued to another client than client_id.  The user sees "Invalid parameter: '
        'id_token_hint" and stays logged in at Keycloak.',
        "Such sessions predate the change: the user must log in again (the middleware's logout "
        "still clears the app's own session).  Check that KC_SSO_CLIENT_ID is the client the "
        "app logs in with, and keep retired realm keys 'passive' rather than deleting them "
        "while sessions signed with them live.",
    ),
    _known(
        "text-redirect-uri-unsupported",
        r"Invalid parameter: redirect_uri|Parameter 'redirect_uri' no longer supported",
        "Keycloak 18 and later refuse the pre-18 logout parameter redirect_uri (26 ignores "
        "it): the logout URL came from an old link or from KC_SSO_LEGACY_REDIRECT_URI=true.",
        "Set KC_SSO_LEGACY_REDIRECT_URI=false, so the middleware sends post_logout_redirect_uri "
        "with id_token_hint, and send users to the app's logout path (KC_SSO_LOGOUT_PATH) "
        "instead of hand-made .../protocol/openid-connect/logout?redirect_uri=… links.",
    ),
    _known(
        "text-invalid-redirect-uri",
        r"Invalid redirect uri|error=\"?invalid_redirect_uri",
        "The post_logout_redirect_uri of a logout is not among the client's 'Valid post logout "
        "redirect URIs' (when that list is empty: its 'Valid redirect URIs').",
        "Add the app's URL followed by /* (e.g. https://app.example/*) to 'Valid post logout "
        "redirect URIs'; kc-sso-check with admin credentials names the exact URI.",
    ),
    _known(
        "text-client-not-identified",
        r"unauthorized_client|invalid_client|UNKNOWN_CLIENT|"
        r"Client was not identified by any client authenticator|"
        r"Invalid client or Invalid client credentials",
        "A server-side (REST) logout or token request reached Keycloak without client "
        "authentication it accepts: no client_id at all (invalid_client), a client_id "
        "without the secret of a confidential client (unauthorized_client), or a wrong secret.",
        "Set KC_SSO_CLIENT_SECRET to the client's secret (Credentials tab); a hand-made "
        "request to .../protocol/openid-connect/logout must send client_id, and client_secret "
        "for a confidential client, with the refresh_token.",
    ),
    _known(
        "text-clients-not-logged-out",
        r"Some clients have not been logged out for user",
        "A logout outside a browser (admin console, API, another device) could not reach "
        "some clients: clients with 'Front channel logout' on get no back-channel logout, "
        "and front-channel needs a browser.  'Backchannel logout session required' off does "
        "not cause this, but makes tokens arrive without sid.",
        "Turn 'Front channel logout' off for those clients and set their Backchannel logout "
        "URL (for this middleware: <app URL>/backchannel-logout).",
    ),
)


def _excerpt(text: str, match: re.Match[str]) -> str:
    start = text.rfind("\n", 0, match.start()) + 1
    end = text.find("\n", match.end())
    line = text[start : end if end != -1 else len(text)].strip()
    return line if len(line) <= 300 else line[:297] + "..."


def explain(text: str) -> list[Finding]:
    """A problem finding per known text found in ``text`` (an info finding if none is)."""
    findings = []
    for known in KNOWN_TEXTS:
        matches = list(known.pattern.finditer(text))
        if not matches:
            continue
        lines = {text.count("\n", 0, match.start()) for match in matches}
        excerpt = _excerpt(text, matches[0])
        findings.append(
            Finding(
                known.code,
                Severity.PROBLEM,
                f"{known.explanation}\nSeen on {len(lines)} line(s), first: {excerpt}",
                known.fix,
                {"lines": len(lines), "first": excerpt},
            )
        )
    if not findings:
        findings.append(
            Finding(
                "text-none-known",
                Severity.INFO,
                "No known failure text was found.",
                "Run the check without --explain to compare the configuration itself.",
            )
        )
    return findings
