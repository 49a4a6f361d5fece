"""Memory per revoked session: in a worker's replica, in the SQLite file, in Redis.

What it measures
    * Replica: a fresh interpreter opens a ``memory://`` store (what every worker's store holds
      in memory: the replica) and records N session revocations, built as the core builds them
      (``Revocation.session(issuer, sid, client_id=...)`` with 36-character ``sid`` values, as
      Keycloak's), in pages of 5000 as the followers apply them.  The clock moves on with every
      page, so that the entries spread over a whole ``max_session_lifetime`` (10 h) of expiries,
      as they do in a running system.  Bytes per revocation by ``tracemalloc`` (every Python
      allocation the store keeps) and, in another fresh interpreter without tracemalloc, by the
      growth of the resident set (RSS).  That second interpreter also times ``is_revoked`` (a
      miss and a hit, session keys of all four kinds), which the request path calls when the
      store's version has changed.
    * SQLite: the database file after N revocations recorded through ``SQLiteStore.record``
      (pages of 5000) and a WAL checkpoint.
    * Redis: ``INFO memory`` ``used_memory`` growth and ``MEMORY USAGE`` of the store's keys
      after N revocations recorded through ``RedisStore.record`` (pages of 5000).  While
      the stores are filled, their own in-process replica is a no-op (not what is
      measured).  Bulk pages make few, large change-feed messages, so the feed is measured
      apart: one revocation per ``record`` (as back-channel logouts arrive), its size per
      message, and what that gives at the feed's cap (``stream_maxlen``).

    N is 1M and 10M for the replica (``--replica-sizes``), 100k and 1M for the shared
    stores (``--store-sizes``).

Target
    <= 120 bytes per revoked session in a worker's replica, at 1M and at 10M.

Run
    .venv/bin/python bench/memory.py                        # a few minutes, ~3 GB of RAM
    .venv/bin/python bench/memory.py --replica-sizes 1000000 --store-sizes 100000

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
import timeit
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import redis
from _common import OFFLINE_ISSUER, machine, table

from devtools.redis_server import RedisServer
from kc_sso_middleware.stores import MemoryStore, Revocation, SessionKeys
from kc_sso_middleware.stores.options import STREAM_MAXLEN, default_of
from kc_sso_middleware.stores.redis import RedisStore
from kc_sso_middleware.stores.replica import Replica
from kc_sso_middleware.stores.sqlite import SQLiteStore

PAGE = 5000
LIFETIME = 36000.0  # KC_SSO_MAX_SESSION_LIFETIME's default
CLIENT_ID = "bench-app"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def sids(count: int) -> list[str]:
    """Random UUID-shaped sids (36 characters, like Keycloak's), faster than uuid4()."""
    raw = os.urandom(16 * count).hex()
    return [
        f"{raw[i : i + 8]}-{raw[i + 8 : i + 12]}-{raw[i + 12 : i + 16]}-{raw[i + 16 : i + 20]}-"
        f"{raw[i + 20 : i + 32]}"
        for i in range(0, 32 * count, 32)
    ]


def revocations(count: int, expires_at: Callable[[], float]) -> Iterator[list[Revocation]]:
    """Pages of session revocations with fresh sid strings (nothing else keeps them), each
    page expiring at ``expires_at()``."""
    for start in range(0, count, PAGE):
        expires = expires_at()
        yield [
            Revocation.session(OFFLINE_ISSUER, sid, client_id=CLIENT_ID, expires_at=expires)
            for sid in sids(min(PAGE, count - start))
        ]


class NoReplica(Replica):
    """Stands in for a store's own replica while filling it: only the store is measured."""

    def apply(self, revocations: object) -> list[Revocation]:
        return []


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def lookup_ns(store: MemoryStore, hit_sid: str, clock: Clock) -> tuple[float, float]:
    """Nanoseconds per is_revoked: a session not revoked, and one whose sid is."""
    issued_at = clock.now - 60

    def keys(sid: str) -> SessionKeys:
        return SessionKeys.of(
            OFFLINE_ISSUER,
            CLIENT_ID,
            sid=sid,
            sub="user-1",
            instance=f"{sid}#{uuid.uuid4()}",
            issued_at=issued_at,
        )

    miss, hit = keys(str(uuid.uuid4())), keys(hit_sid)
    assert not store.is_revoked(miss)
    assert store.is_revoked(hit)
    number = 200_000
    results = []
    for probe in (miss, hit):
        best = min(timeit.repeat(lambda p=probe: store.is_revoked(p), number=number, repeat=5))
        results.append(best / number * 1e9)
    return results[0], results[1]


def child(mode: str, count: int) -> None:
    """Runs in a fresh interpreter; prints one JSON line."""
    clock = Clock()
    pages = max(1, count // PAGE)
    step = LIFETIME / pages
    gc.collect()
    if mode == "tracemalloc":
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = rss_bytes()
    started = time.perf_counter()
    store = MemoryStore(timer=clock)
    last_sid = ""
    # Each page is written at clock.now and lives LIFETIME: the entries spread over 10 h.
    for page in revocations(count, lambda: clock.now + LIFETIME):
        store.record(page)
        last_sid = page[-1].label or ""
        clock.now += step
    seconds = time.perf_counter() - started
    del page
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] if mode == "tracemalloc" else rss_bytes()
    replica = store._replica
    assert len(replica) == count, len(replica)
    result: dict[str, float] = {
        "bytes": after - before,
        "seconds": seconds,
        "buckets": len(replica._buckets),
    }
    if mode == "rss":
        result["miss_ns"], result["hit_ns"] = lookup_ns(store, last_sid, clock)
    print(json.dumps(result))


def run_child(mode: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--child", mode, str(count)], stdout=subprocess.PIPE, text=True
    )


def sqlite_size(count: int, directory: Path) -> tuple[int, float]:
    path = directory / f"revocations-{count}.db"
    store = SQLiteStore.from_url(f"sqlite:///{path}")
    store._replica = NoReplica()
    started = time.perf_counter()
    for page in revocations(count, lambda: time.time() + LIFETIME):
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
    store._replica = NoReplica()
    gc.collect()
    before = int(client.info("memory")["used_memory"])
    started = time.perf_counter()
    for page in revocations(count, lambda: time.time() + LIFETIME):
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

    def one() -> list[Revocation]:
        return [
            Revocation.session(
                OFFLINE_ISSUER, str(uuid.uuid4()), client_id=CLIENT_ID, expires_at=time.time() + 3e4
            )
        ]

    store.record(one())
    empty = int(client.memory_usage(f"{prefix}feed", samples=0) or 0)
    for _ in range(messages):
        store.record(
            one(),
            jti=f"bcl:bench-app:{OFFLINE_ISSUER}:{uuid.uuid4()}",
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
        "--replica-sizes",
        type=int,
        nargs="+",
        default=[1_000_000, 10_000_000],
        help="revocations in one worker's replica (default 1000000 10000000)",
    )
    parser.add_argument(
        "--store-sizes",
        type=int,
        nargs="*",
        default=[100_000, 1_000_000],
        help="revocations in the SQLite file and in Redis (default 100000 1000000)",
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
    for count in args.replica_sizes:
        results = {}
        for mode in ("tracemalloc", "rss"):  # one at a time: their RSS must not compete
            out, _ = run_child(mode, count).communicate(timeout=1800)
            results[mode] = json.loads(out.strip().splitlines()[-1])
        traced = results["tracemalloc"]["bytes"] / count
        last_traced = traced
        rss = results["rss"]
        replica_rows.append(
            (
                f"{count:,}",
                f"{traced:.0f}",
                f"{rss['bytes'] / count:.0f}",
                f"{rss['bytes'] / 2**20:.0f}",
                f"{rss['buckets']:.0f}",
                f"{rss['miss_ns']:.0f} / {rss['hit_ns']:.0f}",
                f"{rss['seconds']:.1f}",
            )
        )
        print(f"  replica of {count:,}: {traced:.0f} B/entry (tracemalloc)", flush=True)
    with RedisServer() as server, tempfile.TemporaryDirectory(prefix="kcsso-mem-") as tmp:
        client = redis.Redis.from_url(server.url)
        for count in args.store_sizes:
            db_bytes, db_seconds = sqlite_size(count, Path(tmp))
            r = redis_sizes(count, server.url, client)
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
    print("\nreplica of one worker (what every process holds in memory), expiries over 10 h\n")
    print(
        table(
            (
                "revocations",
                "bytes/rev (tracemalloc)",
                "bytes/rev (RSS)",
                "MiB (RSS)",
                "buckets",
                "is_revoked ns miss / hit",
                "build s",
            ),
            replica_rows,
        )
    )
    if store_rows:
        print("\nshared store\n")
        print(table(("store", "revocations", "bytes/rev", "MiB", "record s"), store_rows))
    maxlen = default_of(STREAM_MAXLEN)
    cap = per_message * maxlen
    print(
        f"\nredis change feed: {per_message:.0f} bytes per single-revocation message "
        f"({args.feed_messages} measured), so about {cap / 2**20:.1f} MiB at its cap of "
        f"{maxlen:,} messages, whatever the number of revocations; "
        f"a claimed jti key: {per_jti:.0f} bytes, kept until the token's exp"
    )
    print(
        f"RESULT memory replica_bytes_per_revocation={last_traced:.0f} "
        f"(tracemalloc, {args.replica_sizes[-1]:,} revocations)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
