-- threadlock: shared helpers, inserted by scripts.py where a script says `-- @common` (after
-- its fast path, if it has one). The locals of _head.lua are in scope.

if not NOW then
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- The wake-up channel of this lock (not a key): the lease key with 'lease' -> 'wake'.
local CHANNEL = string.sub(K_LEASE, 1, -6) .. 'wake'

local function fmt(n)
  return string.format('%d', n)
end

-- PXAT for an end in µs: the key outlives it by less than a millisecond.
local function pxat(at_us)
  return math.floor(at_us / 1000) + 1
end

local function expire_at(key, at_us)
  redis.call('PEXPIREAT', key, pxat(at_us))
end

-- The next fence: max(last + 1, now), kept in K_FENCE for px ms. One call unless the clock
-- has not moved past the last fence (same µs, or a clock step back).
local function next_fence(now, px)
  local old = redis.call('SET', K_FENCE, fmt(now), 'PX', px, 'GET')
  if old and tonumber(old) >= now then
    local fence = tonumber(old) + 1
    redis.call('SET', K_FENCE, fmt(fence), 'PX', px)
    return fence
  end
  return now
end

-- A lease, as a table: t, w ('1': someone may be queued), fence, acquired, expires,
-- claim_by (0: claimed), owner, key.
local function decode(value)
  local t, w, f, a, e, u, n, rest = string.match(value,
    '^(%x+) ([01]) (%d+) (%d+) (%d+) (%d+) (%d+) (.*)$')
  n = tonumber(n)
  return {t = t, w = w, fence = tonumber(f), acquired = tonumber(a), expires = tonumber(e),
    claim_by = tonumber(u), owner = string.sub(rest, 1, n), key = string.sub(rest, n + 1)}
end

-- When the lease ends unless something happens (its claim deadline, if unclaimed).
local function ends_at(lease)
  if lease.claim_by > 0 then
    return math.min(lease.expires, lease.claim_by)
  end
  return lease.expires
end

-- Write the lease; its key expires when the lease ends.
local function store(lease)
  redis.call('SET', K_LEASE, lease.t .. ' ' .. lease.w .. ' ' .. fmt(lease.fence) .. ' '
    .. fmt(lease.acquired) .. ' ' .. fmt(lease.expires) .. ' ' .. fmt(lease.claim_by) .. ' '
    .. #lease.owner .. ' ' .. lease.owner .. lease.key, 'PXAT', pxat(ends_at(lease)))
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

-- After entries left: an empty queue leaves no keys. (A shorter queue needs no new TTL: the
-- one set when the latest deadline was written still covers every entry left.) Returns
-- whether anyone is left.
local function queue_cleanup()
  if redis.call('ZCARD', K_QUEUE) == 0 then
    redis.call('DEL', K_QUEUE, K_BEAT, K_META)
    return false
  end
  return true
end

local function leave_queue(id)
  redis.call('ZREM', K_QUEUE, id)
  redis.call('ZREM', K_BEAT, id)
  redis.call('HDEL', K_META, id)
end

-- A new lease for waiter `id`, living ttl_ms. With `claim_ms` it is a hand-off its waiter has
-- not claimed yet: it also ends at now + claim_ms unless claimed by then (by the waiter's
-- next acquire attempt, which the notification triggers), so a waiter that died just before
-- the grant stalls the key for at most its grace, not its ttl.
local function new_lease(now, id, ttl_ms, owner, key, claim_ms, queued)
  local lease = {t = id, w = queued and '1' or '0', fence = next_fence(now, ttl_ms + FENCE_KEEP_MS),
    acquired = now, expires = now + ttl_ms * 1000, claim_by = 0, owner = owner, key = key}
  if claim_ms then
    lease.claim_by = now + claim_ms * 1000
  end
  store(lease)
  return lease
end

-- Wake the granted waiter: "<id> <fence> <acquired µs> <expires µs>". The message only wakes
-- it; its next acquire attempt checks its token against the lease and claims the key.
-- `inbox` is the waiter's instance channel ('' for the key's own channel; sharded pub/sub
-- always uses the key's, which is in this slot).
local function notify(lease, inbox)
  local message = lease.t .. ' ' .. fmt(lease.fence) .. ' ' .. fmt(lease.acquired) .. ' '
    .. fmt(lease.expires)
  if SHARDED then
    redis.call('SPUBLISH', CHANNEL, message)
  elseif inbox ~= '' then
    redis.call('PUBLISH', inbox, message)
  else
    redis.call('PUBLISH', CHANNEL, message)
  end
end

-- The key is free: make the first live waiter the holder and notify it (direct hand-off).
-- Returns the new lease, or nil if nobody waits.
local function hand_to_head_waiter(now)
  purge(now)
  while true do
    local head = redis.call('ZRANGE', K_QUEUE, 0, 0)
    if #head == 0 then
      redis.call('DEL', K_QUEUE, K_BEAT, K_META)
      return nil
    end
    local id = head[1]
    local meta = redis.call('HMGET', K_META, id, 'k')
    leave_queue(id)
    if meta[1] and meta[2] then
      local ttl_ms, grace_ms, n, rest = string.match(meta[1], '^(%d+) (%d+) (%d+) (.*)$')
      n = tonumber(n)
      local queued = queue_cleanup()
      local lease = new_lease(now, id, tonumber(ttl_ms), string.sub(rest, n + 1), meta[2],
        tonumber(grace_ms), queued)
      notify(lease, string.sub(rest, 1, n))
      return lease
    end
  end
end

-- The live lease (a table, see decode), or nil. A lease is live while its key exists (it
-- expires when the lease ends, by the server clock); a free key with waiters is handed to
-- the head waiter first, so expiry is exact.
local function current(now)
  local value = redis.call('GET', K_LEASE)
  if value then
    return decode(value)
  end
  if redis.call('EXISTS', K_QUEUE) == 1 then
    return hand_to_head_waiter(now)
  end
  return nil
end

local function live_waiters(now)
  purge(now)
  return redis.call('ZCARD', K_QUEUE)
end

-- The waiter a key was handed to claims it: from now on it lives to its expiry (unchanged
-- by the claim). Returns the expiry (µs).
local function claim(lease)
  if lease.claim_by > 0 then
    lease.claim_by = 0
    store(lease)
  end
  return lease.expires
end

-- The newest entry of the run registry (the run id), or false.
local function newest_run()
  if not K_RUNS then
    return false
  end
  local entries = redis.call('HGETALL', K_RUNS)
  local newest, best = false, -1
  for i = 1, #entries, 2 do
    local order = tonumber(string.match(entries[i + 1], '^(%d+) ') or '-1')
    if order > best then
      best = order
      newest = entries[i]
    end
  end
  return newest
end
