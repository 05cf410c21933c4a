-- threadlock: the shared part of every full lock script (acquire, release, extend, abandon,
-- inspect, advance). scripts.py sends each as this file followed by the script's own file:
-- one script per operation, loaded once. The fast paths (acquire_fast.lua, release_fast.lua)
-- and track.lua stand alone.
--
-- KEYS (all in one hash slot through the tag {<digest of the user key>}); each index has one
-- meaning, and a script is given the first 4, 6 or 8:
--   1 lease  string the lease, a free-key marker, or nothing:
--                   "<t> <w> <fence> <acquired µs> <expires µs> <claim by µs> <#owner> <owner><key>"
--                   t = sha1(token) (40 hex digits, first, so a release compares a prefix);
--                   w = '1' if someone may be queued (set when a waiter joins while this
--                   lease lives; '0' means nobody is), so a release needs no queue lookup;
--                   claim by = 0 once claimed, else the deadline of an unclaimed hand-off.
--                   The lease lives until its end (expires, or claim by if unclaimed) by the
--                   server clock; the key outlives it by KEEP_MS, and never expires before
--                   the queue (so a key without a lease key has no queue).
--                   "F <fence>": free, nobody queued, the last fence; for KEEP_MS.
--   2 queue  zset   waiter id -> arrival order (FIFO)
--   3 beat   zset   waiter id -> heartbeat deadline µs (a waiter past it is dead: skipped)
--   4 meta   hash   waiter id -> "<ttl ms> <grace ms> <#inbox> <inbox><owner>" (inbox: the
--                   waiter's instance channel, or '' for the key's own), "k" -> the user key
--   5 runs   hash   run id -> "<order µs> <record JSON>" (the run registry; see track.lua)
--   6 chain  string the chain head (a response id)
--   7 gone   string the tombstone of one acquire ("<base>:gone:<attempt>", 60 s; the
--                   attempt is the backend instance's id and its acquire counter): abandon
--                   writes it, so an attempt of that acquire that reaches Redis after it
--                   (cancelled in flight, its bytes still on the wire) changes nothing;
--                   inspect is given one that is never written
--   8 order  zset   run id -> order µs: the entries of runs in order, so the newest run is
--                   one ZRANGE and pruning one ZRANGEBYSCORE, never a read of the whole hash
--                   (written with runs by track.lua / untrack.lua, with the same TTL)
-- ARGV[1] (every full lock script): 's' to notify with SPUBLISH (Cluster), else 'p'
-- (PUBLISH), followed, for acquire, by the mode letter.
-- A waiter id is sha1(token): the token itself never rests in Redis.
-- Numbers above 1e14 are never concatenated with `..` (Lua 5.1 prints them as %.14g).
local K_LEASE, K_QUEUE, K_BEAT, K_META = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_RUNS, K_CHAIN, K_GONE, K_ORDER = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local SHARDED = string.byte(ARGV[1], 1) == 115  -- 's'
-- After a lease ends its fence is kept this long (in the lease key); once it is gone the
-- server clock alone (in µs) is already this far past it, so fences keep increasing even
-- across a restart that lost everything, unless the clock went back by more than this.
local KEEP_MS = 3600000
local NOW  -- the server clock in µs
do
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

-- The next fence after `last` (false: none known): max(last + 1, now).
local function next_fence(last)
  if last and last >= NOW then
    return last + 1
  end
  return NOW
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

-- Write the lease; its key lives KEEP_MS past the lease's end, and at least as long as the
-- queue when someone may be queued.
local function store(lease)
  local at = pxat(ends_at(lease)) + KEEP_MS
  if lease.w == '1' then
    local left = redis.call('PTTL', K_QUEUE)
    if left > 0 then
      at = math.max(at, math.floor(NOW / 1000) + left + 1000)  -- a second to spare
    end
  end
  redis.call('SET', K_LEASE, lease.t .. ' ' .. lease.w .. ' ' .. fmt(lease.fence) .. ' '
    .. fmt(lease.acquired) .. ' ' .. fmt(lease.expires) .. ' ' .. fmt(lease.claim_by) .. ' '
    .. #lease.owner .. ' ' .. lease.owner .. lease.key, 'PXAT', at)
end

-- The key is free and nobody is queued: keep only its last fence, for KEEP_MS.
local function free(fence)
  redis.call('SET', K_LEASE, 'F ' .. fmt(fence), 'PX', KEEP_MS)
end

-- Drop every waiter whose heartbeat deadline has passed.
local function purge()
  local dead = redis.call('ZRANGEBYSCORE', K_BEAT, '-inf', NOW)
  for _, id in ipairs(dead) do
    redis.call('ZREM', K_QUEUE, id)
    redis.call('ZREM', K_BEAT, id)
    redis.call('HDEL', K_META, id)
  end
end

-- The queue keys live exactly as long as the latest heartbeat deadline; no waiter, no keys.
-- Returns that deadline (µs), or nil.
local function queue_ttl()
  local last = redis.call('ZRANGE', K_BEAT, -1, -1, 'WITHSCORES')
  if #last == 0 then
    redis.call('DEL', K_QUEUE, K_BEAT, K_META)
    return nil
  end
  local at = tonumber(last[2])
  expire_at(K_QUEUE, at)
  expire_at(K_BEAT, at)
  expire_at(K_META, at)
  return at
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

-- A new lease for waiter `id`, living ttl_ms, with a fence after `last`. With `claim_ms` it
-- is a hand-off its waiter has not claimed yet: it also ends at now + claim_ms unless
-- claimed by then (by the waiter's next acquire attempt, which the notification triggers),
-- so a waiter that died just before the grant stalls the key for at most its grace, not its
-- ttl.
local function new_lease(id, ttl_ms, owner, key, claim_ms, queued, last)
  local lease = {t = id, w = queued and '1' or '0', fence = next_fence(last),
    acquired = NOW, expires = NOW + ttl_ms * 1000, claim_by = 0, owner = owner, key = key}
  if claim_ms then
    lease.claim_by = NOW + claim_ms * 1000
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

-- The key is free (its last fence `last`): make the first live waiter the holder and notify
-- it (direct hand-off). Returns the new lease, or nil if nobody waits (the queue keys are
-- then gone; the caller writes the lease key).
local function hand_to_head_waiter(last)
  purge()
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
      local lease = new_lease(id, tonumber(ttl_ms), string.sub(rest, n + 1), meta[2],
        tonumber(grace_ms), queued, last)
      notify(lease, string.sub(rest, 1, n))
      return lease
    end
  end
end

-- The live lease (a table, see decode) or nil, and the last fence (false if none is known).
-- A lease is live until its end by the server clock; a free key with waiters is handed to
-- the head waiter first, so expiry is exact.
local function current()
  local value = redis.call('GET', K_LEASE)
  local last = false
  if value then
    if string.byte(value, 1) == 70 then  -- 'F <fence>': free, nobody queued
      return nil, tonumber(string.sub(value, 3))
    end
    local lease = decode(value)
    if ends_at(lease) > NOW then
      return lease, lease.fence
    end
    last = lease.fence
    if lease.w == '0' then  -- ended, nobody queued
      return nil, last
    end
  end
  if redis.call('EXISTS', K_QUEUE) == 1 then
    local granted = hand_to_head_waiter(last)
    if granted then
      return granted, granted.fence
    end
  end
  if value then
    free(last)  -- an ended lease whose waiters are gone: the fast paths take it again
  end
  return nil, last
end

-- Release `lease` (the caller's, live): to the head waiter if one is live (returns its id),
-- else the key is free with its last fence (returns 1). release.lua and inbox_finish.lua.
local function release_lease(lease)
  local granted = hand_to_head_waiter(lease.fence)
  if granted then
    return granted.t
  end
  free(lease.fence)
  return 1
end

local function live_waiters()
  purge()
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

-- The newest entry of the run registry (the run id), or false: the last of its order,
-- O(log n) whatever the number of entries.
local function newest_run()
  if not K_ORDER then
    return false
  end
  local newest = redis.call('ZRANGE', K_ORDER, -1, -1)
  return newest[1] or false
end
