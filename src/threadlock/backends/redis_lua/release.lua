-- release: ARGV 3 token. Returns 1 if the caller's live lease was released (the key then
-- goes straight to the first live waiter), 0 if that lease was no longer held.
local now = now_us()
local lease = current(now)
if not lease or lease[1] ~= redis.sha1hex(ARGV[3]) then
  return 0
end
redis.call('DEL', K_LEASE)
grant_next(now)
return 1
