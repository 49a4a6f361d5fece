"""Errors become responses here, and only here: one table from error to status and body.

Responders raise typed errors (:mod:`kc_sso_middleware.errors`); the facade turns whatever
they raise into an answer with :func:`answer`.  Bodies follow OAuth's shape, as
Back-Channel Logout §2.8 asks: ``{"error": ..., "error_description": "<code>: <detail>"}``.
Every answer carries ``Cache-Control: no-store``; server-side failures carry
``Retry-After`` so that they read as the server's, never as a bad request.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .._http import Response, json_response
from ..errors import (
    DiscoveryError,
    KCSSOError,
    KeysThrottledError,
    LogoutTokenError,
    RequestRefusedError,
    StoreUnavailableError,
)

__all__ = ["ProviderRefusedError", "ProviderTimeoutError", "answer"]

#: seconds a client is asked to wait after a server-side failure
RETRY_AFTER = 5


class ProviderRefusedError(KCSSOError):
    """Keycloak refused or could not be asked to end a session server-side (API logout)."""

    code = "op_logout_failed"

    def __init__(self, description: str, *, op_error: str, op_status: int | None) -> None:
        super().__init__(description)
        self.op_error = op_error
        self.op_status = op_status


class ProviderTimeoutError(ProviderRefusedError):
    """Keycloak got the request but did not answer in time: it may have acted on it."""

    code = "op_timeout"


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    #: the body's ``error``; ``None`` uses the error's own code
    error: str | None
    retry: bool = False


# Looked up along the error's class hierarchy, most specific first.
_TABLE: dict[type[KCSSOError], _Answer] = {
    LogoutTokenError: _Answer(400, "invalid_request"),
    RequestRefusedError: _Answer(400, "invalid_request"),
    KeysThrottledError: _Answer(503, "temporarily_unavailable", retry=True),
    DiscoveryError: _Answer(503, "temporarily_unavailable", retry=True),
    StoreUnavailableError: _Answer(503, "temporarily_unavailable", retry=True),
    ProviderTimeoutError: _Answer(504, None),
    ProviderRefusedError: _Answer(502, None),
}
_FALLBACK = _Answer(500, "server_error")


#: RFC 6749 §5.2: error_description is %x20-21 / %x23-5B / %x5D-7E (no quote, no backslash)
_NOT_OAUTH_TEXT = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
_DESCRIPTION_LIMIT = 500


def oauth_text(text: str) -> str:
    """``text`` as an ``error_description`` may carry it: what a token's unsigned header
    put there (up to kilobytes of anything) is cut short and its other characters
    replaced, so the answer neither breaks a strict client nor echoes an attacker's bytes."""
    if len(text) > _DESCRIPTION_LIMIT:
        text = text[: _DESCRIPTION_LIMIT - 3] + "..."
    return _NOT_OAUTH_TEXT.sub("?", text)


def answer(error: KCSSOError, *extra: tuple[str, str]) -> Response:
    """The response ``error`` stands for (with ``extra`` headers, e.g. a cookie expiry)."""
    spec = next((_TABLE[cls] for cls in type(error).__mro__ if cls in _TABLE), _FALLBACK)
    status = getattr(error, "status", spec.status) if spec.status < 500 else spec.status
    headers: list[tuple[str, str]] = [*getattr(error, "headers", ()), *extra]
    if spec.retry:
        wait = getattr(error, "retry_after", RETRY_AFTER)
        headers.append(("Retry-After", str(max(1, math.ceil(wait)))))
    payload: dict[str, object] = {
        "error": spec.error or error.code,
        "error_description": oauth_text(f"{error.code}: {error.description}"),
    }
    if isinstance(error, ProviderRefusedError):
        payload["op_error"] = error.op_error
        payload["op_status"] = error.op_status
    return json_response(status, payload, *headers)
