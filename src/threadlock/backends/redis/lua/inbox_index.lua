-- inbox_index: KEYS 1 the prefix's index (<prefix>:inbox-keys:{<prefix>}, see _inbox.lua),
-- 2 its keep times (<prefix>:inbox-until:{<prefix>}, the same slot). ARGV 1 the user key,
-- 2 a floor (0, or the stamp a refused post was given back), 3 how long (ms) the index
-- keeps this key's entry after this stamp. Gives the key a new stamp, above its last one,
-- the floor and the server clock (µs), and returns it. The entry's keep time is the latest
-- any post of the key asked for (each post's own entry_ttl), and the entries dropped here
-- are those past THEIR keep time (at most 100 a call), so a post with a short entry_ttl
-- drops nothing a longer-lived inbox still needs; the two keys expire as a whole after the
-- longest keep time asked. Run BEFORE inbox_post, never with it: the index is in a slot of
-- its own, and a post that reaches its key's slot has always been indexed first, so a crash
-- between the two leaves at worst an entry with nothing pending, never a message unindexed.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local keep_ms = tonumber(ARGV[3])
local past = string.format('(%d', now)
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', past, 'LIMIT', 0, 100)
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
local stamp = math.max(now, tonumber(ARGV[2]) + 1)
local last = redis.call('ZSCORE', KEYS[1], ARGV[1])
if last then
  stamp = math.max(stamp, tonumber(last) + 1)
end
redis.call('ZADD', KEYS[1], string.format('%d', stamp), ARGV[1])
local until_us = now + keep_ms * 1000
local kept = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not kept or tonumber(kept) < until_us then
  redis.call('ZADD', KEYS[2], string.format('%d', until_us), ARGV[1])
end
for _, key in ipairs(KEYS) do
  if redis.call('PTTL', key) < keep_ms then
    redis.call('PEXPIRE', key, keep_ms)
  end
end
return string.format('%d', stamp)
