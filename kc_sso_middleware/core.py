"""The framework-free core: it decides, the adapters translate.

:class:`SSOCore` sees a request as a small :class:`Request` value, and answers either

* for ordinary requests, a :class:`Verdict` from :meth:`SSOCore.check_session`: pass, pass
  as anonymous (cookie taken out, expiry added), or a ready :class:`Response` (401/503); or
* for the paths it serves itself (logout, back-channel, front-channel, legacy admin URL),
  a :data:`~._effects.Flow` that yields the I/O it needs and returns a :class:`Response`.

Nothing here reads a socket, a file or the clock directly (``clock`` is injected), so one
behaviour table runs through both adapters and every rule is testable without sleeping.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal
from urllib.parse import parse_qs, urlencode, urlsplit

from joserfc.jws import CompactSignature

from ._effects import Flow, HttpCall, RecordRevocations
from ._oidc import Provider
from ._sessions import SessionIdentity, SessionReader, parse_cookie_values
from ._tokens import (
    LogoutClaims,
    TokenPolicy,
    candidate_keys,
    check_admin_claims,
    check_header,
    check_logout_claims,
    parse_compact,
    verify_signature,
)
from .errors import DiscoveryError, LogoutTokenError, StoreUnavailableError
from .settings import Settings
from .stores.base import Revocation, RevocationKind, RevocationStore

__all__ = ["Request", "Response", "Route", "SSOCore", "Verdict"]

logger = logging.getLogger("kc_sso_middleware")

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
NO_STORE = ("Cache-Control", "no-store")
HEADER_CACHE_SIZE = 10_000
#: a Cookie header's sessions, until when that reading holds, and the replica version at
#: which they were last found not revoked (-1: not yet checked)
HeaderEntry = tuple[tuple[SessionIdentity, ...], float, int]
JSON_TYPE = ("Content-Type", "application/json")


class Route(Enum):
    """The paths the middleware answers itself."""

    LOGOUT = "logout"
    BACKCHANNEL = "backchannel"
    FRONTCHANNEL = "frontchannel"
    ADMIN_LOGOUT = "LOGOUT"
    ADMIN_PUSH_NOT_BEFORE = "PUSH_NOT_BEFORE"
    ADMIN_TEST_AVAILABLE = "TEST_AVAILABLE"


@dataclass(frozen=True, slots=True)
class Request:
    """What the core needs to know about a request to one of its own paths."""

    method: str
    path: str
    query_string: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    scheme: str = "http"
    root_path: str = ""

    @property
    def origin(self) -> str:
        host = self.headers.get("host", "localhost")
        return f"{self.scheme}://{host}"


@dataclass(frozen=True, slots=True)
class Response:
    """A complete answer, turned into bytes by the adapters."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What happens to an ordinary request."""

    #: pass the request on without the session cookie and expire it in the response
    anonymous: bool = False
    #: answer this instead of calling the app
    response: Response | None = None


PASS = Verdict()
ANONYMOUS = Verdict(anonymous=True)


def json_response(status: int, payload: Mapping[str, object], *extra: tuple[str, str]) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, (JSON_TYPE, NO_STORE, *extra), body)


def invalid_request(description: str, status: int = 400) -> Response:
    """Back-Channel Logout §2.8 error answer."""
    return json_response(status, {"error": "invalid_request", "error_description": description})


