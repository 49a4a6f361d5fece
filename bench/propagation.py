"""Propagation delay: from a back-channel 200 on one worker to rejection on every other one.

What it measures
    HTTP level: ``uvicorn --workers 3`` serves the FastAPI example (through
    ``bench/_app_pid.py``, which only adds ``GET /bench/whoami``: pid, session present or not,
    the worker's clock) with the SQLite, then the Redis store.  The script keeps one
    keep-alive connection pinned to each worker (a connection stays with the worker that
    accepted it).  Per trial: a fresh session is confirmed valid on every worker; one thread
    per *other* worker starts polling ``/bench/whoami`` with the session cookie, and a
    logout token signed by a ``StandInOP`` (``kc_sso_middleware.testing``) for the session's
    ``sid`` is POSTed to one worker (rotating); t0 is when its 200 arrives.  A worker's
    delay is its own clock at its first answer without the session, minus t0 (same host,
    same clock).  Refusing before the 200 arrived counts as 0 ("before t0"; the stores
    wait for the other workers' acknowledgements before answering).  "resolution" is the
    median gap between a worker's last "valid" and first "refused" answer, "write" the
    median duration of the back-channel POST itself.

    "valid after t0" counts trials in which a watched worker still answered "valid" at a
    moment (its clock) after the 200 had arrived: a real miss.  A late first "refused"
    without one is the polling's resolution, which grows with the load.

    Store level: a revocation recorded by this process (``store.record``; t0 when it
    returns) and two other processes (spawned) that poll their own store's replica every
    ~0.2 ms: the delay is when each first sees it.

    Under load (Redis; ``--no-load`` skips it): ``--senders`` (32) concurrent senders of
    distinct logouts, with jti, for ``--load-seconds``:

    * store level: threads spread over ``--workers`` spawned processes, each with a started
      store, calling ``record()``; "round trips/write" counts the pipelines each write
      sent (in the writers' processes), and the processes then idle as long, to count
      the followers' idle wakeups;
    * HTTP level: ``wrk`` with that many connections POSTs to the uvicorn workers, while
      ``--load-trials`` propagation trials run as above.

    Both report logouts/s, the Redis commands per logout (``INFO commandstats``: XREAD
    calls are follower wakeups, several writes per read under load), and CPU per logout
    of the app processes and of Redis (``/proc``, ``INFO cpu``).

Target
    p99 <= 5 ms after the 200 (HTTP level, SQLite and Redis), and no "valid after t0",
    also under load.

Run
    .venv/bin/python bench/propagation.py                 # about 40 s
    .venv/bin/python bench/propagation.py --trials 1000   # tighter p99
    .venv/bin/python bench/propagation.py --stores redis --senders 64 --load-seconds 10

The last line is ``RESULT propagation p99_ms=<worst HTTP-level p99 of sqlite/redis, not
under load> misses=<"valid after t0", all levels>``.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import multiprocessing
import multiprocessing.connection
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from _common import (
    OFFLINE_ISSUER,
    REPO,
    machine,
    median,
    percentile,
    session_cookie,
    session_data,
    table,
)

from devtools.apps import AppServer, app_env
from devtools.redis_server import RedisServer
from kc_sso_middleware.stores import Revocation, RevocationStore, SessionKeys, open_store
from kc_sso_middleware.testing import StandInOP

CLIENT_ID = "bench-app"
COOKIE = "session"
WHOAMI = "/bench/whoami"
TRIAL_TIMEOUT = 2.0
QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux


class PidServer(AppServer):
    """The FastAPI example plus /bench/whoami, long keep-alive, no access log."""

    def command(self) -> list[str]:
        command = [
            "bench._app_pid:app" if part == "examples.fastapi_app:app" else part
            for part in super().command()
        ]
        return [*command, "--no-access-log", "--timeout-keep-alive", "120"]


def send(
    conn: http.client.HTTPConnection, method: str, path: str, **kwargs: Any
) -> http.client.HTTPResponse:
    """One request on a keep-alive connection, answered without a delayed-ACK stall.

    Under ``uvicorn --workers N`` the answer's body segment waits for the client's ACK of
    the header segment (Nagle on the server's socket); Linux delays that ACK by ~40 ms, so
    every poll would take ~44 ms.  ``TCP_QUICKACK`` after sending makes the ACK immediate.
    """
    conn.request(method, path, **kwargs)
    if QUICKACK is not None and conn.sock is not None:
        conn.sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
    return conn.getresponse()


@dataclass
class Worker:
    pid: int
    conn: http.client.HTTPConnection

    def whoami(self, cookie: str | None = None) -> dict[str, Any]:
        headers = {"Cookie": f"{COOKIE}={cookie}"} if cookie else {}
        response = send(self.conn, "GET", WHOAMI, headers=headers)
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"worker {self.pid}: {WHOAMI} answered {response.status}")
        data: dict[str, Any] = json.loads(body)
        if data["pid"] != self.pid:
            raise RuntimeError("a keep-alive connection changed worker")
        return data

    def backchannel(self, token: str) -> int:
        response = send(
            self.conn,
            "POST",
            "/backchannel-logout",
            body=urlencode({"logout_token": token}),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        response.read()
        return response.status


def pin_workers(server: AppServer, count: int, attempts: int = 300) -> list[Worker]:
    """One keep-alive connection per worker process."""
    pinned: dict[int, Worker] = {}
    spare: list[http.client.HTTPConnection] = []
    for _ in range(attempts):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        response = send(conn, "GET", WHOAMI)
        pid = json.loads(response.read())["pid"]
        if pid in pinned:
            spare.append(conn)  # kept open so that new connections go elsewhere too
        else:
            pinned[pid] = Worker(pid, conn)
        if len(pinned) == count:
            break
    for conn in spare:
        conn.close()
    if len(pinned) < count:
        raise RuntimeError(f"reached only {len(pinned)} of {count} workers")
    return list(pinned.values())


@dataclass
class Result:
    delays_ms: list[float] = field(default_factory=list)
    gaps_ms: list[float] = field(default_factory=list)
    early: int = 0
    #: trials where a watched worker still answered "valid" after the 200 had arrived
    #: (its own clock): a real miss, unlike a late first "refused", which is resolution
    valid_after: int = 0
    timeouts: int = 0
    polls: int = 0
    #: how long the back-channel POST (HTTP) or record() (store) itself took
    op_ms: list[float] = field(default_factory=list)
    #: delay from the start of the POST / record() instead of from its end
    from_start_ms: list[float] = field(default_factory=list)


@dataclass
class Watch:
    """What one polling thread saw of one worker during one trial (worker clock)."""

    last_valid: float | None = None
    first_refused: float | None = None
    polls: int = 0


def watch(worker: Worker, cookie: str, start: threading.Event, done: Watch) -> None:
    """Poll from before the POST until the worker refuses the session (or time runs out)."""
    start.wait()
    deadline = time.monotonic() + TRIAL_TIMEOUT
    while time.monotonic() < deadline:
        answer = worker.whoami(cookie)
        done.polls += 1
        if not answer["session"]:
            done.first_refused = answer["at"]
            return
        done.last_valid = answer["at"]


def _env(store_url: str, op: StandInOP) -> dict[str, str]:
    return app_env(
        issuer=op.issuer,
        client_id=CLIENT_ID,
        client_secret="bench-secret",
        cookie=COOKIE,
        store=store_url,
    )


def _trials(op: StandInOP, secret: str, count: int) -> list[tuple[str, str]]:
    """(session cookie, logout token) pairs, signed up front: RSA signing is the slow part."""
    trials = []
    for _ in range(count):
        sid = str(uuid.uuid4())
        data = session_data(sid=sid, issuer=op.issuer, client_id=CLIENT_ID, key=op.key)
        trials.append(
            (
                session_cookie("starlette", secret=secret, data=data),
                op.logout_token(CLIENT_ID, sid=sid, sub="user-1"),
            )
        )
    return trials


def _warm(op: StandInOP, workers: list[Worker]) -> None:
    for worker in workers:  # discovery + JWKS fetched once per worker, before timing
        if worker.backchannel(op.logout_token(CLIENT_ID, sid=str(uuid.uuid4()))) != 200:
            raise RuntimeError(f"warm-up back-channel to {worker.pid} failed")


def run_trials(workers: list[Worker], trials: list[tuple[str, str]], result: Result) -> None:
    """One logout per trial, to the workers in turn, the others watched while it runs."""
    targets = itertools.cycle(workers)
    for cookie, token in trials:
        for worker in workers:
            if not worker.whoami(cookie)["session"]:
                raise RuntimeError("a fresh session was refused before its logout")
        target = next(targets)
        start = threading.Event()
        watches = {w.pid: Watch() for w in workers if w is not target}
        threads = [
            threading.Thread(target=watch, args=(w, cookie, start, watches[w.pid]))
            for w in workers
            if w is not target
        ]
        for thread in threads:
            thread.start()
        start.set()  # the other workers are polled while the logout is under way
        posted, posted_at = time.perf_counter(), time.time()
        status = target.backchannel(token)
        t0 = time.time()
        result.op_ms.append((time.perf_counter() - posted) * 1000)
        if status != 200:
            raise RuntimeError(f"back-channel logout answered {status}")
        for thread in threads:
            thread.join(TRIAL_TIMEOUT + 10)
        for seen in watches.values():
            result.polls += seen.polls
            if seen.first_refused is None:
                result.timeouts += 1
                continue
            delay = (seen.first_refused - t0) * 1000
            result.delays_ms.append(max(0.0, delay))
            result.from_start_ms.append((seen.first_refused - posted_at) * 1000)
            result.early += delay < 0
            if seen.last_valid is not None:
                result.gaps_ms.append((seen.first_refused - seen.last_valid) * 1000)
                result.valid_after += seen.last_valid > t0


def http_level(store_url: str, op: StandInOP, args: argparse.Namespace, log_dir: Path) -> Result:
    env = _env(store_url, op)
    trials = _trials(op, env["KC_SSO_SESSION_SECRET"], args.trials)
    result = Result()
    with PidServer("fastapi", env, workers=args.workers, log_dir=log_dir) as server:
        workers = pin_workers(server, args.workers)
        _warm(op, workers)
        run_trials(workers, trials, result)
        for worker in workers:
            worker.conn.close()
    return result


# --------------------------------------------------------------------------- under load

WRK_SCRIPT = r"""
-- One distinct logout token per request, from the file the bench wrote; counts answers
-- (in the thread's state: done() reads them through the thread objects).
local threads = {}
function setup(thread) threads[#threads + 1] = thread end
tokens, next_token, answered_200, answered_other = {}, 0, 0, 0
function init(args)
  for line in io.lines(args[1]) do tokens[#tokens + 1] = line end
end
function request()
  next_token = next_token % #tokens + 1
  return wrk.format("POST", "/backchannel-logout",
    {["Content-Type"] = "application/x-www-form-urlencoded"},
    "logout_token=" .. tokens[next_token])
end
function response(status, headers, body)
  if status == 200 then answered_200 = answered_200 + 1
  else answered_other = answered_other + 1 end
end
function done(summary, latency, requests)
  local ok, other = 0, 0
  for _, thread in ipairs(threads) do
    ok = ok + thread:get("answered_200")
    other = other + thread:get("answered_other")
  end
  io.write("STATUS 200 ", ok, "\nSTATUS 0 ", other, "\n")
  io.write("REQUESTS ", summary.requests, " ", summary.duration, "\n")
  io.write("LATENCY p50 ", latency:percentile(50), " p99 ", latency:percentile(99), "\n")
end
"""


@dataclass
class Load:
    """What a load run did: logouts per second, their answers, and what they cost."""

    senders: int
    logouts: int = 0
    seconds: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)
    latency_ms: tuple[float, float] = (0.0, 0.0)
    #: Redis commands per logout, by name (commandstats over the run)
    commands: dict[str, float] = field(default_factory=dict)
    #: CPU ms per logout of the app server (all workers) and of Redis
    server_cpu_ms: float = 0.0
    redis_cpu_ms: float = 0.0
    #: pipelines each write sent (store level: counted in the writers' processes)
    round_trips: float = 0.0
    #: propagation trials run while the load ran
    propagation: Result = field(default_factory=Result)

    @property
    def rate(self) -> float:
        return self.logouts / self.seconds if self.seconds else 0.0


def _ticks(pid: int) -> int:
    """utime + stime of ``pid`` and its waited-for children, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(f) for f in fields[11:15])


def _server_ticks(server: AppServer) -> int:
    assert server.process is not None
    pids = [server.process.pid, *server.worker_pids()]
    return sum(_ticks(pid) for pid in pids)


def _redis_cpu(client: Any) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def _commandstats(client: Any) -> dict[str, int]:
    return {
        name.removeprefix("cmdstat_"): int(stats["calls"])
        for name, stats in client.info("commandstats").items()
    }


def http_load_level(
    store_url: str, redis_url: str, op: StandInOP, args: argparse.Namespace, log_dir: Path
) -> Load:
    """``--senders`` concurrent connections (wrk) POSTing distinct logouts to the uvicorn
    workers for ``--load-seconds``, while ``--load-trials`` propagation trials run."""
    import redis

    env = _env(store_url, op)
    tokens_needed = int(args.load_seconds * 8000)  # more than the servers can take
    trials = _trials(op, env["KC_SSO_SESSION_SECRET"], args.load_trials)
    load = Load(args.senders)
    with tempfile.TemporaryDirectory(prefix="kcsso-load-") as tmp:
        token_file = Path(tmp) / "tokens.txt"
        with token_file.open("w") as out:
            for _ in range(tokens_needed):
                sid = str(uuid.uuid4())
                out.write(op.logout_token(CLIENT_ID, sid=sid, sub="user-load") + "\n")
        script = Path(tmp) / "logouts.lua"
        script.write_text(WRK_SCRIPT)
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        with PidServer("fastapi", env, workers=args.workers, log_dir=log_dir) as server:
            workers = pin_workers(server, args.workers)
            _warm(op, workers)
            client.config_resetstat()
            ticks, redis_cpu = _server_ticks(server), _redis_cpu(client)
            wrk = subprocess.Popen(
                [
                    "wrk",
                    "-t1",
                    f"-c{args.senders}",
                    f"-d{max(1, round(args.load_seconds))}s",
                    "--latency",
                    "-s",
                    str(script),
                    server.url,
                    "--",
                    str(token_file),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            time.sleep(0.5)  # the load is up
            run_trials(workers, trials, load.propagation)
            output, _ = wrk.communicate(timeout=args.load_seconds + 60)
            if wrk.returncode != 0 or "REQUESTS" not in output:
                raise RuntimeError(f"wrk failed ({wrk.returncode}):\n{output}")
            ticks = _server_ticks(server) - ticks
            redis_cpu = _redis_cpu(client) - redis_cpu
            stats = _commandstats(client)
            for worker in workers:
                worker.conn.close()
        client.close()
    for line in output.splitlines():
        words = line.split()
        if words[:1] == ["STATUS"]:
            load.statuses[int(words[1])] = int(words[2])
        elif words[:1] == ["REQUESTS"]:
            load.logouts, load.seconds = int(words[1]), int(words[2]) / 1e6
        elif words[:1] == ["LATENCY"]:
            load.latency_ms = (float(words[2]) / 1000, float(words[4]) / 1000)
    logouts = load.logouts + len(trials) * 2  # each trial: one logout (+ its whoami polls)
    load.commands = {name: calls / logouts for name, calls in stats.items() if calls}
    load.server_cpu_ms = ticks / os.sysconf("SC_CLK_TCK") * 1000 / logouts
    load.redis_cpu_ms = redis_cpu * 1000 / logouts
    return load


def _load_in_child(
    store_url: str, threads: int, seconds: float, conn: multiprocessing.connection.Connection
) -> None:
    """Child process: one started store, ``threads`` threads record()ing distinct logouts
    for ``seconds``; reports how many and how many pipelines they sent."""
    from kc_sso_middleware.stores.redis import RedisStore
    from kc_sso_middleware.stores.redis.store import _Pipeline

    store = open_store(store_url)
    assert isinstance(store, RedisStore)
    pipelines = itertools.count()
    perform = store._perform

    def counting(effect: Any) -> object:
        if isinstance(effect, _Pipeline):
            next(pipelines)
        return perform(effect)

    store._perform = counting  # type: ignore[method-assign]
    store.start()
    conn.send("ready")
    conn.recv()
    done = [0] * threads
    stop_at = time.monotonic() + seconds

    def send(index: int) -> None:
        while time.monotonic() < stop_at:
            jti = str(uuid.uuid4())
            entry = Revocation.session(
                OFFLINE_ISSUER, jti, client_id=CLIENT_ID, expires_at=time.time() + 3600
            )
            store.record([entry], jti=jti, jti_expires_at=time.time() + 300)
            done[index] += 1

    senders = [threading.Thread(target=send, args=(i,)) for i in range(threads)]
    cpu = time.process_time()
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    conn.send((sum(done), next(pipelines), time.process_time() - cpu))
    conn.recv()
    store.close()


def store_load_level(store_url: str, redis_url: str, args: argparse.Namespace) -> Load:
    """``--senders`` threads spread over ``--workers`` processes, each record()ing as fast
    as it can for ``--load-seconds``; then the same processes idle for as long."""
    import redis

    context = multiprocessing.get_context("spawn")
    per_process = [args.senders // args.workers] * args.workers
    for index in range(args.senders % args.workers):
        per_process[index] += 1
    pipes, processes = [], []
    for threads in per_process:
        parent, child = context.Pipe()
        process = context.Process(
            target=_load_in_child,
            args=(store_url, threads, args.load_seconds, child),
            daemon=True,
        )
        process.start()
        pipes.append(parent)
        processes.append(process)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    load = Load(args.senders)
    try:
        for pipe in pipes:
            if not pipe.poll(30) or pipe.recv() != "ready":
                raise RuntimeError("a load process did not start")
        client.config_resetstat()
        redis_cpu = _redis_cpu(client)
        started = time.perf_counter()
        for pipe in pipes:
            pipe.send("go")
        results = [pipe.recv() for pipe in pipes]
        load.seconds = time.perf_counter() - started
        redis_cpu = _redis_cpu(client) - redis_cpu
        stats = _commandstats(client)
        load.logouts = sum(done for done, _, _ in results)
        load.round_trips = sum(p for _, p, _ in results) / max(1, load.logouts)
        load.server_cpu_ms = sum(cpu for _, _, cpu in results) * 1000 / max(1, load.logouts)
        load.commands = {name: calls / load.logouts for name, calls in stats.items() if calls}
        load.redis_cpu_ms = redis_cpu * 1000 / load.logouts
        # Idle: how often does each follower wake up with nothing to do?
        client.config_resetstat()
        time.sleep(args.load_seconds)
        idle = _commandstats(client)
        load.commands["idle xread/s per follower"] = (
            idle.get("xread", 0) / args.load_seconds / args.workers
        )
        load.commands["idle evalsha/s per follower"] = (
            idle.get("evalsha", 0) / args.load_seconds / args.workers
        )
    finally:
        for pipe in pipes:
            pipe.send("stop")
        for process in processes:
            process.join(10)
        client.close()
    return load


def load_rows(name: str, load: Load, level: str) -> tuple[str, ...]:
    commands = load.commands
    per = ", ".join(
        f"{name} {commands[name]:.2f}"
        for name in ("evalsha", "blpop", "xread", "wait")
        if name in commands
    )
    return (
        name,
        level,
        str(load.senders),
        f"{load.rate:,.0f}",
        f"{load.round_trips:.2f}" if load.round_trips else "-",
        per,
        f"{load.server_cpu_ms:.2f}" if load.server_cpu_ms else "-",
        f"{load.redis_cpu_ms:.3f}",
    )


# --------------------------------------------------------------------------- store level


def replica_watcher(store_url: str, conn: multiprocessing.connection.Connection) -> None:
    """Child process: open the store, then report when each announced sid is revoked."""
    store = open_store(store_url)
    store.start()
    conn.send("ready")
    while True:
        sid = conn.recv()
        if sid is None:
            break
        conn.send("watching")
        keys = SessionKeys.of(
            OFFLINE_ISSUER, CLIENT_ID, sid=sid, sub=None, instance=None, issued_at=None
        )
        deadline = time.monotonic() + TRIAL_TIMEOUT
        seen = None
        while time.monotonic() < deadline:
            if store.is_revoked(keys):
                seen = time.time()
                break
            time.sleep(0.0002)
        conn.send(seen)
    store.close()


def store_level(store_url: str, args: argparse.Namespace) -> Result:
    context = multiprocessing.get_context("spawn")
    pipes, processes = [], []
    for _ in range(args.watchers):
        parent, child = context.Pipe()
        process = context.Process(target=replica_watcher, args=(store_url, child), daemon=True)
        process.start()
        pipes.append(parent)
        processes.append(process)
    store: RevocationStore = open_store(store_url)
    store.start()
    result = Result()
    try:
        for pipe in pipes:
            if not pipe.poll(30) or pipe.recv() != "ready":
                raise RuntimeError("a watcher process did not start")
        for _ in range(args.trials):
            sid = str(uuid.uuid4())
            for pipe in pipes:
                pipe.send(sid)
            for pipe in pipes:
                pipe.recv()
            recording, recording_at = time.perf_counter(), time.time()
            store.record(
                [
                    Revocation.session(
                        OFFLINE_ISSUER, sid, client_id=CLIENT_ID, expires_at=time.time() + 3600
                    )
                ]
            )
            t0 = time.time()
            result.op_ms.append((time.perf_counter() - recording) * 1000)
            for pipe in pipes:
                seen = pipe.recv()
                if seen is None:
                    result.timeouts += 1
                else:
                    result.delays_ms.append(max(0.0, (seen - t0) * 1000))
                    result.early += seen < t0
                    result.from_start_ms.append((seen - recording_at) * 1000)
    finally:
        for pipe in pipes:
            pipe.send(None)
        for process in processes:
            process.join(10)
        store.close()
    return result


# --------------------------------------------------------------------------- main


def summary(result: Result) -> tuple[str, ...]:
    d, s = result.delays_ms, result.from_start_ms
    if not d:
        return ("-", "-", "-", "0", str(result.early), "0", str(result.timeouts), "-")
    return (
        f"{percentile(d, 50):.2f}",
        f"{percentile(d, 99):.2f}",
        f"{max(d):.2f}",
        f"{len(d)}",
        str(result.early),
        str(result.valid_after),
        str(result.timeouts),
        f"{percentile(s, 50):.2f} / {percentile(s, 99):.2f}",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--trials", type=int, default=200, help="logouts per store and level (default 200)"
    )
    parser.add_argument("--workers", type=int, default=3, help="uvicorn workers (default 3)")
    parser.add_argument(
        "--watchers", type=int, default=2, help="other processes at store level (default 2)"
    )
    parser.add_argument(
        "--stores", nargs="+", choices=("sqlite", "redis"), default=["sqlite", "redis"]
    )
    parser.add_argument(
        "--senders", type=int, default=32, help="concurrent senders under load (default 32)"
    )
    parser.add_argument(
        "--load-seconds", type=float, default=5.0, help="seconds of each load run (default 5)"
    )
    parser.add_argument(
        "--load-trials",
        type=int,
        default=40,
        help="propagation trials during the HTTP load run (default 40)",
    )
    parser.add_argument("--no-load", action="store_true", help="skip the Redis load runs")
    args = parser.parse_args()
    os.chdir(REPO)
    print(machine())
    log_dir = Path(tempfile.mkdtemp(prefix="kcsso-propagation-logs-"))
    rows = []
    load_table = []
    worst_p99 = 0.0
    load_p99 = 0.0
    misses = 0
    stored: Load | None = None
    with (
        RedisServer() as redis_server,
        StandInOP() as op,
        tempfile.TemporaryDirectory(prefix="kcsso-propagation-") as db_dir,
    ):
        op.register_client(CLIENT_ID, "bench-secret")
        urls = {
            "sqlite": f"sqlite:///{db_dir}/revocations.db",
            "redis": f"{redis_server.url}?prefix=bench-propagation:",
        }
        for name in args.stores:
            http_result = http_level(urls[name], op, args, log_dir)
            store_result = store_level(
                urls[name].replace("propagation:", "store-level:")
                if name == "redis"
                else f"sqlite:///{db_dir}/store-level.db",
                args,
            )
            p99 = percentile(http_result.delays_ms, 99) if http_result.delays_ms else 1e9
            if http_result.timeouts:
                p99 = float("inf")
            worst_p99 = max(worst_p99, p99)
            misses += http_result.valid_after
            rows.append(
                (
                    name,
                    f"HTTP, {args.workers} uvicorn workers",
                    *summary(http_result),
                    f"{median(http_result.gaps_ms):.2f}" if http_result.gaps_ms else "-",
                    f"{median(http_result.op_ms):.2f}",
                )
            )
            rows.append(
                (
                    name,
                    f"store, {args.watchers} other processes",
                    *summary(store_result),
                    "~0.25",
                    f"{median(store_result.op_ms):.2f}",
                )
            )
        if "redis" in args.stores and not args.no_load:
            url = f"{redis_server.url}?prefix=bench-load:"
            stored = store_load_level(url.replace("load:", "store-load:"), redis_server.url, args)
            load_table.append(load_rows("redis", stored, f"store, {args.workers} processes"))
            loaded = http_load_level(url, redis_server.url, op, args, log_dir)
            load_table.append(load_rows("redis", loaded, f"HTTP, {args.workers} uvicorn workers"))
            under = loaded.propagation
            misses += under.valid_after
            load_p99 = percentile(under.delays_ms, 99) if under.delays_ms else float("inf")
            if under.timeouts:
                load_p99 = float("inf")
            rows.append(
                (
                    "redis",
                    f"HTTP, under {args.senders} senders",
                    *summary(under),
                    f"{median(under.gaps_ms):.2f}" if under.gaps_ms else "-",
                    f"{median(under.op_ms):.2f}",
                )
            )
            bad = {k: v for k, v in loaded.statuses.items() if k != 200}
            if bad:
                print(f"  under load, answers other than 200: {bad}")
            print(
                f"  under load: back-channel latency p50 {loaded.latency_ms[0]:.2f} ms, "
                f"p99 {loaded.latency_ms[1]:.2f} ms (wrk)"
            )
    print(
        f"\ndelay from the back-channel 200 (HTTP) or from record() returning (store) to "
        f"rejection elsewhere, ms; {args.trials} logouts each; server logs in {log_dir}\n"
    )
    print(
        table(
            (
                "store",
                "level",
                "p50",
                "p99",
                "max",
                "samples",
                "before t0",
                "valid after t0",
                "timeouts",
                "from start p50 / p99",
                "resolution",
                "write",
            ),
            rows,
        )
    )
    print(
        "  before t0: already refused before the 200 arrived (counted as 0); valid after t0: "
        "a worker still answered 'valid' after the 200 arrived (a real miss);\n  resolution: "
        "median gap between a worker's last 'valid' and first 'refused' answer;\n"
        "  write: median duration of the back-channel POST (HTTP) or of record() (store); "
        "from start: delay counted from the start of the POST / record() instead"
    )
    if load_table and stored is not None:
        print(
            f"\nlogouts under load: {args.senders} concurrent senders, "
            f"{args.load_seconds:g} s; Redis commands and CPU per logout\n"
        )
        print(
            table(
                (
                    "store",
                    "level",
                    "senders",
                    "logouts/s",
                    "round trips/write",
                    "Redis commands per logout",
                    "app CPU ms",
                    "Redis CPU ms",
                ),
                load_table,
            )
        )
        idle = ", ".join(f"{k} {v:.2f}" for k, v in stored.commands.items() if k.startswith("idle"))
        print(
            "  round trips/write: pipelines each record() sent (counted in the writers);\n"
            "  xread per logout: follower wakeups (every follower reads each write, several "
            f"in one read under load);\n  then idle for as long: {idle}"
        )
    met = worst_p99 <= 5 and not misses
    print(
        f"\ntarget p99 <= 5 ms after the 200 and no 'valid after t0' (under load p99 "
        f"{load_p99:.2f} ms is polling resolution unless misses > 0): "
        f"{'met' if met else 'MISSED'}"
    )
    print(
        f"RESULT propagation p99_ms={worst_p99:.2f} misses={misses} (worst HTTP-level p99 "
        f"of {'/'.join(args.stores)}; misses at every level, under load too)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
