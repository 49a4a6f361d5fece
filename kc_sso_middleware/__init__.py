"""Real single sign-out with Keycloak for Flask, Starlette/FastAPI and Django.

One framework-free core (:mod:`kc_sso_middleware.core`) decides; thin adapters translate:
:class:`kc_sso_middleware.asgi.SSOMiddleware` and :class:`kc_sso_middleware.wsgi.SSOMiddleware`.
Configuration comes from ``KC_SSO_*`` environment variables (:class:`Settings`).
"""

from __future__ import annotations

from ._http import SignOut
from .errors import (
    ConfigurationError,
    DiscoveryError,
    KCSSOError,
    KeysThrottledError,
    LogoutTokenError,
    RequestRefusedError,
    StoreFullError,
    StoreUnavailableError,
)
from .settings import VARIABLES, Settings
from .stores import Revocation, RevocationKind, RevocationStore, SessionKeys, open_store

__version__ = "0.3.0"

__all__ = [
    "VARIABLES",
    "ConfigurationError",
    "DiscoveryError",
    "KCSSOError",
    "KeysThrottledError",
    "LogoutTokenError",
    "RequestRefusedError",
    "Revocation",
    "RevocationKind",
    "RevocationStore",
    "SessionKeys",
    "Settings",
    "SignOut",
    "StoreFullError",
    "StoreUnavailableError",
    "__version__",
    "open_store",
]
