-- inspect: no ARGV beyond 1. KEYS 1-5. A free key with waiters is handed on first (as every
-- script does). Returns {user key, fence, owner, acquired µs, expires µs, live waiters,
-- newest tracked run id or nil}, or 0 if free.

local lease = current()
if not lease then
  return 0
end
return {lease.key, lease.fence, lease.owner, lease.acquired, lease.expires, live_waiters(),
  newest_run()}
