"""The Lua scripts of the Redis broker: each one atomic step (see docs/architecture.md).

A script touches only the keys it is handed in `KEYS` (named in wire.py), never one it builds
itself, and all of them in one hash slot, so that Redis Cluster can route it: every key of
one room shares the hash tag `{room}` (the room's offset, epoch, stream and presence live on
one shard with its channel), every key of one node the node's tag. What spans the two (a
join, a leave, a sweep) is several scripts in a fixed order; each says what the caller does
before and after it. The publication a script announces is encoded with wire.py's
`LUA_PUBLICATION`.
"""

from __future__ import annotations

from .wire import LUA_FRAME, LUA_PUBLICATION

__all__ = [
    "ADD_MEMBER",
    "APPEND_EVENTS",
    "CLAIM_SHARD",
    "EPHEMERAL",
    "HISTORY",
    "LEASE",
    "PUBLISH",
    "PUBLISH_BATCH",
    "RELEASE_SHARD",
    "REMOVE_MEMBER",
    "SWEEP_CLAIM",
    "SWEEP_DONE",
    "SWEEP_ROOMS",
    "sharded",
]

_NOW_MS = """
-- Redis' clock in milliseconds, read once per script call.
local clock = nil
local function now_ms()
  if clock == nil then
    local time = redis.call('TIME')
    clock = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  end
  return clock
end
"""

_SEEN = """
-- The first publish of idempotency key `key` within its window: {offset, epoch}, or nil
-- (its value is "offset epoch"; offset 0 and no epoch for a message of an ephemeral topic).
local function seen_key(key)
  local seen = redis.call('GET', key)
  if not seen then
    return nil
  end
  local space = string.find(seen, ' ', 1, true)
  return {tonumber(string.sub(seen, 1, space - 1)), string.sub(seen, space + 1)}
end
"""

_PUBLISH_ONE = (
    """
-- KEYS: offset, epoch, stream, presence[, idempotency key]
-- ARGV: history size, history ttl (ms), channel (the room's, the same for every publish),
--       prefix, target, epoch if none exists[, idempotency window (ms)]
-- Returns {offset, epoch}, or {first offset, its epoch, 1} for an idempotency key that
-- published already within its window (then nothing is published).
"""
    + _NOW_MS
    + _SEEN
    + """
local function publish(KEYS, ARGV)
  local seen = KEYS[5] and seen_key(KEYS[5])
  if seen then
    seen[3] = 1
    return seen
  end
  local epoch = redis.call('GET', KEYS[2])
  if not epoch then
    -- A new incarnation (the room is new, or its history was lost): nothing of an older one
    -- may survive it.
    epoch = ARGV[6]
    redis.call('DEL', KEYS[1], KEYS[3])
    redis.call('SET', KEYS[2], epoch)
  end
  local offset = redis.call('INCR', KEYS[1])
  if offset == 1 then
    -- Nothing retained may carry a higher id than the offsets to come.
    redis.call('DEL', KEYS[3])
  end
  local id = string.format('%d', offset)
  local frame = """
    + LUA_FRAME
    + """
  local size = tonumber(ARGV[1])
  if size > 0 then
    -- `a`: when it was published (ms), for HISTORY, which keeps each entry `ttl` from then.
    redis.call('XADD', KEYS[3], id .. '-0', 'f', frame, 't', ARGV[5], 'a', now_ms())
    -- Trimmed exactly, but every tenth of the size rather than at each message (a trim is most
    -- of a publish's cost in Redis): the stream holds up to a tenth more, which HISTORY skips.
    if offset % math.max(1, math.floor(size / 10)) == 0 then
      redis.call('XTRIM', KEYS[3], 'MAXLEN', size)
    end
    redis.call('PEXPIRE', KEYS[3], ARGV[2])
  end
  if redis.call('EXISTS', KEYS[4]) == 0 then
    -- Nobody holds the room: its offset and epoch expire with the stream (a member's join
    -- makes them persistent, its room's last leave gives them the history ttl again).
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
  end
  if KEYS[5] then
    redis.call('SET', KEYS[5], id .. ' ' .. epoch, 'PX', ARGV[7])
  end
  redis.call('PUBLISH', ARGV[3], """
    + LUA_PUBLICATION
    + """)
  return {offset, epoch}
end
"""
)

PUBLISH = _PUBLISH_ONE + "return publish(KEYS, ARGV)\n"

