"""The framework's signed session cookie as an identity source (Flask, Starlette).

Two formats, both signed with itsdangerous, read the way the framework reads them:

* Flask's default cookie session: ``URLSafeTimedSerializer(keys, salt="cookie-session")``
  with HMAC key derivation and SHA-1, Flask's tagged JSON (optionally zlib-compressed);
* Starlette's ``SessionMiddleware``: ``TimestampSigner(keys)`` over base64(JSON).

``keys`` are ``KC_SSO_SESSION_SECRET`` and ``KC_SSO_SESSION_SECRET_FALLBACKS`` (Flask's
``SECRET_KEY_FALLBACKS``), so a rotated secret does not log everyone out.  The app stores
the raw ID token and/or its claims in the session at login; the ID token is not verified
again: it sits inside a cookie the app itself signed, and the answer is only ever used to
*refuse* a session.

What reaches the app
--------------------
Only a session cookie value the middleware itself verified and found unrevoked reaches the
app.  Which value the framework will read for the cookie name is decided by the framework's
own parser (:mod:`.cookie_views`): a quoted or escaped variant, a duplicate, or a second
Cookie header is read exactly as the framework reads it, and every value under the name
that the middleware cannot vouch for is taken out of the request and expired in the
response.  A verified cookie that holds no Keycloak login (e.g. the OAuth ``state`` an app
keeps before login) is vouched for as it is.

Cost
----
A browser sends the same cookie value request after request.  A header in the plain form
(the name once as a cookie name, ``name=value`` with a plain value) is recognised with a
few substring searches, whose answer provably matches every parser (see
:func:`~.cookie_views.plain_span`), and its verified reading is found in a cache keyed by
the value's signature tail and confirmed by comparing the whole value: no HMAC, no JSON, no
hashing of the whole header.  Only verified values are cached, and the cache is bounded in bytes, so
junk headers cost CPU and never memory that stays.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

from .._flows import Flow, done
from .._http import RequestHead, SignOut, Verdict, json_response
from .._tokens import numeric_date, strict_json
from ..settings import Settings
from ..stores.model import SessionKeys
from .base import Finding, IdentitySource, LoginTokens, SessionIdentity
from .cookie_views import CookieView, is_token, plain_span

__all__ = [
    "SignedCookieSource",
    "expired_cookie",
    "identity_from_claims",
    "identity_from_session",
    "session_tokens",
]

logger = logging.getLogger("kc_sso_middleware")

Format = Literal["flask", "starlette"]
FLASK_DEFAULT_MAX_AGE = 31 * 24 * 3600
STARLETTE_DEFAULT_MAX_AGE = 14 * 24 * 3600
#: bytes of verified readings kept per worker (values, plus a fixed cost per entry)
CACHE_BYTES = 32 * 1024 * 1024
_ENTRY_OVERHEAD = 512
#: characters of a value's end the cache is keyed by: its signature and timestamp
_TAIL = 48


def expired_cookie(settings: Settings) -> str:
    """A ``Set-Cookie`` value expiring the session cookie (same name, path and flags)."""
    parts = [
        f"{settings.session_cookie}=",
        "Expires=Thu, 01 Jan 1970 00:00:00 GMT",
        "Max-Age=0",
        f"Path={settings.session_cookie_path}",
    ]
    if settings.session_cookie_domain:
        parts.append(f"Domain={settings.session_cookie_domain}")
    if settings.session_cookie_secure:
        parts.append("Secure")
    parts.append("HttpOnly")
    parts.append(f"SameSite={settings.session_cookie_samesite.capitalize()}")
    return "; ".join(parts)


class _Verified:
    """A verified cookie value's reading (cached)."""

    __slots__ = ("finding", "size", "value")

    def __init__(self, value: str | bytes, finding: Finding) -> None:
        self.value = value
        self.size = len(value)
        self.finding = finding


