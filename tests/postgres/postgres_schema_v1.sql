-- A copy of threadlock's Postgres schema version 1 (src/threadlock/backends/postgres_sql/schema.sql
-- at commit 8d8dd6d), kept for the migration tests only.
--
-- threadlock Postgres schema, version 1.
--
-- Statements are separated by lines holding only "--;". Names in braces are filled in by
-- PostgresThreadLock.create_schema() with psycopg.sql (quoted identifiers, literals), never
-- with string formatting of user values. Nothing in here runs on import or on first use.
--
-- {leases}   one row per held key (rows of free keys are deleted)
-- {waiters}  the FIFO queue: one row per waiting acquire, ordered by seq
-- {fence_seq} a logged sequence: fences (and waiter seqs) rise across restarts, also when the
--            two tables are UNLOGGED
--
-- Every entry point takes pg_advisory_xact_lock(<table class>, hashtext(key)) first, so all
-- operations on one key are serialised inside their own one-statement transaction (safe
-- behind PgBouncer in transaction mode). Time is always the server's clock_timestamp().
CREATE {unlogged}TABLE IF NOT EXISTS {leases} (
    key text COLLATE "C" PRIMARY KEY,
    token text NOT NULL,
    fence bigint NOT NULL,
    owner text NOT NULL,
    ttl double precision NOT NULL,
    acquired_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    confirmed boolean NOT NULL
)
--;
CREATE {unlogged}TABLE IF NOT EXISTS {waiters} (
    key text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    token text NOT NULL,
    wid text NOT NULL,
    owner text NOT NULL,
    ttl double precision NOT NULL,
    grace double precision NOT NULL,
    enqueued_at timestamptz NOT NULL,
    alive_until timestamptz NOT NULL,
    PRIMARY KEY (key, seq)
)
--;
CREATE SEQUENCE IF NOT EXISTS {fence_seq} AS bigint
--;
-- Hand the key (currently without holder) to the head live waiter, or leave it free.
-- Dead waiters (no heartbeat within their grace) are dropped first. The grant is provisional:
-- it lives until the waiter's own liveness deadline (at least grace/3), and becomes a full
-- ttl-long lease when the waiter confirms it; a waiter whose process died is skipped then.
CREATE OR REPLACE FUNCTION {grant_next}(p_key text, p_now timestamptz)
RETURNS void LANGUAGE plpgsql AS $threadlock$
DECLARE
    w record;
BEGIN
    DELETE FROM {waiters} d WHERE d.key = p_key AND d.alive_until <= p_now;
    DELETE FROM {waiters} d
     WHERE d.key = p_key
       AND d.seq = (SELECT min(m.seq) FROM {waiters} m WHERE m.key = p_key)
    RETURNING d.* INTO w;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    INSERT INTO {leases} (key, token, fence, owner, ttl, acquired_at, expires_at, confirmed)
    VALUES (p_key, w.token, nextval({fence_seq_name}), w.owner, w.ttl, p_now,
            least(p_now + make_interval(secs => w.ttl),
                  greatest(w.alive_until, p_now + make_interval(secs => w.grace / 3))),
            false);
    PERFORM pg_notify({channel}, w.wid);
END
$threadlock$
--;
-- Retire an expired holder (handing the key on). Callers hold the key's advisory lock.
CREATE OR REPLACE FUNCTION {settle}(p_key text, p_now timestamptz)
RETURNS void LANGUAGE plpgsql AS $threadlock$
DECLARE
    v_expires timestamptz;
BEGIN
    SELECT l.expires_at INTO v_expires FROM {leases} l WHERE l.key = p_key;
    IF FOUND THEN
        IF v_expires > p_now THEN
            RETURN;
        END IF;
        DELETE FROM {leases} l WHERE l.key = p_key;
    END IF;
    PERFORM {grant_next}(p_key, p_now);
END
$threadlock$
--;
-- Bounded clean-up of what nobody will touch again: expired leases of keys without waiters and
-- waiters whose process died. Keys busy in another transaction are skipped (try-lock).
CREATE OR REPLACE FUNCTION {sweep}(p_now timestamptz)
RETURNS void LANGUAGE plpgsql AS $threadlock$
BEGIN
    DELETE FROM {waiters} d
     WHERE d.ctid = ANY (ARRAY(SELECT x.ctid FROM {waiters} x
                                WHERE x.alive_until < p_now LIMIT 64))
       AND d.alive_until < p_now
       AND pg_try_advisory_xact_lock({lockclass}, hashtext(d.key));
    DELETE FROM {leases} l
     WHERE l.key = ANY (ARRAY(SELECT x.key FROM {leases} x
                               WHERE x.expires_at < p_now LIMIT 64))
       AND l.expires_at < p_now
       AND NOT EXISTS (SELECT 1 FROM {waiters} w WHERE w.key = l.key)
       AND pg_try_advisory_xact_lock({lockclass}, hashtext(l.key));
END
$threadlock$
--;
-- One acquire attempt, also the waiter's re-check and heartbeat. Returns one row:
--   status 'granted' (o_fence/o_acquired_at/o_expires_at describe the new lease),
--   'waiting' (queued at o_seq with o_ahead live waiters ahead), or
--   'busy' (p_enqueue was false). For 'waiting'/'busy' the o_h_* columns describe the holder
--   and o_left is its remaining TTL in seconds (server clock).
CREATE OR REPLACE FUNCTION {acquire}(
    p_key text, p_token text, p_wid text, p_owner text, p_ttl double precision,
    p_grace double precision, p_enqueue boolean, p_seq bigint)
