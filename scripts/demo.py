"""The demo: single sign-out across the three example apps, with a real Keycloak.

Starts, all on 127.0.0.1: Redis (the revocation store all three apps share), Keycloak
(realm ``demo`` from ``examples/keycloak/realm.json``), the Flask example under gunicorn,
the FastAPI example under uvicorn and the Django example under gunicorn (two workers each),
each page linking the other two.  Prints the URLs and the demo users, then one line per
logout event the apps' middleware reports (which app, which worker, what happened, how long
after Keycloak sent it), until Ctrl-C or SIGTERM (also SIGHUP) stops everything; a signal
while starting stops what has started.

Ports: Keycloak 8080, Flask 5000, FastAPI 8000, Django 8001 when free (else any free
port); ``--port-base N`` (or ``KC_SSO_DEMO_PORT_BASE``) takes N, N+1, N+2 and N+3 instead.

Run it with ``bash scripts/demo.sh`` (which installs what is missing first).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devtools.apps import AppKind, AppServer, app_env, free_port  # noqa: E402
from devtools.keycloak import (  # noqa: E402
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    KEYCLOAK_VERSION,
    KeycloakServer,
)
from devtools.redis_server import RedisServer  # noqa: E402
from examples._logging import LINE_PREFIX  # noqa: E402

REALM_FILE = REPO / "examples" / "keycloak" / "realm.json"
USERS = (("alice", "alice-password"), ("bob", "bob-password"))
#: the banner's first line, which tests wait for
RUNNING = "Single sign-out demo is running"
#: seconds between two looks at the apps' logs
TAIL_INTERVAL = 0.2
#: signals that stop the demo as Ctrl-C does
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class Demo:
    """One app of the demo: its name on the page, how it is served, its Keycloak client."""

    name: str
    kind: AppKind
    server: str
    client_id: str
    secret: str
    port: int
    placeholder: str


APPS = (
    Demo("Flask app", "flask", "gunicorn", "flask-app", "flask-secret", 5000, "FLASK_APP_URL"),
    Demo(
        "FastAPI app",
        "fastapi",
        "uvicorn",
        "fastapi-app",
        "fastapi-secret",
        8000,
        "FASTAPI_APP_URL",
    ),
    Demo(
        "Django app",
        "django-wsgi",
        "gunicorn",
        "django-app",
        "django-secret",
        8001,
        "DJANGO_APP_URL",
    ),
)
KEYCLOAK_PORT = 8080


def preferred_port(port: int) -> int:
    """``port`` if it is free on 127.0.0.1 (memorable URLs), else any free one."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


def _options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/demo.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    base = os.environ.get("KC_SSO_DEMO_PORT_BASE")
    parser.add_argument(
        "--port-base",
        type=int,
        default=int(base) if base else None,
        metavar="N",
        help="Keycloak on port N, Flask N+1, FastAPI N+2, Django N+3 "
        "(default: 8080, 5000, 8000, 8001 when free; env KC_SSO_DEMO_PORT_BASE)",
    )
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- live lines


def describe(event: str, fields: Mapping[str, Any]) -> str | None:
    """What the live line says about one event (``None``: not a logout event)."""
    tag = f"tag {str(fields['sid_tag'])[:8]}…" if fields.get("sid_tag") else None
    if event == "logout.local":
        return "local logout: this app's session ended, the browser is sent to Keycloak" + (
            f" ({tag})" if tag else ""
        )
    if event == "logout.return":
        verified = "verified" if fields.get("verified") else "NOT verified (the 400 page)"
        return f"back from Keycloak's logout, state {verified}"
    if event == "logout.api":
        return "API logout" + (", Keycloak session ended" if fields.get("op_ended") else "")
    if event == "backchannel.accepted":
        details = ["all sessions of the user" if fields.get("scope") == "user" else "session"]
        details += [tag] if tag else []
        delay = fields.get("delay_ms")
        if isinstance(delay, int | float):
            # From the token's iat, which Keycloak writes in whole seconds: an upper bound.
            details.append(f"at most {delay:.0f} ms after Keycloak sent it")
        return f"back-channel logout accepted ({', '.join(details)})"
    if event == "backchannel.rejected":
        return f"back-channel logout REJECTED ({fields.get('code')})"
    if event == "admin.accepted":
        action = fields.get("action")
        path = {"LOGOUT": "k_logout", "PUSH_NOT_BEFORE": "k_push_not_before"}.get(str(action))
        count = fields.get("revocations")
        return (
            f"Keycloak's admin-URL request {path or action} accepted"
            f" ({count} revocation{'' if count == 1 else 's'})"
        )
    if event == "frontchannel.accepted":
        return "front-channel logout accepted" + (f" ({tag})" if tag else "")
    if event == "request.refused":
        why = ", ".join([f"reason {fields.get('reason')}", *([tag] if tag else [])])
        return f"a signed-out session was taken out of a request ({why}); the page says why"
    if event == "liveness.ended":
        part = ", this app's part only" if fields.get("scope") == "app_session" else ""
        return f"Keycloak says the session is gone (liveness check{part})"
    return None