class SignedCookieSource(IdentitySource):
    """Sessions in the framework's signed cookie."""

    name = "cookie"

    def __init__(
        self,
        settings: Settings,
        view: CookieView,
        native: Format,
        clock: Callable[[], float],
        *,
        expire: str | None = None,
    ) -> None:
        """``expire``: the ``Set-Cookie`` value ending the cookie as the framework sets it
        (its path, domain and flags, read from the app); by default from the
        ``KC_SSO_SESSION_COOKIE_*`` settings."""
        assert settings.session_secret is not None  # Settings guarantees it
        self._settings = settings
        self._view = view
        self._clock = clock
        self._cookie = settings.session_cookie
        self._cookie_bytes = self._cookie.encode("latin-1")
        # itsdangerous verifies with every key and signs with the last (Flask's order).
        keys = [*settings.session_secret_fallbacks, settings.session_secret]
        self._flask = URLSafeTimedSerializer(
            keys,
            salt="cookie-session",
            serializer=_flask_serializer(),
            signer_kwargs={"key_derivation": "hmac", "digest_method": hashlib.sha1},
        )
        self._starlette = TimestampSigner(keys)
        self._max_age: dict[Format, int] = {
            "flask": settings.session_max_age or FLASK_DEFAULT_MAX_AGE,
            "starlette": settings.session_max_age or STARLETTE_DEFAULT_MAX_AGE,
        }
        if settings.session_format == "auto":
            other: Format = "starlette" if native == "flask" else "flask"
            self._formats: tuple[Format, ...] = (native, other)
        else:
            self._formats = (settings.session_format,)
        if expire is None:
            expire = expired_cookie(settings)
        self._expire = (expire,)
        self._revoked_401 = json_response(
            401,
            {"error": "session_revoked", "error_description": "the session was logged out"},
            ("Set-Cookie", expire),
        )
        #: verified values by their tail; whole plain headers holding one, by their tail
        self._cache: dict[str | bytes, _Verified] = {}
        self._headers: dict[str | bytes, _Verified] = {}
        self._cache_bytes = 0
        self._lock = threading.Lock()

    # -- the request path ------------------------------------------------------------

    def find(self, head: RequestHead, now: float) -> Finding | None:
        cookies = head.cookies
        if len(cookies) != 1:
            return self._unusual(cookies, now) if cookies else None
        raw = cookies[0]
        # A browser sends the very same header request after request: one look-up by its
        # tail, confirmed by comparing the whole header, answers it.
        seen = self._headers.get(raw[-_TAIL:])
        if seen is not None and seen.value == raw and now < seen.finding.valid_until:
            return seen.finding
        name = self._cookie if type(raw) is str else self._cookie_bytes
        if raw.find(name) < 0:  # type: ignore[arg-type]  # str in str, bytes in bytes
            return None  # other cookies only (plain_span's ABSENT, without the call)
        span = plain_span(raw, name)
        if span is None:
            return self._unusual(cookies, now)
        start, end = span
        if start < 0:
            return None  # ABSENT: no session cookie at all
        hit = self._cache.get(raw[max(start, end - _TAIL) : end])
        if (
            hit is not None
            and hit.size == end - start
            and raw.startswith(hit.value, start)  # type: ignore[arg-type]
            and now < hit.finding.valid_until
        ):
            self._remember_header(raw, hit.finding)
            return hit.finding
        value = raw[start:end]
        finding = self._verify(value if isinstance(value, str) else value.decode("latin-1"), now)
        if finding is None:
            return self._strip_all(cookies)
        self._remember(value, finding)
        self._remember_header(raw, finding)
        return finding

    def _unusual(self, cookies: Sequence[str | bytes], now: float) -> Finding | None:
        """Any other header: ask the framework's parser what the app will read."""
        values = self._view.values(cookies, self._cookie)
        if not values:
            return None  # the name is there only as text the framework reads as no cookie
        chosen = self._view.chosen(cookies, self._cookie)
        # Every verified value counts: frameworks disagree on which duplicate wins, and a
        # revoked cookie must not ride next to a harmless one.
        # The value the app reads comes first: the logout and front-channel paths act on
        # the first identity as the browser's own session (Starlette keeps the last of
        # duplicates, Werkzeug the first).
        ordered = dict.fromkeys((chosen, *values) if chosen in values else values)
        readings = {value: self._verify(value, now) for value in ordered}
        identities = tuple(
            identity
            for reading in readings.values()
            if reading is not None
            for identity in reading.identities
        )
        valid_until = min(
            (reading.valid_until for reading in readings.values() if reading is not None),
            default=float("inf"),
        )
        if chosen is None or readings.get(chosen) is None or not is_token(chosen):
            strip = self._strip_all(cookies).clean
            return Finding(self, identities, valid_until=valid_until, clean=strip)
        # Duplicates, a quoted or escaped form, odd whitespace: only the verified value
        # goes on, written plainly, whatever else stood under the name.
        rewrite = Verdict(cookie=self._view.without(cookies, self._cookie, keep=chosen))
        return Finding(self, identities, valid_until=valid_until, clean=rewrite)

    def _strip_all(self, cookies: Sequence[str | bytes]) -> Finding:
        """Nothing under the name can be vouched for: take every value out, expire it."""
        logger.debug("session cookie does not verify; taking it out of the request")
        stripped = self._view.without(cookies, self._cookie)
        return Finding(self, (), clean=Verdict(cookie=stripped, set_cookies=self._expire))

    def refuse(self, finding: Finding, head: RequestHead, signed_out: SignOut) -> Verdict:
        if self._settings.revoked_action == "401":
            return Verdict(response=self._revoked_401)
        stripped = self._view.without(head.cookies, self._cookie)
        return Verdict(cookie=stripped, set_cookies=self._expire, signed_out=signed_out)

    def expiry_headers(self, root_path: str = "") -> tuple[str, ...]:
        return self._expire

    def tokens(self, head: RequestHead, now: float) -> Flow[LoginTokens | None]:
        return done(self._tokens(head))

    def _tokens(self, head: RequestHead) -> LoginTokens | None:
        chosen = self._view.chosen(head.cookies, self._cookie) if head.cookies else None
        if not chosen:
            return None
        session = self._unsign(chosen)
        if session is None:
            return None
        return session_tokens(session, self._settings)

    # -- verification ------------------------------------------------------------------

    def _verify(self, value: str, now: float) -> Finding | None:
        """A finding for a verified value; ``None`` when it cannot be vouched for."""
        for fmt in self._formats:
            try:
                data, signed_at = self._unsign_as(fmt, value)
            except SignatureExpired:
                logger.debug("session cookie expired (%s format)", fmt)
                return None
            except (BadSignature, ValueError, TypeError, UnicodeDecodeError, binascii.Error):
                continue
            valid_until = signed_at + self._max_age[fmt]
            if not isinstance(data, Mapping):
                return None
            try:
                identity = identity_from_session(data, self._settings)
            except ValueError as exc:
                logger.debug("session cookie holds a malformed Keycloak login: %s", exc)
                return None
            if identity is None:  # verified, but no Keycloak login in it (yet)
                return Finding(self, (), valid_until=valid_until)
            began = identity.auth_time
            if began is None:
                # No login time (claims without iat or auth_time): the login is at most as
                # old as the cookie's signature, which the app never renews once the
                # session is revoked, so the lifetime limit still outlasts every entry.
                began = signed_at
                identity = replace(identity, auth_time=began)
            # Past its lifetime the session must be judged again (and refused).
            valid_until = min(valid_until, began + self._settings.max_session_lifetime)
            return Finding(self, (identity,), valid_until=valid_until)
        return None

    def _unsign(self, value: str) -> Mapping[str, Any] | None:
        for fmt in self._formats:
            try:
                data, _ = self._unsign_as(fmt, value)
            except (BadSignature, ValueError, TypeError, UnicodeDecodeError, binascii.Error):
                continue
            return data if isinstance(data, Mapping) else None
        return None

    def _unsign_as(self, fmt: Format, value: str) -> tuple[Any, float]:
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

    def _remember(self, value: str | bytes, finding: Finding) -> None:
        with self._lock:
            self._make_room(len(value))
            self._cache[value[-_TAIL:]] = _Verified(value, finding)

    def _remember_header(self, raw: str | bytes, finding: Finding) -> None:
        """Cache a plain header whose one session value verified (never anything else)."""
        with self._lock:
            self._make_room(len(raw))
            self._headers[raw[-_TAIL:]] = _Verified(raw, finding)

    def _make_room(self, size: int) -> None:
        cost = size + _ENTRY_OVERHEAD
        if self._cache_bytes + cost > CACHE_BYTES:
            # Plain dicts, not LRUs: their look-ups are C-level and need no lock (the GIL
            # makes get/set atomic).  Clearing both when full keeps them bounded; live
            # browsers refill them on their next request.
            self._cache.clear()
            self._headers.clear()
            self._cache_bytes = 0
        self._cache_bytes += cost


