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

from .._http import PASS, RequestHead, SignOut, Verdict
from ..errors import StoreUnavailableError
from ..settings import Settings
from ..sources.base import Finding, IdentitySource, SessionIdentity
from ..stores.base import RevocationStore
from .answers import answer

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
    ) -> None:
        self._store = store
        self._sources = tuple(sources)
        self._clock = clock
        self._lifetime = settings.max_session_lifetime
        self._fail_closed = settings.store_failure == "closed"
        self._explain = explain
        self._unavailable = Verdict(
            response=answer(StoreUnavailableError("the revocation store cannot be reached"))
        )

    def __call__(self, head: RequestHead) -> Verdict:
        """The verdict for an ordinary request; no I/O."""
        now = self._clock()
        verdict = PASS
        carries_session = False
        for source in self._sources:
            finding = source.find(head, now)
            if finding is None:
                continue
            if finding.identities:
                carries_session = True
                revoked = self._revoked(finding, now)
                if revoked is not None:
                    return source.refuse(finding, head, self._explain(revoked, now))
            if finding.clean is not PASS:
                verdict = finding.clean
        if carries_session and self._fail_closed and not self._store.status().available:
            return self._unavailable
        return verdict

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
