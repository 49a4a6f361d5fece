"""gunicorn settings for the test servers: say when each worker has loaded the app.

gunicorn logs "Booting worker" before the worker imports the app; the readiness check in
``apps.AppServer`` needs to know that every worker can serve.
"""

from __future__ import annotations

from typing import Any

READY_MARKER = "kc-sso worker ready"


def post_worker_init(worker: Any) -> None:
    worker.log.info("%s pid=%s", READY_MARKER, worker.pid)


def child_exit(server: Any, worker: Any) -> None:
    """A worker that exits leaves prometheus-client's multiprocess files of its live
    gauges behind; mark them dead, as the README's metrics section says to."""
    import os

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
