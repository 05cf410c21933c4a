"""Schema management: ``create_schema``, the version table and the numbered migrations.

The SQL is in ``sql/``: ``NNN_*.sql`` are the migrations, applied in order, each in its own
transaction under one advisory lock (so concurrent ``create_schema`` calls are safe), each
recording its number in ``threadlock_schema_version``; ``functions.sql`` holds the current
functions, installed in the transaction of the last migration. Nothing runs on import or on
first use. Names are filled in with ``psycopg.sql`` (quoted identifiers and literals), never
by string formatting of user values.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from threadlock.backends.postgres.statements import object_name
from threadlock.errors import BackendError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "create_schema"]

VERSION_TABLE = "threadlock_schema_version"
# One advisory lock (the bigint key space) serialises every create_schema on a database.
_SCHEMA_LOCK_ID = 0x7468726561646C6B  # "threadlk"
_MIGRATION_RE = re.compile(r"(\d{3})_[a-z0-9_]+\.sql")
_SQL = resources.files("threadlock.backends.postgres").joinpath("sql")


def _migrations() -> list[tuple[int, str]]:
    found = []
    for entry in _SQL.iterdir():
        match = _MIGRATION_RE.fullmatch(entry.name)
        if match is not None:
            found.append((int(match.group(1)), entry.name))
    found.sort()
    if [number for number, _ in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"threadlock: the Postgres migrations are not numbered 1..n: {found}")
    return found


#: The numbered migrations, ``(number, file name)`` in order.
MIGRATIONS = _migrations()

#: The schema version ``create_schema`` installs: the number of the last migration.
SCHEMA_VERSION = MIGRATIONS[-1][0]


def _statements(name: str) -> list[str]:
    text = _SQL.joinpath(name).read_text(encoding="utf-8")
    statements = []
    for chunk in re.split(r"^--;$", text, flags=re.MULTILINE):
        lines = chunk.strip().splitlines()
        while lines and lines[0].startswith("--"):  # leading comments only
            lines.pop(0)
        if lines:
            statements.append("\n".join(lines))
    return statements


async def create_schema(
    conn: psycopg.AsyncConnection[Any],
    *,
    table: str,
    schema: str | None,
    unlogged: bool,
    channel: str,
    lockclass: int,
) -> None:
    """Apply the migrations ``table`` lacks on ``conn`` (an autocommit connection), in order.

    Each migration is one transaction that takes the schema advisory lock, re-reads the
    recorded version (another process may have applied it meanwhile), applies the migration
    (and, for the last one, the current functions) and records its number.
    """
    for number, file_name in MIGRATIONS:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_ID,))
            await _apply(
                conn,
                number,
                file_name,
                table=table,
                schema=schema,
                unlogged=unlogged,
                channel=channel,
                lockclass=lockclass,
            )


async def _apply(
    conn: psycopg.AsyncConnection[Any],
    number: int,
    file_name: str,
    *,
    table: str,
    schema: str | None,
    unlogged: bool,
    channel: str,
    lockclass: int,
) -> None:
    if schema is None:
        row = await (await conn.execute("SELECT current_schema()")).fetchone()
        if row is None or row[0] is None:
            raise BackendError("create_schema: the search_path names no existing schema")
        schema = str(row[0])
    else:
        found = await (
            await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        ).fetchone()
        if found is None:
            await conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
            )
    version_table = sql.Identifier(schema, VERSION_TABLE)
    await conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (table_name text PRIMARY KEY,"
            " version integer NOT NULL, unlogged boolean NOT NULL,"
            " updated_at timestamptz NOT NULL DEFAULT now())"
        ).format(version_table)
    )
    row = await (
        await conn.execute(
            sql.SQL("SELECT version FROM {} WHERE table_name = %s").format(version_table),
            (table,),
        )
    ).fetchone()
    if row is not None and int(row[0]) > SCHEMA_VERSION:
        raise BackendError(
            f"create_schema: {schema}.{table} has schema version {row[0]}, newer "
            f"than this threadlock's {SCHEMA_VERSION}; upgrade threadlock"
        )
    if row is not None and int(row[0]) >= number:
        return
    # Relaxed commits are sound only where a grant's own commit flushes WAL, i.e. when the
    # lease table is logged (see sql/functions.sql); an existing table keeps its persistence.
    persistence = await (
        await conn.execute(
            "SELECT c.relpersistence FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s"
            " AND c.relkind = 'r'",
            (schema, table),
        )
    ).fetchone()
    is_unlogged = unlogged if persistence is None else persistence[0] == "u"

    def name(suffix: str) -> sql.Identifier:
        return object_name(table, suffix, schema)

    names = {
        "relaxable": sql.SQL("false" if is_unlogged else "true"),
        "leases": name(""),
        "waiters": name("_waiters"),
        "fence_seq": name("_fence_seq"),
        "fence_seq_name": sql.Literal(f'"{schema}"."{table}_fence_seq"'),
        "grant_head_waiter": name("_grant_head_waiter"),
        "grant_next": name("_grant_next"),  # version 1's, dropped by migration 3
        "settle": name("_settle"),  # version 1's, dropped by migration 3
        "hand_on": name("_hand_on"),  # version 2's, dropped by migration 3
        "v1_acquire_signature": sql.Literal(
            f'"{schema}"."{table}_acquire"(text, text, text, text, double precision,'
            " double precision, boolean, bigint)"
        ),
        "v1_release_signature": sql.Literal(f'"{schema}"."{table}_release"(text, text)'),
        "sweep": name("_sweep"),
        "waiters_alive_index": sql.Identifier(f"{table}_w_alive"),  # migration 4
        "leases_expires_index": sql.Identifier(f"{table}_expires"),  # migration 4
        "runs_order_index": sql.Identifier(f"{table}_runs_order"),  # migration 4
        "runs_tracked_index": sql.Identifier(f"{table}_runs_tracked"),  # migration 5
        "chains_updated_index": sql.Identifier(f"{table}_chains_updated"),  # migration 5
        "inbox": name("_inbox"),  # migration 6
        "inbox_dead": name("_inbox_dead"),
        "inbox_seq": name("_inbox_seq"),
        "inbox_seq_name": sql.Literal(f'"{schema}"."{table}_inbox_seq"'),
        "inbox_pending_index": sql.Identifier(f"{table}_inbox_pending"),
        "inbox_batch": name("_inbox_batch"),
        "inbox_mine": name("_inbox_mine"),
        "inbox_post": name("_inbox_post"),
        "inbox_take": name("_inbox_take"),
        "inbox_finish": name("_inbox_finish"),
        "inbox_ack": name("_inbox_ack"),
        "inbox_nack": name("_inbox_nack"),
        "acquire": name("_acquire"),
        "release": name("_release"),
        "extend": name("_extend"),
        "advance_chain": name("_advance_chain"),
        "runs": name("_runs"),
        "chains": name("_chains"),
        "channel": sql.Literal(channel),
        "lockclass": sql.SQL(str(lockclass)),
        "unlogged": sql.SQL("UNLOGGED " if unlogged else ""),
    }
    statements = _statements(file_name)
    if number == SCHEMA_VERSION:
        statements += _statements("functions.sql")
    for statement in statements:
        await conn.execute(sql.SQL(statement).format(**names))
    await conn.execute(
        sql.SQL(
            "INSERT INTO {} (table_name, version, unlogged) VALUES (%s, %s, %s)"
            " ON CONFLICT (table_name) DO UPDATE SET version = excluded.version,"
            " updated_at = now()"
        ).format(version_table),
        (table, number, unlogged),
    )
