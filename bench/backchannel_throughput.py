"""Back-channel throughput: RS256 logout tokens validated and recorded per second.

What it measures
    Distinct logout tokens (own ``jti`` and ``sid``), signed by a ``StandInOP`` with RS256,
    POSTed in process through the WSGI adapter (``kc_sso_middleware.wsgi.SSOMiddleware``:
    form parsing, signature and claim checks, the replay check of the ``jti`` and the
    durable write), with the OP's discovery document and JWKS already cached.  Every
    answer must be 200.

    **One sender** (one thread, one after another): for the ``memory://``, ``sqlite:///…``
    (an fsync of the WAL per logout when alone, shared by concurrent commits) and
    ``redis://…`` stores (a real ``redis-server`` from ``devtools/redis_server.py``), each
    with 0, 10k and 100k sessions
    already revoked (``--sizes``), in a fresh store; SQLite also with ``--followers`` other
    worker processes following the same file (idle, as the other workers of a host are),
    so that every logout waits for their acknowledgements as in production.  Reported:
    tokens/s by wall clock and by this process's CPU time, the followers' CPU time per
    token (all of them together), and the median time of one logout.  A reference row
    times the signature check alone (joserfc + cryptography).

    **Concurrent senders** (``--layouts``, e.g. ``4x8``: 4 worker processes of one host,
    spawned, each with its own middleware and SQLite store on one shared file, 8 sender
    threads each, as ``gunicorn --workers 4 --threads 8`` would run them): every sender
    POSTs its share of the tokens one after another, all starting together.  Reported:
    tokens/s by wall clock (first start to last answer), CPU per token (all processes),
    the median and 99th percentile of one logout, and how many writes shared one commit
    (group commit: one fsync per commit).

Targets
    >= 2,000 tokens/s (wall clock) from one sender; >= 5,000 tokens/s from 32 concurrent
    senders across the workers of one host (SQLite).

Run
    .venv/bin/python bench/backchannel_throughput.py                   # about 40 s
    .venv/bin/python bench/backchannel_throughput.py --stores sqlite --sizes 0 --layouts 4x8
    .venv/bin/python bench/backchannel_throughput.py --tokens 5000 --sizes 0 100000 1000000

The last line is ``RESULT backchannel_throughput tokens_per_s=<lowest one-sender run>
concurrent_tokens_per_s=<lowest concurrent run>``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
import multiprocessing.connection
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from _common import machine, percentile, table
from joserfc import jws
from joserfc.jwk import KeySet

from devtools.redis_server import RedisServer
from kc_sso_middleware import Settings
from kc_sso_middleware.stores import MemoryStore, Revocation, RevocationStore, open_store
from kc_sso_middleware.stores.redis import RedisStore
from kc_sso_middleware.stores.sqlite import SQLiteStore
from kc_sso_middleware.testing import StandInOP
from kc_sso_middleware.wsgi import SSOMiddleware

CLIENT_ID = "bench-app"
SESSION_SECRET = "bench-session-secret"
TOKEN_MAX_AGE = 100.0  # re-sign before the tokens' own exp (120 s after iat)


def not_found(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]


def environ_for(token: str) -> dict[str, Any]:
    body = urlencode({"logout_token": token}).encode()
    return {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/backchannel-logout",
        "QUERY_STRING": "",
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "CONTENT_LENGTH": str(len(body)),
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "Apache-HttpClient/4.5.14 (Java/21)",  # what Keycloak sends
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


class Tokens:
    """Signed logout tokens, re-signed when they get close to their expiry."""

    def __init__(self, op: StandInOP, count: int) -> None:
        self.op, self.count = op, count
        self.signed_at = 0.0
        self.tokens: list[str] = []

    def fresh(self) -> list[str]:
        if time.time() - self.signed_at > TOKEN_MAX_AGE:
            started = time.perf_counter()
            self.signed_at = time.time()
            self.tokens = [
                self.op.logout_token(CLIENT_ID, sid=str(uuid.uuid4()), sub="user-1")
                for _ in range(self.count)
            ]
            print(f"  (signed {self.count} tokens in {time.perf_counter() - started:.1f} s)")
        return self.tokens


def preload(store: RevocationStore, issuer: str, count: int) -> None:
    expires = time.time() + 36000
    for start in range(0, count, 5000):
        store.record(
            [
                Revocation.session(
                    issuer, str(uuid.uuid4()), client_id=CLIENT_ID, expires_at=expires
                )
                for _ in range(min(5000, count - start))
            ]
        )


def post(app: SSOMiddleware, environ: dict[str, Any]) -> str:
    """One back-channel POST through the middleware; its status line."""
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        statuses.append(status)

    for _chunk in app(environ, start_response):
        pass
    return statuses[0]


def measure(app: SSOMiddleware, tokens: list[str]) -> tuple[float, float, float]:
    """(tokens/s wall, tokens/s CPU, median ms per logout)."""
    environs = [environ_for(token) for token in tokens]
    statuses: list[str] = []
    times = []
    wall, cpu = time.perf_counter(), time.process_time()
    for environ in environs:
        started = time.perf_counter()
        statuses.append(post(app, environ))
        times.append(time.perf_counter() - started)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    bad = [s for s in statuses if not s.startswith("200")]
    if bad:
        raise RuntimeError(f"{len(bad)} logouts not answered 200, e.g. {bad[0]}")
    return len(tokens) / wall, len(tokens) / cpu, statistics.median(times) * 1000


def verify_only(op: StandInOP, token: str, count: int) -> float:
    """Signature checks per second with the same library calls, nothing else."""
    keys = KeySet.import_key_set({"keys": [op.key.as_dict(private=False)]})
    key = keys.keys[0]
    started = time.perf_counter()
    for _ in range(count):
        jws.deserialize_compact(token, key, algorithms=["RS256"])
    return count / (time.perf_counter() - started)


# --------------------------------------------------------------------------- other workers


def idle_follower(url: str, conn: multiprocessing.connection.Connection) -> None:
    """A spawned worker that only follows the store (its replica applies every logout)."""
    store = open_store(url)
    store.start()
    conn.send("ready")
    conn.recv()
    store.close()


class Followers:
    """``count`` idle worker processes following one store, for the one-sender runs."""

    def __init__(self, url: str, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes, self.processes = [], []
        for _ in range(count):
            parent, child = context.Pipe()
            process = context.Process(target=idle_follower, args=(url, child), daemon=True)
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)

    def __enter__(self) -> Followers:
        for pipe in self.pipes:
            if not pipe.poll(60) or pipe.recv() != "ready":
                raise RuntimeError("a follower process did not start")
        return self

    def cpu(self) -> float:
        """CPU seconds the follower processes have used so far."""
        ticks = 0
        for process in self.processes:
            assert process.pid is not None
            with open(f"/proc/{process.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: object) -> None:
        for pipe in self.pipes:
            pipe.send("stop")
        for process in self.processes:
            process.join(10)


# --------------------------------------------------------------------------- concurrent


@dataclass
class Share:
    """What one spawned worker process sends and reports."""

    url: str
    issuer: str
    warm_up: str
    #: per sender thread, its tokens
    tokens: list[list[str]]


def worker_process(share: Share, barrier: Any, conn: multiprocessing.connection.Connection) -> None:
    """A worker of the host: its middleware and store, one thread per sender."""
    store = open_store(share.url)
    store.start()
    settings = Settings(
        issuer=share.issuer, client_id=CLIENT_ID, session_secret=SESSION_SECRET, store=share.url
    )
    app = SSOMiddleware(not_found, settings, store=store)
    if not post(app, environ_for(share.warm_up)).startswith("200"):  # discovery + JWKS
        raise RuntimeError("warm-up logout failed")
    environs = [[environ_for(token) for token in tokens] for tokens in share.tokens]
    latencies: list[list[float]] = [[] for _ in environs]
    failures: list[str] = []

    def send(index: int) -> None:
        for environ in environs[index]:
            started = time.perf_counter()
            status = post(app, environ)
            latencies[index].append(time.perf_counter() - started)
            if not status.startswith("200"):
                failures.append(status)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(environs))]
    group = getattr(store, "_group", None)
    before = (group.batches, group.writes) if group is not None else (0, 0)
    barrier.wait()
    began, cpu = time.time(), time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ended, cpu = time.time(), time.process_time() - cpu
    after = (group.batches, group.writes) if group is not None else (0, 0)
    conn.send(
        {
            "began": began,
            "ended": ended,
            "cpu": cpu,
            "latencies": [x for per in latencies for x in per],
            "failures": failures,
            "commits": after[0] - before[0],
            "writes": after[1] - before[1],
        }
    )
    conn.recv()
    app.close()


def concurrent(
    url: str, op: StandInOP, processes: int, threads: int, tokens: list[str]
) -> dict[str, float]:
    """``processes`` spawned workers x ``threads`` senders, all at once."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes + 1)
    per_sender = len(tokens) // (processes * threads)
    pipes, children = [], []
    for p in range(processes):
        mine = [
            tokens[(p * threads + t) * per_sender : (p * threads + t + 1) * per_sender]
            for t in range(threads)
        ]
        warm_up = op.logout_token(CLIENT_ID, sid=str(uuid.uuid4()), sub="user-1")
        parent, child = context.Pipe()
        process = context.Process(
            target=worker_process, args=(Share(url, op.issuer, warm_up, mine), barrier, child)
        )
        process.start()
        pipes.append(parent)
        children.append(process)
    try:
        barrier.wait(timeout=120)
        results = [pipe.recv() for pipe in pipes]
    finally:
        for pipe in pipes:
            with_suppressed(pipe.send, "stop")
        for process in children:
            process.join(30)
    failures = [f for r in results for f in r["failures"]]
    if failures:
        raise RuntimeError(f"{len(failures)} logouts not answered 200, e.g. {failures[0]}")
    count = sum(len(r["latencies"]) for r in results)
    wall = max(r["ended"] for r in results) - min(r["began"] for r in results)
    latencies = [x for r in results for x in r["latencies"]]
    commits = sum(r["commits"] for r in results)
    return {
        "rate": count / wall,
        "cpu_us": sum(r["cpu"] for r in results) / count * 1e6,
        "p50": percentile(latencies, 50) * 1000,
        "p99": percentile(latencies, 99) * 1000,
        "per_commit": sum(r["writes"] for r in results) / commits if commits else float("nan"),
    }


