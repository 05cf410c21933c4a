-- Migration 5: the run registry and the chain heads get a bound, as on Redis and memory
-- (issue 18, defect 6).
--
-- A run row is kept `registry_ttl` seconds after it was first tracked, a chain head
-- `chain_ttl` seconds after its last advance; both are options of the backend instance, sent
-- as bound parameters. Reads skip rows past their bound; the background sweep deletes them
-- (one statement of its own, never on an acquire's path). The two indexes make that delete a
-- range scan. Rows of before this migration count as tracked now.
ALTER TABLE {runs} ADD COLUMN IF NOT EXISTS tracked_at timestamptz NOT NULL DEFAULT now()
--;
CREATE INDEX IF NOT EXISTS {runs_tracked_index} ON {runs} (tracked_at)
--;
CREATE INDEX IF NOT EXISTS {chains_updated_index} ON {chains} (updated_at)
