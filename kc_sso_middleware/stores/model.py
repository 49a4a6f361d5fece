"""What a revocation is and what a request looks up: plain values, no I/O (a leaf module).

Every entry is scoped.  A ``sid`` or ``sub`` means something only together with the issuer
that minted it (a realm copy keeps its user ids, two Keycloak servers may reuse session
ids), and every logout Keycloak sends names one client: a logout token is addressed to
one client (revoking a consent ends that client's part of a Keycloak session and leaves
the others'), and so is the not-before push.  So an entry is indexed by a
*subject*: a 60-bit BLAKE2b digest of its kind, its scope and its key.  Entries from two
issuers can then never match each other's sessions, even when their strings collide, and a
replica holds one small integer per revoked session instead of the strings.  The digest is
stable across processes and hosts, so a subject written by one worker means the same in
every other, and entries can be written back from a replica (see the stores' repair).

The plain key (``label``) travels with an entry to the shared store and to event
callbacks, for people and for apps that must act on it (close a user's websockets); the
request path never reads it.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass

__all__ = [
    "Note",
    "Revocation",
    "RevocationKind",
    "SessionKeys",
    "StoreStatus",
    "client_scope",
    "subject_of",
]

_SUBJECT_BITS = 60  # a Python int of up to 60 bits takes two 30-bit digits: 32 bytes


class RevocationKind(str, enum.Enum):
    """What a revocation entry matches."""

    #: one session: a Keycloak user session (its ``sid``, as a back-channel logout names
    #: it), or one app session of it (its ID token, ``"sid#jti"``, as a local logout
    #: revokes it so that a fresh SSO login into the same Keycloak session still works)
    SESSION = "sid"
    #: every session of one user (``sub``) of one issuer that began before ``not_before``
    USER = "sub"
    #: every session of one client of one issuer that began before ``not_before``
    #: (Keycloak's not-before push and "sign out all active sessions")
    ALL = "all"


def subject_of(kind: RevocationKind, scope: str, key: str) -> int:
    """The stable digest an entry of ``kind`` for ``key`` within ``scope`` is indexed by."""
    material = f"{kind.value}\x00{scope}\x00{key}".encode()
    digest = hashlib.blake2b(material, digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - _SUBJECT_BITS)


def client_scope(issuer: str, client_id: str | None = None) -> str:
    """The scope of a ``sid`` or user entry: one client's apps (a logout token is addressed
    to that client alone, and ``KC_SSO_SID_LOGOUT_SCOPE=user`` is that app's own choice:
    neither may end the sessions other apps of the realm keep), or every app of the realm
    (``client_id`` None: no longer written, but still honoured where a store holds entries
    an earlier version wrote, until they expire)."""
    return issuer if client_id is None else f"{issuer}\x00{client_id}"


@dataclass(frozen=True, slots=True)
class Note:
    """Why and when an entry was written, for people and for the request-scoped marker.

    ``cause`` is one of ``backchannel``, ``frontchannel``, ``local_logout``,
    ``admin_logout``, ``sign_out_all``, ``not_before``, ``liveness``; ``at`` the epoch
    seconds the entry was recorded; ``origin`` the client whose action it was (the app a
    local logout ran in, the client Keycloak's request addressed), when known.
    """

    cause: str
    at: float
    origin: str | None = None

    def encode(self) -> str:
        return json.dumps([self.cause, self.at, self.origin], separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | None) -> Note | None:
        """The note ``encode`` wrote; ``None`` for no note or one this version cannot read."""
        if not text:
            return None
        try:
            cause, at, origin = json.loads(text)
            return cls(str(cause), float(at), None if origin is None else str(origin))
        except (ValueError, TypeError):
            return None


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revocation entry.

    ``not_before`` is the epoch second before which a matching session counts as revoked
    (0 for :attr:`RevocationKind.SESSION`, which revokes the session whatever its age);
    ``expires_at`` is when the entry can no longer matter (every session it could match
    has outlived ``KC_SSO_MAX_SESSION_LIFETIME``).  Build entries with :meth:`session`,
    :meth:`user` and :meth:`all_sessions`.
    """

    kind: RevocationKind
    subject: int
    not_before: float
    expires_at: float
    #: the plain key (sid, sid#jti, sub or client id), when known; not part of equality
    label: str | None = None
    #: why and when it was written, when known; not part of equality
    note: Note | None = None

    @classmethod
    def session(
        cls,
        issuer: str,
        sid: str,
        *,
        client_id: str | None,
        expires_at: float,
        note: Note | None = None,
    ) -> Revocation:
        """Revoke one Keycloak session (``sid``) in client ``client_id``'s apps.

        ``client_id`` None writes the realm-wide form earlier versions wrote (every client's
        apps): for tests and tools that must reproduce such a store, never for a logout.
        """
        kind = RevocationKind.SESSION
        subject = subject_of(kind, client_scope(issuer, client_id), sid)
        return cls(kind, subject, 0.0, expires_at, sid, note)

    @classmethod
    def instance(
        cls, issuer: str, instance: str, *, expires_at: float, note: Note | None = None
    ) -> Revocation:
        """Revoke one app session (``"sid#jti"``, see SessionIdentity.instance): its ID
        token is of one client already, so the issuer scopes it."""
        kind = RevocationKind.SESSION
        return cls(kind, subject_of(kind, issuer, instance), 0.0, expires_at, instance, note)

    @classmethod
    def user(
        cls,
        issuer: str,
        sub: str,
        *,
        not_before: float,
        expires_at: float,
        note: Note | None = None,
        client_id: str | None = None,
    ) -> Revocation:
        """Revoke every session of user ``sub`` that began before ``not_before``: in every
        app of the realm, or (``client_id``) in that client's apps only."""
        kind = RevocationKind.USER
        subject = subject_of(kind, client_scope(issuer, client_id), sub)
        return cls(kind, subject, not_before, expires_at, sub, note)

    @classmethod
    def all_sessions(
        cls,
        issuer: str,
        client_id: str,
        *,
        not_before: float,
        expires_at: float,
        note: Note | None = None,
    ) -> Revocation:
        """Revoke every session of client ``client_id`` that began before ``not_before``."""
        kind = RevocationKind.ALL
        subject = subject_of(kind, issuer, client_id)
        return cls(kind, subject, not_before, expires_at, client_id, note)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Revocation):
            return NotImplemented
        return (self.kind, self.subject, self.not_before, self.expires_at) == (
            other.kind,
            other.subject,
            other.not_before,
            other.expires_at,
        )

    def __hash__(self) -> int:
        return hash((self.kind, self.subject, self.not_before, self.expires_at))


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The subjects one app session is looked up by, computed once per session.

    ``issued_at`` is when this app session began (its ID token's ``iat``): user- and
    client-wide entries revoke sessions issued strictly before their ``not_before``, as
    Keycloak compares a token's ``iat`` with its not-before.  ``None`` means unknown, which
    counts as revoked whenever such an entry exists.
    """

    #: the Keycloak session within this app's client
    session: int | None
    instance: int | None
    #: the user in every app of the realm (entries earlier versions wrote)
    user: int | None
    client: int
    issued_at: float | None
    #: the user within this app's client (entries of KC_SSO_SID_LOGOUT_SCOPE=user)
    client_user: int | None = None
    #: the Keycloak session in every app of the realm (entries earlier versions wrote,
    #: honoured until they expire)
    realm_session: int | None = None

    @classmethod
    def of(
        cls,
        issuer: str,
        client_id: str,
        *,
        sid: str | None,
        sub: str | None,
        instance: str | None,
        issued_at: float | None,
    ) -> SessionKeys:
        session_kind, user_kind = RevocationKind.SESSION, RevocationKind.USER
        scope = client_scope(issuer, client_id)
        return cls(
            session=None if sid is None else subject_of(session_kind, scope, sid),
            instance=None if instance is None else subject_of(session_kind, issuer, instance),
            user=None if sub is None else subject_of(user_kind, issuer, sub),
            client=subject_of(RevocationKind.ALL, issuer, client_id),
            issued_at=issued_at,
            client_user=None if sub is None else subject_of(user_kind, scope, sub),
            realm_session=None if sid is None else subject_of(session_kind, issuer, sid),
        )


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """Health of a store's replica, for the fail-open / fail-closed policy and for health."""

    #: the replica is known to be current (the shared store was reachable at the last check)
    available: bool
    #: why not, in plain words (for logs and the health endpoint); empty when available
    detail: str = ""
    #: not available because the store was closed on purpose (the app shutting down):
    #: requests still fail as the policy says, but nothing failed, so nothing is reported
    closed: bool = False