def identity_from_session(session: Mapping[str, Any], settings: Settings) -> SessionIdentity | None:
    """The Keycloak login a session's data holds; ``None`` when it holds none (yet).

    The raw ID token under ``KC_SSO_SESSION_ID_TOKEN_KEY`` is read first (not verified
    again: the app stored it), else the claims dict under ``KC_SSO_SESSION_CLAIMS_KEY``.
    Raises ``ValueError`` for a login present but malformed.  Every session source (the
    signed cookie, server-side sessions) reads a session's data through this one function.
    """
    id_token = _string(session.get(settings.session_id_token_key))
    claims: Mapping[str, Any] | None = None
    if id_token is not None:
        claims = _jwt_claims(id_token)
        if claims is None:
            raise ValueError(f"{settings.session_id_token_key} is not a JWT")
    else:
        stored = session.get(settings.session_claims_key)
        claims = stored if isinstance(stored, Mapping) else None
    if claims is None:
        return None
    refresh = _string(session.get(settings.session_refresh_token_key))
    return identity_from_claims(claims, settings, refresh_token=refresh)


def login_of_this_app(session: Mapping[str, Any], settings: Settings) -> bool:
    """Whether the login a session's data holds may be this app's: issued by its issuer
    (``iss``) to its client (``aud`` or ``azp``), where the login says.

    Another app sharing the session backend's namespace (the same Redis and key prefix)
    shares the index keys too; its sessions must not be judged, nor deleted, as if they
    were logins of this app's client.  A login that names neither is taken to be ours.
    """
    id_token = _string(session.get(settings.session_id_token_key))
    if id_token is not None:
        claims: Mapping[str, Any] | None = _jwt_claims(id_token)
    else:
        stored = session.get(settings.session_claims_key)
        claims = stored if isinstance(stored, Mapping) else None
    if claims is None:
        return True
    issuer = claims.get("iss")
    if issuer is not None and issuer != settings.issuer:
        return False
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience
    if isinstance(audiences, list) and audiences and settings.client_id not in audiences:
        return claims.get("azp") == settings.client_id
    return True


