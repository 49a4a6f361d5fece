"""Which session an app keeps, found by looking at the app the adapter wraps.

* WSGI: ``app.wsgi_app`` is a bound method of the Flask app (also through wrappers that
  keep the wrapped app as ``.app``, such as ``ProxyFix``).  A Flask-Session interface
  (``Session(app)``) means :class:`~.flask_session.FlaskSessionSource`; anything else
  Flask's signed cookie.
* ASGI: starsessions' ``SessionMiddleware`` somewhere down the chain of wrapped apps
  (each middleware keeps the next as ``.app``) means
  :class:`~.starsessions.StarsessionsSource`; anything else Starlette's signed cookie.
  A Starlette app on the way whose middleware stack is not built yet (the middleware
  wraps the whole app) has it built, as its own first call would.

Looking happens at first use, not at construction: by then ``Session(app)`` has run
whatever the order of the app's lines, and Starlette has built its middleware stack.
Without detection the signed-cookie source would take a server-side session's opaque id
out of every request as a cookie it cannot verify.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal

from .._flows import Flow
from .._http import RequestHead, SignOut, Verdict
from ..errors import ConfigurationError
from ..settings import Settings
from ..stores.base import RevocationStore
from ..stores.model import Revocation
from .base import Finding, IdentitySource, LoginTokens
from .cookie_views import StarletteView, WerkzeugView
from .cookies import SignedCookieSource

__all__ = ["DetectedSessionSource", "session_source"]

logger = logging.getLogger("kc_sso_middleware")

Framework = Literal["flask", "starlette"]
#: wrapped apps followed at most, down a chain of ``.app`` attributes
_DEPTH = 64


def session_source(
    settings: Settings,
    framework: Framework,
    clock: Callable[[], float],
    app: Any,
    *,
    store: RevocationStore | None = None,
) -> IdentitySource:
    """The source for the session ``app`` keeps (see the module docstring)."""
    if framework == "flask":
        flask_app = _flask_app(app)
        if flask_app is not None:
            from .flask_session import FlaskSessionSource, uses_flask_session

            if uses_flask_session(flask_app):
                return FlaskSessionSource(settings, flask_app, store=store, clock=clock)
            _same_cookie_name(settings, flask_app.config.get("SESSION_COOKIE_NAME"), "Flask")
            return SignedCookieSource(
                settings, WerkzeugView(), "flask", clock, expire=_flask_expiry(flask_app)
            )
        _nothing_found(settings, "Flask app (app.wsgi_app, or .app of a wrapper)", "Flask")
        return SignedCookieSource(settings, WerkzeugView(), "flask", clock)
    middleware = _starsessions_middleware(app)
    if middleware is not None:
        from .starsessions import StarsessionsSource

        return StarsessionsSource(settings, middleware, store=store, clock=clock)
    cookie_session = _starlette_session_middleware(app)
    expire = None
    if cookie_session is not None:
        _same_cookie_name(settings, getattr(cookie_session, "session_cookie", None), "Starlette")
        expire = _starlette_expiry(cookie_session)
    else:
        _nothing_found(settings, "SessionMiddleware (of Starlette or starsessions)", "Starlette")
    return SignedCookieSource(settings, StarletteView(), "starlette", clock, expire=expire)


def _nothing_found(settings: Settings, looked_for: str, framework: str) -> None:
    """Say that the session is assumed, not seen: under another cookie name or in a
    middleware detection cannot reach (inside a Mount, a wrapper keeping the next app
    other than as ``.app``), no revoked session would be refused, and nothing else says so."""
    logger.warning(
        "session source: no %s was found down the wrapped apps, so the session is taken to "
        "be %s's signed cookie named %r (KC_SSO_SESSION_COOKIE); if the app keeps its "
        "session in another cookie or server-side, revoked sessions are not refused: set "
        "KC_SSO_SESSION_COOKIE, or pass the middleware sources=[...] explicitly",
        looked_for,
        framework,
        settings.session_cookie,
    )


def _flask_expiry(flask_app: Any) -> str | None:
    """The ``Set-Cookie`` ending Flask's session cookie as Flask deletes it (its
    ``SESSION_COOKIE_*`` path, domain and flags): a browser replaces a cookie only with
    one of the same name, domain and path (RFC 6265 §5.3)."""
    from werkzeug.http import dump_cookie

    interface = flask_app.session_interface
    try:
        options: dict[str, Any] = {
            "path": interface.get_cookie_path(flask_app),
            "domain": interface.get_cookie_domain(flask_app),
            "secure": interface.get_cookie_secure(flask_app),
            "httponly": interface.get_cookie_httponly(flask_app),
            "samesite": interface.get_cookie_samesite(flask_app),
        }
        if hasattr(interface, "get_cookie_partitioned"):  # Flask 3.1
            options["partitioned"] = interface.get_cookie_partitioned(flask_app)
        name = flask_app.config["SESSION_COOKIE_NAME"]
    except (AttributeError, KeyError):  # a session interface of its own kind
        return None
    return dump_cookie(name, "", max_age=0, expires=0, **options)


def _starlette_expiry(middleware: Any) -> str | None:
    """The ``Set-Cookie`` ending Starlette's session cookie as ``SessionMiddleware``
    clears it (its path, and its flags: HttpOnly, SameSite, Secure, Domain, Partitioned)."""
    name = getattr(middleware, "session_cookie", None)
    path = getattr(middleware, "path", None)
    flags = getattr(middleware, "security_flags", None)
    if not all(isinstance(value, str) for value in (name, path, flags)):
        return None
    return f"{name}=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path={path}; {flags}"


def _same_cookie_name(settings: Settings, used: object, framework: str) -> None:
    """The signed cookie source reads KC_SSO_SESSION_COOKIE: under any other name the app
    keeps its session, no revoked session would ever be refused."""
    if isinstance(used, str) and used != settings.session_cookie:
        raise ConfigurationError(
            f"the {framework} app keeps its session in the cookie {used!r} but "
            f"KC_SSO_SESSION_COOKIE is {settings.session_cookie!r}: no revoked session "
            f"would be refused; set KC_SSO_SESSION_COOKIE={used}"
        )


def _starlette_session_middleware(app: Any) -> Any:
    try:
        from starlette.middleware.sessions import SessionMiddleware
    except ImportError:  # pragma: no cover - the Starlette extra is missing
        return None
    return _in_chain(app, SessionMiddleware)


def _flask_app(app: Any) -> Any:
    for _ in range(_DEPTH):
        owner = getattr(app, "__self__", app)
        if hasattr(owner, "session_interface") and hasattr(owner, "config"):
            return owner
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


def _starsessions_middleware(app: Any) -> Any:
    try:
        from starsessions import SessionMiddleware
    except ImportError:
        return None
    return _in_chain(app, SessionMiddleware)


def _in_chain(app: Any, kind: type) -> Any:
    """The first ``kind`` down the chain of wrapped ASGI apps, if any."""
    try:
        from starlette.applications import Starlette
    except ImportError:  # pragma: no cover - starsessions depends on Starlette
        return None
    for _ in range(_DEPTH):
        if isinstance(app, kind):
            return app
        if isinstance(app, Starlette):
            if app.middleware_stack is None:
                app.middleware_stack = app.build_middleware_stack()
            app = app.middleware_stack
            continue
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


class DetectedSessionSource(IdentitySource):
    """The app's own session, however it keeps it: decided at first use, then delegated."""

    name = "session"

    def __init__(
        self,
        settings: Settings,
        framework: Framework,
        clock: Callable[[], float],
        app: Any,
        *,
        store: RevocationStore | None = None,
    ) -> None:
        self._settings = settings
        self._framework: Framework = framework
        self._clock = clock
        self._app = app
        self._store = store
        self._source: IdentitySource | None = None
        self._lock = threading.Lock()
        #: the chosen source's find, once chosen: the request path pays one call
        self._find: Callable[[RequestHead, float], Finding | None] = self._detect_and_find

    @property
    def source(self) -> IdentitySource:
        """The source detection chose (detecting now if nothing asked before)."""
        source = self._source
        if source is None:
            with self._lock:
                if self._source is None:
                    self._source = session_source(
                        self._settings, self._framework, self._clock, self._app, store=self._store
                    )
                    self.name = self._source.name
                    self._find = self._source.find
                    logger.info("session source: %s", self._source.name)
                source = self._source
        return source

    def prepare(self) -> None:
        """Detect at start-up, so that a login is learnt even on a worker's first request
        (the check does not show a request without a session cookie to this source)."""
        self.source.prepare()

    def resolved(self) -> IdentitySource:
        return self.source

    def find(self, head: RequestHead, now: float) -> Finding | None:
        return self._find(head, now)

    def _detect_and_find(self, head: RequestHead, now: float) -> Finding | None:
        return self.source.find(head, now)

    def refuse(self, finding: Finding, head: RequestHead, signed_out: SignOut) -> Verdict:
        return self.source.refuse(finding, head, signed_out)

    def tokens(self, head: RequestHead, now: float) -> Flow[LoginTokens | None]:
        return self.source.tokens(head, now)

    def expiry_headers(self, root_path: str = "") -> tuple[str, ...]:
        return self.source.expiry_headers(root_path)

    def end(self, head: RequestHead) -> Flow[None]:
        return self.source.end(head)

    def purge(self, revocations: Sequence[Revocation]) -> Flow[None]:
        return self.source.purge(revocations)
