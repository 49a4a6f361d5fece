"""Throwaway ``redis-server`` processes (Debian's binary) for tests, with failure controls.

``RedisServer`` runs one on a free 127.0.0.1 port with its own temp directory::

    with RedisServer() as server:
        store = RedisStore.from_url(server.url)
        server.kill()       # SIGKILL: connections drop, unsaved data is lost
        server.start()      # same port again
        server.restart()    # SHUTDOWN SAVE + start: data survives, connections drop

``RedisSentinel`` runs a Sentinel (``redis-server --sentinel``) monitoring one server.

Without the binary the test is skipped.  When ``CI`` or ``KC_SSO_REQUIRE_SERVICES=1`` is
set it fails instead, so a CI image missing the package cannot pass by skipping.
"""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import pytest

__all__ = ["RedisSentinel", "RedisServer", "require_redis_server"]

_READY_TIMEOUT = 10.0


def require_redis_server() -> str:
    """The ``redis-server`` path; else skip the test, or fail it when services are required."""
    path = shutil.which("redis-server")
    if path is not None:
        return path
    reason = "redis-server is not installed (Debian: apt-get install redis-server)"
    if os.environ.get("CI") or os.environ.get("KC_SSO_REQUIRE_SERVICES") == "1":
        pytest.fail(
            f"{reason}; required because CI or KC_SSO_REQUIRE_SERVICES=1 is set", pytrace=False
        )
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _command(port: int, *commands: list[str], timeout: float = 1.0) -> bytes:
    """Send inline commands and return the raw reply bytes read first (no client library)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"".join(" ".join(words).encode() + b"\r\n" for words in commands))
        return sock.recv(4096)


class _RedisProcess(abc.ABC):
    """A redis-server process on a fixed port, restartable."""

    def __init__(self, kind: str) -> None:
        self.binary = require_redis_server()
        self.port = _free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix=f"kcsso-{kind}-")
        self.dir = Path(self._tmp.name)
        self.process: subprocess.Popen[bytes] | None = None

    @abc.abstractmethod
    def _argv(self) -> list[str]:
        """The command line (the port and directory stay the same across restarts)."""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start on the same port (and with the same data directory) as before."""
        if self.running:
            return
        log = self.dir / "redis.log"
        self.process = subprocess.Popen(
            self._argv(), cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with contextlib.suppress(OSError):
                # -NOAUTH: up, but password-protected; -LOADING would mean not yet.
                if _command(self.port, ["PING"]).startswith((b"+PONG", b"-NOAUTH")):
                    return
            time.sleep(0.02)
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
        self.kill()
        raise RuntimeError(f"{self._argv()} did not become ready on port {self.port}:\n{tail}")

    def kill(self) -> None:
        """SIGKILL: every connection drops at once and unsaved data is lost."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def close(self) -> None:
        self.kill()
        self._tmp.cleanup()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RedisServer(_RedisProcess):
    """A standalone redis-server; no persistence unless :meth:`restart` saves on the way."""

    def __init__(self, *, password: str | None = None) -> None:
        super().__init__("redis")
        self.password = password

    def _argv(self) -> list[str]:
        argv = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.dir / "redis.log"),
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        if self.password is not None:
            argv += ["--requirepass", self.password]
        return argv

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password is not None else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def stop(self, *, save: bool = True) -> None:
        """Shut down cleanly, writing the dataset to disk first when ``save``."""
        if not self.running:
            return
        assert self.process is not None
        auth = [["AUTH", self.password]] if self.password is not None else []
        with contextlib.suppress(OSError):  # the server closes the connection on us
            _command(self.port, *auth, ["SHUTDOWN", "SAVE" if save else "NOSAVE"], timeout=10.0)
        try:
            self.process.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None

    def restart(self, *, keep_data: bool = True) -> None:
        """Stop and start again on the same port; every client connection drops."""
        self.stop(save=keep_data)
        if not keep_data:
            (self.dir / "dump.rdb").unlink(missing_ok=True)
        self.start()


class RedisSentinel(_RedisProcess):
    """One Sentinel monitoring ``server`` under ``service_name`` (quorum 1)."""

    def __init__(self, server: RedisServer, service_name: str = "kcsso") -> None:
        super().__init__("sentinel")
        self.server = server
        self.service_name = service_name

    def _argv(self) -> list[str]:
        # Sentinel rewrites its config file, so it lives in the writable temp dir.
        config = self.dir / "sentinel.conf"
        if not config.exists():
            config.write_text(
                f"port {self.port}\n"
                "bind 127.0.0.1\n"
                f"dir {self.dir}\n"
                f"logfile {self.dir / 'redis.log'}\n"
                f"sentinel monitor {self.service_name} 127.0.0.1 {self.server.port} 1\n"
                f"sentinel down-after-milliseconds {self.service_name} 1000\n"
            )
        return [self.binary, str(config), "--sentinel"]

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service_name}"

    def __enter__(self) -> RedisSentinel:
        self.start()
        return self
