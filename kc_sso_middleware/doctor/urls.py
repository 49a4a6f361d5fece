"""This app's URLs as Keycloak must know them, and URLs as Keycloak resolves them.

Pure functions.  The app's base URL comes from ``--app-url`` or, failing that, from the
origin of ``KC_SSO_POST_LOGOUT_REDIRECT_URI``; the middleware's paths hang below it
(``KC_SSO_BACKCHANNEL_PATH`` and the rest are relative to where the app is mounted).

Keycloak resolves a client URL that starts with ``/`` against the client's Root URL
(``${authBaseUrl}`` and ``${authAdminUrl}`` there stand for Keycloak's own base URL), or
against Keycloak's own origin when there is no Root URL; any other value is used as it is
(``ResolveRelative.resolveRelativeUri``).  Post-logout redirect URIs are matched as
``RedirectUtils.verifyRedirectUri`` does: exact, ``*`` alone, or a trailing ``*`` as a prefix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from ..settings import Settings
from .report import Finding, Severity

__all__ = [
    "AppURLs",
    "app_urls",
    "effective_post_logout_uris",
    "matching_redirect",
    "resolve_client_url",
    "same_url",
    "server_of",
    "urls_findings",
]

_DELIMITER = re.compile(r"\s*##\s*")
_DEFAULT_PORTS = {"http": 80, "https": 443}
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


@dataclass(frozen=True, slots=True)
class AppURLs:
    """The URLs of one app (all ``None`` when its base URL is unknown)."""

    #: the app's URL as browsers reach it, without a trailing slash
    base: str | None
    #: where ``base`` came from: ``--app-url`` or ``KC_SSO_POST_LOGOUT_REDIRECT_URI``
    source: str
    #: the app's URL as Keycloak reaches it (back-channel, Admin URL); default ``base``
    keycloak_base: str | None
    backchannel: str | None
    logout: str | None
    frontchannel: str | None
    #: the Admin URL (Keycloak posts to ``<it>/k_logout``); None when KC_SSO_ADMIN_PATH is off
    admin: str | None
    #: where the middleware sends the browser after logout by default
    post_logout_redirect: str | None
    #: the pattern to allow as "Valid post logout redirect URIs"
    post_logout_pattern: str | None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "app_url": self.base,
            "app_url_source": self.source or None,
            "app_url_for_keycloak": self.keycloak_base,
            "backchannel_logout_url": self.backchannel,
            "logout_url": self.logout,
            "frontchannel_logout_url": self.frontchannel,
            "admin_url": self.admin,
            "post_logout_redirect_uri": self.post_logout_redirect,
            "valid_post_logout_redirect_uris": self.post_logout_pattern,
        }


def normalize_base(url: str) -> str:
    """``url`` as a base URL (http or https, a host, no query): ValueError otherwise."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an absolute http(s) URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: a base URL has no query or fragment")
    return f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")


def app_urls(
    settings: Settings, app_url: str | None, keycloak_app_url: str | None = None
) -> AppURLs:
    """The app's URLs under ``app_url`` (or the post-logout URI's origin, if configured)."""
    source = "--app-url"
    base = normalize_base(app_url) if app_url else None
    if base is None and settings.post_logout_redirect_uri:
        parts = urlsplit(settings.post_logout_redirect_uri)
        base, source = f"{parts.scheme}://{parts.netloc}", "KC_SSO_POST_LOGOUT_REDIRECT_URI"
    if base is None:
        return AppURLs(None, "", None, None, None, None, None, None, None)
    inner = normalize_base(keycloak_app_url) if keycloak_app_url else base
    admin = None
    if settings.admin_path is not None:
        admin = inner + settings.admin_path.rstrip("/")
    return AppURLs(
        base=base,
        source=source,
        keycloak_base=inner,
        backchannel=inner + settings.backchannel_path,
        logout=base + settings.logout_path,
        frontchannel=(base + settings.frontchannel_path) if settings.frontchannel_path else None,
        admin=admin,
        post_logout_redirect=settings.post_logout_redirect_uri or f"{base}/",
        post_logout_pattern=f"{base}/*",
    )


def server_of(issuer: str) -> tuple[str, str]:
    """Keycloak's base URL and the realm name of an issuer ``<base>/realms/<realm>``."""
    base, sep, realm = issuer.rstrip("/").rpartition("/realms/")
    if not sep or not realm or "/" in realm:
        raise ValueError(f"{issuer!r} is not a Keycloak issuer (<server>/realms/<realm>)")
    return base, unquote(realm)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def resolve_root_url(root_url: str | None, server_base: str) -> str | None:
    if root_url in ("${authBaseUrl}", "${authAdminUrl}"):
        return server_base.rstrip("/")
    return root_url


def resolve_client_url(value: str | None, root_url: str | None, server_base: str) -> str | None:
    """A client URL as Keycloak uses it (None when blank)."""
    if value is None or value.strip() == "":
        return None
    if not value.startswith("/"):
        return value
    root = resolve_root_url(root_url, server_base)
    if root:
        return root + value
    return _origin(server_base) + value


