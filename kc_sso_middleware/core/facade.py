"""The core's facade: which path goes to which responder, and the check for everything else.

:class:`SSOCore` decides; the adapters translate.  For an ordinary request
:meth:`SSOCore.check` gives a :class:`~kc_sso_middleware._http.Verdict` (memory only, no
I/O).  For one of the middleware's own paths, :meth:`SSOCore.route` names the responder and
:meth:`SSOCore.respond` gives the flow (:mod:`kc_sso_middleware._flows`) that answers it:
the adapter drives it with its own I/O.  Method and size limits, turning errors into
answers, and the events of rejected requests happen here for every responder alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from .. import events as ev
from .._flows import Flow
from .._http import Request, Response, Verdict
from .._logs import Tagger, untrusted
from .._oidc import Provider
from .._tokens import TokenPolicy
from ..errors import (
    DiscoveryError,
    KCSSOError,
    KeysThrottledError,
    RequestRefusedError,
    StoreUnavailableError,
)
from ..events import Events
from ..settings import Settings
from ..sources.base import IdentitySource
from ..stores.base import RevocationStore
from ..stores.model import Revocation, StoreStatus
from .admin import ADMIN_ACTIONS, AdminResponder
from .answers import answer
from .backchannel import BackchannelResponder
from .check import RequestCheck
from .context import Context
from .explain import Explanations
from .frontchannel import FrontchannelResponder
from .liveness import Liveness
from .logout import LogoutResponder
from .observe import HealthResponder, MetricsResponder
from .post_logout import LogoutState, PostLogoutResponder
from .redirects import RedirectGuard

__all__ = ["Responder", "SSOCore"]


class Responder(Protocol):
    """Answers one of the middleware's own paths."""

    @property
    def methods(self) -> tuple[str, ...]: ...

    #: the event a refused request is (``backchannel.rejected``, ``logout.refused``, …)
    @property
    def rejected_event(self) -> str: ...

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
        events: Events | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sources = tuple(sources)
        self.clock = clock
        assert settings.session_secret is not None  # Settings guarantees it
        self.events = events if events is not None else Events(settings.client_id)
        self.tagger = Tagger(settings.session_secret)
        self.provider = Provider(settings, clock, self.events)
        context = Context(
            settings=settings,
            provider=self.provider,
            policy=TokenPolicy.from_settings(settings),
            sources=self.sources,
            clock=clock,
            tagger=self.tagger,
            events=self.events,
            holds=store.holds,
        )
        self.explanations = Explanations(store, settings.max_session_lifetime, settings.client_id)
        store.add_listener(self._applied)
        store.add_status_listener(self._status_changed)
        liveness = None
        if settings.liveness_interval is not None:
            liveness = Liveness(
                context, settings.liveness_interval, settings.liveness_failure == "closed"
            )
        self.check = RequestCheck(
            settings,
            store,
            self.sources,
            clock,
            self.explanations.explain,
            self.events,
            self.tagger,
            liveness,
        )
        state = LogoutState(settings)
        routes: dict[str, Responder] = {
            settings.logout_path: LogoutResponder(context, RedirectGuard(settings), state),
            settings.backchannel_path: BackchannelResponder(context),
        }
        if settings.post_logout_path is not None:
            routes[settings.post_logout_path] = PostLogoutResponder(context, state)
        if settings.frontchannel_path is not None:
            routes[settings.frontchannel_path] = FrontchannelResponder(context)
        if settings.admin_path is not None:
            base = settings.admin_path.rstrip("/")
            for name, action in ADMIN_ACTIONS.items():
                routes[f"{base}/{name}"] = AdminResponder(context, action)
        if settings.health_path is not None:
            routes[settings.health_path] = HealthResponder(context, store, settings)
        self._metrics_started: Callable[[], None] | None = None
        if settings.metrics_path is not None:
            from .. import metrics

            # ConfigurationError without the extra
            self._metrics_started = metrics.install(self.events, store)
            routes[settings.metrics_path] = MetricsResponder()
        self.routes = routes
        self._max_body = settings.backchannel_max_body

    def prepare(self) -> None:
        """Let every source get ready (the adapters call it when they start)."""
        for source in self.sources:
            source.prepare()
        self.check.use_resolved_sources()
        if self._metrics_started is not None:
            self._metrics_started()

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
            return self._refused(responder, exc)
        return None

    def respond(self, responder: Responder, request: Request) -> Flow[Response]:
        """The flow answering ``request``; every error it raises becomes its answer."""
        try:
            self._check_method(responder, request.method)
            self._check_size(len(request.body))
            return (yield from responder.respond(request))
        except KCSSOError as exc:
            return self._refused(responder, exc)

    def sets_cookie(self, set_cookie_value: str, verdict: Verdict) -> bool:
        """Whether the app's own ``Set-Cookie`` replaces one the verdict would add."""
        name = set_cookie_value.partition("=")[0].strip()
        return any(added.partition("=")[0] == name for added in verdict.set_cookies)

    # -- internals --------------------------------------------------------------------

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

    def _refused(self, responder: Responder, error: KCSSOError) -> Response:
        """The answer to a refused request, and its event."""
        if isinstance(error, KeysThrottledError):
            name = ev.JWKS_THROTTLED
        elif isinstance(error, DiscoveryError):
            name = ev.JWKS_FAILED
        elif isinstance(error, StoreUnavailableError):
            name = ev.STORE_FAILED
        elif error.code == "replayed_jti":
            name = ev.BACKCHANNEL_REPLAYED
        else:
            name = responder.rejected_event
        self.events.emit(
            name,
            "request refused",
            level=30,  # WARNING
            code=error.code,
            description=untrusted(error.description),
        )
        return answer(error)

    def _applied(self, entries: Sequence[Revocation]) -> None:
        """Store listener: keep the explanations; tell the app what this worker applied."""
        self.explanations.remember(entries)
        if not self.events.wanted(ev.REVOCATION_APPLIED, 10):  # every worker, every entry
            return
        now = time.time()
        for entry in entries:
            note = entry.note
            self.events.emit(
                ev.REVOCATION_APPLIED,
                "revocation applied",
                level=10,  # DEBUG: once per worker per revocation
                kind=entry.kind.value,
                key=entry.label,
                tag=self.tagger.tag(entry.label),
                cause=None if note is None else note.cause,
                origin=None if note is None else note.origin,
                recorded_at=None if note is None else note.at,
                propagation_ms=None if note is None else round((now - note.at) * 1000, 3),
            )

    def _status_changed(self, status: StoreStatus) -> None:
        if status.available:
            self.events.emit(ev.STORE_RECOVERED, "revocation store current")
        elif not status.closed:  # a shutdown is no outage: no warning, no failure counted
            self.events.emit(
                ev.STORE_UNAVAILABLE,
                "revocation store unavailable",
                level=30,
                detail=untrusted(status.detail),
            )