class SSOCore:
    """All decisions of the middleware, for one app."""

    def __init__(
        self,
        settings: Settings,
        store: RevocationStore,
        *,
        native_format: Literal["flask", "starlette"],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.provider = Provider(settings, clock)
        self.sessions = SessionReader(settings, native_format, clock)
        self.policy = TokenPolicy(
            issuer=settings.issuer,
            client_id=settings.client_id,
            algorithms=frozenset(settings.algorithms),
            clock_skew=settings.clock_skew,
            max_age=settings.logout_token_max_age,
            allow_missing_exp=settings.allow_missing_exp,
            strict_typ=settings.typ_policy == "strict",
        )
        self.cookie_name = settings.session_cookie
        self._cookie_name_bytes = self.cookie_name.encode("latin-1")
        self._sessions_by_header: dict[str | bytes, HeaderEntry] = {}
        self._fail_closed = settings.store_failure == "closed"
        self.routes: dict[str, Route] = {
            settings.logout_path: Route.LOGOUT,
            settings.backchannel_path: Route.BACKCHANNEL,
        }
        if settings.frontchannel_path is not None:
            self.routes[settings.frontchannel_path] = Route.FRONTCHANNEL
        if settings.admin_path is not None:
            base = settings.admin_path.rstrip("/")
            self.routes[f"{base}/k_logout"] = Route.ADMIN_LOGOUT
            self.routes[f"{base}/k_push_not_before"] = Route.ADMIN_PUSH_NOT_BEFORE
            self.routes[f"{base}/k_test_available"] = Route.ADMIN_TEST_AVAILABLE
        self.expire_cookie_header = ("Set-Cookie", self._expired_cookie())
        self._revoked_response = json_response(
            401,
            {"error": "session_revoked", "error_description": "the session was logged out"},
            self.expire_cookie_header,
        )
        self._unavailable_response = json_response(
            503,
            {
                "error": "temporarily_unavailable",
                "error_description": "the revocation store cannot be reached",
            },
            ("Retry-After", "5"),
        )

    def _expired_cookie(self) -> str:
        s = self.settings
        parts = [
            f"{s.session_cookie}=",
            "Expires=Thu, 01 Jan 1970 00:00:00 GMT",
            "Max-Age=0",
            f"Path={s.session_cookie_path}",
        ]
        if s.session_cookie_domain:
            parts.append(f"Domain={s.session_cookie_domain}")
        if s.session_cookie_secure:
            parts.append("Secure")
        parts.append("HttpOnly")
        parts.append(f"SameSite={s.session_cookie_samesite.capitalize()}")
        return "; ".join(parts)

    # ------------------------------------------------------------------ ordinary requests

    def check_session(self, cookie_header: str | bytes | None) -> Verdict:
        """Decide an ordinary request from its ``Cookie`` header; memory only, no I/O.

        ``cookie_header`` is text (WSGI) or the raw latin-1 bytes (ASGI, decoded only when
        the header was not seen before).
        """
        if not cookie_header:
            return PASS
        if isinstance(cookie_header, str):
            if self.cookie_name not in cookie_header:
                return PASS
        elif self._cookie_name_bytes not in cookie_header:
            return PASS
        now = self.clock()
        # A browser sends the same Cookie header request after request, so the parsed,
        # verified sessions are remembered by the whole header: a hit costs one hash and
        # one dict look-up instead of parsing the header and hashing each cookie again.
        cache = self._sessions_by_header
        cached = cache.get(cookie_header)
        if cached is None or now >= cached[1]:
            cached = self._read_header(cookie_header, now)
        identities, valid_until, checked_at_version = cached
        if not identities:
            return PASS
        # Read the version before checking: "not revoked at version V" holds until the
        # replica's next write, so an unchanged replica needs no look-up at all.
        version = self.store.replica.version
        if checked_at_version != version:
            for identity in identities:
                if self._is_revoked(identity, now):
                    if self.settings.revoked_action == "401":
                        return Verdict(response=self._revoked_response)
                    return ANONYMOUS
            cache[cookie_header] = (identities, valid_until, version)
        if self._fail_closed and not self.store.status().available:
            return Verdict(response=self._unavailable_response)
        return PASS

    def _read_header(self, cookie_header: str | bytes, now: float) -> HeaderEntry:
        text = cookie_header if isinstance(cookie_header, str) else cookie_header.decode("latin-1")
        identities = []
        valid_until = math.inf
        lifetime = self.settings.max_session_lifetime
        for value in parse_cookie_values(text, self.cookie_name):
            identity, until = self.sessions.read_entry(value, now)
            valid_until = min(valid_until, until)
            if identity is not None:
                identities.append(identity)
                if identity.login_time is not None:
                    # Past its lifetime the session must be judged again (and refused).
                    valid_until = min(valid_until, identity.login_time + lifetime)
        entry: HeaderEntry = (tuple(identities), valid_until, -1)
        cache = self._sessions_by_header
        if len(cache) >= HEADER_CACHE_SIZE:
            # A plain dict, not an LRU: its look-up is C-level and needs no lock (the GIL
            # makes get/set atomic).  Clearing when full keeps it bounded; live browsers
            # refill it on their next request.
            cache.clear()
        cache[cookie_header] = entry
        return entry

    def _is_revoked(self, identity: SessionIdentity, now: float) -> bool:
        login_time = identity.login_time
        if login_time is not None and login_time + self.settings.max_session_lifetime < now:
            logger.debug("session %s is older than KC_SSO_MAX_SESSION_LIFETIME", identity.sid)
            return True
        # ``instance`` is this app session's own token, revoked by a local logout.
        return self.store.is_revoked(
            identity.sid, identity.sub, identity.issued_at, identity.instance
        )

    def strip_cookie(self, cookie_header: str) -> str:
        """The ``Cookie`` header without the session cookie (other cookies kept)."""
        kept = [
            part.strip()
            for part in cookie_header.split(";")
            if part.partition("=")[0].strip() != self.cookie_name and part.strip()
        ]
        return "; ".join(kept)

    def sets_session_cookie(self, set_cookie_value: str) -> bool:
        """Whether the app's own response already (re)sets the session cookie."""
        return set_cookie_value.partition("=")[0].strip() == self.cookie_name

    # ------------------------------------------------------------------ own paths

    def body_too_large(self, content_length: str | None) -> Response | None:
        """413 before reading, when the declared length is over the bound."""
        if content_length is None:
            return None
        try:
            length = int(content_length)
        except ValueError:
            return invalid_request("Content-Length is not a number")
        if length > self.settings.backchannel_max_body:
            return self._too_large()
        return None

    def _too_large(self) -> Response:
        return invalid_request(
            f"body exceeds {self.settings.backchannel_max_body} bytes", status=413
        )

    def handle(self, route: Route, request: Request) -> Flow[Response]:
        """The flow answering one of the middleware's own paths."""
        if len(request.body) > self.settings.backchannel_max_body:
            return self._too_large()
        if route is Route.LOGOUT:
            return (yield from self._logout(request))
        if route is Route.BACKCHANNEL:
            return (yield from self._backchannel(request))
        if route is Route.FRONTCHANNEL:
            return (yield from self._frontchannel(request))
        return (yield from self._admin(route, request))

    # ------------------------------------------------------------------ logout path

    def _session_of(self, request: Request) -> SessionIdentity | None:
        for value in parse_cookie_values(request.headers.get("cookie", ""), self.cookie_name):
            identity = self.sessions.read(value)
            if identity is not None:
                return identity
        return None

    def _params(self, request: Request) -> dict[str, str]:
        params = {k: v[0] for k, v in parse_qs(request.query_string).items()}
        content_type = request.headers.get("content-type", "")
        if request.method == "POST" and content_type.split(";")[0].strip() == FORM_CONTENT_TYPE:
            form = parse_qs(request.body.decode("utf-8", "replace"), max_num_fields=100)
            params.update({k: v[0] for k, v in form.items()})
        return params

    def _logout(self, request: Request) -> Flow[Response]:
        if request.method not in ("GET", "POST"):
            return Response(405, (("Allow", "GET, POST"), NO_STORE))
        identity = self._session_of(request)
        params = self._params(request)
        if identity is not None and identity.instance is not None:
            # This app session only (see SessionIdentity.instance); Keycloak's back-channel
            # request then revokes the whole sid once the Keycloak session really ends.
            revocation = Revocation(
                RevocationKind.SESSION,
                identity.instance,
                0.0,
                self.clock() + self.settings.max_session_lifetime,
            )
            try:
                yield RecordRevocations((revocation,))
            except StoreUnavailableError as exc:
                # The browser is still logged out and Keycloak still back-channels every
                # client; only a copied old cookie stays usable until then.
                logger.error("logout: could not record %s as revoked: %s", identity.instance, exc)
        try:
            end_session = (yield from self.provider.metadata()).end_session_endpoint
        except DiscoveryError as exc:
            logger.warning("logout: discovery failed (%s); using Keycloak's default path", exc)
            end_session = f"{self.settings.issuer}/protocol/openid-connect/logout"

        accept = request.headers.get("accept", "")
        wants_json = "application/json" in accept and "text/html" not in accept
        if wants_json or (request.method == "POST" and "refresh_token" in params):
            return (yield from self._api_logout(identity, params, end_session))

        target = self._post_logout_target(request, params.get("post_logout_redirect_uri"))
        query: dict[str, str] = {}
        if identity is not None and identity.id_token is not None:
            query["id_token_hint"] = identity.id_token
        query[
            "redirect_uri" if self.settings.legacy_redirect_uri else "post_logout_redirect_uri"
        ] = target
        query["client_id"] = self.settings.client_id
        query["state"] = secrets.token_urlsafe(16)
        separator = "&" if "?" in end_session else "?"
        location = f"{end_session}{separator}{urlencode(query)}"
        return Response(302, (("Location", location), NO_STORE, self.expire_cookie_header))

    def _api_logout(
        self,
        identity: SessionIdentity | None,
        params: Mapping[str, str],
        end_session: str,
    ) -> Flow[Response]:
        """Logout for API clients: end the Keycloak session server-side with a refresh token."""
        refresh_token = params.get("refresh_token") or (identity and identity.refresh_token)
        if not refresh_token:
            return json_response(
                200,
                {
                    "logged_out": True,
                    "op_session_ended": False,
                    "end_session_endpoint": end_session,
                },
                self.expire_cookie_header,
            )
        form = {"client_id": self.settings.client_id, "refresh_token": refresh_token}
        if self.settings.client_secret:
            form["client_secret"] = self.settings.client_secret
        try:
            result = yield HttpCall("POST", end_session, form)
        except DiscoveryError as exc:
            return json_response(502, {"error": "op_unreachable", "error_description": str(exc)})
        if result.status in (200, 204):
            return json_response(
                200, {"logged_out": True, "op_session_ended": True}, self.expire_cookie_header
            )
        try:
            detail = result.json()
            op_error = str(detail.get("error", "unknown"))
            op_description = str(detail.get("error_description", ""))
        except (ValueError, AttributeError):
            op_error, op_description = "unknown", result.body[:200].decode("utf-8", "replace")
        logger.warning(
            "logout: Keycloak refused the server-side logout: %s %s", op_error, op_description
        )
        hint = ""
        if op_error in {"unauthorized_client", "invalid_client"}:
            hint = " (is KC_SSO_CLIENT_SECRET set to the client's secret?)"
        return json_response(
            502,
            {
                "error": "op_logout_failed",
                "op_error": op_error,
                "op_status": result.status,
                "error_description": f"Keycloak answered {op_error}: {op_description}{hint}",
            },
            self.expire_cookie_header,
        )

    def _post_logout_target(self, request: Request, requested: str | None) -> str:
        default = self.settings.post_logout_redirect_uri or f"{request.origin}{request.root_path}/"
        if not requested:
            return default
        if self._redirect_allowed(requested, request.origin):
            return requested if "://" in requested else f"{request.origin}{requested}"
        logger.warning("logout: ignoring post_logout_redirect_uri %r (not allowed)", requested)
        return default

    def _redirect_allowed(self, target: str, origin: str) -> bool:
        if "\\" in target or any(ord(ch) < 0x21 for ch in target):
            return False
        if target.startswith("/") and not target.startswith("//"):
            return True  # a path on this origin
        parts = urlsplit(target)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False
        if f"{parts.scheme}://{parts.netloc}".lower() == origin.lower():
            return True
        for allowed in self.settings.logout_redirect_allowlist:
            allowed_parts = urlsplit(allowed)
            if (parts.scheme, parts.netloc.lower()) != (
                allowed_parts.scheme,
                allowed_parts.netloc.lower(),
            ):
                continue
            prefix = allowed_parts.path
            if (
                not prefix
                or prefix == "/"
                or parts.path == prefix
                or parts.path.startswith(prefix.rstrip("/") + "/")
            ):
                return True
        return False

    # ------------------------------------------------------------------ back-channel

    def _backchannel(self, request: Request) -> Flow[Response]:
        if request.method != "POST":
            return Response(405, (("Allow", "POST"), NO_STORE))
        try:
            content_type = request.headers.get("content-type", "")
            if content_type.split(";")[0].strip().lower() != FORM_CONTENT_TYPE:
                raise LogoutTokenError(
                    "bad_content_type", f"Content-Type must be {FORM_CONTENT_TYPE}"
                )
            try:
                form = parse_qs(
                    request.body.decode("utf-8"), max_num_fields=100, strict_parsing=False
                )
            except (UnicodeDecodeError, ValueError):
                raise LogoutTokenError("bad_body", "body is not a valid form") from None
            tokens = form.get("logout_token", [])
            if len(tokens) != 1 or not tokens[0]:
                raise LogoutTokenError(
                    "missing_logout_token", "exactly one logout_token form field is required"
                )
            claims = yield from self._validate_logout_token(tokens[0])
        except LogoutTokenError as exc:
            logger.warning("back-channel logout rejected: %s", exc)
            return invalid_request(f"{exc.code}: {exc.description}")
        except DiscoveryError as exc:
            logger.error("back-channel logout: cannot get the OP's keys: %s", exc)
            return json_response(
                503, {"error": "temporarily_unavailable", "error_description": str(exc)}
            )

        expires_at = self.clock() + self.settings.max_session_lifetime
        if claims.sid is not None:
            revocation = Revocation(RevocationKind.SESSION, claims.sid, 0.0, expires_at)
        else:
            assert claims.sub is not None
            # Every session of the user established up to the token's second (NumericDates
            # are whole seconds, so a session from that very second counts as earlier).
            not_before = math.floor(claims.iat) + 1
            revocation = Revocation(RevocationKind.USER, claims.sub, not_before, expires_at)
        return (
            yield from self._record(
                (revocation,),
                self._replay_key("bcl", claims.jti),
                claims.expires_at,
                "back-channel logout",
            )
        )

    def _validate_logout_token(self, token: str) -> Flow[LogoutClaims]:
        obj = parse_compact(token)
        header = obj.headers()
        alg = check_header(header, self.policy)
        payload = yield from self._verify(obj, header, alg)
        return check_logout_claims(payload, self.policy, self.clock())

    def _verify(
        self, obj: CompactSignature, header: Mapping[str, object], alg: str
    ) -> Flow[dict[str, object]]:
        keys = yield from self.provider.keys()
        candidates = candidate_keys(keys, header, alg)
        if not candidates and header.get("kid") is not None:
            keys = yield from self.provider.keys(unknown_kid=True)
            candidates = candidate_keys(keys, header, alg)
        if not candidates:
            raise LogoutTokenError(
                "unknown_kid", f"no {alg} key with kid {header.get('kid')!r} in the OP's JWKS"
            )
        return verify_signature(obj, candidates, alg)

    def _replay_key(self, kind: str, token_id: str) -> str:
        # jti is unique per issuer; the client id keeps apps that share one store from
        # refusing each other's copy of a multi-audience token as a replay.
        return f"{kind}:{self.settings.client_id}:{self.settings.issuer}:{token_id}"

    def _record(
        self,
        revocations: tuple[Revocation, ...],
        jti: str,
        jti_expires_at: float,
        what: str,
    ) -> Flow[Response]:
        try:
            first = yield RecordRevocations(revocations, jti, jti_expires_at)
        except StoreUnavailableError as exc:
            logger.error("%s could not be stored durably: %s", what, exc)
            return json_response(
                503,
                {"error": "temporarily_unavailable", "error_description": "revocation not stored"},
                ("Retry-After", "5"),
            )
        if not first:
            logger.warning("%s rejected: jti %s was seen before", what, jti)
            return invalid_request("replayed_jti: this logout token was already received")
        logger.info(
            "%s: revoked %s", what, ", ".join(f"{r.kind.value}={r.key}" for r in revocations)
        )
        return Response(200, (NO_STORE,))

    # ------------------------------------------------------------------ front-channel

    def _frontchannel(self, request: Request) -> Flow[Response]:
        """OIDC Front-Channel Logout 1.0 §2: ``iss`` and ``sid`` come together or not at all."""
        if request.method != "GET":
            return Response(405, (("Allow", "GET"), NO_STORE))
        params = parse_qs(request.query_string)
        iss = params.get("iss", [None])[0]
        sid = params.get("sid", [None])[0]
        if (iss is None) != (sid is None):
            return invalid_request("iss and sid must be given together")
        if iss is not None and iss != self.settings.issuer:
            return invalid_request(f"iss {iss!r} is not {self.settings.issuer!r}")
        identity = self._session_of(request)
        target_sid = sid or (identity.sid if identity else None)
        headers: list[tuple[str, str]] = [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Cache-Control", "no-cache, no-store"),
            ("Pragma", "no-cache"),
        ]
        if identity is not None and (sid is None or identity.sid == sid):
            headers.append(self.expire_cookie_header)
        if target_sid is not None:
            revocation = Revocation(
                RevocationKind.SESSION,
                target_sid,
                0.0,
                self.clock() + self.settings.max_session_lifetime,
            )
            try:
                yield RecordRevocations((revocation,))
            except StoreUnavailableError as exc:
                logger.error("front-channel logout could not be stored durably: %s", exc)
                return Response(503, (NO_STORE, ("Retry-After", "5")))
            logger.info("front-channel logout: revoked sid=%s", target_sid)
        body = b"<!doctype html><title>Logged out</title><p>Logged out.</p>"
        return Response(200, tuple(headers), body)

    # ------------------------------------------------------------------ legacy admin URL

    def _admin(self, route: Route, request: Request) -> Flow[Response]:
        """Keycloak's admin-URL protocol: a bare JWS body, as old Keycloak adapters accepted."""
        if request.method != "POST":
            return Response(405, (("Allow", "POST"), NO_STORE))
        try:
            obj = parse_compact(request.body.decode("ascii", "replace").strip())
            header = obj.headers()
            alg = check_header(header, self.policy, admin=True)
            try:
                payload = yield from self._verify(obj, header, alg)
            except LogoutTokenError as exc:
                if exc.code in {"bad_signature", "unknown_kid"}:
                    exc.status = 403  # what the old adapters answered
                raise
            action = check_admin_claims(
                payload,
                self.settings.client_id,
                route.value,
                self.clock(),
                self.settings.clock_skew,
            )
        except LogoutTokenError as exc:
            logger.warning("admin %s rejected: %s", route.value, exc)
            return invalid_request(f"{exc.code}: {exc.description}", status=exc.status)
        except DiscoveryError as exc:
            logger.error("admin %s: cannot get the OP's keys: %s", route.value, exc)
            return json_response(
                503, {"error": "temporarily_unavailable", "error_description": str(exc)}
            )

        if route is Route.ADMIN_TEST_AVAILABLE:
            return Response(200, (NO_STORE,))
        now = self.clock()
        expires_at = now + self.settings.max_session_lifetime
        revocations: tuple[Revocation, ...]
        if route is Route.ADMIN_LOGOUT and action.session_ids:
            revocations = tuple(
                Revocation(RevocationKind.SESSION, sid, 0.0, expires_at)
                for sid in action.session_ids
            )
        else:
            # LOGOUT without session ids means "log out everybody" (what old adapters did);
            # PUSH_NOT_BEFORE moves the not-before time.
            not_before = action.not_before
            if route is Route.ADMIN_LOGOUT:
                not_before = max(not_before, now)
            if not_before <= 0:
                return Response(200, (NO_STORE,))
            revocations = (Revocation(RevocationKind.ALL, "", not_before, expires_at),)
        return (
            yield from self._record(
                revocations,
                self._replay_key("admin", action.id),
                action.expiration + self.settings.clock_skew,
                f"admin {route.value}",
            )
        )