def live_line(line: str) -> tuple[float, str] | None:
    """When, and the demo's line, for one event line of an app's log; ``None`` for any
    other line."""
    start = line.find(LINE_PREFIX)
    if start < 0:
        return None
    try:
        event = json.loads(line[start + len(LINE_PREFIX) :])
        says = describe(str(event["event"]), event["fields"])
        if says is None:
            return None
        at = float(event["at"])
        stamp = time.strftime("%H:%M:%S", time.localtime(at))
        return at, f"[{stamp}] {event['app']:<12} worker {event['pid']:<7} {says}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class LiveLines(threading.Thread):
    """Follows the apps' logs and prints a line per logout event, as they come."""

    def __init__(self, logs: list[Path], out: Callable[[str], None]) -> None:
        super().__init__(name="demo-live-lines", daemon=True)
        self._logs = logs
        self._out = out
        self._stop = threading.Event()

    def run(self) -> None:
        offsets = dict.fromkeys(self._logs, 0)
        partial = dict.fromkeys(self._logs, b"")
        while not self._stop.wait(TAIL_INTERVAL):
            batch: list[tuple[float, str]] = []
            for log in self._logs:
                try:
                    with log.open("rb") as handle:
                        handle.seek(offsets[log])
                        chunk = handle.read()
                except OSError:
                    continue
                offsets[log] += len(chunk)
                *lines, partial[log] = (partial[log] + chunk).split(b"\n")
                for raw in lines:
                    parsed = live_line(raw.decode(errors="replace"))
                    if parsed is not None:
                        batch.append(parsed)
            # In time order across the apps (each app's own lines are in order already).
            for _, text in sorted(batch, key=lambda item: item[0]):
                self._out(text)

    def stop(self) -> None:
        self._stop.set()


# --------------------------------------------------------------------------- running


def _say(text: str) -> None:
    print(text, flush=True)


def start(running: ExitStack, port_base: int | None) -> None:
    """Start Redis, Keycloak and the apps; each one's stop is registered before it starts."""
    log_dir = Path(tempfile.mkdtemp(prefix="kc-sso-demo-"))
    if port_base is None:
        keycloak_port = preferred_port(KEYCLOAK_PORT)
        ports = [preferred_port(app.port) for app in APPS]
    else:
        keycloak_port = port_base
        ports = [port_base + 1 + n for n in range(len(APPS))]
    urls = [f"http://127.0.0.1:{port}" for port in ports]

    _say("Starting Redis ...")
    redis_server = RedisServer(own_session=True)
    running.callback(redis_server.close)
    redis_server.start()

    _say(f"Starting Keycloak {KEYCLOAK_VERSION} (about 10-40 s) ...")
    keycloak = KeycloakServer(
        REALM_FILE,
        {app.placeholder: url for app, url in zip(APPS, urls, strict=True)},
        port=keycloak_port,
        work_dir=log_dir / "keycloak",
    )
    running.callback(keycloak.stop)
    keycloak.start()
    _say(f"Keycloak ready in {keycloak.startup_seconds:.1f} s")

    others = ",".join(f"{app.name}={url}" for app, url in zip(APPS, urls, strict=True))
    servers = []
    for app, port in zip(APPS, ports, strict=True):
        _say(f"Starting the {app.name} ({app.server}, 2 workers) ...")
        env = app_env(
            issuer=keycloak.issuer(),
            client_id=app.client_id,
            client_secret=app.secret,
            cookie=f"{app.kind.split('-')[0]}_session",
            # One store, one prefix: entries are scoped by issuer (and client), so sharing
            # is safe, and a page can say which app the logout came from.
            store=f"{redis_server.url}?prefix=demo:",
            # Also catch sessions Keycloak ends without telling (idle or max lifetime).
            liveness_interval="30",
        )
        env["EXAMPLE_OTHER_APPS"] = others
        env["EXAMPLE_EVENT_LOG"] = "1"
        env["TMPDIR"] = str(log_dir)  # the Django example's database: this run's own
        server = AppServer(app.kind, env, port=port, workers=2, log_dir=log_dir)
        running.callback(server.stop)
        server.start()
        servers.append(server)

    lines = LiveLines([server.log_path for server in servers], _say)
    lines.start()
    running.callback(lines.stop)

    width = max(len(app.name) for app in APPS)
    listing = "\n".join(
        f"  {app.name:<{width}}  {server.url}/   ({app.server}, 2 workers)"
        for app, server in zip(APPS, servers, strict=True)
    )
    _say(
        f"\n{RUNNING} (Ctrl-C stops everything):\n"
        f"{listing}\n"
        f"  {'Keycloak':<{width}}  {keycloak.base_url}/admin/   "
        f"({ADMIN_USERNAME} / {ADMIN_PASSWORD})\n"
        f"  {'Users':<{width}}  {', '.join(f'{u} / {p}' for u, p in USERS)}\n"
        f"  {'Logs':<{width}}  {log_dir}\n\n"
        f"Try it: open {servers[0].url}/ and log in as alice; open the other two apps\n"
        'and click "Log in" (no password: single sign-on); click "Log out" in one of\n'
        "them, then reload the others: each says you were signed out, and why.  Use the\n"
        "127.0.0.1 URLs exactly as printed (Keycloak checks redirect URIs).\n\n"
        "Logout events, as the apps' middleware reports them:"
    )


def _stop_on(signals: tuple[signal.Signals, ...]) -> None:
    """Make ``signals`` stop the demo as Ctrl-C does.

    Also SIGINT when it came ignored (a shell without job control starts background jobs
    so), so that ``kill -INT`` works too; a SIGHUP ignored by ``nohup`` stays ignored.
    """
    for number in signals:
        if number != signal.SIGHUP or signal.getsignal(number) is not signal.SIG_IGN:
            signal.signal(number, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    options = _options(argv)
    _stop_on(STOP_SIGNALS)  # from the start: a signal while starting stops what started
    running = ExitStack()
    status = 0
    try:
        start(running, options.port_base)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        _say("\nStopping (a few seconds) ...")
    except Exception as exc:
        _say(f"\nThe demo could not start: {exc}")
        status = 1
    finally:
        # Stopping is not interrupted: every child must be stopped.
        for number in STOP_SIGNALS:
            signal.signal(number, signal.SIG_IGN)
        running.close()
    _say("Stopped.")
    return status


if __name__ == "__main__":
    sys.exit(main())
