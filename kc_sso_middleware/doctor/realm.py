"""Realm and server facts that decide whether logout tokens are accepted.

Pure functions over the realm representation (``GET /admin/realms/{realm}``, role
``view-realm``) and the server version (``GET /admin/serverinfo``).  Without a version,
only what holds for every version is said.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..settings import Settings
from .report import Finding, Severity

__all__ = ["parse_version", "realm_findings", "version_findings"]

_DEFAULT_SSO_MAX = 36000  # Keycloak's default ssoSessionMaxLifespan (10 h)


def parse_version(text: str | None) -> tuple[int, int, int] | None:
    """``"26.5.6"`` → (26, 5, 6); a nightly ``999.0.0-SNAPSHOT`` counts as newest."""
    if not text:
        return None
    match = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", text.strip())
    if match is None:
        return None
    major, minor, patch = (int(part or 0) for part in match.groups())
    return major, minor, patch


def version_findings(version: str | None, settings: Settings) -> list[Finding]:
    """What the server version says about the middleware's settings."""
    parsed = parse_version(version)
    findings = []
    if parsed is not None:
        findings.append(
            Finding(
                "keycloak-version",
                Severity.INFO,
                f"Keycloak {version}.",
                details={"version": version},
            )
        )
    if settings.legacy_redirect_uri and (parsed is None or parsed >= (18, 0, 0)):
        findings.append(_legacy_redirect(version, parsed))
    if parsed is None:
        return findings
    if settings.typ_policy == "strict" and parsed < (25, 0, 0):
        findings.append(
            Finding(
                "typ-policy-strict",
                Severity.PROBLEM,
                f"KC_SSO_TYP_POLICY=strict requires typ logout+jwt, but Keycloak {version} "
                "signs logout tokens with typ JWT (logout+jwt came in 25): every logout token "
                "is refused.",
                "Set KC_SSO_TYP_POLICY=lenient (the default) until Keycloak is 25 or newer.",
            )
        )
    if not settings.allow_missing_exp and parsed < (23, 0, 4):
        findings.append(
            Finding(
                "logout-token-no-exp",
                Severity.PROBLEM,
                f"Keycloak {version} sends logout tokens without exp (added in 23.0.4), and "
                "the middleware refuses those: every logout token is refused.",
                "Set KC_SSO_ALLOW_MISSING_EXP=true, or upgrade Keycloak.",
            )
        )
    return findings


def _legacy_redirect(version: str | None, parsed: tuple[int, int, int] | None) -> Finding:
    if parsed is None:
        effect = (
            ': Keycloak 18 to 25 refuse it ("Invalid parameter: redirect_uri") unless '
            "started with the legacy-logout-redirect-uri option, and 26 ignores it."
        )
    elif parsed >= (26, 0, 0):
        effect = (
            f": Keycloak {version} ignores it, so users stay on Keycloak's logged-out page "
            "instead of coming back to the app."
        )
    else:
        effect = (
            f': Keycloak {version} refuses it with the error page "Invalid parameter: '
            'redirect_uri" unless it runs with the legacy-logout-redirect-uri option.'
        )
    return Finding(
        "legacy-redirect-uri",
        Severity.PROBLEM if parsed is not None else Severity.WARN,
        "KC_SSO_LEGACY_REDIRECT_URI=true makes the logout send the pre-18 redirect_uri "
        "parameter" + effect,
        "Set KC_SSO_LEGACY_REDIRECT_URI=false (post_logout_redirect_uri with id_token_hint is "
        "what Keycloak 18+ expects); keep it only for a Keycloak older than 18.",
    )


def _positive(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and value.strip().isdigit() and int(value) > 0:
        return int(value)
    return None


def realm_findings(
    realm: Mapping[str, object], client: Mapping[str, object], settings: Settings
) -> list[Finding]:
    """The logout and admin-URL tokens' signature algorithms, and how long Keycloak keeps
    sessions."""
    findings = []
    attributes = client.get("attributes")
    attributes = attributes if isinstance(attributes, dict) else {}
    client_alg = attributes.get("id.token.signed.response.alg")
    realm_alg = realm.get("defaultSignatureAlgorithm")
    alg = str(client_alg or realm_alg or "RS256")
    if alg not in settings.algorithms:
        source = (
            "the client's ID token signature algorithm"
            if client_alg
            else "the realm's default signature algorithm"
        )
        findings.append(
            Finding(
                "logout-token-alg",
                Severity.PROBLEM,
                f"Keycloak signs this client's logout tokens with {alg} ({source}), but "
                f"KC_SSO_ALGORITHMS={','.join(settings.algorithms)}: every logout token is "
                "refused.",
                f"Add {alg} to KC_SSO_ALGORITHMS (if it is asymmetric), or change {source}.",
                {"algorithm": alg},
            )
        )
    # Admin-URL tokens (k_logout, k_push_not_before) are Keycloak's AdminAction tokens,
    # signed with the realm's default algorithm whatever the client's ID-token setting
    # (DefaultTokenManager: TokenCategory.ADMIN), and checked against the same setting.
    admin_alg = str(realm_alg or "RS256")
    if client.get("adminUrl") and admin_alg not in settings.algorithms:
        findings.append(
            Finding(
                "admin-token-alg",
                Severity.PROBLEM,
                f'Keycloak signs the admin URL\'s requests ("Sign out all active sessions", '
                f'"Push" of a not-before) with {admin_alg}, the realm\'s default signature '
                f"algorithm, but KC_SSO_ALGORITHMS={','.join(settings.algorithms)}: every one "
                "of them is refused.",
                f"Add {admin_alg} to KC_SSO_ALGORITHMS, or set the realm's default signature "
                "algorithm to one it lists.",
                {"algorithm": admin_alg},
            )
        )
    sso_max = _positive(realm.get("ssoSessionMaxLifespan")) or _DEFAULT_SSO_MAX
    if realm.get("rememberMe") is True:
        sso_max = max(sso_max, _positive(realm.get("ssoSessionMaxLifespanRememberMe")) or 0)
    if sso_max > settings.max_session_lifetime:
        findings.append(
            Finding(
                "session-lifetime",
                Severity.WARN,
                f"Keycloak keeps SSO sessions up to {sso_max} s, but the middleware refuses "
                f"sessions older than KC_SSO_MAX_SESSION_LIFETIME={settings.max_session_lifetime} "
                "s: users are signed out of the app before their Keycloak session ends.",
                f"Set KC_SSO_MAX_SESSION_LIFETIME={sso_max} (the realm's SSO Session Max"
                + (", or its remember-me maximum" if realm.get("rememberMe") is True else "")
                + ").",
                {"sso_session_max": sso_max},
            )
        )
    return findings
