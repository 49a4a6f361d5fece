"""OIDC Back-Channel Logout 1.0 (errata set 1), as the receiving RP (§2.5-§2.8).

``POST`` with a form-encoded ``logout_token``.  Every rule of §2.4-§2.6 and of RFC 8725 is
checked (:mod:`kc_sso_middleware._tokens`); a token naming a ``sid`` revokes that Keycloak
session, one naming only a ``sub`` revokes every session of the user begun up to the
token's ``iat``.  The answer is 200 once the revocation is durably stored and applied by
every live worker, 400 with the failed rule otherwise, 503 when it could not be stored
(never a false success: Keycloak does not retry).
"""

from __future__ import annotations

import logging
import math
from urllib.parse import parse_qs

from .._flows import Flow
from .._http import NO_STORE, Request, Response
from .._logs import untrusted
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

    def __init__(self, context: Context) -> None:
        self._context = context

    def respond(self, request: Request) -> Flow[Response]:
        context = self._context
        try:
            claims = yield from self._claims(request)
            yield from context.record_once(
                self._revocations(claims),
                context.replay_key("bcl", claims.jti),
                claims.expires_at,
            )
        except LogoutTokenError as exc:
            logger.warning(
                "back-channel logout rejected: %s: %s", exc.code, untrusted(exc.description)
            )
            raise
        logger.info(
            "back-channel logout: revoked %s",
            f"sid {context.tagger.tag(claims.sid)}"
            if claims.sid is not None
            else f"sub {context.tagger.tag(claims.sub)}",
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
        context = self._context
        expires_at = context.expires_at()
        if claims.sid is not None:
            return (Revocation.session(context.issuer, claims.sid, expires_at=expires_at),)
        assert claims.sub is not None  # check_logout_claims guarantees sub or sid
        # Every session of the user established up to the token's second (NumericDates
        # are whole seconds, so a session from that very second counts as earlier).
        not_before = math.floor(claims.iat) + 1
        return (
            Revocation.user(
                context.issuer, claims.sub, not_before=not_before, expires_at=expires_at
            ),
        )
