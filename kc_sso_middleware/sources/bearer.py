"""Bearer access tokens as an identity source: APIs behind a single-page app.

A request with ``Authorization: Bearer <JWT>`` whose ``iss`` is ``KC_SSO_ISSUER`` is checked
against the same revocations as a cookie session: its ``sid``; its ``sub`` against user-wide
revocations by the token's ``iat``; this client's not-before.  A revoked one is answered
``401`` with ``WWW-Authenticate: Bearer error="invalid_token"`` (RFC 6750 §3.1).

The middleware only ever *refuses*: it never makes a token valid, so it does not verify the
signature here (the app's own validation still must, and does).  An opaque token, one of
another issuer or one that does not decode passes untouched: the app decides.  Every JWT in
the header is read, whatever scheme or separator precedes it (see :func:`jwt_payloads`).
Readings are cached by header, until the tokens' ``exp``, within a byte bound.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

from .._http import RequestHead, SignOut, Verdict, json_response
from .._tokens import numeric_date, strict_json
from ..settings import Settings
from ..stores.model import SessionKeys
from ._tails import TAIL, TailMemory
from .base import Finding, IdentitySource, SessionIdentity

__all__ = ["BearerSource"]

#: bytes of token readings kept per worker
CACHE_BYTES = 16 * 1024 * 1024
_ENTRY_OVERHEAD = 512
#: bytes each session a reading names holds beyond its sid and sub (a SessionIdentity and
#: its SessionKeys with their digests: about 400)
_SESSION_OVERHEAD = 512


#: a JWS payload wherever it stands: a run of base64url characters between two dots
_PAYLOAD = re.compile(r"(?<=\.)[A-Za-z0-9_-]+(?=\.)")


def jwt_payloads(header: str | bytes | None) -> list[str]:
    """The payload segment of every JWT an ``Authorization`` header may carry, in order.

    Whatever scheme or separator precedes a token: the app may read ``Bearer <token>``,
    ``DPoP <token>`` (RFC 9449 §7.1, which Keycloak issues), ``JWT <token>`` (a prefix
    simplejwt and flask-jwt-extended may be configured with), a bare token, a
    comma-separated list (flask-jwt-extended takes one out of ``Basic x, Bearer y``;
    Django's ASGI handler joins several headers with ","), or slice the header by hand.
    Whichever token it reads, the signature it verifies covers ``header.payload``
    exactly, so that payload stands in the header between two dots: reading each such
    run reads every token the app can accept.  The middleware only ever refuses, so
    reading more than any one app does is safe, and reading fewer is a hole.  A Basic
    credential (base64, RFC 7617) holds no dot.
    """
    if not header:
        return []
    text = header if isinstance(header, str) else header.decode("latin-1")
    return _PAYLOAD.findall(text)


def unverified_claims(token: str) -> dict[str, Any] | None:
    """A JWT's payload, not verified; ``None`` when the token is not a decodable JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    return _payload_claims(parts[1])


def _payload_claims(payload: str) -> dict[str, Any] | None:
    """A JWS payload segment as a JSON object; ``None`` when it is none."""
    try:
        claims = strict_json(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        return None
    return claims if isinstance(claims, dict) else None


class BearerSource(IdentitySource):
    """Keycloak access tokens in the ``Authorization`` header."""

    name = "bearer"
    reads = "authorization"
    authenticates = False  # the signature is not verified here

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._issuer = settings.issuer
        # The base64url of the shortest JSON naming this issuer, {"iss":"<issuer>"}: a
        # shorter payload cannot be ours, and needs no decoding (a header of many short
        # dotted runs would otherwise cost a failed decoding each).
        self._shortest_payload = -(-4 * (len(settings.issuer.encode()) + 10) // 3)
        self._refused = Verdict(
            response=json_response(
                401,
                {"error": "invalid_token", "error_description": "the session was logged out"},
                (
                    "WWW-Authenticate",
                    'Bearer error="invalid_token", error_description="the session was logged out"',
                ),
            )
        )
        self._cache: TailMemory[Finding] = TailMemory(CACHE_BYTES, _ENTRY_OVERHEAD, _held)

    def find(self, head: RequestHead, now: float) -> Finding | None:
        header = head.authorization
        if header is None:
            return None
        # Remembered by the header exactly as received (bytes under ASGI, str under WSGI;
        # see _tails): the same header always reads the same, so the header is as good a
        # key as the token.
        entry = self._cache.entries.get(header[-TAIL:])
        if entry is not None and entry[0] == header and now < entry[1].valid_until:
            return entry[1]
        findings = [f for f in map(self._read, jwt_payloads(header)) if f is not None]
        if not findings:
            return None
        if len(findings) == 1:
            finding = findings[0]
        else:  # refused if any of them is revoked
            identities = tuple(i for f in findings for i in f.identities)
            finding = Finding(self, identities, valid_until=min(f.valid_until for f in findings))
        self._cache.put(header, finding)
        return finding

    def refuse(self, finding: Finding, head: RequestHead, signed_out: SignOut) -> Verdict:
        return self._refused

    def _read(self, payload: str) -> Finding | None:
        if len(payload) < self._shortest_payload:
            return None
        claims = _payload_claims(payload)
        if claims is None or claims.get("iss") != self._issuer:
            return None  # not ours to judge: the app's validation decides
        try:
            identities = self._identities(claims)
        except ValueError:
            return None  # a malformed date: the app's validation refuses it anyway
        if not identities:
            return None
        identity = identities[0]
        exp = claims.get("exp")
        try:
            valid_until = numeric_date(exp, "exp") if exp is not None else float("inf")
        except ValueError:
            return None
        if identity.auth_time is not None:
            # Past its lifetime the session must be judged again (and refused).
            valid_until = min(valid_until, identity.auth_time + self._settings.max_session_lifetime)
        return Finding(self, identities, valid_until=valid_until)

    def _identities(self, claims: Mapping[str, Any]) -> tuple[SessionIdentity, ...]:
        """The session the token names, as this app's client knows it and, when another
        client was issued the token (``azp``), as that client knows it: a logout of this
        client's part of the session ends its requests, and a logout of the token's client
        (or its not-before) ends the token, wherever it is used."""
        sid = claims.get("sid") if isinstance(claims.get("sid"), str) else None
        sub = claims.get("sub") if isinstance(claims.get("sub"), str) else None
        if not sid and not sub:
            return ()
        issued_at = _date(claims, "iat")
        auth_time = _date(claims, "auth_time")
        azp = claims.get("azp")
        own = self._settings.client_id
        clients = (own, azp) if isinstance(azp, str) and azp and azp != own else (own,)
        return tuple(
            SessionIdentity(
                sid or None,
                sub or None,
                auth_time if auth_time is not None else issued_at,
                issued_at,
                None,
                SessionKeys.of(
                    self._issuer,
                    client_id,
                    sid=sid or None,
                    sub=sub or None,
                    instance=None,
                    issued_at=issued_at,
                ),
            )
            for client_id in clients
        )


def _held(finding: Finding) -> int:
    """Bytes a reading holds beyond its header and its entry: each session it names.  A
    header of many short tokens holds several times its own length, which counted by the
    header alone would exceed the bound as many times over."""
    return sum(_SESSION_OVERHEAD + len(i.sid or "") + len(i.sub or "") for i in finding.identities)


def _date(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    return None if value is None else numeric_date(value, name)
