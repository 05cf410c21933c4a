-- extend: ARGV 2 token, 3 ttl ms. KEYS 1-4. Keeps the fence, sets the expiry to now + ttl
-- (which also claims a hand-off). Returns {fence, acquired µs, expires µs}, or 0 if the
-- lease had expired or was taken.

local lease = current()
if not lease or lease.t ~= redis.sha1hex(ARGV[2]) then
  return 0
end
lease.expires = NOW + tonumber(ARGV[3]) * 1000
lease.claim_by = 0
store(lease)
return {lease.fence, lease.acquired, lease.expires}
