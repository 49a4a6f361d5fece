"""Identity sources: every way an app carries a Keycloak session (see :mod:`.base`).

* :class:`SignedCookieSource` — the framework's signed cookie session (Flask, Starlette);
* :class:`FlaskSessionSource` — Flask-Session's server-side sessions (WSGI);
* :class:`~.starsessions.StarsessionsSource` — starsessions' server-side sessions (ASGI;
  imported from :mod:`.starsessions`, or from here once starsessions is installed);
* :class:`BearerSource` — ``Authorization: Bearer`` access tokens (APIs behind an SPA);
* :class:`DetectedSessionSource` — whichever of the session sources the wrapped app uses,
  found at first use (:mod:`.detect`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from ..settings import Settings
from ..stores.base import RevocationStore
from .base import Finding, IdentitySource, LoginTokens, SessionIdentity
from .bearer import BearerSource
from .cookie_views import CookieView, DjangoView, StarletteView, WerkzeugView
from .cookies import SignedCookieSource
from .detect import DetectedSessionSource, session_source
from .flask_session import FlaskSessionSource
from .serverside import ServerSideSessionSource

if TYPE_CHECKING:
    from .starsessions import StarsessionsSource

__all__ = [
    "BearerSource",
    "CookieView",
    "DetectedSessionSource",
    "DjangoView",
    "Finding",
    "FlaskSessionSource",
    "IdentitySource",
    "LoginTokens",
    "ServerSideSessionSource",
    "SessionIdentity",
    "SignedCookieSource",
    "StarletteView",
    "StarsessionsSource",
    "WerkzeugView",
    "default_sources",
    "session_source",
]


def __getattr__(name: str) -> Any:
    # starsessions is optional: its source is imported when first asked for.
    if name == "StarsessionsSource":
        from .starsessions import StarsessionsSource

        return StarsessionsSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_sources(
    settings: Settings,
    framework: Literal["flask", "starlette"],
    clock: Callable[[], float],
    *,
    app: Any = None,
    store: RevocationStore | None = None,
) -> list[IdentitySource]:
    """The sources an adapter uses unless told otherwise: the app's session, and bearer
    tokens unless ``KC_SSO_BEARER=off``.

    With ``app`` (what the adapter wraps), the session is whatever the app keeps: Flask's
    or Starlette's signed cookie, Flask-Session or starsessions, detected at first use
    (:class:`DetectedSessionSource`); ``store`` lets a server-side source judge a new login
    found under a reused session id at once.  Without ``app``, the framework's signed
    cookie.
    """
    session: IdentitySource
    if app is not None:
        session = DetectedSessionSource(settings, framework, clock, app, store=store)
    else:
        view: CookieView = WerkzeugView() if framework == "flask" else StarletteView()
        session = SignedCookieSource(settings, view, framework, clock)
    sources: list[IdentitySource] = [session]
    if settings.bearer == "check":
        sources.append(BearerSource(settings))
    return sources