def _canonical(url: str) -> tuple[str, str, int | None, str] | None:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS.get(scheme), parts.path or "/"


def same_url(a: str, b: str) -> bool:
    """Same scheme, host, port (default ports implied) and path; query and case of the
    host aside (the middleware routes on the path alone)."""
    left, right = _canonical(a), _canonical(b)
    return left is not None and left == right


def same_origin(a: str, b: str) -> bool:
    left, right = _canonical(a), _canonical(b)
    return left is not None and right is not None and left[:3] == right[:3]


def path_of(url: str) -> str:
    return urlsplit(url).path or "/"


def is_loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "").lower() in LOOPBACK_HOSTS


# -- post-logout redirect URIs --------------------------------------------------------


def effective_post_logout_uris(attribute: str | None, redirect_uris: Sequence[str]) -> list[str]:
    """The patterns Keycloak allows as ``post_logout_redirect_uri`` for a client.

    ``post.logout.redirect.uris`` split on ``##``; absent or empty: the redirect URIs;
    ``-`` first: none; a ``+`` entry: the listed ones plus the redirect URIs.
    """
    values = [v for v in _DELIMITER.split(attribute.strip())] if attribute else []
    while values and values[-1] == "":
        values.pop()  # Java's split drops trailing empty strings
    if not values:
        return list(redirect_uris)
    if values[0] == "-":
        return []
    if "+" in values:
        return sorted({v for v in values if v != "+"} | set(redirect_uris))
    return values


def matching_redirect(
    uri: str, patterns: Sequence[str], root_url: str | None, server_base: str
) -> str | None:
    """The pattern that allows ``uri`` as Keycloak matches it, or None."""
    resolved = []
    for pattern in patterns:
        if pattern.startswith("/"):
            root = resolve_root_url(root_url, server_base) or _origin(server_base)
            pattern = root + pattern
        resolved.append(pattern)
    # Keycloak tries the longest first; any match allows the URI.
    for pattern in sorted(resolved, key=len, reverse=True):
        if pattern == "*":
            return pattern
        if pattern.endswith("*") and "?" not in pattern:
            bare = uri.split("?", 1)[0].split("#", 1)[0]
            prefix = pattern[:-1]
            if bare.startswith(prefix) or (prefix.endswith("/") and bare == prefix[:-1]):
                return pattern
        elif pattern == uri:
            return pattern
    return None


# -- findings ---------------------------------------------------------------------------


def urls_findings(settings: Settings, urls: AppURLs) -> list[Finding]:
    """What Keycloak's client must be configured with, in plain words."""
    if urls.base is None:
        return [
            Finding(
                "app-url-unknown",
                Severity.INFO,
                "The app's public URL is unknown, so only the middleware's paths can be "
                f"compared: back-channel {settings.backchannel_path}, logout "
                f"{settings.logout_path}"
                + (
                    f", front-channel {settings.frontchannel_path}"
                    if settings.frontchannel_path
                    else ""
                )
                + ".",
                "Pass --app-url https://your-app (the URL the app is served at, with any "
                "mount prefix), or set KC_SSO_POST_LOGOUT_REDIRECT_URI.",
            )
        ]
    lines = [
        f"Back-channel logout URL: {urls.backchannel}",
        "Backchannel logout session required: on",
        "Front channel logout: " + (f"on, URL {urls.frontchannel}" if urls.frontchannel else "off"),
        f"Valid post logout redirect URIs: {urls.post_logout_pattern} "
        f"(the default target is {urls.post_logout_redirect})",
        f"Admin URL: {urls.admin}" if urls.admin else "Admin URL: none (KC_SSO_ADMIN_PATH=off)",
        f"The app's logout link: {urls.logout}",
    ]
    derived = (
        ""
        if urls.source == "--app-url"
        else " (derived from the origin of KC_SSO_POST_LOGOUT_REDIRECT_URI; pass --app-url if "
        "the app is mounted below a path)"
    )
    findings = [
        Finding(
            "app-urls",
            Severity.INFO,
            f"Keycloak's client for this app{derived} needs:\n" + "\n".join(lines),
            details=urls.as_dict(),
        )
    ]
    if urls.backchannel and urls.backchannel.startswith("https:"):
        findings.append(
            Finding(
                "backchannel-tls",
                Severity.INFO,
                "The back-channel URL is https: it is Keycloak's Java runtime that connects, "
                "so Keycloak (not this host) must trust the app's certificate.  When it does "
                "not, every back-channel logout is lost silently: Keycloak logs "
                f"\"KC-SERVICES0057: Logout for client '{settings.client_id}' failed\" with "
                '"PKIX path building failed" in the stack trace, completes the logout '
                "anyway and never retries.",
                "If Keycloak's log shows that, give Keycloak the CA that signed the app's "
                "certificate: put the PEM file in Keycloak's conf/truststores directory or "
                "start it with --truststore-paths=/path/to/ca.pem (Keycloak 24+; older "
                "versions: the spi-truststore-file-* options or the JVM's cacerts).",
            )
        )
    return findings
