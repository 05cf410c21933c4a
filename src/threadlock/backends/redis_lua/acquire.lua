-- acquire: one attempt; ARGV 3 token, 4 ttl ms, 5 owner, 6 user key, 7 mode, 8 grace ms
--   mode "try":  take the key if free, else report busy (fail-fast; leaves nothing behind)
--   mode "wait": take it if free (or if it was handed to us), else join the queue / renew
--                our heartbeat deadline to now + grace
--   mode "last": take it if we can, else leave the queue (the waiter's timeout ran out)
-- Returns {1, fence, acquired µs, expires µs} or
--         {0, holder's µs left, fence, owner, acquired µs, expires µs, waiters}.
local now = now_us()
local id = redis.sha1hex(ARGV[3])
local mode = ARGV[7]
local lease = current(now)
if lease and lease[1] == id then  -- handed to us while we waited: claim it
  return {1, tonumber(lease[2]), tonumber(lease[4]), claim(now, lease)}
end
if not lease then
  -- Free and nobody queued (current() hands a free key with waiters to their head).
  leave_queue(id)
  local fence, expires = new_lease(now, id, tonumber(ARGV[4]), ARGV[5], ARGV[6], nil)
  queue_ttl()
  return {1, fence, now, expires}
end
if mode == 'wait' then
  purge(now)
  if not redis.call('ZSCORE', K_QUEUE, id) then
    local order = now
    local tail = redis.call('ZRANGE', K_QUEUE, -1, -1, 'WITHSCORES')
    if #tail > 0 then
      order = math.max(order, tonumber(tail[2]) + 1)
    end
    redis.call('ZADD', K_QUEUE, order, id)
    redis.call('HSET', K_META, id, ARGV[4] .. ' ' .. ARGV[8] .. ' ' .. ARGV[5], 'k', ARGV[6])
  end
  redis.call('ZADD', K_BEAT, now + tonumber(ARGV[8]) * 1000, id)
  queue_ttl()
elseif mode == 'last' then
  leave_queue(id)
  queue_ttl()
end
local expires = tonumber(lease[5])
return {0, expires - now, tonumber(lease[2]), lease[3], tonumber(lease[4]), expires,
  live_waiters(now)}
