"""The Redis store's keys and Lua scripts (each script runs atomically in Redis).

Keys (``P`` is the prefix; for Redis Cluster it holds a hash tag, so all are in one slot)
--------------------------------------------------------------------------------------------

``P entries``
    Sorted set of every active entry.  The member is ``"<kind>:<subject>"`` (``sid:…``,
    ``sub:…`` or ``all:…``, the subject in decimal) and the score is ``expires_at``.
``P not_before``
    Hash from the same members to ``not_before``, for user and client-wide entries.
``P feed``
    Stream, the change feed.  One message per write, with fields ``seq``, ``data`` (JSON
    ``[[kind, subject, not_before, expires_at, label, note], …]``) and ``by`` (the write's
    random token; a write-back's: the repairing follower's name).  Trimmed with ``XADD
    MAXLEN ~ stream_maxlen``.  Labels and notes live only here: a follower that resyncs
    replays the feed before it scans the keyspace, and gets only the entries the feed no
    longer holds without them.
``P seq``
    Counter, the ``seq`` of the newest message.
``P jti:<jti>``
    String with a TTL, a claimed logout-token ``jti``.
``P followers:applied``
    Hash from each follower's name to the ``seq`` it has applied.
``P followers:seen``
    Sorted set of the same names, scored by their last heartbeat (Redis' own clock, in
    milliseconds, so the hosts' clocks do not matter).
``P acks:waits``, ``P acks:wait:<token>``, ``P acks:done:<token>``
    A write's wait for acknowledgements.  The record script puts the live followers
    other than the writer's own in the set ``acks:wait:<token>`` and the write's ``seq``
    under its token in the sorted set ``acks:waits``; each follower, publishing the
    position it reached, removes itself from the sets of the writes it has now applied,
    and whoever empties a set pushes to the list ``acks:done:<token>``, on which the
    writer is blocked in ``BLPOP`` (sent in the same pipeline as the script).  Nobody
    polls.  Every such key has a TTL.
``P wake:<follower>``
    A list of at most one element, the follower's doorbell: the record script pushes to
    the list of each live follower other than the writer's own, and each follower blocks
    in ``BLPOP`` on its own list until news or its next heartbeat, then reads the feed.
    A process's own writes therefore never wake its follower (it applies them itself),
    and a message from a writer that rings no bell (a write-back, an older version) is
    read at the follower's next heartbeat at the latest.  The list has a TTL.
``P generation``
    A random token written once for the keyspace's history.  Each worker remembers the
    one it synced with and compares it on every (re)connection, resync and heartbeat:
    missing or different means the store lost data (see :mod:`.repair`).  A generation
    written by this version (``m:…``) also has copies in ``P entries`` (member
    ``gen:<generation>``, score ``+inf``, never purged) and ``P not_before`` (field
    ``gen:<generation>``), checked along with it: Redis evicting keys under ``maxmemory``
    takes them one by one, and the generation, read every heartbeat, is the last to go,
    so a copy missing means those keys were lost.  An older generation has no copies.
``P generation:renewed``
    Set, with a TTL of the live window, when a worker found a loss and started a new
    generation.  Until it expires (and while the generation is not the writer's), the
    record script stores a write but cannot say whom it waits for: the followers' list
    was lost with the data, and workers still current re-register only at their next
    heartbeat.  The writer then waits (the confirm script, up to ``ack_timeout``) until
    the marker is gone and every follower listed by then has the write.
``P repairers``
    Sorted set of the workers writing their replicas back, scored by when their lease
    runs out (Redis' clock, ms).  A starting worker does not load while one is listed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

__all__ = [
    "CONFIRM",
    "CONTACT",
    "GENERATION_COPY",
    "PUBLISH",
    "RECORD",
    "SCRIPTS",
    "WAITING",
    "WRITEBACK",
    "Keys",
    "Script",
]


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

    @property
    def acks(self) -> str:
        """The prefix of the acknowledgement keys (``acks:waits`` and per write)."""
        return f"{self.prefix}acks:"

    @property
    def waits(self) -> str:
        return f"{self.prefix}acks:waits"

    def wait(self, token: str) -> str:
        return f"{self.prefix}acks:wait:{token}"

    def done(self, token: str) -> str:
        return f"{self.prefix}acks:done:{token}"

    @property
    def generation(self) -> str:
        return f"{self.prefix}generation"

    @property
    def renewed(self) -> str:
        return f"{self.prefix}generation:renewed"

    @property
    def repairers(self) -> str:
        return f"{self.prefix}repairers"

    def jti(self, jti: str) -> str:
        return f"{self.prefix}jti:{jti}"

    def wake(self, follower: str) -> str:
        return f"{self.prefix}wake:{follower}"


@dataclass(frozen=True)
class Script:
    """A Lua script and its SHA1, for ``EVALSHA`` inside pipelines (redis-py's own
    ``Script`` checks ``SCRIPT EXISTS`` on every pipeline, a round trip more)."""

    name: str
    text: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        sha = hashlib.sha1(self.text.encode()).hexdigest()  # noqa: S324 - Redis' script id
        object.__setattr__(self, "sha", sha)


#: the prefix of the generation's copies in ``P entries`` and ``P not_before``
GENERATION_COPY = "gen:"

# Lua shared by the scripts that check the generation (see P generation above).
_GENERATION_COPIES = """
local function copies_lost(entries, not_before, generation)
  if string.sub(generation, 1, 2) ~= 'm:' then return false end  -- an older generation
  local copy = 'gen:' .. generation
  return not redis.call('ZSCORE', entries, copy) or
    redis.call('HEXISTS', not_before, copy) == 0
