-- The functions of the current schema version. create_schema installs them (CREATE OR
-- REPLACE) in the transaction that applies the last migration.
--
-- Statements, here and in the numbered migrations, are separated by lines holding only "--;".
-- Names in braces are filled in by create_schema with psycopg.sql (quoted identifiers,
-- literals), never with string formatting of user values.
--
-- Every lease entry point takes pg_advisory_xact_lock(<table class>, hashtext(key)) first, so
-- all operations on one key are serialised inside their own one-statement transaction (safe
-- behind PgBouncer in transaction mode). Time is always the server's clock_timestamp().
--
-- Invariant kept by every function: when a key has no lease row it has no waiter row either
-- (a release or an expiry hands the key to the head live waiter, and drops dead ones on the
-- way). So a caller that finds no lease row may take the key at once.
--
-- Commits. Only a statement that hands a caller a fence or an expiry (a grant, the
-- confirmation of a hand-off, a release that hands a local waiter its lease, an extend, a
-- chain advance, a registry write) must be durable when it returns. With p_relaxed, the other
-- outcomes (a release, a withdrawal, a waiter's enqueue or heartbeat, a busy answer) commit
-- with synchronous_commit = off: WAL is flushed in order, so the next synchronous commit (the
-- grantee's confirmation, at the latest) makes every earlier one durable too, sequence
-- advances included. A crash can only undo a release that nothing synchronous followed; that
-- key then stays held until its TTL, as if its holder had crashed.
-- {relaxable} is false when the lease table is UNLOGGED: there a grant writes no WAL of its
-- own, so its commit flushes nothing and would not cover an earlier asynchronous sequence
-- advance; those schemas never relax (and have few WAL flushes to save anyway).
--;
-- Hand the key (currently without holder) to the head live waiter, or leave it free.
-- Dead head waiters (no heartbeat within their grace) are dropped on the way. Callers hold the
-- key's advisory lock.
--
-- A waiter of the calling backend instance (its wid starts with p_local) gets a full lease at
-- once, returned as the one row: the caller's process is alive (it is running this statement)
-- and hands the lease to that waiter in-process, so neither a notification nor a confirmation
-- is needed. The caller must then commit synchronously (a fence is handed out).
--
-- Any other waiter gets a provisional grant and a notification: the grant lives until the
-- waiter's own liveness deadline (at least grace/3) and becomes a full ttl-long lease when the
-- waiter confirms it, so a waiter whose process died is skipped within about its grace.
CREATE OR REPLACE FUNCTION {grant_head_waiter}(p_key text, p_now timestamptz, p_local text)
RETURNS TABLE (o_wid text, o_fence bigint, o_acquired_at double precision,
               o_expires_at double precision)
LANGUAGE plpgsql AS $threadlock$
DECLARE
    w record;
    v_fence bigint;
BEGIN
    LOOP
        DELETE FROM {waiters} d
         WHERE d.key = p_key
           AND d.seq = (SELECT m.seq FROM {waiters} m WHERE m.key = p_key
                         ORDER BY m.seq LIMIT 1)
        RETURNING d.* INTO w;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        EXIT WHEN w.alive_until > p_now;
    END LOOP;
    v_fence := nextval({fence_seq_name});
    IF p_local IS NOT NULL AND starts_with(w.wid, p_local) THEN
        INSERT INTO {leases} (key, token, fence, owner, ttl, acquired_at, expires_at, confirmed)
        VALUES (p_key, w.token, v_fence, w.owner, w.ttl, p_now,
                p_now + make_interval(secs => w.ttl), true);
        o_wid := w.wid;
        o_fence := v_fence;
        o_acquired_at := date_part('epoch', p_now);
        o_expires_at := date_part('epoch', p_now + make_interval(secs => w.ttl));
        RETURN NEXT;
        RETURN;
    END IF;
    INSERT INTO {leases} (key, token, fence, owner, ttl, acquired_at, expires_at, confirmed)
    VALUES (p_key, w.token, v_fence, w.owner, w.ttl, p_now,
            least(p_now + make_interval(secs => w.ttl),
                  greatest(w.alive_until, p_now + make_interval(secs => w.grace / 3))),
            false);
    PERFORM pg_notify({channel}, w.wid);
END
$threadlock$
--;
-- Bounded clean-up of what nobody will touch again: expired leases of keys without waiters and
-- waiters whose process died. Keys busy in another transaction are skipped (try-lock). It is a
-- statement of its own (the client runs it after about one uncontended grant in sixteen), so
-- it never runs while an acquire holds its key's advisory lock; migration 4 indexes both
-- scans (alive_until, expires_at).
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
-- One acquire attempt, also the waiter's re-check, heartbeat and confirmation. One row:
--   status 'granted' (o_fence/o_acquired_at/o_expires_at describe the new lease),
--   'waiting' (queued at o_seq with o_ahead live waiters ahead), or
--   'busy' (p_enqueue was false). For 'waiting'/'busy' the o_h_* columns describe the holder
--   (o_h_run_id: its newest tracked run), o_waiters counts the live waiters and o_left is the
--   holder's remaining TTL in seconds (server clock).
-- The common cases take few steps: a free key is one probe and one insert; a confirmation is
-- one probe and one update.
CREATE OR REPLACE FUNCTION {acquire}(
    p_key text, p_token text, p_wid text, p_owner text, p_ttl double precision,
    p_grace double precision, p_enqueue boolean, p_seq bigint, p_relaxed boolean)
RETURNS TABLE (
    o_status text, o_fence bigint, o_acquired_at double precision,
    o_expires_at double precision, o_seq bigint, o_ahead bigint, o_h_fence bigint,
    o_h_owner text, o_h_acquired_at double precision, o_h_expires_at double precision,
    o_waiters bigint, o_left double precision, o_h_run_id text)
LANGUAGE plpgsql AS $threadlock$
DECLARE
    v_now timestamptz;
    l record;
BEGIN
    PERFORM pg_advisory_xact_lock({lockclass}, hashtext(p_key));
    v_now := clock_timestamp();
    SELECT * INTO l FROM {leases} x WHERE x.key = p_key;
    IF FOUND AND l.expires_at <= v_now THEN
        -- The holder expired: retire it and hand the key to the head live waiter (maybe us).
        DELETE FROM {leases} x WHERE x.key = p_key;
        PERFORM {grant_head_waiter}(p_key, v_now, NULL);
        SELECT * INTO l FROM {leases} x WHERE x.key = p_key;
    END IF;
    IF NOT FOUND THEN
        -- Free, so nobody waits (see the invariant above): ours.
        IF p_seq IS NOT NULL THEN
            DELETE FROM {waiters} d WHERE d.key = p_key AND d.token = p_token;
        END IF;
        INSERT INTO {leases} (key, token, fence, owner, ttl, acquired_at, expires_at, confirmed)
        VALUES (p_key, p_token, nextval({fence_seq_name}), p_owner, p_ttl, v_now,
                v_now + make_interval(secs => p_ttl), true)
        RETURNING * INTO l;
    ELSIF l.token = p_token AND NOT l.confirmed THEN
        -- Handed to us while we waited: confirm, and start the full ttl now.
        UPDATE {leases} x
           SET confirmed = true, ttl = p_ttl, expires_at = v_now + make_interval(secs => p_ttl)
         WHERE x.key = p_key
        RETURNING * INTO l;
    END IF;
    o_ahead := 0;
    o_waiters := 0;
    IF l.token = p_token THEN
        o_status := 'granted';
        o_fence := l.fence;
        o_acquired_at := date_part('epoch', l.acquired_at);
        o_expires_at := date_part('epoch', l.expires_at);
        RETURN NEXT;
        RETURN;
    END IF;
    IF p_relaxed AND {relaxable} THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    UPDATE {waiters} d SET alive_until = v_now + make_interval(secs => d.grace)
     WHERE d.key = p_key AND d.token = p_token
    RETURNING d.seq INTO o_seq;
    IF NOT FOUND AND p_enqueue THEN
        -- New waiter, or one dropped as dead that is back: it keeps its original place.
        INSERT INTO {waiters} (key, seq, token, wid, owner, ttl, grace, enqueued_at, alive_until)
        VALUES (p_key, coalesce(p_seq, nextval({fence_seq_name})), p_token, p_wid, p_owner,
                p_ttl, p_grace, v_now, v_now + make_interval(secs => p_grace))
        RETURNING seq INTO o_seq;
    END IF;
    o_status := CASE WHEN o_seq IS NULL THEN 'busy' ELSE 'waiting' END;
    SELECT count(*) FILTER (WHERE a.seq < o_seq), count(*) INTO o_ahead, o_waiters
      FROM {waiters} a WHERE a.key = p_key AND a.alive_until > v_now;
    o_h_fence := l.fence;
    o_h_owner := l.owner;
    o_h_acquired_at := date_part('epoch', l.acquired_at);
    o_h_expires_at := date_part('epoch', l.expires_at);
    o_left := date_part('epoch', l.expires_at - v_now);
    SELECT r.run_id INTO o_h_run_id FROM {runs} r WHERE r.key = p_key ORDER BY r.seq DESC LIMIT 1;
    RETURN NEXT;
END
$threadlock$
--;
-- Release a live lease (handing the key to the head live waiter), or withdraw a waiter.
-- o_released says whether a live lease with that token was released; o_wid and the rest
-- describe a full lease handed to a waiter of the caller's own instance (p_local), which the
-- caller passes on in-process. Also the "abandon" statement of an acquire that was cancelled
-- or timed out, whatever state it reached. Unless it handed a local waiter a lease, it hands
-- nobody a fence (a remote grantee gets its lease from its own confirmation), so with
-- p_relaxed it commits asynchronously.
CREATE OR REPLACE FUNCTION {release}(
    p_key text, p_token text, p_relaxed boolean, p_local text)
RETURNS TABLE (o_released boolean, o_wid text, o_fence bigint,
               o_acquired_at double precision, o_expires_at double precision)
LANGUAGE plpgsql AS $threadlock$
DECLARE
    v_now timestamptz;
    v_expires timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock({lockclass}, hashtext(p_key));
    v_now := clock_timestamp();
    DELETE FROM {leases} l WHERE l.key = p_key AND l.token = p_token AND l.expires_at > v_now;
    o_released := FOUND;
    IF o_released THEN
        IF EXISTS (SELECT 1 FROM {waiters} w WHERE w.key = p_key) THEN
            SELECT g.o_wid, g.o_fence, g.o_acquired_at, g.o_expires_at
              INTO o_wid, o_fence, o_acquired_at, o_expires_at
              FROM {grant_head_waiter}(p_key, v_now, p_local) g;
        END IF;
    ELSE
        DELETE FROM {waiters} d WHERE d.key = p_key AND d.token = p_token;
        SELECT l.expires_at INTO v_expires FROM {leases} l WHERE l.key = p_key;
        IF NOT FOUND OR v_expires <= v_now THEN
            DELETE FROM {leases} l WHERE l.key = p_key;
            SELECT g.o_wid, g.o_fence, g.o_acquired_at, g.o_expires_at
              INTO o_wid, o_fence, o_acquired_at, o_expires_at
              FROM {grant_head_waiter}(p_key, v_now, p_local) g;
        END IF;
    END IF;
    IF p_relaxed AND {relaxable} AND o_wid IS NULL THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    RETURN NEXT;
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
--;
-- Compare-and-set the head of chain p_key from p_expected (NULL: no head yet) to p_new, only
-- while the lease with token p_token is live. Under the key's advisory lock, so the lease
-- cannot be released, expire into someone else's hands or be extended meanwhile.
CREATE OR REPLACE FUNCTION {advance_chain}(
    p_key text, p_token text, p_expected text, p_new text, p_ttl double precision)
RETURNS boolean LANGUAGE plpgsql AS $threadlock$
DECLARE
    v_now timestamptz;
    v_fence bigint;
BEGIN
    PERFORM pg_advisory_xact_lock({lockclass}, hashtext(p_key));
    v_now := clock_timestamp();
    SELECT l.fence INTO v_fence FROM {leases} l
     WHERE l.key = p_key AND l.token = p_token AND l.expires_at > v_now;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF p_ttl IS NOT NULL THEN  -- a head past chain_ttl is gone: the chain starts anew
        DELETE FROM {chains} c
         WHERE c.key = p_key AND c.updated_at <= v_now - make_interval(secs => p_ttl);
    END IF;
    IF p_expected IS NULL THEN
        INSERT INTO {chains} (key, head, fence, updated_at)
        VALUES (p_key, p_new, v_fence, v_now)
        ON CONFLICT (key) DO NOTHING;
    ELSE
        UPDATE {chains} c SET head = p_new, fence = v_fence, updated_at = v_now
         WHERE c.key = p_key AND c.head = p_expected;
    END IF;
    RETURN FOUND;
END
$threadlock$
--;
-- Schema version 4's signature, for instances of before a rolling upgrade: no bound.
CREATE OR REPLACE FUNCTION {advance_chain}(
    p_key text, p_token text, p_expected text, p_new text)
RETURNS boolean LANGUAGE sql AS $threadlock$
    SELECT {advance_chain}(p_key, p_token, p_expected, p_new, NULL::double precision)
$threadlock$
--;
-- The inbox (migration 6). Every entry point that changes a key's inbox takes the key's
-- advisory lock first, the one acquire and release take, so a post, an ack and the release
-- boundary ({inbox_finish}) of one key are serialised.
--
-- The oldest p_limit (all if p_limit <= 0) pending messages of p_key, each row also carrying
-- the pending count, the newest pending message's posted_at and seq, and p_now (epoch s).
-- No pending message: one row whose o_id is NULL.
CREATE OR REPLACE FUNCTION {inbox_batch}(p_key text, p_limit integer, p_now timestamptz)
RETURNS TABLE (o_id text, o_payload text, o_posted_at double precision, o_attempts integer,
               o_seq bigint, o_pending bigint, o_newest_posted double precision,
               o_newest_seq bigint, o_now double precision)
LANGUAGE plpgsql AS $threadlock$
DECLARE
    v_count bigint;
    v_seq bigint;
    v_posted double precision;
BEGIN
    SELECT count(*), coalesce(max(i.seq), 0) INTO v_count, v_seq
      FROM {inbox} i WHERE i.key = p_key AND i.pending;
    IF v_count = 0 THEN
        RETURN QUERY SELECT NULL::text, NULL::text, NULL::float8, NULL::integer, NULL::bigint,
                            0::bigint, 0::float8, 0::bigint, date_part('epoch', p_now);
        RETURN;
    END IF;
    SELECT i.posted_at INTO v_posted FROM {inbox} i
     WHERE i.key = p_key AND i.pending AND i.seq = v_seq;
    RETURN QUERY
    SELECT i.id::text, i.payload, i.posted_at, i.attempts, i.seq, v_count, v_posted, v_seq,
           date_part('epoch', p_now)
      FROM {inbox} i WHERE i.key = p_key AND i.pending
     ORDER BY i.seq
     LIMIT CASE WHEN p_limit > 0 THEN p_limit END;
END
$threadlock$
--;
-- Whether the lease of p_token on p_key is live. Callers hold the key's advisory lock.
CREATE OR REPLACE FUNCTION {inbox_mine}(p_key text, p_token text, p_now timestamptz)
RETURNS boolean LANGUAGE sql STABLE AS $threadlock$
    SELECT EXISTS (SELECT 1 FROM {leases} l
                    WHERE l.key = p_key AND l.token = p_token AND l.expires_at > p_now)
$threadlock$
--;
-- Post a message: 1 stored, 0 the id is pending or was posted within its entry_ttl (nothing
-- changes), -1 p_max_pending are pending (nothing changes). Rows of ids whose window ended
-- and that are not pending are dropped on the way.
CREATE OR REPLACE FUNCTION {inbox_post}(
    p_key text, p_id text, p_payload text, p_max_pending integer,
    p_entry_ttl double precision)
RETURNS integer LANGUAGE plpgsql AS $threadlock$
DECLARE
    v_now timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock({lockclass}, hashtext(p_key));
    v_now := clock_timestamp();
    DELETE FROM {inbox} i WHERE i.key = p_key AND NOT i.pending AND i.seen_until <= v_now;
    IF EXISTS (SELECT 1 FROM {inbox} i WHERE i.key = p_key AND i.id = p_id) THEN
        RETURN 0;
    END IF;
    IF (SELECT count(*) FROM {inbox} i WHERE i.key = p_key AND i.pending) >= p_max_pending THEN
        RETURN -1;
    END IF;
    INSERT INTO {inbox} (key, id, seq, payload, posted_at, attempts, pending, seen_until)
    VALUES (p_key, p_id, nextval({inbox_seq_name}), p_payload, date_part('epoch', v_now), 0,
            true, v_now + make_interval(secs => p_entry_ttl));
    RETURN 1;
END
$threadlock$
--;
-- The next batch under the lease of p_token; no row if that lease is not live.
CREATE OR REPLACE FUNCTION {inbox_take}(p_key text, p_token text, p_limit integer)
RETURNS TABLE (o_id text, o_payload text, o_posted_at double precision, o_attempts integer,
               o_seq bigint, o_pending bigint, o_newest_posted double precision,
               o_newest_seq bigint, o_now double precision)
LANGUAGE plpgsql AS $threadlock$
DECLARE
    v_now timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock({lockclass}, hashtext(p_key));
    v_now := clock_timestamp();
    IF {inbox_mine}(p_key, p_token, v_now) THEN
        RETURN QUERY SELECT * FROM {inbox_batch}(p_key, p_limit, v_now);
    END IF;
END
$threadlock$
--;
-- The release boundary, one statement under the key's advisory lock (which a post takes
-- too): o_status 'lost' if the lease of p_token is not live; 'batch' rows (the next batch,
-- as {inbox_batch}) if a message is pending; else the lease is released by {release} itself
-- (same hand-off to the head waiter, same commit rules) and one 'released' row carries what
-- {release} returned for a waiter of the caller's instance.
CREATE OR REPLACE FUNCTION {inbox_finish}(
    p_key text, p_token text, p_limit integer, p_relaxed boolean, p_local text)
RETURNS TABLE (o_status text, o_id text, o_payload text, o_posted_at double precision,
               o_attempts integer, o_seq bigint, o_pending bigint,
               o_newest_posted double precision, o_newest_seq bigint, o_now double precision,
               o_wid text, o_fence bigint, o_acquired_at double precision,
               o_expires_at double precision)
LANGUAGE plpgsql AS $threadlock$
DECLARE
    v_now timestamptz;
    r record;
BEGIN
    PERFORM pg_advisory_xact_lock({lockclass}, hashtext(p_key));
    v_now := clock_timestamp();
    IF NOT {inbox_mine}(p_key, p_token, v_now) THEN
        o_status := 'lost';
        RETURN NEXT;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM {inbox} i WHERE i.key = p_key AND i.pending) THEN
        RETURN QUERY SELECT 'batch'::text, b.*, NULL::text, NULL::bigint, NULL::float8,
                            NULL::float8
                       FROM {inbox_batch}(p_key, p_limit, v_now) b;
        RETURN;
    END IF;
    SELECT * INTO r FROM {release}(p_key, p_token, p_relaxed, p_local);
    o_status := CASE WHEN r.o_released THEN 'released' ELSE 'lost' END;
    o_wid := r.o_wid;
    o_fence := r.o_fence;
    o_acquired_at := r.o_acquired_at;
    o_expires_at := r.o_expires_at;
    RETURN NEXT;
