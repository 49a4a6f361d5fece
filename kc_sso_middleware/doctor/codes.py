"""Every finding code ``kc-sso-check`` can report, with its area and meaning.

The codes are the command's machine interface (``--json``): stable, one per problem, so a
script or a test can ask "is ``session-required-off`` among the problems?".  A finding with
a code missing here is refused when it is made, and a test compares this table with the
README's list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["CODES", "Code"]


@dataclass(frozen=True, slots=True)
class Code:
    area: str
    meaning: str


def _table(area: str, *codes: tuple[str, str]) -> dict[str, Code]:
    return {name: Code(area, meaning) for name, meaning in codes}


CODES: Mapping[str, Code] = {
    **_table(
        "config",
        ("config-invalid", "the KC_SSO_* environment does not parse (the app would not start)"),
    ),
    **_table(
        "provider",
        ("ca-bundle-unreadable", "KC_SSO_CA_BUNDLE is missing or not a PEM file"),
        ("tls-verify-off", "KC_SSO_TLS_VERIFY=false: Keycloak's certificate is not checked"),
        ("issuer-plain-http", "the issuer is plain http on a host that is not loopback"),
        ("issuer-unreachable", "the discovery document could not be fetched (network)"),
        ("issuer-tls-untrusted", "Keycloak's TLS certificate is not trusted"),
        ("discovery-not-found", "no discovery document at the issuer (404): wrong realm or path"),
        ("discovery-failed", "the discovery document answered an error status or a redirect"),
        ("discovery-invalid", "the discovery document is not valid JSON with issuer and jwks_uri"),
        (
            "issuer-not-keycloak",
            "KC_SSO_ISSUER is not <server>/realms/<realm>: no admin API checks",
        ),
        ("issuer-mismatch", "the discovery document names another issuer than KC_SSO_ISSUER"),
        ("discovery-ok", "discovery reachable, trusted, issuer exact"),
        ("backchannel-unsupported", "the OP does not advertise back-channel logout"),
        ("backchannel-session-unsupported", "the OP does not advertise sid in logout tokens"),
        ("frontchannel-unsupported", "front-channel logout is on here but not advertised"),
        ("end-session-missing", "no end_session_endpoint advertised"),
        ("logout-support-ok", "back-channel logout (with sid) advertised"),
        ("jwks-unreachable", "the JWKS could not be fetched (network)"),
        ("jwks-tls-untrusted", "the JWKS host's TLS certificate is not trusted"),
        ("jwks-invalid", "the JWKS is not a valid key set"),
        ("jwks-no-usable-key", "no key in the JWKS for KC_SSO_ALGORITHMS"),
        ("jwks-ok", "JWKS reachable, with a key for KC_SSO_ALGORITHMS"),
    ),
    **_table(
        "store",
        ("store-config", "KC_SSO_STORE cannot be opened as configured"),
        ("store-memory", "memory:// holds revocations in one process only"),
        ("store-unreachable", "the shared store (Redis) could not be reached"),
        ("store-unavailable", "the store could not be opened, read or kept current"),
        ("store-ok", "store reachable, replica current"),
        ("store-evicting", "Redis may evict the store's keys (maxmemory, allkeys-* policy)"),
        ("store-write-failed", "a harmless test write failed"),
        ("store-writable", "a harmless test write succeeded"),
        ("store-followers", "the workers following the store, their heartbeats and lag"),
        ("store-no-workers", "no worker of the app follows this store right now"),
        ("store-follower-stale", "a worker stopped sending heartbeats (dead or hung)"),
        ("store-follower-lagging", "a live worker is behind and not catching up"),
        ("store-followers-unreadable", "the followers could not be listed"),
        ("sqlite-location", "where the SQLite file is, who can write it, what filesystem"),
        ("sqlite-not-writable", "the SQLite file or its directory is not writable by this user"),
        ("sqlite-on-tmpfs", "the SQLite file is on tmpfs: revocations are lost at reboot"),
        ("sqlite-private-tmp", "the SQLite file is in a private /tmp (systemd PrivateTmp)"),
        ("sqlite-network-fs", "the SQLite file is on a network filesystem (WAL needs a local one)"),
    ),
    **_table(
        "urls",
        ("app-urls", "the URLs of this app Keycloak's client must name"),
        ("app-url-unknown", "no app URL given or derivable: only paths are compared"),
        ("backchannel-tls", "Keycloak must trust the app's certificate (https back-channel URL)"),
        ("backchannel-probe-ok", "the back-channel URL is answered by the middleware"),
        ("backchannel-not-served", "the back-channel URL is not answered by the middleware"),
        ("app-unreachable", "the app could not be reached to probe its back-channel URL"),
        ("app-tls-untrusted", "the app's certificate is not trusted from here"),
    ),
    **_table(
        "client",
        ("client-not-checked", "no admin credentials: the client's settings were not read"),
        ("admin-unreachable", "the admin API could not be reached"),
        ("admin-login-failed", "the admin credentials were refused"),
        ("admin-forbidden", "the admin account may not read the client (needs view-clients)"),
        ("client-not-found", "no client with KC_SSO_CLIENT_ID in the realm"),
        ("client-disabled", "the client is disabled"),
        ("client-bearer-only", "the client is bearer-only: nobody can log in to it"),
        ("frontchannel-on", "front-channel logout is on, which silently disables back-channel"),
        ("frontchannel-url-missing", "front-channel logout on without a URL: no logout is sent"),
        ("frontchannel-url-wrong", "the front-channel URL is not this app's front-channel path"),
        (
            "frontchannel-session-required-off",
            "'Front channel logout session required' off: the frames carry no iss and sid",
        ),
        (
            "frontchannel-replaces-backchannel",
            "front-channel mode: admin and API logouts send nothing",
        ),
        (
            "frontchannel-path-unused",
            "KC_SSO_FRONTCHANNEL_PATH is set but the client uses back-channel",
        ),
        ("backchannel-url-missing", "no back-channel logout URL: Keycloak never tells the app"),
        ("backchannel-url-wrong", "the back-channel URL is not this app's back-channel URL"),
        ("backchannel-url-session-host", "the back-channel URL uses ${application.session.host}"),
        ("backchannel-url-loopback", "the back-channel URL is loopback but Keycloak is remote"),
        ("backchannel-url-ok", "back-channel URL points at this app's back-channel path"),
        ("session-required-off", "'Backchannel logout session required' off: tokens carry no sid"),
        ("session-required-ok", "'Backchannel logout session required' on"),
        ("post-logout-uri-missing", "the app's post-logout redirect URI is not allowed"),
        ("post-logout-uri-narrow", "other same-origin post-logout targets are not allowed"),
        ("post-logout-uri-ok", "the post-logout redirect URI is allowed"),
        (
            "admin-url-missing",
            "no Admin URL: 'Sign out all active sessions' does not reach the app",
        ),
        ("admin-url-wrong", "the Admin URL is not this app's admin path"),
        ("admin-url-unserved", "an Admin URL is set but KC_SSO_ADMIN_PATH is off"),
        ("admin-url-ok", "Admin URL points at this app"),
        ("client-public", "the client is public; the middleware needs a confidential one"),
        ("client-secret-missing", "confidential client but no KC_SSO_CLIENT_SECRET"),
        ("client-auth-type", "the client authenticates otherwise than with its secret"),
        ("client-secret-wrong", "KC_SSO_CLIENT_SECRET is not the client's secret"),
        ("client-secret-ok", "KC_SSO_CLIENT_SECRET matches"),
        ("client-secret-unchecked", "the client's secret could not be read to compare"),
        ("logout-confirmation-on", "Keycloak shows a page instead of redirecting after logout"),
    ),
    **_table(
        "realm",
        ("keycloak-version", "the Keycloak version, when the admin API tells it"),
        ("realm-not-read", "the realm's settings could not be read (needs view-realm)"),
        (
            "logout-token-alg",
            "logout tokens are signed with an algorithm KC_SSO_ALGORITHMS refuses",
        ),
        (
            "admin-token-alg",
            "admin-URL requests are signed with an algorithm KC_SSO_ALGORITHMS refuses",
        ),
        ("session-lifetime", "Keycloak keeps sessions longer than KC_SSO_MAX_SESSION_LIFETIME"),
        ("legacy-redirect-uri", "KC_SSO_LEGACY_REDIRECT_URI is on for a Keycloak that refuses it"),
        ("typ-policy-strict", "KC_SSO_TYP_POLICY=strict with a Keycloak that sends typ JWT"),
        ("logout-token-no-exp", "this Keycloak sends logout tokens without exp"),
    ),
    **_table(
        "explain",
        (
            "text-kc-services0057",
            "KC-SERVICES0057: Keycloak could not deliver a back-channel logout",
        ),
        ("text-pkix", "PKIX path building failed: Keycloak does not trust the app's certificate"),
        ("text-kc-services0051", "KC-SERVICES0051: a back-channel logout failed before sending"),
        ("text-logout-error-invalid-token", "LOGOUT_ERROR invalid_token: a token was refused"),
        ("text-redirect-uri-unsupported", "Invalid parameter: redirect_uri (Keycloak 18+)"),
        ("text-invalid-redirect-uri", "Invalid redirect uri: post-logout URI not allowed"),
        ("text-client-not-identified", "unauthorized_client / invalid_client on a REST logout"),
        ("text-clients-not-logged-out", "Some clients have not been logged out (front-channel)"),
        ("text-none-known", "no known failure text found"),
    ),
}
