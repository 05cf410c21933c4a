-- inbox_post: KEYS 1 pend, 2 msg, 3 seen, 4 seq, 5 dead, 6 stamp (see _inbox.lua). ARGV 1
-- message id, 2 stored payload, 3 max_pending, 4 entry_ttl ms, 5 this post's stamp (from
-- inbox_index.lua, which the caller ran first), 6 the user key. Returns 1 if stored, 0 if the
-- id was posted within entry_ttl (nothing stored), -1 if max_pending are pending (nothing
-- stored), or {-2, recorded stamp} if a post with a later stamp was resolved here first:
-- nothing changes, and the caller stamps again (above the recorded one) and retries. So the
-- stamp key always holds the latest stamp resolved here, and any post still in flight has a
-- later one (see inbox_unindex.lua for why that matters).
local now = inbox_now()
local id, ttl_ms, stamp = ARGV[1], tonumber(ARGV[4]), tonumber(ARGV[5])
local recorded = inbox_stamp(KEYS[6])
if recorded >= stamp then
  return {-2, inbox_fmt(recorded)}
end
redis.call('SET', KEYS[6], inbox_fmt(stamp) .. ' ' .. ARGV[6], 'PX', ttl_ms)
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
