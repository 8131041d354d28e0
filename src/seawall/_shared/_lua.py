"""The Lua scripts of shared state: sync, slots (grant and release), leave, GCRA.

Every coordination key of a namespace shares one hash tag, ``{seawall:<ns>}``
(``KEYS[1]``), so each script touches one slot, Redis Cluster included::

    P:live          ZSET  replica -> last heartbeat (ms)
    P:r:<replica>   HASH  the replica's record: "_g" its epoch, and per
                          dependency "tripped evidence granted released demand
                          generation"
    P:agg           HASH  per dependency, "generation live tripped evidence
                          slots demand pressure-until override-mode override-id
                          override-until"
    P:sweep         STR   when the next sweep is due (ms)
    P:g:<dep>       STR   the GCRA theoretical arrival time (us)

A sync applies the change from the replica's previous record to the
aggregates, for the dependencies whose summary changed since the last sync
(all of them in a full sync: the first, after a re-registration, and every
lease), and returns the aggregates of every dependency as stored strings
(and, in a full sync, the record's entries). Redis does no per-dependency
work for an unchanged one beyond copying a string into the reply; the
replica parses them. A replica that sees an aggregate's generation change
under it (the aggregate was lost) sends that dependency again.

Slots are counted with cumulative totals (granted by Redis, released by the
replica), so a reply that never arrived is made good by the next sync, and a
release sent twice counts once. An aggregate carries a generation: a record
entry counted under another generation (the aggregate was lost) is counted
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
local AGG = P .. ':agg'

-- An aggregate: generation, live, tripped, evidence, slots, demand, pressure
-- until, override mode ('-': none), override id, override until (0: none).
local function agg_parse(s)
  if not s then return nil end
  local ag, l, t, e, sl, d, pu, ovm, ovi, ovu = string.match(s,
    '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
  return {ag, tonumber(l), tonumber(t), tonumber(e), tonumber(sl), tonumber(d),
          tonumber(pu), ovm, tonumber(ovi), tonumber(ovu)}
end
local function agg_text(a) return table.concat(a, ' ') end

-- A record entry: tripped, evidence, granted, released, demand, the
-- generation of the aggregate that counts it.
local function ent_parse(s)
  if not s then return nil end
  local t, e, gt, rt, dm, ag = string.match(s, '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
  return {tonumber(t), tonumber(e), tonumber(gt), tonumber(rt), tonumber(dm), ag}
end
local function ent_text(v) return table.concat(v, ' ') end

-- Take record entries out of the aggregates that count them; HSET the changes.
local function subtract(deps, ents)
  if #deps == 0 then return end
  local aggs = redis.call('HMGET', AGG, unpack(deps))
  local upd = {}
  for i, dep in ipairs(deps) do
    local a, v = agg_parse(aggs[i]), ents[i]
    if a and v and a[1] == v[6] then
      a[2] = a[2] - 1
      a[3] = a[3] - v[1]
      a[4] = a[4] - v[2]
      a[5] = a[5] - (v[3] - v[4])
      a[6] = a[6] - v[5]
      upd[#upd + 1] = dep
      upd[#upd + 1] = agg_text(a)
    end
  end
  if #upd > 0 then redis.call('HSET', AGG, unpack(upd)) end
end

local function forget(rkey)
  local flat = redis.call('HGETALL', rkey)
  local deps, ents = {}, {}
  for i = 1, #flat, 2 do
    if flat[i] ~= '_g' then
      deps[#deps + 1] = flat[i]
      ents[#ents + 1] = ent_parse(flat[i + 1])
    end
  end
  subtract(deps, ents)
end

-- Replicas silent for longer than the lease lose their counts and slots.
local function sweep()
  local gone = redis.call('ZRANGEBYSCORE', live, '-inf', '(' .. (now - ttl), 'LIMIT', 0, 256)
  for _, r in ipairs(gone) do
    local k = P .. ':r:' .. r
    forget(k)
    redis.call('DEL', k)
    redis.call('ZREM', live, r)
  end
  -- The aggregates and the live set stay alive while any replica syncs.
  redis.call('PEXPIRE', AGG, keep)
  redis.call('PEXPIRE', live, keep)
  redis.call('SET', P .. ':sweep', tostring(now + ttl / 2), 'PX', keep)
  return #gone
end
"""

