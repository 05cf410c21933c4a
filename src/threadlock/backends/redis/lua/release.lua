-- release: ARGV 2 token. KEYS 1-5. Returns 1 if the caller's live lease was released, the
-- id of the waiter the key then went to if it went straight to one, 0 if that lease was no
-- longer held.

-- Fast path: our lease (live while its key exists) with nobody queued behind it (its
-- w flag is '0'): two calls.
local value = redis.call('GET', K_LEASE)
local mine = value and string.sub(value, 1, 40) == redis.sha1hex(ARGV[2])
if mine then
  redis.call('DEL', K_LEASE)
  if string.byte(value, 42) == 48 then  -- '0'
    return 1
  end
end

-- @common

if mine then
  local granted = hand_to_head_waiter(NOW)
  if granted then
    return granted.t
  end
  return 1
end
current(NOW)  -- a free key with waiters goes to the head waiter, as every script does
return 0
