-- acquire_fast: the uncontended acquire, the prologue of acquire.lua (scripts.py runs this file
-- as a function before _lib.lua, so it costs none of the helpers). KEYS and ARGV are those of
-- acquire.lua; it uses KEYS 1 (lease) and 7 (this acquire's tombstone), ARGV 2 token, 3 ttl ms,
-- 4 owner, 5 user key.
-- It takes the key only when it is free and nobody waits: the lease key is absent (never
-- used, or unused for an hour; a queue never outlives the lease key, see _lib.lua), holds a
-- free-key marker "F <last fence>" (a marker means nobody is queued), or holds a lease that
-- has ended with its w flag '0' (nobody queued). Three calls: MGET, TIME, SET.
-- Returns {1, fence, acquired µs, expires µs}, or 0: "go on with acquire.lua" (a live lease,
-- a queue, a tombstone, anything unusual), which then decides with FIFO and hand-off intact.
-- Numbers above 1e14 are never concatenated with `..` (Lua 5.1 prints them as %.14g).
local got = redis.call('MGET', KEYS[1], KEYS[7] or KEYS[1])  -- 7: absent in tests only
if got[2] then
  return 0  -- abandoned: the rest of acquire.lua answers {2}
end
local value = got[1]
local last = false
if value then
  if string.byte(value, 1) == 70 then  -- 'F'
    last = tonumber(string.sub(value, 3))
  elseif string.byte(value, 42) ~= 48 then  -- w is not '0': someone may be queued
    return 0
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if value and not last then
  -- a lease with nobody queued: take it only if it has ended (expiry, or an unclaimed
  -- hand-off past its claim deadline)
  local f, e, u = string.match(value, '^%x+ 0 (%d+) %d+ (%d+) (%d+) ')
  if not f then
    return 0
  end
  e = tonumber(e)
  u = tonumber(u)
  if u > 0 and u < e then
    e = u
  end
  if e > now then
    return 0
  end
  last = tonumber(f)
end
local fence = now
if last and last >= now then
  fence = last + 1
end
local ttl_ms = tonumber(ARGV[3])
local expires = now + ttl_ms * 1000
-- The key outlives the lease by an hour (its fence is the floor of the next one).
redis.call('SET', KEYS[1], redis.sha1hex(ARGV[2]) .. ' 0 ' .. string.format('%d', fence) .. ' '
  .. string.format('%d', now) .. ' ' .. string.format('%d', expires) .. ' 0 ' .. #ARGV[4]
  .. ' ' .. ARGV[4] .. ARGV[5], 'PX', ttl_ms + 3600000)
return {1, fence, now, expires}
