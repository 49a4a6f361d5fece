"""Real single sign-out with Keycloak for Flask and Starlette/FastAPI.

One framework-free core (:mod:`kc_sso_middleware.core`) decides; two thin adapters
translate: :class:`kc_sso_middleware.asgi.SSOMiddleware` and
:class:`kc_sso_middleware.wsgi.SSOMiddleware`.  Configuration comes from ``KC_SSO_*``
environment variables (:class:`Settings`).
"""

from __future__ import annotations

from .errors import (
    ConfigurationError,
    DiscoveryError,
    KCSSOError,
    LogoutTokenError,
    StoreUnavailableError,
)
from .settings import VARIABLES, Settings
from .stores import Revocation, RevocationKind, RevocationStore, open_store

__version__ = "0.1.0"

__all__ = [
    "VARIABLES",
    "ConfigurationError",
    "DiscoveryError",
    "KCSSOError",
    "LogoutTokenError",
    "Revocation",
    "RevocationKind",
    "RevocationStore",
    "Settings",
    "StoreUnavailableError",
    "__version__",
    "open_store",
]
