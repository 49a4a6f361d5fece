"""The client as Keycloak's admin API shows it, compared with what the middleware needs.

:func:`client_findings` decides over the client representation (``GET
/admin/realms/{realm}/clients?clientId=…``); field names and defaults are Keycloak's
(``ModelToRepresentation``, ``OIDCAdvancedConfigWrapper``): attributes are strings,
``backchannel.logout.session.required`` absent means false, ``frontchannelLogout`` is a
top-level boolean that, when true, makes Keycloak skip back-channel logout for the client.
This module checks the logout channels; redirects, the Admin URL and authentication are in
:mod:`.client_access`.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..settings import Settings
from .client_access import (
    SecretState,
    admin_url_findings,
    authentication_findings,
    post_logout_findings,
)
from .client_view import SESSION_HOST, ClientView, points_at
from .report import Finding, Severity
from .urls import AppURLs, is_loopback, path_of, same_origin, same_url

__all__ = ["SecretState", "client_findings"]


def client_findings(
    rep: Mapping[str, object],
    settings: Settings,
    urls: AppURLs,
    server_base: str,
    secret: SecretState,
) -> list[Finding]:
    """Every difference between the client and what the middleware needs."""
    client = ClientView(rep, settings, urls, server_base)
    findings: list[Finding] = []
    if rep.get("enabled") is False:
        findings.append(
            Finding(
                "client-disabled",
                Severity.PROBLEM,
                f"The client {settings.client_id} is disabled: nobody can log in to the app, "
                "and Keycloak sends disabled clients no logout.",
                f"Enable it ({client.where} → Enabled).",
            )
        )
    if rep.get("bearerOnly") is True:
        findings.append(
            Finding(
                "client-bearer-only",
                Severity.PROBLEM,
                f"The client {settings.client_id} is bearer-only: it cannot log users in, so "
                "it has no sessions to end.",
                "Use a confidential client with the standard flow for the app.",
            )
        )
    frontchannel_mode = client.frontchannel_on and settings.frontchannel_path is not None
    findings += _frontchannel(client)
    if not frontchannel_mode:
        findings += _backchannel(client)
    findings += post_logout_findings(client)
    findings += admin_url_findings(client)
    findings += authentication_findings(client, secret)
    if client.attr("logout.confirmation.enabled") == "true":
        findings.append(
            Finding(
                "logout-confirmation-on",
                Severity.WARN,
                "'Logout confirmation' is on: after logging out, Keycloak shows a page with "
                "a link instead of sending the browser back to the app.",
                f"Turn it off ({client.where} → Logout settings) unless that page is wanted.",
            )
        )
    return findings


def _frontchannel(client: ClientView) -> list[Finding]:
    settings, urls = client.settings, client.urls
    url = client.attr("frontchannel.logout.url")
    if not client.frontchannel_on:
        if settings.frontchannel_path is None:
            return []
        return [
            Finding(
                "frontchannel-path-unused",
                Severity.INFO,
                "KC_SSO_FRONTCHANNEL_PATH is set, but the client's front-channel logout is "
                "off: Keycloak uses back-channel logout, which is the better choice.",
                "Set KC_SSO_FRONTCHANNEL_PATH=off unless another OP uses it.",
            )
        ]
    if settings.frontchannel_path is None:
        nothing = (
            "  It has no front-channel URL either, so Keycloak sends this app no logout by "
            "either channel."
            if url is None
            else ""
        )
        return [
            Finding(
                "frontchannel-on",
                Severity.PROBLEM,
                "'Front channel logout' is on: Keycloak then silently skips back-channel "
                "logout for this client, whatever its back-channel URL says (keycloak#15058), "
                "so a logout elsewhere never reaches the app (KC_SSO_FRONTCHANNEL_PATH is "
                "off).  Logouts from the admin console or the API reach it by no channel: "
                "Keycloak's log then shows \"Some clients have not been logged out for user "
                '…".' + nothing,
                f"Turn 'Front channel logout' off ({client.where} → Logout settings; "
                "attribute frontchannelLogout=false), and set the back-channel URL.",
            )
        ]
    findings = [
        Finding(
            "frontchannel-replaces-backchannel",
            Severity.WARN,
            "Front-channel mode: Keycloak sends this client no back-channel logout.  Only a "
            "logout in a browser that loads Keycloak's logout page reaches the app; logouts "
            "from the admin console, the API or another device send nothing.",
            f"Prefer back-channel: turn 'Front channel logout' off ({client.where}) and set "
            "KC_SSO_FRONTCHANNEL_PATH=off.",
        )
    ]
    if url is None:
        findings.append(
            Finding(
                "frontchannel-url-missing",
                Severity.PROBLEM,
                "'Front channel logout' is on without a front-channel URL: Keycloak sends "
                "this app no logout at all.",
                f"Set 'Front-channel logout URL' to "
                f"{urls.frontchannel or '<app URL>' + str(settings.frontchannel_path)}.",
            )
        )
    elif not points_at(url, urls.frontchannel, str(settings.frontchannel_path)):
        findings.append(
            Finding(
                "frontchannel-url-wrong",
                Severity.PROBLEM,
                f"The front-channel URL {url} is not this app's front-channel URL "
                f"{urls.frontchannel or '(path ' + str(settings.frontchannel_path) + ')'}.",
                f"Set 'Front-channel logout URL' to "
                f"{urls.frontchannel or '<app URL>' + str(settings.frontchannel_path)}.",
            )
        )
    # Keycloak adds iss and sid to the frame's URL only with this on (its default when the
    # attribute is absent, OIDCAdvancedConfigWrapper.isFrontChannelLogoutSessionRequired).
    if (
        settings.frontchannel_session_required
        and client.attr("frontchannel.logout.session.required") == "false"
    ):
        findings.append(
            Finding(
                "frontchannel-session-required-off",
                Severity.PROBLEM,
                "'Front channel logout session required' is off: Keycloak's logout page "
                "frames the app without iss and sid, and the app refuses such requests "
                "(KC_SSO_FRONTCHANNEL_SESSION_REQUIRED), so no front-channel logout ends "
                "a session.",
                f"Turn it on ({client.where} → Logout settings; attribute "
                'frontchannel.logout.session.required="true").',
            )
        )
    return findings


def _backchannel(client: ClientView) -> list[Finding]:
    settings, urls = client.settings, client.urls
    expected = urls.backchannel or f"<app URL>{settings.backchannel_path}"
    raw = client.attr("backchannel.logout.url")
    findings: list[Finding] = []
    if raw is None:
        findings.append(
            Finding(
                "backchannel-url-missing",
                Severity.PROBLEM,
                "The client has no 'Backchannel logout URL': Keycloak never tells the app "
                "that a session ended, so the app keeps accepting it after a logout elsewhere.",
                f"Set 'Backchannel logout URL' to {expected} ({client.where} → Logout "
                "settings; attribute backchannel.logout.url).",
            )
        )
    elif SESSION_HOST in raw:
        findings.append(
            Finding(
                "backchannel-url-session-host",
                Severity.PROBLEM,
                f"The back-channel URL {raw} uses {SESSION_HOST}, which Keycloak fills from "
                "the client_session_host login parameter that only Keycloak's old adapters "
                'send: the logout fails before it is sent, logged as "KC-SERVICES0051: '
                'Failed to logout client, continuing".',
                f"Set 'Backchannel logout URL' to {expected}.",
            )
        )
    else:
        resolved = client.resolve(raw) or raw
        shown = raw if resolved == raw else f"{raw} (resolved against the Root URL: {resolved})"
        if urls.backchannel is not None and not same_url(resolved, urls.backchannel):
            other_host = path_of(resolved) == settings.backchannel_path and not same_origin(
                resolved, urls.backchannel
            )
            why = (
                "points at another host or port than this app"
                if other_host
                else f"does not end in the middleware's path {settings.backchannel_path}"
            )
            findings.append(
                Finding(
                    "backchannel-url-wrong",
                    Severity.PROBLEM,
                    f"The back-channel URL {shown} {why} (expected {urls.backchannel}): "
                    "Keycloak's logout requests go elsewhere, it ignores whatever answer "
                    "they get, and the app never learns of the logout.",
                    f"Set 'Backchannel logout URL' to {urls.backchannel}"
                    + (
                        "; if Keycloak reaches the app by another address than --app-url, "
                        "pass that one as --app-url-for-keycloak"
                        if other_host
                        else "; if the app is mounted below a path, include it in --app-url"
                    )
                    + ".",
                    {"configured": raw, "resolved": resolved, "expected": urls.backchannel},
                )
            )
        elif urls.backchannel is None and not path_of(resolved).endswith(settings.backchannel_path):
            findings.append(
                Finding(
                    "backchannel-url-wrong",
                    Severity.PROBLEM,
                    f"The back-channel URL {shown} does not end in the middleware's path "
                    f"{settings.backchannel_path} (KC_SSO_BACKCHANNEL_PATH).",
                    f"Set 'Backchannel logout URL' to <app URL>{settings.backchannel_path}.",
                    {"configured": raw, "resolved": resolved},
                )
            )
        else:
            findings.append(
                Finding(
                    "backchannel-url-ok",
                    Severity.OK,
                    f"The back-channel URL {shown} points at this app's back-channel path"
                    + ("" if urls.backchannel else " (its host was not compared)")
                    + ".",
                )
            )
        if is_loopback(resolved) and not is_loopback(client.server_base):
            findings.append(
                Finding(
                    "backchannel-url-loopback",
                    Severity.WARN,
                    f"The back-channel URL {resolved} is a loopback address, but Keycloak runs "
                    f"at {client.server_base}: Keycloak connects to its own host, not the app's.",
                    "Use an address of the app that Keycloak's host can reach.",
                )
            )
    required = client.attr("backchannel.logout.session.required")
    if (required or "").lower() == "true":
        findings.append(
            Finding(
                "session-required-ok", Severity.OK, "'Backchannel logout session required' is on."
            )
        )
    else:
        state = "absent (which means off)" if required is None else f"{required!r}"
        findings.append(
            Finding(
                "session-required-off",
                Severity.PROBLEM,
                f"'Backchannel logout session required' is {state}: Keycloak's logout tokens "
                "then carry no sid, only the user (sub), so one logout ends every session of "
                "that user in this app, on every device.  Realm imports and clients created "
                "through the REST API with a back-channel URL leave the attribute out.",
                f"Turn 'Backchannel logout session required' on ({client.where} → Logout "
                'settings; attribute backchannel.logout.session.required="true").',
                {"attribute": required},
            )
        )
    return findings
