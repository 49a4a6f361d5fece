"""Django's own session as an identity source: ``request.session``, loaded by Django.

What the source reads is what the app reads: the ``SessionStore`` that Django's
``SessionMiddleware`` put on the request, loaded by Django's own code (database, cache,
file or signed cookie, whichever ``SESSION_ENGINE`` names).  The Keycloak login in it is
the raw ID token mozilla-django-oidc keeps under ``oidc_id_token``
(``OIDC_STORE_ID_TOKEN = True``), else the token under ``KC_SSO_SESSION_ID_TOKEN_KEY``, else
the claims under ``KC_SSO_SESSION_CLAIMS_KEY``.  The token is not verified again: it sits in
a session the app's backend keeps (or signed), and the answer is only ever used to refuse.

* **Loading is I/O.**  A session not loaded yet makes :meth:`DjangoSessionSource.find`
  answer with a ``load`` flow (a :class:`~kc_sso_middleware._effects.BackendCall`), which
  the middleware performs directly under WSGI and through ``sync_to_async`` under ASGI.
  Django caches the loaded session on the request, so the app's own reads cost nothing
  more.  A signed-cookie session loads without I/O, in place.
* **Unchanged sessions are not decoded again.**  Readings are cached by session key and
  confirmed by comparing the stored token, within a byte bound.
* **Refusing** a session is Django's logout: ``django.contrib.auth.logout(request)`` sends
  ``user_logged_out``, flushes the session from its store and makes ``request.user``
  anonymous; ``SessionMiddleware`` then deletes the cookie on the way out.  The request
  goes on anonymous with ``request.kc_sso_signed_out`` set (``KC_SSO_REVOKED_ACTION=401``:
  it is answered 401 instead).
* **Purging**: after a revocation is recorded, the server-side sessions it matches are
  deleted at once through the :class:`~.models.SessionLink` index, so a stolen session key
  is dead too, whichever worker it reaches next.  Each leaves an
  :class:`~.models.EndedSession` (the link's columns): a request whose cookie names a
  session Django no longer has costs one look-up of it, and when it is there the request
  is refused like a revoked session, with ``request.kc_sso_signed_out`` saying why.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache, partial
from importlib import import_module
from typing import Any

from asgiref.sync import sync_to_async

from .._effects import BackendCall
from .._flows import Flow, done
from .._http import PASS, RequestHead, SignOut, Verdict, json_response
from ..errors import ConfigurationError
from ..settings import Settings
from ..sources.base import Finding, IdentitySource, LoginTokens, SessionIdentity
from ..sources.bearer import unverified_claims
from ..sources.cookies import identity_from_claims
from ..stores.model import Revocation, RevocationKind, SessionKeys, client_scope, subject_of

__all__ = ["MOZILLA_ID_TOKEN_KEY", "DjangoSessionSource"]

logger = logging.getLogger("kc_sso_middleware")

#: where mozilla-django-oidc keeps the raw ID token (``OIDC_STORE_ID_TOKEN = True``)
MOZILLA_ID_TOKEN_KEY = "oidc_id_token"
#: bytes of readings kept per worker (session keys and tokens, plus a fixed cost per entry)
CACHE_BYTES = 16 * 1024 * 1024
_ENTRY_OVERHEAD = 512
#: session keys deleted per query when purging
_CHUNK = 500
#: what a SessionLink and an EndedSession both hold, besides the session key
_LINK_COLUMNS = (
    "sid",
    "sub",
    "session_subject",
    "instance_subject",
    "user_subject",
    "client_subject",
    "issued_at",
    "expires_at",
)

Raw = str | Mapping[str, Any]


class _Reading:
    """A session's Keycloak login as last read (cached by session key)."""

    __slots__ = ("cost", "finding", "raw", "refresh_token")

    def __init__(self, raw: Raw, refresh_token: str | None, finding: Finding, cost: int) -> None:
        self.cost = cost
        self.raw = raw
        #: the refresh token it was read with (liveness asks about it: a rotated one is
        #: read again)
        self.refresh_token = refresh_token
        self.finding = finding


def _loaded(session: Any) -> bool:
    # SessionBase keeps what load() returned in _session_cache, set on first access.
    return hasattr(session, "_session_cache")


