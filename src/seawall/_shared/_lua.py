"""The Lua scripts of shared state: sync, slots (grant and release), leave, GCRA.

Every coordination key of a namespace shares one hash tag, ``{seawall:<ns>}``
(``KEYS[1]``), so each script touches one slot, Redis Cluster included::

    P:live          ZSET  replica -> last heartbeat (ms)
    P:r:<replica>   HASH  the replica's record: "\\0g" its epoch, and per
                          dependency an ENTRY (tripped, evidence, granted,
                          released, demand, generation)
    P:agg           HASH  per dependency an AGGREGATE (generation, live,
                          tripped, evidence, slots, demand, pressure until,
                          override mode, override id, override until), and
                          "\\0s": when the next sweep is due (ms)
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

Records, aggregates and the summaries a sync carries are fixed-size binary
structs (Lua's ``struct``, Python's :mod:`struct`, little-endian), not text:
``string.match`` and ``tonumber`` on ten fields, and ``table.concat`` of
numbers (one ``sprintf`` each), cost about 1.7-1.9 us each per record in
Redis, against 0.35-0.4 us for ``struct.unpack``/``struct.pack``. A value of
another size (an older layout) reads as missing: counted anew, like a lost one.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

__all__ = [
    "AGGREGATE",
    "ENTRY",
    "GCRA",
    "LEAVE",
    "OVERRIDES",
    "PROBE",
    "SLOTS",
    "SUMMARY",
    "SYNC",
    "Script",
]

#: An aggregate: generation, live, tripped, evidence, slots, demand, pressure
#: until (ms), override mode (0: none), override id, override until (ms, 0: none).
AGGREGATE = struct.Struct("<diiiiidiid")
#: A record entry: tripped, evidence, granted, released (cumulative), demand,
#: the generation of the aggregate that counts it.
ENTRY = struct.Struct("<iiddid")
#: What a sync carries per changed dependency: tripped, evidence, released (in
#: all), in use, demand, cap, override asked (0: none), its ttl in ms (0: none).
SUMMARY = struct.Struct("<iidiiiid")
#: Override modes as the scripts store them (0: none).
OVERRIDES = {"forced_open": 1, "disabled": 2, "reset": 3, "forced_closed": 4}


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

local AF, EF = '<diiiiidiid', '<iiddid'
-- An aggregate: generation, live, tripped, evidence, slots, demand, pressure
-- until, override mode (0: none), override id, override until (0: none).
-- Anything else than its size (lost, or an older layout) reads as missing.
local function agg_parse(s)
  if not s or #s ~= 52 then return nil end
  return {struct.unpack(AF, s)}
end
local function agg_pack(a)
  return struct.pack(AF, a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10])
end

-- A record entry: tripped, evidence, granted, released, demand, the
-- generation of the aggregate that counts it.
local function ent_parse(s)
  if not s or #s ~= 36 then return nil end
  return {struct.unpack(EF, s)}
end
local function ent_pack(v) return struct.pack(EF, v[1], v[2], v[3], v[4], v[5], v[6]) end

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
      upd[#upd + 1] = agg_pack(a)
    end
  end
  if #upd > 0 then redis.call('HSET', AGG, unpack(upd)) end
end

local function forget(rkey)
  local flat = redis.call('HGETALL', rkey)
  local deps, ents = {}, {}
  for i = 1, #flat, 2 do
    if flat[i] ~= '\0g' then
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
  redis.call('HSET', AGG, '\0s', tostring(now + ttl / 2))
  return #gone
end
"""

