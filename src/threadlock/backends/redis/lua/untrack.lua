-- untrack: forget a run of the run registry of one lock. Standalone (no head, no lease).
-- KEYS 1 the runs hash, 2 its order (see track.lua). ARGV 1 run id. A missing entry is no
-- error; an emptied hash and order leave no keys. Returns 1.
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
