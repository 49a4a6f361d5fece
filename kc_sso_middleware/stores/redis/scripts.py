"""The Redis store's keys and Lua scripts (each script runs atomically in Redis).

Keys (``P`` is the prefix)
--------------------------

``P entries``
    Sorted set of every active entry.  The member is ``"<kind>:<subject>"`` (``sid:…``,
    ``sub:…`` or ``all:…``, the subject in decimal) and the score is ``expires_at``.
``P not_before``
    Hash from the same members to ``not_before``, for user and client-wide entries.
``P feed``
    Stream, the change feed.  One message per write, with fields ``seq`` and ``data``
    (JSON ``[[kind, subject, not_before, expires_at, label], …]``).  Trimmed with
    ``XADD MAXLEN ~ stream_maxlen``.  Labels live only here: a follower that resyncs from
    the keyspace gets its entries without them.
``P seq``
    Counter, the ``seq`` of the newest message.
``P jti:<jti>``
    String with a TTL, a claimed logout-token ``jti``.
``P followers:applied``
    Hash from each follower's name to the ``seq`` it has applied.
``P followers:seen``
    Sorted set of the same names, scored by their last heartbeat (Redis' own clock, in
    milliseconds, so the hosts' clocks do not matter).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LAGGING", "PUBLISH", "RECORD", "Keys"]


@dataclass(frozen=True)
class Keys:
    """The names of one store's keys."""

    prefix: str

    @property
    def entries(self) -> str:
        return f"{self.prefix}entries"

    @property
    def not_before(self) -> str:
        return f"{self.prefix}not_before"

    @property
    def feed(self) -> str:
        return f"{self.prefix}feed"

    @property
    def seq(self) -> str:
        return f"{self.prefix}seq"

    @property
    def followers(self) -> list[str]:
        """``followers:applied`` and ``followers:seen``, as the follower scripts take them."""
        return [f"{self.prefix}followers:applied", f"{self.prefix}followers:seen"]

    def jti(self, jti: str) -> str:
        return f"{self.prefix}jti:{jti}"


RECORD = """
-- KEYS: entries zset, not_before hash, feed stream, seq counter, [jti key]
-- ARGV: now, stream maxlen, feed payload, jti ttl ms, call token,
--       then (member, not_before, expires_at) per entry
-- Returns 0 for a replay, else the seq of the message written, or -1 when none was.
if KEYS[5] then
  if not redis.call('SET', KEYS[5], ARGV[5], 'NX', 'PX', ARGV[4]) then
    -- Our own earlier attempt, retried after its reply was lost, is not a replay; the
    -- current seq is at or past the one that attempt wrote.
    if redis.call('GET', KEYS[5]) == ARGV[5] then
      local current = tonumber(redis.call('GET', KEYS[4]) or '0')
      if current > 0 then return current end
      return -1
    end
    return 0
  end
end
if #ARGV < 6 then return -1 end
for i = 6, #ARGV, 3 do
  redis.call('ZADD', KEYS[1], 'GT', ARGV[i + 2], ARGV[i])
  if string.sub(ARGV[i], 1, 4) ~= 'sid:' then
    local current = redis.call('HGET', KEYS[2], ARGV[i])
    if not current or tonumber(current) < tonumber(ARGV[i + 1]) then
      redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    end
  end
end
local expired = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, 100)
if #expired > 0 then
  redis.call('ZREM', KEYS[1], unpack(expired))
  redis.call('HDEL', KEYS[2], unpack(expired))
end
local seq = redis.call('INCR', KEYS[4])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'seq', seq, 'data', ARGV[3])
return seq
"""

# Redis' clock, not the hosts': followers on several hosts compare their heartbeats.
PUBLISH = """
-- KEYS: followers:applied hash, followers:seen zset
-- ARGV: follower name, applied seq, purge age ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
local dead = redis.call('ZRANGE', KEYS[2], '-inf', now - tonumber(ARGV[3]), 'BYSCORE',
                        'LIMIT', 0, 100)
if #dead > 0 then
  redis.call('ZREM', KEYS[2], unpack(dead))
  redis.call('HDEL', KEYS[1], unpack(dead))
end
return 1
"""

LAGGING = """
-- KEYS: followers:applied hash, followers:seen zset
-- ARGV: seq to reach, live window ms, the asking follower's own name
-- Returns name, applied, name, applied, ... of the live followers below the seq.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGE', KEYS[2], now - tonumber(ARGV[2]), '+inf', 'BYSCORE')
local target = tonumber(ARGV[1])
local lagging = {}
for _, name in ipairs(live) do
  if name ~= ARGV[3] then
    local applied = tonumber(redis.call('HGET', KEYS[1], name) or '-1')
    if applied < target then
      lagging[#lagging + 1] = name
      lagging[#lagging + 1] = tostring(applied)
    end
  end
end
return lagging
"""