END
$threadlock$
--;
-- Acknowledge p_ids (no longer pending; kept for deduplication until their window ends) if
-- the lease of p_token is live; false (nothing changes) if not.
CREATE OR REPLACE FUNCTION {inbox_ack}(p_key text, p_token text, p_ids text[])
RETURNS boolean LANGUAGE plpgsql AS $threadlock$
BEGIN
    PERFORM pg_advisory_xact_lock({lockclass}, hashtext(p_key));
    IF NOT {inbox_mine}(p_key, p_token, clock_timestamp()) THEN
        RETURN false;
    END IF;
    UPDATE {inbox} i SET pending = false
     WHERE i.key = p_key AND i.id = ANY (p_ids) AND i.pending;
    RETURN true;
END
$threadlock$
--;
-- Count a failed attempt of each of p_ids still pending; one that reaches p_max_attempts
-- becomes a dead letter (the newest p_kept of a key are kept). The ids that died, or NULL
-- (nothing changes) if the lease of p_token is not live.
CREATE OR REPLACE FUNCTION {inbox_nack}(
    p_key text, p_token text, p_ids text[], p_max_attempts integer, p_kept integer)
RETURNS text[] LANGUAGE plpgsql AS $threadlock$
DECLARE
    v_now timestamptz;
    v_dead text[];
