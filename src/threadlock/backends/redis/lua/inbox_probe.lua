-- inbox_probe: KEYS 1 lease, 2 pend, 3 dead (read-only; no lease needed). Returns {pending
-- count, 1 if a live lease holds the key else 0, dead letters}.
local value = redis.call('GET', KEYS[1])
local live = 0
if value and inbox_live(value) then
  live = 1
end
return {redis.call('ZCARD', KEYS[2]), live, redis.call('LLEN', KEYS[3])}
