"""The demo: single sign-out across the two example apps, with a real Keycloak.

Starts, all on 127.0.0.1: Keycloak (realm ``demo`` from ``examples/keycloak/realm.json``), a
Redis server as the shared revocation store, the Flask example under gunicorn and the FastAPI
example under uvicorn (two workers each).  Prints the URLs and the demo users, then waits
until Ctrl-C, and stops everything.

Run it with ``bash scripts/demo.sh`` (which installs what is missing first).
"""

from __future__ import annotations

import signal
import socket
import sys
import tempfile
from contextlib import ExitStack, suppress
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devtools.apps import AppServer, app_env, free_port  # noqa: E402
from devtools.keycloak import (  # noqa: E402
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    KEYCLOAK_VERSION,
    KeycloakServer,
)
from devtools.redis_server import RedisServer  # noqa: E402

REALM_FILE = REPO / "examples" / "keycloak" / "realm.json"
USERS = (("alice", "alice-password"), ("bob", "bob-password"))


def preferred_port(port: int) -> int:
    """``port`` if it is free on 127.0.0.1 (memorable URLs), else any free one."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


def main() -> None:
    log_dir = Path(tempfile.mkdtemp(prefix="kc-sso-demo-"))
    keycloak_port = preferred_port(8080)
    ports = {"flask": preferred_port(5000), "fastapi": preferred_port(8000)}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    secrets = {"flask": "flask-secret", "fastapi": "fastapi-secret"}

    with ExitStack() as running:
        print("Starting Redis ...", flush=True)
        redis_server = running.enter_context(RedisServer())
        print(f"Starting Keycloak {KEYCLOAK_VERSION} (about 10-40 s) ...", flush=True)
        keycloak = running.enter_context(
            KeycloakServer(
                REALM_FILE,
                {"FLASK_APP_URL": urls["flask"], "FASTAPI_APP_URL": urls["fastapi"]},
                port=keycloak_port,
                work_dir=log_dir / "keycloak",
            )
        )
        print(f"Keycloak ready in {keycloak.startup_seconds:.1f} s", flush=True)
        apps = {}
        for name in ("flask", "fastapi"):
            env = app_env(
                issuer=keycloak.issuer(),
                client_id=f"{name}-app",
                client_secret=secrets[name],
                cookie=f"{name}_session",
                store=f"{redis_server.url}?prefix=demo:",
            )
            apps[name] = running.enter_context(
                AppServer(name, env, port=ports[name], workers=2, log_dir=log_dir)  # type: ignore[arg-type]
            )

        print(
            "\nSingle sign-out demo is running (Ctrl-C stops everything):\n"
            f"  Flask app    {apps['flask'].url}/      (gunicorn, 2 workers)\n"
            f"  FastAPI app  {apps['fastapi'].url}/      (uvicorn, 2 workers)\n"
            f"  Keycloak     {keycloak.base_url}/admin/  ({ADMIN_USERNAME} / {ADMIN_PASSWORD})\n"
            f"  Redis store  {redis_server.url}\n"
            f"  Users        {', '.join(f'{u} / {p}' for u, p in USERS)}\n"
            f"  Logs         {log_dir}\n\n"
            "Try it: log in to the Flask app, open the FastAPI app (logged in by SSO),\n"
            "log out of either one, then reload the other: it shows you logged out.\n"
            "Use the 127.0.0.1 URLs exactly as printed (Keycloak checks redirect URIs).",
            flush=True,
        )
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with suppress(KeyboardInterrupt):
            signal.pause()
        print("\nStopping ...", flush=True)
    print("Stopped.")


if __name__ == "__main__":
    main()
