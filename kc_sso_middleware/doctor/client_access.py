"""Where the browser may go after logout, the Admin URL, and how the client authenticates.

Part of the client comparison (:func:`~.client.client_findings`): post-logout redirect
URIs matched as Keycloak matches them, the legacy admin protocol's Admin URL, and whether
``KC_SSO_CLIENT_SECRET`` is the client's secret (compared in constant time, never shown).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from .client_view import SESSION_HOST, ClientView, points_at, strings, text
from .report import Finding, Severity
from .urls import effective_post_logout_uris, matching_redirect

__all__ = ["SecretState", "admin_url_findings", "authentication_findings", "post_logout_findings"]


@dataclass(frozen=True, slots=True)
class SecretState:
    """What is known of the client's secret in Keycloak (the value is never shown)."""

    state: Literal["known", "none", "unreadable"]
    value: str | None = field(default=None, repr=False)
    reason: str = ""


def post_logout_findings(client: ClientView) -> list[Finding]:
    urls = client.urls
    if urls.post_logout_redirect is None or urls.base is None:
        return []
    attribute = client.attr("post.logout.redirect.uris")
    redirect_uris = strings(client.rep.get("redirectUris"))
    patterns = effective_post_logout_uris(attribute, redirect_uris)
    source = (
        "its 'Valid post logout redirect URIs'"
        if attribute and "+" not in _split(attribute)
        else "its 'Valid post logout redirect URIs' and 'Valid redirect URIs'"
        if attribute
        else "its 'Valid redirect URIs' (post.logout.redirect.uris is empty)"
    )

    def allowed(uri: str) -> str | None:
        return matching_redirect(uri, patterns, client.root_url, client.server_base)

    settings = client.settings
    # With KC_SSO_POST_LOGOUT_PATH on (the default) the logout sends Keycloak the app's
    # return path, never the final target (that one waits in the signed state cookie), so
    # the return path is what Keycloak must allow, and other targets never reach it.
    returns = settings.post_logout_path is not None
    target = f"{urls.base}{settings.post_logout_path}" if returns else urls.post_logout_redirect
    details = {"patterns": patterns, "target": target}
    if allowed(target) is None:
        listed = ", ".join(patterns) if patterns else "none"
        shown = f"{target}, the app's return path (KC_SSO_POST_LOGOUT_PATH)," if returns else target
        return [
            Finding(
                "post-logout-uri-missing",
                Severity.PROBLEM,
                f"Keycloak does not allow {shown} as post_logout_redirect_uri (the client "
                f"allows {listed}, from {source}): every logout ends on Keycloak's error page "
                '"Invalid redirect uri" instead of back in the app.',
                f"Add {urls.post_logout_pattern} to 'Valid post logout redirect URIs' "
                f"({client.where}; attribute post.logout.redirect.uris, ##-separated, '+' "
                "adds the Valid redirect URIs).",
                details,
            )
        ]
    findings = [
        Finding(
            "post-logout-uri-ok",
            Severity.OK,
            f"{target} is allowed as post_logout_redirect_uri (by {allowed(target)}).",
        )
    ]
    if returns:
        return findings
    samples = [f"{urls.base}/kc-sso-check"]
    samples += [entry.rstrip("/") + "/kc-sso-check" for entry in settings.logout_redirect_allowlist]
    refused = [sample.rsplit("/", 1)[0] + "/…" for sample in samples if allowed(sample) is None]
    if refused:
        findings.append(
            Finding(
                "post-logout-uri-narrow",
                Severity.WARN,
                "Only the default target is allowed: a post_logout_redirect_uri the app "
                f"passes to its logout path ({', '.join(refused)}) will be refused by Keycloak "
                'with "Invalid redirect uri".',
                f"Allow {urls.post_logout_pattern}"
                + (
                    " and each KC_SSO_LOGOUT_REDIRECT_ALLOWLIST entry followed by /*"
                    if settings.logout_redirect_allowlist
                    else ""
                )
                + " as 'Valid post logout redirect URIs', if the app uses other targets.",
                details,
            )
        )
    return findings


def _split(attribute: str) -> Sequence[str]:
    return [part.strip() for part in attribute.split("##")]


