-- inbox_nack: KEYS 1 lease, 2 pend, 3 msg, 4 seen, 5 seq, 6 dead, 7 stamp. ARGV 1 token, 2 entry_ttl
-- ms, 3 max_attempts, 4 dead letters kept, 5... message ids. Counts a failed attempt of each
-- id still pending; one that reaches max_attempts moves to the dead letters. Returns -1 if
-- the lease is not the caller's (nothing changes), else {ids moved to the dead letters}.
if not inbox_mine(KEYS[1], ARGV[1]) then
  return -1
end
local now = inbox_now()
local max_attempts = tonumber(ARGV[3])
local dead = {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local record = redis.call('HGET', KEYS[3], id)
  if record then
    local posted, attempts, payload = string.match(record, '^(%d+) (%d+) (.*)$')
    attempts = tonumber(attempts) + 1
    if attempts >= max_attempts then
      redis.call('ZREM', KEYS[2], id)
      redis.call('HDEL', KEYS[3], id)
      redis.call('RPUSH', KEYS[6], inbox_fmt(now) .. ' ' .. attempts .. ' ' .. posted .. ' '
        .. #id .. ' ' .. id .. payload)
      dead[#dead + 1] = id
    else
      redis.call('HSET', KEYS[3], id, posted .. ' ' .. attempts .. ' ' .. payload)
    end
  end
end
redis.call('LTRIM', KEYS[6], -tonumber(ARGV[4]), -1)
inbox_keep({KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]}, tonumber(ARGV[2]))
return dead
