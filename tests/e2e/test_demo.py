"""The demo (``scripts/demo.py``) started as a background job, used, and stopped by SIGTERM
(and, in a test of its own, by Ctrl-C and SIGHUP).

``scripts/demo.sh`` is bootstrap plus this script; bootstrap is done here already.  The
demo runs in a session of its own on free ports (``--port-base``); once its banner says it
is running, one browser (httpx, through Keycloak's own form) logs in to all three apps and
logs out of the Flask app: the demo prints a live line per logout event.  Then SIGTERM:
the demo says it stopped, its process group is gone, and so is every process it started
(Keycloak's java, redis-server, the gunicorn and uvicorn masters and workers).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.apps import REPO
from devtools.keycloak import find_java
from tests.e2e.test_keycloak_e2e import (
    _browser_client,
    _cached_keycloak,
    _require,
    _submit_login_form,
)

pytestmark = [pytest.mark.keycloak, pytest.mark.servers, pytest.mark.redis]

DEMO = REPO / "scripts" / "demo.py"
#: what the demo's banner says once everything answers
RUNNING = "Single sign-out demo is running"
APPS = {"flask": 1, "fastapi": 2, "django": 3}  # port offsets from the base
STARTUP_TIMEOUT = 120.0
STOP_TIMEOUT = 45.0


def _port_base() -> int:
    """A port N with N .. N+3 free on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base: int = probe.getsockname()[1]
        if base + 3 > 65535:
            continue
        try:
            for port in range(base, base + 4):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no four consecutive free ports")


def _descendants(root: int) -> dict[int, str]:
    """Every live process below ``root``: pid → command line."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents[int(entry.name)] = ppid
        commands[int(entry.name)] = command
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = commands[pid]
                frontier.append(pid)
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (zombies count as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Demo:
    """The demo process and what it printed so far."""

    def __init__(self, process: subprocess.Popen[str], base: int) -> None:
        self.process = process
        #: Keycloak's port; the apps' are the next three
        self.base = base
        #: the processes the demo started (pid → command line), once the test looked
        self.started: dict[int, str] = {}
        self.lines: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._new.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float) -> str:
        """The first line (printed so far or next) matching ``pattern``."""
        for line in self.lines:
            if re.search(pattern, line):
                return line
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._new.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None and self._new.empty():
                    break
                continue
            self.lines.append(line)
            if re.search(pattern, line):
                return line
        output = "\n".join(self.lines)
        pytest.fail(f"the demo printed no line matching {pattern!r}:\n{output}")

    def close(self) -> None:
        """Close the pipe once the demo has exited and its reader has read it to the end."""
        assert self.process.stdout is not None
        self._reader.join(timeout=10)
        self.process.stdout.close()

    @property
    def output(self) -> str:
        while not self._new.empty():
            self.lines.append(self._new.get())
        return "\n".join(self.lines)


@pytest.fixture
def demo() -> Iterator[Demo]:
    _require(find_java() is not None, "no Java 17+ runtime (apt-get install openjdk-17-jre)")
    _require(_cached_keycloak(), "no Keycloak distribution cached (scripts/bootstrap.sh)")
    _require(shutil.which("redis-server") is not None, "redis-server is not installed")
    base = _port_base()
    process = subprocess.Popen(
        [sys.executable, "-u", str(DEMO), "--port-base", str(base)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a background job: no terminal's signals reach it
    )
    running = Demo(process, base)
    try:
        yield running
    finally:
        # Whatever the test saw, leave nothing running.
        started = {**running.started}
        if process.poll() is None:
            started.update(_descendants(process.pid))
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in started:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        running.close()


def _log_in_everywhere_and_out_of_flask(base: int) -> None:
    """One browser: Keycloak's form at the Flask app, SSO into the others, then /logout."""
    urls = {name: f"http://127.0.0.1:{base + offset}" for name, offset in APPS.items()}
    with _browser_client() as browser:
        page = browser.get(f"{urls['flask']}/login")
        page = _submit_login_form(browser, page, "alice")
        assert "Logged in as" in page.text, page.text[:500]
        for name in ("fastapi", "django"):
            sso = browser.get(f"{urls[name]}/login")
            assert "Logged in as" in sso.text, (name, sso.text[:500])
        landing = browser.get(f"{urls['flask']}/logout")
        assert str(landing.url) == f"{urls['flask']}/"
        for name in ("fastapi", "django"):
            home = browser.get(f"{urls[name]}/")
            said = re.search(r'<p id="signed-out"[^>]*>(.*?)</p>', home.text)
            assert said is not None, (name, home.text)
            assert said.group(1).startswith(
                "You were signed out because you logged out of the Flask app"
            ), (name, said.group(1))


