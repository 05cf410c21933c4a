-- inbox_finish: the release boundary. ARGV 1 's'/'p' (as every lock script), 2 token, 3 limit.
-- KEYS 1-7 (the lock's, as in _lib.lua), 8 pend, 9 msg, 10 stamp. scripts.py sends _lib.lua
-- and _inbox.lua ahead of this file. If the live lease is not the caller's: -1. If nothing is
-- pending: the lease is released with release.lua's own helper (to the head waiter, if any)
-- and the recorded stamp is returned (a string, for inbox_unindex.lua). Otherwise the lease
-- stays and the next batch is returned (inbox_batch).
-- One script, so a post lands either before it (and is in the batch) or after the release
-- (and finds the key free).

local lease = current()
if not lease or lease.t ~= redis.sha1hex(ARGV[2]) then
  return -1
end
if redis.call('ZCARD', KEYS[8]) > 0 then
  return inbox_batch(KEYS[8], KEYS[9], tonumber(ARGV[3]), NOW)
end
release_lease(lease)
return inbox_fmt(inbox_stamp(KEYS[10]))
