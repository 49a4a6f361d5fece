"""OIDC Front-Channel Logout 1.0, off unless ``KC_SSO_FRONTCHANNEL_PATH`` is set.

Keycloak renders a page with an iframe per client pointing here, with ``iss`` and ``sid``
(§2, §3).  Nothing authenticates such a request: any site can make a browser load it (an
``<img>`` tag).  So the endpoint ends only what the browser itself proves it holds: the
session in its own cookie, when ``iss`` and ``sid`` match it.  A request naming neither
is refused unless ``KC_SSO_FRONTCHANNEL_SESSION_REQUIRED=false`` (then it ends the browser's
own session: a logout any site can trigger with a link).  The cookie is expired, a
server-side session deleted from its backend (both even when the store fails: 503 then),
and the session revoked for every worker.  Revoking a ``sid`` that is
*not* the browser's own session is a separate opt-in (``KC_SSO_FRONTCHANNEL_REVOKE_OTHERS``):
it lets anyone who learns a session id end it, so it is rate-limited and refused once the
store holds its bound of entries.

The page may be framed only by the OP (``Content-Security-Policy: frame-ancestors``).
Keycloak turns back-channel logout off for a client whose front-channel logout is on, so
prefer back-channel: leave this off.
"""

from __future__ import annotations

import logging
import threading
import time
from urllib.parse import parse_qs, urlsplit

from .. import events as ev
from .._flows import Flow
from .._http import Request, Response
from ..errors import RequestRefusedError, StoreUnavailableError
from ..sources.base import IdentitySource
from ..stores.model import Revocation
from .context import Context

__all__ = ["FrontchannelResponder"]

logger = logging.getLogger("kc_sso_middleware")

_PAGE = b"<!doctype html><title>Logged out</title><p>Logged out.</p>"
#: revocations of other browsers' sessions allowed per second per worker (and burst)
_OTHERS_PER_SECOND = 5.0
_OTHERS_BURST = 20.0
#: the longest sid accepted (Keycloak's are 36 characters): the request is not
#: authenticated, and a sid may be kept as an entry's label until the entry expires
MAX_SID = 255
#: Front-Channel Logout 1.0 §2's RECOMMENDED directives, on refusals as on the page
_NO_CACHE = (("Cache-Control", "no-cache, no-store"), ("Pragma", "no-cache"))


