"""The core's facade: which path goes to which responder, and the check for everything else.

:class:`SSOCore` decides; the adapters translate.  For an ordinary request
:meth:`SSOCore.check` gives a :class:`~kc_sso_middleware._http.Verdict` (memory only, no
I/O).  For one of the middleware's own paths, :meth:`SSOCore.route` names the responder and
:meth:`SSOCore.respond` gives the flow (:mod:`kc_sso_middleware._flows`) that answers it:
the adapter drives it with its own I/O.  Method and size limits, and turning errors into
answers, happen here for every responder alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from .._flows import Flow
from .._http import Request, Response, SignOut, Verdict
from .._logs import Tagger
from .._oidc import Provider
from .._tokens import TokenPolicy
from ..errors import KCSSOError, RequestRefusedError
from ..settings import Settings
from ..sources.base import IdentitySource, SessionIdentity
from ..stores.base import RevocationStore
from .admin import ADMIN_ACTIONS, AdminResponder
from .answers import answer
from .backchannel import BackchannelResponder
from .check import RequestCheck
from .context import Context
from .frontchannel import FrontchannelResponder
from .logout import LogoutResponder
from .redirects import RedirectGuard

__all__ = ["Responder", "SSOCore"]


class Responder(Protocol):
    """Answers one of the middleware's own paths."""

    @property
    def methods(self) -> tuple[str, ...]: ...

    def respond(self, request: Request) -> Flow[Response]: ...


class SSOCore:
    """All decisions of the middleware, for one app."""

    def __init__(
        self,
        settings: Settings,
        store: RevocationStore,
        sources: Sequence[IdentitySource],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sources = tuple(sources)
        self.clock = clock
        assert settings.session_secret is not None  # Settings guarantees it
        self.provider = Provider(settings, clock)
        context = Context(
            settings=settings,
            provider=self.provider,
            policy=TokenPolicy.from_settings(settings),
            sources=self.sources,
            clock=clock,
            tagger=Tagger(settings.session_secret),
        )
        self.check = RequestCheck(settings, store, self.sources, clock, self._explain)
        routes: dict[str, Responder] = {
            settings.logout_path: LogoutResponder(context, RedirectGuard(settings)),
            settings.backchannel_path: BackchannelResponder(context),
        }
        if settings.frontchannel_path is not None:
            routes[settings.frontchannel_path] = FrontchannelResponder(context)
        if settings.admin_path is not None:
            base = settings.admin_path.rstrip("/")
            for name, action in ADMIN_ACTIONS.items():
                routes[f"{base}/{name}"] = AdminResponder(context, action)
        self.routes = routes
        self._max_body = settings.backchannel_max_body

    def route(self, path: str) -> Responder | None:
        """The responder serving ``path``, if the middleware serves it."""
        return self.routes.get(path)

    def precheck(
        self, responder: Responder, method: str, content_length: str | None
    ) -> Response | None:
        """An answer before the body is read: wrong method, or a declared body too large."""
        try:
            self._check_method(responder, method)
            if content_length is not None:
                try:
                    length = int(content_length)
                except ValueError:
                    raise RequestRefusedError(
                        "bad_content_length", "Content-Length is not a number"
                    ) from None
                self._check_size(length)
        except KCSSOError as exc:
            return answer(exc)
        return None

    def respond(self, responder: Responder, request: Request) -> Flow[Response]:
        """The flow answering ``request``; every error it raises becomes its answer."""
        try:
            self._check_method(responder, request.method)
            self._check_size(len(request.body))
            return (yield from responder.respond(request))
        except KCSSOError as exc:
            return answer(exc)

    def _check_method(self, responder: Responder, method: str) -> None:
        if method not in responder.methods:
            raise RequestRefusedError(
                "method_not_allowed",
                f"{method} is not allowed here",
                status=405,
                headers=(("Allow", ", ".join(responder.methods)),),
            )

    def _check_size(self, length: int) -> None:
        if length > self._max_body:
            raise RequestRefusedError(
                "body_too_large", f"body exceeds {self._max_body} bytes", status=413
            )

    def _explain(self, identity: SessionIdentity, now: float) -> SignOut:
        """Why ``identity`` is refused, for the request-scoped marker."""
        began = identity.auth_time
        if began is not None and began + self.settings.max_session_lifetime < now:
            return SignOut(
                "lifetime", at=began + self.settings.max_session_lifetime, sid=identity.sid
            )
        return SignOut("revoked", sid=identity.sid)

    def sets_cookie(self, set_cookie_value: str, verdict: Verdict) -> bool:
        """Whether the app's own ``Set-Cookie`` replaces one the verdict would add."""
        name = set_cookie_value.partition("=")[0].strip()
        return any(added.partition("=")[0] == name for added in verdict.set_cookies)