PUBLISH_BATCH = (
    _PUBLISH_ONE
    + """
-- Several publishes in one call, in order: KEYS holds each one's keys after the other's, ARGV
-- each one's number of keys (4 or 5), then its ARGV as PUBLISH takes it (n + 2 values).
-- Returns each one's answer, or the error it met (the others still run, as separate calls).
local answers = {}
local k, a = 0, 1
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  local keys, argv = {}, {}
  for i = 1, n do keys[i] = KEYS[k + i] end
  for i = 1, n + 2 do argv[i] = ARGV[a + i] end
  local ok, answer = pcall(publish, keys, argv)
  if not ok and (type(answer) ~= 'table' or not answer.err) then
    answer = {err = tostring(answer)}
  end
  answers[#answers + 1] = answer
  k = k + n
  a = a + n + 3
end
return answers
"""
)

EPHEMERAL = (
    _SEEN
    + """
-- A message of an ephemeral topic with an idempotency key: announced unless the key published
-- already within its window.
-- KEYS: idempotency key
-- ARGV: channel, message (wire.encode_ephemeral), idempotency window (ms)
-- Returns {first offset, its epoch} for a key seen (then nothing is announced), else {}.
local seen = seen_key(KEYS[1])
if seen then
  return seen
end
-- Offset 0, no epoch: what PUBLISH answers a room message that repeats this key.
redis.call('SET', KEYS[1], '0 ', 'PX', ARGV[3])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return {}
"""
)

HISTORY = (
    _NOW_MS
    + """
-- KEYS: offset, epoch, stream, presence
-- ARGV: epoch if none exists, history ttl (ms), first offset wanted (1 for all), count (-1:
--       all), history size[, channel, members ('1': list them), signal, ...]: the rest of a
--       join (Broker.read_join) announces each signal on the room's channel and lists the
--       members, in the same step
-- Returns {epoch, offset, first retained id ('' for none), entries, members ({} unless asked)}
-- Only the last `history size` offsets are read (the stream may hold a few older ones:
-- PUBLISH trims it now and then), and of those only entries published within the history
-- ttl (the stream itself expires that long after the last publish).
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  -- A new incarnation, which the next publish adopts.
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1], KEYS[3])
  if redis.call('EXISTS', KEYS[4]) == 1 then
    redis.call('SET', KEYS[2], epoch)
  else
    redis.call('SET', KEYS[2], epoch, 'PX', ARGV[2])
  end
end
local offset = tonumber(redis.call('GET', KEYS[1]) or '0')
local kept = math.max(1, offset - tonumber(ARGV[5]) + 1)
-- Each entry is kept `ttl` from its publish (field `a`; one without it counts as fresh):
-- entries are in the order of their times, so the first fresh one is found by halving.
local cutoff = now_ms() - tonumber(ARGV[2])
local function at_or_after(o)
  return redis.call('XRANGE', KEYS[3], o .. '-0', '+', 'COUNT', 1)[1]
end
local function stale(entry)
  local fields = entry[2]
  for i = 1, #fields - 1, 2 do
    if fields[i] == 'a' then
      return tonumber(fields[i + 1]) < cutoff
    end
  end
  return false
end
local first = at_or_after(kept)
if first and stale(first) then
  -- Entries before `low` are stale; the one at or after `high` is fresh, or there is none.
  local low, high = tonumber(string.match(first[1], '^%d+')) + 1, offset + 1
  while low < high do
    local middle = math.floor((low + high) / 2)
    local entry = at_or_after(middle)
    if entry and stale(entry) then
      low = tonumber(string.match(entry[1], '^%d+')) + 1
    else
      high = middle
    end
  end
  kept = low
  first = at_or_after(low)
end
local first_id = ''
if first then
  first_id = first[1]
end
local from = math.max(kept, tonumber(ARGV[3])) .. '-0'
local count = tonumber(ARGV[4])
local entries = {}
if count ~= 0 then
  if count > 0 then
    entries = redis.call('XRANGE', KEYS[3], from, '+', 'COUNT', count)
  else
    entries = redis.call('XRANGE', KEYS[3], from, '+')
  end
end
local members = {}
if ARGV[6] then
  for i = 8, #ARGV do
    redis.call('PUBLISH', ARGV[6], ARGV[i])
  end
  if ARGV[7] == '1' then
    members = redis.call('HKEYS', KEYS[4])
  end
end
return {epoch, offset, first_id, entries, members}
"""
)

# A presence value is one `node_id:connection_id` token, or under the `share` policy several,
# separated by spaces: the username stays listed from its first connection to its last.
_WITHOUT = """
local function without(value, token)
  local rest, found = {}, false
  for item in string.gmatch(value, '%S+') do
    if item == token then found = true else rest[#rest + 1] = item end
  end
  return found, table.concat(rest, ' ')
end
"""

