"""The check every ordinary request goes through: memory only, a few look-ups.

Each identity source says which Keycloak sessions the request carries; each is compared
with the revocation store's in-memory replica (and with ``KC_SSO_MAX_SESSION_LIFETIME``).
A revoked session is taken out of the request the way its source says; a request whose
source found values it cannot vouch for goes on without them.  While the store cannot
confirm its replica is current, ``KC_SSO_STORE_FAILURE=closed`` answers 503 to requests
that carry a session.

A reading the source caches remembers the store version at which it was found not
revoked: until the store changes, a repeat request needs no look-up at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

from .. import events as ev
from .._flows import Flow
from .._http import PASS, RequestHead, SignOut, Verdict
from .._logs import Tagger
from ..errors import DiscoveryError, StoreUnavailableError
from ..events import Events
from ..settings import Settings
from ..sources.base import Finding, IdentitySource, SessionIdentity
from ..stores.base import RevocationStore
from ..stores.model import StoreStatus
from .answers import answer
from .liveness import Liveness

__all__ = ["RequestCheck"]

logger = logging.getLogger("kc_sso_middleware")


class RequestCheck:
    """Decides ordinary requests for one app."""

    def __init__(
        self,
        settings: Settings,
        store: RevocationStore,
        sources: Sequence[IdentitySource],
        clock: Callable[[], float],
        explain: Callable[[SessionIdentity, float], SignOut],
        events: Events,
        tagger: Tagger,
        liveness: Liveness | None = None,
    ) -> None:
        self._liveness = liveness
        #: whether a session found not revoked needs nothing more (no liveness checks)
        self._quick = liveness is None
        self._events = events
        self._tag = tagger.tag
        self._store = store
        self._use(sources)
        # Followed through the store's status listener where it has one: no call per
        # request.  A store that does not announce changes is asked every time.
        self._status_followed = (
            type(store).add_status_listener is not RevocationStore.add_status_listener
        )
        self._store_available = store.status().available
        store.add_status_listener(self._status_changed)
        self._clock = clock
        self._lifetime = settings.max_session_lifetime
        self._fail_closed = settings.store_failure == "closed"
        self._explain = explain
        self._unavailable = Verdict(
            response=answer(StoreUnavailableError("the revocation store cannot be reached"))
        )
        self._unconfirmed = answer(
            DiscoveryError("Keycloak could not confirm that the session is still alive")
        )

    def _use(self, sources: Sequence[IdentitySource]) -> None:
        self._sources = tuple(sources)
        self._without_authorization = tuple(s for s in sources if s.reads != "authorization")
        self._without_cookies = tuple(s for s in sources if s.reads != "cookies")
        self._native_only = tuple(s for s in sources if s.reads == "native")
        #: whether a request with no Cookie and no Authorization header needs the check
        #: at all (only a source reading the framework's own request could find anything):
        #: the adapters pass every other such request straight on
        self.reads_bare_requests = bool(self._native_only)

    def use_resolved_sources(self) -> None:
        """Ask the sources a detecting source chose directly (once they are prepared)."""
        self._use([source.resolved() for source in self._sources])

    def __call__(self, head: RequestHead) -> Verdict:
        """The verdict for an ordinary request; memory only, unless a source must load.

        The hot path of the package: a request seen before, carrying one unrevoked session,
        costs each source's cache hit and one version comparison.
        """
        now = self._clock()
        found: Finding | None = None
        findings: list[Finding] | None = None
        # _sources_for, inlined: this runs for every request
        if head.authorization is None:
            sources = self._without_authorization if head.cookies else self._native_only
        else:
            sources = self._sources if head.cookies else self._without_cookies
        for source in sources:
            finding = source.find(head, now)
            if finding is None:
                continue
            if finding.load is not None:
                return Verdict(pending=self._after_loading(head, now))
            if found is None:
                found = finding
            elif findings is None:
                findings = [found, finding]
            else:
                findings.append(finding)
        if found is None:
            return PASS
        if (
            findings is None
            and self._quick
            and found.clean is PASS
            and found.identities
            and found.checked_at == self._store.version
        ):
            # The usual case: one session, found not revoked at this very store version.
            if self._fail_closed and not (
                self._store_available if self._status_followed else self._available
            ):
                return self._unavailable
            return PASS
        return self._judge(head, findings or [found], now)

    def _after_loading(self, head: RequestHead, now: float) -> Flow[Verdict]:
        """The same decision, once the sources that need I/O have loaded what they need."""
        findings: list[Finding] = []
        for source in self._sources:
            finding = source.find(head, now)
            if finding is not None and finding.load is not None:
                finding = yield from finding.load
            if finding is not None:
                findings.append(finding)
        return self._judge(head, findings, now)

    def _judge(self, head: RequestHead, findings: list[Finding], now: float) -> Verdict:
        verdict = PASS
        carries_session = False
        for finding in findings:
            if finding.identities:
                carries_session = True
                revoked = self._revoked(finding, now)
                if revoked is not None:
                    return self._refuse(finding, head, self._explain(revoked, now), revoked)
                if self._liveness is not None:
                    verdict = self._alive(finding, head, verdict, now)
                    if verdict.response is not None or verdict.signed_out is not None:
                        return verdict
            if finding.clean is not PASS:
                verdict = replace(finding.clean, background=verdict.background)
        if carries_session and self._fail_closed and not self._available:
            return self._unavailable
        return verdict

    def _sources_for(self, head: RequestHead) -> tuple[IdentitySource, ...]:
        """The sources that can find something in ``head`` (those whose header it has)."""
        if head.authorization is None:
            return self._without_authorization if head.cookies else self._native_only
        return self._sources if head.cookies else self._without_cookies

    @property
    def _available(self) -> bool:
        if self._status_followed:
            return self._store_available
        return self._store.status().available  # a store that tells nobody: ask each time

    def _status_changed(self, status: StoreStatus) -> None:
        self._store_available = status.available

    def _refuse(
        self, finding: Finding, head: RequestHead, signed_out: SignOut, identity: SessionIdentity
    ) -> Verdict:
        self._events.emit(
            ev.REQUEST_REFUSED,
            "a revoked session was taken out of a request",
            source=finding.source.name,
            reason=signed_out.reason,
            sid_tag=self._tag(identity.sid),
        )
        return finding.source.refuse(finding, head, signed_out)

    def _alive(self, finding: Finding, head: RequestHead, verdict: Verdict, now: float) -> Verdict:
        """Liveness: start the checks due; answer 503 while a failed check (under
        ``KC_SSO_LIVENESS_FAILURE=closed``) leaves the session unconfirmed.

        The 503 is temporary: the session is not ended and its cookie is kept, so the
        next successful check (started here, every interval) lets it through again.
        """
        assert self._liveness is not None
        background = list(verdict.background)
        unconfirmed = False
        for identity in finding.identities:
            check = self._liveness.due(identity, now, finding, head)
            if check is not None:
                background.append(check)
            unconfirmed = unconfirmed or self._liveness.refuses(identity)
        if unconfirmed:
            return Verdict(response=self._unconfirmed, background=tuple(background))
        return replace(verdict, background=tuple(background)) if background else verdict

    def _revoked(self, finding: Finding, now: float) -> SessionIdentity | None:
        """The first revoked identity of ``finding``, or ``None``."""
        # Read the version before checking: "not revoked at version V" holds until the
        # store's next change, so an unchanged store needs no look-up.
        version = self._store.version
        if finding.checked_at == version:
            return None
        for identity in finding.identities:
            began = identity.auth_time
            if began is not None and began + self._lifetime < now:
                logger.debug("session older than KC_SSO_MAX_SESSION_LIFETIME")
                return identity
            if self._store.is_revoked(identity.keys):
                return identity
        finding.checked_at = version
        return None
