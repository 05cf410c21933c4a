-- threadlock: shared helpers, prepended to every script of this directory by redis.py.
--
-- KEYS (every script, all in one hash slot through the tag {<digest of the key>}):
--   1 lease  hash  k=user key, t=sha1(token), f=fence, o=owner, a=acquired µs, e=expires µs,
--                  ttl=ms, c=1 once claimed (see grant_next); PEXPIREAT = e
--   2 fence  string, the last fence handed out; expires FENCE_KEEP_MS after the lease would
--   3 queue  zset   waiter id -> arrival order (FIFO)
--   4 beat   zset   waiter id -> heartbeat deadline µs (a waiter past it is dead: skipped)
--   5 meta   hash   waiter id -> "<ttl ms> <grace ms> <owner>", and field "k" -> the user key
-- ARGV (every script): 1 notification channel, 2 "s" for SPUBLISH (Cluster) else PUBLISH
-- A waiter id is sha1(token): the token itself never rests in Redis.
-- Numbers above 1e14 are never concatenated with `..` (Lua 5.1 prints them as %.14g).

local K_LEASE, K_FENCE, K_QUEUE, K_BEAT, K_META = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local CHANNEL, SHARDED = ARGV[1], ARGV[2] == 's'
-- After a key's last use its last fence is kept this long; once it is gone the server clock
-- alone (in µs) is already this far past it, so fences keep increasing even across a
-- restart that lost everything, unless the clock went back by more than this.
local FENCE_KEEP_MS = 3600000

local function fmt(n)
  return string.format('%d', n)
end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function expire_at(key, at_us)
  redis.call('PEXPIREAT', key, math.floor(at_us / 1000) + 1)
end

-- Drop every waiter whose heartbeat deadline has passed.
local function purge(now)
  local dead = redis.call('ZRANGEBYSCORE', K_BEAT, '-inf', now)
  for _, id in ipairs(dead) do
    redis.call('ZREM', K_QUEUE, id)
    redis.call('ZREM', K_BEAT, id)
    redis.call('HDEL', K_META, id)
  end
end

-- The queue keys live exactly as long as the latest heartbeat deadline; no waiter, no keys.
local function queue_ttl()
  local last = redis.call('ZRANGE', K_BEAT, -1, -1, 'WITHSCORES')
  if #last == 0 then
    redis.call('DEL', K_QUEUE, K_BEAT, K_META)
    return
  end
  local at = tonumber(last[2])
  expire_at(K_QUEUE, at)
  expire_at(K_BEAT, at)
  expire_at(K_META, at)
end

local function leave_queue(id)
  redis.call('ZREM', K_QUEUE, id)
  redis.call('ZREM', K_BEAT, id)
  redis.call('HDEL', K_META, id)
end

-- A lease for waiter `id`. With `claim_ms`, it is a hand-off the waiter has not claimed yet:
-- it lives only min(ttl, claim_ms) until the waiter's task claims it (claim() below), so a
-- waiter that died just before the grant stalls the key for at most its grace, not its ttl.
local function new_lease(now, id, ttl_ms, owner, key, claim_ms)
  local last = tonumber(redis.call('GET', K_FENCE) or '0')
  local fence = math.max(last + 1, now)
  local claimed = '1'
  local life_ms = ttl_ms
  if claim_ms then
    claimed = '0'
    life_ms = math.min(ttl_ms, claim_ms)
  end
  local expires = now + life_ms * 1000
  redis.call('HSET', K_LEASE, 'k', key, 't', id, 'f', fmt(fence), 'o', owner,
    'a', fmt(now), 'e', fmt(expires), 'ttl', fmt(ttl_ms), 'c', claimed)
  expire_at(K_LEASE, expires)
  redis.call('SET', K_FENCE, fmt(fence), 'PX', fmt(ttl_ms + FENCE_KEEP_MS))
  return fence, expires
end

-- Wake the granted waiter: the message is its id (sha1 of its token).
local function notify(id)
  if SHARDED then
    redis.call('SPUBLISH', CHANNEL, id)
  else
    redis.call('PUBLISH', CHANNEL, id)
  end
end

-- The key is free: make the first live waiter the holder and notify it (direct hand-off).
-- Returns true if someone was granted.
local function grant_next(now)
  purge(now)
  while true do
    local head = redis.call('ZRANGE', K_QUEUE, 0, 0)
    if #head == 0 then
      redis.call('DEL', K_QUEUE, K_BEAT, K_META)
      return false
    end
    local id = head[1]
    local meta = redis.call('HGET', K_META, id)
    local key = redis.call('HGET', K_META, 'k')
    leave_queue(id)
    if meta and key then
      local ttl_ms, grace_ms, owner = string.match(meta, '^(%d+) (%d+) (.*)$')
      new_lease(now, id, tonumber(ttl_ms), owner, key, tonumber(grace_ms))
      queue_ttl()
      notify(id)
      return true
    end
  end
end

-- The live lease as {t, f, o, a, e, k, ttl, c}, or nil. An expired holder is retired first,
-- handing the key to the head waiter, so expiry is exact, by the server clock.
local function current(now)
  local lease = redis.call('HMGET', K_LEASE, 't', 'f', 'o', 'a', 'e', 'k', 'ttl', 'c')
  if lease[1] and tonumber(lease[5]) > now then
    return lease
  end
  if lease[1] then
    redis.call('DEL', K_LEASE)
  end
  if redis.call('EXISTS', K_QUEUE) == 1 and grant_next(now) then
    return redis.call('HMGET', K_LEASE, 't', 'f', 'o', 'a', 'e', 'k', 'ttl', 'c')
  end
  return nil
end

local function live_waiters(now)
  purge(now)
  return redis.call('ZCARD', K_QUEUE)
end

-- The waiter a key was handed to claims it: from now on it lives its full ttl.
local function claim(now, lease)
  if lease[8] == '1' then
    return tonumber(lease[5])
  end
  local expires = now + tonumber(lease[7]) * 1000
  redis.call('HSET', K_LEASE, 'e', fmt(expires), 'c', '1')
  expire_at(K_LEASE, expires)
  redis.call('PEXPIRE', K_FENCE, fmt(tonumber(lease[7]) + FENCE_KEEP_MS))
  return expires
end
