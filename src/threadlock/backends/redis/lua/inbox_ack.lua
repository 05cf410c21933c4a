-- inbox_ack: KEYS 1 lease, 2 pend, 3 msg, 4 seen, 5 seq, 6 dead, 7 stamp. ARGV 1 token, 2 entry_ttl
-- ms, 3... message ids. Removes the ids from the pending messages if the lease is the
-- caller's (1), else changes nothing (0). The ids stay in `seen` for deduplication.
if not inbox_mine(KEYS[1], ARGV[1]) then
  return 0
end
for i = 3, #ARGV do
  redis.call('ZREM', KEYS[2], ARGV[i])
  redis.call('HDEL', KEYS[3], ARGV[i])
end
inbox_keep({KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]}, tonumber(ARGV[2]))
return 1
