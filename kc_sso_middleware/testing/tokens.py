"""Tokens and cookies for tests: logout tokens shaped like Keycloak's, signed sessions.

* :func:`mint_jwt` signs any claims as a compact JWS with a given header;
* :func:`mint_logout_token` signs a back-channel logout token shaped like Keycloak's, with
  any header or claim overridden or dropped, to test acceptance and every rejection rule;
* :func:`make_session_cookie` signs a session the way Flask or Starlette would.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from joserfc import jws
from joserfc.jwk import Key, RSAKey

from .._tokens import BACKCHANNEL_EVENT

__all__ = ["BACKCHANNEL_EVENT", "make_session_cookie", "mint_jwt", "mint_logout_token"]


def mint_jwt(
    key: Key,
    claims: Mapping[str, Any],
    header: Mapping[str, Any] | None = None,
) -> str:
    """Sign ``claims`` as a compact JWS; ``header`` is taken as given (``alg`` defaults RS256)."""
    full_header = {"alg": "RS256", "kid": key.kid, **(header or {})}
    full_header = {k: v for k, v in full_header.items() if v is not None}
    return jws.serialize_compact(
        full_header,
        json.dumps(dict(claims), separators=(",", ":")).encode(),
        key,
        algorithms=[full_header["alg"]],
    )


def mint_logout_token(
    key: RSAKey,
    *,
    issuer: str,
    audience: str | list[str],
    sub: str | None = "user-1",
    sid: str | None = "session-1",
    now: float | None = None,
    header: Mapping[str, Any] | None = None,
    drop: Iterable[str] = (),
    **claims: Any,
) -> str:
    """A logout token like Keycloak 25+ sends, with claims overridden or dropped.

    ``header`` overrides JOSE header members (``typ`` defaults to ``logout+jwt``); ``drop``
    names claims or header members to leave out (e.g. ``drop=["exp", "typ"]``).
    """
    issued = int(now if now is not None else time.time())
    payload: dict[str, Any] = {
        "iat": issued,
        "exp": issued + 120,
        "jti": str(uuid.uuid4()),
        "iss": issuer,
        "aud": audience,
        "sub": sub,
        "typ": "Logout",
        "sid": sid,
        "events": {BACKCHANNEL_EVENT: {}},
    }
    payload.update(claims)
    full_header: dict[str, Any] = {"alg": "RS256", "typ": "logout+jwt", "kid": key.kid}
    full_header.update(header or {})
    for name in drop:
        payload.pop(name, None)
        if name in full_header:
            full_header[name] = None  # mint_jwt leaves out None members (kid too)
    payload = {k: v for k, v in payload.items() if v is not None}
    return mint_jwt(key, payload, full_header)


class _FixedTimeSigner(TimestampSigner):
    stamp: int = 0

    def get_timestamp(self) -> int:
        return self.stamp or super().get_timestamp()


def make_session_cookie(
    secret: str,
    session: Mapping[str, Any],
    *,
    format: Literal["flask", "starlette"] = "flask",
    timestamp: int | None = None,
) -> str:
    """A session cookie value, signed as Flask's cookie session or Starlette's would sign it."""
    signer = type("Signer", (_FixedTimeSigner,), {"stamp": timestamp or 0})
    if format == "flask":
        serializer = URLSafeTimedSerializer(
            secret,
            salt="cookie-session",
            signer=signer,
            signer_kwargs={"key_derivation": "hmac", "digest_method": hashlib.sha1},
        )
        return str(serializer.dumps(dict(session)))
    data = base64.b64encode(json.dumps(dict(session)).encode())
    signed: bytes = signer(secret).sign(data)
    return signed.decode()
