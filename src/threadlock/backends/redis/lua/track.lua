-- track: record a run in the run registry of one lock. Standalone (no head, no lease).
-- KEYS 1 the runs hash, 2 its order (zset: run id -> order µs). ARGV 1 run id, 2 the record
-- (JSON, ids only), 3 the registry TTL ms.
-- Field run id -> "<order µs> <record>". The order is the server time of the first track of
-- that run id, made strictly increasing within the hash; tracking the same run id again
-- replaces the record and keeps its place. Every write drops the entries whose order is
-- older than the TTL and sets both keys to expire a TTL from now, so an entry outlives its
-- last write by at most the TTL and the hash never grows without bound. The order zset makes
-- this O(log n) plus the entries dropped: the hash is never read whole.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl_ms = tonumber(ARGV[3])
local oldest = now - ttl_ms * 1000
local order = redis.call('ZSCORE', KEYS[2], ARGV[1])
if order then
  order = tonumber(order)
end
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. string.format('%d', oldest))
for _, id in ipairs(stale) do
  if id ~= ARGV[1] then
    redis.call('HDEL', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
  end
end
if not order then
  order = now
  local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  if #last > 0 then
    order = math.max(now, tonumber(last[2]) + 1)
  end
end
local text = string.format('%d', order)
redis.call('HSET', KEYS[1], ARGV[1], text .. ' ' .. ARGV[2])
redis.call('ZADD', KEYS[2], text, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl_ms)
redis.call('PEXPIRE', KEYS[2], ttl_ms)
return 1
