-- inbox_read: KEYS 1 pend, 2 msg. Every pending message, as inbox_batch returns them
-- (read-only; no lease needed).
return inbox_batch(KEYS[1], KEYS[2], 0, inbox_now())
