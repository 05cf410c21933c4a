-- extend: ARGV 3 token, 4 ttl ms. Keeps the fence, sets the expiry to now + ttl.
-- Returns {fence, acquired µs, expires µs}, or 0 if the lease had expired or was taken.
local now = now_us()
local lease = current(now)
if not lease or lease[1] ~= redis.sha1hex(ARGV[3]) then
  return 0
end
local ttl_ms = tonumber(ARGV[4])
local expires = now + ttl_ms * 1000
redis.call('HSET', K_LEASE, 'e', fmt(expires), 'ttl', fmt(ttl_ms), 'c', '1')
expire_at(K_LEASE, expires)
redis.call('PEXPIRE', K_FENCE, fmt(ttl_ms + FENCE_KEEP_MS))
return {tonumber(lease[2]), tonumber(lease[4]), expires}
