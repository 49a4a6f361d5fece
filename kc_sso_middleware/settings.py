"""Settings, parsed once from ``KC_SSO_*`` environment variables into a frozen object.

Every variable is declared once in :data:`VARIABLES` (name, field, parser, default, meaning);
``Settings.from_env`` walks that table, and README.rst's table is checked against it by a
test, so the documentation cannot drift from the parser.  A bad value raises
:class:`~kc_sso_middleware.errors.ConfigurationError` naming the variable and the accepted
forms; secrets never appear in ``repr`` or in error messages.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from .errors import ConfigurationError

__all__ = ["VARIABLES", "Settings", "Variable"]

#: Signature algorithms a logout token may use.  Asymmetric only: an OP's JWKS holds public
#: keys, and accepting HMAC would let anyone holding the public key forge tokens (RFC 8725 §3.1).
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)

SessionFormat = Literal["auto", "flask", "starlette"]
TypPolicy = Literal["lenient", "strict"]
RevokedAction = Literal["anonymous", "401"]
StoreFailurePolicy = Literal["closed", "open"]


def _default_store_url() -> str:
    # Embedded SQLite shared by every worker of this host: a fresh `gunicorn -w 4`
    # deployment is correct with nothing configured (issue 3).  The file lives in the
    # system temp dir by default so it needs no write access to the app's directory.
    import tempfile

    return f"sqlite:///{os.path.join(tempfile.gettempdir(), 'kc-sso-revocations.db')}"


@dataclass(frozen=True)
class Settings:
    """Everything the middleware needs; build it with :meth:`from_env` or directly."""

    issuer: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    session_secret: str | None = field(default=None, repr=False)
    session_cookie: str = "session"
    session_format: SessionFormat = "auto"
    session_max_age: int | None = None
    session_cookie_path: str = "/"
    session_cookie_domain: str | None = None
    session_cookie_secure: bool = False
    session_cookie_samesite: str = "lax"
    session_id_token_key: str = "id_token"
    session_claims_key: str = "user"
    session_refresh_token_key: str = "refresh_token"
    logout_path: str = "/logout"
    backchannel_path: str = "/backchannel-logout"
    frontchannel_path: str | None = "/frontchannel-logout"
    admin_path: str | None = "/"
    post_logout_redirect_uri: str | None = None
    logout_redirect_allowlist: tuple[str, ...] = ()
    legacy_redirect_uri: bool = False
    store: str = field(default_factory=_default_store_url)
    store_failure: StoreFailurePolicy = "closed"
    algorithms: tuple[str, ...] = ("RS256",)
    clock_skew: int = 60
    logout_token_max_age: int = 300
    allow_missing_exp: bool = False
    typ_policy: TypPolicy = "lenient"
    revoked_action: RevokedAction = "anonymous"
    max_session_lifetime: int = 36000
    http_timeout: float = 5.0
    ca_bundle: str | None = None
    tls_verify: bool = True
    jwks_cache_ttl: int = 3600
    jwks_min_refresh_interval: int = 10
    backchannel_max_body: int = 65536

    def __post_init__(self) -> None:
        for variable in VARIABLES:
            if variable.check is not None:
                problem = variable.check(getattr(self, variable.field))
                if problem:
                    raise ConfigurationError(
                        f"{variable.name} (Settings.{variable.field}) {problem}; "
                        f"accepted: {variable.accepted}"
                    )
        if self.session_secret is None:
            raise ConfigurationError(
                "KC_SSO_SESSION_SECRET is required: it is the secret your framework signs its "
                "session cookie with (Flask SECRET_KEY, Starlette SessionMiddleware secret_key)"
            )
        paths = [
            p
            for p in (self.logout_path, self.backchannel_path, self.frontchannel_path)
            if p is not None
        ]
        if len(set(paths)) != len(paths):
            raise ConfigurationError(
                "KC_SSO_LOGOUT_PATH, KC_SSO_BACKCHANNEL_PATH and KC_SSO_FRONTCHANNEL_PATH "
                f"must differ; got {paths}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse ``KC_SSO_*`` variables (``os.environ`` by default) once."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for variable in VARIABLES:
            raw = env.get(variable.name)
            if raw is None or raw.strip() == "":
                if variable.required:
                    raise ConfigurationError(
                        f"{variable.name} is required: {variable.meaning}; "
                        f"accepted: {variable.accepted}"
                    )
                continue
            try:
                values[variable.field] = variable.parse(raw.strip())
            except ValueError as exc:
                shown = "<hidden>" if variable.secret else repr(raw)
                raise ConfigurationError(
                    f"{variable.name}={shown} is not valid ({exc}); accepted: {variable.accepted}"
                ) from None
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------- parsers


def _parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("not a boolean")


def _parse_int(raw: str) -> int:
    return int(raw)


def _parse_float(raw: str) -> float:
    return float(raw)


def _parse_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _parse_optional_path(raw: str) -> str | None:
    return None if raw.lower() == "off" else raw


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        lowered = raw.lower()
        if lowered not in choices:
            raise ValueError(f"not one of {', '.join(choices)}")
        return lowered

    return parse


# --------------------------------------------------------------------------- checks


def _check_url(value: object) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        return f"must be an absolute http(s) URL, got {value!r}"
    if value.endswith("/"):
        return f"must not end with '/' (the issuer is compared exactly), got {value!r}"
    return None


def _check_optional_url(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or urlsplit(value).scheme not in {"http", "https"}:
        return f"must be an absolute http(s) URL, got {value!r}"
    return None


def _check_nonempty(value: object) -> str | None:
    return None if isinstance(value, str) and value else "must not be empty"


def _check_path(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        return f"must start with '/', got {value!r}"
    return None


def _check_positive(value: object) -> str | None:
    if not isinstance(value, int | float) or value <= 0:
        return f"must be a positive number, got {value!r}"
    return None


def _check_non_negative(value: object) -> str | None:
    if not isinstance(value, int | float) or value < 0:
        return f"must be zero or more, got {value!r}"
    return None


def _check_optional_positive(value: object) -> str | None:
    return None if value is None else _check_positive(value)


def _check_algorithms(value: object) -> str | None:
    if not isinstance(value, tuple) or not value:
        return "must name at least one algorithm"
    unknown = [alg for alg in value if alg not in ASYMMETRIC_ALGORITHMS]
    if unknown:
        return (
            f"names {unknown}: only asymmetric algorithms are allowed "
            "('none' and HMAC never are, RFC 8725 §3.1-3.2)"
        )
    return None


def _check_origins(value: object) -> str | None:
    if not isinstance(value, tuple):
        return "must be a tuple of URLs"
    for entry in value:
        parts = urlsplit(entry)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            return f"has {entry!r}, which is not an absolute http(s) URL or origin"
    return None


def _check_store(value: object) -> str | None:
    if not isinstance(value, str) or "://" not in value:
        return f"must be a store URL, got {value!r}"
    scheme = value.split("://", 1)[0]
    if scheme not in {"memory", "sqlite", "redis", "rediss", "redis+sentinel", "unix"}:
        return f"has unknown scheme {scheme!r}"
    return None


def _check_samesite(value: object) -> str | None:
    if value not in {"lax", "strict", "none"}:
        return f"must be lax, strict or none, got {value!r}"
    return None


@dataclass(frozen=True)
class Variable:
    """One environment variable: where it goes, how it is read, what it means."""

    name: str
    field: str
    meaning: str
    accepted: str
    parse: Callable[[str], Any] = str
    default: str = "none"
    required: bool = False
    secret: bool = False
    check: Callable[[object], str | None] | None = None


#: Every supported variable, in the order README.rst documents them.
VARIABLES: tuple[Variable, ...] = (
    Variable(
        "KC_SSO_ISSUER",
        "issuer",
        "realm issuer URL; discovery at {issuer}/.well-known/openid-configuration",
        "absolute URL, e.g. http://localhost:8080/realms/demo",
        required=True,
        default="required",
        check=_check_url,
    ),
    Variable(
        "KC_SSO_CLIENT_ID",
        "client_id",
        "the app's client id in Keycloak",
        "string",
        required=True,
        default="required",
        check=_check_nonempty,
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
        "KC_SSO_SESSION_COOKIE",
        "session_cookie",
        "session cookie name",
        "cookie name",
        default="session",
        check=_check_nonempty,
    ),
    Variable(
        "KC_SSO_SESSION_FORMAT",
        "session_format",
        "how the session cookie is signed: Flask's cookie session or Starlette's "
        "SessionMiddleware; auto tries the adapter's own framework first",
        "auto, flask, starlette",
        parse=_choice("auto", "flask", "starlette"),
        default="auto",
    ),
    Variable(
        "KC_SSO_SESSION_MAX_AGE",
        "session_max_age",
        "seconds a signed session cookie stays valid, as the framework enforces it",
        "seconds",
        parse=_parse_int,
        default="Flask 2678400 (31 days), Starlette 1209600 (14 days)",
        check=_check_optional_positive,
    ),
    Variable(
        "KC_SSO_SESSION_COOKIE_PATH",
        "session_cookie_path",
        "Path attribute used when expiring the session cookie",
        "path",
        default="/",
        check=_check_path,
    ),
    Variable(
        "KC_SSO_SESSION_COOKIE_DOMAIN",
        "session_cookie_domain",
        "Domain attribute used when expiring the session cookie",
        "domain",
    ),
    Variable(
        "KC_SSO_SESSION_COOKIE_SECURE",
        "session_cookie_secure",
        "Secure attribute used when expiring the session cookie",
        "true/false",
        parse=_parse_bool,
        default="false",
    ),
    Variable(
        "KC_SSO_SESSION_COOKIE_SAMESITE",
        "session_cookie_samesite",
        "SameSite attribute used when expiring the session cookie",
        "lax, strict, none",
        parse=_choice("lax", "strict", "none"),
        default="lax",
        check=_check_samesite,
    ),
    Variable(
        "KC_SSO_SESSION_ID_TOKEN_KEY",
        "session_id_token_key",
        "session key holding the raw ID token (id_token_hint, sid, sub, auth_time)",
        "string",
        default="id_token",
        check=_check_nonempty,
    ),
    Variable(
        "KC_SSO_SESSION_CLAIMS_KEY",
        "session_claims_key",
        "session key holding the ID token's claims as a dict (used when the raw ID "
        "token is absent)",
        "string",
        default="user",
        check=_check_nonempty,
    ),
    Variable(
        "KC_SSO_SESSION_REFRESH_TOKEN_KEY",
        "session_refresh_token_key",
        "session key holding a refresh token, used for server-side logout of API clients",
        "string",
        default="refresh_token",
        check=_check_nonempty,
    ),
    Variable(
        "KC_SSO_LOGOUT_PATH",
        "logout_path",
        "logout path the middleware intercepts",
        "path",
        default="/logout",
        check=_check_path,
    ),
    Variable(
        "KC_SSO_BACKCHANNEL_PATH",
        "backchannel_path",
        "back-channel logout path the middleware serves (OIDC Back-Channel Logout 1.0)",
        "path",
        default="/backchannel-logout",
        check=_check_path,
    ),
    Variable(
        "KC_SSO_FRONTCHANNEL_PATH",
        "frontchannel_path",
        "front-channel logout path the middleware serves (OIDC Front-Channel Logout 1.0)",
        "path, or off",
        parse=_parse_optional_path,
        default="/frontchannel-logout",
        check=_check_path,
    ),
    Variable(
        "KC_SSO_ADMIN_PATH",
        "admin_path",
        "path Keycloak's client Admin URL points at; the legacy admin protocol's "
        "k_logout, k_push_not_before and k_test_available are served below it",
        "path, or off",
        parse=_parse_optional_path,
        default="/",
        check=_check_path,
    ),
    Variable(
        "KC_SSO_POST_LOGOUT_REDIRECT_URI",
        "post_logout_redirect_uri",
        "where Keycloak sends the browser after logout",
        "absolute URL",
        default="the app's root URL",
        check=_check_optional_url,
    ),
    Variable(
        "KC_SSO_LOGOUT_REDIRECT_ALLOWLIST",
        "logout_redirect_allowlist",
        "other origins or URL prefixes a request may name as post_logout_redirect_uri "
        "(same-origin targets are always allowed)",
        "comma-separated URLs",
        parse=_parse_list,
        default="empty",
        check=_check_origins,
    ),
    Variable(
        "KC_SSO_LEGACY_REDIRECT_URI",
        "legacy_redirect_uri",
        "send the pre-18 redirect_uri parameter instead of post_logout_redirect_uri",
        "true/false",
        parse=_parse_bool,
        default="false",
    ),
    Variable(
        "KC_SSO_STORE",
        "store",
        "revocation store URL",
        "memory://, sqlite:///path/file.db, redis://[:password@]host:port/db[?prefix=p], "
        "rediss://…, redis+sentinel://host:port/service_name",
        default="sqlite:///<temp dir>/kc-sso-revocations.db",
        check=_check_store,
    ),
    Variable(
        "KC_SSO_STORE_FAILURE",
        "store_failure",
        "when the shared store is unreachable: closed answers 503 to session-bearing "
        "requests, open serves from the last known replica",
        "closed, open",
        parse=_choice("closed", "open"),
        default="closed",
    ),
    Variable(
        "KC_SSO_ALGORITHMS",
        "algorithms",
        "signature algorithms accepted on logout tokens",
        "comma-separated, of " + ", ".join(sorted(ASYMMETRIC_ALGORITHMS)),
        parse=_parse_list,
        default="RS256",
        check=_check_algorithms,
    ),
    Variable(
        "KC_SSO_CLOCK_SKEW",
        "clock_skew",
        "seconds of clock skew tolerated",
        "seconds",
        parse=_parse_int,
        default="60",
        check=_check_non_negative,
    ),
    Variable(
        "KC_SSO_LOGOUT_TOKEN_MAX_AGE",
        "logout_token_max_age",
        "oldest iat accepted on a logout token, in seconds before now",
        "seconds",
        parse=_parse_int,
        default="300",
        check=_check_positive,
    ),
    Variable(
        "KC_SSO_ALLOW_MISSING_EXP",
        "allow_missing_exp",
        "accept logout tokens without exp (Keycloak older than 23.0.4)",
        "true/false",
        parse=_parse_bool,
        default="false",
    ),
    Variable(
        "KC_SSO_TYP_POLICY",
        "typ_policy",
        "logout token typ header: lenient accepts logout+jwt, JWT or none (Keycloak "
        "before 25 sends JWT); strict requires logout+jwt",
        "lenient, strict",
        parse=_choice("lenient", "strict"),
        default="lenient",
    ),
    Variable(
        "KC_SSO_REVOKED_ACTION",
        "revoked_action",
        "what a request with a revoked session gets: anonymous lets it through without "
        "the session cookie and expires the cookie; 401 answers 401",
        "anonymous, 401",
        parse=_choice("anonymous", "401"),
        default="anonymous",
    ),
    Variable(
        "KC_SSO_MAX_SESSION_LIFETIME",
        "max_session_lifetime",
        "sessions that began longer ago than this are refused, so revocations can be "
        "forgotten after it (Keycloak's SSO Session Max)",
        "seconds",
        parse=_parse_int,
        default="36000",
        check=_check_positive,
    ),
    Variable(
        "KC_SSO_HTTP_TIMEOUT",
        "http_timeout",
        "timeout for discovery, JWKS and end-session requests to Keycloak",
        "seconds",
        parse=_parse_float,
        default="5",
        check=_check_positive,
    ),
    Variable(
        "KC_SSO_CA_BUNDLE", "ca_bundle", "CA bundle file for TLS to Keycloak", "path to a PEM file"
    ),
    Variable(
        "KC_SSO_TLS_VERIFY",
        "tls_verify",
        "verify Keycloak's TLS certificate (never turn off in production)",
        "true/false",
        parse=_parse_bool,
        default="true",
    ),
    Variable(
        "KC_SSO_JWKS_CACHE_TTL",
        "jwks_cache_ttl",
        "seconds the OP's JWKS is cached",
        "seconds",
        parse=_parse_int,
        default="3600",
        check=_check_positive,
    ),
    Variable(
        "KC_SSO_JWKS_MIN_REFRESH_INTERVAL",
        "jwks_min_refresh_interval",
        "least seconds between two JWKS refetches caused by an unknown kid",
        "seconds",
        parse=_parse_int,
        default="10",
        check=_check_non_negative,
    ),
    Variable(
        "KC_SSO_BACKCHANNEL_MAX_BODY",
        "backchannel_max_body",
        "largest back-channel request body accepted; larger answers 413",
        "bytes",
        parse=_parse_int,
        default="65536",
        check=_check_positive,
    ),
)
