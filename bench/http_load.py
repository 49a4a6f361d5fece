"""Throughput under HTTP load: the example apps bare and with SSOMiddleware, side by side.

What it measures
    Requests per second, and the server's CPU time per request, on a request that carries a
    valid, not revoked login, for

    * ``examples/fastapi_app.py`` under uvicorn, and
    * ``examples/flask_app.py`` under gunicorn (sync workers, as the examples run),

    (with ``--apps flask-plain starlette-plain``: hello-world apps with no session handling,
    ``bench/_app_plain.py``, on ``GET /`` carrying no session: source ``none``, the lightest
    request the middleware can slow) and three identity sources:

    * ``cookie``: ``GET /me`` with the signed cookie session the example stores at login;
    * ``serverside``: ``GET /me`` with the session id of a server-side session
      (``EXAMPLE_SESSION_STORE``: starsessions, Flask-Session, both on a real Redis);
    * ``bearer``: ``GET /api/me`` with ``Authorization: Bearer <access token>`` (the app
      validates the token itself, the middleware checks it against the revocations).

    Each app is served bare (the same example minus ``SSOMiddleware``, see
    ``bench/_app_fastapi.py`` and ``bench/_app_flask.py``) and wrapped with each store of
    ``--stores`` (SQLite, Redis, Redis Cluster: real ``redis-server`` processes from
    ``devtools/redis_server.py``), all at once on 127.0.0.1.  Each store holds
    ``--preload`` other revoked sessions.  The logins are real: each server logs a user in
    through a stand-in OP (``kc_sso_middleware.testing.StandInOP``) before the runs.
    Access logs are off.

Method (see ``../shared/docs/benchmarking.md``)
    The servers run pinned to ``--server-core``, the load generator (Debian's ``wrk``, one
    thread) and this script to ``--load-core``.  Each round loads every variant of one app
    and source for ``--duration`` seconds in a shuffled order.  Per run: requests/s from
    wrk, and the user + system CPU ticks of the server's whole process group
    (``/proc/<pid>/stat``) divided by the requests served, which other tenants of the
    machine do not inflate the way they slow the wall clock.  Reported: medians over
    rounds of the same round's wrapped/bare throughput and bare/wrapped CPU per request,
    each with its spread (min-max over rounds).  No run may see a non-2xx answer.

Target
    throughput wrapped/bare >= 0.98 for every app, source and store.

Run
    .venv/bin/python bench/http_load.py                               # about 6 minutes
    .venv/bin/python bench/http_load.py --rounds 9 --duration 5       # steadier
    .venv/bin/python bench/http_load.py --apps fastapi --sources cookie --workers 2

The last line is ``RESULT http_load wrapped/bare=<worst median> cpu bare/wrapped=<worst>``;
``--json FILE`` writes every figure for ``bench/scaling.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _common import REPO, machine, median, table

from devtools.apps import AppServer, app_env
from devtools.redis_server import RedisServer
from kc_sso_middleware.stores import Revocation, RevocationStore, open_store
from kc_sso_middleware.testing import StandInOP, mint_jwt

COOKIE = "session"
#: per app: its server's kind (gunicorn or uvicorn) and the bench entry point it serves
APPS = {
    "flask": ("flask", "bench._app_flask:app"),
    "fastapi": ("fastapi", "bench._app_fastapi:app"),
    "flask-plain": ("flask", "bench._app_plain:flask_app"),
    "starlette-plain": ("fastapi", "bench._app_plain:starlette_app"),
}
#: the hello-world apps: no session of their own, a request carries none (source "none")
PLAIN = frozenset({"flask-plain", "starlette-plain"})
SERVERS = {
    "flask": "gunicorn (sync)",
    "fastapi": "uvicorn",
    "flask-plain": "gunicorn (sync)",
    "starlette-plain": "uvicorn",
}
SOURCES = ("cookie", "serverside", "bearer")
STORES = ("sqlite", "redis", "cluster")
TARGET = 0.98
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchServer(AppServer):
    """An example app under its server, through a bench entry point, without access logs,
    pinned to one core."""

    def __init__(self, app: str, env: dict[str, str], core: int, **kwargs: Any) -> None:
        kind, module = APPS[app]
        super().__init__(kind, env, module=module, **kwargs)  # type: ignore[arg-type]
        self.core = core

    def command(self) -> list[str]:
        command = super().command()
        if "--access-logfile" in command:  # gunicorn: no access log at all
            at = command.index("--access-logfile")
            del command[at : at + 2]
        if self.kind == "fastapi":
            command.append("--no-access-log")
        return ["taskset", "-c", str(self.core), *command]

    def cpu_ticks(self) -> int:
        """User + system clock ticks of every process of the server's process group."""
        assert self.process is not None
        group, total = self.process.pid, 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:  # the process ended meanwhile
                continue
            fields = text[text.rindex(")") + 2 :].split()
            if int(fields[2]) == group:  # field 5, pgrp (fields[0] is field 3)
                total += int(fields[11]) + int(fields[12])  # fields 14, 15: utime, stime
        return total


