"""Identity sources: the seam between "how an app carries a Keycloak session" and the core.

An :class:`IdentitySource` answers two questions about a request, as the adapter sees it:

* which Keycloak sessions does it carry (:meth:`IdentitySource.find`: each as a
  :class:`SessionIdentity` with its ``sid``, ``sub``, times and lookup keys), and
* how is the request changed if one of them is revoked (:meth:`IdentitySource.refuse`: a
  :class:`~kc_sso_middleware._http.Verdict` — take a cookie out and expire it, answer 401,
  …).

The core's request check (:mod:`kc_sso_middleware.core.check`) asks every configured source
and compares what they found with the revocation store; responders ask a source for the
session a logout request belongs to.  A source never makes a session valid: it only ever
refuses, and everything it cannot vouch for it takes out of the request.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

from .._flows import Flow
from .._http import PASS, RequestHead, SignOut, Verdict
from ..stores.model import Revocation, SessionKeys

__all__ = ["Finding", "IdentitySource", "LoginTokens", "SessionIdentity"]


@dataclass(frozen=True, slots=True)
class SessionIdentity:
    """One Keycloak session a request carries, as far as revocation is concerned."""

    #: the Keycloak user session id (``sid`` of the ID or access token)
    sid: str | None
    #: the user (``sub``)
    sub: str | None
    #: when the Keycloak session began (``auth_time``, else ``iat``): for the lifetime limit
    auth_time: float | None
    #: when this app session's token was issued (``iat``): user- and client-wide
    #: revocations compare it, as Keycloak compares a token's ``iat`` with its not-before
    issued_at: float | None
    #: this app session's own token (``"sid#jti"``, or ``"sid#iat"`` without ``jti``): the
    #: key a local logout revokes.  Revoking the sid itself would also refuse a fresh SSO
    #: login into the same, still-alive Keycloak session (the user left Keycloak's logout
    #: confirmation page): a login loop.  The token instance ends only this copy.
    instance: str | None
    #: the store subjects this session is looked up by
    keys: SessionKeys
    #: the session's refresh token, when it holds one (for liveness checks)
    refresh_token: str | None = None


@dataclass(frozen=True, slots=True)
class LoginTokens:
    """The tokens a session holds, for the logout path (never cached on the request path)."""

    id_token: str | None
    refresh_token: str | None


class Finding:
    """What a source found in one request, cached by the source while it holds.

    ``clean`` is the verdict when no identity is revoked: :data:`PASS`, or a rewrite that
    takes out values the source could not vouch for.  ``checked_at`` is the store version
    at which the identities were last found not revoked (-1: not yet), so an unchanged
    store needs no look-up at all.  ``load``, when set, is the I/O the source needs before
    it can say (a server-side session not seen before): a flow whose result is the real
    finding.
    """

    __slots__ = ("checked_at", "clean", "identities", "load", "source", "valid_until")

    def __init__(
        self,
        source: IdentitySource,
        identities: tuple[SessionIdentity, ...],
        *,
        valid_until: float = float("inf"),
        clean: Verdict = PASS,
        load: Flow[Finding | None] | None = None,
    ) -> None:
        self.source = source
        self.identities = identities
        self.valid_until = valid_until
        self.clean = clean
        self.load = load
        self.checked_at = -1


class IdentitySource(abc.ABC):
    """One way a request can carry a Keycloak session."""

    #: short name, for logs and metrics (``cookie``, ``bearer``, …)
    name: str = "source"
    #: what of the request the source reads: ``cookies``, ``authorization`` or ``native``
    #: (a request without it is not shown to the source at all)
    reads: str = "cookies"
    #: whether what the source finds is authenticated (a cookie the app signed, a session
    #: the app's backend holds), so that it may stand for the session in a logout.  A
    #: source that only reads claims without verifying them (bearer tokens) says False:
    #: it may refuse a request, never authenticate one.
    authenticates: bool = True
    #: whether a finding served from the source's memory may hold older tokens than the
    #: session does now (a server-side session another worker saved since): liveness
    #: reads :meth:`tokens` again before asking Keycloak about its refresh token
    readings_may_lag: bool = False

    @abc.abstractmethod
    def find(self, head: RequestHead, now: float) -> Finding | None:
        """The sessions ``head`` carries; ``None`` when it carries nothing of this kind.

        Runs on every request: memory only, and cheap for a request seen before.
        """

    @abc.abstractmethod
    def refuse(self, finding: Finding, head: RequestHead, signed_out: SignOut) -> Verdict:
        """How the request changes when a session of ``finding`` is revoked."""

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """Get ready before the first request (the adapters call it at start-up)."""

    def resolved(self) -> IdentitySource:
        """The source that answers for this one: itself, or the one a detecting source
        chose (the request check calls that one directly, one call less per request)."""
        return self

    def tokens(self, head: RequestHead, now: float) -> Flow[LoginTokens | None]:
        """The tokens of the session ``head`` carries, for a logout (``None``: none)."""
        return None
        yield  # pragma: no cover - makes this a generator

    def expiry_headers(self, root_path: str = "") -> tuple[str, ...]:
        """``Set-Cookie`` values that end this source's session in the browser;
        ``root_path``: the app's mount path (a library may set its cookie's path from it)."""
        return ()

    def end(self, head: RequestHead) -> Flow[None]:
        """The logout path: end the session ``head`` carries where the source keeps it.

        A server-side session source deletes the request's session from its backend (the
        request names it, so no revocation or index is needed for that).  The default
        keeps nothing: a cookie ends by :meth:`expiry_headers`.  Errors are logged by the
        caller; the logout goes on.
        """
        return
        yield  # pragma: no cover - makes this a generator

    def purge(self, revocations: Sequence[Revocation]) -> Flow[None]:
        """After ``revocations`` were recorded here: end what the source keeps of them.

        A server-side session source deletes the sessions from its backend, so a stolen
        session id is dead too.  The default keeps nothing.  Errors are logged by the
        caller and never undo the recorded revocation.
        """
        return
        yield  # pragma: no cover - makes this a generator
