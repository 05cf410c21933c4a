-- Migration 3: retire version 1's entry points and the helpers only they used.
--
-- A database upgraded from version 1 still has version 1's acquire (8 arguments) and release
-- (2 arguments), which call {grant_next} and {settle}. Where they exist, they are replaced by
-- thin wrappers over the current {acquire} and {release} (same signatures, same results, every
-- commit synchronous), so a process still running version 1 keeps working during a rolling
-- upgrade; a fresh database never gets them. Then the version-1 helpers ({grant_next},
-- {settle}) and version 2's {hand_on} (now {grant_head_waiter}) are dropped.
DO $migrate$
BEGIN
    IF to_regprocedure({v1_acquire_signature}) IS NOT NULL THEN
        EXECUTE $ddl$
CREATE OR REPLACE FUNCTION {acquire}(
    p_key text, p_token text, p_wid text, p_owner text, p_ttl double precision,
    p_grace double precision, p_enqueue boolean, p_seq bigint)
RETURNS TABLE (
    o_status text, o_fence bigint, o_acquired_at double precision,
    o_expires_at double precision, o_seq bigint, o_ahead bigint, o_h_fence bigint,
    o_h_owner text, o_h_acquired_at double precision, o_h_expires_at double precision,
    o_waiters bigint, o_left double precision)
LANGUAGE plpgsql AS $threadlock$
BEGIN
    RETURN QUERY
    SELECT a.o_status, a.o_fence, a.o_acquired_at, a.o_expires_at, a.o_seq, a.o_ahead,
           a.o_h_fence, a.o_h_owner, a.o_h_acquired_at, a.o_h_expires_at, a.o_waiters,
           a.o_left
      FROM {acquire}(p_key, p_token, p_wid, p_owner, p_ttl, p_grace, p_enqueue, p_seq,
                     false) a;
END
$threadlock$
        $ddl$;
    END IF;
    IF to_regprocedure({v1_release_signature}) IS NOT NULL THEN
        EXECUTE $ddl$
CREATE OR REPLACE FUNCTION {release}(p_key text, p_token text)
RETURNS boolean LANGUAGE plpgsql AS $threadlock$
DECLARE
    v_released boolean;
BEGIN
    SELECT r.o_released INTO v_released FROM {release}(p_key, p_token, false, NULL::text) r;
    RETURN v_released;
END
$threadlock$
        $ddl$;
    END IF;
END
$migrate$
--;
DROP FUNCTION IF EXISTS {settle}(text, timestamptz)
--;
DROP FUNCTION IF EXISTS {grant_next}(text, timestamptz)
--;
DROP FUNCTION IF EXISTS {hand_on}(text, timestamptz, text)
