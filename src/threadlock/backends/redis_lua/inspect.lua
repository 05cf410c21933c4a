-- inspect: no extra ARGV. An expired holder is retired first (as every script does).
-- Returns {user key, fence, owner, acquired µs, expires µs, live waiters}, or 0 if free.
local now = now_us()
local lease = current(now)
if not lease then
  return 0
end
return {lease[6], tonumber(lease[2]), lease[3], tonumber(lease[4]), tonumber(lease[5]),
  live_waiters(now)}
