"""One exception hierarchy, each class with a short machine code.

The code travels into the back-channel endpoint's 400 body, into log records and into
test assertions, so a rejection always says which rule failed (Authlib's habit of an
``error = "..."`` class attribute).
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "DiscoveryError",
    "KCSSOError",
    "LogoutTokenError",
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
    HTTP status the receiving endpoint answers with.
    """

    code = "invalid_logout_token"
    status = 400

    def __init__(self, code: str, description: str, *, status: int = 400) -> None:
        super().__init__(description, code=code)
        self.status = status


class DiscoveryError(KCSSOError):
    """The OP's discovery document or JWKS could not be fetched or is malformed."""

    code = "discovery_error"


class StoreUnavailableError(KCSSOError):
    """The shared revocation store could not be reached or did not confirm a write."""

    code = "store_unavailable"


class StoreFullError(StoreUnavailableError):
    """The store holds its configured bound of entries and refuses an unauthenticated write.

    Never raised for writes the OP or the session itself vouches for: those are always
    stored, because forgetting or refusing a real revocation is the failure this package
    exists to prevent.
    """

    code = "store_full"