class _Bucket:
    """A token bucket: ``rate`` per second, up to ``burst`` at once."""

    def __init__(self, rate: float, burst: float) -> None:
        self._rate, self._burst = rate, burst
        self._tokens, self._at = burst, time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
            self._at = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class FrontchannelResponder:
    """Serves ``KC_SSO_FRONTCHANNEL_PATH``."""

    methods = ("GET",)
    rejected_event = ev.FRONTCHANNEL_REJECTED

    def __init__(self, context: Context) -> None:
        self._context = context
        self._others = _Bucket(_OTHERS_PER_SECOND, _OTHERS_BURST)
        self._headers = (
            ("Content-Type", "text/html; charset=utf-8"),
            *_NO_CACHE,
            ("Content-Security-Policy", f"frame-ancestors {_origin(context.issuer)}"),
        )

    def respond(self, request: Request) -> Flow[Response]:
        context = self._context
        try:
            # Blank values kept: "sid=" is a sid that names nothing, not an absent one.
            params = parse_qs(request.query_string, keep_blank_values=True, max_num_fields=20)
        except ValueError:  # more fields than that
            raise RequestRefusedError(
                "bad_request", "too many query parameters", headers=_NO_CACHE
            ) from None
        if len(params.get("iss", ())) > 1 or len(params.get("sid", ())) > 1:
            # Which of two would count is a guess (as for a repeated logout_token).
            raise RequestRefusedError(
                "bad_request", "iss and sid may each be given once", headers=_NO_CACHE
            )
        iss = params.get("iss", [None])[0]
        sid = params.get("sid", [None])[0]
        if (iss is None) != (sid is None):
            raise RequestRefusedError(
                "bad_request", "iss and sid must be given together", headers=_NO_CACHE
            )
        if sid is None and context.settings.frontchannel_session_required:
            # Keycloak's iframe carries both when the client's "Front channel logout session
            # required" is on; a request naming nothing is one any page can make (a link),
            # and the browser's cookie would go with a top-level navigation.
            raise RequestRefusedError(
                "session_required",
                "iss and sid are required (KC_SSO_FRONTCHANNEL_SESSION_REQUIRED)",
                headers=_NO_CACHE,
            )
        if iss is not None and iss != context.issuer:
            raise RequestRefusedError("bad_iss", "iss is not this app's issuer", headers=_NO_CACHE)
        if sid is not None and (not sid or len(sid) > MAX_SID or not sid.isprintable()):
            raise RequestRefusedError(
                "bad_sid",
                f"sid is not a session id (printable, 1 to {MAX_SID} characters)",
                headers=_NO_CACHE,
            )
        headers: tuple[tuple[str, str], ...] = self._headers
        expires_at = context.expires_at()
        own = yield from context.session_of(request.head)
        if own is not None and (sid is None or own[0].sid == sid):
            identity, source = own
            # On the path the library set the cookie on (starsessions: the root path).
            expiries = tuple(
                ("Set-Cookie", cookie) for cookie in source.expiry_headers(request.root_path)
            )
            headers = (*headers, *expiries)
            # The session ends in this browser whatever the store answers, as on the logout
            # path: Keycloak sends a client with front-channel logout on no back-channel
            # request, so this page is the only word this app gets of the logout.
            yield from _end_locally(source, request)
            # The browser's own session, vouched for by its verified cookie: the whole
            # Keycloak session when the OP named it, else this app session.
            key = sid if sid is not None else identity.instance
            if key is not None:
                note = context.note("frontchannel")
                revocation = (
                    Revocation.session(
                        context.issuer,
                        key,
                        client_id=context.settings.client_id,
                        expires_at=expires_at,
                        note=note,
                    )
                    if sid is not None
                    else Revocation.instance(context.issuer, key, expires_at=expires_at, note=note)
                )
                yield from _record(context, revocation, expiries)
                context.events.emit(
                    ev.FRONTCHANNEL_ACCEPTED,
                    "front-channel logout of the browser's own session",
                    sid_tag=context.tagger.tag(key),
                    own=True,
                )
        elif sid is not None and context.settings.frontchannel_revoke_others:
            if not self._others.take():
                raise RequestRefusedError(
                    "rate_limited",
                    "too many front-channel revocations",
                    status=429,
                    headers=_NO_CACHE,
                )
            revocation = Revocation.session(
                context.issuer,
                sid,
                client_id=context.settings.client_id,
                expires_at=expires_at,
                note=context.note("frontchannel"),
            )
            yield from _record(context, revocation, (), authenticated=False)
            context.events.emit(
                ev.FRONTCHANNEL_ACCEPTED,
                "front-channel logout of another browser's session",
                sid_tag=context.tagger.tag(sid),
                own=False,
            )
        else:
            # No cookie at all is the usual answer after a local logout, and the only one
            # when the browser withholds the cookie from Keycloak's frame (SameSite, or
            # third-party cookies blocked): only this event can tell an operator that.
            context.events.emit(
                ev.FRONTCHANNEL_IGNORED,
                "front-channel logout of a session this browser does not hold here",
                sid_tag=context.tagger.tag(sid),
                had_session=own is not None,
            )
        return Response(200, headers, _PAGE)


def _end_locally(source: IdentitySource, request: Request) -> Flow[None]:
    """Delete the browser's server-side session from its backend (the request names it,
    so no revocation or index is needed for that)."""
    try:
        yield from source.end(request.head)
    except Exception as exc:  # the cookie still expires; the revocation still holds
        logger.error("frontchannel: %s source could not end the session: %s", source.name, exc)


def _record(
    context: Context,
    revocation: Revocation,
    expiries: tuple[tuple[str, str], ...],
    *,
    authenticated: bool = True,
) -> Flow[None]:
    """Record ``revocation``; a store failure is still a 503 (never a false success), but
    one that is not cached either and that still ends the browser's cookie."""
    try:
        yield from context.record((revocation,), authenticated=authenticated)
    except StoreUnavailableError as exc:
        # A new error: the store may hand one error to several writes it batched.
        failure = StoreUnavailableError(exc.description, code=exc.code)
        failure.headers = (*_NO_CACHE, *expiries)
        raise failure from exc
