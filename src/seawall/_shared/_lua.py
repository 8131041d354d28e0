"""The Lua scripts of shared state: sync, slots (grant and release), leave, GCRA.

Every coordination key of a namespace shares one hash tag, ``{seawall:<ns>}``
(``KEYS[1]``), so each script touches one slot, Redis Cluster included::

    P:live          ZSET  replica -> last heartbeat (ms)
    P:r:<replica>   STR   the replica's record (JSON): epoch "g" and, per
                          dependency, [tripped, evidence, granted, released,
                          demand, aggregate generation]
    P:a:<dep>       HASH  aggregates: live, trip, evid, slots, dem; pressure
                          until "pu"; override "ovm", "ovi", "ovu"; generation "ag"
    P:sweep         STR   when the next sweep is due (ms)
    P:g:<dep>       STR   the GCRA theoretical arrival time (us)

A sync applies the change from the replica's previous record to the
aggregates and returns them: its work is O(dependencies). Slots are counted
with cumulative totals (granted by Redis, released by the replica), so a
reply that never arrived is made good by the next sync, and a release sent
twice counts once. An aggregate carries a generation: a record entry counted
under another generation (the aggregate was evicted or expired) is counted
anew instead of being subtracted from counts that never held it. Replicas
silent for the lease are swept every half lease, and on a refused grant.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

__all__ = ["GCRA", "LEAVE", "SLOTS", "SYNC", "Script"]


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script and its SHA1, run by EVALSHA (loaded again on NOSCRIPT)."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


# ARGV[1] replica, ARGV[2] now in ms ('' for the server's TIME), ARGV[3] lease ms.
_PREAMBLE = r"""
local P = KEYS[1]
local rid = ARGV[1]
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[2])
end
local ttl = tonumber(ARGV[3])
local keep = math.ceil(ttl * 3)
local live = P .. ':live'

local function agg(dep) return P .. ':a:' .. dep end

-- Take a record's contributions out of the aggregates that hold them.
local function forget(rec)
  for dep, v in pairs(rec.d) do
    local a = agg(dep)
    if redis.call('HGET', a, 'ag') == v[6] then
      redis.call('HINCRBY', a, 'live', -1)
      if v[1] ~= 0 then redis.call('HINCRBY', a, 'trip', -v[1]) end
      if v[2] ~= 0 then redis.call('HINCRBY', a, 'evid', -v[2]) end
      local held = v[3] - v[4]
      if held ~= 0 then redis.call('HINCRBY', a, 'slots', -held) end
      if v[5] ~= 0 then redis.call('HINCRBY', a, 'dem', -v[5]) end
    end
  end
end

-- Replicas silent for longer than the lease lose their counts and slots.
local function sweep()
  local gone = redis.call('ZRANGEBYSCORE', live, '-inf', '(' .. (now - ttl), 'LIMIT', 0, 256)
  for _, r in ipairs(gone) do
    local k = P .. ':r:' .. r
    local raw = redis.call('GET', k)
    if raw then
      forget(cjson.decode(raw))
      redis.call('DEL', k)
    end
    redis.call('ZREM', live, r)
  end
  redis.call('SET', P .. ':sweep', tostring(now + ttl / 2), 'PX', keep)
  return #gone
end
"""

# ARGV[4]: {"n": a random nonce, "d": {dep: [tripped, evidence, released,
#           in_use, demand, cap]}, "o": {dep: [mode, ttl_ms]}}
# Returns JSON: {"e": epoch, "n": live replicas, "t": now,
#   "d": {dep: [live, tripped, evidence, slots, pressure, override mode,
#               override id, override ms left (-1: none), granted, fresh, own]}}
SYNC = Script(
    "sync",
    _PREAMBLE
    + r"""
local due = tonumber(redis.call('GET', P .. ':sweep') or '0')
if now >= due then sweep() end

local msg = cjson.decode(ARGV[4])
local asks = msg.o or {}
-- Generations (a record's epoch, an aggregate's) come from the replica's
-- random nonce: unique even when a wiped server sees the same time again.
local made = 0
local function new_gen()
  made = made + 1
  return msg.n .. '-' .. made
end
local rkey = P .. ':r:' .. rid
local raw = redis.call('GET', rkey)
local rec
if raw then rec = cjson.decode(raw) else rec = {g = new_gen(), d = {}} end

