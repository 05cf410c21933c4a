-- release_fast: the uncontended release, the prologue of release.lua (scripts.py runs this
-- file as a function before _lib.lua, so it costs none of the helpers). KEYS and ARGV are
-- those of release.lua; it uses KEYS 1 (lease) and ARGV 2 (token). It releases the caller's
-- live, claimed lease with nobody queued behind it (w flag '0') by writing the free-key
-- marker "F <fence>" for an hour (the floor of the next fence; a marker means nobody is
-- queued). Three calls: GET, TIME, SET.
-- Returns 1 if released, 0: "go on with release.lua" (not ours, ended, someone may be queued).
local value = redis.call('GET', KEYS[1])
if not value or string.sub(value, 1, 40) ~= redis.sha1hex(ARGV[2]) then
  return 0
end
local f, e = string.match(value, '^%x+ 0 (%d+) %d+ (%d+) 0 ')
if not f then
  return 0  -- someone may be queued, or an unclaimed hand-off
end
local t = redis.call('TIME')
if tonumber(e) <= tonumber(t[1]) * 1000000 + tonumber(t[2]) then
  return 0  -- ended: release.lua reports it
end
redis.call('SET', KEYS[1], 'F ' .. f, 'PX', 3600000)
return 1
