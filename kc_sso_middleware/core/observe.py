"""The middleware's own observability paths: health (``KC_SSO_HEALTH_PATH``) and metrics
(``KC_SSO_METRICS_PATH``), both off by default.

Health is for a load balancer's probe: JSON with the store's availability, the replica's
version, size and the seconds since it last changed, and when the OP last answered; 200
when healthy, 503 when the store is unavailable under ``KC_SSO_STORE_FAILURE=closed``
(requests carrying a session get 503 then anyway).  No secrets, no session data.
"""

from __future__ import annotations

import time

from .. import events as ev
from .._flows import Flow, done
from .._http import Request, Response, json_response
from ..settings import Settings
from ..stores.base import RevocationStore
from .context import Context

__all__ = ["HealthResponder", "MetricsResponder"]


class HealthResponder:
    """Serves ``KC_SSO_HEALTH_PATH``."""

    methods = ("GET", "HEAD")
    rejected_event = ev.REQUEST_REFUSED

    def __init__(self, context: Context, store: RevocationStore, settings: Settings) -> None:
        self._context = context
        self._store = store
        self._fail_closed = settings.store_failure == "closed"

    def respond(self, request: Request) -> Flow[Response]:
        status = self._store.status()
        entries, changed_at = self._store.replica_state()
        last_contact = self._context.provider.last_contact
        now = time.time()
        healthy = status.available or not self._fail_closed
        payload: dict[str, object] = {
            "status": "ok" if status.available else ("degraded" if healthy else "unavailable"),
            "store": {
                "available": status.available,
                "detail": status.detail,
                "failure_policy": "closed" if self._fail_closed else "open",
            },
            "replica": {
                "version": self._store.version,
                "entries": entries,
                "changed_seconds_ago": round(now - changed_at, 3) if changed_at else None,
            },
            "op": {
                "issuer": self._context.issuer,
                "last_contact_seconds_ago": (
                    None if last_contact is None else round(now - last_contact, 3)
                ),
            },
        }
        return (yield from done(json_response(200 if healthy else 503, payload)))


class MetricsResponder:
    """Serves ``KC_SSO_METRICS_PATH`` (prometheus-client's text format)."""

    methods = ("GET",)
    rejected_event = ev.REQUEST_REFUSED

    def respond(self, request: Request) -> Flow[Response]:
        from ..metrics import exposition

        body, content_type = exposition()
        response = Response(
            200, (("Content-Type", content_type), ("Cache-Control", "no-store")), body
        )
        return (yield from done(response))
