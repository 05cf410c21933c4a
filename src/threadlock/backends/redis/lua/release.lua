-- release: ARGV 2 token. KEYS 1-4. The first try of a release is release_fast.lua; this runs
-- when that answered 0. Returns 1 if the caller's live lease was released, the id of the
-- waiter the key then went to if it went straight to one, 0 if that lease was no longer held.

local lease = current()  -- a free key with waiters goes to the head waiter, as every script does
if not lease or lease.t ~= redis.sha1hex(ARGV[2]) then
  return 0
end
return release_lease(lease)
