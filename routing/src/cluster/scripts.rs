//! The Lua scripts that keep the shared session records consistent. Each runs atomically on the
//! Redis server with its clock (`TIME`), so replicas never compare their own clocks.
//!
//! Keys (all under the hash tag `{prefix}`, passed as `ARGV[1]`):
//! - `P:s:<id>` hash — one session: `gen` (incarnation), `rt` runtime, `pr` principal, `qk` quota
//!   key, `ver` version, `st` `p` (placing) / `l` (live), `placer` + `dl` (placing deadline),
//!   `cr` created, `last` last activity (ms), `idle`/`life` its timeouts (ms), `be` backend
//!   addresses (`relay <host addr> <backend id> <ports>` on a host), `host` its host,
//!   `slot` static-pool endpoint, `mcp` its MCP session ids, `l:<node>` the
//!   in-flight slots leased to each replica (their sum never exceeds the session's limit);
//! - `P:nodes` sorted set replica → last seen (a replica silent for 5 s holds no lease);
//! - `P:active` sorted set id → the earliest it can end (its size is the exact active count);
//! - `P:q:<quota key>` set of a caller's sessions; `P:slots` hash endpoint → sessions on it;
//! - `P:host:<id>` a backend host's record (expires unless its heartbeat renews it), `P:hosts`
//!   sorted set host → last heartbeat, `P:hs:<host>` the sessions placed on it;
//! - hibernation (`super::hibernate`): `st` `s` (suspending: requests wait) / `z` (suspended),
//!   `snap` its snapshot directory's name, `sb` bytes, `mem` whether memory was saved, `sd` when,
//!   `ret` retention (ms); `P:suspended` sorted set id → when its retention ends; `P:snaps` hash
//!   snapshot directory → session (a directory nobody holds is reclaimed by the hosts);
//!   `P:snapbytes` hash runtime → bytes of its suspended sessions' snapshots;
//! - `P:mcp:<Mcp-Session-Id>` → session id; `P:epoch` (changes when Redis lost its data);
//!   `P:recovering` (set for 2 s when a replica finds the data lost: no session is created
//!   meanwhile, so none is created twice); `P:sweeper` lock; channel `P:ev` (`<id> <gen> <reason>` when a session ends).

/// Shared helpers, prepended to every script.
const PRELUDE: &str = r#"
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function str(n) return string.format('%.0f', n) end
-- Moves a runtime's snapshot byte count by n (never by '-0', which HINCRBY refuses).
local function add_snapshot_bytes(P, rt, n)
  if n ~= 0 then redis.call('HINCRBY', P .. ':snapbytes', rt, str(n)) end
end
-- Ends session `id` (its record exists): out of every set, its slot, host and MCP ids freed,
-- announced to every replica.
local function finish(P, id, reason)
  local key = P .. ':s:' .. id
  local r = redis.call('HMGET', key, 'gen', 'qk', 'slot', 'mcp', 'host', 'snap', 'st', 'sbk', 'sb')
  redis.call('DEL', key)
  redis.call('ZREM', P .. ':active', id)
  redis.call('ZREM', P .. ':suspended', id)
  if r[6] then redis.call('HDEL', P .. ':snaps', r[6]) end
  if r[7] == 'z' then add_snapshot_bytes(P, r[8], -tonumber(r[9] or '0')) end
  redis.call('SREM', P .. ':q:' .. r[2], id)
  if r[3] then redis.call('HINCRBY', P .. ':slots', r[3], -1) end
  if r[5] then redis.call('SREM', P .. ':hs:' .. r[5], id) end
  for m in string.gmatch(r[4] or '', '%S+') do
    if redis.call('GET', P .. ':mcp:' .. m) == id then redis.call('DEL', P .. ':mcp:' .. m) end
  end
  redis.call('PUBLISH', P .. ':ev', id .. ' ' .. r[1] .. ' ' .. reason)
end
-- A session that just became live: its idle clock starts now (its placement may have taken
-- longer than its idle timeout).
local function went_live(P, key, id)
  local t = now()
  local r = redis.call('HMGET', key, 'cr', 'idle', 'life')
  redis.call('HSET', key, 'last', str(t))
  redis.call('ZADD', P .. ':active', math.min(t + tonumber(r[2]), tonumber(r[1]) + tonumber(r[3])), id)