# ARGV[4] nonce (an integer in [1, 2^40)), ARGV[5] the replica's epoch, ARGV[6]
# '1' to register (every dependency sent), '2' to renew the lease, '0' else;
# ARGV[7] n changed dependencies, then n x [dep, SUMMARY], then k gone and k
# names, then every dependency's name (for the reply).
# Returns {'full'} when the record is missing (or of another epoch) and the
# sync does not register; else {epoch, live replicas, now, aggregates,
# entries}: the AGGREGATE of every dependency named, and (registering or
# renewing only) its ENTRY.
SYNC = Script(
    "sync",
    _PREAMBLE
    + r"""
local nonce, epoch, mode = ARGV[4], ARGV[5], ARGV[6]
local nch = tonumber(ARGV[7])
local at = 8 + nch * 2
local ngone = tonumber(ARGV[at])
local first = at + 1 + ngone
local nall = #ARGV - first + 1

-- One read of the aggregates: when the next sweep is due, and every
-- dependency's aggregate (the changed ones' to update, the rest to return).
local aggregates = redis.call('HMGET', AGG, '\0s', unpack(ARGV, first))
if now >= tonumber(aggregates[1] or '0') then
  sweep()
  aggregates = redis.call('HMGET', AGG, '\0s', unpack(ARGV, first))
end
table.remove(aggregates, 1)

local rkey = P .. ':r:' .. rid
local names = {}
for i = 1, nch do names[i] = ARGV[6 + i * 2] end
local ents = redis.call('HMGET', rkey, '\0g', unpack(names))
local g = ents[1]
if not g then
  -- (Re-)registering: only a full sync carries every dependency's calls in flight.
  if mode ~= '1' then return {'full'} end
  g = nonce
  redis.call('HSET', rkey, '\0g', g)
elseif g ~= epoch and mode ~= '1' then
  return {'full'}
end

-- Generations come from the replica's random nonce: unique even when a
-- wiped server sees the same time again.
local made, base = 0, tonumber(nonce) * 4096
local entries = {}
if nch > 0 then
  local au, ru, pos = {}, {}, {}
  for j = 1, nall do pos[ARGV[first + j - 1]] = j end
  for i = 1, nch do
    local dep = names[i]
    local t, e, rel, inuse, dm, cap, ask, ms = struct.unpack('<iidiiiid', ARGV[7 + i * 2])
    local j = pos[dep]
    local raw
    if j then raw = aggregates[j] else raw = redis.call('HGET', AGG, dep) end
    local ag, l, tr, ev, sl, dem, pu, ovm, ovi, ovu
    if raw and #raw == 52 then
      ag, l, tr, ev, sl, dem, pu, ovm, ovi, ovu = struct.unpack(AF, raw)
    else
      made = made + 1
      ag, l, tr, ev, sl, dem, pu, ovm, ovi, ovu = base + made, 0, 0, 0, 0, 0, 0, 0, 0, 0
    end
    local old = ents[i + 1]
    local ot, oe, ogt, ort, odm, oag = 0, 0, 0, 0, 0, -1
    local gt, rt = 0, 0
    if old and #old == 36 then
      ot, oe, ogt, ort, odm, oag = struct.unpack(EF, old)
      gt = ogt
      rt = math.max(ort, math.min(rel, gt))
    elseif cap > 0 then
      -- New here: hold the calls in flight, as far as the cap allows.
      gt = math.max(0, math.min(inuse, cap - sl))
    end
    if oag ~= ag then
      -- Not counted in this aggregate (new, or it was lost): counted anew.
      l = l + 1
      ot, oe, ogt, ort, odm = 0, 0, 0, 0, 0
    end
    tr = tr + t - ot
    ev = ev + e - oe
    sl = sl + (gt - rt) - (ogt - ort)
    dem = dem + dm - odm
    if ask ~= 0 then
      ovm, ovi, ovu = ask, ovi + 1, 0
      if ms > 0 then ovu = now + ms end
    end
    local packed = struct.pack(AF, ag, l, tr, ev, sl, dem, pu, ovm, ovi, ovu)
    local entry = struct.pack(EF, t, e, gt, rt, dm, ag)
    if j then
      aggregates[j] = packed
      entries[j] = entry
    end
    au[i * 2 - 1], au[i * 2] = dep, packed
    ru[i * 2 - 1], ru[i * 2] = dep, entry
  end
  redis.call('HSET', AGG, unpack(au))
  redis.call('HSET', rkey, unpack(ru))
  if made > 0 then redis.call('PEXPIRE', AGG, keep) end
end
if ngone > 0 then
  -- Dependencies this replica no longer serves.
  local gone = {}
  for i = 1, ngone do gone[i] = ARGV[at + i] end
  local raw = redis.call('HMGET', rkey, unpack(gone))
  local old = {}
  for i = 1, ngone do old[i] = ent_parse(raw[i]) end
  subtract(gone, old)
  redis.call('HDEL', rkey, unpack(gone))
end
if redis.call('ZADD', live, now, rid) == 1 then redis.call('PEXPIRE', live, keep) end
local n = redis.call('ZCARD', live)

if mode == '0' then return {g, n, tostring(now), aggregates, {}} end
-- Every lease: the record's TTL, and its entries (granted and released in
-- all) so that the replica makes good any grant whose reply it lost.
redis.call('PEXPIRE', rkey, keep)
local miss, mj = {}, {}
for j = 1, nall do
  if not entries[j] then
    miss[#miss + 1] = ARGV[first + j - 1]
    mj[#mj + 1] = j
  end
end
if #miss > 0 then
  local got = redis.call('HMGET', rkey, unpack(miss))
  for k = 1, #miss do entries[mj[k]] = got[k] end
end
return {g, n, tostring(now), aggregates, entries}
""",
)

