-- acquire: one attempt. ARGV 1 pub letter + mode letter, 2 token, 3 ttl ms, 4 owner,
-- 5 user key, 6 grace ms, 7 the channel to notify this waiter on ('' for the key's own).
-- KEYS 1-7 (6, the chain, is not used; 7 is the tombstone of this acquire). The first
-- attempt of an acquire is acquire_fast.lua; this one runs when that answered 0, and for
-- every attempt of a waiter. Modes:
--   't' (try):  take the key if free, else report busy (fail-fast; leaves nothing behind)
--   'w' (wait): take it if free (or if it was handed to us), else join the queue / renew
--               our heartbeat deadline to now + grace
--   'l' (last): take it if we can, else leave the queue (the waiter's timeout ran out)
-- Returns {1, fence, acquired µs, expires µs} or
--   {0, µs until the holder's lease ends, fence, owner, acquired µs, expires µs, waiters,
--    newest tracked run id or nil}, or {2} if this acquire was abandoned (tombstone).

if K_GONE and redis.call('EXISTS', K_GONE) == 1 then
  return {2}  -- its caller gave up before this attempt arrived: change nothing
end
local id = redis.sha1hex(ARGV[2])
local mode = string.sub(ARGV[1], 2, 2)
local lease, last = current()
if lease and lease.t == id then  -- handed to us while we waited: claim it
  return {1, lease.fence, lease.acquired, claim(lease)}
end
if not lease then
  -- Free and nobody queued (current() hands a free key with waiters to their head, and
  -- deletes a queue it finds empty).
  lease = new_lease(id, tonumber(ARGV[3]), ARGV[4], ARGV[5], nil, false, last)
  return {1, lease.fence, NOW, lease.expires}
end
if mode == 'w' then
  purge()
  if not redis.call('ZSCORE', K_QUEUE, id) then
    local order = NOW
    local tail = redis.call('ZRANGE', K_QUEUE, -1, -1, 'WITHSCORES')
    if #tail > 0 then
      order = math.max(order, tonumber(tail[2]) + 1)
    end
    redis.call('ZADD', K_QUEUE, order, id)
    local inbox = ARGV[7] or ''
    redis.call('HSET', K_META, id, ARGV[3] .. ' ' .. ARGV[6] .. ' ' .. #inbox .. ' ' .. inbox
      .. ARGV[4], 'k', ARGV[5])
  end
  redis.call('ZADD', K_BEAT, NOW + tonumber(ARGV[6]) * 1000, id)
  local queue_end = queue_ttl()
  if lease.w ~= '1' then  -- tell the holder's release that someone waits
    lease.w = '1'
    store(lease)  -- the lease key now also outlives the queue
  elseif queue_end and pxat(queue_end) > pxat(ends_at(lease)) + KEEP_MS then
    expire_at(K_LEASE, queue_end)  -- a grace longer than the key's life: keep it longer
  end
  -- A waiter only needs to know when to look again; the holder's details would be thrown
  -- away (they are for ThreadBusy), so they cost no calls here.
  return {0, ends_at(lease) - NOW, lease.fence, lease.owner, lease.acquired, lease.expires,
    0, false}
elseif mode == 'l' then
  leave_queue(id)
  queue_cleanup()
end
return {0, ends_at(lease) - NOW, lease.fence, lease.owner, lease.acquired, lease.expires,
  live_waiters(), newest_run()}