def test_the_demo_runs_prints_logout_events_and_stops_on_sigterm(demo: Demo) -> None:
    """Banner, a live line per logout event, and after SIGTERM nothing of it is left."""
    banner = demo.wait_for(RUNNING, STARTUP_TIMEOUT)
    assert "Ctrl-C" in banner
    base = demo.base
    for name, offset in APPS.items():
        assert f"http://127.0.0.1:{base + offset}/" in demo.output, name
    started = demo.started = _descendants(demo.process.pid)
    commands = " ".join(started.values())
    for program in ("java", "redis-server", "gunicorn", "uvicorn"):
        assert program in commands, f"no {program} among the demo's processes: {started}"

    _log_in_everywhere_and_out_of_flask(base)

    worker = r"worker \d+ +"
    demo.wait_for(rf"^\[\d\d:\d\d:\d\d\] Flask app +{worker}local logout", 10)
    for app in ("Flask app", "FastAPI app", "Django app"):
        line = demo.wait_for(rf"{app} +{worker}back-channel logout accepted", 10)
        assert re.search(r"at most \d+ ms after Keycloak sent it\)$", line), line
    demo.wait_for(rf"Flask app +{worker}back from Keycloak's logout, state verified", 10)
    for app in ("FastAPI app", "Django app"):
        demo.wait_for(rf"{app} +{worker}a signed-out session was taken out of a request", 10)

    demo.process.send_signal(signal.SIGTERM)
    _assert_stopped_cleanly(demo, started)


def _assert_stopped_cleanly(demo: Demo, started: dict[int, str]) -> None:
    """The demo exits 0 saying so, and nothing it started is left."""
    demo.process.wait(timeout=STOP_TIMEOUT)
    assert demo.process.returncode == 0, demo.output
    assert demo.output.rstrip().endswith("Stopped."), demo.output
    with pytest.raises(ProcessLookupError):
        os.killpg(demo.process.pid, 0)  # the demo's own process group is gone
    deadline = time.monotonic() + 5  # reparented children are reaped by init
    while (left := {pid: cmd for pid, cmd in started.items() if _alive(pid)}) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert not left, f"processes the demo started are still running: {left}"


@pytest.mark.parametrize(
    "stop",
    [
        pytest.param("ctrl-c", id="Ctrl-C: SIGINT to the whole foreground group"),
        pytest.param("hangup", id="a closed terminal: SIGHUP"),
    ],
)
def test_the_demo_stops_on_ctrl_c_and_on_a_closed_terminal(stop: str, demo: Demo) -> None:
    """The other two ways README names to stop it leave nothing running either."""
    demo.wait_for(RUNNING, STARTUP_TIMEOUT)
    started = demo.started = _descendants(demo.process.pid)
    if stop == "ctrl-c":
        os.killpg(demo.process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    else:
        demo.process.send_signal(signal.SIGHUP)
    _assert_stopped_cleanly(demo, started)


@pytest.mark.parametrize(
    ("name", "fields", "says"),
    [
        pytest.param(
            "backchannel.accepted",
            {"sid_tag": "0123456789ab", "scope": "session", "delay_ms": 14},
            "back-channel logout accepted (session, tag 01234567…, at most 14 ms after"
            " Keycloak sent it)",
            id="back-channel",
        ),
        pytest.param(
            "backchannel.accepted",
            {"sid_tag": None, "scope": "user", "delay_ms": 3},
            "back-channel logout accepted (all sessions of the user, at most 3 ms after"
            " Keycloak sent it)",
            id="back-channel for a user",
        ),
        pytest.param(
            "admin.accepted",
            {"action": "LOGOUT", "revocations": 1},
            "Keycloak's admin-URL request k_logout accepted (1 revocation)",
            id="sign out all",
        ),
        pytest.param(
            "request.refused",
            {"reason": "backchannel", "sid_tag": "ba9876543210", "source": "cookie"},
            "a signed-out session was taken out of a request (reason backchannel, tag"
            " ba987654…); the page says why",
            id="refused",
        ),
    ],
)
def test_a_live_line(name: str, fields: dict[str, object], says: str) -> None:
    """An event line of an app's log becomes one line: time, app, worker, what happened."""
    spec = importlib.util.spec_from_file_location("kc_sso_demo_script", DEMO)
    assert spec is not None
    assert spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # dataclasses look their module up there
    try:
        spec.loader.exec_module(script)
    finally:
        del sys.modules[spec.name]

    at = time.mktime((2026, 12, 1, 12, 3, 4, 0, 0, -1))
    event = {"at": at, "app": "FastAPI app", "pid": 4242, "event": name}
    line = "[2026-12-01 12:03:04] kc-sso-event " + json.dumps({**event, "fields": fields})
    assert script.live_line(line) == (at, f"[12:03:04] FastAPI app  worker 4242    {says}")
    assert script.live_line("[INFO] Booting worker with pid: 4242") is None
    assert script.live_line("kc-sso-event {not json") is None
