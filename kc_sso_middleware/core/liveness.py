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
  every worker and every app sharing the store.  Keycloak gives that very answer for a
  refresh token the app has already used when the realm revokes refresh tokens
  (RefreshTokenIntrospectionProvider.verifyTokenReuse: "Stale token", "Maximum allowed
  refresh token reuse exceeded"), while the session lives on under the newer token.  So
  the first such answer only holds the session (503 on this worker, its cookie kept, for
  requests carrying that token or an older one); a newer token of the session is asked
  about at once, and the ending is recorded when the session still carries a token no
  newer a few seconds later (``_CONFIRM_AFTER``) and Keycloak says it again.  A source
  whose readings may be older than the session (a server-side session another worker
  saved) is read again before Keycloak is asked.
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
from collections.abc import Callable
from typing import Any, NamedTuple

from .. import events as ev
from .._effects import HttpCall, RecordRevocations
from .._flows import Flow
from .._http import RequestHead
from .._logs import untrusted
from .._tokens import strict_json
from ..errors import DiscoveryError, StoreUnavailableError
from ..sources.base import Finding, SessionIdentity
from ..sources.bearer import unverified_claims
from ..stores.model import Revocation
from .context import Context

__all__ = ["Liveness"]

_TRACKED = 200_000  # sessions whose next check this worker remembers (then it forgets all)
_SWEEP_FROM = 1024  # failed sessions held before those past the lifetime are swept out
#: seconds between Keycloak's first "inactive" for a refresh token before its exp and the
#: check that confirms it (at most the interval): time for a token the app has just
#: refreshed to reach the session, and for requests still carrying the older one to end
_CONFIRM_AFTER = 5.0


#: distinct refresh tokens of one session Keycloak may call inactive before the ending is
#: taken as confirmed whatever token comes next (a session cannot be kept alive by
#: presenting its old tokens in turn)
_SUSPECTED_TOKENS = 4


class _Suspect(NamedTuple):
    """Refresh tokens Keycloak called inactive before their ``exp``, not yet confirmed."""

    tokens: tuple[str, ...]
    #: the latest ``iat`` among them (whole seconds, as Keycloak writes it)
    issued_at: float
    confirm_at: float


def _issued_at(claims: dict[str, Any]) -> float:
    iat = claims.get("iat")
    return float(iat) if isinstance(iat, int | float) and not isinstance(iat, bool) else 0.0


class Liveness:
    """Decides when a session is due, and checks it (a flow the adapter runs beside)."""

    def __init__(self, context: Context, interval: float, fail_closed: bool) -> None:
        self._context = context
        self._interval = interval
        self._fail_closed = fail_closed
        self._next_due: dict[str, float] = {}
        #: sessions whose last check here failed (``closed``) -> when to forget them: once
        #: past KC_SSO_MAX_SESSION_LIFETIME, a session is refused anyway
        self._unconfirmed: dict[str, float] = {}
        self._sweep_at = _SWEEP_FROM
        self._suspects: dict[str, _Suspect] = {}
        self._confirm_after = min(interval, _CONFIRM_AFTER)
        #: sessions whose check is queued or running here: one at a time each, so that a
        #: Keycloak that hangs (every check waits for KC_SSO_HTTP_TIMEOUT) does not pile
        #: up a new check per session each interval behind the few that run
        self._running: set[str] = set()
        self._lock = threading.Lock()

    def due(
        self,
        identity: SessionIdentity,
        now: float,
        finding: Finding | None = None,
        head: RequestHead | None = None,
    ) -> Flow[None] | None:
        """The check to run beside this request, if the session is due; else ``None``.

        Memory only: one dict look-up for a session that is not due.  ``finding`` and
        ``head``: where the identity was found, so that a source whose readings may be
        older than the session can be read again by the check.
        """
        if identity.refresh_token is None:
            return None
        key = identity.sid or identity.instance
        if key is None or now < self._next_due.get(key, 0.0):
            return None
        suspect = self._suspects.get(key)
        if (
            suspect is not None
            and now < suspect.confirm_at
            and not self._newer(identity.refresh_token, suspect)
        ):
            return None  # the token Keycloak called inactive (or older): confirmed later
        with self._lock:
            if now < self._next_due.get(key, 0.0) or key in self._running:
                return None
            if len(self._next_due) >= _TRACKED:
                self._next_due.clear()
            self._next_due[key] = now + self._interval
            self._running.add(key)
        current: Callable[[], Flow[Any]] | None = None
        if finding is not None and head is not None and finding.source.readings_may_lag:
            source = finding.source
            current = lambda: source.tokens(head, now)  # noqa: E731
        return self._check(identity, key, current)

    def refuses(self, identity: SessionIdentity) -> bool:
        """Whether this worker holds the session back: ``KC_SSO_LIVENESS_FAILURE=closed``
        and the last check here failed, or Keycloak called this refresh token (or a newer
        one of the session) inactive before its ``exp`` and that is not confirmed yet."""
        key = identity.sid or identity.instance
        if key is None:
            return False
        if key in self._unconfirmed:
            return True
        suspect = self._suspects.get(key)
        return (
            suspect is not None
            and identity.refresh_token is not None
            and not self._newer(identity.refresh_token, suspect)
        )

    @staticmethod
    def _newer(token: str, suspect: _Suspect) -> bool:
        """Whether ``token`` may be one the app refreshed to since: not called inactive
        yet, and issued no earlier than the latest that was (``iat`` has whole seconds:
        a refresh in the login's second issues a token of the same ``iat``)."""
        if token in suspect.tokens or len(suspect.tokens) >= _SUSPECTED_TOKENS:
            return False
        return _issued_at(unverified_claims(token) or {}) >= suspect.issued_at

    def _check(
        self,
        identity: SessionIdentity,
        key: str,
        current: Callable[[], Flow[Any]] | None = None,
    ) -> Flow[None]:
        try:
            yield from self._ask(identity, key, current)
        finally:
            self._running.discard(key)

    def _ask(
        self,
        identity: SessionIdentity,
        key: str,
        current: Callable[[], Flow[Any]] | None,
    ) -> Flow[None]:
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
        # A worker that holds a suspicion confirms (or lifts) it itself, too.
        mine = mine or key in self._unconfirmed or key in self._suspects
        if not mine:
            return  # another worker asks this interval; its answer reaches every worker
        token = identity.refresh_token
        assert token is not None
        if current is not None:
            # The session as it is now: another worker may have saved a refreshed token.
            tokens = yield from current()
            fresh = getattr(tokens, "refresh_token", None)
            if isinstance(fresh, str) and fresh != token:
                fresh_sid = (unverified_claims(fresh) or {}).get("sid")
                if identity.sid is not None and fresh_sid != identity.sid:
                    return  # another login under this session id now: its own check decides
                token = fresh
        try:
            active = yield from self._introspect(token)
        except DiscoveryError as exc:
            self._failed(identity, key, str(exc))
            return
        self._unconfirmed.pop(key, None)
        if active:
            self._suspects.pop(key, None)
            context.events.emit(
                ev.LIVENESS_ALIVE, "session alive", level=10, sid_tag=context.tagger.tag(key)
            )
            return
        yield from self._ended(identity, key, token)

    def _introspect(self, token: str) -> Flow[bool]:
        context = self._context
        settings = context.settings
        metadata = yield from context.provider.metadata()
        endpoint = metadata.introspection_endpoint or (
            f"{settings.issuer}/protocol/openid-connect/token/introspect"
        )
        form = {
            "token": token,
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

    def _ended(self, identity: SessionIdentity, tracked: str, token: str) -> Flow[None]:
        context = self._context
        claims = unverified_claims(token) or {}
        exp = claims.get("exp")
        now = context.clock()
        expired = isinstance(exp, int | float) and not isinstance(exp, bool)
        # Keycloak judged exp on its own clock, which may run up to KC_SSO_CLOCK_SKEW
        # ahead: within that, this client's idle limit cannot be told from the end of the
        # Keycloak session, and only the narrower ending is taken (never a sid revocation
        # that would refuse every new SSO login into a session still alive).
        expired = expired and exp <= now + context.settings.clock_skew  # type: ignore[operator]
        if not expired:
            # Before its exp: the Keycloak session is gone, or the app already used this
            # token (rotation).  Hold the session; confirm with the token it carries then.
            suspect = self._suspects.get(tracked)
            if suspect is None or self._newer(token, suspect):
                if len(self._suspects) >= _TRACKED:
                    self._suspects.clear()
                before = suspect.tokens if suspect is not None else ()
                latest = suspect.issued_at if suspect is not None else 0.0
                self._suspects[tracked] = _Suspect(
                    (*before, token),
                    max(latest, _issued_at(claims)),
                    now + self._confirm_after,
                )
                self._next_due[tracked] = now  # a newer token of the session: asked at once
                return
        self._suspects.pop(tracked, None)
        # Past its own exp the token tells about this client only (its idle limit);
        # before it, the Keycloak session itself is gone.
        expires_at, note = (
            context.expires_at(),
            context.note("liveness", context.settings.client_id),
        )
        if expired and identity.instance:
            key = identity.instance
            revocation = Revocation.instance(context.issuer, key, expires_at=expires_at, note=note)
        elif identity.sid is not None:
            key = identity.sid
            revocation = Revocation.session(
                context.issuer,
                key,
                client_id=context.settings.client_id,
                expires_at=expires_at,
                note=note,
            )
        else:
            return
        yield from context.record((revocation,))
        context.events.emit(
            ev.LIVENESS_ENDED,
            "Keycloak says the session ended; revoked",
            sid_tag=context.tagger.tag(identity.sid),
            scope="app_session" if key == identity.instance else "keycloak_session",
        )

    def _failed(self, identity: SessionIdentity, key: str, detail: str) -> None:
        if self._fail_closed:
            began = identity.auth_time
            now = self._context.clock()
            self._unconfirmed[key] = (began if began is not None else now) + (
                self._context.settings.max_session_lifetime
            )
            if len(self._unconfirmed) >= self._sweep_at:
                # Sessions that never came back after an outage: gone once past the lifetime.
                for held, until in list(self._unconfirmed.items()):
                    if until < now:
                        self._unconfirmed.pop(held, None)
                self._sweep_at = max(_SWEEP_FROM, 2 * len(self._unconfirmed))
        self._context.events.emit(
            ev.LIVENESS_FAILED,
            "could not ask Keycloak whether a session is alive",
            level=30,
            sid_tag=self._context.tagger.tag(identity.sid),
            detail=untrusted(detail),
            policy="closed" if self._fail_closed else "open",
        )
