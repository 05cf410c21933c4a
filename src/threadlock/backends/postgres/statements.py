"""The SQL text every operation sends: identifiers quoted with ``psycopg.sql``, values bound.

Each query is rendered once per backend instance to ``bytes`` (the identifiers are validated
ASCII, so no connection is needed to quote them, and psycopg caches the parsing of a bytes
query). No value is ever formatted into the text: every key, token and id is a ``%s``
parameter.
"""

from __future__ import annotations

import re
import zlib

from psycopg import sql

__all__ = ["SCHEMA_RE", "TABLE_RE", "Statements", "check_identifier", "lock_class", "object_name"]

TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")
SCHEMA_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def check_identifier(value: object, name: str, pattern: re.Pattern[str], most: int) -> str:
    """``value`` if it is a plain identifier matching ``pattern``, else a TypeError/ValueError."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if pattern.fullmatch(value) is None:
        raise ValueError(
            f"{name} must be a plain identifier (ASCII letters, digits and '_', not starting "
            f"with a digit, at most {most} characters), got {value!r}"
        )
    return value


def lock_class(table: str) -> int:
    """The first key of the table's advisory locks: a signed 32-bit CRC of its name."""
    value = zlib.crc32(table.encode())
    return value - (1 << 32) if value >= 1 << 31 else value


def object_name(table: str, suffix: str, schema: str | None) -> sql.Identifier:
    """The quoted name of the table's object ``<table><suffix>``, schema-qualified if given."""
    name = table + suffix
    return sql.Identifier(schema, name) if schema else sql.Identifier(name)


def _render(query: sql.Composable) -> bytes:
    return query.as_bytes(None)