end
-- In-flight slots leased to other live replicas (a replica silent for 5 s holds none).
local function leased_by_others(P, key, node, t)
  local total = 0
  local fields = redis.call('HGETALL', key)
  for i = 1, #fields, 2 do
    local f = fields[i]
    if string.sub(f, 1, 2) == 'l:' and string.sub(f, 3) ~= node then
      local seen = redis.call('ZSCORE', P .. ':nodes', string.sub(f, 3))
      if seen and tonumber(seen) > t - 5000 then
        total = total + tonumber(fields[i + 1])
      else
        redis.call('HDEL', key, f)
      end
    end
  end
  return total
end
"#;

/// Create-or-join (or resume, for a suspended session). KEYS[1] `P:s:<id>`; ARGV: prefix, id, runtime, principal, quota key, version,
/// node, create (1/0), max active, max per quota key, placing ms, idle ms, life ms, new
/// incarnation, the epoch the caller knows ('' none yet), a fresh epoch, max in flight per
/// session. A joining replica is leased one in-flight slot (`{inflight}` when none is free).
/// Returns `{state, gen, version, created, last, backend}` with state `live`, `placing`
/// (someone else places it), `place` (the caller must place it: new, resumed, or a stale
/// placement taken over; then also the snapshot to restore, whether it holds memory, and the
/// host it must be restored on), `suspending` (ask again shortly), `notfound`, `{full|quota, retry ms}`, or `{recovering}` while Redis has lost its data
/// and the replicas write back what they know (a session missing now may be written back).
pub const OPEN: &str = r#"
local P, id = ARGV[1], ARGV[2]
local t = now()
local r = redis.call('HMGET', KEYS[1], 'gen', 'rt', 'pr', 'ver', 'st', 'placer', 'dl', 'cr', 'last', 'be')
if r[1] then
  if r[2] ~= ARGV[3] or r[3] ~= ARGV[4] then return {'notfound'} end
  if r[5] == 's' then return {'suspending'} end
  if r[5] == 'z' then
    local z = redis.call('HMGET', KEYS[1], 'idle', 'life', 'qk', 'sb', 'sbk')
    local life_end = tonumber(r[8]) + tonumber(z[2])
    if life_end <= t then
      finish(P, id, 'max_lifetime')
      return {'notfound'}
    end
    -- A resumed session counts again, against the same limits as a new one (it stays
    -- suspended meanwhile).
    if redis.call('ZCARD', P .. ':active') >= tonumber(ARGV[9]) then return {'full', '1000'} end
    if redis.call('SCARD', P .. ':q:' .. z[3]) >= tonumber(ARGV[10]) then return {'quota', '1000'} end
    -- Resumed by this replica's placement, as a new incarnation of the same session.
    add_snapshot_bytes(P, z[5] or r[2], -tonumber(z[4] or '0'))
    redis.call('ZREM', P .. ':suspended', id)
    redis.call('HSET', KEYS[1], 'gen', ARGV[14], 'st', 'p', 'placer', ARGV[7],
      'dl', str(t + tonumber(ARGV[11])), 'last', str(t))
    redis.call('ZADD', P .. ':active', math.min(t + tonumber(z[1]), life_end), id)
    redis.call('SADD', P .. ':q:' .. z[3], id)
    r[1], r[5], r[6], r[7], r[9] = ARGV[14], 'p', ARGV[7], str(t + tonumber(ARGV[11])), str(t)
  end
  if ARGV[17] ~= '0' then
    redis.call('ZADD', P .. ':nodes', t, ARGV[7])
    local mine = tonumber(redis.call('HGET', KEYS[1], 'l:' .. ARGV[7]) or '0')
    if mine < 1 then
      if leased_by_others(P, KEYS[1], ARGV[7], t) + 1 > tonumber(ARGV[17]) then return {'inflight'} end
      redis.call('HSET', KEYS[1], 'l:' .. ARGV[7], 1)
    end
  end
  if r[5] == 'p' then
    -- A resume's placement restores its snapshot (on its host, when the root is host-local).
    local z = redis.call('HMGET', KEYS[1], 'snap', 'mem', 'host')
    local place = {'place', r[1], r[4], r[8], r[9], '', z[1] or '', z[2] or '', z[3] or ''}
    if tonumber(r[7]) < t then
      redis.call('HSET', KEYS[1], 'placer', ARGV[7], 'dl', str(t + tonumber(ARGV[11])))
      return place
    end
    if r[6] == ARGV[7] then return place end
    return {'placing', r[1], r[4], r[8], r[9], ''}
  end
  return {'live', r[1], r[4], r[8], r[9], r[10] or ''}
