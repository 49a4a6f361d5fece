"""Reading the client, the realm and the server version from Keycloak's admin REST API.

Two ways in, neither stored anywhere:

* an admin user: the password grant of ``admin-cli`` in the ``master`` realm (or
  ``--admin-realm``);
* a service account: ``client_credentials`` of a client in the app's realm (or
  ``--admin-realm``) whose service-account user has the ``realm-management`` role
  ``view-clients`` (``view-realm`` too, for the realm checks).

The comparison itself is :mod:`.client` and :mod:`.realm`; this module only fetches and
says, as findings, why something could not be read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

import httpx

from ..settings import Settings
from .client import SecretState, client_findings
from .fetch import Fetched, get, post_form
from .realm import realm_findings
from .report import Finding, Severity
from .urls import AppURLs

__all__ = ["AdminCredentials", "check_client"]


@dataclass(frozen=True)
class AdminCredentials:
    """How to log in to the admin API (secrets never in repr)."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    #: the realm to log in to; default master (user) or the app's realm (service account)
    realm: str | None = None
    #: Keycloak's URL for the admin API, when not the issuer's server
    base_url: str | None = None

    @property
    def given(self) -> bool:
        return bool(self.user or self.client_id)

    @property
    def who(self) -> str:
        return f"user {self.user!r}" if self.user else f"service account of {self.client_id!r}"


@dataclass(frozen=True, slots=True)
class ClientCheck:
    findings: list[Finding]
    version: str | None = None


def _error_text(fetched: Fetched) -> str:
    if not fetched.answered:
        return fetched.error
    body = fetched.json_object() or {}
    parts = [str(body[k]) for k in ("error", "error_description", "errorMessage") if k in body]
    return f"HTTP {fetched.status}" + (f" {': '.join(parts)}" if parts else "")


def _login(
    http: httpx.Client, base: str, app_realm: str, credentials: AdminCredentials
) -> str | Finding:
    """An access token, or the finding saying why there is none."""
    if credentials.user:
        realm = credentials.realm or "master"
        form = {
            "grant_type": "password",
            "client_id": "admin-cli",
            "username": credentials.user,
            "password": credentials.password or "",
        }
    else:
        realm = credentials.realm or app_realm
        form = {
            "grant_type": "client_credentials",
            "client_id": str(credentials.client_id),
            "client_secret": credentials.client_secret or "",
        }
    url = f"{base}/realms/{quote(realm, safe='')}/protocol/openid-connect/token"
    fetched = post_form(http, url, form)
    if not fetched.answered:
        return Finding(
            "admin-unreachable",
            Severity.UNCHECKED,
            f"The admin login at {url} failed: {fetched.error}.",
            "Check that this host reaches Keycloak's admin API; if it has another address "
            "than the issuer's, pass it as --admin-url.",
        )
    token = (fetched.json_object() or {}).get("access_token")
    if fetched.status != 200 or not isinstance(token, str):
        return Finding(
            "admin-login-failed",
            Severity.UNCHECKED,
            f"Keycloak refused the admin login of {credentials.who} in realm {realm!r} "
            f"({_error_text(fetched)}).",
            "Check the credentials and --admin-realm (an admin user logs in to master by "
            "default, a service account to the app's realm); a service account's client "
            "needs 'Service accounts roles' on.",
        )
    return token


def check_client(
    settings: Settings,
    urls: AppURLs,
    credentials: AdminCredentials,
    http: httpx.Client,
    server_base: str,
    realm: str,
) -> ClientCheck:
    """Read the client (and, if allowed, the realm and version) and compare them."""
    if not credentials.given:
        return ClientCheck(
            [
                Finding(
                    "client-not-checked",
                    Severity.INFO,
                    "The client's settings in Keycloak were not read (no admin credentials).",
                    "Pass --admin-user/--admin-password (or KC_SSO_CHECK_ADMIN_USER and "
                    "KC_SSO_CHECK_ADMIN_PASSWORD), or --admin-client-id/--admin-client-secret "
                    "of a service account with the realm-management role view-clients, to "
                    "compare them with what the middleware needs.",
                )
            ]
        )
    base = (credentials.base_url or server_base).rstrip("/")
    token = _login(http, base, realm, credentials)
    if isinstance(token, Finding):
        return ClientCheck([token])
    headers = {"Authorization": f"Bearer {token}"}
    api = f"{base}/admin/realms/{quote(realm, safe='')}"
    listed = get(http, f"{api}/clients?clientId={quote(settings.client_id, safe='')}", headers)
    if not listed.answered or listed.status != 200 or not isinstance(listed.body, list):
        forbidden = listed.status in (401, 403)
        return ClientCheck(
            [
                Finding(
                    "admin-forbidden" if forbidden else "admin-unreachable",
                    Severity.UNCHECKED,
                    f"The client list of realm {realm!r} could not be read with "
                    f"{credentials.who} ({_error_text(listed)}).",
                    "Give the account the realm-management client role view-clients in realm "
                    f"{realm!r} (for an admin user of master: the {realm}-realm client role "
                    "view-clients, or the admin role).",
                )
            ]
        )
    found = [
        c for c in listed.body if isinstance(c, dict) and c.get("clientId") == settings.client_id
    ]
    if not found:
        return ClientCheck(
            [
                Finding(
                    "client-not-found",
                    Severity.PROBLEM,
                    f"Realm {realm!r} has no client {settings.client_id!r} visible to "
                    f"{credentials.who}.",
                    "Check KC_SSO_CLIENT_ID (the Client ID, case-sensitive, not the internal "
                    "id) and KC_SSO_ISSUER's realm; a service account also needs the "
                    "realm-management role view-clients to see clients.",
                )
            ]
        )
    rep: Mapping[str, object] = found[0]
    secret = _secret(http, api, headers, rep, settings)
    findings = client_findings(rep, settings, urls, server_base, secret)
    realm_rep = get(http, api, headers)
    body = realm_rep.json_object() if realm_rep.status == 200 else None
    # Without view-realm Keycloak answers with the realm's name and little else.
    if body is not None and "ssoSessionMaxLifespan" in body:
        findings += realm_findings(body, rep, settings)
    else:
        why = "only its name is visible" if body is not None else _error_text(realm_rep)
        findings.append(
            Finding(
                "realm-not-read",
                Severity.INFO,
                f"The realm's settings could not be read ({why}), so its signature "
                "algorithm and session lifetime were not compared.",
                "Give the account the realm-management role view-realm to include them.",
            )
        )
    info = get(http, f"{base}/admin/serverinfo", headers).json_object() or {}
    system = info.get("systemInfo")
    version = system.get("version") if isinstance(system, dict) else None
    return ClientCheck(findings, version if isinstance(version, str) else None)


def _secret(
    http: httpx.Client,
    api: str,
    headers: Mapping[str, str],
    rep: Mapping[str, object],
    settings: Settings,
) -> SecretState:
    """The client's secret, when the comparison needs it and the account may read it."""
    if settings.client_secret is None or rep.get("publicClient") is True:
        return SecretState("none")
    listed = rep.get("secret")
    if isinstance(listed, str) and listed:
        return SecretState("known", listed)
    fetched = get(
        http, f"{api}/clients/{quote(str(rep.get('id')), safe='')}/client-secret", headers
    )
    value = (fetched.json_object() or {}).get("value")
    if fetched.status == 200 and isinstance(value, str) and value:
        return SecretState("known", value)
    if fetched.status in (200, 404):
        return SecretState("none")
    return SecretState("unreadable", reason=_error_text(fetched))
