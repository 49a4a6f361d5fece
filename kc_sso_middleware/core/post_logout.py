"""The browser's way back from Keycloak's logout, with its ``state`` checked (RP-Initiated
Logout 1.0 §3).

The logout path sends Keycloak a fresh ``state`` and ``post_logout_redirect_uri`` pointing
here (``KC_SSO_POST_LOGOUT_PATH``, under the app's URL, so the client's "Valid post logout
redirect URIs" of ``https://app/*`` already cover it), and remembers the state and the
browser's final target in a short-lived signed cookie.  Here the state Keycloak sends back
must match that cookie: then the browser goes on to the final target (validated when the
logout began).  A missing or different state gets a plain page saying the logout could not
be confirmed, never a redirect to anything taken from the request.
"""

from __future__ import annotations

import hmac
from html import escape
from urllib.parse import parse_qs

from itsdangerous import BadSignature, URLSafeTimedSerializer

from .. import events as ev
from .._flows import Flow, done
from .._http import NO_STORE, Request, RequestHead, Response, html_response
from ..settings import Settings
from .context import Context

__all__ = ["LogoutState", "PostLogoutResponder"]

#: how long a logout may take at Keycloak (the user may read its confirmation page)
STATE_MAX_AGE = 600
_UNCONFIRMED = (
    "<!doctype html><html><head><meta charset='utf-8'><title>Logout not confirmed</title>"
    "</head><body><h1>Logout not confirmed</h1><p id='status'>The logout could not be "
    "confirmed: the answer from the identity provider did not match the logout this browser "
    "started.  You are logged out of this app; <a href='{home}'>continue</a>.</p></body></html>"
)


class LogoutState:
    """The signed cookie holding a logout's ``state`` and final target."""

    def __init__(self, settings: Settings) -> None:
        assert settings.session_secret is not None  # Settings guarantees it
        keys = [*settings.session_secret_fallbacks, settings.session_secret]
        self._serializer = URLSafeTimedSerializer(keys, salt="kc-sso-logout-state")
        self.name = f"{settings.session_cookie}_logout_state"
        self._attributes = "; HttpOnly; SameSite=Lax" + (
            "; Secure" if settings.session_cookie_secure else ""
        )

    def set_cookie(self, path: str, state: str, target: str, *, https: bool) -> str:
        """``https``: the app's public origin is https, so the cookie is ``Secure`` even
        when ``KC_SSO_SESSION_COOKIE_SECURE`` is not set."""
        value = self._serializer.dumps([state, target])
        secure = "; Secure" if https and "; Secure" not in self._attributes else ""
        return (
            f"{self.name}={value}; Path={path}; Max-Age={STATE_MAX_AGE}{self._attributes}{secure}"
        )

    def expire_cookie(self, path: str) -> str:
        return f"{self.name}=; Path={path}; Max-Age=0{self._attributes}"

    def read(self, head: RequestHead) -> tuple[str, str] | None:
        """The (state, target) the browser's cookie holds, if it verifies and is recent."""
        for header in head.cookies:
            text = header if isinstance(header, str) else header.decode("latin-1")
            for chunk in text.split(";"):
                key, _, value = chunk.partition("=")
                if key.strip() != self.name:
                    continue
                try:
                    state, target = self._serializer.loads(value.strip(), max_age=STATE_MAX_AGE)
                except (BadSignature, ValueError, TypeError):
                    continue
                if isinstance(state, str) and isinstance(target, str):
                    return state, target
        return None


class PostLogoutResponder:
    """Serves ``KC_SSO_POST_LOGOUT_PATH``."""

    methods = ("GET",)
    rejected_event = ev.LOGOUT_RETURN

    def __init__(self, context: Context, state: LogoutState) -> None:
        self._context = context
        self._state = state
        self._path = context.settings.post_logout_path or "/"

    def respond(self, request: Request) -> Flow[Response]:
        try:
            returned = parse_qs(request.query_string, max_num_fields=20).get("state", [None])[0]
        except ValueError:  # more fields than that: no state worth comparing
            returned = None
        remembered = self._state.read(request.head)
        expire = ("Set-Cookie", self._state.expire_cookie(f"{request.root_path}{self._path}"))
        verified = (
            returned is not None
            and remembered is not None
            and hmac.compare_digest(returned.encode(), remembered[0].encode())
        )
        self._context.events.emit(
            ev.LOGOUT_RETURN,
            "back from Keycloak's logout",
            verified=verified,
            state_returned=returned is not None,
            state_remembered=remembered is not None,
        )
        if verified and remembered is not None:
            return (yield from done(Response(302, (("Location", remembered[1]), NO_STORE, expire))))
        home = f"{request.root_path}/" if request.root_path else "/"
        # root_path may be text of the request's URL (a mount with a path parameter)
        page = _UNCONFIRMED.format(home=escape(home))
        return (yield from done(html_response(400, page, expire)))
