"""Server-side sessions as an identity source: the browser holds an opaque session id.

Flask-Session (:mod:`.flask_session`) and starsessions (:mod:`.starsessions`) keep a
session's data in a backend and give the browser only its id.  This module is what both
share; each library's module says how that library reads, writes and deletes.

What the middleware reads
-------------------------
The session id is taken from the Cookie header with the same parser the library uses
(Werkzeug's for Flask-Session, Starlette's for starsessions, see :mod:`.cookie_views`),
and the session's data is read through the library's own objects (its store, its key
function, its serializer).  The Keycloak login in the data is found under the same keys as
in a cookie session (``KC_SSO_SESSION_ID_TOKEN_KEY``, else ``KC_SSO_SESSION_CLAIMS_KEY``).
An id with no stored data passes untouched (the library starts a new session); so does a
session whose data holds no Keycloak login (e.g. the OAuth ``state`` kept before login).

Cost
----
Each worker caches what it read, session id → finding, within a byte bound, and only for
ids that have stored data: junk ids cost a backend read each, never memory that stays.  A
cached reading is trusted for :data:`RECHECK_SECONDS` (and never past the session's
``KC_SSO_MAX_SESSION_LIFETIME``), then read again.  A cache miss is a
:class:`~kc_sso_middleware.sources.base.Finding` with a ``load`` flow: the adapter performs
its :class:`~kc_sso_middleware._effects.BackendCall` (blocking under WSGI, awaited under
ASGI) before the request is judged.

Learning which session is whose
-------------------------------
The middleware learns the Keycloak session, user and client a server-side session belongs
to twice: **at login**, when the library saves session data holding a login (each library
module observes its library's save), and whenever a worker loads a session it did not
know with that login.  It writes what it learned to an index in the session backend's
Redis (:mod:`._session_index`; only for Redis backends).

Revoked
-------
A revoked session is refused (:meth:`ServerSideSessionSource.refuse`): its data is read
again first, since another worker may have written a new login under the same id (a
library may reuse an id); if it still holds the revoked login it is **deleted from the
backend**, the cookie is taken out of the request and expired in the response (or 401
with ``KC_SSO_REVOKED_ACTION=401``).  When the revocation is recorded, before the
back-channel (or admin, front-channel, local logout) request is answered,
:meth:`ServerSideSessionSource.purge` deletes every indexed session it ends at once, so a
stolen session id is dead on every worker of every host.  Each deleted session leaves a
tombstone in the index holding the revoked login: the next request carrying its id (the
user's browser, in another app of a single sign-out) is refused like a revoked session,
with the request-scoped marker saying why, instead of passing as an unknown id.  An id
with no stored data therefore costs a second backend read.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from .._effects import BackendCall
from .._flows import Flow
from .._http import RequestHead, Response, SignOut, Verdict, json_response
from ..settings import Settings
from ..stores.base import RevocationStore
from ..stores.model import Revocation
from ._session_index import SessionIndex
from ._tails import TAIL, TailMemory
from .base import Finding, IdentitySource, LoginTokens, SessionIdentity
from .cookie_views import CookieView, plain_span
from .cookies import (
    identity_from_claims,
    identity_from_session,
    login_of_this_app,
    session_tokens,
)

__all__ = ["RECHECK_SECONDS", "ServerSideSessionSource", "SessionFinding"]

logger = logging.getLogger("kc_sso_middleware")

Data = Mapping[str, Any]

#: seconds a worker trusts what it read of a session before reading it again
RECHECK_SECONDS = 60.0
#: bytes of readings kept per worker (session ids, plus a fixed cost per entry)
CACHE_BYTES = 32 * 1024 * 1024
_ENTRY_OVERHEAD = 768
#: bytes of Cookie headers remembered with the session cookie value each holds (a header
#: reads the same whatever the time: which session it names is decided every time)
HEADER_CACHE_BYTES = 8 * 1024 * 1024
#: what a request gets while the session backend cannot be read (the app could not either)
_UNAVAILABLE = Verdict(
    response=json_response(
        503,
        {
            "error": "temporarily_unavailable",
            "error_description": "session_backend_unavailable: "
            "the session backend cannot be reached",
        },
        ("Retry-After", "5"),
    )
)


def _revoked_answer(expire: str) -> Response:
    """``KC_SSO_REVOKED_ACTION=401``: the cookie source's answer, with this cookie expired."""
    return json_response(
        401,
        {"error": "session_revoked", "error_description": "the session was logged out"},
        ("Set-Cookie", expire),
    )


