-- extend: ARGV 2 token, 3 ttl ms. KEYS 1-5. Keeps the fence, sets the expiry to now + ttl
-- (which also claims a hand-off). Returns {fence, acquired µs, expires µs}, or 0 if the
-- lease had expired or was taken.

-- @common

local lease = current(NOW)
if not lease or lease.t ~= redis.sha1hex(ARGV[2]) then
  return 0
end
local ttl_ms = tonumber(ARGV[3])
lease.expires = NOW + ttl_ms * 1000
lease.claim_by = 0
store(lease)
redis.call('PEXPIRE', K_FENCE, ttl_ms + FENCE_KEEP_MS)
return {lease.fence, lease.acquired, lease.expires}
