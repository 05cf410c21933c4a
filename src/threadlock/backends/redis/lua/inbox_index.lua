-- inbox_index: KEYS 1 the prefix's index (<prefix>:inbox-keys, see _inbox.lua). ARGV 1 the
-- user key, 2 a floor (0, or the stamp a refused post was given back), 3 how long (ms) the
-- index keeps an entry after its last stamp. Gives the key a new stamp, above its last one,
-- the floor and the server clock (µs), drops the entries older than the keep time, and
-- returns the stamp. Run BEFORE inbox_post, never with it: the index is in a slot of its
-- own, and a post that reaches its key's slot has always been indexed first, so a crash
-- between the two leaves at worst an entry with nothing pending, never a message unindexed.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local keep_ms = tonumber(ARGV[3])
local stamp = math.max(now, tonumber(ARGV[2]) + 1)
local last = redis.call('ZSCORE', KEYS[1], ARGV[1])
if last then
  stamp = math.max(stamp, tonumber(last) + 1)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('(%d', now - keep_ms * 1000))
redis.call('ZADD', KEYS[1], string.format('%d', stamp), ARGV[1])
redis.call('PEXPIRE', KEYS[1], keep_ms)
return string.format('%d', stamp)
