"""RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0) at ``KC_SSO_LOGOUT_PATH``.

A browser is logged out locally (its cookie expired, this app session revoked for every
worker, so a copied cookie is refused too) and sent to Keycloak's ``end_session_endpoint``
with ``id_token_hint``, ``post_logout_redirect_uri``, ``client_id`` and a fresh ``state``.
An API client (``Accept: application/json``, or a POST carrying ``refresh_token``) gets the
Keycloak session ended server-side with a refresh token instead.

Two protections:

* **Logout CSRF.**  A request from another origin (``Sec-Fetch-Site`` ``cross-site`` or
  ``same-site``; without fetch metadata, an ``Origin`` or ``Referer`` of another origin)
  neither clears the session nor
  sends ``id_token_hint`` (which would end the Keycloak session without asking): a browser
  gets a small page with a same-origin button that POSTs the logout, an API client a 403.
  A GET that is no top-level navigation by the user is not acted on either: a
  subresource (``Sec-Fetch-Mode: no-cors``, an ``<img src="/logout">`` in content of
  this very origin) or a prefetch or prerender (``Sec-Purpose``) gets a 403, a framed
  navigation (``Sec-Fetch-Dest`` ``iframe``, ``object``, …) the confirmation page.
  ``KC_SSO_LOGOUT_POST_ONLY`` refuses GET altogether.
* **Someone else's refresh token.**  A refresh token in the request is honoured only when
  the request is authenticated as that same Keycloak session (its verified session cookie,
  or a bearer access token with a valid signature and the same ``sid``).  Otherwise 401,
  whatever the token, so the answer never tells whether a token is valid.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import secrets
from collections.abc import Mapping
from html import escape
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from .. import events as ev
from .._effects import HttpCall
from .._flows import Flow
from .._http import NO_STORE, Request, Response, html_response, json_response
from .._logs import untrusted
from .._tokens import ACCESS_TYPES, check_header, parse_compact, strict_json
from ..errors import DiscoveryError, LogoutTokenError, RequestRefusedError, StoreUnavailableError
from ..sources.base import IdentitySource, LoginTokens, SessionIdentity
from ..stores.model import Revocation
from .answers import ProviderRefusedError, ProviderTimeoutError, answer
from .backchannel import FORM_CONTENT_TYPE
from .context import Context
from .post_logout import LogoutState
from .redirects import RedirectGuard

__all__ = ["LogoutResponder"]

logger = logging.getLogger("kc_sso_middleware")

#: "same-site" is not among them: a sibling origin (another subdomain, perhaps one serving
#: others' content) is not this app, and the Origin fallback below refuses it too.
_SAFE_FETCH_SITES = frozenset({"same-origin", "none"})


def cross_site(request: Request) -> bool:
    """Whether the browser says the request comes from another site."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site.strip().lower() not in _SAFE_FETCH_SITES
    origin = request.headers.get("origin")
    if origin is not None:
        return origin.strip().lower() != request.origin.lower()  # "null" included
    referer = request.headers.get("referer")
    if referer:
        try:
            parts = urlsplit(referer.strip())
        except ValueError:  # e.g. "http://[": no URL, so no origin of this app
            return True
        return f"{parts.scheme}://{parts.netloc}".lower() != request.origin.lower()
    return False


def speculative_or_subresource(request: Request) -> bool:
    """Whether a GET is a browser's prefetch or prerender, or a subresource load (an
    image, a script): nothing the user asked for, so nothing to act on.  A fetch() from
    this origin's own scripts (mode cors or same-origin) is the app's choice and counts."""
    purpose = request.headers.get("sec-purpose") or request.headers.get("purpose") or ""
    if "prefetch" in purpose.lower() or "prerender" in purpose.lower():
        return True
    mode = request.headers.get("sec-fetch-mode")
    return mode is not None and mode.strip().lower() == "no-cors"


def framed(request: Request) -> bool:
    """Whether the browser says the request is a navigation inside a frame or object,
    which another page of this origin could show invisibly."""
    mode = request.headers.get("sec-fetch-mode")
    dest = request.headers.get("sec-fetch-dest")
    if mode is None or dest is None or mode.strip().lower() != "navigate":
        return False
    return dest.strip().lower() != "document"


#: RP-Initiated Logout 1.0 §2 ``ui_locales``: space-separated BCP 47 tags, a few at most
_LANGUAGE_TAG = r"[A-Za-z0-9]{1,8}(?:-[A-Za-z0-9]{1,8})*"
_UI_LOCALES = re.compile(rf"{_LANGUAGE_TAG}(?: {_LANGUAGE_TAG}){{0,9}}")


