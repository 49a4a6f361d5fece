"""Read the framework's signed session cookie: who is this, which Keycloak session, since when.

Two formats, both signed with itsdangerous:

* Flask's default cookie session: ``URLSafeTimedSerializer(secret, salt="cookie-session")``
  with HMAC key derivation and SHA-1, JSON payload (optionally zlib-compressed);
* Starlette's ``SessionMiddleware``: ``TimestampSigner(secret)`` over base64(JSON).

The app stores the raw ID token (``id_token``) and/or its claims (``user``) in the session at
login; from them we take ``sid``, ``sub`` and the login time (``auth_time``, else ``iat``).
The ID token is not verified again: it sits inside a cookie the app itself signed, and the
answer is only ever used to *reject* a session.

Verifying an HMAC and decoding JSON on every request would cost more than the rest of the
middleware, so results are cached by the exact cookie string.  That is safe: a given string
verifies the same way forever, except for the signer's max age, which is checked on each hit.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cachetools import LRUCache
from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

from .settings import Settings

__all__ = ["SessionIdentity", "SessionReader", "parse_cookie_values"]

logger = logging.getLogger("kc_sso_middleware")

Format = Literal["flask", "starlette"]
FLASK_DEFAULT_MAX_AGE = 31 * 24 * 3600
STARLETTE_DEFAULT_MAX_AGE = 14 * 24 * 3600
CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class SessionIdentity:
    """What the middleware needs from a session."""

    sid: str | None
    sub: str | None
    #: when the Keycloak session began (``auth_time``, else ``iat``): for the lifetime limit
    login_time: float | None
    id_token: str | None
    refresh_token: str | None
    #: this app session's own ID token ("sid#jti" or "sid#iat"): the key a local logout
    #: revokes.  Revoking the sid itself would also refuse a fresh SSO login into the same,
    #: still-alive Keycloak session (e.g. when the user left Keycloak's logout
    #: confirmation page), a login loop; the token instance ends only this copy.
    instance: str | None = None
    #: when this app session began (its ID token's ``iat``, else ``auth_time``): what user-
    #: and realm-wide revocations compare with, as Keycloak compares a token's iat with its
    #: not-before.  An SSO login after the revocation gets a new ID token, so it survives.
    issued_at: float | None = None


def parse_cookie_values(header: str, name: str) -> list[str]:
    """Every value the ``Cookie`` header gives ``name`` (browsers may send duplicates).

    All of them are checked: frameworks disagree on which duplicate wins, so checking only
    one would let a revoked cookie ride next to a harmless one.  This runs only when a
    Cookie header is new to the middleware (``SSOCore`` caches by the whole header).
    """
    values = []
    for part in header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            values.append(value)
    return values


def _jwt_claims(token: str) -> dict[str, Any] | None:
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return None
    return data if isinstance(data, dict) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _string(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


class SessionReader:
    """Decode session cookies into :class:`SessionIdentity`, with a verified-result cache."""

    def __init__(
        self,
        settings: Settings,
        native: Format,
        clock: Callable[[], float],
    ) -> None:
        assert settings.session_secret is not None  # Settings guarantees it
        secret = settings.session_secret
        self._settings = settings
        self._clock = clock
        self._flask = URLSafeTimedSerializer(
            secret,
            salt="cookie-session",
            signer_kwargs={"key_derivation": "hmac", "digest_method": hashlib.sha1},
        )
        self._starlette = TimestampSigner(secret)
        self._max_age: dict[Format, int] = {
            "flask": settings.session_max_age or FLASK_DEFAULT_MAX_AGE,
            "starlette": settings.session_max_age or STARLETTE_DEFAULT_MAX_AGE,
        }
        if settings.session_format == "auto":
            other: Format = "starlette" if native == "flask" else "flask"
            self._formats: tuple[Format, ...] = (native, other)
        else:
            self._formats = (settings.session_format,)
        self._cache: LRUCache[str, tuple[SessionIdentity | None, float]] = LRUCache(CACHE_SIZE)
        self._lock = threading.Lock()

    def read(self, cookie_value: str) -> SessionIdentity | None:
        """The identity in a cookie value, or None if it is not a valid Keycloak session."""
        return self.read_entry(cookie_value, self._clock())[0]

    def read_entry(self, cookie_value: str, now: float) -> tuple[SessionIdentity | None, float]:
        """The identity and until when that answer holds (the signature's max age)."""
        with self._lock:
            try:
                hit = self._cache[cookie_value]  # one LRU lookup; .get() would do two
            except KeyError:
                hit = None
        if hit is not None and now < hit[1]:
            return hit
        entry = self._decode(cookie_value, now)
        with self._lock:
            self._cache[cookie_value] = entry
        return entry

    def _decode(self, value: str, now: float) -> tuple[SessionIdentity | None, float]:
        for fmt in self._formats:
            try:
                data, signed_at = self._unsign(fmt, value)
            except SignatureExpired:
                logger.debug("session cookie expired (%s format)", fmt)
                return None, math.inf
            except (BadSignature, ValueError, UnicodeDecodeError):
                continue
            valid_until = signed_at + self._max_age[fmt]
            if not isinstance(data, Mapping):
                return None, valid_until
            return self._identity(data), valid_until
        logger.debug("session cookie does not verify in %s format", "/".join(self._formats))
        return None, math.inf

    def _unsign(self, fmt: Format, value: str) -> tuple[Any, float]:
        if fmt == "flask":
            data, stamp = self._flask.loads(
                value, max_age=self._max_age["flask"], return_timestamp=True
            )
        else:
            raw, stamp = self._starlette.unsign(
                value, max_age=self._max_age["starlette"], return_timestamp=True
            )
            data = json.loads(base64.b64decode(raw))
        return data, stamp.timestamp()

    def _identity(self, session: Mapping[str, Any]) -> SessionIdentity | None:
        settings = self._settings
        id_token = _string(session.get(settings.session_id_token_key))
        claims = _jwt_claims(id_token) if id_token else None
        if claims is None:
            stored = session.get(settings.session_claims_key)
            claims = stored if isinstance(stored, dict) else None
        if claims is None:
            return None
        sid = _string(claims.get("sid"))
        sub = _string(claims.get("sub"))
        if sid is None and sub is None:
            return None
        issued_at = _number(claims.get("iat"))
        login_time = _number(claims.get("auth_time"))
        if login_time is None:
            login_time = issued_at
        token_id = _string(claims.get("jti")) or (None if issued_at is None else f"{issued_at:.0f}")
        return SessionIdentity(
            sid=sid,
            sub=sub,
            login_time=login_time,
            id_token=id_token,
            refresh_token=_string(session.get(settings.session_refresh_token_key)),
            instance=None if token_id is None else f"{sid or sub}#{token_id}",
            issued_at=issued_at if issued_at is not None else login_time,
        )
