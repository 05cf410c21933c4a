-- inbox_settle: KEYS 1 lease, 2 pend, 3 stamp. ARGV 1 the key's stamp in the index (read by
-- a sweep), 2 the user key, 3 ms to keep a stamp written here. For a key with nothing
-- pending and no live lease, whose index entry a sweep means to remove: the recorded stamp
-- is raised to the index's (if below), so that a post stamped up to then and not landed yet
-- (in flight, or its poster died before it: a stamp with no post) is refused when it lands
-- and is stamped again (inbox_post.lua); the caller then removes the entry if its stamp is
-- still that one (inbox_unindex.lua). Returns 1 if so, 0 if the key has messages pending or
-- a live lease (nothing changes).
if redis.call('ZCARD', KEYS[2]) > 0 then
  return 0
end
local value = redis.call('GET', KEYS[1])
if value and inbox_live(value) then
  return 0
end
local stamp = tonumber(ARGV[1])
if inbox_stamp(KEYS[3]) < stamp then
  local keep = math.max(redis.call('PTTL', KEYS[3]), tonumber(ARGV[3]))
  redis.call('SET', KEYS[3], inbox_fmt(stamp) .. ' ' .. ARGV[2], 'PX', keep)
end
return 1