@dataclass
class Variant:
    app: str  # flask | fastapi
    source: str  # cookie | serverside | bearer
    store: str  # bare | sqlite | redis | cluster
    server: BenchServer
    path: str = "/me"
    headers: dict[str, str] = field(default_factory=dict)
    rps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{self.server.url}{self.path}"


# --------------------------------------------------------------------------- load


def run_wrk(variant: Variant, args: argparse.Namespace, duration: int) -> None:
    """One wrk run on ``variant``: appends req/s, CPU µs per request and p50 latency."""
    command = ["taskset", "-c", str(args.load_core), "wrk", "-t1", f"-c{args.connections}"]
    command += [f"-d{duration}s", "--latency", "--timeout", "5s"]
    for name, value in variant.headers.items():
        command += ["-H", f"{name}: {value}"]
    ticks_before = variant.server.cpu_ticks()
    out = subprocess.run(
        [*command, variant.url], capture_output=True, text=True, check=True, timeout=duration + 30
    ).stdout
    ticks = variant.server.cpu_ticks() - ticks_before
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if "Non-2xx" in out or errors:
        raise RuntimeError(f"wrk saw failed requests on {variant.url}:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    variant.rps.append(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)))  # type: ignore[union-attr]
    variant.cpu_us.append(ticks / CLOCK_TICKS / max(requests, 1) * 1e6)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    variant.latency_ms.append(float(p50.group(1)) * scale[p50.group(2)] if p50 else float("nan"))


# --------------------------------------------------------------------------- setup


def preload(store: RevocationStore, issuer: str, count: int) -> None:
    expires = time.time() + 36000
    for start in range(0, count, 5000):
        store.record(
            [
                Revocation.session(issuer, str(uuid.uuid4()), client_id="bench", expires_at=expires)
                for _ in range(min(5000, count - start))
            ]
        )
    store.close()


def log_in(server: AppServer) -> str:
    """Log a user in through the OP; the Cookie header that carries the session."""
    with httpx.Client(follow_redirects=True, timeout=15) as browser:
        page = browser.get(f"{server.url}/login")
        if page.status_code != 200 or "Logged in as" not in page.text:
            raise RuntimeError(f"login at {server.url} failed: {page.status_code} {page.text}")
        value = browser.cookies.get(COOKIE)
    if not value:
        raise RuntimeError(f"login at {server.url} set no {COOKIE} cookie")
    return f"{COOKIE}={value}"


def access_token(op: StandInOP, client_id: str) -> str:
    """An access token as Keycloak issues one, valid for the whole run."""
    now = int(time.time())
    claims = {
        "iss": op.issuer,
        "aud": "account",
        "azp": client_id,
        "sub": "bench-user",
        "sid": str(uuid.uuid4()),
        "iat": now,
        "exp": now + 6 * 3600,
        "auth_time": now,
        "typ": "Bearer",
        "preferred_username": "alice",
    }
    return mint_jwt(op.key, claims, {"typ": "JWT"})


def check(variant: Variant) -> None:
    """The request answers 200 as the user; the middleware is there exactly when it should be."""
    url = variant.server.url
    answer = httpx.get(variant.url, headers=variant.headers, timeout=10)
    if variant.app in PLAIN:
        expected = answer.status_code == 200 and answer.text == "hello"
    else:
        expected = answer.status_code == 200 and answer.json().get("preferred_username") == "alice"
    if not expected:
        raise RuntimeError(f"{variant.url} ({variant.store}) answered {answer.status_code}")
    probe = httpx.post(f"{url}/backchannel-logout", data={"logout_token": "x"}, timeout=10)
    served_by_middleware = probe.status_code == 400 and "invalid_request" in probe.text
    if served_by_middleware != (variant.store != "bare"):
        raise RuntimeError(
            f"{variant.app} {variant.store}: back-channel probe answered "
            f"{probe.status_code}; is SSOMiddleware (not) there?"
        )


@contextlib.contextmanager
def store_urls(stores: list[str], db_dir: Path) -> Iterator[Callable[[str, str], str]]:
    """``url(store, name)``: a fresh revocation store URL of each kind, for one server."""
    with contextlib.ExitStack() as stack:
        redis_url = cluster_url = ""
        if "redis" in stores:
            redis_url = stack.enter_context(RedisServer()).url
        if "cluster" in stores:
            from devtools.redis_server import RedisCluster

            cluster_url = stack.enter_context(RedisCluster()).url

        def url(store: str, name: str) -> str:
            if store == "sqlite":
                return f"sqlite:///{db_dir}/{name}.db"
            if store == "redis":
                return f"{redis_url}?prefix=bench-{name}:"
            return f"{cluster_url}?prefix={{bench-{name}}}:"  # a hash tag: one slot

        yield url


@contextlib.contextmanager
def deployment(args: argparse.Namespace, log_dir: Path) -> Iterator[list[Variant]]:
    with (
        StandInOP() as op,
        RedisServer() as sessions_redis,
        contextlib.ExitStack() as stack,
    ):
        db_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kcsso-load-")))
        urls = stack.enter_context(store_urls(args.stores, db_dir))
        planned: list[tuple[str, str, str, BenchServer]] = []
        for app in args.apps:
            kinds = ["serverside"] if args.sources == ["serverside"] else ["cookie"]
            if "serverside" in args.sources and kinds != ["serverside"]:
                kinds.append("serverside")
            if app in PLAIN:
                kinds = ["none"]
            for kind in kinds:  # one server per session kind; bearer shares the cookie one
                for store in ["bare", *args.stores]:
                    name = f"{app}-{kind}-{store}"
                    client_id = f"bench-{name}"
                    op.register_client(client_id, "bench-secret")
                    env = app_env(
                        issuer=op.issuer,
                        client_id=client_id,
                        client_secret="bench-secret",
                        cookie=COOKIE,
                        store=urls("sqlite" if store == "bare" else store, name),
                    )
                    env["BENCH_WRAPPED"] = "0" if store == "bare" else "1"
                    if kind == "serverside":
                        database = f"/{1 + len(planned)}"  # a Redis database per server
                        env["EXAMPLE_SESSION_STORE"] = (
                            sessions_redis.url.rsplit("/", 1)[0] + database
                        )
                    if store != "bare":
                        preload(open_store(env["KC_SSO_STORE"]), op.issuer, args.preload)
                    server = BenchServer(
                        app, env, args.server_core, workers=args.workers, log_dir=log_dir
                    )
                    planned.append((app, kind, store, server))
        variants: list[Variant] = []
        for app, kind, store, server in planned:  # one at a time: the machine has few cores
            stack.enter_context(server)
            if app in PLAIN:
                variants.append(Variant(app, "none", store, server, "/", {}))
                continue
            others = [source for source in args.sources if source != "serverside"]
            sources = [kind] if kind == "serverside" else others
            for source in sources:
                if source == "bearer":
                    token = access_token(op, f"bench-{app}-{kind}-{store}")
                    headers = {"Authorization": f"Bearer {token}"}
                    variants.append(Variant(app, source, store, server, "/api/me", headers))
                else:
                    headers = {"Cookie": log_in(server)}
                    variants.append(Variant(app, source, store, server, "/me", headers))
        yield variants


def run(args: argparse.Namespace) -> int:
    os.sched_setaffinity(0, {args.load_core})
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    print(machine())
    print(
        f"load generator: wrk -t1 -c{args.connections}, {args.duration} s per run, pinned to "
        f"core {args.load_core}; servers pinned to core {args.server_core}, "
        f"{args.workers} worker(s) each"
    )
    log_dir = Path(tempfile.mkdtemp(prefix="kcsso-load-logs-"))
    rng = random.Random(7)
    with deployment(args, log_dir) as variants:
        for variant in variants:
            check(variant)
            run_wrk(variant, args, 1)  # warm-up, not counted
            variant.rps.clear(), variant.cpu_us.clear(), variant.latency_ms.clear()
        groups = sorted({(v.app, v.source) for v in variants})
        started = time.monotonic()
        for round_no in range(args.rounds):
            for app, source in groups:
                group = [v for v in variants if (v.app, v.source) == (app, source)]
                rng.shuffle(group)
                for variant in group:
                    run_wrk(variant, args, args.duration)
            if time.monotonic() - started > args.max_seconds:
                print(f"(stopped after {round_no + 1} rounds: --max-seconds)")
                break
    print(f"load average after: {os.getloadavg()[0]:.2f} (1 min); server logs in {log_dir}")
    return report(variants, args)


def _spread(values: list[float]) -> str:
    return f"{min(values):.3f}-{max(values):.3f}"


def report(variants: list[Variant], args: argparse.Namespace) -> int:
    rounds = len(variants[0].rps)
    print(
        f"\n{rounds} rounds; req/s, CPU µs/req and p50 = medians over rounds; the ratios are "
        "medians of the same round's ratio, spread = min-max over rounds\n"
    )
    rows, results = [], []
    worst_rps = worst_cpu = float("inf")
    for app, source in sorted({(v.app, v.source) for v in variants}):
        bare = next(v for v in variants if (v.app, v.source, v.store) == (app, source, "bare"))
        for v in (x for x in variants if (x.app, x.source) == (app, source)):
            rps_ratios = [w / b for w, b in zip(v.rps, bare.rps, strict=True)]
            cpu_ratios = [b / w for w, b in zip(v.cpu_us, bare.cpu_us, strict=True)]
            wrapped = v.store != "bare"
            if wrapped:
                worst_rps = min(worst_rps, median(rps_ratios))
                worst_cpu = min(worst_cpu, median(cpu_ratios))
                results.append(
                    {
                        "app": app,
                        "source": source,
                        "store": v.store,
                        "workers": args.workers,
                        "rps": median(v.rps),
                        "bare_rps": median(bare.rps),
                        "ratio": median(rps_ratios),
                        "ratio_spread": [min(rps_ratios), max(rps_ratios)],
                        "cpu_us": median(v.cpu_us),
                        "bare_cpu_us": median(bare.cpu_us),
                        "cpu_ratio": median(cpu_ratios),
                        "cpu_ratio_spread": [min(cpu_ratios), max(cpu_ratios)],
                    }
                )
            rows.append(
                (
                    f"{app} / {SERVERS[app]}",
                    source,
                    v.store,
                    f"{median(v.rps):.0f}",
                    f"{median(v.cpu_us):.0f}",
                    f"{median(v.latency_ms):.2f}",
                    f"{median(rps_ratios):.3f} ({_spread(rps_ratios)})" if wrapped else "-",
                    f"{median(cpu_ratios):.3f} ({_spread(cpu_ratios)})" if wrapped else "-",
                )
            )
    headers = ("app", "source", "store", "req/s", "CPU µs/req", "p50 ms")
    print(table((*headers, "wrapped/bare req/s", "bare/wrapped CPU"), rows))
    met = worst_rps >= TARGET
    print(f"\ntarget wrapped/bare >= {TARGET} everywhere: {'met' if met else 'MISSED'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": results}))
    print(f"RESULT http_load wrapped/bare={worst_rps:.3f} cpu bare/wrapped={worst_cpu:.3f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--apps", nargs="+", choices=sorted(APPS), default=sorted(set(APPS) - PLAIN)
    )
    parser.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES))
    parser.add_argument("--stores", nargs="+", choices=STORES, default=["sqlite", "redis"])
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--duration", type=int, default=3, help="seconds per run (default 3)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections")
    parser.add_argument("--workers", type=int, default=1, help="server workers (default 1)")
    parser.add_argument("--server-core", type=int, default=1, help="core of the servers")
    parser.add_argument("--load-core", type=int, default=0, help="core of wrk and this script")
    parser.add_argument(
        "--preload", type=int, default=10_000, help="other revoked sessions per store"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=900.0, help="start no new round after this"
    )
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    os.chdir(REPO)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