end
local epoch = redis.call('GET', P .. ':epoch')
if not epoch then
  if ARGV[15] ~= '' then
    redis.call('SET', P .. ':recovering', '1', 'PX', 2000, 'NX')
    return {'recovering'}
  end
  redis.call('SET', P .. ':epoch', ARGV[16], 'NX')
elseif ARGV[15] ~= '' and epoch ~= ARGV[15] then
  return {'recovering'}
end
if redis.call('EXISTS', P .. ':recovering') == 1 then return {'recovering'} end
if ARGV[8] ~= '1' then return {'notfound'} end
local active = P .. ':active'
if redis.call('ZCARD', active) >= tonumber(ARGV[9]) then
  local first = redis.call('ZRANGE', active, 0, 0, 'WITHSCORES')
  return {'full', str(first[2] and (tonumber(first[2]) - t) or 1000)}
end
local q = P .. ':q:' .. ARGV[5]
if redis.call('SCARD', q) >= tonumber(ARGV[10]) then
  local soonest = nil
  for _, m in ipairs(redis.call('SMEMBERS', q)) do
    local sc = redis.call('ZSCORE', active, m)
    if sc and (not soonest or tonumber(sc) < soonest) then soonest = tonumber(sc) end
  end
  return {'quota', str(soonest and (soonest - t) or 1000)}
end
local idle, life = tonumber(ARGV[12]), tonumber(ARGV[13])
redis.call('HSET', KEYS[1], 'gen', ARGV[14], 'rt', ARGV[3], 'pr', ARGV[4], 'qk', ARGV[5],
  'ver', ARGV[6], 'st', 'p', 'placer', ARGV[7], 'dl', str(t + tonumber(ARGV[11])),
  'cr', str(t), 'last', str(t), 'idle', ARGV[12], 'life', ARGV[13], 'l:' .. ARGV[7], 1)
redis.call('ZADD', active, t + math.min(idle, life), id)
redis.call('SADD', q, id)
return {'place', ARGV[14], ARGV[6], str(t), str(t), ''}
"#;

/// Takes a static-pool slot for a session being placed by this node, in the same step that
/// makes it live. KEYS[1] `P:s:<id>`; ARGV: prefix, gen, node, sessions per endpoint, then
/// (endpoint key, backend addresses) pairs in the order to try. Returns the index of the pair
/// taken, -1 when every endpoint is full, -2 when the session is no longer ours to place.
pub const PLACE_SLOT: &str = r#"
local r = redis.call('HMGET', KEYS[1], 'gen', 'st', 'placer')
if r[1] ~= ARGV[2] or r[2] ~= 'p' or r[3] ~= ARGV[3] then return -2 end
local slots = ARGV[1] .. ':slots'
local per = tonumber(ARGV[4])
for i = 5, #ARGV, 2 do
  if tonumber(redis.call('HGET', slots, ARGV[i]) or '0') < per then
    redis.call('HINCRBY', slots, ARGV[i], 1)
    redis.call('HSET', KEYS[1], 'st', 'l', 'be', ARGV[i + 1], 'slot', ARGV[i])
    went_live(ARGV[1], KEYS[1], string.sub(KEYS[1], string.len(ARGV[1]) + 4))
    return (i - 5) / 2
  end
end
return -1
"#;

/// Ends a session, once: removes it from every set, frees its slot and MCP ids, and tells every
/// replica. KEYS[1] `P:s:<id>`; ARGV: prefix, id, gen ('' any), reason ('' decide: idle or
/// max_lifetime, and only if due), runtime ('' any), principal ('' any), backend ('' any: else
/// only if the record names this backend). Returns the reason it ended with, or '' when it did
/// not end (gone already, another incarnation, owner or backend, not due).
pub const END: &str = r#"
local P, id = ARGV[1], ARGV[2]
local r = redis.call('HMGET', KEYS[1], 'gen', 'cr', 'last', 'idle', 'life', 'rt', 'pr', 'be')
if not r[1] then
  redis.call('ZREM', P .. ':active', id)
  redis.call('ZREM', P .. ':suspended', id)
  return ''