ADD_MEMBER = """
-- KEYS: presence hash, offset, epoch (the room's slot)
-- ARGV: username, node_id:connection_id, mode ('0' reject, '1' replace, '2' share),
--       max members ('0': no limit)
-- Returns {status, previous value}: 0 taken, 1 added, 2 already this connection's,
-- 3 added beside the username's other connections (share), 4 the room is full (a new
-- username past max members).
-- The caller put the entry in its node's member set first (presence.py: a token in a
-- presence hash always has an entry a sweep can find).
-- A room with members is held: its offset and epoch do not expire.
redis.call('PERSIST', KEYS[2])
redis.call('PERSIST', KEYS[3])
local previous = redis.call('HGET', KEYS[1], ARGV[1])
if previous == ARGV[2] then
  return {2, previous}
end
if previous and ARGV[3] == '2' then
  for item in string.gmatch(previous, '%S+') do
    if item == ARGV[2] then
      return {2, previous}
    end
  end
  redis.call('HSET', KEYS[1], ARGV[1], previous .. ' ' .. ARGV[2])
  return {3, previous}
end
if previous and ARGV[3] ~= '1' then
  return {0, previous}
end
local max = tonumber(ARGV[4] or '0')
if not previous and max > 0 and redis.call('HLEN', KEYS[1]) >= max then
  return {4, ''}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {1, previous or ''}
"""

REMOVE_MEMBER = (
    _WITHOUT
    + """
-- KEYS: presence hash, offset, epoch (the room's slot)
-- ARGV: username, node_id:connection_id, history ttl (ms)[, channel, signal]
-- Returns 1 when the username left presence (its last connection), else 0; with 1 the
-- signal (its leave) goes out on the channel in the same step, before any join that the
-- removal makes room for.
-- The caller takes the entry out of its node's member set afterwards.
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then
  return 0
end
if value ~= ARGV[2] then
  local found, rest = without(value, ARGV[2])
  if found and rest ~= '' then
    redis.call('HSET', KEYS[1], ARGV[1], rest)
  end
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HLEN', KEYS[1]) == 0 then
  -- The room is no longer held: its offset and epoch live one history ttl from now.
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
if ARGV[5] then
  redis.call('PUBLISH', ARGV[4], ARGV[5])
end
return 1
"""
)

# A sweep of a dead node is three single-slot steps (presence.py `_sweep`), each safe to
# repeat, so that a sweeper that dies between two of them leaves nothing a later sweep
# cannot finish:
#   1. SWEEP_CLAIM (the node's slot): unless the lease is live, move the member set into
#      the sweep set and return the sweep set (what this and any unfinished sweep claimed);
#   2. SWEEP_ROOMS (one room slot per call): take the dead node's tokens out of presence
#      and announce each username that left; removing a token is the claim, so each member
#      is announced by exactly one sweeper, in the same step, and the room's sweep record
#      keeps which sweeper it was: a sweeper whose reply was lost learns on its retry what
#      it removed, and no other sweeper finishes those entries before it has;
#   3. SWEEP_DONE (the node's slot): forget the entries step 2 finished; say whether the
#      node is gone (no lease, no entry left), so the caller takes it off the nodes set.

SWEEP_CLAIM = """
-- KEYS: node lease, node member set, node sweep set
-- ARGV: force ('1': even with a live lease, for the node's own restart or stop)
if ARGV[1] ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  return {}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SUNIONSTORE', KEYS[3], KEYS[3], KEYS[2])
  redis.call('DEL', KEYS[2])
end
return redis.call('SMEMBERS', KEYS[3])
"""

SWEEP_ROOMS = (
    _WITHOUT
    + """
-- KEYS: for each entry: presence hash, offset, epoch, sweep record of its room (one slot)
-- ARGV: history ttl (ms), sweep record ttl (ms), this sweeper's node id, then for each
--       entry: room, username, presence value, the room's channel, the leave signal to
--       announce there when this call removes the username ('' for none: a node's clean
--       stop announces nothing)
-- Returns one status per entry: 1 this sweeper took the username out of presence, in this
-- call or in an earlier one whose reply it did not get (the sweep record says so); 2 another
-- sweeper did, and the record says so (the entry stays to be swept: that sweeper still has
-- to learn it on its retry); 0 otherwise (a username shared with connections on other nodes
-- loses only the dead node's token: it is still present; or the token was already gone).
local statuses = {}
local sweeper = ARGV[3]
for i = 0, (#ARGV - 3) / 5 - 1 do
  local room, username, token = ARGV[4 + 5 * i], ARGV[5 + 5 * i], ARGV[6 + 5 * i]
  local hash, record = KEYS[1 + 4 * i], KEYS[4 + 4 * i]
  local field = token .. ' ' .. username
  local value = redis.call('HGET', hash, username)
  local status = 0
  local found, rest = false, ''
  if value then
    found, rest = without(value, token)
  end
  if found and rest ~= '' then
    redis.call('HSET', hash, username, rest)
  elseif found then
    redis.call('HDEL', hash, username)
    if redis.call('HLEN', hash) == 0 then
      redis.call('PEXPIRE', KEYS[2 + 4 * i], ARGV[1])
      redis.call('PEXPIRE', KEYS[3 + 4 * i], ARGV[1])
    end
    if ARGV[8 + 5 * i] ~= '' then
      redis.call('PUBLISH', ARGV[7 + 5 * i], ARGV[8 + 5 * i])
    end
    redis.call('HSET', record, field, sweeper)
    redis.call('PEXPIRE', record, ARGV[2])
    status = 1
  else
    local by = redis.call('HGET', record, field)
    if by == sweeper then
      status = 1
    elseif by then
      status = 2
    end
  end
  statuses[#statuses + 1] = status
end
return statuses
"""
)

