"""Schema management: ``create_schema``, the version table and the upgrade of older schemas.

The SQL is in ``sql/schema.sql``. Nothing runs on import or on first use: only an explicit
``create_schema`` (or ``threadlock create-schema --url ...``) creates or upgrades the schema.
Names are filled in with ``psycopg.sql`` (quoted identifiers and literals), never by string
formatting of user values.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from threadlock.backends.postgres.statements import object_name
from threadlock.errors import BackendError

__all__ = ["SCHEMA_VERSION", "create_schema"]

#: The schema version ``create_schema`` installs; stored in ``threadlock_schema_version``.
#: Version 2 added the run registry, the chain heads and the leaner lease functions; an
#: existing version-1 schema is upgraded in place by ``create_schema``.
SCHEMA_VERSION = 2

VERSION_TABLE = "threadlock_schema_version"
# One advisory lock (the bigint key space) serialises every create_schema on a database.
_SCHEMA_LOCK_ID = 0x7468726561646C6B  # "threadlk"


def _load_statements() -> list[str]:
    text = (
        resources.files("threadlock.backends.postgres")
        .joinpath("sql/schema.sql")
        .read_text(encoding="utf-8")
    )
    chunks = [chunk.strip() for chunk in re.split(r"^--;$", text, flags=re.MULTILINE)]
    statements = []
    for chunk in chunks:
        lines = chunk.splitlines()
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
    """Create or upgrade the objects of ``table`` on ``conn`` (an autocommit connection).

    All of it is one transaction under one advisory lock, so concurrent calls are safe.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_ID,))
        await _install(
            conn,
            table=table,
            schema=schema,
            unlogged=unlogged,
            channel=channel,
            lockclass=lockclass,
        )


async def _install(
    conn: psycopg.AsyncConnection[Any],
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
    if row is not None and int(row[0]) == SCHEMA_VERSION:
        return
    # A fresh install and an upgrade run the same idempotent statements.
    # Relaxed commits are sound only where a grant's own commit flushes WAL, i.e. when the
    # lease table is logged (see schema.sql); an existing table keeps its persistence.
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
        "grant_next": name("_grant_next"),
        "hand_on": name("_hand_on"),
        "settle": name("_settle"),
        "sweep": name("_sweep"),
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
    for statement in _load_statements():
        await conn.execute(sql.SQL(statement).format(**names))
    await conn.execute(
        sql.SQL(
            "INSERT INTO {} (table_name, version, unlogged) VALUES (%s, %s, %s)"
            " ON CONFLICT (table_name) DO UPDATE SET version = excluded.version,"
            " updated_at = now()"
        ).format(version_table),
        (table, SCHEMA_VERSION, unlogged),
    )
