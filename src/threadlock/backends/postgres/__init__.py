"""Postgres backend: a lease table, a FIFO waiter table, LISTEN/NOTIFY hand-off, fences, and
the run registry and chain heads of the OpenAI guards.

Install with ``pip install 'threadlock[postgres]'`` (psycopg 3 and psycopg-pool). The schema
is created only by an explicit :meth:`PostgresThreadLock.create_schema` (or
``threadlock create-schema --url ...``), never on import or first use.

The package, by module:

* ``lock``: :class:`PostgresThreadLock`, acquire/release/extend and how they keep FIFO
  hand-off, fences and exclusion;
* ``pool``: the pooled connections and the one shielded, bounded way a statement runs;
* ``listener``: the one LISTEN connection per instance and the waiters it wakes;
* ``statements``: the SQL text of every operation (identifiers quoted, values bound);
* ``schema`` (+ ``sql/``): ``create_schema``, the version table and the upgrades;
* ``registry``: the run registry and the chain heads.

Importing this package needs psycopg; ``import threadlock`` and ``import threadlock.backends``
do not import it.
"""

from __future__ import annotations

from threadlock._optional import require

require("psycopg", "postgres")
require("psycopg_pool", "postgres")

from threadlock.backends.postgres.lock import PostgresThreadLock  # noqa: E402
from threadlock.backends.postgres.schema import SCHEMA_VERSION  # noqa: E402

__all__ = ["SCHEMA_VERSION", "PostgresThreadLock"]
