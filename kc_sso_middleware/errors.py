"""One exception hierarchy, each class with a short machine code.

The code travels into the middleware's error bodies, into log records and into test
assertions, so a rejection always says which rule failed (Authlib's habit of an
``error = "..."`` class attribute).  Which HTTP answer each error becomes is decided in one
place, :mod:`kc_sso_middleware.core.answers`.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "DiscoveryError",
    "KCSSOError",
    "KeysThrottledError",
    "LogoutTokenError",
    "RequestRefusedError",
    "StoreFullError",
    "StoreUnavailableError",
]


class KCSSOError(Exception):
    """Base class of every error this package raises on purpose."""

    code: str = "kc_sso_error"

    def __init__(self, description: str, *, code: str | None = None) -> None:
        super().__init__(description)
        if code is not None:
            self.code = code
        self.description = description

    def __str__(self) -> str:
        return f"{self.code}: {self.description}"


class ConfigurationError(KCSSOError, ValueError):
    """A setting is missing or malformed; the message names the variable and accepted forms."""

    code = "configuration_error"


class LogoutTokenError(KCSSOError):
    """A logout token (back-channel or legacy admin) broke a validation rule.

    ``code`` names the rule (``"bad_aud"``, ``"replayed_jti"``, …); ``status`` is the
    HTTP status the receiving endpoint answers with (400, or 403 for a signature the
    legacy admin protocol refuses, as Keycloak's old adapters did).
    """

    code = "invalid_logout_token"

    def __init__(self, code: str, description: str, *, status: int = 400) -> None:
        super().__init__(description, code=code)
        self.status = status


class RequestRefusedError(KCSSOError):
    """A request to one of the middleware's own paths is refused before any token rule.

    ``status`` is the HTTP status; ``headers`` go into the answer (e.g. ``Allow``).
    """

    code = "invalid_request"

    def __init__(
        self,
        code: str,
        description: str,
        *,
        status: int = 400,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(description, code=code)
        self.status = status
        self.headers = headers


class DiscoveryError(KCSSOError):
    """The OP's discovery document or JWKS could not be fetched or is malformed."""

    code = "discovery_error"
    #: the request was sent and no answer came in time (the OP may have acted on it)
    timed_out = False


class KeysThrottledError(DiscoveryError):
    """A token names a key the cached JWKS lacks and a refetch ran too recently, or no
    keys are cached and the last fetch failed too recently.

    The OP's keys are fetched again at most once per ``KC_SSO_JWKS_MIN_REFRESH_INTERVAL``
    for unknown ``kid`` values or after a failure, so a flood of forged tokens (or an OP
    that is down) cannot become a flood of requests to Keycloak.  The answer is a 503
    with ``Retry-After``: the failure is the server's, not the token's.
    """

    code = "jwks_refetch_throttled"

    def __init__(self, description: str, *, retry_after: float) -> None:
        super().__init__(description)
        self.retry_after = retry_after


class StoreUnavailableError(KCSSOError):
    """The shared revocation store could not be reached or did not confirm a write."""

    code = "store_unavailable"
    #: headers its answer carries all the same (a front-channel page's cookie expiry)
    headers: tuple[tuple[str, str], ...] = ()


class StoreFullError(StoreUnavailableError):
    """The store holds its configured bound of entries and refuses an unauthenticated write.

    Never raised for writes the OP or the session itself vouches for: those are always
    stored, because forgetting or refusing a real revocation is the failure this package
    exists to prevent.
    """

    code = "store_full"
