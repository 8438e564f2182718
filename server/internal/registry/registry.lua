-- The cluster registry's decisions (see redis.go), run atomically by
-- Redis: one script, one operation per call, the rules of Memory
-- (memory.go) on data every replica shares.
--
-- KEYS: 1 ids (hash ID -> entry, JSON), 2 leases (zset ID -> lease end),
-- 3 reservations (zset ID -> expiry), 4 charged (hash address group ->
-- entries charged to it), 5 epoch (string, Unix seconds), 6 sessions
-- (hash ID -> the sessions view's row, JSON).
-- ARGV: 1 operation, 2 now (Unix ms; "": Redis's clock, as replicas
-- send it, so that leases and reservations do not depend on each
-- replica's clock; tests send theirs), 3 grace (ms; <= 0: none), 4
-- per-address limit (<= 0: none), 5 reservations cap (<= 0: none), 6
-- lease (ms), 7 this replica (its advertise URL), 8 events channel, then
-- the operation's own.
--
-- An entry: o owner replica, c connection (the fence), l lease end (ms),
-- ts/tn the holder's tenure (since, nonce), is when its token was signed
-- (Unix s), p proven, cf confirmed, g the holder's address group; all
-- absent while only reserved. r, when present, is the reservation: ts/tn
-- tenure, is, g group, u expiry (ms).
local K_IDS, K_LEASES, K_RES, K_CHARGED, K_EPOCH, K_SESS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local op = ARGV[1]
local now, grace = tonumber(ARGV[2]), tonumber(ARGV[3])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local perAddr, maxRes = tonumber(ARGV[4]), tonumber(ARGV[5])
local leaseMs, self, events = tonumber(ARGV[6]), ARGV[7], ARGV[8]

-- epoch is when Redis began to remember every tenure: set by the first
-- script to run on an empty Redis, so a Redis that lost its data has a
-- new epoch, and tokens issued before it may name tenures it forgot.
local function epoch()
  local e = redis.call('GET', K_EPOCH)
  if not e then
    e = math.floor(now / 1000)
    redis.call('SET', K_EPOCH, e)
  end
  return tonumber(e)
end

local function get(id)
  local v = redis.call('HGET', K_IDS, id)
  if v then return cjson.decode(v) end
  return nil
end

local function put(id, e) redis.call('HSET', K_IDS, id, cjson.encode(e)) end

local function charge(g, n)
  if redis.call('HINCRBY', K_CHARGED, g, n) <= 0 then redis.call('HDEL', K_CHARGED, g) end
end

local function charged(g) return tonumber(redis.call('HGET', K_CHARGED, g) or '0') end

-- chargedTo is the group e is charged to.
local function chargedTo(e)
  if e.o then return e.g end
  return e.r.g
end

-- popRes ends id's reservation; an entry no agent holds goes with it.
local function popRes(id)
  redis.call('ZREM', K_RES, id)
  local e = get(id)
  if not e or not e.r then return end
  local g = e.r.g
  e.r = nil
  if e.o then
    put(id, e)
  else
    redis.call('HDEL', K_IDS, id)
    charge(g, -1)
  end
end

-- reserve keeps id for tenure ts/tn, whose agent was in group g, until
-- u, dropping the oldest reservations while the cap is reached. The
-- caller charges it while no agent holds the ID and puts e.
local function reserve(id, e, ts, tn, g, u)
  while maxRes > 0 and redis.call('ZCARD', K_RES) >= maxRes do
    local oldest = redis.call('ZRANGE', K_RES, 0, 0)[1]
    if not oldest or oldest == id then break end
    popRes(oldest)
  end
  e.r = {ts = ts, tn = tn, g = g, u = u, is = e.is}
  redis.call('ZADD', K_RES, u, id)
end

-- dropHolder removes e's agent: a confirmed one leaves id reserved for
-- its tenure until u; an unconfirmed one leaves what it found.
local function dropHolder(id, e, u)
  redis.call('ZREM', K_LEASES, id)
  redis.call('HDEL', K_SESS, id)
  charge(e.g, -1)
  local confirmed = e.cf == 1
  e.o, e.c, e.l, e.p, e.cf = nil, nil, nil, nil, nil
  if confirmed and grace > 0 then
    if e.r then redis.call('ZREM', K_RES, id) end
    reserve(id, e, e.ts, e.tn, e.g, u)
  end
  e.ts, e.tn, e.g, e.is = nil, nil, nil, nil
  if not e.r then
    redis.call('HDEL', K_IDS, id)
    return
  end
  charge(e.r.g, 1)
  put(id, e)
end

-- fresh returns id's entry as of now: a holder whose lease ran out is
-- gone (its replica stopped refreshing: it died, or lost Redis), as if
-- it had dropped when its lease ended; an expired reservation ends.
local function fresh(id)
  local e = get(id)
  if e and e.o and e.l <= now then
    dropHolder(id, e, e.l + grace)
    e = get(id)
  end
  if e and e.r and e.r.u <= now then
    popRes(id)
    e = get(id)
  end
  return e
end

-- expire processes up to limit ended leases and reservations.
local function expire(limit)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', now, 'LIMIT', 0, limit)) do
    local e = get(id)
    if e and e.o then
      dropHolder(id, e, e.l + grace)
    else
      redis.call('ZREM', K_LEASES, id)
    end
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_RES, '-inf', now, 'LIMIT', 0, limit)) do
    popRes(id)
  end
