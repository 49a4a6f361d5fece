"""Throughput under HTTP load: the example apps bare and with SSOMiddleware, side by side.

What it measures
    Requests per second on ``GET /me`` carrying a valid, not revoked session cookie (the
    session the examples store after login: ``id_token`` + ``user``), for

    * ``examples/fastapi_app.py`` under uvicorn, and
    * ``examples/flask_app.py`` under gunicorn (sync workers, as the examples run),

    each served three ways at once on 127.0.0.1: bare (the same example minus
    ``SSOMiddleware``, see ``bench/_app_fastapi.py`` and ``bench/_app_flask.py``), wrapped
    with the SQLite store, wrapped with the Redis store (a real ``redis-server`` from
    ``devtools/redis_server.py``).  Each store holds ``--preload`` other revoked
    sessions.  Access logs are off.  Servers come from ``devtools/apps.py``.

    The load generator is Debian's ``wrk`` (1 thread), else a small keep-alive Python client.
    Runs alternate: each round loads every variant of one app for ``--duration`` seconds,
    in a shuffled order; the ratio reported is the median over rounds of the same round's
    wrapped/bare throughput.  No run may see a non-2xx answer.

Target
    throughput wrapped/bare >= 0.95 for the SQLite and the Redis store.

Run
    .venv/bin/python bench/http_load.py                              # about 1 minute
    .venv/bin/python bench/http_load.py --rounds 9 --duration 5      # steadier
    .venv/bin/python bench/http_load.py --workers 2 --connections 32 --apps fastapi

The last line is ``RESULT http_load wrapped/bare=<worst of app x store>``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from _common import REPO, machine, median, session_cookie, session_data, table

from devtools.apps import AppServer, app_env
from devtools.redis_server import RedisServer
from kc_sso_middleware.stores import Revocation, RevocationStore
from kc_sso_middleware.stores.redis import RedisStore
from kc_sso_middleware.stores.sqlite import SQLiteStore

ISSUER = "http://127.0.0.1:9/realms/bench"  # never contacted: /me needs no OP
CLIENT_ID = "bench-app"
COOKIE = "session"
DEFAULT_TARGETS = {"flask": "examples.flask_app:app", "fastapi": "examples.fastapi_app:app"}
BENCH_TARGETS = {"flask": "bench._app_flask:app", "fastapi": "bench._app_fastapi:app"}


class BenchServer(AppServer):
    """An example app under its server, through a bench entry point, without access logs."""

    def __init__(self, kind: str, env: dict[str, str], **kwargs: object) -> None:
        super().__init__(kind, env, **kwargs)  # type: ignore[arg-type]

    def command(self) -> list[str]:
        command = [
            BENCH_TARGETS[self.kind] if part == DEFAULT_TARGETS[self.kind] else part
            for part in super().command()
        ]
        if "--access-logfile" in command:  # gunicorn: no access log at all
            at = command.index("--access-logfile")
            del command[at : at + 2]
        if self.kind == "fastapi":
            command.append("--no-access-log")
        return command


@dataclass
class Variant:
    app: str  # flask | fastapi
    name: str  # bare | sqlite | redis
    server: BenchServer
    cookie: str
    rps: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------- load


def run_wrk(url: str, cookie: str, args: argparse.Namespace) -> tuple[float, float]:
    """(requests/s, p50 latency ms) from one wrk run; fails on any non-2xx answer."""
    command = [
        "wrk",
        "-t1",
        f"-c{args.connections}",
        f"-d{args.duration}s",
        "--latency",
        "--timeout",
        "5s",
        "-H",
        f"Cookie: {COOKIE}={cookie}",
        url,
    ]
    out = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=args.duration + 30
    ).stdout
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if "Non-2xx" in out or (errors and int(errors.group(1)) + int(errors.group(4))):
        raise RuntimeError(f"wrk saw failed requests:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    latency = float(p50.group(1)) * scale[p50.group(2)] if p50 else float("nan")
    return rps, latency


def run_python_load(url: str, cookie: str, args: argparse.Namespace) -> tuple[float, float]:
    """Fallback without wrk: ``--connections`` threads with keep-alive http.client."""
    target = httpx.URL(url)
    deadline = time.monotonic() + args.duration
    counts: list[int] = []
    latencies: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        done, mine = 0, []
        conn = http.client.HTTPConnection(target.host, target.port, timeout=5)
        while time.monotonic() < deadline and done < 10_000_000:
            start = time.perf_counter()
            conn.request("GET", target.path, headers={"Cookie": f"{COOKIE}={cookie}"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{url} answered {response.status}")
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection(target.host, target.port, timeout=5)
            mine.append(time.perf_counter() - start)
            done += 1
        conn.close()
        with lock:
            counts.append(done)
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(args.connections)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(args.duration + 30)
    elapsed = time.monotonic() - started
    return sum(counts) / elapsed, median(latencies) * 1000 if latencies else float("nan")


# --------------------------------------------------------------------------- setup


def preload(store: RevocationStore, count: int) -> None:
    expires = time.time() + 36000
    for start in range(0, count, 5000):
        store.record(
            [
                Revocation.session(ISSUER, str(uuid.uuid4()), expires_at=expires)
                for _ in range(min(5000, count - start))
            ]
        )
    store.close()


def check(variant: Variant) -> None:
    """/me answers 200 with the cookie; the middleware is there exactly when it should be."""
    url = variant.server.url
    me = httpx.get(f"{url}/me", headers={"Cookie": f"{COOKIE}={variant.cookie}"}, timeout=10)
    if me.status_code != 200 or me.json().get("preferred_username") != "alice":
        raise RuntimeError(f"{variant.app} {variant.name}: /me answered {me.status_code}")
    probe = httpx.post(f"{url}/backchannel-logout", data={"logout_token": "x"}, timeout=10)
    served_by_middleware = probe.status_code == 400 and "invalid_request" in probe.text
    if served_by_middleware != (variant.name != "bare"):
        raise RuntimeError(
            f"{variant.app} {variant.name}: back-channel probe answered "
            f"{probe.status_code}; is SSOMiddleware (not) there?"
        )


@contextlib.contextmanager
def servers(args: argparse.Namespace, log_dir: Path) -> Iterator[list[Variant]]:
    with RedisServer() as redis_server, contextlib.ExitStack() as stack:
        db_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kcsso-load-")))
        variants: list[Variant] = []
        for app in args.apps:
            stores = {
                "bare": f"sqlite:///{db_dir}/{app}-bare.db",
                "sqlite": f"sqlite:///{db_dir}/{app}.db",
                "redis": f"{redis_server.url}?prefix=bench-{app}:",
            }
            preload(SQLiteStore.from_url(stores["sqlite"]), args.preload)
            preload(RedisStore.from_url(stores["redis"]), args.preload)
            env = app_env(
                issuer=ISSUER,
                client_id=CLIENT_ID,
                client_secret="bench-secret",
                cookie=COOKIE,
                store="",
            )
            secret = env["KC_SSO_SESSION_SECRET"]
            data = session_data(issuer=ISSUER, client_id=CLIENT_ID)
            cookie = session_cookie(
                "flask" if app == "flask" else "starlette", secret=secret, data=data
            )
            for name, store in stores.items():
                server_env = {
                    **env,
                    "KC_SSO_STORE": store,
                    "BENCH_WRAPPED": "0" if name == "bare" else "1",
                }
                server = BenchServer(app, server_env, workers=args.workers, log_dir=log_dir)
                variants.append(Variant(app, name, server, cookie))
        try:
            for variant in variants:  # one at a time: the machine has few cores
                stack.enter_context(variant.server)
            yield variants
        finally:
            stack.close()


def run(args: argparse.Namespace) -> int:
    print(machine())
    use_wrk = shutil.which("wrk") is not None and not args.python_client
    load = run_wrk if use_wrk else run_python_load
    print(
        f"load generator: {'wrk -t1' if use_wrk else 'python http.client threads'}, "
        f"{args.connections} connections, {args.duration} s per run; "
        f"{args.workers} worker(s) per server"
    )
    log_dir = Path(tempfile.mkdtemp(prefix="kcsso-load-logs-"))
    rng = random.Random(7)
    with servers(args, log_dir) as variants:
        for variant in variants:
            check(variant)
            load(
                f"{variant.server.url}/me",
                variant.cookie,
                argparse.Namespace(**{**vars(args), "duration": 1}),
            )  # warm-up
        started = time.monotonic()
        for round_no in range(args.rounds):
            for app in args.apps:
                group = [v for v in variants if v.app == app]
                rng.shuffle(group)
                for variant in group:
                    rps, p50 = load(f"{variant.server.url}/me", variant.cookie, args)
                    variant.rps.append(rps)
                    variant.latency_ms.append(p50)
            if time.monotonic() - started > args.max_seconds:
                print(f"(stopped after {round_no + 1} rounds: --max-seconds)")
                break
    print(f"load average after: {os.getloadavg()[0]:.2f} (1 min); server logs in {log_dir}")
    return report(variants, args)


def report(variants: list[Variant], args: argparse.Namespace) -> int:
    rounds = len(variants[0].rps)
    print(
        f"\n{rounds} rounds; req/s and p50 = medians over rounds; wrapped/bare = median of "
        "the same round's ratio\n"
    )
    rows = []
    worst = float("inf")
    for app in args.apps:
        bare = next(v for v in variants if v.app == app and v.name == "bare")
        for v in (x for x in variants if x.app == app):
            ratio = median(w / b for w, b in zip(v.rps, bare.rps, strict=True))
            if v.name != "bare":
                worst = min(worst, ratio)
            server = "gunicorn (sync)" if app == "flask" else "uvicorn"
            rows.append(
                (
                    f"{app} / {server}",
                    v.name,
                    f"{median(v.rps):.0f}",
                    f"{median(v.latency_ms):.2f}",
                    "-" if v.name == "bare" else f"{ratio:.3f}",
                    " ".join(f"{x:.0f}" for x in v.rps),
                )
            )
    print(table(("app", "variant", "req/s", "p50 ms", "wrapped/bare", "per round"), rows))
    met = worst >= 0.95
    print(f"\ntarget wrapped/bare >= 0.95 for sqlite and redis: {'met' if met else 'MISSED'}")
    print(
        f"RESULT http_load wrapped/bare={worst:.3f} (worst of {'/'.join(args.apps)} x sqlite/redis)"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--apps", nargs="+", choices=("fastapi", "flask"), default=["fastapi", "flask"]
    )
    parser.add_argument("--rounds", type=int, default=4, help="rounds (default 4)")
    parser.add_argument("--duration", type=int, default=2, help="seconds per run (default 2)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections")
    parser.add_argument("--workers", type=int, default=1, help="server workers (default 1)")
    parser.add_argument(
        "--preload",
        type=int,
        default=10_000,
        help="other revoked sessions in each store (default 10000)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=90.0,
        help="start no new round after this many seconds (default 90)",
    )
    parser.add_argument(
        "--python-client",
        action="store_true",
        help="use the Python load generator even if wrk is installed",
    )
    args = parser.parse_args()
    os.chdir(REPO)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
