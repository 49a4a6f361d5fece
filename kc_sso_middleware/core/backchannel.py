"""OIDC Back-Channel Logout 1.0 (errata set 1), as the receiving RP (§2.5-§2.8).

``POST`` with a form-encoded ``logout_token``.  Every rule of §2.4-§2.6 and of RFC 8725 is
checked (:mod:`kc_sso_middleware._tokens`); a token naming a ``sid`` revokes that Keycloak
session, one naming only a ``sub`` revokes every session of the user in this client begun
up to the token's ``iat``.  The answer is 200 once the revocation is durably stored and
applied by every live worker, 400 with the failed rule otherwise, 503 when it could not be
stored (never a false success: Keycloak does not retry).
"""

from __future__ import annotations

import logging
import math
import time
from urllib.parse import parse_qs

from .. import events as ev
from .._flows import Flow
from .._http import NO_STORE, Request, Response
from .._tokens import LogoutClaims, check_header, check_logout_claims, parse_compact
from ..errors import LogoutTokenError
from ..stores.model import Revocation
from .context import Context

__all__ = ["FORM_CONTENT_TYPE", "BackchannelResponder"]

logger = logging.getLogger("kc_sso_middleware")

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


class BackchannelResponder:
    """Serves ``KC_SSO_BACKCHANNEL_PATH``."""

    methods = ("POST",)
    rejected_event = ev.BACKCHANNEL_REJECTED

    def __init__(self, context: Context) -> None:
        self._context = context

    def respond(self, request: Request) -> Flow[Response]:
        context = self._context
        started = time.perf_counter()
        claims = yield from self._claims(request)
        revocations = self._revocations(claims)
        yield from context.record_once(
            revocations, context.replay_key("bcl", claims.jti), claims.expires_at
        )
        if context.events.wanted(ev.BACKCHANNEL_ACCEPTED):  # else no tags to compute
            context.events.emit(
                ev.BACKCHANNEL_ACCEPTED,
                "back-channel logout accepted",
                sid_tag=context.tagger.tag(claims.sid),
                sub_tag=context.tagger.tag(claims.sub),
                scope="user" if len(revocations) > 1 or claims.sid is None else "session",
                # how long after Keycloak minted the token it took effect here
                delay_ms=round((context.clock() - claims.iat) * 1000),
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )
        return Response(200, (NO_STORE,))

    def _claims(self, request: Request) -> Flow[LogoutClaims]:
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != FORM_CONTENT_TYPE:
            raise LogoutTokenError("bad_content_type", f"Content-Type must be {FORM_CONTENT_TYPE}")
        try:
            form = parse_qs(
                request.body.decode("utf-8"), keep_blank_values=True, max_num_fields=100
            )
        except (UnicodeDecodeError, ValueError):
            raise LogoutTokenError("bad_body", "body is not a valid form") from None
        tokens = form.get("logout_token", [])
        if len(tokens) != 1 or not tokens[0]:
            raise LogoutTokenError(
                "missing_logout_token", "exactly one logout_token form field is required"
            )
        obj = parse_compact(tokens[0])
        header = obj.headers()
        alg = check_header(header, self._context.policy)
        payload = yield from self._context.verify(obj, header, alg)
        return check_logout_claims(payload, self._context.policy, self._context.clock())

    def _revocations(self, claims: LogoutClaims) -> tuple[Revocation, ...]:
        """The sid; or, without one, every session of the user in this client begun up to
        the token.

        ``KC_SSO_SID_LOGOUT_SCOPE=user`` adds the user's other sessions to a token that
        names a sid: Keycloak's "log out user" and "sign out other devices" send one token
        with one sid for several sessions (keycloak#22914, #27359, #28417).
        """
        context = self._context
        expires_at = context.expires_at()
        note = context.note("backchannel")
        revocations: list[Revocation] = []
        if claims.sid is not None:
            revocations.append(
                Revocation.session(
                    context.issuer,
                    claims.sid,
                    client_id=context.settings.client_id,
                    expires_at=expires_at,
                    note=note,
                )
            )
        # A token without a sid ends every session of the user *at this RP* (§2.4):
        # Keycloak leaves the sid out only because this client has "Backchannel logout
        # session required" off (DefaultTokenManager.initLogoutToken), for one-session
        # logouts too, so it says nothing about the user's sessions in other clients.
        # KC_SSO_SID_LOGOUT_SCOPE=user is this app's choice: its client's sessions only.
        wide = claims.sid is None or context.settings.sid_logout_scope == "user"
        if wide and claims.sub is not None:
            # Every session of the user established up to the token's second (NumericDates
            # are whole seconds, so a session from that very second counts as earlier).
            not_before = math.floor(claims.iat) + 1
            revocations.append(
                Revocation.user(
                    context.issuer,
                    claims.sub,
                    not_before=not_before,
                    expires_at=context.expires_at(not_before),
                    note=note,
                    client_id=context.settings.client_id,
                )
            )
        return tuple(revocations)
