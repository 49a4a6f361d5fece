"""Idle cost of a worker's store: wakeups (context switches) and CPU time per second.

What it measures
    A worker that serves nothing still runs its store's follower thread.  Every wakeup of
    that thread costs the request thread a GIL hand-off once requests come, so here the
    wakeups are counted with nothing else going on:

    * **store level**: ``--processes`` Python processes (spawned), each with one started
      store on one shared SQLite file (or ``memory://``, which has no follower: the floor of
      an idle Python process), the main thread asleep;
    * **server level** (``--servers``): the Flask example under gunicorn and the FastAPI
      example under uvicorn, 3 workers each, idle after one request to each worker (a
      worker starts its store on its first request), with the SQLite store and with
      ``memory://`` (the server's own wakeups: gunicorn's worker heartbeat, uvicorn's loop).

    Over ``--duration`` seconds, per process: voluntary and involuntary context switches
    summed over all its threads (``/proc/<pid>/task/*/status``) and CPU time (user + system
    ticks of ``/proc/<pid>/stat``), each divided by the duration; the median process is
    reported.

Target
    An idle SQLite follower wakes about once per heartbeat (1 s), not once per poll.

Run
    .venv/bin/python bench/follower_idle.py                    # about 25 s
    .venv/bin/python bench/follower_idle.py --servers          # + gunicorn/uvicorn, 1 min

The last line is ``RESULT follower_idle sqlite_wakeups_per_s=<median> cpu_ms_per_s=<median>``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.connection
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import REPO, machine, median, table

from devtools.apps import AppServer, app_env
from devtools.served import PID_HEADER
from kc_sso_middleware.stores import open_store

TICK = os.sysconf("SC_CLK_TCK")


def switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of every thread of ``pid`` so far."""
    voluntary = involuntary = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                voluntary += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                involuntary += int(line.split()[1])
    return voluntary, involuntary


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def sample(pids: list[int], duration: float) -> list[tuple[float, float, float]]:
    """Per pid: (voluntary/s, involuntary/s, CPU ms/s) over ``duration`` seconds."""
    before = {pid: (switches(pid), cpu_ticks(pid)) for pid in pids}
    started = time.monotonic()
    time.sleep(duration)
    elapsed = time.monotonic() - started
    rates = []
    for pid in pids:
        (v0, n0), t0 = before[pid]
        (v1, n1), t1 = switches(pid), cpu_ticks(pid)
        rates.append(((v1 - v0) / elapsed, (n1 - n0) / elapsed, (t1 - t0) / TICK * 1000 / elapsed))
    return rates


def idle_store(url: str, conn: multiprocessing.connection.Connection) -> None:
    """Child process: start the store, say so, sleep until told to stop."""
    store = open_store(url)
    store.start()
    conn.send(os.getpid())
    conn.recv()
    store.close()


def store_level(url: str, processes: int, duration: float) -> list[tuple[float, float, float]]:
    context = multiprocessing.get_context("spawn")
    pipes, children = [], []
    for _ in range(processes):
        parent, child = context.Pipe()
        process = context.Process(target=idle_store, args=(url, child), daemon=True)
        process.start()
        pipes.append(parent)
        children.append(process)
    try:
        pids = [pipe.recv() for pipe in pipes]
        time.sleep(1.0)  # past start-up
        return sample(pids, duration)
    finally:
        for pipe in pipes:
            pipe.send("stop")
        for process in children:
            process.join(10)


def server_level(
    kind: str, store: str, duration: float, log_dir: Path
) -> list[tuple[float, float, float]]:
    env = app_env(
        issuer="http://127.0.0.1:9/realms/bench",  # never contacted while idle
        client_id="bench-app",
        client_secret="bench-secret",
        cookie="session",
        store=store,
    )
    module = f"devtools.served:{kind}_app"  # answers name the worker (X-Worker-Pid)
    with AppServer(kind, env, workers=3, log_dir=log_dir, module=module) as server:  # type: ignore[arg-type]
        pids = server.worker_pids()
        # Every worker starts its store on its first request: reach each one first.
        answered: set[int] = set()
        with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
            for _ in range(300):
                answer = client.get(f"{server.url}/")
                answered.add(int(answer.headers[PID_HEADER]))
                if answered >= set(pids):
                    break
        time.sleep(1.0)
        return sample(sorted(answered), duration)


def row(name: str, level: str, rates: list[tuple[float, float, float]]) -> tuple[str, ...]:
    return (
        name,
        level,
        f"{median(r[0] for r in rates):.1f}",
        f"{median(r[1] for r in rates):.1f}",
        f"{median(r[2] for r in rates):.2f}",
        str(len(rates)),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("--processes", type=int, default=3, help="store-level processes")
    parser.add_argument("--servers", action="store_true", help="also gunicorn and uvicorn")
    args = parser.parse_args()
    os.chdir(REPO)
    print(machine())
    rows = []
    with tempfile.TemporaryDirectory(prefix="kcsso-idle-") as db_dir:
        sqlite_url = f"sqlite:///{db_dir}/revocations.db"
        memory = store_level("memory://", args.processes, args.duration)
        sqlite = store_level(sqlite_url, args.processes, args.duration)
        rows.append(row("memory://", f"store, {args.processes} processes", memory))
        rows.append(row("sqlite", f"store, {args.processes} processes", sqlite))
        if args.servers:
            log_dir = Path(db_dir) / "logs"
            log_dir.mkdir()
            for kind, server in (("flask", "gunicorn"), ("fastapi", "uvicorn")):
                for name, url in (("memory://", "memory://"), ("sqlite", sqlite_url)):
                    rates = server_level(kind, url, args.duration, log_dir)
                    rows.append(row(name, f"{kind} under {server}, 3 workers", rates))
    print(f"\nper process, idle, median of the processes, over {args.duration:g} s\n")
    print(
        table(
            ("store", "level", "voluntary cs/s", "involuntary cs/s", "CPU ms/s", "processes"),
            rows,
        )
    )
    wakeups = median(r[0] + r[1] for r in sqlite)
    cpu = median(r[2] for r in sqlite)
    print(f"RESULT follower_idle sqlite_wakeups_per_s={wakeups:.1f} cpu_ms_per_s={cpu:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