def _unverified_sid(token: str) -> str | None:
    """The ``sid`` claim of a JWT, unverified (Keycloak's refresh tokens carry one)."""
    try:
        payload = token.split(".")[1]
        claims = strict_json(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return None
    sid = claims.get("sid") if isinstance(claims, dict) else None
    return sid if isinstance(sid, str) and sid else None


class LogoutResponder:
    """Serves ``KC_SSO_LOGOUT_PATH``."""

    rejected_event = ev.LOGOUT_REFUSED

    def __init__(self, context: Context, guard: RedirectGuard, state: LogoutState) -> None:
        self._context = context
        self._guard = guard
        self._state = state
        self.methods: tuple[str, ...] = (
            ("POST",) if context.settings.logout_post_only else ("GET", "POST")
        )

    def respond(self, request: Request) -> Flow[Response]:
        params = self._params(request)
        accept = request.headers.get("accept", "")
        wants_json = "application/json" in accept and "text/html" not in accept
        api = wants_json or (request.method == "POST" and "refresh_token" in params)
        if request.method == "GET" and speculative_or_subresource(request):
            raise RequestRefusedError(
                "not_a_navigation",
                "a logout by GET is acted on only as the user's navigation, never as a "
                "prefetch or a subresource (an image, a script)",
                status=403,
            )
        for refused, code, why in (
            (cross_site, "cross_site_request", "cross-site logout"),
            (framed, "framed_request", "logout inside a frame"),
        ):
            if not refused(request):
                continue
            if api:
                raise RequestRefusedError(code, f"a {why} is refused", status=403)
            self._context.events.emit(
                ev.LOGOUT_REFUSED,
                f"{why}: confirmation page instead",
                level=logging.WARNING,
                code=code,
            )
            return self._confirmation_page(request, params)
        context = self._context
        own = yield from context.session_of(request.head)
        tokens = (yield from context.tokens_of(request.head)) if own is not None else None
        expiries = self._expiries(request)
        end_session = yield from self._end_session_endpoint()
        if api:
            return (yield from self._api_logout(request, params, own, tokens, end_session))
        yield from self._forget_locally(own)
        yield from self._end_locally(request)
        target = self._guard.target(request, params.get("post_logout_redirect_uri"))
        state = secrets.token_urlsafe(16)
        headers: list[tuple[str, str]] = [NO_STORE, *expiries]
        return_to = target
        path = context.settings.post_logout_path
        if path is not None:
            # Keycloak sends the browser back here, where the state is checked, then on.
            origin = self._guard.public_origin(request)
            return_to = f"{origin}{request.root_path}{path}"
            cookie = self._state.set_cookie(
                f"{request.root_path}{path}", state, target, https=origin.startswith("https:")
            )
            headers.append(("Set-Cookie", cookie))
        query: dict[str, str] = {}
        if tokens is not None and tokens.id_token is not None:
            query["id_token_hint"] = tokens.id_token
        legacy = context.settings.legacy_redirect_uri
        query["redirect_uri" if legacy else "post_logout_redirect_uri"] = return_to
        if "client_id" not in parse_qs(urlsplit(end_session).query):
            # Kept once when the discovered endpoint carries it already.
            query["client_id"] = context.settings.client_id
        query["state"] = state
        ui_locales = params.get("ui_locales", "").strip()
        if _UI_LOCALES.fullmatch(ui_locales):
            # Keycloak shows its logout pages in them; anything else is dropped, as a
            # hint about display must never stop a logout.
            query["ui_locales"] = ui_locales
        separator = "&" if "?" in end_session else "?"
        location = f"{end_session}{separator}{urlencode(query)}"
        context.events.emit(
            ev.LOCAL_LOGOUT,
            "browser logout",
            sid_tag=context.tagger.tag(own[0].sid if own is not None else None),
            had_session=own is not None,
        )
        return Response(302, (("Location", location), *headers))

    # -- steps -------------------------------------------------------------------------

    def _params(self, request: Request) -> dict[str, str]:
        try:
            query = parse_qs(request.query_string, max_num_fields=100)
            if "refresh_token" in query:
                # A URL lands in access and proxy logs: a refresh token must travel in
                # the form body only (RFC 6749 §10.4, RFC 7009 §2.1; Keycloak reads it
                # from the form too).  Refused before anything is ended or sent.
                raise RequestRefusedError(
                    "bad_request",
                    "refresh_token belongs in the POST body "
                    "(application/x-www-form-urlencoded), never in the URL",
                )
            params = {k: v[0] for k, v in query.items()}
            content_type = request.headers.get("content-type", "")
            if (
                request.method == "POST"
                and content_type.split(";")[0].strip().lower() == FORM_CONTENT_TYPE
            ):
                form = parse_qs(request.body.decode("utf-8", "replace"), max_num_fields=100)
                params.update({k: v[0] for k, v in form.items()})
        except ValueError:  # more fields than that
            raise RequestRefusedError("bad_request", "too many parameters") from None
        return params

    def _expiries(self, request: Request) -> tuple[tuple[str, str], ...]:
        # Every source's session ends in the browser, whether or not one was found: a
        # cookie that did not verify is expired too.
        return tuple(
            ("Set-Cookie", cookie)
            for source in self._context.sources
            for cookie in source.expiry_headers(request.root_path)
        )

    def _forget_locally(self, own: tuple[SessionIdentity, IdentitySource] | None) -> Flow[None]:
        """Revoke this app session (its own token), so a copied cookie is refused too."""
        if own is None or own[0].instance is None:
            return
        # This app session only (see SessionIdentity.instance); Keycloak's back-channel
        # request revokes the whole sid once the Keycloak session really ends.
        context = self._context
        revocation = Revocation.instance(
            context.issuer,
            own[0].instance,
            expires_at=context.expires_at(),
            note=context.note("local_logout", context.settings.client_id),
        )
        try:
            yield from context.record((revocation,))
        except StoreUnavailableError as exc:
            # The browser is still logged out and Keycloak still back-channels every
            # client; only a copied old cookie stays usable until then.
            logger.error(
                "logout: could not record session %s as revoked: %s",
                context.tagger.tag(own[0].instance),
                exc,
            )

    def _end_locally(self, request: Request) -> Flow[None]:
        """End the request's session where a source keeps it (a server-side session is
        deleted from its backend), whether or not the revocation could be recorded."""
        for source in self._context.sources:
            try:
                yield from source.end(request.head)
            except Exception as exc:  # the cookie still expires; the revocation still holds
                logger.error("logout: %s source could not end the session: %s", source.name, exc)

    def _end_session_endpoint(self) -> Flow[str]:
        try:
            return (yield from self._context.provider.metadata()).end_session_endpoint
        except DiscoveryError as exc:
            logger.warning("logout: discovery failed (%s); using Keycloak's default path", exc)
            return f"{self._context.issuer}/protocol/openid-connect/logout"

    def _confirmation_page(self, request: Request, params: Mapping[str, str]) -> Response:
        action = escape(f"{request.root_path}{self._context.settings.logout_path}")
        hidden = "".join(
            f'<input type="hidden" name="{name}" value="{escape(params[name])}">'
            for name in ("post_logout_redirect_uri", "ui_locales")
            if name in params
        )
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><title>Log out?</title>"
            "</head><body><p>Do you want to log out?</p>"
            f'<form method="post" action="{action}">{hidden}'
            '<button type="submit" id="confirm-logout">Log out</button></form></body></html>'
        )
        return html_response(200, page, ("X-Frame-Options", "DENY"))

    # -- API clients ---------------------------------------------------------------------

    def _api_logout(
        self,
        request: Request,
        params: Mapping[str, str],
        own: tuple[SessionIdentity, IdentitySource] | None,
        tokens: LoginTokens | None,
        end_session: str,
    ) -> Flow[Response]:
        """End the Keycloak session server-side with a refresh token."""
        refresh_token = params.get("refresh_token")
        if refresh_token:
            yield from self._authenticate(request, refresh_token, own)
        elif tokens is not None:
            refresh_token = tokens.refresh_token
        expiries = self._expiries(request)
        yield from self._forget_locally(own)
        yield from self._end_locally(request)
        context = self._context
        if not refresh_token:
            context.events.emit(ev.API_LOGOUT, "API logout", op_ended=False)
            return json_response(
                200,
                {
                    "logged_out": True,
                    "op_session_ended": False,
                    "end_session_endpoint": end_session,
                },
                *expiries,
            )
        form = {"client_id": context.settings.client_id, "refresh_token": refresh_token}
        if context.settings.client_secret:
            form["client_secret"] = context.settings.client_secret
        try:
            result = yield from HttpCall("POST", end_session, form)
        except DiscoveryError as exc:
            error: ProviderRefusedError
            if exc.timed_out:
                # Keycloak calls every client's back-channel URL before it answers, this
                # app's too: the session may well have ended.  Never a plain failure then.
                error = ProviderTimeoutError(
                    f"Keycloak did not answer within KC_SSO_HTTP_TIMEOUT, so whether it "
                    f"ended the session is unknown (it calls each client's back-channel URL "
                    f"first; a server with one thread cannot answer its own): {exc}",
                    op_error="timeout",
                    op_status=None,
                )
            else:
                error = ProviderRefusedError(str(exc), op_error="unreachable", op_status=None)
                error.code = "op_unreachable"
            self._op_session_kept(error)
            return answer(error, *expiries)
        if result.status in (200, 204):
            context.events.emit(ev.API_LOGOUT, "API logout", op_ended=True)
            return json_response(200, {"logged_out": True, "op_session_ended": True}, *expiries)
        op_error, op_description = _op_error(result.body)
        hint = ""
        if op_error in {"unauthorized_client", "invalid_client"}:
            hint = " (is KC_SSO_CLIENT_SECRET set to the client's secret?)"
        refused = ProviderRefusedError(
            f"Keycloak answered {op_error}: {op_description}{hint}",
            op_error=op_error,
            op_status=result.status,
        )
        self._op_session_kept(refused)
        return answer(refused, *expiries)

    def _op_session_kept(self, error: ProviderRefusedError) -> None:
        """The event of an API logout that ended this app session but not (or not surely)
        Keycloak's: an outcome like the others, so logs, metrics and callbacks see it."""
        timed_out = isinstance(error, ProviderTimeoutError)
        self._context.events.emit(
            ev.API_LOGOUT,
            "API logout: Keycloak did not answer in time"
            if timed_out
            else "API logout: Keycloak did not end the session",
            level=logging.WARNING,
            op_ended=None if timed_out else False,
            code=error.code,
            # the OP's own words: bounded and escaped, never a metrics label
            op_error=untrusted(error.op_error),
        )

    def _authenticate(
        self,
        request: Request,
        refresh_token: str,
        own: tuple[SessionIdentity, IdentitySource] | None,
    ) -> Flow[None]:
        """Refuse unless the request is authenticated as the refresh token's session."""
        wanted = _unverified_sid(refresh_token)
        if own is not None and own[0].sid is not None and own[0].sid == wanted:
            return
        token = _bearer_credential(request)
        bearer = (yield from self._verified_bearer_sid(token)) if token is not None else None
        if bearer is not None and bearer == wanted:
            return
        # RFC 6750 §3.1: an error code only for a request that sent a token; one that
        # sent none gets the bare challenge.
        challenge = 'Bearer error="invalid_token"' if token is not None else "Bearer"
        raise RequestRefusedError(
            "unauthorized",
            "a refresh token is honoured only from a request authenticated as its own "
            "session (its session cookie, or a bearer access token of the same sid)",
            status=401,
            headers=(("WWW-Authenticate", challenge),),
        )

    def _verified_bearer_sid(self, token: str) -> Flow[str | None]:
        """The ``sid`` of a bearer access token whose signature, iss and exp hold."""
        context = self._context
        try:
            obj = parse_compact(token)
            header = obj.headers()
            alg = check_header(header, context.policy, kind="access")
            claims: dict[str, Any] = yield from context.verify(obj, header, alg)
        except LogoutTokenError:
            return None
        # RFC 8725 §3.12: an access token only, never the session's ID, logout or refresh
        # token: typed so (RFC 9068), or, untyped, marked so in its claims as Keycloak
        # marks its access tokens ("typ": "Bearer").
        typ = header.get("typ")
        typed = isinstance(typ, str) and typ.lower() in ACCESS_TYPES
        if "events" in claims or (not typed and claims.get("typ") != "Bearer"):
            return None
        # RFC 8725 §3.9: issued to this client (Keycloak: azp; RFC 9068: aud).
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        client_id = context.settings.client_id
        if claims.get("azp") != client_id and client_id not in audiences:
            return None
        exp = claims.get("exp")
        now = context.clock()
        if claims.get("iss") != context.issuer or not isinstance(exp, int | float):
            return None
        if isinstance(exp, bool) or exp + context.settings.clock_skew <= now:
            return None
        sid = claims.get("sid")
        return sid if isinstance(sid, str) and sid else None


def _bearer_credential(request: Request) -> str | None:
    """The token of the request's ``Authorization: Bearer`` header, if it has one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _op_error(body: bytes) -> tuple[str, str]:
    try:
        detail = strict_json(body)
        return str(detail.get("error", "unknown")), str(detail.get("error_description", ""))
    except (ValueError, AttributeError):
        return "unknown", body[:200].decode("utf-8", "replace")
