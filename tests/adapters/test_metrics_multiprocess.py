"""Metrics as README's "Metrics" section says to run them (the extra installed,
served where the app wants, several workers in prometheus-client's multiprocess mode).

Each scenario runs in fresh processes: prometheus-client's registry is per process and its
multiprocess mode is chosen at import.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import sys
from kc_sso_middleware import Settings
from kc_sso_middleware.wsgi import SSOMiddleware
from kc_sso_middleware import metrics

store, mode, metrics_path = sys.argv[1], sys.argv[2], sys.argv[3] or None
settings = Settings(
    issuer="http://127.0.0.1:9/realms/r", client_id="app", client_secret="s",
    session_secret="x", store=store, metrics_path=metrics_path,
)
middleware = SSOMiddleware(lambda environ, start_response: [], settings)
if mode == "wsgi_app":      # README: install, then mount metrics.wsgi_app()
    started = metrics.install(middleware.events, middleware.store)
middleware.startup()
if mode == "wsgi_app" and started is not None:
    started()  # the availability once the store runs
if mode == "exit":          # gunicorn's worker_exit hook, as README's Lifecycle says
    middleware.close()
    sys.exit(0)
# a rejected back-channel request: one event
environ = {"REQUEST_METHOD": "POST", "PATH_INFO": settings.backchannel_path,
           "CONTENT_TYPE": "application/x-www-form-urlencoded", "CONTENT_LENGTH": "16",
           "wsgi.input": __import__("io").BytesIO(b"logout_token=xx"), "wsgi.url_scheme": "http",
           "SERVER_NAME": "app.test", "SERVER_PORT": "80", "HTTP_HOST": "app.test"}
b"".join(middleware(environ, lambda status, headers, exc_info=None: None))
if mode == "wsgi_app":      # metrics.wsgi_app() mounted where the app wants it
    out = []
    body = b"".join(metrics.wsgi_app()({"REQUEST_METHOD": "GET", "PATH_INFO": "/",
        "QUERY_STRING": "", "wsgi.url_scheme": "http"}, lambda s, h, e=None: out.append(s)))
    print(body.decode())
else:
    print(metrics.exposition()[0].decode())
"""


def _run(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).resolve().parents[2]
    return subprocess.run(
        [sys.executable, "-c", WORKER, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=root,  # this checkout's package, as the test run imports it
        timeout=60,
        check=True,
    )


def _sample(text: str, name: str) -> float | None:
    found = re.search(rf'^{name}\{{app="app"\}} ([0-9.e+-]+)$', text, re.M)
    return float(found.group(1)) if found else None


def test_a_worker_that_exited_leaves_no_store_unavailable_behind(tmp_path: Path) -> None:
    """README: under gunicorn set PROMETHEUS_MULTIPROC_DIR and call mark_process_dead from
    child_exit.  A worker that closed its middleware (worker_exit) and was marked dead must
    not hold kc_sso_store_available at 0 while every live worker's store is available."""
    prom = tmp_path / "prom"
    prom.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(prom)}
    store = f"sqlite:///{tmp_path / 'revocations.db'}"
    _run(tmp_path, store, "exit", "/metrics", env=env)
    from prometheus_client import multiprocess

    for dead in {int(m) for m in re.findall(r"_(\d+)\.db$", "\n".join(os.listdir(prom)), re.M)}:
        multiprocess.mark_process_dead(dead, str(prom))  # gunicorn's child_exit hook
    live = _run(tmp_path, store, "live", "/metrics", env=env).stdout
    assert _sample(live, "kc_sso_store_available") == 1.0


def test_metrics_served_by_wsgi_app_count_without_a_metrics_path(tmp_path: Path) -> None:
    """README: without KC_SSO_METRICS_PATH, install() and mount metrics.wsgi_app().
    (Before the fix README said wsgi_app() alone would do: it served no kc_sso metric.)"""
    store = f"sqlite:///{tmp_path / 'revocations.db'}"
    text = _run(tmp_path, store, "wsgi_app", "").stdout
    assert 'kc_sso_events_total{app="app",code=' in text, text[-2000:]
    assert _sample(text, "kc_sso_store_available") == 1.0
