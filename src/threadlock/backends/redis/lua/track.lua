-- track: record a run in the run registry of one lock. Standalone (no head, no lease).
-- KEYS 1 the runs hash. ARGV 1 run id, 2 the record (JSON, ids only), 3 the registry TTL ms.
-- Field run id -> "<order µs> <record>". The order is the server time of the first track of
-- that run id, made strictly increasing within the hash; tracking the same run id again
-- replaces the record and keeps its place. Every write drops the entries whose order is
-- older than the TTL and sets the hash to expire a TTL from now, so an entry outlives its
-- last write by at most the TTL and the hash never grows without bound.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl_ms = tonumber(ARGV[3])
local oldest = now - ttl_ms * 1000
local entries = redis.call('HGETALL', KEYS[1])
local order = nil
local last = 0
for i = 1, #entries, 2 do
  local o = tonumber(string.match(entries[i + 1], '^(%d+) ') or '0')
  if entries[i] == ARGV[1] then
    order = o
  elseif o < oldest then
    redis.call('HDEL', KEYS[1], entries[i])
  elseif o > last then
    last = o
  end
end
if not order then
  order = math.max(now, last + 1)
end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', order) .. ' ' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl_ms)
return 1
