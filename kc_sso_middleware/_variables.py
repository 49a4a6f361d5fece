"""The table of ``KC_SSO_*`` environment variables: name, field, parser, check, meaning.

Long by nature: one entry of a few lines per variable, in the order README.rst shows them;
the parsers and checks the entries name live in :mod:`._variable_checks`.

:class:`~kc_sso_middleware.settings.Settings` walks it to parse the environment and to
validate every field however the object was built; README.rst's configuration table is
this table, compared entry by entry by a test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ._variable_checks import (
    ASYMMETRIC_ALGORITHMS,
    check_algorithms,
    check_bool,
    check_cookie_domain,
    check_cookie_name,
    check_cookie_path,
    check_non_negative,
    check_nonempty,
    check_optional_positive,
    check_optional_string,
    check_optional_url,
    check_origins,
    check_path,
    check_positive,
    check_store,
    check_strings,
    check_url,
    parse_bool,
    parse_choice,
    parse_float,
    parse_int,
    parse_list,
    parse_optional_path,
)

__all__ = ["ASYMMETRIC_ALGORITHMS", "VARIABLES", "Variable", "default_store_url"]


def default_store_url(environ: Mapping[str, str] | None = None) -> str:
    """The SQLite file every worker of a deployment shares when ``KC_SSO_STORE`` is unset.

    A fresh ``gunicorn -w 4`` is correct with nothing configured: its workers run as one
    user with one environment, so they all pick the same file.  That file must outlive
    reboots and restarts (a revocation forgotten is a logged-out cookie accepted again),
    so it lives in a state directory, not in the temp directory (a tmpfs cleared at boot
    on current distributions, private to the service and deleted when it stops under
    systemd's ``PrivateTmp=yes``, pruned by ``systemd-tmpfiles``).  The first that applies:

    1. ``$STATE_DIRECTORY/kc-sso-revocations.db``: the service's own state directory
       (systemd's ``StateDirectory=``; the first one if it lists several);
    2. ``$XDG_STATE_HOME/kc-sso/revocations.db`` (an absolute path);
    3. ``~/.local/state/kc-sso/revocations.db``, if the home directory is one this user
       can create it in;
    4. ``<temp dir>/kc-sso-revocations.db`` (a user without a usable home, e.g. a system
       account with ``/nonexistent``), about which the store warns at start-up.

    Nothing is created here (the store creates the directories at start-up).
    """
    env = os.environ if environ is None else environ
    state_directory = env.get("STATE_DIRECTORY", "").split(":")[0]
    if os.path.isabs(state_directory):
        return f"sqlite:///{os.path.join(state_directory, 'kc-sso-revocations.db')}"
    xdg = env.get("XDG_STATE_HOME", "")
    if os.path.isabs(xdg) and _can_create(os.path.join(xdg, "kc-sso")):
        return f"sqlite:///{os.path.join(xdg, 'kc-sso', 'revocations.db')}"
    home = env.get("HOME") or os.path.expanduser("~")
    if os.path.isabs(home) and home != "/" and os.path.isdir(home):
        state = os.path.join(home, ".local", "state", "kc-sso")
        if _can_create(state):
            return f"sqlite:///{os.path.join(state, 'revocations.db')}"
    import tempfile

    return f"sqlite:///{os.path.join(tempfile.gettempdir(), 'kc-sso-revocations.db')}"


def _can_create(directory: str) -> bool:
    """Whether this user can use ``directory`` (or create it and its missing parents)."""
    existing = directory
    while not os.path.isdir(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            return False
        existing = parent
    return os.access(existing, os.W_OK | os.X_OK)


@dataclass(frozen=True)
class Variable:
    """One environment variable: where it goes, how it is read, what it means.

    ``default`` is the default as README.rst documents it; ``check`` validates the
    field's value (however ``Settings`` was built) and returns the problem, if any;
    ``choices``, when given, are the only values the field may hold.
    """

    name: str
    field: str
    meaning: str
    accepted: str
    parse: Callable[[str], Any] = str
    default: str = "none"
    required: bool = False
    secret: bool = False
    check: Callable[[object], str | None] | None = check_optional_string
    choices: tuple[str, ...] = ()

    def parse_raw(self, raw: str) -> Any:
        """The field value for ``raw`` (``ValueError`` when it is not accepted)."""
        value = self.parse(raw)
        if self.choices and value not in self.choices:
            raise ValueError(f"not one of {', '.join(self.choices)}")
        return value

    def problem(self, value: object) -> str | None:
        """What is wrong with ``value`` for this field, or ``None``."""
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}, got {value!r}"
        return self.check(value) if self.check is not None else None


#: Every supported variable, in the order README.rst documents them.
VARIABLES: tuple[Variable, ...] = (
    Variable(
        "KC_SSO_ISSUER",
        "issuer",
        "realm issuer URL; discovery at {issuer}/.well-known/openid-configuration",
        "absolute URL, e.g. http://localhost:8080/realms/demo",
        required=True,
        default="required",
        check=check_url,
    ),
    Variable(
        "KC_SSO_CLIENT_ID",
        "client_id",
        "the app's client id in Keycloak",
        "string",
        required=True,
        default="required",
        check=check_nonempty,
    ),
    Variable(
        "KC_SSO_CLIENT_SECRET",
        "client_secret",
        "confidential client secret (server-side logout for API clients)",
        "string",
        secret=True,
    ),
    Variable(
        "KC_SSO_SESSION_SECRET",
        "session_secret",
        "the secret the framework signs its session cookie with (Flask SECRET_KEY, "
        "Starlette SessionMiddleware secret_key)",
        "string",
        default="required for cookie sessions",
        secret=True,
    ),
    Variable(
        "KC_SSO_SESSION_SECRET_FALLBACKS",
        "session_secret_fallbacks",
        "older secrets session cookies may still be signed with, as Flask's "
        "SECRET_KEY_FALLBACKS: cookies signed with them still verify, so rotating the "
        "secret does not log everyone out",
        "comma-separated strings",
        parse=parse_list,
        default="empty",
        secret=True,
        check=check_strings,
    ),
    Variable(
        "KC_SSO_SESSION_COOKIE",
        "session_cookie",
        "session cookie name",
        "cookie name",
        default="session",
        check=check_cookie_name,
    ),
    Variable(
        "KC_SSO_SESSION_FORMAT",
        "session_format",
        "how the session cookie is signed: Flask's cookie session or Starlette's "
        "SessionMiddleware; auto tries the adapter's own framework first",
        "auto, flask, starlette",
        parse=parse_choice,
        choices=(
            "auto",
            "flask",
            "starlette",
        ),
        default="auto",
    ),
    Variable(
        "KC_SSO_SESSION_MAX_AGE",
        "session_max_age",
        "seconds a signed session cookie stays valid, as the framework enforces it",
        "seconds",
        parse=parse_int,
        default="Flask 2678400 (31 days), Starlette 1209600 (14 days)",
        check=check_optional_positive,
    ),
    Variable(
        "KC_SSO_SESSION_COOKIE_PATH",
        "session_cookie_path",
        "Path attribute used when expiring the session cookie, where the app's own"
        " is not read (Flask's and Starlette SessionMiddleware's are)",
        "path",
        default="/",
        check=check_cookie_path,
    ),
    Variable(
        "KC_SSO_SESSION_COOKIE_DOMAIN",
        "session_cookie_domain",
        "Domain attribute used when expiring the session cookie, where the app's own"
        " is not read (Flask's and Starlette SessionMiddleware's are)",
        "domain",
        check=check_cookie_domain,
    ),
    Variable(
        "KC_SSO_SESSION_COOKIE_SECURE",
        "session_cookie_secure",
        "Secure attribute used when expiring the session cookie, where the app's own"
        " is not read (Flask's and Starlette SessionMiddleware's are)",
        "true/false",
        parse=parse_bool,
        check=check_bool,
        default="false",
    ),
    Variable(
        "KC_SSO_SESSION_COOKIE_SAMESITE",
        "session_cookie_samesite",
        "SameSite attribute used when expiring the session cookie, where the app's own"
        " is not read (Flask's and Starlette SessionMiddleware's are)",
        "lax, strict, none",
        parse=parse_choice,
        choices=(
            "lax",
            "strict",
            "none",
        ),
        default="lax",
    ),
    Variable(
        "KC_SSO_SESSION_ID_TOKEN_KEY",
        "session_id_token_key",
        "session key holding the raw ID token (id_token_hint, sid, sub, auth_time)",
        "string",
        default="id_token",
        check=check_nonempty,
    ),
    Variable(
        "KC_SSO_SESSION_CLAIMS_KEY",
        "session_claims_key",
        "session key holding the ID token's claims as a dict (used when the raw ID "
        "token is absent)",
        "string",
        default="user",
        check=check_nonempty,
    ),
    Variable(
        "KC_SSO_SESSION_REFRESH_TOKEN_KEY",
        "session_refresh_token_key",
        "session key holding a refresh token, used for server-side logout of API clients "
        "and for liveness checks",
        "string",
        default="refresh_token",
        check=check_nonempty,
    ),
    Variable(
        "KC_SSO_BEARER",
        "bearer",
        "check Authorization: Bearer access tokens of this issuer against the same "
        "revocations (a revoked one gets 401 invalid_token); the app still validates them",
        "check, off",
        parse=parse_choice,
        choices=("check", "off"),
        default="check",
    ),
    Variable(
        "KC_SSO_LOGOUT_PATH",
        "logout_path",
        "logout path the middleware intercepts",
        "path",
        default="/logout",
        check=check_path,
    ),
    Variable(
        "KC_SSO_LOGOUT_POST_ONLY",
        "logout_post_only",
        "serve the logout path to POST only (Django 5's choice); a GET answers 405",
        "true/false",
        parse=parse_bool,
        check=check_bool,
        default="false",
    ),
    Variable(
        "KC_SSO_BACKCHANNEL_PATH",
        "backchannel_path",
        "back-channel logout path the middleware serves (OIDC Back-Channel Logout 1.0)",
        "path",
        default="/backchannel-logout",
        check=check_path,
    ),
    Variable(
        "KC_SSO_FRONTCHANNEL_PATH",
        "frontchannel_path",
        "front-channel logout path the middleware serves (OIDC Front-Channel Logout 1.0); "
        "off by default: keep Keycloak's front-channel logout off, it disables back-channel",
        "path, or off",
        parse=parse_optional_path,
        default="off",
        check=check_path,
    ),
    Variable(
        "KC_SSO_FRONTCHANNEL_SESSION_REQUIRED",
        "frontchannel_session_required",
        "refuse a front-channel request that names no iss and sid (Keycloak's 'Front channel "
        "logout session required', on by default): without them any site could end the "
        "browser's session with a link",
        "true/false",
        parse=parse_bool,
        check=check_bool,
        default="true",
    ),
    Variable(
        "KC_SSO_FRONTCHANNEL_REVOKE_OTHERS",
        "frontchannel_revoke_others",
        "let a front-channel request revoke a sid that is not the requesting browser's own "
        "session (unauthenticated: any site can make a browser send it; see Security)",
        "true/false",
        parse=parse_bool,
        check=check_bool,
        default="false",
    ),
    Variable(
        "KC_SSO_ADMIN_PATH",
        "admin_path",
        "path Keycloak's client Admin URL points at; the legacy admin protocol's "
        "k_logout, k_push_not_before and k_test_available are served below it",
        "path, or off",
        parse=parse_optional_path,
        default="/",
        check=check_path,
    ),
    Variable(
        "KC_SSO_POST_LOGOUT_PATH",
        "post_logout_path",
        "path Keycloak sends the browser back to after logout (post_logout_redirect_uri); the "
        "middleware checks the logout's state there, then redirects to the final target",
        "path, or off (Keycloak then sends the browser to the final target directly)",
        parse=parse_optional_path,
        default="/logout/complete",
        check=check_path,
    ),
    Variable(
        "KC_SSO_HEALTH_PATH",
        "health_path",
        "path of a JSON health endpoint for load balancers (store availability, replica "
        "version and age, last OP contact); 503 when the store is unavailable and "
        "KC_SSO_STORE_FAILURE is closed",
        "path, or off",
        parse=parse_optional_path,
        default="off",
        check=check_path,
    ),
    Variable(
        "KC_SSO_METRICS_PATH",
        "metrics_path",
        "path the middleware serves Prometheus metrics at (needs the metrics extra; see "
        "Metrics for several workers)",
        "path, or off",
        parse=parse_optional_path,
        default="off",
        check=check_path,
    ),
    Variable(
        "KC_SSO_POST_LOGOUT_REDIRECT_URI",
        "post_logout_redirect_uri",
        "where the browser finally lands after a confirmed logout; its origin is the app's "
        "public origin the return path is built on",
        "absolute URL",
        default="the app's root URL",
        check=check_optional_url,
    ),
    Variable(
        "KC_SSO_LOGOUT_REDIRECT_ALLOWLIST",
        "logout_redirect_allowlist",
        "other origins or URL prefixes a request may name as post_logout_redirect_uri "
        "(same-origin targets are always allowed)",
        "comma-separated URLs",
        parse=parse_list,
        default="empty",
        check=check_origins,
    ),
    Variable(
        "KC_SSO_LEGACY_REDIRECT_URI",
        "legacy_redirect_uri",
        "send the pre-18 redirect_uri parameter instead of post_logout_redirect_uri",
        "true/false",
        parse=parse_bool,
        check=check_bool,
        default="false",
    ),
    Variable(
        "KC_SSO_SID_LOGOUT_SCOPE",
        "sid_logout_scope",
        "what a logout token naming a sid ends: session, that Keycloak session; user, also "
        "every session of its user (sub) in this app's client begun up to it, for "
        "Keycloak's one-token-for-several-sessions logouts",
        "session, user",
        parse=parse_choice,
        choices=("session", "user"),
        default="session",
    ),
    Variable(
        "KC_SSO_STORE",
        "store",
        "revocation store URL",
        "memory://, sqlite:///path/file.db, redis://[:password@]host:port/db[?prefix=p], "
        "rediss://…, unix:///path/redis.sock[?db=N], redis+sentinel://host:port/service_name, "
        "redis+cluster://host:port[,host:port]",
        default=(
            "sqlite:///$STATE_DIRECTORY/kc-sso-revocations.db (systemd StateDirectory=), "
            "else $XDG_STATE_HOME/kc-sso/revocations.db, else "
            "~/.local/state/kc-sso/revocations.db, else <temp dir>/kc-sso-revocations.db"
        ),
        check=check_store,
    ),
    Variable(
        "KC_SSO_STORE_FAILURE",
        "store_failure",
        "when the shared store is unreachable: closed answers 503 to session-bearing "
        "requests, open serves from the last known replica",
        "closed, open",
        parse=parse_choice,
        choices=(
            "closed",
            "open",
        ),
        default="closed",
    ),
    Variable(
        "KC_SSO_ALGORITHMS",
        "algorithms",
        "signature algorithms accepted on logout tokens",
        "comma-separated, of " + ", ".join(sorted(ASYMMETRIC_ALGORITHMS)),
        parse=parse_list,
        default="RS256",
        check=check_algorithms,
    ),
    Variable(
        "KC_SSO_CLOCK_SKEW",
        "clock_skew",
        "seconds of clock skew tolerated",
        "seconds",
        parse=parse_int,
        default="60",
        check=check_non_negative,
    ),
    Variable(
        "KC_SSO_LOGOUT_TOKEN_MAX_AGE",
        "logout_token_max_age",
        "oldest iat accepted on a logout token, in seconds before now",
        "seconds",
        parse=parse_int,
        default="300",
        check=check_positive,
    ),
    Variable(
        "KC_SSO_ALLOW_MISSING_EXP",
        "allow_missing_exp",
        "accept logout tokens without exp (Keycloak older than 23.0.4)",
        "true/false",
        parse=parse_bool,
        check=check_bool,
        default="false",
    ),
    Variable(
        "KC_SSO_TYP_POLICY",
        "typ_policy",
        "logout token typ header: lenient accepts logout+jwt, JWT or none (Keycloak "
        "before 25 sends JWT); strict requires logout+jwt",
        "lenient, strict",
        parse=parse_choice,
        choices=(
            "lenient",
            "strict",
        ),
        default="lenient",
    ),
    Variable(
        "KC_SSO_REVOKED_ACTION",
        "revoked_action",
        "what a request with a revoked session gets: anonymous lets it through without "
        "the session cookie and expires the cookie; 401 answers 401",
        "anonymous, 401",
        parse=parse_choice,
        choices=(
            "anonymous",
            "401",
        ),
        default="anonymous",
    ),
    Variable(
        "KC_SSO_MAX_SESSION_LIFETIME",
        "max_session_lifetime",
        "sessions that began longer ago than this are refused, so revocations can be "
        "forgotten after it (Keycloak's SSO Session Max)",
        "seconds",
        parse=parse_int,
        default="36000",
        check=check_positive,
    ),
    Variable(
        "KC_SSO_LIVENESS_INTERVAL",
        "liveness_interval",
        "ask Keycloak (token introspection of the session's refresh token) at most this "
        "often per Keycloak session, across all workers and hosts, whether a session is "
        "still alive; catches idle expiry and lost logouts; unset: off",
        "seconds",
        parse=parse_float,
        default="off",
        check=check_optional_positive,
    ),
    Variable(
        "KC_SSO_LIVENESS_FAILURE",
        "liveness_failure",
        "when Keycloak cannot be asked: open keeps the session, closed answers its "
        "requests 503 until a check succeeds (the session is kept)",
        "open, closed",
        parse=parse_choice,
        choices=("open", "closed"),
        default="open",
    ),
    Variable(
        "KC_SSO_HTTP_TIMEOUT",
        "http_timeout",
        "timeout for discovery, JWKS and end-session requests to Keycloak",
        "seconds",
        parse=parse_float,
        default="5",
        check=check_positive,
    ),
    Variable(
        "KC_SSO_CA_BUNDLE", "ca_bundle", "CA bundle file for TLS to Keycloak", "path to a PEM file"
    ),
    Variable(
        "KC_SSO_TLS_VERIFY",
        "tls_verify",
        "verify Keycloak's TLS certificate (never turn off in production)",
        "true/false",
        parse=parse_bool,
        check=check_bool,
        default="true",
    ),
    Variable(
        "KC_SSO_JWKS_CACHE_TTL",
        "jwks_cache_ttl",
        "seconds the OP's JWKS is cached",
        "seconds",
        parse=parse_int,
        default="3600",
        check=check_positive,
    ),
    Variable(
        "KC_SSO_JWKS_MIN_REFRESH_INTERVAL",
        "jwks_min_refresh_interval",
        "least seconds between two JWKS fetches caused by an unknown kid or after a failed one",
        "seconds",
        parse=parse_int,
        default="10",
        check=check_non_negative,
    ),
    Variable(
        "KC_SSO_BACKCHANNEL_MAX_BODY",
        "backchannel_max_body",
        "largest back-channel request body accepted; larger answers 413",
        "bytes",
        parse=parse_int,
        default="65536",
        check=check_positive,
    ),
)
