-- inbox_finish: the release boundary. ARGV 2 token, 3 limit. KEYS 1-5 (the lock), 6 pend,
-- 7 msg. If the lease is not the caller's: -1. If nothing is pending: the lease is released
-- (handed to the head waiter, if any, as release.lua does) and 1 is returned. Otherwise the
-- lease stays and the next batch is returned (inbox_batch). One script, so a post lands
-- either before it (and is in the batch) or after the release (and finds the key free).

-- @common

-- @inbox
local value = redis.call('GET', K_LEASE)
if not value or string.sub(value, 1, 40) ~= redis.sha1hex(ARGV[2]) then
  return -1
end
if redis.call('ZCARD', KEYS[6]) > 0 then
  return inbox_batch(KEYS[6], KEYS[7], tonumber(ARGV[3]), NOW)
end
redis.call('DEL', K_LEASE)
if string.byte(value, 42) ~= 48 then  -- not '0': someone may be queued
  hand_to_head_waiter(NOW)
end
return 1
