-- threadlock inbox: shared helpers; scripts.py sends this file ahead of every inbox_*.lua.
-- The inbox keys of a lock share its hash slot ({<digest>}):
--   pend  zset   message id -> arrival number (seq), the pending messages in arrival order
--   msg   hash   message id -> "<posted µs> <failed attempts> <stored payload>"
--   seen  zset   message id -> posted µs: the ids posted within entry_ttl (deduplication)
--   seq   string the last arrival number
--   dead  list   "<died µs> <attempts> <posted µs> <#id> <id><stored payload>", newest last
--   stamp string "<stamp> <user key>": the stamp of the newest post resolved here (stored,
--                deduplicated or refused as full) and the key itself (for status)
-- and two keys per prefix, in a slot of their own (the tag {<prefix>}), that no script of a
-- key's slot touches:
--   <prefix>:inbox-keys:{<prefix>}   zset  user key -> stamp: every key that may have
--                pending messages (crash recovery scans it; see inbox/redis.py)
--   <prefix>:inbox-until:{<prefix>}  zset  user key -> server µs its entry is kept until
--                (the latest keep time its posts asked; see inbox_index.lua)
-- Numbers above 1e14 are never concatenated with `..` (Lua 5.1 prints them as %.14g).

local function inbox_fmt(n)
  return string.format('%d', n)
end

local function inbox_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Whether the lease key's value is a live lease: its end (its expiry, or its claim deadline
-- while unclaimed) is still ahead by the server clock; the lease key outlives the lease (see
-- _lib.lua), so existing is not enough. A free-key marker ('F <fence>') does not match.
local function inbox_live(value)
  local e, u = string.match(value, '^%x+ [01] %d+ %d+ (%d+) (%d+) ')
  if not e then
    return false
  end
  local ends = tonumber(e)
  local claim_by = tonumber(u)
  if claim_by > 0 and claim_by < ends then
    ends = claim_by
  end
  return ends > inbox_now()
end

-- Whether `k_lease` holds the live lease of `token` (its value starts with sha1(token)).
local function inbox_mine(k_lease, token)
  local value = redis.call('GET', k_lease)
  if not value or string.sub(value, 1, 40) ~= redis.sha1hex(token) then
    return false
  end
  return inbox_live(value)
end

-- The stamp recorded in the stamp key (0 if none).
local function inbox_stamp(k_stamp)
  local value = redis.call('GET', k_stamp)
  if not value then
    return 0
  end
  return tonumber(string.match(value, '^(%d+)'))
end

-- {pending count, newest posted µs, newest seq, now µs, id1, record1, seq1, ...}: the
-- oldest `limit` pending messages.
local function inbox_batch(k_pend, k_msg, limit, now)
  local total = redis.call('ZCARD', k_pend)
  local reply = {total, '0', '0', inbox_fmt(now)}
  if total == 0 then
    return reply
  end
  local newest = redis.call('ZRANGE', k_pend, -1, -1, 'WITHSCORES')
  local record = redis.call('HGET', k_msg, newest[1])
  reply[2] = record and string.match(record, '^(%d+) ') or '0'
  reply[3] = newest[2]
  local head = redis.call('ZRANGE', k_pend, 0, limit - 1, 'WITHSCORES')
  for i = 1, #head, 2 do
    local found = redis.call('HGET', k_msg, head[i])
    if found then
      reply[#reply + 1] = head[i]
      reply[#reply + 1] = found
      reply[#reply + 1] = head[i + 1]
    end
  end
  return reply
end

-- Every inbox key that exists lives `ttl_ms` from now.
local function inbox_keep(keys, ttl_ms)
  for _, key in ipairs(keys) do
    redis.call('PEXPIRE', key, ttl_ms)
  end
end
