-- inbox_take: KEYS 1 lease, 2 pend, 3 msg. ARGV 1 token, 2 limit. Returns -1 if the lease is
-- not the caller's, else the batch of _inbox.lua's inbox_batch. Removes nothing.
if not inbox_mine(KEYS[1], ARGV[1]) then
  return -1
end
return inbox_batch(KEYS[2], KEYS[3], tonumber(ARGV[2]), inbox_now())