class SessionFinding(Finding):
    """A finding for one server-side session: which cookie value, which stored session."""

    __slots__ = ("login", "read_at", "session_id", "value")

    def __init__(
        self,
        source: IdentitySource,
        identities: tuple[SessionIdentity, ...],
        *,
        value: str,
        session_id: str,
        valid_until: float,
    ) -> None:
        super().__init__(source, identities, valid_until=valid_until)
        self.value = value
        self.session_id = session_id
        #: the session data's login values this reading was made from (see
        #: :func:`login_values`): the same login saved again, as starsessions saves the
        #: session on every response, is known without reading its tokens again
        self.login: tuple[Any, ...] | None = None
        #: the revocation store's version before the data was read (-1: not known)
        self.read_at = -1


class _Readings:
    """Session id → finding, bounded in bytes; only ids that had stored data go in."""

    def __init__(self) -> None:
        #: read directly on the request path (a dict look-up is atomic under the GIL);
        #: changed only through put() and drop()
        self.entries: dict[str, SessionFinding] = {}
        self.size = 0
        self._lock = threading.Lock()

    def get(self, value: str) -> SessionFinding | None:
        return self.entries.get(value)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.entries))

    def put(self, value: str, finding: SessionFinding) -> None:
        with self._lock:
            if self.entries.pop(value, None) is not None:
                self.size -= len(value) + _ENTRY_OVERHEAD
            cost = len(value) + _ENTRY_OVERHEAD
            if self.size + cost > CACHE_BYTES:
                # As the cookie cache: a plain dict, cleared when full; live browsers
                # refill it with one backend read each.
                self.entries.clear()
                self.size = 0
            self.entries[value] = finding
            self.size += cost

    def drop(self, value: str) -> None:
        with self._lock:
            if self.entries.pop(value, None) is not None:
                self.size -= len(value) + _ENTRY_OVERHEAD


