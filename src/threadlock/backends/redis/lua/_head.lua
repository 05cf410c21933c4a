-- threadlock: the head of every lock script (prepended by scripts.py). Locals only: no closure
-- is built and no Redis call is made here, so a script's fast path, written before its
-- `-- @common` line, costs only the calls it makes itself.
--
-- KEYS (all in one hash slot through the tag {<digest of the user key>}; a script is given
-- the first 5, 6 or 7):
--   1 lease  string "<t> <w> <fence> <acquired µs> <expires µs> <claim by µs> <#owner> <owner><key>"
--                   t = sha1(token) (40 hex digits, first, so a release compares a prefix);
--                   w = '1' if someone may be queued (set when a waiter joins while this
--                   lease lives; '0' means nobody is), so a release needs no queue lookup;
--                   claim by = 0 once claimed, else the deadline of an unclaimed hand-off.
--                   The key expires (PXAT) when the lease ends: its existence is liveness.
--   2 fence  string the last fence handed out; expires FENCE_KEEP_MS after the lease would
--   3 queue  zset   waiter id -> arrival order (FIFO)
--   4 beat   zset   waiter id -> heartbeat deadline µs (a waiter past it is dead: skipped)
--   5 meta   hash   waiter id -> "<ttl ms> <grace ms> <#inbox> <inbox><owner>" (inbox: the
--                   waiter's instance channel, or '' for the key's own), "k" -> the user key
--   6 runs   hash   run id -> "<order µs> <record JSON>" (the run registry; see track.lua)
--   7 chain  string the chain head (a response id); for acquire and abandon instead:
--     gone   string the tombstone of one acquire ("<base>:gone:<attempt>", 60 s; the
--                   attempt is the backend instance's id and its acquire counter): abandon
--                   writes it, so an attempt of that acquire that reaches Redis after it
--                   (cancelled in flight, its bytes still on the wire) changes nothing
-- ARGV[1] (every lock script): 's' to notify with SPUBLISH (Cluster), else 'p' (PUBLISH),
-- followed, for acquire, by the mode letter.
-- A waiter id is sha1(token): the token itself never rests in Redis.
-- Numbers above 1e14 are never concatenated with `..` (Lua 5.1 prints them as %.14g).
local K_LEASE, K_FENCE, K_QUEUE, K_BEAT, K_META = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local K_RUNS, K_CHAIN, K_GONE = KEYS[6], KEYS[7], KEYS[7]
local SHARDED = string.byte(ARGV[1], 1) == 115  -- 's'
-- After a key's last use its last fence is kept this long; once it is gone the server clock
-- alone (in µs) is already this far past it, so fences keep increasing even across a
-- restart that lost everything, unless the clock went back by more than this.
local FENCE_KEEP_MS = 3600000
local NOW  -- the server clock in µs (TIME), read by a fast path or at the start of @common