# ARGV[4] nonce, ARGV[5] the replica's epoch, ARGV[6] '1' for a full sync,
# ARGV[7] n changed dependencies, then n x [dep, tripped, evidence, released,
# in use, demand, cap, override mode ('' none), override ttl ms], then
# k gone and k names, then every dependency's name (for the reply).
# Returns {'full'} when the record is missing (or of another epoch) and the
# sync was not full; else {epoch, live replicas, now, aggregates, entries}:
# the raw aggregate strings of every dependency named, and (full syncs only)
# its record entries.
SYNC = Script(
    "sync",
    _PREAMBLE
    + r"""
local nonce, epoch, full = ARGV[4], ARGV[5], ARGV[6] == '1'
local nch = tonumber(ARGV[7])
local at = 8 + nch * 9
local ngone = tonumber(ARGV[at])
local first = at + 1 + ngone

local due = tonumber(redis.call('GET', P .. ':sweep') or '0')
if now >= due then sweep() end

local rkey = P .. ':r:' .. rid
local g = redis.call('HGET', rkey, '_g')
if not g then
  -- (Re-)registering: only a full sync carries every dependency's calls in flight.
  if not full then return {'full'} end
  g = nonce
  redis.call('HSET', rkey, '_g', g)
elseif g ~= epoch and not full then
  return {'full'}
end

-- Generations come from the replica's random nonce: unique even when a
-- wiped server sees the same time again.
local made = 0
if nch > 0 then
  local names = {}
  for i = 0, nch - 1 do names[i + 1] = ARGV[8 + i * 9] end
  local ents = redis.call('HMGET', rkey, unpack(names))
  local aggs = redis.call('HMGET', AGG, unpack(names))
  local au, ru = {}, {}
  for i = 1, nch do
    local b = 8 + (i - 1) * 9
    local dep = names[i]
    local t, e, rel = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
    local inuse, dm, cap = tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5]), tonumber(ARGV[b + 6])
    local a = agg_parse(aggs[i])
    if not a then
      made = made + 1
      a = {nonce .. '-' .. made, 0, 0, 0, 0, 0, 0, '-', 0, 0}
    end
    local old = ent_parse(ents[i])
    local gt, rt = 0, 0
    if not old then
      -- New here: hold the calls in flight, as far as the cap allows.
      if cap > 0 then gt = math.max(0, math.min(inuse, cap - a[5])) end
      old = {0, 0, 0, 0, 0, ''}
    else
      gt = old[3]
      rt = math.max(old[4], math.min(rel, gt))
    end
    if old[6] ~= a[1] then
      -- Not counted in this aggregate (new, or it was lost): counted anew.
      a[2] = a[2] + 1
      old = {0, 0, 0, 0, 0, a[1]}
    end
    a[3] = a[3] + t - old[1]
    a[4] = a[4] + e - old[2]
    a[5] = a[5] + (gt - rt) - (old[3] - old[4])
    a[6] = a[6] + dm - old[5]
    local mode = ARGV[b + 7]
    if mode ~= '' then
      local ms = tonumber(ARGV[b + 8])
      a[8], a[9], a[10] = mode, a[9] + 1, 0
      if ms > 0 then a[10] = now + ms end
    end
    au[#au + 1] = dep
    au[#au + 1] = agg_text(a)
    ru[#ru + 1] = dep
    ru[#ru + 1] = ent_text({t, e, gt, rt, dm, a[1]})
  end
  redis.call('HSET', AGG, unpack(au))
  redis.call('HSET', rkey, unpack(ru))
  if made > 0 then redis.call('PEXPIRE', AGG, keep) end
end
if ngone > 0 then
  -- Dependencies this replica no longer serves.
  local names = {}
  for i = 1, ngone do names[i] = ARGV[at + i] end
  local raw = redis.call('HMGET', rkey, unpack(names))
  local ents = {}
  for i = 1, ngone do ents[i] = ent_parse(raw[i]) end
  subtract(names, ents)
  redis.call('HDEL', rkey, unpack(names))
end
if redis.call('ZADD', live, now, rid) == 1 then redis.call('PEXPIRE', live, keep) end
local n = redis.call('ZCARD', live)
local entries = {}
if full then
  -- Every lease: the record's TTL, and its entries (granted and released in
  -- all) so that the replica makes good any grant whose reply it lost.
  redis.call('PEXPIRE', rkey, keep)
  if #ARGV >= first then entries = redis.call('HMGET', rkey, unpack(ARGV, first)) end
end
if #ARGV < first then return {g, n, tostring(now), {}, entries} end
return {g, n, tostring(now), redis.call('HMGET', AGG, unpack(ARGV, first)), entries}
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
local r = redis.call('HMGET', rkey, '_g', dep)
local v, a = ent_parse(r[2]), agg_parse(redis.call('HGET', AGG, dep))
if r[1] ~= epoch or not v or not a or a[1] ~= v[6] then return {-1, r[1] or '', 0} end
if op == 'r' then
  local rt = math.max(v[4], math.min(n, v[3]))
  if rt ~= v[4] then
    a[5] = a[5] - (rt - v[4])
    v[4] = rt
    redis.call('HSET', AGG, dep, agg_text(a))
    redis.call('HSET', rkey, dep, ent_text(v))
  end
  return {0, epoch, v[3]}
end
local avail = cap - a[5]
if avail <= 0 and sweep() > 0 then
  -- Slots of dead replicas freed (this one may have been swept too).
  r = redis.call('HMGET', rkey, '_g', dep)
  v, a = ent_parse(r[2]), agg_parse(redis.call('HGET', AGG, dep))
  if r[1] ~= epoch or not v or not a or a[1] ~= v[6] then return {-1, r[1] or '', 0} end
  avail = cap - a[5]
end
if avail <= 0 then
  a[7] = now + tonumber(ARGV[9])
  redis.call('HSET', AGG, dep, agg_text(a))
  return {0, epoch, v[3]}
end
local g = math.min(n, avail)
v[3] = v[3] + g
a[5] = a[5] + g
redis.call('HSET', AGG, dep, agg_text(a))
redis.call('HSET', rkey, dep, ent_text(v))
return {g, epoch, v[3]}
""",
)

# A replica that stops takes its counts and slots out at once.
LEAVE = Script(
    "leave",
    _PREAMBLE
    + r"""
local rkey = P .. ':r:' .. rid
forget(rkey)
redis.call('DEL', rkey)
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