end
"""

RECORD = Script(
    "record",
    _GENERATION_COPIES
    + """
-- KEYS: P entries, [P jti:<jti>]; the store's other keys are named from the prefix P
--       (with Redis Cluster they share the slot of its hash tag, which Redis allows)
-- ARGV: the writer's now, stream maxlen, feed payload, jti ttl ms, call token, writer's
--       follower name, live window ms, ack ttl ms (0: nobody waits for
--       acknowledgements), '1' when a BLPOP on P acks:done:<token> follows in the
--       pipeline, the generation the writer synced with ('' for none), the purge margin
--       (seconds), then (member, not_before, expires_at) per entry
-- Returns {position, followers to wait for}: position 0 for a replay, -1 when nothing was
-- written, else the seq of the message.  With nobody to wait for, a BLPOP that follows is
-- released at once.  Followers -1: written, but the keyspace lost data moments ago (its
-- generation is not the writer's, or was renewed within the live window), so the list
-- of live followers may lack some that are still current: nobody can be waited for.
local P = string.sub(KEYS[1], 1, -8)
local entries, not_before, seq_key = KEYS[1], P .. 'not_before', P .. 'seq'
local wait, done = P .. 'acks:wait:' .. ARGV[5], P .. 'acks:done:' .. ARGV[5]
local ack_ttl = tonumber(ARGV[8])
local function settled(position)
  if ARGV[9] == '1' then
    redis.call('LPUSH', done, 1)
    redis.call('PEXPIRE', done, ack_ttl)
  end
  return {position, 0}
end
if KEYS[2] then
  if not redis.call('SET', KEYS[2], ARGV[5], 'NX', 'PX', ARGV[4]) then
    -- Our own earlier attempt, retried after its reply was lost, is not a replay; the
    -- current seq is at or past the one that attempt wrote, and its wait goes on.
    if redis.call('GET', KEYS[2]) == ARGV[5] then
      local current = tonumber(redis.call('GET', seq_key) or '0')
      if current <= 0 then current = -1 end
      local waiting = redis.call('SCARD', wait)
      if waiting > 0 or redis.call('EXISTS', done) == 1 then return {current, waiting} end
      return settled(current)
    end
    return settled(0)
  end
end
if #ARGV < 12 then return settled(-1) end
for i = 12, #ARGV, 3 do
  redis.call('ZADD', entries, 'GT', ARGV[i + 2], ARGV[i])
  if string.sub(ARGV[i], 1, 4) ~= 'sid:' then
    local current = redis.call('HGET', not_before, ARGV[i])
    if not current or tonumber(current) < tonumber(ARGV[i + 1]) then
      redis.call('HSET', not_before, ARGV[i], ARGV[i + 1])
    end
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Purge only what has expired for every worker: by the earlier of the writer's clock and
-- Redis', less a margin of at least the clock skew allowed, so that a clock running ahead
-- (the writer's or Redis') never deletes an entry still live for the others.
local cutoff = math.min(tonumber(ARGV[1]), now / 1000) - tonumber(ARGV[11])
local expired = redis.call('ZRANGE', entries, '-inf', string.format('%.3f', cutoff),
                          'BYSCORE', 'LIMIT', 0, 100)
if #expired > 0 then
  redis.call('ZREM', entries, unpack(expired))
  redis.call('HDEL', not_before, unpack(expired))
end
local seq = redis.call('INCR', seq_key)
redis.call('XADD', P .. 'feed', 'MAXLEN', '~', ARGV[2], '*', 'seq', seq, 'data', ARGV[3],
           'by', ARGV[5])
-- The writer's process applies its own write before record() returns: if its follower
-- had applied everything before, its position moves on (it need not publish this one).
local applied = P .. 'followers:applied'
if ARGV[6] ~= '' and tonumber(redis.call('HGET', applied, ARGV[6]) or '-2') == seq - 1 then
  redis.call('HSET', applied, ARGV[6], seq)
end
local live = redis.call('ZRANGE', P .. 'followers:seen', now - tonumber(ARGV[7]), '+inf',
                        'BYSCORE')
-- A keyspace emptied (FLUSHALL, eviction, a restart) took the followers' list along, and
-- after a repair renewed the generation, workers still current re-register only at their
-- next heartbeat: until then the list cannot say whom to wait for.
local unsure = ack_ttl > 0 and ARGV[10] ~= '' and
  (redis.call('GET', P .. 'generation') ~= ARGV[10] or
   redis.call('EXISTS', P .. 'generation:renewed') == 1 or
   copies_lost(entries, not_before, ARGV[10]))
local waiting = 0
for _, name in ipairs(live) do
  if name ~= ARGV[6] then
    -- Ring the follower's bell (one element at most: a burst is one wake-up).
    local bell = P .. 'wake:' .. name
    if redis.call('LLEN', bell) == 0 then
      redis.call('RPUSH', bell, 1)
      redis.call('PEXPIRE', bell, 60000)
    end
    if ack_ttl > 0 and not unsure then redis.call('SADD', wait, name) end
    waiting = waiting + 1
  end
end
if unsure then
  settled(seq)
  return {seq, -1}
end
if ack_ttl <= 0 then return {seq, 0} end
if waiting == 0 then return settled(seq) end
redis.call('PEXPIRE', wait, ack_ttl)
local waits = P .. 'acks:waits'
redis.call('ZADD', waits, seq, ARGV[5])
-- A wait older than the feed is long over (its writer gave up): forget it.
redis.call('ZREMRANGEBYSCORE', waits, '-inf', '(' .. (seq - tonumber(ARGV[2])))
return {seq, waiting}
""",
)

# Redis' clock, not the hosts': followers on several hosts compare their heartbeats.
PUBLISH = Script(
    "publish",
    _GENERATION_COPIES
    + """
-- KEYS: followers:applied hash, followers:seen zset, acks:waits zset, generation,
--       entries zset, not_before hash
-- ARGV: follower name, applied seq, purge age ms, generation this follower synced with
--       ('' to skip the check), acknowledgement key prefix (P acks:), done ttl ms
-- Returns 1, or 0 (and publishes nothing) when the generation is not the one given, or
-- its copies are gone (evicted keys).
if ARGV[4] ~= '' and (redis.call('GET', KEYS[4]) ~= ARGV[4] or
                      copies_lost(KEYS[5], KEYS[6], ARGV[4])) then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local applied = tonumber(ARGV[2])
local previous = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
if applied > previous then
  -- Acknowledge the writes this follower has now applied.
  local tokens = redis.call('ZRANGE', KEYS[3], '(' .. previous, applied, 'BYSCORE')
  for _, token in ipairs(tokens) do
    local wait = ARGV[5] .. 'wait:' .. token
    if redis.call('SREM', wait, ARGV[1]) == 1 then
      if redis.call('SCARD', wait) == 0 then
        local done = ARGV[5] .. 'done:' .. token
        redis.call('LPUSH', done, 1)
        redis.call('PEXPIRE', done, ARGV[6])
        redis.call('ZREM', KEYS[3], token)
      end
    elseif redis.call('EXISTS', wait) == 0 then
      redis.call('ZREM', KEYS[3], token)
    end
  end
end
local dead = redis.call('ZRANGE', KEYS[2], '-inf', now - tonumber(ARGV[3]), 'BYSCORE',
                        'LIMIT', 0, 100)
if #dead > 0 then
  redis.call('ZREM', KEYS[2], unpack(dead))
  redis.call('HDEL', KEYS[1], unpack(dead))
end
return 1
""",
)

WAITING = Script(
    "waiting",
    """
-- KEYS: acks:wait:<token> set, followers:applied hash, followers:seen zset, acks:waits zset,
--       acks:done:<token> list
-- ARGV: live window ms, token, '1' when the writer stops waiting
-- Returns name, applied, name, applied, … of the live followers that have not applied the
-- write yet; followers that went silent meanwhile are no longer waited for.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lagging = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local seen = redis.call('ZSCORE', KEYS[3], name)
  if seen and tonumber(seen) >= now - tonumber(ARGV[1]) then
    lagging[#lagging + 1] = name
    lagging[#lagging + 1] = redis.call('HGET', KEYS[2], name) or '-1'
  else
    redis.call('SREM', KEYS[1], name)
  end
end
if ARGV[3] == '1' or #lagging == 0 then
  redis.call('DEL', KEYS[1], KEYS[5])
  redis.call('ZREM', KEYS[4], ARGV[2])
end
return lagging
""",
)

CONFIRM = Script(
    "confirm",
    """
-- KEYS: generation, generation:renewed, followers:applied hash, followers:seen zset
-- ARGV: the generation the writer synced with, the write's seq, live window ms, the
--       writer's follower name
-- For a write the record script could not wait for (the keyspace lost data moments
-- ago): returns {1 once the generation is the writer's and not renewed within the live
-- window (0 before), then name, applied, … of the live followers below the write's seq}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local settled = 0
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('EXISTS', KEYS[2]) == 0 then
  settled = 1
end
local reply = {settled}
local live = redis.call('ZRANGE', KEYS[4], now - tonumber(ARGV[3]), '+inf', 'BYSCORE')
for _, name in ipairs(live) do
  local applied = tonumber(redis.call('HGET', KEYS[3], name) or '-1')
  if name ~= ARGV[4] and applied < tonumber(ARGV[2]) then
    reply[#reply + 1] = name
    reply[#reply + 1] = applied
  end
end
return reply
""",
)

CONTACT = Script(
    "contact",
    _GENERATION_COPIES
    + """
-- KEYS: generation, repairers zset, feed stream, followers:applied hash, followers:seen
--       zset, entries zset, not_before hash
-- ARGV: generation this worker synced with ('' for a worker that never synced), id of the
--       last feed message it applied ('' for none), a new random token, its name,
--       repair lease ms, '1' to create the generation if there is none (a new worker
--       whose wait is over), the live window ms (a renewed generation is marked that
--       long: writers do not trust the followers' list meanwhile)
-- Returns {verdict, generation ('' for none), repairers listed}.  Verdicts: 'current'
-- (nothing lost that this worker can tell), 'absent' (no generation: a new keyspace, or
-- one that lost everything), 'evicted' (for a worker that never synced: the generation's
-- copies are gone, so the entries were evicted; it started a new generation, so that the
-- workers holding them write them back), or, for a worker that synced before, 'lost'
-- (the keyspace was emptied, its entries evicted, or the feed no longer holds the last
-- message this worker applied: a failover to a replica that had not received it),
-- 'changed' (another worker found a loss and started a new generation) or 'trimmed' (the
-- feed moved on past that message, which cannot tell whether anything was lost).  Those
-- three list the worker as a repairer and unregister its follower: it writes its replica
-- back, then follows again.
local function id_less(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if tonumber(am) ~= tonumber(bm) then return tonumber(am) < tonumber(bm) end
  return tonumber(as) < tonumber(bs)
end
-- A new generation ('m:': it has copies), replacing ``old`` (false for none); ``renewed``:
-- marked as such for the live window (writers do not trust the followers' list meanwhile).
local function start_generation(old, renewed)
  local generation = 'm:' .. ARGV[3]
  redis.call('SET', KEYS[1], generation)
  if old then
    redis.call('ZREM', KEYS[6], 'gen:' .. old)
    redis.call('HDEL', KEYS[7], 'gen:' .. old)
  end
  redis.call('ZADD', KEYS[6], '+inf', 'gen:' .. generation)
  redis.call('HSET', KEYS[7], 'gen:' .. generation, 0)
  if renewed then redis.call('SET', KEYS[1] .. ':renewed', 1, 'PX', ARGV[7]) end
  return generation
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local generation = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
  if not generation and ARGV[6] == '1' then
    generation = start_generation(false, false)
  end
  if not generation then return {'absent', '', redis.call('ZCARD', KEYS[2])} end
  if copies_lost(KEYS[6], KEYS[7], generation) then
    -- This worker has nothing to give back, but the workers that synced before hold the
    -- evicted entries: at their next heartbeat they find another generation and repair.
    generation = start_generation(generation, true)
    return {'evicted', generation, redis.call('ZCARD', KEYS[2])}
  end
  return {'current', generation, redis.call('ZCARD', KEYS[2])}
end
local verdict = 'current'
if not generation then
  verdict = 'lost'
elseif generation ~= ARGV[1] then
  verdict = 'changed'
elseif copies_lost(KEYS[6], KEYS[7], generation) then
  verdict = 'lost'  -- the keyspace's entries (or not_before) were evicted
elseif ARGV[2] ~= '' and #redis.call('XRANGE', KEYS[3], ARGV[2], ARGV[2]) == 0 then
  local newest = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
  verdict = 'lost'
  if #newest > 0 and not id_less(newest[1][1], ARGV[2]) then
    local oldest = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)
    if id_less(ARGV[2], oldest[1][1]) then verdict = 'trimmed' end
  end
end
if verdict == 'current' then return {verdict, generation, redis.call('ZCARD', KEYS[2])} end
if verdict == 'lost' then generation = start_generation(generation or ARGV[1], true) end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[4])
redis.call('HDEL', KEYS[4], ARGV[4])
redis.call('ZREM', KEYS[5], ARGV[4])
return {verdict, generation, redis.call('ZCARD', KEYS[2])}
""",
)

WRITEBACK = Script(
    "writeback",
    """
-- KEYS: entries zset, not_before hash, feed stream, seq counter, repairers zset, then one
--       jti key per claim
-- ARGV: stream maxlen, repairer's name, repair lease ms, entry count n, then
--       (member, not_before, expires_at) per entry, then the ttl ms of each claim
-- Merges like the record script (a later expiry, a later not_before win; nothing is ever
-- lowered), claims each jti unless claimed, renews the lease, and sends the entries the
-- store did not hold (or held weaker) out on the feed.  Returns how many those were.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[5], 'XX', now + tonumber(ARGV[3]), ARGV[2])
local n = tonumber(ARGV[4])
local restored = {}
for i = 5, 4 + 3 * n, 3 do
  local member, not_before, expires_at = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local kind, subject = string.match(member, '^(%a+):(%d+)$')
  local changed = redis.call('ZADD', KEYS[1], 'GT', 'CH', expires_at, member)
  if kind ~= 'sid' then
    local current = redis.call('HGET', KEYS[2], member)
    if not current or tonumber(current) < tonumber(not_before) then
      redis.call('HSET', KEYS[2], member, not_before)
      changed = 1
    else
      not_before = current
    end
  end
  if changed > 0 then
    restored[#restored + 1] = '["' .. kind .. '",' .. subject .. ',' .. not_before .. ','
                              .. expires_at .. ',null,null]'
  end
end
for j = 6, #KEYS do
  redis.call('SET', KEYS[j], 'restored', 'NX', 'PX', ARGV[4 + 3 * n + j - 5])
end
if #restored > 0 then
  local seq = redis.call('INCR', KEYS[4])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 'seq', seq,
             'data', '[' .. table.concat(restored, ',') .. ']', 'by', ARGV[2])
end
return #restored
""",
)

#: every script, loaded by each follower when it (re)connects
SCRIPTS = (RECORD, PUBLISH, WAITING, CONFIRM, CONTACT, WRITEBACK)
