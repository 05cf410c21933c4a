-- Migration 4: index the columns the sweep scans (issue 15, defect 4).
--
-- The sweep looks for waiters whose heartbeat deadline passed and for expired leases; without
-- these indexes each of its runs scanned both tables, a cost that grew with the number of
-- held keys. The sweep itself now runs as a statement of its own beside the acquires (see
-- functions.sql), never inside one while the key's advisory lock is held.
CREATE INDEX IF NOT EXISTS {waiters_alive_index} ON {waiters} (alive_until)
--;
CREATE INDEX IF NOT EXISTS {leases_expires_index} ON {leases} (expires_at)