SWEEP_DONE = """
-- KEYS: node lease, node member set, node sweep set
-- ARGV: the entries step 2 finished
-- Returns 1 when the node is gone: no lease, and no entry left to sweep.
if #ARGV > 0 then
  redis.call('SREM', KEYS[3], unpack(ARGV))
end
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('SCARD', KEYS[2]) == 0
    and redis.call('SCARD', KEYS[3]) == 0 then
  return 1
end
return 0
"""

LEASE = """
-- KEYS: node lease, node member set, node sweep set
-- ARGV: token, lease milliseconds
-- Returns 1 when the lease was still held, 0 when it had lapsed (and is now taken again).
-- A lapsed lease may have been claimed by a sweep: the node puts its members back itself
-- (presence.py), so what a sweep claimed and did not finish is no longer to be swept.
if redis.call('SET', KEYS[1], ARGV[1], 'XX', 'PX', ARGV[2]) then
  return 1
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[3])
return 0
"""


# The webhook outbox (webhooks.py, brokers/redis/outbox.py): every key of one shard shares
# the shard's hash tag, so each script stays in one slot.

APPEND_EVENTS = """
-- KEYS: outbox stream, occupancy hash, lease (of one shard)
-- ARGV: max entries kept, entries being sent (the oldest, never dropped), then for each
--       event: kind ('j' joined, 'l' left, 'o' other), room, record ('' when not kept),
--       room record ('' when not kept)
-- Counts each room's members: a join that makes 1 opens an occupancy (its room record, a
-- room.occupied, is kept before it), a leave that makes 0 closes it (its room.vacated is
-- kept after it). Returns the entries that opened (i) or closed (-i) an occupancy, 1-based,
-- then how many of the oldest entries were dropped to keep the bound.
local changes = {}
local function keep(record)
  if record ~= '' then
    redis.call('XADD', KEYS[1], '*', 'e', record)
  end
end
for i = 0, (#ARGV - 2) / 4 - 1 do
  local kind, room = ARGV[3 + 4 * i], ARGV[4 + 4 * i]
  local record, room_record = ARGV[5 + 4 * i], ARGV[6 + 4 * i]
  if kind == 'j' then
    if redis.call('HINCRBY', KEYS[2], room, 1) == 1 then
      changes[#changes + 1] = i + 1
      keep(room_record)
    end
    keep(record)
  elseif kind == 'l' then
    keep(record)
    local count = redis.call('HINCRBY', KEYS[2], room, -1)
    if count <= 0 then
      -- Below zero: a leave whose join was not counted, which closes nothing.
      redis.call('HDEL', KEYS[2], room)
      if count == 0 then
        changes[#changes + 1] = -(i + 1)
        keep(room_record)
      end
    end
  else
    keep(record)
  end
end
local dropped = 0
local sending = tonumber(ARGV[2])
local excess = redis.call('XLEN', KEYS[1]) - math.max(tonumber(ARGV[1]), sending)
if excess > 0 then
  if sending == 0 then
    dropped = redis.call('XTRIM', KEYS[1], 'MAXLEN', tonumber(ARGV[1]))
  else
    -- The batch being sent stays: the oldest after it go.
    local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', sending + excess)
    for j = sending + 1, #oldest do
      redis.call('XDEL', KEYS[1], oldest[j][1])
    end
    dropped = #oldest - sending
  end
end
changes[#changes + 1] = dropped
return changes
"""

CLAIM_SHARD = """
-- KEYS: outbox stream, occupancy hash, lease (of one shard)
-- ARGV: token, lease milliseconds
-- Returns 1 when the caller holds the lease (renewed, or taken because it was free).
local holder = redis.call('GET', KEYS[3])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

RELEASE_SHARD = """
-- KEYS: outbox stream, occupancy hash, lease (of one shard)
-- ARGV: token
if redis.call('GET', KEYS[3]) == ARGV[1] then
  redis.call('DEL', KEYS[3])
end
return 0
"""


def sharded(script: str) -> str:
    """`script` announcing on sharded pub/sub (`SPUBLISH`, Redis Cluster) instead."""
    return script.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',")