class Statements:
    """The rendered statements of one lease table (and schema)."""

    __slots__ = (
        "acquire",
        "advance_chain",
        "chain_head",
        "extend",
        "held",
        "inbox_ack",
        "inbox_dead",
        "inbox_finish",
        "inbox_nack",
        "inbox_newest",
        "inbox_pending",
        "inbox_post",
        "inbox_stranded",
        "inbox_summary",
        "inbox_take",
        "inspect",
        "release",
        "sweep",
        "sweep_registry",
        "track",
        "tracked_all",
        "tracked_key",
        "untrack",
    )

    def __init__(self, table: str, schema: str | None) -> None:
        def name(suffix: str) -> sql.Identifier:
            return object_name(table, suffix, schema)

        leases, waiters, runs = name(""), name("_waiters"), name("_runs")
        chains = name("_chains")
        # A run row lives registry_ttl s after it was first tracked, a chain head chain_ttl s
        # after its last advance; the bound is this parameter (seconds), never in the text.
        kept = sql.SQL("> clock_timestamp() - make_interval(secs => %s::float8)")
        self.acquire = _render(
            sql.SQL(
                "SELECT * FROM {}(%s::text, %s::text, %s::text, %s::text, %s::float8,"
                " %s::float8, %s::boolean, %s::bigint, %s::boolean)"
            ).format(name("_acquire"))
        )
        self.release = _render(
            sql.SQL("SELECT * FROM {}(%s::text, %s::text, %s::boolean, %s::text)").format(
                name("_release")
            )
        )
        self.sweep = _render(sql.SQL("SELECT {}(clock_timestamp())").format(name("_sweep")))
        self.sweep_registry = _render(
            sql.SQL(
                "WITH runs AS (DELETE FROM {runs} WHERE tracked_at"
                " <= clock_timestamp() - make_interval(secs => %s::float8))"
                " DELETE FROM {chains} WHERE updated_at"
                " <= clock_timestamp() - make_interval(secs => %s::float8)"
            ).format(runs=runs, chains=chains)
        )
        self.extend = _render(
            sql.SQL("SELECT * FROM {}(%s::text, %s::text, %s::float8)").format(name("_extend"))
        )
        info = sql.SQL(
            "SELECT l.key, l.fence, l.owner, date_part('epoch', l.acquired_at),"
            " date_part('epoch', l.expires_at),"
            " (SELECT count(*) FROM {waiters} w"
            "   WHERE w.key = l.key AND w.alive_until > clock_timestamp()),"
            " (SELECT r.run_id FROM {runs} r WHERE r.key = l.key ORDER BY r.seq DESC LIMIT 1)"
            " FROM {leases} l WHERE l.expires_at > clock_timestamp()"
        ).format(leases=leases, waiters=waiters, runs=runs)
        self.inspect = _render(info + sql.SQL(" AND l.key = %s::text"))
        self.held = _render(info + sql.SQL(" ORDER BY l.acquired_at, l.key"))
        record = sql.SQL("key, kind, run_id, thread_id, created_at, fence, owner")
        self.track = _render(
            sql.SQL(
                "INSERT INTO {runs} ({record}) VALUES (%s::text, %s::text, %s::text, %s::text,"
                " %s::float8, %s::bigint, %s::text) ON CONFLICT (key, run_id) DO UPDATE SET"
                " kind = excluded.kind, thread_id = excluded.thread_id,"
                " created_at = excluded.created_at, fence = excluded.fence,"
                " owner = excluded.owner"
            ).format(runs=runs, record=record)
        )
        self.untrack = _render(
            sql.SQL("DELETE FROM {} WHERE key = %s::text AND run_id = %s::text").format(runs)
        )
        self.tracked_key = _render(
            sql.SQL("SELECT {} FROM {} WHERE key = %s::text AND tracked_at {} ORDER BY seq").format(
                record, runs, kept
            )
        )
        self.tracked_all = _render(
            sql.SQL("SELECT {} FROM {} WHERE tracked_at {} ORDER BY created_at, seq").format(
                record, runs, kept
            )
        )
        self.chain_head = _render(
            sql.SQL("SELECT head FROM {} WHERE key = %s::text AND updated_at {}").format(
                chains, kept
            )
        )
        self.advance_chain = _render(
            sql.SQL("SELECT {}(%s::text, %s::text, %s::text, %s::text, %s::float8)").format(
                name("_advance_chain")
            )
        )
        # The inbox (migration 6; the functions are in sql/functions.sql).
        inbox = name("_inbox")
        self.inbox_post = _render(
            sql.SQL("SELECT {}(%s::text, %s::text, %s::text, %s::integer, %s::float8)").format(
                name("_inbox_post")
            )
        )
        self.inbox_take = _render(
            sql.SQL("SELECT * FROM {}(%s::text, %s::text, %s::integer)").format(name("_inbox_take"))
        )
        self.inbox_finish = _render(
            sql.SQL(
                "SELECT * FROM {}(%s::text, %s::text, %s::integer, %s::boolean, %s::text)"
            ).format(name("_inbox_finish"))
        )
        self.inbox_ack = _render(
            sql.SQL("SELECT {}(%s::text, %s::text, %s::text[])").format(name("_inbox_ack"))
        )
        self.inbox_nack = _render(
            sql.SQL("SELECT {}(%s::text, %s::text, %s::text[], %s::integer, %s::integer)").format(
                name("_inbox_nack")
            )
        )
        self.inbox_pending = _render(
            sql.SQL("SELECT * FROM {}(%s::text, 0, clock_timestamp())").format(name("_inbox_batch"))
        )
        self.inbox_newest = _render(
            sql.SQL(
                "SELECT coalesce(max(i.seq), 0) FROM {} i WHERE i.key = %s::text AND i.pending"
            ).format(inbox)
        )
        self.inbox_dead = _render(
            sql.SQL(
                "SELECT id, payload, posted_at, attempts, died_at FROM {}"
                " WHERE key = %s::text ORDER BY seq"
            ).format(name("_inbox_dead"))
        )
        # Keys with a pending message and no live lease (crash recovery's sweep).
        self.inbox_stranded = _render(
            sql.SQL(
                "SELECT DISTINCT i.key FROM {inbox} i WHERE i.pending AND NOT EXISTS"
                " (SELECT 1 FROM {leases} l WHERE l.key = i.key"
                " AND l.expires_at > clock_timestamp()) ORDER BY i.key LIMIT %s::integer"
            ).format(inbox=inbox, leases=leases)
        )
        # Per key: pending messages and dead letters (``threadlock status --inbox``).
        self.inbox_summary = _render(
            sql.SQL(
                "SELECT k.key, (SELECT count(*) FROM {inbox} i WHERE i.key = k.key AND i.pending),"
                " (SELECT count(*) FROM {dead} d WHERE d.key = k.key)"
                " FROM (SELECT key FROM {inbox} WHERE pending UNION SELECT key FROM {dead}) k"
                " ORDER BY k.key LIMIT %s::integer"
            ).format(inbox=inbox, dead=name("_inbox_dead"))
        )