def with_suppressed(call: Any, *args: Any) -> None:
    with contextlib.suppress(OSError, EOFError):
        call(*args)


def layout(text: str) -> tuple[int, int]:
    processes, _, threads = text.partition("x")
    return int(processes), int(threads)


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--tokens", type=int, default=1000, help="logouts per one-sender run (default 1000)"
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[0, 10_000, 100_000],
        help="sessions already revoked (default 0 10000 100000)",
    )
    parser.add_argument(
        "--stores",
        nargs="+",
        choices=("memory", "sqlite", "redis"),
        default=["memory", "sqlite", "redis"],
    )
    parser.add_argument(
        "--followers",
        type=int,
        default=2,
        help="other worker processes following the SQLite file in one-sender runs (default 2)",
    )
    parser.add_argument(
        "--layouts",
        nargs="*",
        type=layout,
        default=[(4, 8), (1, 32)],
        help="concurrent runs, PROCESSESxTHREADS (default 4x8 1x32; none: skip)",
    )
    parser.add_argument(
        "--concurrent-tokens",
        type=int,
        default=8000,
        help="logouts per concurrent run (default 8000)",
    )
    args = parser.parse_args()
    print(machine())
    rows = []
    concurrent_rows = []
    lowest = lowest_concurrent = float("inf")
    with (
        StandInOP() as op,
        RedisServer() as redis_server,
        tempfile.TemporaryDirectory(prefix="kcsso-bcl-") as db_dir,
    ):
        settings = Settings(
            issuer=op.issuer,
            client_id=CLIENT_ID,
            session_secret=SESSION_SECRET,
            store="memory://",
        )
        tokens = Tokens(op, args.tokens)
        counter = 0
        variants = [
            (name, followers)
            for name in args.stores
            for followers in ((0, args.followers) if name == "sqlite" and args.followers else (0,))
        ]
        for store_name, followers in variants:
            for size in args.sizes:
                counter += 1
                store: RevocationStore
                url = f"sqlite:///{db_dir}/revocations-{counter}.db"
                if store_name == "memory":
                    store = MemoryStore()
                elif store_name == "sqlite":
                    store = SQLiteStore.from_url(url)
                else:
                    store = RedisStore.from_url(f"{redis_server.url}?prefix=bcl{counter}:")
                store.start()
                preload(store, op.issuer, size)
                with Followers(url, followers) as others:
                    app = SSOMiddleware(not_found, settings, store=store)
                    # First logout: discovery + JWKS from the OP, then cached (not timed).
                    measure(app, [op.logout_token(CLIENT_ID, sid=str(uuid.uuid4()))])
                    fresh = tokens.fresh()
                    others_cpu = others.cpu()
                    wall, cpu, per_ms = measure(app, fresh)
                    others_cpu = others.cpu() - others_cpu
                    app.close()
                lowest = min(lowest, wall)
                name = f"sqlite + {followers} followers" if followers else store_name
                rows.append(
                    (
                        name,
                        f"{size:,}",
                        f"{wall:,.0f}",
                        f"{cpu:,.0f}",
                        f"{others_cpu / len(fresh) * 1e6:.0f}" if followers else "-",
                        f"{per_ms:.3f}",
                        "met" if wall >= 2000 else "MISSED",
                    )
                )
                print(f"  {name} with {size:,} revoked: {wall:,.0f}/s")
        signature_rate = verify_only(op, tokens.fresh()[0], 2000)
        if args.layouts:
            started = time.perf_counter()
            signed = [
                op.logout_token(CLIENT_ID, sid=str(uuid.uuid4()), sub="user-1")
                for _ in range(args.concurrent_tokens)
            ]
            print(
                f"  (signed {len(signed)} tokens in {time.perf_counter() - started:.1f} s "
                "for the concurrent runs)"
            )
        for processes, threads in args.layouts:
            counter += 1
            url = f"sqlite:///{db_dir}/concurrent-{counter}.db"
            got = concurrent(url, op, processes, threads, signed)
            lowest_concurrent = min(lowest_concurrent, got["rate"])
            concurrent_rows.append(
                (
                    f"{processes} x {threads}",
                    f"{got['rate']:,.0f}",
                    f"{got['cpu_us']:.0f}",
                    f"{got['p50']:.2f}",
                    f"{got['p99']:.2f}",
                    f"{got['per_commit']:.1f}",
                    "met" if got["rate"] >= 5000 else "MISSED",
                )
            )
            print(f"  sqlite, {processes} processes x {threads} senders: {got['rate']:,.0f}/s")
    print(
        f"\none sender: {args.tokens} distinct RS256 logout tokens per run, one thread, WSGI "
        "adapter in process, JWKS cached\n"
    )
    print(
        table(
            (
                "store",
                "already revoked",
                "tokens/s (wall)",
                "tokens/s (CPU)",
                "followers' CPU µs/token",
                "median ms",
                "target >= 2000/s",
            ),
            rows,
        )
    )
    print(
        f"\nreference: RS256 signature check alone (joserfc.jws.deserialize_compact): "
        f"{signature_rate:,.0f}/s"
    )
    if concurrent_rows:
        print(
            f"\nconcurrent senders, SQLite, one file: {args.concurrent_tokens} tokens over "
            "PROCESSES x THREADS senders, WSGI adapter in each spawned process\n"
        )
        print(
            table(
                (
                    "processes x senders",
                    "tokens/s (wall)",
                    "CPU µs/token",
                    "p50 ms",
                    "p99 ms",
                    "writes/commit",
                    "target >= 5000/s",
                ),
                concurrent_rows,
            )
        )
    concurrent_text = (
        f" concurrent_tokens_per_s={lowest_concurrent:,.0f}" if concurrent_rows else ""
    )
    print(
        f"RESULT backchannel_throughput tokens_per_s={lowest:,.0f}{concurrent_text} (lowest "
        f"one-sender run of {'/'.join(args.stores)} x {'/'.join(f'{s:,}' for s in args.sizes)} "
        "revoked; lowest concurrent layout)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
