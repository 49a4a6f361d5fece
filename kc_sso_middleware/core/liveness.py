"""Liveness: ask Keycloak, now and then, whether a session it never said ended is alive.

Keycloak sends no logout when a session idles out or reaches its maximum lifetime
(keycloak#25171), and a back-channel request that failed (the app was down, a TLS trust
error) is never retried.  With ``KC_SSO_LIVENESS_INTERVAL`` set, a session that carries a
refresh token is checked at most once per interval *per Keycloak session across every
worker and host* (a claim in the shared store decides who asks), by token introspection of
its refresh token with the client's credentials (``token_type_hint=refresh_token``; it does
not rotate tokens, and it is what Keycloak answers most cheaply: no admin token, no user
session listing).

* A request is never made to wait: a due check runs beside the request (a task of the
  event loop, or a thread), and the next request sees its answer.
* ``active: false`` before the refresh token's own ``exp``: the Keycloak session (or this
  client's part of it) is gone, so its ``sid`` is revoked like a back-channel logout, for
  every worker and every app sharing the store.
* ``active: false`` after it: Keycloak's idle or maximum timeout for *this* client passed
  (the refresh token's ``exp`` is the client session's idle limit); this app session is
  revoked (its own token, like a local logout), other apps of the same Keycloak session
  are left alone.
* Keycloak unreachable: ``KC_SSO_LIVENESS_FAILURE=open`` (default) keeps the session;
  ``closed`` answers its requests 503 on each worker whose check failed (the session and
  its cookie are kept), until that worker's next check, one interval later, succeeds.
"""

from __future__ import annotations

import threading

from .. import events as ev
from .._effects import HttpCall, RecordRevocations
from .._flows import Flow
from .._logs import untrusted
from .._tokens import strict_json
from ..errors import DiscoveryError, StoreUnavailableError
from ..sources.base import SessionIdentity
from ..sources.bearer import unverified_claims
from ..stores.model import Revocation
from .context import Context

__all__ = ["Liveness"]

_TRACKED = 200_000  # sessions whose next check this worker remembers (then it forgets all)


class Liveness:
    """Decides when a session is due, and checks it (a flow the adapter runs beside)."""

    def __init__(self, context: Context, interval: float, fail_closed: bool) -> None:
        self._context = context
        self._interval = interval
        self._fail_closed = fail_closed
        self._next_due: dict[str, float] = {}
        self._unconfirmed: set[str] = set()
        self._lock = threading.Lock()

    def due(self, identity: SessionIdentity, now: float) -> Flow[None] | None:
        """The check to run beside this request, if the session is due; else ``None``.

        Memory only: one dict look-up for a session that is not due.
        """
        if identity.refresh_token is None:
            return None
        key = identity.sid or identity.instance
        if key is None or now < self._next_due.get(key, 0.0):
            return None
        with self._lock:
            if now < self._next_due.get(key, 0.0):
                return None
            if len(self._next_due) >= _TRACKED:
                self._next_due.clear()
            self._next_due[key] = now + self._interval
        return self._check(identity, key)

    def refuses(self, identity: SessionIdentity) -> bool:
        """``KC_SSO_LIVENESS_FAILURE=closed``: whether the last check here failed."""
        key = identity.sid or identity.instance
        return key is not None and key in self._unconfirmed

    def _check(self, identity: SessionIdentity, key: str) -> Flow[None]:
        context = self._context
        settings = context.settings
        claim = f"live:{settings.client_id}:{settings.issuer}:{key}"
        try:
            mine = yield from RecordRevocations(
                (), jti=claim, jti_expires_at=context.clock() + self._interval
            )
        except StoreUnavailableError:
            mine = True  # the store is down: asking Keycloak is all that is left
        # A worker whose last check failed asks again itself: only its own success lifts
        # its refusal (another worker's answer reaches it only when the session ended).
        mine = mine or key in self._unconfirmed
        if not mine:
            return  # another worker asks this interval; its answer reaches every worker
        try:
            active = yield from self._introspect(identity)
        except DiscoveryError as exc:
            self._failed(identity, key, str(exc))
            return
        self._unconfirmed.discard(key)
        if active:
            context.events.emit(
                ev.LIVENESS_ALIVE, "session alive", level=10, sid_tag=context.tagger.tag(key)
            )
            return
        yield from self._ended(identity)

    def _introspect(self, identity: SessionIdentity) -> Flow[bool]:
        context = self._context
        settings = context.settings
        metadata = yield from context.provider.metadata()
        endpoint = metadata.introspection_endpoint or (
            f"{settings.issuer}/protocol/openid-connect/token/introspect"
        )
        assert identity.refresh_token is not None
        form = {
            "token": identity.refresh_token,
            "token_type_hint": "refresh_token",
            "client_id": settings.client_id,
        }
        if settings.client_secret:
            form["client_secret"] = settings.client_secret
        result = yield from HttpCall("POST", endpoint, form)
        if result.status != 200:
            raise DiscoveryError(f"introspection answered {result.status}")
        try:
            answer = strict_json(result.body)
        except ValueError:
            raise DiscoveryError("introspection answered something that is not JSON") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("active"), bool):
            raise DiscoveryError("introspection answered without a boolean 'active'")
        return bool(answer["active"])

    def _ended(self, identity: SessionIdentity) -> Flow[None]:
        context = self._context
        claims = unverified_claims(identity.refresh_token or "") or {}
        exp = claims.get("exp")
        expired = isinstance(exp, int | float) and not isinstance(exp, bool)
        expired = expired and exp <= context.clock()  # type: ignore[operator]
        # Past its own exp the token tells about this client only (its idle limit);
        # before it, the Keycloak session itself is gone.
        key = identity.instance if expired and identity.instance else identity.sid
        if key is None:
            return
        note = context.note("liveness", context.settings.client_id)
        revocation = Revocation.session(
            context.issuer, key, expires_at=context.expires_at(), note=note
        )
        yield from context.record((revocation,))
        context.events.emit(
            ev.LIVENESS_ENDED,
            "Keycloak says the session ended; revoked",
            sid_tag=context.tagger.tag(identity.sid),
            scope="app_session" if key == identity.instance else "keycloak_session",
        )

    def _failed(self, identity: SessionIdentity, key: str, detail: str) -> None:
        if self._fail_closed:
            self._unconfirmed.add(key)
        self._context.events.emit(
            ev.LIVENESS_FAILED,
            "could not ask Keycloak whether a session is alive",
            level=30,
            sid_tag=self._context.tagger.tag(identity.sid),
            detail=untrusted(detail),
            policy="closed" if self._fail_closed else "open",
        )