RETURNS TABLE (
    o_status text, o_fence bigint, o_acquired_at double precision,
    o_expires_at double precision, o_seq bigint, o_ahead bigint, o_h_fence bigint,
    o_h_owner text, o_h_acquired_at double precision, o_h_expires_at double precision,
    o_waiters bigint, o_left double precision)
LANGUAGE plpgsql AS $threadlock$
DECLARE
    v_now timestamptz;
    l record;
    v_seq bigint;
BEGIN
    PERFORM pg_advisory_xact_lock({lockclass}, hashtext(p_key));
    v_now := clock_timestamp();
    PERFORM {settle}(p_key, v_now);
    SELECT * INTO l FROM {leases} x WHERE x.key = p_key;
    IF NOT FOUND THEN
        -- Free, and settle() left no live waiter (it would have granted the head one).
        DELETE FROM {waiters} d WHERE d.key = p_key AND d.token = p_token;
        INSERT INTO {leases} (key, token, fence, owner, ttl, acquired_at, expires_at, confirmed)
        VALUES (p_key, p_token, nextval({fence_seq_name}), p_owner, p_ttl, v_now,
                v_now + make_interval(secs => p_ttl), true)
        RETURNING * INTO l;
        IF random() < 0.0625 THEN
            PERFORM {sweep}(v_now);
        END IF;
    ELSIF l.token = p_token AND NOT l.confirmed THEN
        -- Handed to us while we waited: confirm, and start the full ttl now.
        UPDATE {leases} x
           SET confirmed = true, ttl = p_ttl, expires_at = v_now + make_interval(secs => p_ttl)
         WHERE x.key = p_key
        RETURNING * INTO l;
    END IF;
    IF l.token = p_token THEN
        RETURN QUERY SELECT 'granted'::text, l.fence, date_part('epoch', l.acquired_at),
            date_part('epoch', l.expires_at), NULL::bigint, 0::bigint, NULL::bigint,
            NULL::text, NULL::double precision, NULL::double precision, 0::bigint,
            NULL::double precision;
        RETURN;
    END IF;
    UPDATE {waiters} d SET alive_until = v_now + make_interval(secs => d.grace)
     WHERE d.key = p_key AND d.token = p_token
    RETURNING d.seq INTO v_seq;
    IF NOT FOUND AND p_enqueue THEN
        -- New waiter, or one dropped as dead that is back: it keeps its original place.
        INSERT INTO {waiters} (key, seq, token, wid, owner, ttl, grace, enqueued_at, alive_until)
        VALUES (p_key, coalesce(p_seq, nextval({fence_seq_name})), p_token, p_wid, p_owner,
                p_ttl, p_grace, v_now, v_now + make_interval(secs => p_grace))
        RETURNING seq INTO v_seq;
    END IF;
    RETURN QUERY SELECT
        CASE WHEN v_seq IS NULL THEN 'busy' ELSE 'waiting' END::text,
        NULL::bigint, NULL::double precision, NULL::double precision, v_seq,
        (SELECT count(*) FROM {waiters} a
          WHERE a.key = p_key AND a.seq < v_seq AND a.alive_until > v_now),
        l.fence, l.owner, date_part('epoch', l.acquired_at), date_part('epoch', l.expires_at),
        (SELECT count(*) FROM {waiters} a WHERE a.key = p_key AND a.alive_until > v_now),
        date_part('epoch', l.expires_at - v_now);
END
$threadlock$
--;
-- Release a live lease (handing the key to the head live waiter), or withdraw a waiter.
-- Returns whether a live lease with that token was released. Also the "abandon" statement
-- of an acquire that was cancelled or timed out, whatever state it reached.
CREATE OR REPLACE FUNCTION {release}(p_key text, p_token text)
RETURNS boolean LANGUAGE plpgsql AS $threadlock$
DECLARE
    v_now timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock({lockclass}, hashtext(p_key));
    v_now := clock_timestamp();
    DELETE FROM {leases} l WHERE l.key = p_key AND l.token = p_token AND l.expires_at > v_now;
    IF FOUND THEN
        PERFORM {grant_next}(p_key, v_now);
        RETURN true;
    END IF;
    DELETE FROM {waiters} d WHERE d.key = p_key AND d.token = p_token;
    PERFORM {settle}(p_key, v_now);
    RETURN false;
END
$threadlock$
--;
-- Extend a live lease to now + p_ttl, keeping its fence. No row: the lease is lost.
CREATE OR REPLACE FUNCTION {extend}(p_key text, p_token text, p_ttl double precision)
RETURNS TABLE (o_fence bigint, o_acquired_at double precision, o_expires_at double precision)
LANGUAGE plpgsql AS $threadlock$
DECLARE
    v_now timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock({lockclass}, hashtext(p_key));
    v_now := clock_timestamp();
    RETURN QUERY
    UPDATE {leases} l
       SET ttl = p_ttl, expires_at = v_now + make_interval(secs => p_ttl), confirmed = true
     WHERE l.key = p_key AND l.token = p_token AND l.expires_at > v_now
    RETURNING l.fence, date_part('epoch', l.acquired_at), date_part('epoch', l.expires_at);
END
$threadlock$
