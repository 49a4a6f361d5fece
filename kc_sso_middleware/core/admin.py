"""Keycloak's legacy admin-URL protocol: ``k_logout``, ``k_push_not_before``, ``k_test_available``.

Keycloak's "Sign out all active sessions" and the client's "Push" (not-before) reach an app
only this way: ``POST <Admin URL>/k_…`` with a bare compact JWS as the body, as the old
Keycloak adapters accepted it.  The token is verified with the OP's keys (403 for a bad
signature, as those adapters answered; 400 for the other rules), its ``resource`` must be
this client and its ``action`` the path's.  A not-before applies to this client of this
issuer only: two apps sharing one store are logged out together only when Keycloak
addresses both.
"""

from __future__ import annotations

import logging

from .. import events as ev
from .._flows import Flow
from .._http import NO_STORE, Request, Response
from .._tokens import AdminAction, check_admin_claims, check_header, parse_compact
from ..errors import LogoutTokenError
from ..stores.model import Revocation
from .context import Context

__all__ = ["ADMIN_ACTIONS", "AdminResponder"]

logger = logging.getLogger("kc_sso_middleware")

#: path below ``KC_SSO_ADMIN_PATH`` → the action its token must carry (Keycloak's
#: ``LogoutAction.LOGOUT``, ``PushNotBeforeAction.PUSH_NOT_BEFORE`` and
#: ``TestAvailabilityAction.TEST_AVAILABILITY``, posted to ``k_test_available``)
ADMIN_ACTIONS = {
    "k_logout": "LOGOUT",
    "k_push_not_before": "PUSH_NOT_BEFORE",
    "k_test_available": "TEST_AVAILABILITY",
}


class AdminResponder:
    """Serves one action of the admin URL."""

    methods = ("POST",)
    rejected_event = ev.ADMIN_REJECTED

    def __init__(self, context: Context, action: str) -> None:
        self._context = context
        self._action = action

    def respond(self, request: Request) -> Flow[Response]:
        context = self._context
        action = yield from self._validated(request)
        revocations = self._revocations(action)
        if revocations:
            yield from context.record_once(
                revocations,
                context.replay_key("admin", action.id),
                action.expiration + context.settings.clock_skew,
            )
        context.events.emit(
            ev.ADMIN_ACCEPTED,
            "admin-URL action accepted",
            action=self._action,
            revocations=len(revocations),
        )
        return Response(200, (NO_STORE,))

    def _validated(self, request: Request) -> Flow[AdminAction]:
        context = self._context
        obj = parse_compact(request.body.decode("ascii", "replace").strip())
        header = obj.headers()
        alg = check_header(header, context.policy, kind="admin")
        try:
            payload = yield from context.verify(obj, header, alg)
        except LogoutTokenError as exc:
            if exc.code in {"bad_signature", "unknown_kid"}:
                exc.status = 403  # what the old adapters answered
            raise
        return check_admin_claims(
            payload,
            context.settings.client_id,
            self._action,
            context.clock(),
            context.settings.clock_skew,
        )

    def _revocations(self, action: AdminAction) -> tuple[Revocation, ...]:
        if self._action == "TEST_AVAILABILITY":
            return ()
        context = self._context
        now = context.clock()
        expires_at = context.expires_at()
        if self._action == "LOGOUT" and action.session_ids:
            note = context.note("admin_logout")
            return tuple(
                Revocation.session(
                    context.issuer,
                    sid,
                    client_id=context.settings.client_id,
                    expires_at=expires_at,
                    note=note,
                )
                for sid in action.session_ids
            )
        # LOGOUT without session ids means "log out everybody" (what old adapters did);
        # PUSH_NOT_BEFORE moves the not-before time.
        not_before = action.not_before
        if self._action == "LOGOUT":
            # Now, to the fraction: tokens carry whole seconds, so a login of this very
            # second cannot be told from one just before it, and "sign out all" must end
            # every session that exists.  Refusing a login of the same second after it is
            # the price (the user logs in again); Keycloak's own notBefore (whole seconds)
            # would let the earlier ones through.
            not_before = max(not_before, now)
        if not_before <= 0:
            return ()
        return (
            Revocation.all_sessions(
                context.issuer,
                context.settings.client_id,
                not_before=not_before,
                expires_at=context.expires_at(not_before),
                note=context.note(
                    "sign_out_all" if self._action == "LOGOUT" else "not_before",
                    context.settings.client_id,
                ),
            ),
        )