# ARGV[4] dep, ARGV[5] 'g' (grant ARGV[6] more) or 'r' (released ARGV[6] in
# all), ARGV[7] cap, ARGV[8] epoch, ARGV[9] pressure ms, and for 'g' ARGV[10]
# released in all (a release riding on the grant; -1: none).
# Returns {granted (-1: not registered), epoch, granted in all}.
SLOTS = Script(
    "slots",
    _PREAMBLE
    + r"""
local dep, op, n, cap, epoch = ARGV[4], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local rkey = P .. ':r:' .. rid
local r = redis.call('HMGET', rkey, '\0g', dep)
local v, a = ent_parse(r[2]), agg_parse(redis.call('HGET', AGG, dep))
if r[1] ~= epoch or not v or not a or a[1] ~= v[6] then return {-1, r[1] or '', 0} end
local rel = n
if op ~= 'r' then rel = tonumber(ARGV[10] or '-1') end
local rt = math.max(v[4], math.min(rel, v[3]))
if rt ~= v[4] then
  -- Released (cumulative, so a release sent twice counts once), before any grant.
  a[5] = a[5] - (rt - v[4])
  v[4] = rt
  redis.call('HSET', AGG, dep, agg_pack(a))
  redis.call('HSET', rkey, dep, ent_pack(v))
end
if op == 'r' then return {0, epoch, v[3]} end
local avail = cap - a[5]
if avail <= 0 and sweep() > 0 then
  -- Slots of dead replicas freed (this one may have been swept too).
  r = redis.call('HMGET', rkey, '\0g', dep)
  v, a = ent_parse(r[2]), agg_parse(redis.call('HGET', AGG, dep))
  if r[1] ~= epoch or not v or not a or a[1] ~= v[6] then return {-1, r[1] or '', 0} end
  avail = cap - a[5]
end
if avail <= 0 then
  a[7] = now + tonumber(ARGV[9])
  redis.call('HSET', AGG, dep, agg_pack(a))
  return {0, epoch, v[3]}
end
local g = math.min(n, avail)
v[3] = v[3] + g
a[5] = a[5] + g
redis.call('HSET', AGG, dep, agg_pack(a))
redis.call('HSET', rkey, dep, ent_pack(v))
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

# Whether the server has a native GCRA command (COMMAND INFO reports it): 1 or 0.
# Redis's GCRA (src/gcra.c, 2026) was held out of the 8.8 release: only builds
# made with ENABLE_GCRA have it. Run when the backend starts, and again after
# the scripts are loaded anew (a restarted or failed-over server).
PROBE = Script(
    "probe",
    r"""
if redis.call('COMMAND', 'INFO', 'GCRA')[1] then return 1 end
return 0
""",
)