local out, nd = {}, {}
for dep, v in pairs(msg.d) do
  local a = agg(dep)
  local ag = redis.call('HGET', a, 'ag')
  if not ag then
    ag = new_gen()
    redis.call('HSET', a, 'ag', ag)
  end
  local cap = v[6]
  local old = rec.d[dep]
  local fresh, gt, rt = 0, 0, 0
  if old == nil then
    -- (Re-)registering: hold the calls in flight, as far as the cap allows.
    fresh = 1
    if cap > 0 then
      local slots = tonumber(redis.call('HGET', a, 'slots') or '0')
      gt = math.max(0, math.min(v[4], cap - slots))
    end
    old = {0, 0, 0, 0, 0, ''}
  else
    gt = old[3]
    rt = math.max(old[4], math.min(v[3], gt))
  end
  if old[6] ~= ag then
    redis.call('HINCRBY', a, 'live', 1)
    old = {0, 0, 0, 0, 0, ag}
  end
  if v[1] ~= old[1] then redis.call('HINCRBY', a, 'trip', v[1] - old[1]) end
  if v[2] ~= old[2] then redis.call('HINCRBY', a, 'evid', v[2] - old[2]) end
  local dh = (gt - rt) - (old[3] - old[4])
  if dh ~= 0 then redis.call('HINCRBY', a, 'slots', dh) end
  if v[5] ~= old[5] then redis.call('HINCRBY', a, 'dem', v[5] - old[5]) end
  nd[dep] = {v[1], v[2], gt, rt, v[5], ag}
  local mine = 0
  local ask = asks[dep]
  if ask then
    local id = redis.call('HINCRBY', a, 'ovs', 1)
    local untl = 0
    if ask[2] > 0 then untl = now + ask[2] end
    redis.call('HSET', a, 'ovm', ask[1], 'ovi', id, 'ovu', untl)
    mine = 1
  end
  local f = redis.call('HMGET', a, 'live', 'trip', 'evid', 'slots', 'dem', 'pu', 'ovm', 'ovi', 'ovu')
  local slots = tonumber(f[4] or '0')
  local pressure = 0
  if tonumber(f[6] or '0') > now or (cap > 0 and tonumber(f[5] or '0') > 0 and slots >= cap) then
    pressure = 1
  end
  local ovm, ovi, left = f[7] or '', tonumber(f[8] or '0'), -1
  if ovm ~= '' then
    local untl = tonumber(f[9] or '0')
    if untl > 0 then
      if untl <= now then ovm, ovi = '', 0 else left = untl - now end
    end
  end
  out[dep] = {tonumber(f[1] or '0'), tonumber(f[2] or '0'), tonumber(f[3] or '0'), slots, pressure,
              ovm, ovi, left, gt, fresh, mine}
  redis.call('PEXPIRE', a, keep)
end
-- Dependencies this replica no longer serves.
local gone = {d = {}}
for dep, v in pairs(rec.d) do
  if nd[dep] == nil then gone.d[dep] = v end
end
forget(gone)
rec.d = nd
redis.call('SET', rkey, cjson.encode(rec), 'PX', keep)
redis.call('ZADD', live, now, rid)
redis.call('PEXPIRE', live, keep)
return cjson.encode({e = rec.g, n = redis.call('ZCARD', live), t = now, d = out})
""",
)

# ARGV[4] dep, ARGV[5] 'g' (grant ARGV[6] more) or 'r' (released ARGV[6] in
# all), ARGV[7] cap, ARGV[8] epoch, ARGV[9] pressure ms.
# Returns {granted (-1: not registered), epoch, granted in all}.
SLOTS = Script(
    "slots",
    _PREAMBLE
    + r"""
local dep, op, n, cap, epoch = ARGV[4], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local rkey = P .. ':r:' .. rid
local raw = redis.call('GET', rkey)
if not raw then return {-1, '', 0} end
local rec = cjson.decode(raw)
local v = rec.d[dep]
local a = agg(dep)
if rec.g ~= epoch or v == nil or redis.call('HGET', a, 'ag') ~= v[6] then
  return {-1, rec.g, 0}
end
if op == 'r' then
  local rt = math.max(v[4], math.min(n, v[3]))
  if rt ~= v[4] then
    redis.call('HINCRBY', a, 'slots', v[4] - rt)
    v[4] = rt
    redis.call('SET', rkey, cjson.encode(rec), 'KEEPTTL')
  end
  return {0, rec.g, v[3]}
end
local avail = cap - tonumber(redis.call('HGET', a, 'slots') or '0')
if avail <= 0 and sweep() > 0 then
  if redis.call('EXISTS', rkey) == 0 then return {-1, '', 0} end
  avail = cap - tonumber(redis.call('HGET', a, 'slots') or '0')
end
if avail <= 0 then
  redis.call('HSET', a, 'pu', now + tonumber(ARGV[9]))
  return {0, rec.g, v[3]}
end
local g = math.min(n, avail)
v[3] = v[3] + g
redis.call('HINCRBY', a, 'slots', g)
redis.call('SET', rkey, cjson.encode(rec), 'KEEPTTL')
return {g, rec.g, v[3]}
""",
)

# A replica that stops takes its counts and slots out at once.
LEAVE = Script(
    "leave",
    _PREAMBLE
    + r"""
local rkey = P .. ':r:' .. rid
local raw = redis.call('GET', rkey)
if raw then
  forget(cjson.decode(raw))
  redis.call('DEL', rkey)
end
redis.call('ZREM', live, rid)
return 1
""",
)

# GCRA over reservations: ARGV[1] dep, ARGV[2] now in us ('' for TIME),
# ARGV[3] tokens wanted, ARGV[4] emission interval T (us), ARGV[5] burst.
# A reservation of k tokens moves the theoretical arrival time by k * T; it
# is granted while that stays within burst * T of now. Returns {granted,
# retry after in us (a string)}.
GCRA = Script(
    "gcra",
    r"""
local k = KEYS[1] .. ':g:' .. ARGV[1]
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[2])
end
local want, T, burst = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tat = tonumber(redis.call('GET', k) or '0')
if tat < now then tat = now end
local n = math.floor((now + burst * T - tat) / T + 1e-9)
if n < 1 then
  return {0, string.format('%.17g', tat + T - now - burst * T)}
end
if n > want then n = want end
tat = tat + n * T
redis.call('SET', k, string.format('%.17g', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return {n, '0'}
""",
)
