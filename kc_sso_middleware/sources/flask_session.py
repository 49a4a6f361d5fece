"""Flask-Session's server-side sessions as an identity source (WSGI, blocking I/O).

Used automatically by :class:`kc_sso_middleware.wsgi.SSOMiddleware` when the Flask app
behind ``app.wsgi_app`` has a Flask-Session interface (``Session(app)``); the app stores
the login in ``flask.session`` at its login callback as with cookie sessions.

Read exactly as Flask-Session reads it (``ServerSideSessionInterface.open_session``): the
id is ``request.cookies.get(SESSION_COOKIE_NAME)`` (Werkzeug's parser, first value wins),
unsigned with the library's own signer when the deprecated ``SESSION_USE_SIGNER`` is on,
and its data is ``interface._retrieve_session_data(interface._get_store_id(id))``.  A
revoked session is deleted with ``interface._delete_session``, and its cookie expired with
the app's ``SESSION_COOKIE_*`` name, path, domain and flags.

At login: the source wraps the ``save_session`` of the app's Flask-Session interface (the
library's own method is called unchanged, then the source looks at what was saved), so
when a response has just written session data holding a Keycloak login, the session is
indexed at once.  Sessions found by a worker that did not see the login are indexed when
it first reads them.

Every Flask-Session backend works for refusing and for deleting a revoked session when it
is presented; only the Redis backend (``SESSION_TYPE="redis"``) has the index, kept under
the same ``SESSION_KEY_PREFIX``, that deletes sessions the moment they are revoked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from .._effects import BackendCall
from ..errors import ConfigurationError
from ..settings import Settings
from ..stores.base import RevocationStore
from ._session_index import SessionIndex
from .cookie_views import WerkzeugView
from .serverside import Data, ServerSideSessionSource

__all__ = ["FlaskSessionSource", "uses_flask_session"]

logger = logging.getLogger("kc_sso_middleware")


def uses_flask_session(flask_app: Any) -> bool:
    """Whether ``flask_app`` keeps its sessions with Flask-Session."""
    try:
        from flask_session.base import ServerSideSessionInterface
    except ImportError:
        return False
    return isinstance(getattr(flask_app, "session_interface", None), ServerSideSessionInterface)


class FlaskSessionSource(ServerSideSessionSource):
    """Sessions of a Flask app that uses Flask-Session."""

    name = "flask-session"

    def __init__(
        self,
        settings: Settings,
        flask_app: Any,
        *,
        store: RevocationStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``flask_app`` is the Flask app, after ``Session(app)``."""
        if not uses_flask_session(flask_app):
            raise ConfigurationError(
                "FlaskSessionSource needs a Flask app whose session_interface is "
                "Flask-Session's (call flask_session.Session(app) first)"
            )
        interface = flask_app.session_interface
        self._app = flask_app
        self._interface = interface
        cookie_name: str = flask_app.config["SESSION_COOKIE_NAME"]  # what open_session reads
        super().__init__(
            settings,
            cookie_name=cookie_name,
            view=WerkzeugView(),
            expire=_expired_cookie(interface, flask_app, cookie_name),
            clock=clock,
            store=store,
            index=_index(interface, settings),
        )
        # Observe the library's own save, on the interface object the app already uses:
        # one call more per response, where Flask's request_finished signal cost a blinker
        # dispatch and a context look-up per response.
        save = interface.save_session

        def save_session(app: Any, session: Any, response: Any) -> None:
            save(app, session, response)
            if getattr(session, "modified", False):
                self._saved(session)

        interface.save_session = save_session

    # -- as the library reads, writes and deletes ----------------------------------------

    def _session_id(self, value: str) -> str | None:
        if not self._interface.use_signer:
            return value
        from itsdangerous import BadSignature

        try:
            session_id: str = self._interface._unsign(self._app, value)
        except BadSignature:
            return None  # the library starts a new session
        return session_id

    def _cookie_value(self, session_id: str) -> str:
        if not self._interface.use_signer:
            return session_id
        value: str = self._interface._sign(self._app, session_id)
        return value

    def _read(self, session_id: str) -> BackendCall[Data | None]:
        interface = self._interface

        def read() -> Data | None:
            data: Data | None = interface._retrieve_session_data(
                interface._get_store_id(session_id)
            )
            return data

        return BackendCall(sync=read, what="read a Flask-Session session")

    def _delete(self, session_id: str) -> BackendCall[None]:
        interface = self._interface

        def delete() -> None:
            interface._delete_session(interface._get_store_id(session_id))

        return BackendCall(sync=delete, what="delete a Flask-Session session")

    # -- at login --------------------------------------------------------------------------

    def _saved(self, session: Any) -> None:
        """Flask-Session just saved a modified ``session``: learn what it now holds."""
        try:
            session_id = getattr(session, "sid", None)
            if not isinstance(session_id, str) or not session_id:
                return
            # An empty session was deleted by the library (ServerSideSession.__bool__).
            index_write = self.observed(session_id, dict(session) if session else None)
            if index_write is not None and index_write.sync is not None:
                index_write.sync()
        except Exception as exc:  # never break the app's response for the index
            logger.error("%s: could not index a session at login: %s", self.name, exc)


def _expired_cookie(interface: Any, flask_app: Any, cookie_name: str) -> str:
    """A ``Set-Cookie`` ending the session cookie as the library sets it."""
    from werkzeug.http import dump_cookie

    return dump_cookie(
        cookie_name,
        "",
        max_age=0,
        expires=0,
        path=interface.get_cookie_path(flask_app),
        domain=interface.get_cookie_domain(flask_app),
        secure=interface.get_cookie_secure(flask_app),
        httponly=interface.get_cookie_httponly(flask_app),
        samesite=interface.get_cookie_samesite(flask_app),
    )


def _index(interface: Any, settings: Settings) -> SessionIndex | None:
    try:
        from flask_session.redis import RedisSessionInterface
    except ImportError:  # pragma: no cover - the redis extra is missing
        return None
    if not isinstance(interface, RedisSessionInterface):
        logger.info(
            "flask-session: %s has no index: a revoked session is deleted when it is next "
            "presented, not at once",
            type(interface).__name__,
        )
        return None
    return SessionIndex(
        interface.client,
        key=interface._get_store_id,
        decode=interface.serializer.decode,
        asynchronous=False,
        lifetime=settings.max_session_lifetime,
        client_id=settings.client_id,
    )
