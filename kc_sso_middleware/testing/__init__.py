"""Helpers for your own tests: mint logout tokens and session cookies, run a stand-in OP.

* :func:`mint_logout_token` signs a back-channel logout token shaped like Keycloak's, with
  any header or claim overridden or dropped, to test acceptance and every rejection rule.
* :func:`make_session_cookie` signs a session the way Flask or Starlette would.
* :class:`StandInOP` (:mod:`.op`) is a small OpenID Provider on a loopback port for fast
  tests.  It is **not** Keycloak: end-to-end tests belong against the real one.
"""

from __future__ import annotations

from .op import Delivery, StandInOP
from .tokens import BACKCHANNEL_EVENT, make_session_cookie, mint_jwt, mint_logout_token

__all__ = [
    "BACKCHANNEL_EVENT",
    "Delivery",
    "StandInOP",
    "make_session_cookie",
    "mint_jwt",
    "mint_logout_token",
]
