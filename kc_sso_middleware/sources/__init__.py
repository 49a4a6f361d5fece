"""Identity sources: every way an app carries a Keycloak session (see :mod:`.base`).

* :class:`SignedCookieSource` — the framework's signed cookie session (Flask, Starlette);
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from ..settings import Settings
from .base import Finding, IdentitySource, LoginTokens, SessionIdentity
from .cookie_views import CookieView, DjangoView, StarletteView, WerkzeugView
from .cookies import SignedCookieSource

__all__ = [
    "CookieView",
    "DjangoView",
    "Finding",
    "IdentitySource",
    "LoginTokens",
    "SessionIdentity",
    "SignedCookieSource",
    "StarletteView",
    "WerkzeugView",
    "default_sources",
]


def default_sources(
    settings: Settings, framework: Literal["flask", "starlette"], clock: Callable[[], float]
) -> list[IdentitySource]:
    """The sources an adapter uses unless told otherwise: the framework's cookie session."""
    view: CookieView = WerkzeugView() if framework == "flask" else StarletteView()
    return [SignedCookieSource(settings, view, framework, clock)]