def session_tokens(session: Mapping[str, Any], settings: Settings) -> LoginTokens:
    """The raw ID token and refresh token a session's data holds (for the logout path)."""
    return LoginTokens(
        _string(session.get(settings.session_id_token_key)),
        _string(session.get(settings.session_refresh_token_key)),
    )


def identity_from_claims(
    claims: Mapping[str, Any], settings: Settings, *, refresh_token: str | None = None
) -> SessionIdentity | None:
    """The identity an ID token's claims describe; ``None`` without ``sid`` and ``sub``.

    Raises ``ValueError`` for claims present but malformed (a NumericDate that is not a
    finite, plausible number): such a session cannot be vouched for.
    """
    sid = _string(claims.get("sid"))
    sub = _string(claims.get("sub"))
    if sid is None and sub is None:
        return None
    issued_at = _optional_date(claims, "iat")
    auth_time = _optional_date(claims, "auth_time")
    if auth_time is None:
        auth_time = issued_at
    if issued_at is None:
        issued_at = auth_time
    token_id = _string(claims.get("jti")) or (None if issued_at is None else f"{issued_at:.0f}")
    instance = None if token_id is None else f"{sid or sub}#{token_id}"
    keys = SessionKeys.of(
        settings.issuer,
        settings.client_id,
        sid=sid,
        sub=sub,
        instance=instance,
        issued_at=issued_at,
    )
    return SessionIdentity(sid, sub, auth_time, issued_at, instance, keys, refresh_token)


def _optional_date(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    return None if value is None else numeric_date(value, name)


def _jwt_claims(token: str) -> dict[str, Any] | None:
    try:
        payload = token.split(".")[1]
        data = strict_json(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return None
    return data if isinstance(data, dict) else None


def _string(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _flask_serializer() -> Any:
    """Flask's own session JSON (tagged types), or plain JSON when Flask is absent."""
    try:
        from flask.json.tag import TaggedJSONSerializer
    except ImportError:  # a Starlette app: Flask-format cookies are then plain JSON
        return json
    return TaggedJSONSerializer()
