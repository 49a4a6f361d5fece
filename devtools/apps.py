"""Run the example apps under their real servers (gunicorn, uvicorn) on loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import httpx

from .gunicorn_conf import READY_MARKER

REPO = Path(__file__).resolve().parents[1]

AppKind = Literal["flask", "fastapi", "django-wsgi", "django-asgi"]

#: what each kind's server imports unless told otherwise
DEFAULT_MODULES: dict[str, str] = {
    "flask": "examples.flask_app:app",
    "fastapi": "examples.fastapi_app:app",
    "django-wsgi": "examples.django_app.wsgi:application",
    "django-asgi": "examples.django_app.asgi:application",
}
#: the kinds served by gunicorn (WSGI); the others by uvicorn (ASGI)
GUNICORN_KINDS = frozenset({"flask", "django-wsgi"})


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class AppServer:
    """One example app under gunicorn (Flask, Django WSGI) or uvicorn (FastAPI, Django ASGI).

    A context manager.  The Django example creates its SQLite database on first start.
    """

    def __init__(
        self,
        kind: AppKind,
        env: Mapping[str, str],
        *,
        workers: int = 1,
        port: int | None = None,
        log_dir: Path | None = None,
        module: str | None = None,
    ) -> None:
        """``module`` overrides what the server imports (``package.module:attribute``)."""
        self.kind = kind
        self.module = module
        self.env = dict(env)
        self.workers = workers
        self.port = port or free_port()
        self.log_path = (log_dir or Path(tempfile.gettempdir())) / f"{kind}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        module = self.module or DEFAULT_MODULES[self.kind]
        if self.kind in GUNICORN_KINDS:
            return [
                sys.executable,
                "-m",
                "gunicorn",
                module,
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                str(self.workers),
                "--graceful-timeout",
                "2",
                "--access-logfile",
                "-",
                "--config",
                "python:devtools.gunicorn_conf",
            ]
        return [
            sys.executable,
            "-m",
            "uvicorn",
            module,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]

    def _ready_marker(self) -> str:
        if self.kind in GUNICORN_KINDS:
            return READY_MARKER
        return "Application startup complete."

    def _workers_ready(self, log_offset: int) -> bool:
        """Every worker has loaded the app (the first answer proves only one has)."""
        with self.log_path.open("rb") as log:
            log.seek(log_offset)
            text = log.read().decode(errors="replace")
        return text.count(self._ready_marker()) >= self.workers

    def start(self, timeout: float = 60.0) -> AppServer:
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                self.command(),
                cwd=REPO,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} app exited early:\n{self.log_text()}")
            try:
                answered = httpx.get(f"{self.url}/", timeout=1).status_code == 200
                if answered and self._workers_ready(log_offset):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.kind} app did not answer in {timeout} s:\n{self.log_text()}")

    def worker_pids(self) -> list[int]:
        """The worker processes (children of the server's master process)."""
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_text(self, *, full: bool = False) -> str:
        """The server's log (its last 4000 characters unless ``full``)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return text if full else text[-4000:]

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def app_env(
    *,
    issuer: str,
    client_id: str,
    client_secret: str,
    cookie: str,
    store: str,
    **extra: str,
) -> dict[str, str]:
    """The KC_SSO_* variables of one example app."""
    env = {
        "KC_SSO_ISSUER": issuer,
        "KC_SSO_CLIENT_ID": client_id,
        "KC_SSO_CLIENT_SECRET": client_secret,
        "KC_SSO_SESSION_SECRET": f"{client_id}-session-secret",
        "KC_SSO_SESSION_COOKIE": cookie,
        "KC_SSO_STORE": store,
    }
    env.update({f"KC_SSO_{name.upper()}": value for name, value in extra.items()})
    return env
