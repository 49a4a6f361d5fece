"""Memory per revoked session: in a worker's replica, in the SQLite file, in Redis.

What it measures
    * Replica: a fresh interpreter builds one ``Replica`` (what every worker holds) and
      applies N session revocations (36-character ``sid`` values, as Keycloak's, in pages of
      5000 as the followers apply them).  Bytes per revocation by ``tracemalloc`` (every
      Python allocation the replica keeps, keys included) and, in another fresh
      interpreter without tracemalloc, by the growth of the resident set (RSS).
    * SQLite: the database file after N revocations recorded through ``SQLiteStore.record``
      (pages of 5000) and a WAL checkpoint.
    * Redis: ``INFO memory`` ``used_memory`` growth and ``MEMORY USAGE`` of the store's keys
      after N revocations recorded through ``RedisStore.record`` (pages of 5000).  While
      the stores are filled, their own in-process replica is a no-op (not what is measured).  Bulk
      pages make few, large change-feed messages, so the feed is measured apart: one
      revocation per ``record`` (as back-channel logouts arrive), its size per message, and
      what that gives at the feed's cap (``stream_maxlen``, default 10000 messages).

    N is 100k and 1M by default (``--sizes``).

Run
    .venv/bin/python bench/memory.py                   # about 40 s
    .venv/bin/python bench/memory.py --sizes 100000    # about 10 s

The last line is ``RESULT memory replica_bytes_per_revocation=<tracemalloc, largest N>``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path

import redis
from _common import machine, table

from devtools.redis_server import RedisServer
from kc_sso_middleware.stores import Revocation, RevocationKind
from kc_sso_middleware.stores.redis import DEFAULT_STREAM_MAXLEN, RedisStore
from kc_sso_middleware.stores.replica import Replica
from kc_sso_middleware.stores.sqlite import SQLiteStore

PAGE = 5000


def sids(count: int) -> list[str]:
    """Random UUID-shaped sids (36 characters, like Keycloak's), faster than uuid4()."""
    raw = os.urandom(16 * count).hex()
    return [
        f"{raw[i : i + 8]}-{raw[i + 8 : i + 12]}-{raw[i + 12 : i + 16]}-{raw[i + 16 : i + 20]}-"
        f"{raw[i + 20 : i + 32]}"
        for i in range(0, 32 * count, 32)
    ]


def revocations(count: int, expires_at: float) -> Iterator[list[Revocation]]:
    """Pages of session revocations with fresh sid strings (nothing else keeps them)."""
    session = RevocationKind.SESSION
    for start in range(0, count, PAGE):
        yield [Revocation(session, sid, 0.0, expires_at) for sid in sids(min(PAGE, count - start))]


class NoReplica(Replica):
    """Stands in for a store's own replica while filling it: only the store is measured."""

    def apply(self, revocations: object) -> None:
        pass


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(mode: str, count: int) -> None:
    """Runs in a fresh interpreter; prints one JSON line."""
    expires = time.time() + 36000
    gc.collect()
    if mode == "tracemalloc":
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = rss_bytes()
    started = time.perf_counter()
    replica = Replica()
    for page in revocations(count, expires):
        replica.apply(page)
    seconds = time.perf_counter() - started
    del page
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] if mode == "tracemalloc" else rss_bytes()
    assert len(replica) == count
    print(json.dumps({"bytes": after - before, "seconds": seconds}))


def run_child(mode: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--child", mode, str(count)], stdout=subprocess.PIPE, text=True
    )


def sqlite_size(count: int, directory: Path) -> tuple[int, float]:
    path = directory / f"revocations-{count}.db"
    store = SQLiteStore.from_url(f"sqlite:///{path}")
    store.replica = NoReplica()
    started = time.perf_counter()
    for page in revocations(count, time.time() + 36000):
        store.record(page)
    seconds = time.perf_counter() - started
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    size = sum(p.stat().st_size for p in directory.glob(f"{path.name}*"))
    return size, seconds


def redis_sizes(count: int, url: str, client: redis.Redis) -> dict[str, float]:
    prefix = f"bench-memory-{count}:"
    store = RedisStore.from_url(f"{url}?prefix={prefix}")
    store.replica = NoReplica()
    gc.collect()
    before = int(client.info("memory")["used_memory"])
    started = time.perf_counter()
    for page in revocations(count, time.time() + 36000):
        store.record(page)
    seconds = time.perf_counter() - started
    after = int(client.info("memory")["used_memory"])
    usage = {
        key: int(client.memory_usage(key, samples=0) or 0) for key in client.scan_iter(f"{prefix}*")
    }
    feed = usage.get(f"{prefix}feed", 0)
    store.close()
    return {
        "used_memory": after - before,
        "keys": sum(usage.values()),
        "feed_bulk": feed,
        "seconds": seconds,
    }