end

-- endedBefore reports whether a tenure whose latest token was signed at
-- iss (Unix s) had surely ended, its reservation included, before a
-- tenure begun at ts (see endedBefore in memory.go). 60 is
-- TokenRefresh in seconds. An entry written before `is` existed counts
-- as never ended.
local function endedBefore(iss, ts)
  if not iss then return false end
  return iss + 60 + math.floor(math.max(grace, 0) / 1000) < ts
end

-- yields reports whether claim c takes the ID from e's holder (see
-- entry.yields in memory.go). A reservation counts as proven.
local function yields(e, c, ep)
  if c.p ~= 1 then return false end
  local hs, hn, hp, hi
  if e.o then
    hs, hn, hp, hi = e.ts, e.tn, e.p == 1, e.is
  else
    hs, hn, hp, hi = e.r.ts, e.r.tn, true, e.r.is
  end
  if c.ts == hs and c.tn == hn then return true end
  if c.iss > ep then return false end
  if not hp then return true end
  -- Of two forgotten proven tenures the older wins only if it could
  -- still have held the ID when the younger began.
  if c.ts < hs then return not endedBefore(c.iss, hs) end
  if hs < c.ts then return endedBefore(hi, c.ts) end
  return false
end

-- take makes this replica's agent (conn, in group, claiming c) the
-- holder of id; e is uncharged already. A displaced confirmed agent
-- leaves a reservation, restored if the new one drops unconfirmed; a
-- confirmed new holder spends any.
local function take(id, e, conn, g, c, cf)
  if e.o and e.cf == 1 and grace > 0 and not e.r then
    reserve(id, e, e.ts, e.tn, e.g, now + grace)
  end
  if cf == 1 and e.r then
    redis.call('ZREM', K_RES, id)
    e.r = nil
  end
  local oldO, oldC = e.o, e.c
  e.o, e.c, e.l = self, conn, now + leaseMs
  e.ts, e.tn, e.p, e.cf, e.g = c.ts, c.tn, c.p, cf, g
  -- is: when the holder's token was signed (a fresh tenure: when it began)
  e.is = c.ts
  if c.p == 1 then e.is = c.iss end
  charge(g, 1)
  put(id, e)
  redis.call('ZADD', K_LEASES, e.l, id)
  redis.call('HDEL', K_SESS, id)
  if oldO and oldO ~= self then
    redis.call('PUBLISH', events, 'lost\t' .. oldO .. '\t' .. oldC .. '\t' .. id)
  end
  return oldO, oldC
end

local function claimAt(i)
  return {ts = tonumber(ARGV[i]), tn = tonumber(ARGV[i + 1]), p = tonumber(ARGV[i + 2]), iss = tonumber(ARGV[i + 3])}
end

local sweep = 100

