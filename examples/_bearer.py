"""The examples' ``GET /api/me``: the app's own validation of a bearer access token.

The single sign-out middleware only ever *refuses* a token (a revoked session's gets 401
``invalid_token`` before the app runs); accepting one is the app's job, and this is it:

* the signature, with a key of the OP's JWKS (its ``jwks_uri`` from the issuer's
  discovery document unless given), the algorithm on an allow-list (RS256 by default;
  never ``none`` or HMAC);
* ``iss`` exactly the issuer, ``exp`` present and in the future (60 s leeway), ``nbf`` and
  ``iat`` not in the future;
* an *access* token: typed ``at+jwt`` (RFC 9068) or carrying Keycloak's ``"typ": "Bearer"``
  claim, so that an ID token or a refresh token of the same realm is refused (RFC 8725
  §3.11, token confusion);
* with ``audiences``, ``aud`` or ``azp`` naming one of them (RFC 9068 §4).  The demo's apps
  accept each other's tokens (one realm, the same users), so they pass none; an API of
  your own should name its client id (with an audience mapper in Keycloak).

The keys are cached for an hour; a token naming an unknown ``kid`` refetches them at most once per
10 seconds (a key rotation works at once, a flood of made-up ``kid`` values does not
become a flood of requests to the OP).  Framework-free and blocking: each example turns
:meth:`BearerValidator.answer` into its own response (an async app calls it in a thread).
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeyParameters, KeySet

__all__ = ["Answer", "BearerValidator", "InvalidToken"]

_REFETCH_INTERVAL = 10.0
_KEYS_TTL = 3600.0


class InvalidToken(Exception):
    """The token is not acceptable; the message says why (sent as error_description)."""


class KeysUnavailable(Exception):
    """The OP's keys could not be fetched."""


@dataclass(frozen=True)
class Answer:
    """What ``/api/me`` answers: status, JSON body, extra headers."""

    status: int
    body: Mapping[str, Any]
    headers: tuple[tuple[str, str], ...] = field(default=())


def _challenge(error: str | None = None, description: str | None = None) -> tuple[str, str]:
    """``WWW-Authenticate`` of RFC 6750 §3 (no error code when no token was sent)."""
    if error is None:
        return ("WWW-Authenticate", "Bearer")
    text = (description or "").replace("\\", "").replace('"', "'")
    return ("WWW-Authenticate", f'Bearer error="{error}", error_description="{text}"')


class BearerValidator:
    """Validates Keycloak access tokens of one issuer."""

    def __init__(
        self,
        issuer: str,
        *,
        jwks_uri: str | None = None,
        algorithms: Collection[str] = ("RS256",),
        audiences: Collection[str] | None = None,
        leeway: int = 60,
        timeout: float = 5.0,
        verify: ssl.SSLContext | bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self._jwks_uri = jwks_uri
        self._algorithms = [a for a in algorithms if a != "none" and not a.startswith("HS")]
        self._audiences = frozenset(audiences) if audiences is not None else None
        self._leeway = leeway
        self._http = httpx.Client(timeout=timeout, verify=verify)
        self._clock = clock
        self._keys: KeySet | None = None
        self._fetched_at = -float("inf")
        self._lock = threading.Lock()

    def answer(self, authorization: str | None) -> Answer:
        """The answer for a request's ``Authorization`` header."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            body = {"error": "unauthorized", "error_description": "a bearer token is required"}
            return Answer(401, body, (_challenge(),))
        try:
            claims = self.claims(token.strip())
        except InvalidToken as exc:
            body = {"error": "invalid_token", "error_description": str(exc)}
            return Answer(401, body, (_challenge("invalid_token", str(exc)),))
        except KeysUnavailable as exc:
            body = {"error": "temporarily_unavailable", "error_description": str(exc)}
            return Answer(503, body, (("Retry-After", "5"),))
        return Answer(200, claims)

    def claims(self, token: str) -> dict[str, Any]:
        """The claims of a valid token; :class:`InvalidToken` saying why it is not."""
        try:
            decoded = jwt.decode(token, self._key_for, algorithms=self._algorithms)
        except KeysUnavailable:
            raise
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise InvalidToken(f"{type(exc).__name__}: {exc}") from None
        claims = dict(decoded.claims)
        registry = jwt.JWTClaimsRegistry(
            now=int(self._clock()),
            leeway=self._leeway,
            iss={"essential": True, "value": self.issuer},
            exp={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise InvalidToken(f"{exc.error}: {exc.description}") from None
        typ = str(decoded.header.get("typ", "")).lower()
        if typ not in ("at+jwt", "application/at+jwt") and claims.get("typ") != "Bearer":
            raise InvalidToken("not an access token (an ID or a refresh token?)")
        if self._audiences is not None:
            aud = claims.get("aud")
            named = {aud} if isinstance(aud, str) else set(aud if isinstance(aud, list) else ())
            named.add(claims.get("azp"))
            if not named & self._audiences:
                raise InvalidToken("the token is not meant for this API (aud, azp)")
        return claims

    # -- keys ----------------------------------------------------------------------

    def _key_for(self, obj: Any) -> Any:
        """The key the token's header names (joserfc calls this with the parsed token)."""
        header = obj.headers()
        kid = header.get("kid")
        wanted: KeyParameters = {"alg": str(header.get("alg")), "use": "sig"}
        keys = self._keys
        if keys is None or time.monotonic() - self._fetched_at > _KEYS_TTL:
            keys = self._refresh(keys, throttle=False)
        try:
            return keys.get_by_kid(kid, wanted)
        except JoseError:
            pass
        refreshed = self._refresh(keys, throttle=True)  # a key published since the last fetch
        if refreshed is keys:
            raise InvalidToken(f"no key with kid {kid!r} in the OP's JWKS")
        return refreshed.get_by_kid(kid, wanted)

    def _refresh(self, seen: KeySet | None, *, throttle: bool) -> KeySet:
        """Fetch the keys again, unless another thread just did (or the throttle holds)."""
        with self._lock:
            now = time.monotonic()
            current = self._keys
            if current is not None and (
                current is not seen or (throttle and now - self._fetched_at < _REFETCH_INTERVAL)
            ):
                return current
            self._fetched_at = now  # failed fetches count for the throttle too
            try:
                uri = self._jwks_uri or self._discover()
                response = self._http.get(uri)
                response.raise_for_status()
                keys: KeySet = KeySet.import_key_set(response.json())
            except (httpx.HTTPError, ValueError, KeyError, JoseError) as exc:
                if current is not None:
                    return current
                raise KeysUnavailable(f"the OP's keys could not be fetched: {exc}") from None
            self._keys = keys
            return keys

    def _discover(self) -> str:
        response = self._http.get(f"{self.issuer}/.well-known/openid-configuration")
        response.raise_for_status()
        uri = response.json()["jwks_uri"]
        if not isinstance(uri, str):
            raise ValueError("jwks_uri is not a string")
        self._jwks_uri = uri
        return uri

    def close(self) -> None:
        self._http.close()