def admin_url_findings(client: ClientView) -> list[Finding]:
    settings, urls = client.settings, client.urls
    raw = text(client.rep.get("adminUrl"))
    if settings.admin_path is None:
        if raw is None:
            return []
        return [
            Finding(
                "admin-url-unserved",
                Severity.WARN,
                f"The client's Admin URL is {raw}, but KC_SSO_ADMIN_PATH is off: Keycloak's "
                "'Sign out all active sessions' posts to <Admin URL>/k_logout and the app "
                "does not serve it.",
                "Set KC_SSO_ADMIN_PATH to the Admin URL's path, or clear the Admin URL.",
            )
        ]
    admin_path = settings.admin_path.rstrip("/")
    expected = urls.admin or f"<app URL>{admin_path}"
    if raw is None:
        return [
            Finding(
                "admin-url-missing",
                Severity.WARN,
                "The client has no Admin URL: Keycloak's realm-wide 'Sign out all active "
                "sessions' sends no back-channel logout, only the legacy admin protocol to "
                "<Admin URL>/k_logout, so it never reaches the app.",
                f"Set 'Admin URL' to {expected} ({client.where} → Access settings), if that "
                "action must sign users out of the app.",
            )
        ]
    resolved = (client.resolve(raw) or raw).rstrip("/")
    if SESSION_HOST in resolved or not points_at(resolved, urls.admin, admin_path):
        return [
            Finding(
                "admin-url-wrong",
                Severity.WARN,
                f"The Admin URL {raw} is not this app's ({expected}): 'Sign out all active "
                "sessions' posts to <Admin URL>/k_logout and so does not reach the app.",
                f"Set 'Admin URL' to {expected}.",
                {"configured": raw, "resolved": resolved},
            )
        ]
    return [Finding("admin-url-ok", Severity.OK, f"The Admin URL {raw} points at this app.")]


def authentication_findings(client: ClientView, secret: SecretState) -> list[Finding]:
    settings = client.settings
    if client.rep.get("publicClient") is True:
        ignored = (
            "  KC_SSO_CLIENT_SECRET is set, but Keycloak does not check secrets of public "
            "clients, so it protects nothing."
            if settings.client_secret
            else ""
        )
        return [
            Finding(
                "client-public",
                Severity.PROBLEM,
                "The client is public ('Client authentication' off), where the middleware "
                "needs a confidential one: anyone can obtain tokens and sessions as this "
                "client with its client_id alone." + ignored,
                f"Turn 'Client authentication' on ({client.where} → Capability config) and "
                "set KC_SSO_CLIENT_SECRET to the secret on its Credentials tab.",
            )
        ]
    kind = text(client.rep.get("clientAuthenticatorType")) or "client-secret"
    if settings.client_secret is None:
        return [
            Finding(
                "client-secret-missing",
                Severity.WARN,
                "The client is confidential but KC_SSO_CLIENT_SECRET is not set: the "
                "server-side logout of API clients (with a refresh token) is refused by "
                "Keycloak with 401 unauthorized_client.",
                "Set KC_SSO_CLIENT_SECRET to the secret on the client's Credentials tab.",
            )
        ]
    if kind != "client-secret":
        return [
            Finding(
                "client-auth-type",
                Severity.PROBLEM,
                f"The client authenticates with {kind!r}, but the middleware sends "
                "KC_SSO_CLIENT_SECRET as client_secret: Keycloak only accepts the configured "
                "authenticator and refuses the server-side logout with 401 invalid_client.",
                "Set the client's 'Client Authenticator' to 'Client Id and Secret' (Credentials "
                "tab), or unset KC_SSO_CLIENT_SECRET if the app does not need it.",
                {"clientAuthenticatorType": kind},
            )
        ]
    if secret.state == "unreadable":
        return [
            Finding(
                "client-secret-unchecked",
                Severity.UNCHECKED,
                f"The client's secret could not be read to compare it ({secret.reason}).",
                "Give the admin account the realm-management role view-clients, or compare "
                "KC_SSO_CLIENT_SECRET with the Credentials tab by hand.",
            )
        ]
    if (
        secret.state == "none"
        or secret.value is None
        or not hmac.compare_digest(secret.value.encode(), settings.client_secret.encode())
    ):
        return [
            Finding(
                "client-secret-wrong",
                Severity.PROBLEM,
                "KC_SSO_CLIENT_SECRET is not the client's secret in Keycloak: the server-side "
                "logout of API clients (and the app's own login, if it uses the same secret) "
                'is refused with 401 invalid_client "Invalid client or Invalid client '
                'credentials".',
                "Copy the secret from the client's Credentials tab into KC_SSO_CLIENT_SECRET "
                "(it changes when someone regenerates it).",
            )
        ]
    return [Finding("client-secret-ok", Severity.OK, "KC_SSO_CLIENT_SECRET matches the client's.")]
