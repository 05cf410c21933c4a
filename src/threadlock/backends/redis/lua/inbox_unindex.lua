-- inbox_unindex: KEYS 1 the prefix's index, 2 its keep times. ARGV 1 the user key, 2 a
-- stamp recorded in its slot when nothing was pending there and no lease was live (by inbox_finish.lua at the
-- release, or inbox_probe.lua). Removes the entry only if its stamp is still that one: a
-- post stamped since (in flight, or landed after that reading) has a later stamp, and a post
-- stamped before it but not landed yet is refused there and stamps again (inbox_post.lua),
-- so no entry of a key with a pending or coming message is ever removed. Returns 1 if it
-- removed the entry, else 0.
local last = redis.call('ZSCORE', KEYS[1], ARGV[1])
if last and tonumber(last) == tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 1
end
return 0
