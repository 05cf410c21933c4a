-- Migration 1: the lease table, the FIFO waiter table and the fence sequence.
--
-- {leases}    one row per held key (rows of free keys are deleted)
-- {waiters}   the FIFO queue: one row per waiting acquire, ordered by seq
-- {fence_seq} a logged sequence: fences (and waiter seqs) rise across restarts, also when the
--             two tables above are UNLOGGED
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
