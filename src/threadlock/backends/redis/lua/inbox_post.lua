-- inbox_post: KEYS 1 pend, 2 msg, 3 seen, 4 seq, 5 dead (see _inbox.lua). ARGV 1 message id,
-- 2 stored payload, 3 max_pending, 4 entry_ttl ms. Returns 1 if stored, 0 if the id was
-- posted within entry_ttl (nothing changes), -1 if max_pending are pending (nothing changes).
local now = inbox_now()
local id, ttl_ms = ARGV[1], tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', inbox_fmt(now - ttl_ms * 1000))
if redis.call('HEXISTS', KEYS[2], id) == 1 or redis.call('ZSCORE', KEYS[3], id) then
  return 0
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return -1
end
local seq = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[1], seq, id)
redis.call('HSET', KEYS[2], id, inbox_fmt(now) .. ' 0 ' .. ARGV[2])
redis.call('ZADD', KEYS[3], inbox_fmt(now), id)
inbox_keep(KEYS, ttl_ms)
return 1
