"""subset and load: project and transform the retained fields inside Postgres, then commit them to the cache.

``subset`` writes ``<run key>__subset`` (sfid plus each retained field through its transform) from the staging
table, set-based; ``load`` upserts it into ``cache.<table>`` in one transaction, keyed by sfid, so re-running
either rewrites the same rows and never duplicates them. Cascade children go the same way into their own tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg import sql

from retention.cache import column, upsert_retained
from retention.hooks.store import LEDGER_SCHEMA
from retention.steps.run import RetentionError

if TYPE_CHECKING:
    from retention.hooks.store import RetentionStoreHook
    from retention.policy import Policy
    from retention.steps.run import Run


def needs_hash_key(policy: Policy) -> bool:
    """Whether any retained field (the parent's or a cascade child's) is a keyed hash."""
    return any(t.kind == "hash" for retain in (policy.retain, *(c.retain for c in policy.cascade))
               for t in retain.fields.values())


def subset(store: RetentionStoreHook, policy: Policy, run: Run, hash_key: bytes | None) -> int:
    """The subset step: the parent's subset table and each cascade child's; returns the parent rows."""
    from retention import cascade

    with store.connect() as conn:
        rows = subset_table(conn, policy.retain.fields, run.staging, run.subset, hash_key)
        cascade.subset(conn, policy, run, hash_key)
        return rows


def subset_table(conn, fields: dict, staging: sql.Identifier, subset: sql.Identifier, hash_key: bytes | None, *,
                 parent_column: str | None = None) -> int:
    """Write ``subset`` (sfid, [_parent_sfid], the retained fields transformed) from ``staging``, in Postgres."""
    from retention import transforms

    types = dict(conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped", (staging.as_string(conn),),
    ).fetchall())
    items = list(fields.items())
    if any(t.kind == "hash" for _, t in items) and not hash_key:
        raise RetentionError("policy retains a hashed field but no hash key is configured (Airflow connection "
                             "'retention_hash_key' or variable 'retention_hash_key')")
    col_defs = [sql.SQL("sfid varchar(18) PRIMARY KEY")]
    exprs: list[sql.Composable] = [sql.Identifier("s", "sfid")]
    if parent_column:
        col_defs.append(sql.SQL("_parent_sfid varchar(18) NOT NULL"))
        exprs.append(sql.Identifier("s", parent_column.lower()))
    col_defs += [sql.SQL("{} {}").format(column(n), sql.SQL(transforms.result_type(t.kind, types[n.lower()])))
                 for n, t in items]
    exprs += [transforms.expression(t.kind, t.n, sql.Identifier("s", n.lower()), schema=LEDGER_SCHEMA)
              for n, t in items]
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(subset))
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(subset, sql.SQL(", ").join(col_defs)))
    return conn.execute(
        sql.SQL("INSERT INTO {} SELECT {} FROM {} s").format(subset, sql.SQL(", ").join(exprs), staging),
        {transforms.KEY_PARAM: hash_key or b""},
    ).rowcount


def load(store: RetentionStoreHook, policy: Policy, run: Run) -> int:
    """The load step: upsert the subset (and each cascade child's) into the cache in one transaction (idempotent);
    returns the parent rows written."""
    from retention import cascade

    with store.connect() as conn:
        rows = upsert_retained(conn, policy.retain.table, list(policy.retain.fields), run.subset, policy, run)
        cascade.load(conn, policy, run)
    return rows
