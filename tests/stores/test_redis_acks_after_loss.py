"""The acknowledgement guarantee in the moments after a shared store lost its data.

record() returning True stands for "every live worker applied it", or for "ack_timeout ran
out", which is logged naming the workers that lag: the answer Keycloak gets, once, and
never retries.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import pytest

from devtools.redis_server import RedisServer
from kc_sso_middleware.errors import StoreUnavailableError

from ._helpers import LONG, eventually, revoked, session
from .conftest import new_prefix, with_options

if TYPE_CHECKING:
    from kc_sso_middleware.stores.redis import RedisStore

pytest.importorskip("redis", reason="the redis extra is not installed")


def _open(url: str) -> RedisStore:
    from kc_sso_middleware.stores.redis import RedisStore

    return RedisStore.from_url(url)


@pytest.mark.redis
def test_redis_a_write_right_after_the_keyspace_was_emptied_is_not_confirmed_early(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """FLUSHALL (or eviction) also empties the list of live followers.  A write then must
    not be answered at once as if nobody had to apply it: it is confirmed once the other
    worker has it (or no longer reports current), else after ack_timeout, logged."""
    import redis

    url = with_options(redis_server.url, prefix=new_prefix(), ack_timeout=2)
    one, two = _open(url), _open(url)
    t = time.time()
    raw = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        one.start()
        two.start()
        assert one.record([session("before", t + LONG)])
        assert revoked(two, "before")
        raw.delete(*raw.keys(f"{one.prefix}*"))
        # Writes from the flush on, through both workers' repairs and a while beyond.
        written: list[str] = []
        confirmed, deadline = 0, time.monotonic() + 6.0
        while time.monotonic() < deadline:
            sid = f"after-the-flush-{len(written)}"
            written.append(sid)
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="kc_sso_middleware"):
                try:
                    ok = one.record([session(sid, t + LONG)])
                except StoreUnavailableError:  # a 503: Keycloak is told it did not work
                    continue
            assert ok
            confirmed += 1
            warned = any("had not applied it" in r.getMessage() for r in caplog.records)
            assert revoked(two, sid) or not two.status().available or warned, sid
            time.sleep(0.005)
        assert confirmed
        # Nothing is lost either way: every write reaches the other worker.
        assert eventually(lambda: all(revoked(two, sid) for sid in written))
    finally:
        raw.close()
        one.close()
        two.close()