end
if ARGV[3] ~= '' and r[1] ~= ARGV[3] then return '' end
if (ARGV[5] ~= '' and r[6] ~= ARGV[5]) or (ARGV[6] ~= '' and r[7] ~= ARGV[6]) then return '' end
if ARGV[7] ~= '' and not string.find(r[8] or '', ' ' .. ARGV[7] .. ' ', 1, true) then return '' end
local reason = ARGV[4]
if reason == '' then
  local t = now()
  local life_end = tonumber(r[2]) + tonumber(r[5])
  local due = math.min(tonumber(r[3]) + tonumber(r[4]), life_end)
  if due > t then
    redis.call('ZADD', P .. ':active', due, id)
    return ''
  end
  reason = (life_end <= t) and 'max_lifetime' or 'idle'
end
finish(P, id, reason)
return reason
"#;

/// Places a session this replica places on a host: live, with the host's relay address and the
/// backend id, counted in the host's set. KEYS[1] `P:s:<id>`; ARGV: prefix, gen, node, host id,
/// backend addresses. Returns 1, or -2 when the session is no longer this replica's to place.
pub const PLACE_HOST: &str = r#"
local r = redis.call('HMGET', KEYS[1], 'gen', 'st', 'placer')
if r[1] ~= ARGV[2] or r[2] ~= 'p' or r[3] ~= ARGV[3] then return -2 end
local id = string.sub(KEYS[1], string.len(ARGV[1]) + 4)
local z = redis.call('HMGET', KEYS[1], 'snap', 'host')
if z[1] then
  -- A resume: the host restored the snapshot and removed it.
  redis.call('HDEL', ARGV[1] .. ':snaps', z[1])
  redis.call('HDEL', KEYS[1], 'snap', 'sb', 'sbk', 'mem', 'sd', 'ret')
end
if z[2] and z[2] ~= ARGV[4] then redis.call('SREM', ARGV[1] .. ':hs:' .. z[2], id) end
redis.call('HSET', KEYS[1], 'st', 'l', 'be', ARGV[5], 'host', ARGV[4])
redis.call('SADD', ARGV[1] .. ':hs:' .. ARGV[4], id)
went_live(ARGV[1], KEYS[1], id)
return 1
"#;

/// A host's heartbeat: its record (address, capacity, load, MAC) for ARGV[4] ms, and its place in
/// the live set. ARGV: prefix, host id, record, ttl ms.
pub const HEARTBEAT: &str = r#"
redis.call('SET', ARGV[1] .. ':host:' .. ARGV[2], ARGV[3], 'PX', tonumber(ARGV[4]))
redis.call('ZADD', ARGV[1] .. ':hosts', now(), ARGV[2])
return 1
"#;

