"""What every responder shares: settings, the OP's keys, the sources, and two common steps.

The two steps used by more than one protocol live here once: verifying a token's signature
with the OP's keys (back-channel and admin URL), and recording revocations with a replay
check (back-channel, admin URL; the others record without a ``jti``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from joserfc.jws import CompactSignature

from .._effects import RecordRevocations
from .._flows import Flow
from .._http import RequestHead
from .._logs import Tagger
from .._oidc import Provider
from .._tokens import TokenPolicy, candidate_keys, verify_signature
from ..errors import LogoutTokenError
from ..events import Events
from ..settings import Settings
from ..sources.base import IdentitySource, LoginTokens, SessionIdentity
from ..stores.model import Note, Revocation

__all__ = ["Context"]

logger = logging.getLogger("kc_sso_middleware")


@dataclass(frozen=True, slots=True)
class Context:
    """The shared state of one app's responders."""

    settings: Settings
    provider: Provider
    policy: TokenPolicy
    sources: Sequence[IdentitySource]
    clock: Callable[[], float]
    tagger: Tagger
    events: Events
    #: whether the store already holds an entry (a session entry written before)
    holds: Callable[[Revocation], bool] = lambda _revocation: False

    @property
    def issuer(self) -> str:
        return self.settings.issuer

    def expires_at(self, not_before: float = 0.0) -> float:
        """When an entry recorded now can be forgotten (no session it matches lives on).

        A session the OP began is judged by its ``auth_time``, on the OP's clock, which
        may run up to ``KC_SSO_CLOCK_SKEW`` ahead of this one (its tokens are accepted
        so); a wide entry matches sessions begun up to its ``not_before``.
        """
        began = max(self.clock() + self.settings.clock_skew, not_before)
        return began + self.settings.max_session_lifetime

    def note(self, cause: str, origin: str | None = None) -> Note:
        """Why and when an entry recorded now is written."""
        return Note(cause, self.clock(), origin)

    def session_of(self, head: RequestHead) -> Flow[tuple[SessionIdentity, IdentitySource] | None]:
        """The first authenticated Keycloak session ``head`` carries, and its source."""
        now = self.clock()
        for source in self.sources:
            if not source.authenticates:
                continue
            finding = source.find(head, now)
            if finding is not None and finding.load is not None:
                finding = yield from finding.load
            if finding is not None and finding.identities:
                return finding.identities[0], source
        return None

    def tokens_of(self, head: RequestHead) -> Flow[LoginTokens | None]:
        """The tokens of the session ``head`` carries, from the first source holding any."""
        now = self.clock()
        for source in self.sources:
            if not source.authenticates:
                continue
            tokens = yield from source.tokens(head, now)
            if tokens is not None:
                return tokens
        return None

    def verify(
        self, obj: CompactSignature, header: Mapping[str, object], alg: str
    ) -> Flow[dict[str, Any]]:
        """The payload of a token signed by one of the OP's keys (RFC 8725 §3.1-3.2)."""
        keys = yield from self.provider.keys()
        candidates = candidate_keys(keys, header, alg)
        kid = header.get("kid")
        refetched = False
        if not candidates and (kid is None or isinstance(kid, str)):
            # A key published since the last fetch must work at once (see _oidc); without
            # a kid, too, when no cached key is of the token's type (a new ES256 key).
            keys = yield from self.provider.keys_for_unknown_kid(kid)
            candidates = candidate_keys(keys, header, alg)
            refetched = True
        if not candidates:
            raise LogoutTokenError("unknown_kid", f"no {alg} key with kid {kid!r} in the OP's JWKS")
        try:
            return verify_signature(obj, candidates, alg)
        except LogoutTokenError as exc:
            if kid is not None or refetched or exc.code != "bad_signature":
                raise
        # A token without kid names no key, so one signed with a key published since the
        # last fetch fails against the cached keys as a forged one does: refetch as for an
        # unknown kid (throttled alike), and refuse only if the fresh keys fail it too.
        fresh = yield from self.provider.keys_for_unknown_kid(None)
        return verify_signature(obj, candidate_keys(fresh, header, alg), alg)

    def replay_key(self, kind: str, token_id: str) -> str:
        # jti is unique per issuer; the client id keeps apps that share one store from
        # refusing each other's copy of a multi-audience token as a replay.
        return f"{kind}:{self.settings.client_id}:{self.settings.issuer}:{token_id}"

    def record_once(
        self, revocations: Sequence[Revocation], jti: str, jti_expires_at: float
    ) -> Flow[None]:
        """Record ``revocations`` claiming ``jti`` (a replay is a rule failure), then purge."""
        first = yield from RecordRevocations(tuple(revocations), jti, jti_expires_at)
        if not first:
            raise LogoutTokenError("replayed_jti", "this logout token was already received")
        yield from self.purge(revocations)

    def record(
        self, revocations: Sequence[Revocation], *, authenticated: bool = True
    ) -> Flow[None]:
        """Record ``revocations`` (no replay check), then purge.

        Session entries the store holds already are not written again: nothing signs
        these writes, and one revoked cookie sent to a logout path again and again would
        otherwise add an entry (a row of the SQLite file) each time, beyond any bound.
        """
        fresh = tuple(entry for entry in revocations if not self.holds(entry))
        if fresh:
            yield from RecordRevocations(fresh, authenticated=authenticated)
        yield from self.purge(revocations)

    def purge(self, revocations: Sequence[Revocation]) -> Flow[None]:
        """Let every source end what it keeps of just-recorded revocations (best effort)."""
        for source in self.sources:
            try:
                yield from source.purge(revocations)
            except Exception as exc:  # recorded already: a backend failure undoes nothing
                logger.error("%s source could not purge revoked sessions: %s", source.name, exc)
