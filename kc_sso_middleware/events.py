"""Events: one stable name per outcome, as a log record and for the app's callbacks.

Every outcome the middleware reaches (a local logout, a back-channel token accepted or
rejected with its rule, a request refused, the store going away and coming back, a JWKS
fetch, a liveness verdict, a revocation applied by this worker's replica) is an
:class:`Event`.  Each one is

* logged through :mod:`logging` (logger ``kc_sso_middleware.events``) with its fields in
  ``extra`` (``record.event``, ``record.kc_sso``), so structlog and JSON formatters pick
  them up; identifiers appear as short keyed tags (``sid_tag``), never tokens or secrets;
* counted, when the ``metrics`` extra is installed (:mod:`kc_sso_middleware.metrics`);
* handed to the callbacks the app registered (:meth:`Events.subscribe`,
  :meth:`Events.on_revocation`, :meth:`Events.on_rejected`) on a dispatcher thread of its
  own: never on the request path, and a callback that fails or is slow never breaks a
  request or a logout (a full queue drops events, and counts them).

The names are the table in README.rst ("Events").
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._logs import log_safe

__all__ = ["EVENT_NAMES", "Event", "Events"]

logger = logging.getLogger("kc_sso_middleware.events")

# -- the names (stable: documented, counted, matched by callbacks) --------------------

LOCAL_LOGOUT = "logout.local"
API_LOGOUT = "logout.api"
LOGOUT_REFUSED = "logout.refused"
LOGOUT_RETURN = "logout.return"
BACKCHANNEL_ACCEPTED = "backchannel.accepted"
BACKCHANNEL_REJECTED = "backchannel.rejected"
BACKCHANNEL_REPLAYED = "backchannel.replayed"
ADMIN_ACCEPTED = "admin.accepted"
ADMIN_REJECTED = "admin.rejected"
FRONTCHANNEL_ACCEPTED = "frontchannel.accepted"
FRONTCHANNEL_REJECTED = "frontchannel.rejected"
FRONTCHANNEL_IGNORED = "frontchannel.ignored"
REQUEST_REFUSED = "request.refused"
STORE_UNAVAILABLE = "store.unavailable"
STORE_RECOVERED = "store.recovered"
STORE_FAILED = "store.write_failed"
JWKS_FETCHED = "jwks.fetched"
JWKS_FAILED = "jwks.failed"
JWKS_THROTTLED = "jwks.throttled"
LIVENESS_ALIVE = "liveness.alive"
LIVENESS_ENDED = "liveness.ended"
LIVENESS_FAILED = "liveness.failed"
REVOCATION_APPLIED = "revocation.applied"

#: every event name, with what it means (README's table is this)
EVENT_NAMES: Mapping[str, str] = {
    LOCAL_LOGOUT: "a browser logged out at the logout path (this app session revoked)",
    API_LOGOUT: (
        "an API client logged out; op_ended says whether Keycloak ended the session (false,"
        " or null when it did not answer in time: at WARNING, with code and op_error)"
    ),
    LOGOUT_REFUSED: (
        "a logout request was refused (code: cross_site_request, framed_request,"
        " not_a_navigation, unauthorized, …)"
    ),
    LOGOUT_RETURN: "the browser came back from Keycloak's logout (verified: true or false)",
    BACKCHANNEL_ACCEPTED: "a back-channel logout token was accepted and its revocation stored",
    BACKCHANNEL_REJECTED: "a back-channel request was rejected (code: the rule that failed)",
    BACKCHANNEL_REPLAYED: "a back-channel logout token was received a second time (refused)",
    ADMIN_ACCEPTED: "a legacy admin-URL action was accepted (action: LOGOUT, PUSH_NOT_BEFORE, …)",
    ADMIN_REJECTED: "a legacy admin-URL action was rejected (code: the rule that failed)",
    FRONTCHANNEL_ACCEPTED: "a front-channel logout ended a session",
    FRONTCHANNEL_REJECTED: "a front-channel request was rejected (code)",
    FRONTCHANNEL_IGNORED: (
        "a front-channel request ended nothing: the browser sent no session of this app"
        " (had_session false; often a local logout's, or third-party cookies blocked) or"
        " another one"
    ),
    REQUEST_REFUSED: "a request's session was taken out or refused (reason: why; source)",
    STORE_UNAVAILABLE: (
        "the revocation store cannot confirm its replica is current (not sent when the app "
        "closes it at shutdown)"
    ),
    STORE_RECOVERED: "the revocation store is current again",
    STORE_FAILED: "a revocation could not be stored (the request answered 503)",
    JWKS_FETCHED: "the OP's keys were fetched (reason: load, refresh or unknown_kid)",
    JWKS_FAILED: "fetching the OP's discovery document or keys failed",
    JWKS_THROTTLED: (
        "a refetch for an unknown kid (or a kid-less token the cached keys fail) was refused"
        " by the throttle (503)"
    ),
    LIVENESS_ALIVE: "Keycloak confirmed a session is alive",
    LIVENESS_ENDED: "Keycloak said a session is gone; it was revoked everywhere",
    LIVENESS_FAILED: "Keycloak could not be asked whether a session is alive",
    REVOCATION_APPLIED: "this worker's replica applied a revocation (whoever wrote it)",
}

#: the events of a rejected logout request, whichever path it came to
REJECTIONS = (
    BACKCHANNEL_REJECTED,
    BACKCHANNEL_REPLAYED,
    ADMIN_REJECTED,
    FRONTCHANNEL_REJECTED,
    LOGOUT_REFUSED,
)
#: the events of a request refused because something it needs failed, whichever path it
#: came to (the core names them by the failure, with the request's ``code``)
_FAILURES = (STORE_FAILED, JWKS_FAILED, JWKS_THROTTLED)
_QUEUE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class Event:
    """One outcome: its name, when, and its fields (plain, JSON-able values)."""

    name: str
    at: float
    fields: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


Callback = Callable[[Event], None]


class Events:
    """Emits events for one middleware: log records, counters, and the app's callbacks."""

    def __init__(self, app_name: str = "") -> None:
        #: the client id, so a log line says which app it comes from
        self.app_name = app_name
        self._callbacks: tuple[tuple[frozenset[str] | None, Callback], ...] = ()
        self._recorders: tuple[Callback, ...] = ()
        self._queue: queue.Queue[Event] | None = None
        self._thread_pid = -1
        self._lock = threading.Lock()
        #: events dropped because the callbacks fell behind
        self.dropped = 0

    # -- registering ------------------------------------------------------------------

    def subscribe(self, callback: Callback, *, names: Iterable[str] | None = None) -> None:
        """Call ``callback(event)`` for every event (or those ``names``), off the request path."""
        wanted = None if names is None else frozenset(names)
        unknown = set(wanted or ()) - set(EVENT_NAMES)
        if unknown:
            raise ValueError(f"unknown event names {sorted(unknown)}; see EVENT_NAMES")
        self._callbacks = (*self._callbacks, (wanted, callback))

    def on_revocation(self, callback: Callback) -> None:
        """Call ``callback`` with every revocation this worker's replica applies.

        Its fields: ``kind`` (``sid``, ``sub`` or ``all``), ``key`` (the plain sid,
        ``sid#jti``, sub or client id, when known), ``cause``, ``origin``, ``recorded_at``.
        Use it to close a user's websockets or drop data cached for a session.
        """
        self.subscribe(callback, names=(REVOCATION_APPLIED,))

    def on_rejected(self, callback: Callback) -> None:
        """Call ``callback`` with every rejected logout request (back-channel, admin URL,
        front-channel, logout path), with its ``code`` and ``description``: a rule that
        failed, and a request answered 503 because the store could not record it or the
        OP's keys could not be had (Keycloak never retries a back-channel request)."""

        @functools.wraps(callback)
        def rejected(event: Event) -> None:
            # jwks.failed is also the fetch's own event, which no request carries: only
            # the core's refusal of a request has a code.
            if event.name in REJECTIONS or "code" in event.fields:
                callback(event)

        self.subscribe(rejected, names=(*REJECTIONS, *_FAILURES))

    def record_with(self, recorder: Callback) -> None:
        """Call ``recorder`` synchronously with every event (metrics; must be quick)."""
        self._recorders = (*self._recorders, recorder)

    # -- emitting ---------------------------------------------------------------------

    def wanted(self, name: str, level: int = logging.INFO) -> bool:
        """Whether event ``name`` at ``level`` would reach anyone: a log handler, a
        recorder (metrics) or a callback.  Callers skip computing the fields (keyed tags
        of session ids) of an event nobody would see."""
        if self._recorders or logger.isEnabledFor(level):
            return True
        return any(names is None or name in names for names, _ in self._callbacks)

    def emit(self, name: str, message: str, *, level: int = logging.INFO, **fields: Any) -> None:
        """Log, count and dispatch one event; never raises."""
        try:
            event = Event(name, time.time(), fields)
            # Each consumer on its own: one that fails (a log handler, a metrics backend,
            # the app's recorder) must not keep the event from the others, least of all
            # from the callbacks (an on_revocation closing a revoked session's websockets).
            try:
                if logger.isEnabledFor(level):
                    logger.log(
                        level,
                        "%s [%s]%s",
                        message,
                        name,
                        # Fields may carry signed but untrusted text (a logout token's sid).
                        "".join(f" {k}={log_safe(v)}" for k, v in fields.items() if v is not None),
                        extra={"event": name, "kc_sso": {"app": self.app_name, **fields}},
                    )
            except Exception:
                logger.exception("could not log event %s", name)
            for recorder in self._recorders:
                try:
                    recorder(event)
                except Exception:
                    logger.exception("event recorder %r failed on %s", recorder, name)
            if self._callbacks:
                self._dispatch(event)
        except Exception:  # observability must never break what it observes
            logger.exception("could not emit event %s", name)

    def _dispatch(self, event: Event) -> None:
        if not any(names is None or event.name in names for names, _ in self._callbacks):
            return
        events = self._queue
        if events is None or self._thread_pid != os.getpid():
            events = self._start()
        try:
            events.put_nowait(event)
        except queue.Full:  # the callbacks fell behind: drop, never wait
            self.dropped += 1

    def _start(self) -> queue.Queue[Event]:
        """The dispatcher thread of this process (started again in a forked child)."""
        with self._lock:
            if self._queue is None or self._thread_pid != os.getpid():
                self._queue = queue.Queue(_QUEUE_SIZE)
                self._thread_pid = os.getpid()
                threading.Thread(
                    target=self._run, args=(self._queue,), name="kc-sso-events", daemon=True
                ).start()
            return self._queue

    def _run(self, events: queue.Queue[Event]) -> None:
        while True:
            event = events.get()
            for names, callback in self._callbacks:
                if names is not None and event.name not in names:
                    continue
                try:
                    callback(event)
                except Exception:
                    logger.exception("event callback %r failed on %s", callback, event.name)
            events.task_done()

    def drain(self, timeout: float = 2.0) -> None:
        """Wait until the callbacks have seen every event emitted so far (for tests)."""
        deadline = time.monotonic() + timeout
        while self._queue is not None and self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.005)
