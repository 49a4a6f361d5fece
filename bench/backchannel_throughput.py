"""Back-channel throughput: RS256 logout tokens validated and recorded per second, one core.

What it measures
    Distinct logout tokens (own ``jti`` and ``sid``), signed by a ``StandInOP`` with RS256,
    POSTed one after another in process through the WSGI adapter
    (``kc_sso_middleware.wsgi.SSOMiddleware``: form parsing, signature and claim checks, the
    replay check of the ``jti`` and the durable write, all in one thread), with the OP's
    discovery document and JWKS already cached.  Every answer must be 200.

    For the ``memory://``, ``sqlite:///…`` (``synchronous=FULL``: one fsync per logout) and
    ``redis://…`` stores (a real ``redis-server`` from ``devtools/redis_server.py``),
    each with 0, 10k and 100k sessions already revoked (``--sizes``), in a fresh store.
    Reported: tokens/s by wall clock and by this process's CPU time, and the median time of
    one logout.  A reference row times the signature check alone (joserfc + cryptography).

Target
    >= 2,000 tokens/s (wall clock) on one core.

Run
    .venv/bin/python bench/backchannel_throughput.py                   # about 15 s
    .venv/bin/python bench/backchannel_throughput.py --tokens 5000 --sizes 0 100000 1000000

The last line is ``RESULT backchannel_throughput tokens_per_s=<lowest of all runs>``.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any
from urllib.parse import urlencode

from _common import machine, table
from joserfc import jws
from joserfc.jwk import KeySet

from devtools.redis_server import RedisServer
from kc_sso_middleware import Settings
from kc_sso_middleware.stores import MemoryStore, Revocation, RevocationStore
from kc_sso_middleware.stores.redis import RedisStore
from kc_sso_middleware.stores.sqlite import SQLiteStore
from kc_sso_middleware.testing import StandInOP
from kc_sso_middleware.wsgi import SSOMiddleware

CLIENT_ID = "bench-app"
TOKEN_MAX_AGE = 240.0  # re-sign before the middleware's 300 s logout-token max age


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
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


class Tokens:
    """Signed logout tokens, re-signed when they get close to the accepted max age."""

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
                Revocation.session(issuer, str(uuid.uuid4()), expires_at=expires)
                for _ in range(min(5000, count - start))
            ]
        )


def measure(app: SSOMiddleware, tokens: list[str]) -> tuple[float, float, float]:
    """(tokens/s wall, tokens/s CPU, median ms per logout)."""
    environs = [environ_for(token) for token in tokens]
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        statuses.append(status)

    times = []
    wall, cpu = time.perf_counter(), time.process_time()
    for environ in environs:
        started = time.perf_counter()
        for _chunk in app(environ, start_response):
            pass
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


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--tokens", type=int, default=1000, help="logouts per measurement (default 1000)"
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
    args = parser.parse_args()
    print(machine())
    rows = []
    lowest = float("inf")
    with (
        StandInOP() as op,
        RedisServer() as redis_server,
        tempfile.TemporaryDirectory(prefix="kcsso-bcl-") as db_dir,
    ):
        settings = Settings(
            issuer=op.issuer,
            client_id=CLIENT_ID,
            session_secret="bench-session-secret",
            store="memory://",
        )
        tokens = Tokens(op, args.tokens)
        counter = 0
        for store_name in args.stores:
            for size in args.sizes:
                counter += 1
                store: RevocationStore
                if store_name == "memory":
                    store = MemoryStore()
                elif store_name == "sqlite":
                    store = SQLiteStore(os.path.join(db_dir, f"revocations-{counter}.db"))
                else:
                    store = RedisStore.from_url(f"{redis_server.url}?prefix=bcl{counter}:")
                store.start()
                preload(store, op.issuer, size)
                app = SSOMiddleware(not_found, settings, store=store)
                # First logout: discovery + JWKS from the OP, then cached (not timed).
                measure(app, [op.logout_token(CLIENT_ID, sid=str(uuid.uuid4()))])
                wall, cpu, per_ms = measure(app, tokens.fresh())
                app.close()
                lowest = min(lowest, wall)
                rows.append(
                    (
                        store_name,
                        f"{size:,}",
                        f"{wall:,.0f}",
                        f"{cpu:,.0f}",
                        f"{per_ms:.3f}",
                        "met" if wall >= 2000 else "MISSED",
                    )
                )
                print(f"  {store_name} with {size:,} revoked: {wall:,.0f}/s")
        signature_rate = verify_only(op, tokens.fresh()[0], 2000)
    print(
        f"\n{args.tokens} distinct RS256 logout tokens per run, one thread, WSGI adapter in "
        "process, JWKS cached\n"
    )
    print(
        table(
            (
                "store",
                "already revoked",
                "tokens/s (wall)",
                "tokens/s (CPU)",
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
    print(
        f"RESULT backchannel_throughput tokens_per_s={lowest:,.0f} (lowest of "
        f"{'/'.join(args.stores)} x {'/'.join(f'{s:,}' for s in args.sizes)} revoked)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