if op == 'register' then
  -- id, conn, group, claim (ts, tn, proven, issued)
  local id, conn, g = ARGV[9], ARGV[10], ARGV[11]
  local c = claimAt(12)
  expire(sweep)
  local ep = epoch()
  local e = fresh(id)
  -- A retry of this very registration (its answer was lost as Redis
  -- failed over): it holds the ID already.
  if e and e.o == self and e.c == conn then return {'ok', '', ''} end
  if e and not yields(e, c, ep) then
    if e.o then return {'in_use'} end
    return {'reserved', tostring(e.r.u)}
  end
  local freed = ''
  if e then freed = chargedTo(e) end
  if perAddr > 0 and freed ~= g and charged(g) >= perAddr then return {'limit'} end
  if e then charge(freed, -1) else e = {} end
  local oldO, oldC = take(id, e, conn, g, c, 0)
  return {'ok', oldO or '', oldC or ''}
elseif op == 'confirm' then
  -- id, conn
  local id, conn = ARGV[9], ARGV[10]
  local e = fresh(id)
  if not e or e.o ~= self or e.c ~= conn then return 0 end
  e.cf = 1
  if e.r then
    redis.call('ZREM', K_RES, id)
    e.r = nil
  end
  put(id, e)
  return 1
elseif op == 'unregister' then
  -- id, conn
  local id, conn = ARGV[9], ARGV[10]
  expire(sweep)
  local e = fresh(id)
  if not e or e.o ~= self or e.c ~= conn then return 0 end
  dropHolder(id, e, now + grace)
  return 1
elseif op == 'release' then
  -- id, conn: the holder said goodbye; the ID is free at once, with no
  -- reservation of its own and none it took over.
  local id, conn = ARGV[9], ARGV[10]
  expire(sweep)
  local e = fresh(id)
  if not e or e.o ~= self or e.c ~= conn then return 0 end
  e.cf = nil
  if e.r then
    redis.call('ZREM', K_RES, id)
    e.r = nil
  end
  dropHolder(id, e, now)
  return 1
elseif op == 'refresh' then
  -- then per agent held here: id, conn, group, ts, tn, confirmed, issued.
  -- Extends the leases this replica holds; one it lost (Redis lost its
  -- data, or its lease ran out) it claims again as its agent would, with
  -- the agent's latest token. Returns the epoch, then the IDs lost.
  expire(10 * sweep)
  local ep = epoch()
  local out = {tostring(ep)}
  for i = 9, #ARGV, 7 do
    local id, conn, g = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    local cf = tonumber(ARGV[i + 5])
    local e = fresh(id)
    if e and e.o == self and e.c == conn then
      e.l = now + leaseMs
      if cf == 1 and e.cf ~= 1 then
        e.cf = 1
        if e.r then
          redis.call('ZREM', K_RES, id)
          e.r = nil
        end
      end
      put(id, e)
      redis.call('ZADD', K_LEASES, e.l, id)
    else
      local c = {ts = tonumber(ARGV[i + 3]), tn = tonumber(ARGV[i + 4]), p = cf, iss = tonumber(ARGV[i + 6])}
      -- Never from a holder of the same tenure: that is the same agent,
      -- reconnected elsewhere, and this replica's link is the stale one.
      local same = e and e.o and e.ts == c.ts and e.tn == c.tn
      if not e or (not same and yields(e, c, ep)) then
        if e then charge(chargedTo(e), -1) else e = {} end
        take(id, e, conn, g, c, cf)
      else
        table.insert(out, id)
      end
    end
  end
  return out
elseif op == 'owner' then
  -- id. Read only: the replica holding id and its connection token
  -- while its lease lasts; else nothing.
  local e = get(ARGV[9])
  if e and e.o and e.l > now then return {e.o, e.c} end
  return {}
elseif op == 'rows' then
  -- then per agent: id, conn, row. Writes each sessions view row only
  -- while its agent holds the ID, so that a row written as its agent
  -- leaves is not left behind.
  local n = 0
  for i = 9, #ARGV, 3 do
    local id, conn = ARGV[i], ARGV[i + 1]
    local e = get(id)
    if e and e.o == self and e.c == conn then
      redis.call('HSET', K_SESS, id, ARGV[i + 2])
      n = n + 1
    end
  end
  return n
end
return redis.error_reply('unknown registry operation ' .. tostring(op))
