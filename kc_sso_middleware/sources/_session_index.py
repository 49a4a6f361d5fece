"""Which server-side sessions belong to which Keycloak session, user and client.

Kept in the session backend's own Redis, next to the sessions, so that a revocation
recorded by any worker can delete the sessions it ends at once (a stolen session id is
then dead too, whichever worker it is replayed to).  ``key`` is the library's own key
function (Flask-Session's ``key_prefix + …``, starsessions' ``prefix(…)``):

* ``key("kc-sso:sid:<sid>")``: the sessions of one Keycloak session, and
  ``key("kc-sso:sid:<sid>#<jti>")``: the one app session a local logout ends;
* ``key("kc-sso:sub:<sub>")``: the sessions of one user;
* ``key("kc-sso:client:<client id>")``: every session of this client ("sign out all");
* ``key("kc-sso:ended:<session id>")``: a session deleted because its login was revoked,
  holding that login's claims (a tombstone, see :meth:`SessionIndex.bury`), so that a
  request still carrying the id can be told why it was signed out.

Each key is a sorted set of session ids, scored by when the member can be forgotten (its
Keycloak session's start plus ``KC_SSO_MAX_SESSION_LIFETIME``: such a session is refused
anyway).  Writing a key drops its members past that and sets its expiry to the lifetime,
so the index stays bounded with no sweeper.  A member is only a hint: before a session is
deleted its data is read again and must still hold a login the revocation ends.

starsessions takes any cookie value as a session id, so a client can have it store a
session under a name that is one of these keys; writing the index replaces whatever
stands under such a key that is not a sorted set.

Every operation is a :class:`~kc_sso_middleware._effects.BackendCall`: blocking for a
``redis.Redis`` client (Flask-Session), awaited for a ``redis.asyncio.Redis`` client
(starsessions).  Commands are queued the same way on both kinds of pipeline; only
``execute`` differs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from .._effects import BackendCall
from .._flows import Flow
from ..stores.model import Revocation, RevocationKind
from ..stores.replica import Replica
from .base import SessionIdentity

__all__ = ["SessionIndex"]

logger = logging.getLogger("kc_sso_middleware")

T = TypeVar("T")

Data = Mapping[str, Any]

_NAMES = {RevocationKind.SESSION: "sid", RevocationKind.USER: "sub", RevocationKind.ALL: "client"}
#: members read per round trip when a key is purged
SCAN_COUNT = 500
#: the one field of a tombstone (no session key of the examples' logins: a library that
#: reads one as a session finds no login in it)
ENDED_FIELD = "kc_sso_ended"

# KEYS[1] the index key; ARGV: score, session id, drop members scored below, key TTL
_ADD = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'zset' and kind ~= 'none' then redis.call('DEL', KEYS[1]) end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class SessionIndex:
    """The index of one app's server-side sessions in one Redis."""

    def __init__(
        self,
        client: Any,
        *,
        key: Callable[[str], str],
        decode: Callable[[Any], Data],
        asynchronous: bool,
        lifetime: int,
        client_id: str,
    ) -> None:
        self._client = client
        self._key = key
        self._decode = decode
        self._async = asynchronous
        self._lifetime = lifetime
        self._client_id = client_id

    def key_of(self, kind: RevocationKind, label: str) -> str | None:
        """The index key a revocation of ``kind`` for ``label`` names (``None``: not ours)."""
        if kind is RevocationKind.ALL and label != self._client_id:
            return None
        return self._key(f"kc-sso:{_NAMES[kind]}:{label}")

    def _keys(self, identity: SessionIdentity) -> list[str]:
        session = RevocationKind.SESSION
        labels = [(session, identity.sid), (session, identity.instance)]
        labels += [(RevocationKind.USER, identity.sub), (RevocationKind.ALL, self._client_id)]
        return [self._key(f"kc-sso:{_NAMES[kind]}:{label}") for kind, label in labels if label]

    # -- after a revocation -------------------------------------------------------------

    def purge(
        self,
        revocations: Sequence[Revocation],
        identity_of: Callable[[Data | None], SessionIdentity | None],
        clock: Callable[[], float],
        *,
        ours: Callable[[Data], bool] = lambda data: True,
    ) -> Flow[int]:
        """Delete the indexed sessions ``revocations`` end; how many were deleted.

        Each member's data is read again and judged as the request path would judge it
        (a replica holding just these entries): a member that no longer holds a login of
        the key (gone, or another login under a reused id) is only taken out of the key.
        A member holding another app's login (``ours`` says no: another client or realm
        sharing the backend's namespace, and so these keys) is left alone, in the key
        too: that app's own revocations end it.
        """
        keys = [
            (key, entry.kind, entry.label)
            for entry in revocations
            if entry.label and (key := self.key_of(entry.kind, entry.label)) is not None
        ]
        if not keys:
            return 0
        judge = Replica(timer=clock)
        judge.apply(revocations)
        deleted = 0
        for key, kind, label in keys:
            cursor = 0
            while True:
                cursor, members = yield from self.scan(key, cursor)
                if members:
                    datas = yield from self.read_many(members)
                    doomed: list[tuple[str, SessionIdentity]] = []
                    stale: list[str] = []
                    for session_id, data in zip(members, datas, strict=True):
                        if data is not None and not ours(data):
                            continue
                        identity = identity_of(data)
                        if identity is None or not _belongs(identity, kind, label):
                            stale.append(session_id)
                        elif judge.is_revoked(identity.keys):
                            doomed.append((session_id, identity))
                    if doomed:
                        yield from self.bury(doomed, clock())
                        deleted += len(doomed)
                    if doomed or stale:
                        yield from self.forget(key, stale, doomed)
                if cursor == 0:
                    break
        return deleted

    # -- operations ----------------------------------------------------------------------

    def add(self, session_id: str, identity: SessionIdentity, now: float) -> BackendCall[None]:
        """Index ``session_id`` under the Keycloak session, user and client it belongs to."""
        began = identity.auth_time if identity.auth_time is not None else now
        score = min(began, now) + self._lifetime
        keys = self._keys(identity)

        def build(pipe: Any) -> None:
            for key in keys:
                pipe.eval(_ADD, 1, key, score, session_id, now, self._lifetime)

        return self._call(build, lambda _: None, "index a server-side session")

    def scan(self, key: str, cursor: int) -> BackendCall[tuple[int, list[str]]]:
        """One batch of the members of ``key``: the next cursor (0: done) and session ids."""

        def build(pipe: Any) -> None:
            pipe.zscan(key, cursor, count=SCAN_COUNT)

        def finish(results: list[Any]) -> tuple[int, list[str]]:
            next_cursor, members = results[0]
            return int(next_cursor), [_text(member) for member, _score in members]

        return self._call(build, finish, "scan the server-side session index")

    def read_many(self, session_ids: Sequence[str]) -> BackendCall[list[Data | None]]:
        """The stored data of each session (``None``: none, or unreadable), as the library
        reads it: its key function, then its serializer."""

        def build(pipe: Any) -> None:
            for session_id in session_ids:
                pipe.get(self._key(session_id))

        def finish(results: list[Any]) -> list[Data | None]:
            return [self._decoded(raw) for raw in results]

        return self._call(build, finish, "read server-side sessions")

    def delete_many(self, session_ids: Sequence[str]) -> BackendCall[None]:
        """Delete sessions, as the library's own delete does (``DEL`` of its key)."""

        def build(pipe: Any) -> None:
            pipe.delete(*(self._key(session_id) for session_id in session_ids))

        return self._call(build, lambda _: None, "delete server-side sessions")

    def bury(
        self, sessions: Sequence[tuple[str, SessionIdentity]], now: float
    ) -> BackendCall[None]:
        """Delete sessions as :meth:`delete_many` does, each leaving a tombstone.

        The tombstone holds the claims of the revoked login (``sid``, ``sub``, ``iat``,
        ``auth_time``, the token id) for as long as that login could live (its start plus
        the lifetime), so a request still carrying the id is refused with the reason (the
        request-scoped marker) rather than passing as an unknown id.  It is no session:
        the library never reads it, and it vouches for nothing.
        """

        def build(pipe: Any) -> None:
            pipe.delete(*(self._key(session_id) for session_id, _ in sessions))
            for session_id, identity in sessions:
                began = identity.auth_time if identity.auth_time is not None else now
                ttl = int(min(began, now) + self._lifetime - now)
                if ttl > 0:
                    pipe.set(self._ended_key(session_id), _tombstone(identity), ex=ttl)

        return self._call(build, lambda _: None, "delete server-side sessions")

    def ended(self, session_id: str) -> BackendCall[Mapping[str, Any] | None]:
        """The claims of the revoked login a deleted session held (its tombstone), if any."""

        def build(pipe: Any) -> None:
            pipe.get(self._ended_key(session_id))

        return self._call(build, lambda results: _buried(results[0]), "read a tombstone")

    def _ended_key(self, session_id: str) -> str:
        return self._key(f"kc-sso:ended:{session_id}")

    def forget(
        self, key: str, stale: Sequence[str], deleted: Sequence[tuple[str, SessionIdentity]]
    ) -> BackendCall[None]:
        """Take ``stale`` members out of ``key``, and deleted sessions out of every key
        their login was indexed under."""

        def build(pipe: Any) -> None:
            if stale:
                pipe.zrem(key, *stale)
            for session_id, identity in deleted:
                for indexed in self._keys(identity):
                    pipe.zrem(indexed, session_id)

        return self._call(build, lambda _: None, "update the server-side session index")

    # -- plumbing -------------------------------------------------------------------------

    def _decoded(self, raw: Any) -> Data | None:
        if not raw:
            return None
        try:
            data = self._decode(raw)
        except Exception as exc:  # the library could not read it either
            logger.debug("server-side session data does not decode: %s", exc)
            return None
        return data if isinstance(data, Mapping) and data else None

    def _call(
        self, build: Callable[[Any], None], finish: Callable[[list[Any]], T], what: str
    ) -> BackendCall[T]:
        client = self._client
        if self._async:

            async def run_async() -> T:
                pipe = client.pipeline(transaction=False)
                build(pipe)
                return finish(await pipe.execute())

            return BackendCall(aio=run_async, what=what)

        def run() -> T:
            pipe = client.pipeline(transaction=False)
            build(pipe)
            return finish(pipe.execute())

        return BackendCall(sync=run, what=what)


def _tombstone(identity: SessionIdentity) -> str:
    """A revoked login's claims, from which ``identity_from_claims`` rebuilds it exactly."""
    token_id = None if identity.instance is None else identity.instance.split("#", 1)[1]
    claims = {
        "sid": identity.sid,
        "sub": identity.sub,
        "iat": identity.issued_at,
        "auth_time": identity.auth_time,
        "jti": token_id,
    }
    return json.dumps({ENDED_FIELD: {k: v for k, v in claims.items() if v is not None}})


def _buried(raw: Any) -> Mapping[str, Any] | None:
    """The claims a tombstone holds (``None``: none, or not a tombstone)."""
    if not raw:
        return None
    try:
        claims = json.loads(raw)[ENDED_FIELD]
    except (ValueError, TypeError, KeyError):
        return None
    return claims if isinstance(claims, Mapping) else None


def _belongs(identity: SessionIdentity, kind: RevocationKind, label: str) -> bool:
    """Whether a session's login is still one the index key of ``kind``/``label`` names."""
    if kind is RevocationKind.SESSION:
        return label in (identity.sid, identity.instance)
    if kind is RevocationKind.USER:
        return identity.sub == label
    return True  # the client's key: every login of this app
