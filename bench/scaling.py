"""The README's scaling table: 1, 2 and 4 workers x SQLite, Redis and Redis Cluster.

What it measures, for each number of workers and each store, in one run:

* **wrapped/bare**: throughput of the example apps under HTTP load with SSOMiddleware and
  that store, against the same app bare (``bench/http_load.py``: cookie sessions, the
  FastAPI example under uvicorn and the Flask example under gunicorn, servers pinned to
  one core and wrk to the other; the worse app's median ratio and its spread);
* **propagation p99**: from a back-channel 200 on one uvicorn worker to rejection on every
  other worker (``bench/propagation.py``'s HTTP level; nothing to propagate to with one
  worker);
* **logouts/s**: back-channel logouts per second from 32 concurrent senders (wrk, one
  distinct logout token per request) to the FastAPI example with that many workers,
  every one answered 200 (``bench/propagation.py``'s load level).

Every store is real: a SQLite file, a ``redis-server``, a Redis Cluster of three masters
and three replicas on loopback (``devtools/redis_server.py``).  On this 2-core machine
the servers of the throughput runs share one core whatever the number of workers; the
logout runs use both.

Run
    .venv/bin/python bench/scaling.py                       # about 15 minutes
    .venv/bin/python bench/scaling.py --workers 1 2 --stores sqlite redis

Prints the table as reStructuredText (for README.rst) and ends with
``RESULT scaling worst wrapped/bare=<ratio> worst p99_ms=<ms> lowest logouts_per_s=<n>``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import propagation
from _common import REPO, machine, percentile

from devtools.redis_server import RedisCluster, RedisServer
from kc_sso_middleware.testing import StandInOP

NAMES = {"sqlite": "SQLite", "redis": "Redis", "cluster": "Redis Cluster"}


def throughput(workers: int, stores: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """bench/http_load.py for these workers: the worst app's figures per store."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, "bench/http_load.py", "--sources", "cookie"]
        command += ["--workers", str(workers), "--stores", *stores, "--json", out.name]
        command += ["--rounds", str(args.rounds), "--duration", str(args.duration)]
        subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        results = json.loads(Path(out.name).read_text())["results"]
    worst: dict[str, Any] = {}
    for result in results:
        if result["store"] not in worst or result["ratio"] < worst[result["store"]]["ratio"]:
            worst[result["store"]] = result
    return worst


@contextlib.contextmanager
def store_urls(stores: list[str], db_dir: Path) -> Iterator[dict[str, tuple[str, str]]]:
    """store -> (store URL, a plain Redis URL for the load run's Redis statistics)."""
    with contextlib.ExitStack() as stack:
        redis_server = stack.enter_context(RedisServer())
        urls = {
            "sqlite": (f"sqlite:///{db_dir}/scaling.db", redis_server.url),
            "redis": (f"{redis_server.url}?prefix=bench-scaling:", redis_server.url),
        }
        if "cluster" in stores:
            cluster = stack.enter_context(RedisCluster())
            node = f"redis://{cluster.nodes[0].address}/0"
            urls["cluster"] = (f"{cluster.url}?prefix={{bench-scaling}}:", node)
        yield {name: urls[name] for name in stores}


def run(args: argparse.Namespace) -> int:
    print(machine())
    log_dir = Path(tempfile.mkdtemp(prefix="kcsso-scaling-logs-"))
    rows: dict[tuple[int, str], dict[str, str]] = {}
    worst_ratio, worst_p99, lowest_rate = float("inf"), 0.0, float("inf")
    with StandInOP() as op, tempfile.TemporaryDirectory(prefix="kcsso-scaling-") as tmp:
        op.register_client(propagation.CLIENT_ID, "bench-secret")
        for workers in args.workers:
            ratios = throughput(workers, args.stores, args)
            for store in args.stores:
                db_dir = Path(tmp) / f"{store}-{workers}"
                db_dir.mkdir()
                with store_urls([store], db_dir) as urls:
                    url, stats_url = urls[store]
                    opts = argparse.Namespace(
                        workers=workers,
                        trials=args.trials,
                        senders=args.senders,
                        load_seconds=args.load_seconds,
                        load_trials=0,
                    )
                    p99 = "-"
                    if workers > 1:
                        result = propagation.http_level(url, op, opts, log_dir)
                        if result.timeouts or result.valid_after:
                            raise RuntimeError(f"{store}, {workers} workers: {result}")
                        delay = percentile(result.delays_ms, 99)
                        worst_p99 = max(worst_p99, delay)
                        p99 = f"{delay:.2f}"
                    load = propagation.http_load_level(
                        url.replace("scaling", "scaling-load"), stats_url, op, opts, log_dir
                    )
                    if any(count for status, count in load.statuses.items() if status != 200):
                        raise RuntimeError(f"{store}, {workers} workers: {load.statuses}")
                lowest_rate = min(lowest_rate, load.rate)
                figures = ratios[store]
                worst_ratio = min(worst_ratio, figures["ratio"])
                low, high = figures["ratio_spread"]
                rows[(workers, store)] = {
                    "ratio": f"{figures['ratio']:.3f} ({low:.3f}-{high:.3f})",
                    "app": figures["app"],
                    "p99": p99,
                    "rate": f"{load.rate:,.0f}",
                }
                print(f"{workers} worker(s), {store}: {rows[(workers, store)]}", flush=True)
    print(f"\nserver logs in {log_dir}\n")
    print(".. list-table::\n   :header-rows: 1\n")
    print("   * - Workers\n     - Store\n     - wrapped/bare (spread), worse app")
    print("     - propagation p99 (ms)\n     - logouts/s, 32 senders")
    for (workers, store), row in rows.items():
        print(f"   * - {workers}\n     - {NAMES[store]}\n     - {row['ratio']}, {row['app']}")
        print(f"     - {row['p99']}\n     - {row['rate']}")
    print(
        f"\nRESULT scaling worst wrapped/bare={worst_ratio:.3f} worst p99_ms={worst_p99:.2f} "
        f"lowest logouts_per_s={lowest_rate:,.0f}"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument(
        "--stores", nargs="+", choices=sorted(NAMES), default=["sqlite", "redis", "cluster"]
    )
    parser.add_argument("--rounds", type=int, default=5, help="throughput rounds (default 5)")
    parser.add_argument("--duration", type=int, default=3, help="seconds per throughput run")
    parser.add_argument("--trials", type=int, default=100, help="propagation trials")
    parser.add_argument("--senders", type=int, default=32, help="concurrent logout senders")
    parser.add_argument("--load-seconds", type=float, default=5.0, help="seconds of logouts")
    args = parser.parse_args()
    os.chdir(REPO)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
