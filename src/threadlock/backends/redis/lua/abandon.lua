-- abandon: ARGV 2 token. KEYS 1-7 (7: the tombstone of the acquire). A waiter gives up
-- (timeout, cancellation): if the key was handed to it meanwhile, or a reply of a fast
-- acquire that did take it was lost, release it to the next waiter; else leave the queue.
-- The tombstone makes any attempt of this acquire that arrives later change nothing.
-- Idempotent. Returns 1 if it held the key, else 0.

if K_GONE then
  redis.call('SET', K_GONE, '1', 'PX', 60000)
end
local id = redis.sha1hex(ARGV[2])
local lease = current()
if lease and lease.t == id then
  if not hand_to_head_waiter(lease.fence) then
    free(lease.fence)
  end
  return 1
end
if redis.call('EXISTS', K_QUEUE) == 1 then
  leave_queue(id)
  queue_cleanup()
end
return 0