def _in_cookie(session: Any) -> bool:
    """Whether the session lives in its signed cookie (loading it needs no I/O)."""
    from django.contrib.sessions.backends.signed_cookies import SessionStore

    return isinstance(session, SessionStore)


def _engine() -> Any:
    """The ``SessionStore`` class of ``SESSION_ENGINE``, as ``SessionMiddleware`` finds it."""
    from django.conf import settings

    return import_module(settings.SESSION_ENGINE).SessionStore


def _session(request: Any) -> Any:
    try:
        return request.session
    except AttributeError:
        raise ConfigurationError(
            "the request has no session: put kc_sso_middleware.django.middleware."
            "SSOMiddleware after SessionMiddleware and AuthenticationMiddleware in MIDDLEWARE"
        ) from None


def _string(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


class DjangoSessionSource(IdentitySource):
    """Keycloak logins kept in Django's session (``request.session``)."""

    name = "django-session"
    #: what Django loaded (request.session), however its key reached Django: a session
    #: middleware may take it from elsewhere than the Cookie header, and the request check
    #: must ask this source whether or not the request has one
    reads = "native"

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock
        self._token_keys = tuple(
            dict.fromkeys((MOZILLA_ID_TOKEN_KEY, settings.session_id_token_key))
        )
        self._client_subject = subject_of(RevocationKind.ALL, settings.issuer, settings.client_id)
        self._revoked_401 = Verdict(
            response=json_response(
                401, {"error": "session_revoked", "error_description": "the session was logged out"}
            )
        )
        self._cache: dict[str, _Reading] = {}
        self._cache_bytes = 0
        self._lock = threading.Lock()

    # -- the request path ------------------------------------------------------------

    def find(self, head: RequestHead, now: float) -> Finding | None:
        request = head.native
        if request is None:
            return None  # not a Django request
        session = _session(request)
        if session.session_key is None:
            return None  # no session cookie
        if not _loaded(session) and not _in_cookie(session):
            return Finding(self, (), load=self._load(request, now))
        finding = self._read(request, now)
        if finding is None and _dangling(request) is not None:
            return Finding(self, (), load=self._load(request, now))  # the look-up is I/O
        return finding

    def _load(self, request: Any, now: float) -> Flow[Finding | None]:
        read = partial(self._read_stored, request, now)
        finding = yield from BackendCall(sync=read, aio=sync_to_async(read), what="session load")
        return finding

    def _read_stored(self, request: Any, now: float) -> Finding | None:
        """:meth:`_read`; for a cookie naming a session Django does not have, the login an
        :class:`~.models.EndedSession` says it held (blocking)."""
        finding = self._read(request, now)
        if finding is not None:
            return finding
        key = _dangling(request)
        if key is None:
            return None
        from .models import EndedSession

        ended = EndedSession.objects.filter(session_key=key, expires_at__gte=now).first()
        if ended is None:
            return None
        keys = SessionKeys(
            session=ended.session_subject,
            instance=ended.instance_subject,
            user=ended.user_subject,
            client=ended.client_subject,
            issued_at=ended.issued_at,
            # The user within this client: what a logout token without sid revokes.
            client_user=(
                None
                if ended.sub is None
                else subject_of(
                    RevocationKind.USER,
                    client_scope(self._settings.issuer, self._settings.client_id),
                    ended.sub,
                )
            ),
            realm_session=(
                None
                if ended.sid is None
                else subject_of(RevocationKind.SESSION, self._settings.issuer, ended.sid)
            ),
        )
        identity = SessionIdentity(ended.sid, ended.sub, None, ended.issued_at, None, keys)
        return Finding(self, (identity,), valid_until=0.0)

    def _read(self, request: Any, now: float) -> Finding | None:
        """The finding for a session Django has loaded (or loads now, without I/O)."""
        session = request.session
        raw = self._raw(session)
        if raw is None:
            if _oidc_login(session):
                # mozilla-django-oidc's backend logged this session in, yet it holds no
                # Keycloak login (Django's login() flushed the ID token the backend had
                # stored, when the session was another user's; or OIDC_STORE_ID_TOKEN is
                # off): no revocation could ever reach it.  End it, as a malformed one.
                logger.warning("a Django session logged in by OIDC holds no Keycloak login: ended")
                return Finding(self, (), clean=Verdict(pending=self._end(request, PASS)))
            return None  # no Keycloak login in this session (anonymous, or another backend)
        key: str | None = session.session_key
        refresh_token = _string(session.get(self._settings.session_refresh_token_key))
        hit = self._cache.get(key) if key is not None else None
        if (
            hit is not None
            and hit.raw == raw
            and hit.refresh_token == refresh_token
            and now < hit.finding.valid_until
        ):
            return hit.finding
        try:
            identity = self._identity(raw, refresh_token)
        except ValueError as exc:
            logger.debug("Django session holds a malformed Keycloak login: %s", exc)
            # Nothing here can be vouched for: end the session, let the request go on.
            return Finding(self, (), clean=Verdict(pending=self._end(request, PASS)))
        if identity is None:
            return None
        if identity.auth_time is None:
            # Claims with neither iat nor auth_time (an ID token always has iat): nothing
            # bounds the login by KC_SSO_MAX_SESSION_LIFETIME, and Django's session API
            # gives no signature time to fall back on (as the cookie source does), so once
            # its revocation expired such a session would be accepted again: ended.
            logger.warning(
                "a Django session's Keycloak login has no iat or auth_time: ended (its age "
                "cannot be bounded by KC_SSO_MAX_SESSION_LIFETIME)"
            )
            return Finding(self, (), clean=Verdict(pending=self._end(request, PASS)))
        # Past its lifetime the session must be judged again (and refused).
        valid_until = identity.auth_time + self._settings.max_session_lifetime
        finding = Finding(self, (identity,), valid_until=valid_until)
        if key is not None:
            self._remember(key, raw, refresh_token, finding)
        return finding

    def _raw(self, session: Any) -> Raw | None:
        """The stored ID token, else the stored claims (what the login is judged by)."""
        for name in self._token_keys:
            token = _string(session.get(name))
            if token is not None:
                return token
        claims = session.get(self._settings.session_claims_key)
        return claims if isinstance(claims, Mapping) else None

    def _identity(self, raw: Raw, refresh_token: str | None = None) -> SessionIdentity | None:
        """The login ``raw`` describes; with the session's refresh token, for liveness."""
        if isinstance(raw, str):
            claims = unverified_claims(raw)
            if claims is None:
                raise ValueError("the stored ID token is not a JWT")
            raw = claims
        return identity_from_claims(raw, self._settings, refresh_token=refresh_token)

    def identity_of(self, session: Any) -> SessionIdentity | None:
        """The Keycloak login a loaded session holds (``None``: none, or a malformed one)."""
        raw = self._raw(session)
        if raw is None:
            return None
        try:
            return self._identity(raw)
        except ValueError:
            return None

    def _remember(self, key: str, raw: Raw, refresh_token: str | None, finding: Finding) -> None:
        cost = len(key) + (len(raw) if isinstance(raw, str) else 0) + _ENTRY_OVERHEAD
        cost += len(refresh_token or "")
        with self._lock:
            replaced = self._cache.get(key)
            if replaced is not None:  # read again: its bytes are counted once
                self._cache_bytes -= replaced.cost
            if self._cache_bytes + cost > CACHE_BYTES:
                # A plain dict, cleared when full (as the cookie source's cache): live
                # sessions refill it on their next request.
                self._cache.clear()
                self._cache_bytes = 0
            self._cache[key] = _Reading(raw, refresh_token, finding, cost)
            self._cache_bytes += cost

    def refuse(self, finding: Finding, head: RequestHead, signed_out: SignOut) -> Verdict:
        if self._settings.revoked_action == "401":
            then = self._revoked_401
        else:
            then = Verdict(signed_out=signed_out)  # the app runs, anonymous, and is told why
        return Verdict(pending=self._end(head.native, then))

    def _end(self, request: Any, then: Verdict) -> Flow[Verdict]:
        """Django's logout of ``request`` (flush, signal, anonymous user), then ``then``."""
        key = request.session.session_key
        if key is not None:
            self._cache.pop(key, None)
        end = partial(_logout, request)
        yield from BackendCall(sync=end, aio=sync_to_async(end), what="Django logout")
        return then

    def end_session(self, request: Any) -> None:
        """End ``request``'s session the way a refused one ends (blocking)."""
        key = request.session.session_key
        if key is not None:
            self._cache.pop(key, None)
        _logout(request)

    def expiry_headers(self, root_path: str = "") -> tuple[str, ...]:
        """The Django session cookie, expired: responses carrying it end the session.

        The middleware turns it into Django's own logout (the session flushed from its
        store; ``SessionMiddleware`` deletes the cookie with Django's attributes).
        """
        from django.conf import settings

        parts = [
            f"{settings.SESSION_COOKIE_NAME}=",
            "Expires=Thu, 01 Jan 1970 00:00:00 GMT",
            "Max-Age=0",
            f"Path={settings.SESSION_COOKIE_PATH}",
        ]
        if settings.SESSION_COOKIE_DOMAIN:
            parts.append(f"Domain={settings.SESSION_COOKIE_DOMAIN}")
        if settings.SESSION_COOKIE_SECURE:
            parts.append("Secure")
        if settings.SESSION_COOKIE_HTTPONLY:
            parts.append("HttpOnly")
        if settings.SESSION_COOKIE_SAMESITE:
            parts.append(f"SameSite={settings.SESSION_COOKIE_SAMESITE}")
        return ("; ".join(parts),)

    # -- the logout path ---------------------------------------------------------------

    def tokens(self, head: RequestHead, now: float) -> Flow[LoginTokens | None]:
        request = head.native
        if request is None or _session(request).session_key is None:
            return done(None)
        if _loaded(request.session) or _in_cookie(request.session):
            return done(self._tokens(request))
        return self._load_tokens(request)

    def _load_tokens(self, request: Any) -> Flow[LoginTokens | None]:
        read = partial(self._tokens, request)
        tokens = yield from BackendCall(sync=read, aio=sync_to_async(read), what="session load")
        return tokens

    def _tokens(self, request: Any) -> LoginTokens | None:
        session = request.session
        id_token = next(
            (t for t in (_string(session.get(name)) for name in self._token_keys) if t), None
        )
        refresh_token = _string(session.get(self._settings.session_refresh_token_key))
        if id_token is None and refresh_token is None:
            return None
        return LoginTokens(id_token, refresh_token)

    # -- the index and purging ---------------------------------------------------------

    def link(self, request: Any) -> None:
        """Index the session of a login that just happened (``user_logged_in``; blocking)."""
        session = _session(request)
        if session.session_key is None or _in_cookie(session):
            return
        identity = self.identity_of(session)
        if identity is None:
            return
        from .models import SessionLink

        now = self._clock()
        began = identity.auth_time if identity.auth_time is not None else now
        SessionLink.objects.filter(expires_at__lt=now).delete()
        SessionLink.objects.update_or_create(
            session_key=session.session_key,
            defaults={
                "sid": identity.sid,
                "sub": identity.sub,
                "session_subject": identity.keys.session,
                "instance_subject": identity.keys.instance,
                "user_subject": identity.keys.user,
                "client_subject": identity.keys.client,
                "issued_at": identity.issued_at,
                "expires_at": began + self._settings.max_session_lifetime,
            },
        )

    @staticmethod
    def unlink(session_key: str | None) -> None:
        """Drop the index row of a session that ends (``user_logged_out``; blocking)."""
        if session_key is None:
            return
        from .models import SessionLink

        SessionLink.objects.filter(session_key=session_key).delete()

    def purge(self, revocations: Sequence[Revocation]) -> Flow[None]:
        if not revocations or issubclass(_engine(), _cookie_store()):
            return  # signed cookies: nothing server-side to delete
        delete = partial(self.purge_now, revocations)
        yield from BackendCall(sync=delete, aio=sync_to_async(delete), what="session purge")

    def _user_match(self, revocation: Revocation) -> Any:
        """The index rows a user entry matches: an entry scoped to this app's client (a
        logout token without sid, ``KC_SSO_SID_LOGOUT_SCOPE=user``) names the same
        ``user_subject``, in this client's sessions only (the request check of another
        client sharing the table does not refuse by it)."""
        from django.db.models import Q

        sub, settings = revocation.label, self._settings
        kind = RevocationKind.USER
        if sub is not None and revocation.subject == subject_of(
            kind, client_scope(settings.issuer, settings.client_id), sub
        ):
            realm_user = subject_of(kind, settings.issuer, sub)
            return Q(user_subject=realm_user, client_subject=self._client_subject)
        return Q(user_subject=revocation.subject)

    def _session_match(self, revocation: Revocation) -> Any:
        """The index rows a session entry matches: its subject, and for a ``sid`` the rows
        of this client indexed by the other scope of the same ``sid`` (a row an earlier
        version linked by the realm-wide subject, a realm-wide entry an earlier version
        wrote): a session entry of another client matches none of this client's rows."""
        from django.db.models import Q

        subject, sid, settings = revocation.subject, revocation.label, self._settings
        match = Q(session_subject=subject) | Q(instance_subject=subject)
        if sid is None:
            return match
        kind = RevocationKind.SESSION
        ours = subject_of(kind, client_scope(settings.issuer, settings.client_id), sid)
        realm = subject_of(kind, settings.issuer, sid)
        if subject in (ours, realm):
            match |= Q(session_subject__in=(ours, realm), client_subject=self._client_subject)
        return match

    def purge_now(self, revocations: Sequence[Revocation]) -> int:
        """Delete the Django sessions ``revocations`` match; how many (blocking)."""
        from django.db.models import Q

        from .models import EndedSession, SessionLink

        match = Q()
        for revocation in revocations:
            subject = revocation.subject
            older = Q(issued_at__lt=revocation.not_before) | Q(issued_at__isnull=True)
            if revocation.kind is RevocationKind.SESSION:
                match |= self._session_match(revocation)
            elif revocation.kind is RevocationKind.USER:
                match |= self._user_match(revocation) & older
            elif subject == self._client_subject:
                match |= Q(client_subject=subject) & older
        if not match:
            return 0
        links = list(SessionLink.objects.filter(match))
        keys = [link.session_key for link in links]
        engine = _engine()
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            _delete_sessions(engine, chunk)
            EndedSession.objects.bulk_create(
                [_ended(link) for link in links[start : start + _CHUNK]], ignore_conflicts=True
            )
            SessionLink.objects.filter(session_key__in=chunk).delete()
        EndedSession.objects.filter(expires_at__lt=self._clock()).delete()
        if keys:
            logger.info("deleted %d Django session(s) of revoked Keycloak sessions", len(keys))
        return len(keys)


def _ended(link: Any) -> Any:
    """The tombstone of the session ``link`` names: the same columns."""
    from .models import EndedSession

    return EndedSession(
        session_key=link.session_key, **{name: getattr(link, name) for name in _LINK_COLUMNS}
    )


def _dangling(request: Any) -> str | None:
    """The key the session cookie names, when Django loaded no such session (it was deleted,
    or expired, or never existed); ``None`` otherwise."""
    session = request.session
    if session.session_key is not None or not _loaded(session) or _in_cookie(session):
        return None
    from django.conf import settings

    key = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
    return key if isinstance(key, str) and key else None


def _cookie_store() -> type[Any]:
    from django.contrib.sessions.backends.signed_cookies import SessionStore

    cookie_store: type[Any] = SessionStore
    return cookie_store


def _delete_sessions(engine: Any, keys: list[str]) -> None:
    """Delete sessions from the store ``engine`` keeps them in (one query for the database)."""
    from django.contrib.sessions.backends.db import SessionStore as DatabaseStore

    if engine is DatabaseStore:
        engine.get_model_class().objects.filter(session_key__in=keys).delete()
        return
    store = engine()
    for key in keys:
        store.delete(key)  # cache, cached_db, file: each the engine's own way


def _oidc_login(session: Any) -> bool:
    """Whether mozilla-django-oidc's backend (or a subclass) logged ``session`` in."""
    from django.contrib.auth import BACKEND_SESSION_KEY

    backend = session.get(BACKEND_SESSION_KEY)
    return isinstance(backend, str) and is_oidc_backend(backend)


@lru_cache(maxsize=64)
def is_oidc_backend(path: str) -> bool:
    """Whether the authentication backend at ``path`` is mozilla-django-oidc's or a subclass."""
    from django.utils.module_loading import import_string

    try:
        from mozilla_django_oidc.auth import OIDCAuthenticationBackend

        backend = import_string(path)
    except ImportError:
        return False
    return isinstance(backend, type) and issubclass(backend, OIDCAuthenticationBackend)


def _logout(request: Any) -> None:
    from django.contrib.auth import logout

    logout(request)
    # logout() replaces request.user, not the users AuthenticationMiddleware's accessors
    # cached on the request: ``await request.auser()`` would still give the old one to a
    # view when a middleware before this one had asked for it.
    for cached in ("_cached_user", "_acached_user"):
        request.__dict__.pop(cached, None)