/// The hosts heard from within ARGV[2] ms: (id, record) pairs.
pub const HOSTS: &str = r#"
local out = {}
for _, h in ipairs(redis.call('ZRANGEBYSCORE', ARGV[1] .. ':hosts', now() - tonumber(ARGV[2]), '+inf')) do
  local rec = redis.call('GET', ARGV[1] .. ':host:' .. h)
  if rec then
    out[#out + 1] = h
    out[#out + 1] = rec
  end
end
return out
"#;

/// Ends the sessions of every host silent for ARGV[2] ms (reason `host_lost`) and forgets the
/// host. Run by the replica holding the sweeper lock. Returns the ended session ids.
pub const HOSTS_LOST: &str = r#"
local P = ARGV[1]
local out = {}
for _, h in ipairs(redis.call('ZRANGEBYSCORE', P .. ':hosts', '-inf', now() - tonumber(ARGV[2]))) do
  for _, id in ipairs(redis.call('SMEMBERS', P .. ':hs:' .. h)) do
    if redis.call('HGET', P .. ':s:' .. id, 'host') == h then
      finish(P, id, 'host_lost')
      out[#out + 1] = id
    end
  end
  redis.call('DEL', P .. ':hs:' .. h, P .. ':host:' .. h)
  redis.call('ZREM', P .. ':hosts', h)
end
return out
"#;

/// For a host's own backends: whether each (session id, backend id) pair is still a live
/// session's backend on this host. ARGV: prefix, host id, then pairs. Returns 1/0 per pair, or
/// nothing while Redis has lost its data and the replicas are writing their sessions back.
pub const STILL_PLACED: &str = r#"
if redis.call('EXISTS', ARGV[1] .. ':epoch') == 0 or redis.call('EXISTS', ARGV[1] .. ':recovering') == 1 then
  return {}
end
local out = {}
for i = 3, #ARGV, 2 do
  local r = redis.call('HMGET', ARGV[1] .. ':s:' .. ARGV[i], 'host', 'be')
  local here = r[1] == ARGV[2] and string.find(r[2] or '', ' ' .. ARGV[i + 1] .. ' ', 1, true)
  out[#out + 1] = here and 1 or 0
end
return out
"#;

/// One replica's activity, batched (about once a second): moves each session's shared last
/// activity forward (a write at most once a second per session), sets the in-flight slots this
/// replica keeps leased, and reports each session's last activity back, so every replica's idle
/// clock agrees. ARGV: prefix, node, then (id, gen, last activity ms or 0, lease) quads.
/// Returns `{epoch, last_1, …}`: each session's shared last activity, or -1 when it no longer
/// exists as that incarnation. Also marks the node alive (its leases count while it is).
pub const TOUCH: &str = r#"
local P, node = ARGV[1], ARGV[2]
local t = now()
redis.call('ZADD', P .. ':nodes', t, node)
local out = {redis.call('GET', P .. ':epoch') or ''}
for i = 3, #ARGV, 4 do
  local key = P .. ':s:' .. ARGV[i]
  local r = redis.call('HMGET', key, 'gen', 'last', 'cr', 'idle', 'life', 'st')
  if r[1] ~= ARGV[i + 1] or r[6] == 's' or r[6] == 'z' then
    out[#out + 1] = '-1'
  else
    local last, mine = tonumber(r[2]), tonumber(ARGV[i + 2])
    if mine >= last + 1000 then
      last = mine
      redis.call('HSET', key, 'last', str(last))
      redis.call('ZADD', P .. ':active', math.min(last + tonumber(r[4]), tonumber(r[3]) + tonumber(r[5])), ARGV[i])
    end
    if ARGV[i + 3] == '0' then
      redis.call('HDEL', key, 'l:' .. node)
    else
      redis.call('HSET', key, 'l:' .. node, ARGV[i + 3])
    end
    out[#out + 1] = str(last)
  end
end
return out
"#;

/// Grows this replica's in-flight lease on a session to ARGV[4] slots if the others' leases
/// leave room under ARGV[5]. KEYS[1] `P:s:<id>`; ARGV: prefix, node, gen, slots, max. Returns 1
/// when granted, -1 when the session is being suspended or is suspended.
pub const LEASE: &str = r#"
local r = redis.call('HMGET', KEYS[1], 'gen', 'st')
if r[1] ~= ARGV[3] then return 0 end
if r[2] == 's' or r[2] == 'z' then return -1 end
redis.call('ZADD', ARGV[1] .. ':nodes', now(), ARGV[2])
if leased_by_others(ARGV[1], KEYS[1], ARGV[2], now()) + tonumber(ARGV[4]) > tonumber(ARGV[5]) then return 0 end
local mine = tonumber(redis.call('HGET', KEYS[1], 'l:' .. ARGV[2]) or '0')
if tonumber(ARGV[4]) > mine then redis.call('HSET', KEYS[1], 'l:' .. ARGV[2], ARGV[4]) end
return 1
"#;

/// Sessions whose end is due, for the one replica holding the sweeper lock. ARGV: prefix, node,
/// lock ms, at most. Returns `{'1', (id, gen, backend, state, runtime) quintuples…}` (gen ''
/// when the record is gone) — live sessions whose idle or lifetime end is due (a session being
/// placed only once its placement is overdue), suspensions cut short, and suspended sessions
/// past their retention — or `{'0'}` when another replica sweeps.
pub const DUE: &str = r#"
local P = ARGV[1]
if not redis.call('SET', P .. ':sweeper', ARGV[2], 'NX', 'PX', ARGV[3]) then
  if redis.call('GET', P .. ':sweeper') ~= ARGV[2] then return {'0'} end
  redis.call('PEXPIRE', P .. ':sweeper', ARGV[3])
end
local out = {'1'}
local t = now()
for _, set in ipairs({':active', ':suspended'}) do
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. set, '-inf', t, 'LIMIT', 0, tonumber(ARGV[4]))) do
    local r = redis.call('HMGET', P .. ':s:' .. id, 'gen', 'be', 'st', 'rt', 'dl')
    if set == ':active' and r[3] == 'z' then
      redis.call('ZREM', P .. ':active', id)
    elseif r[3] == 'p' and tonumber(r[5]) > t then
      -- Being placed is not being idle: looked at again when its placement is overdue.
      redis.call('ZADD', P .. ':active', tonumber(r[5]), id)
    else
      out[#out + 1] = id
      out[#out + 1] = r[1] or ''
      out[#out + 1] = r[2] or ''
      out[#out + 1] = r[3] or ''
      out[#out + 1] = r[4] or ''
    end
  end
end
return out
"#;

/// Routes an `Mcp-Session-Id` to a session unless another session owns it; keeps at most
/// ARGV[5] per session (the oldest forgotten). KEYS[1] `P:s:<id>`; ARGV: prefix, id, gen, MCP
/// id, max. Returns 1 when the id routes to the session now.
pub const LEARN_MCP: &str = r#"
local P, id = ARGV[1], ARGV[2]
local r = redis.call('HMGET', KEYS[1], 'gen', 'mcp')
if r[1] ~= ARGV[3] then return 0 end
local k = P .. ':mcp:' .. ARGV[4]
local owner = redis.call('GET', k)
if owner == id then return 1 end
if owner then return 0 end
redis.call('SET', k, id)
local ids = {}
for m in string.gmatch(r[2] or '', '%S+') do ids[#ids + 1] = m end
ids[#ids + 1] = ARGV[4]
while #ids > tonumber(ARGV[5]) do
  local old = table.remove(ids, 1)
  if redis.call('GET', P .. ':mcp:' .. old) == id then redis.call('DEL', P .. ':mcp:' .. old) end
end
redis.call('HSET', KEYS[1], 'mcp', table.concat(ids, ' '))
return 1
"#;

/// Writes back a live session a replica still knows after Redis lost its data. KEYS[1]
/// `P:s:<id>`; ARGV: prefix, id, gen, runtime, principal, quota key, version, created, last,
/// idle ms, life ms, backend, slot ('' none), MCP ids, host ('' none). Returns 1 when
/// restored, 0 when the record exists already.
pub const RESTORE: &str = r#"
local P, id = ARGV[1], ARGV[2]
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'gen', ARGV[3], 'rt', ARGV[4], 'pr', ARGV[5], 'qk', ARGV[6],
  'ver', ARGV[7], 'st', 'l', 'placer', '', 'dl', '0', 'cr', ARGV[8], 'last', ARGV[9],
  'idle', ARGV[10], 'life', ARGV[11], 'be', ARGV[12], 'mcp', ARGV[14])
if ARGV[13] ~= '' then
  redis.call('HSET', KEYS[1], 'slot', ARGV[13])
  redis.call('HINCRBY', P .. ':slots', ARGV[13], 1)
end
if ARGV[15] ~= '' then
  redis.call('HSET', KEYS[1], 'host', ARGV[15])
  redis.call('SADD', P .. ':hs:' .. ARGV[15], id)
end
redis.call('ZADD', P .. ':active', math.min(tonumber(ARGV[9]) + tonumber(ARGV[10]), tonumber(ARGV[8]) + tonumber(ARGV[11])), id)
redis.call('SADD', P .. ':q:' .. ARGV[6], id)
for m in string.gmatch(ARGV[14], '%S+') do redis.call('SET', P .. ':mcp:' .. m, id, 'NX') end
return 1
"#;

/// Every session record (for `/sessions`), suspended ones too, at most ARGV[2]. Returns per
/// session: id, runtime, version, principal, state, created, last, backend, host, snapshot
/// bytes, suspended at, the replica that placed it.
pub const LIST: &str = r#"
local P = ARGV[1]
local out = {}
for _, set in ipairs({':active', ':suspended'}) do
  for _, id in ipairs(redis.call('ZRANGE', P .. set, 0, tonumber(ARGV[2]) - 1)) do
    local r = redis.call('HMGET', P .. ':s:' .. id, 'rt', 'ver', 'pr', 'st', 'cr', 'last', 'be', 'host', 'sb', 'sd', 'placer')
    if r[1] then
      out[#out + 1] = id
      for i = 1, 11 do out[#out + 1] = r[i] or '' end
    end
  end
end
return out
"#;

/// The scripts with the prelude, ready to load.
pub fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{PRELUDE}{body}"))
}
