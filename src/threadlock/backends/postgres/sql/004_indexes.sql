-- Migration 4: the indexes the sweep and the registry read need (issue 15, defects 4 and 6).
--
-- The sweep looks for waiters whose heartbeat deadline passed and for expired leases; without
-- the first two indexes each of its runs scanned both tables, a cost that grew with the
-- number of held keys. The sweep itself now runs as a statement of its own beside the
-- acquires (see functions.sql), never inside one while the key's advisory lock is held.
-- Every busy answer and inspect reads the key's newest tracked run (ORDER BY seq DESC
-- LIMIT 1); the third index makes that one probe instead of a read of all the key's runs.
CREATE INDEX IF NOT EXISTS {waiters_alive_index} ON {waiters} (alive_until)
--;
CREATE INDEX IF NOT EXISTS {leases_expires_index} ON {leases} (expires_at)
--;
CREATE INDEX IF NOT EXISTS {runs_order_index} ON {runs} (key, seq)
