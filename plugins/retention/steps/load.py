"""subset and load: project and transform the retained fields inside Postgres, then commit them to the cache.

``subset`` writes ``<run key>__subset`` (sfid plus each retained field through its transform) from the staging
table, set-based; ``load`` writes it into ``cache.<table>`` in one transaction (new rows by ``COPY``), keyed by
sfid, so re-running either rewrites the same rows and never duplicates them. Cascade children go the same way
into their own tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg import sql

from retention.cache import analyze, column, table, upsert_retained
from retention.encryption import KEY_CONN_ID
from retention.hooks.store import LEDGER_SCHEMA
from retention.steps.run import RetentionError

if TYPE_CHECKING:
    from collections.abc import Collection

    from retention.encryption import Keyring
    from retention.hooks.store import RetentionStoreHook
    from retention.policy import Policy
    from retention.steps.run import Run


def needs_hash_key(policy: Policy) -> bool:
    """Whether any retained field (the parent's or a cascade child's) is a keyed hash."""
    return any(t.kind == "hash" for retain in (policy.retain, *(c.retain for c in policy.cascade))
               for t in retain.fields.values())


def needs_encryption_key(policy: Policy) -> bool:
    """Whether any retained field (the parent's or a cascade child's) is stored encrypted."""
    return any(retain.encrypt for retain in (policy.retain, *(c.retain for c in policy.cascade)))


def subset(store: RetentionStoreHook, policy: Policy, run: Run, hash_key: bytes | None,
           keyring: Keyring | None = None) -> int:
    """The subset step: the parent's subset table and each cascade child's; returns the parent rows."""
    from retention import cascade

    with store.connect() as conn:
        rows = subset_table(conn, policy.retain.fields, run.staging, run.subset, hash_key,
                            encrypt=policy.retain.encrypt, cache_table=policy.retain.table, keyring=keyring)
        cascade.subset(conn, policy, run, hash_key, keyring)
        return rows


def subset_table(conn, fields: dict, staging: sql.Identifier, subset: sql.Identifier, hash_key: bytes | None, *,
                 parent_column: str | None = None, encrypt: Collection[str] = (), cache_table: str = "",
                 keyring: Keyring | None = None) -> int:
    """Write ``subset`` (sfid, [_parent_sfid], the retained fields transformed) from ``staging``, in Postgres; the
    ``encrypt`` fields as ciphertext bound to their place in ``cache.<cache_table>``, before the transaction commits,
    so that no committed row of the subset (and so of the cache) holds them in plain text."""
    from retention import transforms

    types = dict(conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped", (staging.as_string(conn),),
    ).fetchall())
    items = list(fields.items())
    if any(t.kind == "hash" for _, t in items) and not hash_key:
        raise RetentionError("policy retains a hashed field but no hash key is configured (Airflow connection "
                             "'retention_hash_key' or variable 'retention_hash_key')")
    if encrypt and keyring is None:
        raise RetentionError(f"policy encrypts {', '.join(encrypt)} (retain.encrypt) but no encryption key is "
                             f"configured (Airflow connection '{KEY_CONN_ID}', password: a base64 key)")
    # No key of its own: each row is one row of ``staging``, whose primary key already makes sfid unique, and an
    # index built here would cost the subset step a third of its time at a million rows (docs/benchmarks.md).
    col_defs = [sql.SQL("sfid varchar(18) NOT NULL")]
    exprs: list[sql.Composable] = [sql.Identifier("s", "sfid")]
    if parent_column:
        col_defs.append(sql.SQL("_parent_sfid varchar(18) NOT NULL"))
        exprs.append(sql.Identifier("s", parent_column.lower()))
    col_defs += [sql.SQL("{} {}").format(column(n), sql.SQL(
        "text" if n in encrypt else transforms.result_type(t.kind, types[n.lower()]))) for n, t in items]
    # An encrypted field is the Postgres text form of its retained value: what `decrypt` gives back.
    exprs += [sql.SQL("({})::text" if n in encrypt else "{}").format(
        transforms.expression(t.kind, t.n, sql.Identifier("s", n.lower()), schema=LEDGER_SCHEMA)) for n, t in items]
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(subset))
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(subset, sql.SQL(", ").join(col_defs)))
    rows = conn.execute(
        sql.SQL("INSERT INTO {} SELECT {} FROM {} s").format(subset, sql.SQL(", ").join(exprs), staging),
        {transforms.KEY_PARAM: hash_key or b""},
    ).rowcount
    if encrypt:
        _encrypt_subset(conn, subset, cache_table, [n for n in fields if n in encrypt], keyring)
    return rows


# Rows encrypted per round trip: bounds the worker's memory whatever the run's size.
ENCRYPT_BATCH = 5000


def _encrypt_subset(conn, subset: sql.Identifier, cache_table: str, names: list[str], keyring: Keyring) -> None:
    """Replace the subset's ``names`` columns with their ciphertext: streamed out in batches through a server-side
    cursor, encrypted here (the store may have no pgcrypto), copied into a temporary table, then one UPDATE."""
    sealed = sql.Identifier("retention_sealed")
    cols = [column(n) for n in names]
    conn.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(sealed))
    conn.execute(sql.SQL("CREATE TEMP TABLE {} (sfid varchar(18) PRIMARY KEY, {}) ON COMMIT DROP").format(
        sealed, sql.SQL(", ").join(sql.SQL("{} text").format(c) for c in cols)))
    with conn.cursor(name="retention_encrypt") as plain:
        plain.execute(sql.SQL("SELECT sfid, {} FROM {}").format(sql.SQL(", ").join(cols), subset))
        while batch := plain.fetchmany(ENCRYPT_BATCH):
            with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(sealed)) as copy:
                for sfid, *values in batch:
                    copy.write_row([sfid, *keyring.encrypt_row(cache_table, sfid, names, values)])
    conn.execute(sql.SQL("UPDATE {} s SET {} FROM {} e WHERE s.sfid = e.sfid").format(
        subset, sql.SQL(", ").join(sql.SQL("{c} = e.{c}").format(c=c) for c in cols), sealed))
    conn.execute(sql.SQL("DROP TABLE {}").format(sealed))


def load(store: RetentionStoreHook, policy: Policy, run: Run) -> int:
    """The load step: upsert the subset (and each cascade child's) into the cache in one transaction (idempotent);
    returns the parent rows written. A second connection streams the new rows out of the subset tables (which
    the subset step committed) while the first copies them in."""
    from retention import cascade

    with store.connect() as conn, store.connect() as reader:
        rows = upsert_retained(conn, policy.retain.table, list(policy.retain.fields), run.subset, policy, run,
                               reader=reader)
        cascade.load(conn, policy, run, reader=reader)
    with store.connect() as conn:  # committed: validate's and act's queries are planned on what was loaded
        analyze(conn, table(policy.retain.table), *(table(child.retain.table) for child in policy.cascade))
    return rows