class ServerSideSessionSource(IdentitySource):
    """A session whose data a backend keeps under the id in the session cookie."""

    name = "server-side session"
    readings_may_lag = True

    def __init__(
        self,
        settings: Settings,
        *,
        cookie_name: str,
        view: CookieView,
        expire: str,
        clock: Callable[[], float],
        store: RevocationStore | None = None,
        index: SessionIndex | None = None,
    ) -> None:
        """``expire`` is the ``Set-Cookie`` value that ends the library's cookie; ``store``
        lets a refusal judge a new login found under a reused id at once (see
        :meth:`refuse`); ``index`` is the Redis index, for backends that have one."""
        self._settings = settings
        #: the session keys :func:`login_values` reads (the settings' names, once)
        self._login_keys = (
            settings.session_id_token_key,
            settings.session_claims_key,
            settings.session_refresh_token_key,
        )
        self._cookie = cookie_name
        self._cookie_bytes = cookie_name.encode("latin-1")
        self._view = view
        self._clock = clock
        self._store = store
        self._index = index
        self._lifetime = settings.max_session_lifetime
        self._expire = (expire,)
        self._revoked_401 = Verdict(response=_revoked_answer(expire))
        self._cache = _Readings()
        #: single plain Cookie headers -> the session cookie value (None: none in it)
        self._headers: TailMemory[str | None] = TailMemory(HEADER_CACHE_BYTES, _ENTRY_OVERHEAD)

    # -- what each library says ---------------------------------------------------------

    def _session_id(self, value: str) -> str | None:
        """The library's session id for a cookie value (``None``: it starts a new session)."""
        return value

    def _cookie_value(self, session_id: str) -> str:
        """The cookie value the library writes for ``session_id``."""
        return session_id

    @abc.abstractmethod
    def _read(self, session_id: str) -> BackendCall[Data | None]:
        """The session's stored data, read by the library (``None``: none)."""

    @abc.abstractmethod
    def _delete(self, session_id: str) -> BackendCall[None]:
        """Delete the session from the backend, by the library."""

    # -- the request path ----------------------------------------------------------------

    def find(self, head: RequestHead, now: float) -> Finding | None:
        value = self._value(head.cookies)
        if not value:
            return None  # no session id: the library starts a new session
        hit = self._cache.entries.get(value)  # every request: no method call between
        if hit is not None and now < hit.valid_until and self._current(hit):
            return hit
        return Finding(self, (), load=self._load(head, value, now))

    def _current(self, reading: SessionFinding) -> bool:
        """Whether a cached reading may stand for what the backend holds now.

        Without an index, a login another worker saved under this id and that was
        revoked since stays in the backend (only an index finds it to delete it): a
        reading made before the store's last change is read again, so the app never
        loads a revoked login this worker's reading did not know of.
        """
        store = self._store
        return self._index is not None or store is None or reading.read_at == store.version

    def _value(self, cookies: Sequence[str | bytes]) -> str | None:
        """The session cookie's value exactly as the library's parser reads it."""
        if len(cookies) == 1:
            raw = cookies[0]
            seen = self._headers.entries.get(raw[-TAIL:])
            if seen is not None and seen[0] == raw:
                return seen[1]
            span = plain_span(raw, self._cookie if type(raw) is str else self._cookie_bytes)
            if span is not None:
                start, end = span
                if start < 0:
                    self._headers.put(raw, None)
                    return None
                value = raw[start:end]
                text = value if isinstance(value, str) else value.decode("latin-1")
                # Beyond ASCII the parsers' readings part (latin-1 text, charsets): let
                # the library's parser itself say.
                if text.isascii():
                    self._headers.put(raw, text)
                    return text
        elif not cookies:
            return None
        return self._view.chosen(cookies, self._cookie)

    def _load(self, head: RequestHead, value: str, now: float) -> Flow[Finding | None]:
        """Read the session, remember what it holds, and index a login not known yet."""
        session_id = self._session_id(value)
        if not session_id:
            return None
        version = self._version()  # before the read: a later change makes it stale
        try:
            data = yield from self._read(session_id)
        except Exception as exc:
            logger.warning("%s: the session backend could not be read: %s", self.name, exc)
            return Finding(self, (), clean=_UNAVAILABLE)
        if not data:
            # No stored data: the library starts a new session, unless the id is that of a
            # session deleted for a revocation, which is refused and says why.
            ended = yield from self._ended(value, session_id)
            return ended
        try:
            finding = self._finding(value, session_id, data, now, version)
        except ValueError as exc:
            logger.debug("%s: the session holds a malformed Keycloak login: %s", self.name, exc)
            return Finding(self, (), clean=self._stripped(head))
        known = self._cache.get(value)
        self._cache.put(value, finding)
        if known is None or known.identities != finding.identities:
            yield from self._learn(session_id, finding, now)
        return finding

    def _ended(self, value: str, session_id: str) -> Flow[Finding | None]:
        """The revoked login a deleted session held, from its tombstone (never cached)."""
        if self._index is None:
            return None
        try:
            claims = yield from self._index.ended(session_id)
            identity = None if claims is None else identity_from_claims(claims, self._settings)
        except Exception as exc:  # no explanation; the id gets no session either way
            logger.debug("%s: could not read a tombstone: %s", self.name, exc)
            return None
        if identity is None:
            return None
        return SessionFinding(
            self, (identity,), value=value, session_id=session_id, valid_until=0.0
        )

    def _version(self) -> int:
        store = self._store
        return -1 if store is None else store.version

    def _finding(
        self, value: str, session_id: str, data: Data, now: float, read_at: int
    ) -> SessionFinding:
        """What ``data`` (read at store version ``read_at``) says; raises ``ValueError``
        for a malformed login."""
        identity = identity_from_session(data, self._settings)
        valid_until = now + RECHECK_SECONDS
        if identity is not None and identity.auth_time is not None:
            # Past its lifetime the session must be judged again (and refused).
            valid_until = min(valid_until, identity.auth_time + self._lifetime)
        identities = () if identity is None else (identity,)
        finding = SessionFinding(
            self, identities, value=value, session_id=session_id, valid_until=valid_until
        )
        finding.login = login_values(data, self._login_keys)
        finding.read_at = read_at
        return finding

    def _learn(self, session_id: str, finding: SessionFinding, now: float) -> Flow[None]:
        if self._index is None or not finding.identities:
            return
        try:
            yield from self._index.add(session_id, finding.identities[0], now)
        except Exception as exc:  # the revocation is still enforced on every request
            logger.error("%s: could not index a session: %s", self.name, exc)

    # -- refusing ------------------------------------------------------------------------

    def refuse(self, finding: Finding, head: RequestHead, signed_out: SignOut) -> Verdict:
        """Read the session again; delete it if it still holds the revoked login.

        Another worker may have written a new login under the same id since this worker
        read it: that new login is judged on its own (with the revocation store the
        source was given; without one it passes this once and is judged from the next
        request on) and is never deleted for the old one's revocation.
        """
        return Verdict(pending=self._refusal(finding, head, signed_out))

    def _refusal(self, finding: Finding, head: RequestHead, signed_out: SignOut) -> Flow[Verdict]:
        if not isinstance(finding, SessionFinding):
            return self._refused(head, signed_out)
        value, session_id = finding.value, finding.session_id
        now = self._clock()
        version = self._version()
        try:
            data = yield from self._read(session_id)
        except Exception as exc:  # cannot confirm: refuse, delete nothing
            logger.warning("%s: the session backend could not be read: %s", self.name, exc)
            return self._refused(head, signed_out)
        if not data:
            self._cache.drop(value)
            return self._refused(head, signed_out)
        try:
            fresh = self._finding(value, session_id, data, now, version)
        except ValueError:
            self._cache.drop(value)
            return self._refused(head, signed_out)
        if fresh.identities != finding.identities and not self._revoked(fresh, now):
            logger.debug("%s: a new login under a reused session id; not refused", self.name)
            self._cache.put(value, fresh)
            yield from self._learn(session_id, fresh, now)
            return fresh.clean
        try:
            yield from self._delete(session_id)
        except Exception as exc:  # refused all the same; deleted when presented again
            logger.error("%s: could not delete a revoked session: %s", self.name, exc)
        self._cache.drop(value)
        return self._refused(head, signed_out)

    def _revoked(self, finding: Finding, now: float) -> bool:
        """The core's rule for ``finding``, where the source has the store to ask."""
        for identity in finding.identities:
            if identity.auth_time is not None and identity.auth_time + self._lifetime < now:
                return True
            if self._store is not None and self._store.is_revoked(identity.keys):
                return True
        return False

    def _refused(self, head: RequestHead, signed_out: SignOut) -> Verdict:
        if self._settings.revoked_action == "401":
            return self._revoked_401
        cookie = self._view.without(head.cookies, self._cookie)
        return Verdict(cookie=cookie, set_cookies=self._expire, signed_out=signed_out)

    def _stripped(self, head: RequestHead) -> Verdict:
        return Verdict(
            cookie=self._view.without(head.cookies, self._cookie), set_cookies=self._expire
        )

    def expiry_headers(self, root_path: str = "") -> tuple[str, ...]:
        return self._expire

    # -- the logout path -----------------------------------------------------------------

    def tokens(self, head: RequestHead, now: float) -> Flow[LoginTokens | None]:
        value = self._value(head.cookies)
        session_id = self._session_id(value) if value else None
        if not session_id:
            return None
        try:
            data = yield from self._read(session_id)
        except Exception as exc:
            logger.warning("%s: the session backend could not be read: %s", self.name, exc)
            return None
        return session_tokens(data, self._settings) if data else None

    def end(self, head: RequestHead) -> Flow[None]:
        """Delete the request's own session from the backend (the logout path)."""
        value = self._value(head.cookies)
        session_id = self._session_id(value) if value else None
        if not value or not session_id:
            return
        self._cache.drop(value)
        yield from self._delete(session_id)

    # -- after a revocation --------------------------------------------------------------

    def purge(self, revocations: Sequence[Revocation]) -> Flow[None]:
        """Delete every indexed session ``revocations`` end (their data read again first)."""
        if self._index is None:
            return
        deleted = yield from self._index.purge(
            revocations, self._identity_or_none, self._clock, ours=self._ours
        )
        if deleted:
            logger.info("%s: deleted %d revoked session(s) from the backend", self.name, deleted)

    def _ours(self, data: Data) -> bool:
        return login_of_this_app(data, self._settings)

    def _identity_or_none(self, data: Data | None) -> SessionIdentity | None:
        if not data:
            return None
        try:
            return identity_from_session(data, self._settings)
        except ValueError:
            return None

    # -- what the library just saved -----------------------------------------------------

    def observed(self, session_id: str, data: Data | None) -> BackendCall[None] | None:
        """The library just saved ``data`` under ``session_id`` (``None``: deleted it).

        Updates this worker's reading and returns the index write to perform when the
        data holds a login this worker did not know under that id (at login).
        """
        value = self._cookie_value(session_id)
        if not data:
            self._cache.drop(value)
            return None
        login = login_values(data, self._login_keys)
        known = self._cache.entries.get(value)
        if known is not None and known.login == login:
            return None  # the login this reading was made from, saved again
        now = self._clock()
        try:
            finding = self._finding(value, session_id, data, now, self._version())
        except ValueError:
            self._cache.drop(value)
            return None
        if known is not None and known.identities == finding.identities:
            known.login = login
            return None  # nothing new: keep the reading (and when it was last checked)
        self._cache.put(value, finding)
        if self._index is None or not finding.identities:
            return None
        return self._index.add(session_id, finding.identities[0], now)


def login_values(data: Data, keys: tuple[str, str, str]) -> tuple[Any, ...]:
    """What of a session's data its Keycloak login is read from (the ID token, else the
    claims; the refresh token), under ``keys`` (the ID token's, the claims', the refresh
    token's session key): equal values, equal login."""
    id_token_key, claims_key, refresh_key = keys
    id_token = data.get(id_token_key)
    claims = data.get(claims_key) if id_token is None else None
    return (id_token, claims, data.get(refresh_key))