def redis_feed(url: str, client: redis.Redis, messages: int) -> tuple[float, float]:
    """(bytes per single-revocation feed message, bytes per claimed jti key)."""
    prefix = "bench-memory-feed:"
    store = RedisStore.from_url(f"{url}?prefix={prefix}")
    store.record([Revocation(RevocationKind.SESSION, str(uuid.uuid4()), 0.0, time.time() + 36000)])
    empty = int(client.memory_usage(f"{prefix}feed", samples=0) or 0)
    for _ in range(messages):
        store.record(
            [Revocation(RevocationKind.SESSION, str(uuid.uuid4()), 0.0, time.time() + 36000)],
            jti=f"bcl:bench-app:http://127.0.0.1:9/realms/bench:{uuid.uuid4()}",
            jti_expires_at=time.time() + 180,
        )
    full = int(client.memory_usage(f"{prefix}feed", samples=0) or 0)
    jti_keys = list(client.scan_iter(f"{prefix}jti:*", count=1000))
    jti_bytes = sum(int(client.memory_usage(k, samples=0) or 0) for k in jti_keys)
    store.close()
    return (full - empty) / messages, jti_bytes / max(1, len(jti_keys))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[100_000, 1_000_000],
        help="revocations (default 100000 1000000)",
    )
    parser.add_argument(
        "--feed-messages",
        type=int,
        default=1000,
        help="single-revocation records to size the change feed (default 1000)",
    )
    parser.add_argument("--child", nargs=2, metavar=("MODE", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return 0
    print(machine())
    replica_rows, store_rows = [], []
    last_traced = 0.0
    with RedisServer() as server, tempfile.TemporaryDirectory(prefix="kcsso-mem-") as tmp:
        client = redis.Redis.from_url(server.url)
        for count in args.sizes:
            # The two replica children run while this process fills the stores.
            children = {mode: run_child(mode, count) for mode in ("tracemalloc", "rss")}
            db_bytes, db_seconds = sqlite_size(count, Path(tmp))
            r = redis_sizes(count, server.url, client)
            results = {}
            for mode, process in children.items():
                out, _ = process.communicate(timeout=600)
                results[mode] = json.loads(out.strip().splitlines()[-1])
            traced = results["tracemalloc"]["bytes"] / count
            last_traced = traced
            replica_rows.append(
                (
                    f"{count:,}",
                    f"{traced:.0f}",
                    f"{results['rss']['bytes'] / count:.0f}",
                    f"{results['tracemalloc']['bytes'] / 2**20:.1f}",
                    f"{results['rss']['bytes'] / 2**20:.1f}",
                    f"{results['rss']['seconds']:.1f}",
                )
            )
            store_rows.append(
                (
                    "sqlite file (db + wal)",
                    f"{count:,}",
                    f"{db_bytes / count:.0f}",
                    f"{db_bytes / 2**20:.1f}",
                    f"{db_seconds:.1f}",
                )
            )
            store_rows.append(
                (
                    "redis used_memory growth",
                    f"{count:,}",
                    f"{r['used_memory'] / count:.0f}",
                    f"{r['used_memory'] / 2**20:.1f}",
                    f"{r['seconds']:.1f}",
                )
            )
            entries = r["keys"] - r["feed_bulk"]
            store_rows.append(
                (
                    "redis keys w/o feed (MEMORY USAGE)",
                    f"{count:,}",
                    f"{entries / count:.0f}",
                    f"{entries / 2**20:.1f}",
                    "-",
                )
            )
        per_message, per_jti = redis_feed(server.url, client, args.feed_messages)
        client.close()
    print("\nreplica of one worker (what every process holds in memory)\n")
    print(
        table(
            (
                "revocations",
                "bytes/rev (tracemalloc)",
                "bytes/rev (RSS)",
                "MiB (tracemalloc)",
                "MiB (RSS)",
                "build s",
            ),
            replica_rows,
        )
    )
    print("\nshared store\n")
    print(table(("store", "revocations", "bytes/rev", "MiB", "record s"), store_rows))
    cap = per_message * DEFAULT_STREAM_MAXLEN
    print(
        f"\nredis change feed: {per_message:.0f} bytes per single-revocation message "
        f"({args.feed_messages} measured), so about {cap / 2**20:.1f} MiB at its cap of "
        f"{DEFAULT_STREAM_MAXLEN:,} messages, whatever the number of revocations; "
        f"a claimed jti key: {per_jti:.0f} bytes, kept until the token's exp"
    )
    print(
        f"RESULT memory replica_bytes_per_revocation={last_traced:.0f} "
        f"(tracemalloc, {args.sizes[-1]:,} revocations)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
