-- advance: compare-and-set a chain head under the lease. ARGV 2 token, 3 '1' if a head is
-- expected (else the chain must have none), 4 the expected head, 5 the new head, 6 the chain
-- TTL in ms. KEYS 1-6. Returns 1 if the head moved, 0 if the lease is not the caller's live
-- lease or the head is not the expected one.

local lease = current()
if not lease or lease.t ~= redis.sha1hex(ARGV[2]) then
  return 0
end
local head = redis.call('GET', K_CHAIN)
if ARGV[3] == '1' then
  if head ~= ARGV[4] then
    return 0
  end
elseif head then
  return 0
end
redis.call('SET', K_CHAIN, ARGV[5], 'PX', ARGV[6])
return 1
