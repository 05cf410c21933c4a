-- abandon: ARGV 3 token. A waiter gives up (timeout, cancellation): if the key was handed to
-- it meanwhile, release it to the next waiter; else leave the queue. Idempotent.
-- Returns 1 if it held the key, else 0.
local now = now_us()
local id = redis.sha1hex(ARGV[3])
local lease = current(now)
if lease and lease[1] == id then
  redis.call('DEL', K_LEASE)
  grant_next(now)
  return 1
end
leave_queue(id)
queue_ttl()
return 0
