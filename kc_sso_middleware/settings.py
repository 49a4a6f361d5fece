"""Settings, parsed once from ``KC_SSO_*`` environment variables into a frozen object.

Every variable is declared once in :data:`~kc_sso_middleware._variables.VARIABLES`
(name, field, parser, check, default, meaning); ``Settings.from_env`` walks that table, and
``Settings(...)`` built directly is checked against the same table, so a typo such as
``store_failure="clsoed"`` is an error naming the field, never a silently different
behaviour.  README.rst's table is compared with it entry by entry by a test.  A bad value
raises :class:`~kc_sso_middleware.errors.ConfigurationError` naming the variable and the
accepted forms; secrets never appear in ``repr`` or in error messages.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ._variable_checks import ADMIN_ACTION_NAMES
from ._variables import VARIABLES, Variable, default_store_url
from .errors import ConfigurationError

__all__ = ["VARIABLES", "Settings", "Variable"]

SessionFormat = Literal["auto", "flask", "starlette"]
TypPolicy = Literal["lenient", "strict"]
RevokedAction = Literal["anonymous", "401"]
StoreFailurePolicy = Literal["closed", "open"]
BearerPolicy = Literal["check", "off"]
SidLogoutScope = Literal["session", "user"]
LivenessFailurePolicy = Literal["open", "closed"]


@dataclass(frozen=True)
class Settings:
    """Everything the middleware needs; build it with :meth:`from_env` or directly."""

    issuer: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    session_secret: str | None = field(default=None, repr=False)
    session_secret_fallbacks: tuple[str, ...] = field(default=(), repr=False)
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
    bearer: BearerPolicy = "check"
    logout_path: str = "/logout"
    logout_post_only: bool = False
    post_logout_path: str | None = "/logout/complete"
    backchannel_path: str = "/backchannel-logout"
    frontchannel_path: str | None = None
    frontchannel_session_required: bool = True
    frontchannel_revoke_others: bool = False
    admin_path: str | None = "/"
    health_path: str | None = None
    metrics_path: str | None = None
    post_logout_redirect_uri: str | None = None
    logout_redirect_allowlist: tuple[str, ...] = ()
    legacy_redirect_uri: bool = False
    sid_logout_scope: SidLogoutScope = "session"
    #: not in ``repr``: a Redis URL may hold its password
    store: str = field(default_factory=default_store_url, repr=False)
    store_failure: StoreFailurePolicy = "closed"
    algorithms: tuple[str, ...] = ("RS256",)
    clock_skew: int = 60
    logout_token_max_age: int = 300
    allow_missing_exp: bool = False
    typ_policy: TypPolicy = "lenient"
    revoked_action: RevokedAction = "anonymous"
    max_session_lifetime: int = 36000
    liveness_interval: float | None = None
    liveness_failure: LivenessFailurePolicy = "open"
    http_timeout: float = 5.0
    ca_bundle: str | None = None
    tls_verify: bool = True
    jwks_cache_ttl: int = 3600
    jwks_min_refresh_interval: int = 10
    backchannel_max_body: int = 65536

    def __post_init__(self) -> None:
        for variable in VARIABLES:
            problem = variable.problem(getattr(self, variable.field))
            if problem:
                shown = "<hidden>" if variable.secret else problem
                raise ConfigurationError(
                    f"{variable.name} (Settings.{variable.field}) {shown}; "
                    f"accepted: {variable.accepted}"
                )
        if not self.session_secret:  # "" too, as from the environment: a forgeable key
            raise ConfigurationError(
                "KC_SSO_SESSION_SECRET is required: it is the secret your framework signs its "
                "session cookie with (Flask SECRET_KEY, Starlette SessionMiddleware secret_key)"
            )
        if self.liveness_interval is not None and not self.client_secret:
            # Keycloak refuses introspection without client authentication (401, and 403
            # for a public client): no check could ever succeed, and under
            # KC_SSO_LIVENESS_FAILURE=closed every session would be answered 503 for good.
            raise ConfigurationError(
                "KC_SSO_LIVENESS_INTERVAL needs KC_SSO_CLIENT_SECRET: Keycloak answers token "
                "introspection only to a confidential client that authenticates"
            )
        if self.frontchannel_revoke_others and self.frontchannel_path is None:
            raise ConfigurationError(
                "KC_SSO_FRONTCHANNEL_REVOKE_OTHERS needs KC_SSO_FRONTCHANNEL_PATH: with "
                "front-channel logout off it would be silently ignored"
            )
        if self.liveness_failure == "closed" and self.liveness_interval is None:
            raise ConfigurationError(
                "KC_SSO_LIVENESS_FAILURE=closed needs KC_SSO_LIVENESS_INTERVAL: with liveness "
                "checks off it would be silently ignored"
            )
        if self.session_cookie_samesite == "none" and not self.session_cookie_secure:
            # browsers drop a SameSite=None cookie without Secure: the expiring Set-Cookie
            # would be ignored and a revoked session's cookie kept
            raise ConfigurationError(
                "KC_SSO_SESSION_COOKIE_SAMESITE=none needs KC_SSO_SESSION_COOKIE_SECURE=true: "
                "browsers ignore a SameSite=None cookie without Secure"
            )
        paths = [
            p
            for p in (
                self.logout_path,
                self.backchannel_path,
                self.frontchannel_path,
                self.post_logout_path,
                self.health_path,
                self.metrics_path,
            )
            if p is not None
        ]
        if self.admin_path is not None:
            # the facade serves these below KC_SSO_ADMIN_PATH in the same route table: an
            # equal path would silently replace one of the two routes
            base = self.admin_path.rstrip("/")
            paths += [f"{base}/{name}" for name in ADMIN_ACTION_NAMES]
        if len(set(paths)) != len(paths):
            raise ConfigurationError(
                "the paths the middleware serves (KC_SSO_LOGOUT_PATH, KC_SSO_BACKCHANNEL_PATH, "
                "KC_SSO_FRONTCHANNEL_PATH, KC_SSO_POST_LOGOUT_PATH, KC_SSO_HEALTH_PATH, "
                "KC_SSO_METRICS_PATH, and the admin protocol's below KC_SSO_ADMIN_PATH) must "
                f"differ; got {paths}"
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
                values[variable.field] = variable.parse_raw(raw.strip())
            except ValueError as exc:
                shown = "<hidden>" if variable.secret else repr(raw)
                raise ConfigurationError(
                    f"{variable.name}={shown} is not valid ({exc}); accepted: {variable.accepted}"
                ) from None
        return cls(**values)