BEGIN
    PERFORM pg_advisory_xact_lock({lockclass}, hashtext(p_key));
    v_now := clock_timestamp();
    IF NOT {inbox_mine}(p_key, p_token, v_now) THEN
        RETURN NULL;
    END IF;
    WITH counted AS (
        UPDATE {inbox} i SET attempts = i.attempts + 1,
                             pending = i.attempts + 1 < p_max_attempts
         WHERE i.key = p_key AND i.id = ANY (p_ids) AND i.pending
        RETURNING i.*
    ), died AS (
        INSERT INTO {inbox_dead} (key, id, payload, posted_at, attempts, died_at)
        SELECT c.key, c.id, c.payload, c.posted_at, c.attempts, date_part('epoch', v_now)
          FROM counted c WHERE NOT c.pending ORDER BY c.seq
        RETURNING id
    )
    SELECT coalesce(array_agg(d.id::text), ARRAY[]::text[]) INTO v_dead FROM died d;
    DELETE FROM {inbox_dead} d
     WHERE d.key = p_key
       AND d.seq < (SELECT k.seq FROM {inbox_dead} k WHERE k.key = p_key
                     ORDER BY k.seq DESC OFFSET p_kept - 1 LIMIT 1);
    RETURN v_dead;
END
$threadlock$
