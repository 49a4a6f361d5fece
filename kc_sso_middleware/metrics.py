"""Prometheus metrics from the middleware's events (the optional ``metrics`` extra).

Counters by outcome and rule code, requests refused by reason, store errors, JWKS fetches,
liveness checks; histograms of back-channel handling time and of propagation (from a
revocation's write to each worker's replica applying it); gauges of replica size and store
availability.  All are derived from :mod:`kc_sso_middleware.events`, so what is counted is
exactly what is logged.

Several workers (gunicorn, ``uvicorn --workers``): set ``PROMETHEUS_MULTIPROC_DIR`` to an
empty directory before the server starts (prometheus-client's multiprocess mode); the
exposition then sums every worker, and gunicorn's ``child_exit`` hook should call
``prometheus_client.multiprocess.mark_process_dead(worker.pid)``.

They are counted when ``KC_SSO_METRICS_PATH`` is set (the middleware serves them there),
or after :func:`install`; expose them where your app wants (:func:`wsgi_app`,
:func:`asgi_app`, :func:`exposition`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from . import events as ev
from .errors import ConfigurationError
from .events import Event, Events
from .stores.base import RevocationStore

__all__ = ["asgi_app", "exposition", "install", "wsgi_app"]

_LOCK = threading.Lock()
_METRICS: dict[str, Any] = {}


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigurationError(
            "metrics need prometheus-client: pip install 'kc-sso-middleware[metrics]'"
        ) from None
    return prometheus_client


def _metrics() -> dict[str, Any]:
    """The metric objects, created once per process (prometheus' registry is global)."""
    with _LOCK:
        if _METRICS:
            return _METRICS
        p = _prometheus()
        _METRICS.update(
            events=p.Counter(
                "kc_sso_events",
                "Middleware outcomes, by event and rule code",
                ["app", "event", "code"],
            ),
            refused=p.Counter(
                "kc_sso_requests_refused",
                "Requests whose session was taken out or refused, by reason",
                ["app", "reason", "source"],
            ),
            store_errors=p.Counter(
                "kc_sso_store_errors", "Revocations that could not be stored", ["app"]
            ),
            jwks=p.Counter(
                "kc_sso_jwks_fetches", "Fetches of the OP's keys", ["app", "reason", "result"]
            ),
            liveness=p.Counter("kc_sso_liveness_checks", "Liveness verdicts", ["app", "result"]),
            backchannel=p.Histogram(
                "kc_sso_backchannel_duration_seconds",
                "Back-channel logout handling time (validation, store, acknowledgements)",
                ["app"],
                buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            ),
            propagation=p.Histogram(
                "kc_sso_propagation_seconds",
                "From a revocation's write to this worker's replica applying it",
                ["app"],
                buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5),
            ),
            replica=p.Gauge(
                "kc_sso_replica_entries",
                "Revocations held by this worker's replica",
                ["app"],
                # live*: mark_process_dead (gunicorn's child_exit) forgets a dead worker's
                # value; the others keep it for ever
                multiprocess_mode="livemax",
            ),
            available=p.Gauge(
                "kc_sso_store_available",
                "1 when the revocation store's replica is current",
                ["app"],
                multiprocess_mode="livemin",
            ),
        )
        return _METRICS


def install(events: Events, store: RevocationStore) -> Callable[[], None]:
    """Count ``events`` (and follow ``store``'s availability) in Prometheus metrics.

    Returns the function to call once the store has started (in the worker): only then is
    the availability gauge written, so a process that never serves (a pre-forking server's
    master that imported the app) leaves no sample that would hold the minimum at 0."""
    metrics = _metrics()
    app = events.app_name

    def started() -> None:
        metrics["available"].labels(app).set(1 if store.status().available else 0)

    def record(event: Event) -> None:
        fields = event.fields
        metrics["events"].labels(app, event.name, str(fields.get("code") or "")).inc()
        name = event.name
        if name == ev.REQUEST_REFUSED:
            # Only the check's refusals carry a reason: a wrong method or an oversized body
            # at the health or metrics path, which anyone can send, is no session refused
            # (it is counted above, by event and code).
            if fields.get("reason") is not None:
                metrics["refused"].labels(app, fields["reason"], fields.get("source")).inc()
        elif name == ev.STORE_FAILED:
            metrics["store_errors"].labels(app).inc()
        elif name == ev.JWKS_FAILED and "code" in fields:
            pass  # the request a failed fetch refused: that fetch was counted, by its reason
        elif name in (ev.JWKS_FETCHED, ev.JWKS_FAILED, ev.JWKS_THROTTLED):
            result = {ev.JWKS_FETCHED: "ok", ev.JWKS_FAILED: "failed"}.get(name, "throttled")
            metrics["jwks"].labels(app, str(fields.get("reason") or "unknown_kid"), result).inc()
        elif name in (ev.LIVENESS_ALIVE, ev.LIVENESS_ENDED, ev.LIVENESS_FAILED):
            metrics["liveness"].labels(app, name.rpartition(".")[2]).inc()
        elif name == ev.BACKCHANNEL_ACCEPTED and fields.get("duration_ms") is not None:
            metrics["backchannel"].labels(app).observe(fields["duration_ms"] / 1000)
        elif name == ev.REVOCATION_APPLIED:
            if fields.get("propagation_ms") is not None:
                metrics["propagation"].labels(app).observe(
                    max(0.0, fields["propagation_ms"]) / 1000
                )
            metrics["replica"].labels(app).set(store.replica_state()[0])
        elif name in (ev.STORE_UNAVAILABLE, ev.STORE_RECOVERED):
            metrics["available"].labels(app).set(1 if name == ev.STORE_RECOVERED else 0)

    events.record_with(record)
    return started


def _registry() -> Any:
    p = _prometheus()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = p.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return p.REGISTRY


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its content type (every worker's, in
    multiprocess mode)."""
    p = _prometheus()
    return p.generate_latest(_registry()), p.CONTENT_TYPE_LATEST


def wsgi_app() -> Any:
    """A WSGI app answering the metrics, to mount where your app wants them."""
    return _prometheus().make_wsgi_app(_registry())


def asgi_app() -> Any:
    """An ASGI app answering the metrics, to mount where your app wants them."""
    return _prometheus().make_asgi_app(_registry())
