"""One run of the check: every area in turn, into one :class:`~.report.Report`.

:func:`run` takes parsed settings and the options of the command line; the HTTP client and
the store opener can be injected (tests pass an ``httpx.MockTransport`` client and a fake
store).  Nothing here decides anything: each area's module does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from ..errors import ConfigurationError
from ..settings import Settings
from ..stores import RevocationStore, open_store
from ..stores.options import redact
from .admin import AdminCredentials, check_client
from .fetch import client_for
from .probe import probe_backchannel, probe_findings
from .provider import check_provider, transport_findings
from .realm import version_findings
from .report import Finding, Report, Severity
from .sqlite_file import inspect_sqlite, sqlite_findings, sqlite_path
from .store import probe_store, store_findings
from .urls import AppURLs, app_urls, server_of, urls_findings

__all__ = ["Options", "config_report", "run"]


@dataclass(frozen=True)
class Options:
    """What the command line asked for."""

    app_url: str | None = None
    #: the app's URL as Keycloak reaches it, when not ``app_url``
    app_url_for_keycloak: str | None = None
    admin: AdminCredentials = field(default_factory=AdminCredentials)
    check_store: bool = True
    probe_app: bool = False


def config_report(error: ConfigurationError) -> Report:
    """The report when the environment does not even parse."""
    return Report.of(
        [
            Finding(
                "config-invalid",
                Severity.PROBLEM,
                f"The KC_SSO_* environment is not valid: {error.description}",
                "Fix the variable the message names; the app refuses to start with it too.",
            )
        ]
    )


def run(
    settings: Settings,
    options: Options,
    *,
    http: httpx.Client | None = None,
    store_opener: Callable[[str], RevocationStore] = open_store,
    mountinfo: str | None = None,
) -> Report:
    """Check everything ``options`` asks for; never raises for what it finds."""
    try:
        server_base, realm = server_of(settings.issuer)
    except ValueError:
        server_base, realm = settings.issuer, None
    urls = app_urls(settings, options.app_url, options.app_url_for_keycloak)
    context: dict[str, object] = {
        "issuer": settings.issuer,
        "client_id": settings.client_id,
        "app_url": urls.base or "",
        "store": redact(settings.store),
    }
    findings: list[Finding] = transport_findings(settings)
    with contextlib.ExitStack() as stack:
        if http is None:
            try:
                http = stack.enter_context(client_for(settings))
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                # The app cannot reach Keycloak like this; checking with other trust
                # would say what the app does not see.
                if "ca-bundle-unreadable" not in {f.code for f in findings}:
                    findings.append(_unreadable_bundle(settings, exc))
        if http is None:
            findings += urls_findings(settings, urls)
        else:
            findings += _http_checks(settings, options, urls, http, server_base, realm, context)
    if options.check_store:
        findings += _store(settings, store_opener, mountinfo)
    context["urls"] = urls.as_dict()
    return Report.of(findings, **context)


def _http_checks(
    settings: Settings,
    options: Options,
    urls: AppURLs,
    http: httpx.Client,
    server_base: str,
    realm: str | None,
    context: dict[str, object],
) -> list[Finding]:
    findings = check_provider(settings, http)
    findings += urls_findings(settings, urls)
    if options.probe_app and urls.backchannel:
        # The app's certificate is checked against the system's CAs, not KC_SSO_CA_BUNDLE.
        with httpx.Client(timeout=settings.http_timeout) as app_http:
            findings += probe_findings(probe_backchannel(app_http, urls.backchannel))
    version = None
    if realm is None:
        findings.append(
            Finding(
                "issuer-not-keycloak",
                Severity.WARN,
                f"KC_SSO_ISSUER={settings.issuer} is not a Keycloak realm URL "
                "(<server>/realms/<realm>), so Keycloak's admin API was not asked.",
                "Use the realm's issuer URL, as its discovery document names it.",
            )
        )
    else:
        client = check_client(settings, urls, options.admin, http, server_base, realm)
        findings += client.findings
        version = client.version
    findings += version_findings(version, settings)
    if version:
        context["keycloak_version"] = version
    return findings


def _unreadable_bundle(settings: Settings, exc: Exception) -> Finding:
    return Finding(
        "ca-bundle-unreadable",
        Severity.PROBLEM,
        f"KC_SSO_CA_BUNDLE={settings.ca_bundle} cannot be loaded ({exc}): the middleware "
        "cannot reach Keycloak over TLS.",
        "Point KC_SSO_CA_BUNDLE at a readable PEM file of the CA that signed Keycloak's "
        "certificate.",
    )


def _store(
    settings: Settings, opener: Callable[[str], RevocationStore], mountinfo: str | None
) -> list[Finding]:
    findings: list[Finding] = []
    if settings.store.startswith("sqlite:"):
        path = sqlite_path(settings.store)
        if path is not None:
            findings += sqlite_findings(inspect_sqlite(path, settings, mountinfo))
            if "sqlite-not-writable" in {f.code for f in findings}:
                return findings  # opening it would only fail for the same reason
    return findings + store_findings(probe_store(settings, opener=opener))
