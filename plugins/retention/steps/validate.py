"""validate: the gate before anything destructive. eligible = staged = retained, sfid unique and not null in the
store (Great Expectations over this run's retained rows), and the org's own count agrees; the same for each
cascade child. A failure stops the run with the numbers, and nothing is deleted or masked."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

import structlog
from psycopg import sql

from retention.cache import table
from retention.hooks.store import CACHE_SCHEMA, STAGING_SCHEMA
from retention.steps.results import ChildValidated, Chunk, Validated
from retention.steps.run import RetentionError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook
    from retention.hooks.store import RetentionStoreHook
    from retention.policy import Policy
    from retention.steps.results import Extracted
    from retention.steps.run import Run

# Airflow's own logging (structlog): lines land in the task's log, as an operator's self.log would.
log = structlog.get_logger(__name__)


def validate(store: RetentionStoreHook, sf: SalesforceBulk2Hook, policy: Policy, run: Run, extracted: Extracted, *,
             docs_dir: Path) -> Validated:
    """The step: one Salesforce login for the parents' count and the children's; Data Docs in ``docs_dir``."""
    from retention.validation import RowCounts, validate_retained

    with gate_table(store, run.run_key, retained_query(policy, run), run.staging) as (batch, staged, retained):
        # The org counts every record matching the policy, including held ones and ones an earlier run already
        # retained and masked; what remains must equal this run's eligible count.
        in_org = sf.count(extracted.count_soql)
        org_eligible = in_org - extracted.held - extracted.done - len(extracted.blocked)
        counts = RowCounts(eligible=extracted.eligible, staged=staged, retained=retained, salesforce=org_eligible)
        result = validate_retained(
            store.get_uri(), batch_table=batch, schema=CACHE_SCHEMA, table=policy.retain.table,
            run_column="_retention_run", run_value=run.run_key, counts=counts, policy_id=policy.id,
            run_label=run.run_key, docs_dir=docs_dir,
        )
    _gate(result, counts)
    return Validated(message=result.message, counts=result.details.get("counts"), salesforce_total=in_org,
                     data_docs=result.details.get("data_docs"),
                     children=_children(store, sf, policy, run, extracted, docs_dir),
                     chunks=plan_chunks(store, policy, run))


def gate_name(name: str) -> str:
    """The gate's working table for the run (or cascade child) whose staging table is ``name``: lower case, as GX
    names a table asset's table unquoted."""
    return f"{name.lower()}__gate"


@contextmanager
def gate_table(store: RetentionStoreHook, name: str, retained: sql.Composable,
               staging: sql.Identifier) -> Iterator[tuple[tuple[str, str], int, int]]:
    """The rows the gate checks, taken once from the cache into a working table ``<name>__gate`` (one join of the
    cache with staging, where Great Expectations would run it again for each of its queries); yields its (schema,
    table) for GX, the staged count and the retained count, and drops it after."""
    batch = (STAGING_SCHEMA, gate_name(name))
    gate = sql.Identifier(*batch)
    with store.connect() as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(gate))
        # Unlogged: a working copy dropped within the step needs no write-ahead log (a crash empties it, and the
        # step's retry takes it again). Never analysed: GX's uniqueness check is `sfid NOT IN (SELECT sfid ... GROUP
        # BY sfid HAVING count(*) > 1)`, which Postgres runs in about a second over 800,000 rows as planned without
        # statistics, but, once autovacuum has analysed the table (within a minute of its creation), plans to spill
        # and re-run the grouping for every row: two minutes there, hours at ten million.
        retained_rows = conn.execute(sql.SQL("CREATE UNLOGGED TABLE {} WITH (autovacuum_enabled = false) AS {}")
                                     .format(gate, retained)).rowcount
        staged = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(staging)).fetchone()[0]
    try:
        yield batch, staged, retained_rows
    finally:
        with store.connect() as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(gate))


def plan_chunks(store: RetentionStoreHook, policy: Policy, run: Run) -> list[Chunk]:
    """The staged records in ``guards.chunk_records`` shares by sfid, for the mapped act and verify tasks. The first
    chunk starts at the beginning and the last runs to the end, so a record always has a chunk; a run with nothing
    staged still has one (it settles jobs an earlier attempt left)."""
    with store.connect() as conn:
        rows = conn.execute(sql.SQL(
            "SELECT max(sfid), count(*) FROM (SELECT sfid, (row_number() OVER (ORDER BY sfid) - 1) / %s AS n "
            "FROM {}) t GROUP BY n ORDER BY n").format(run.staging), (policy.guards.chunk_records,)).fetchall()
    if not rows:
        return [Chunk(index=0)]
    return [Chunk(index=n, after=rows[n - 1][0] if n else None, upto=last if n < len(rows) - 1 else None,
                  records=count) for n, (last, count) in enumerate(rows)]


def retained_query(policy: Policy, run: Run) -> sql.Composed:
    """This run's retained rows: cache rows of the staged records, written by this run. Their sfid only: it is all
    the gate checks."""
    return sql.SQL("SELECT c.sfid FROM {} c JOIN {} s USING (sfid) WHERE c._retention_run = {}").format(
        table(policy.retain.table), run.staging, sql.Literal(run.run_key))


def _gate(result, counts) -> None:
    docs = result.details.get("data_docs")
    log.info("%s; Data Docs: %s", result.message, docs)
    if not result.success:
        from retention.validation import count_mismatches

        raise RetentionError(f"{result.message}. Nothing was deleted or masked. Data Docs: {docs}",
                             details={"counts": count_mismatches(counts), "data_docs": docs})


def _children(store: RetentionStoreHook, sf: SalesforceBulk2Hook, policy: Policy, run: Run, extracted: Extracted,
              docs_dir: Path) -> dict[str, ChildValidated]:
    """The same gate for each cascade child: every child the parents' delete takes is retained. The org counts the
    candidates (children of every parent past the cutoff); those the run left with their parents (held, blocked,
    done, outside the filter) are subtracted as the source counted them."""
    from retention import cascade
    from retention.validation import RowCounts, validate_retained

    out: dict[str, ChildValidated] = {}
    if not policy.cascade:
        return out
    for n, (child, info) in enumerate(zip(policy.cascade, extracted.children, strict=True)):
        in_org = sf.count(cascade.org_count_soql(policy, run, n, extracted.date_type))
        with gate_table(store, cascade.staging_name(run, n), cascade.retained_query(policy, run, n, "c.sfid"),
                        cascade.staging(run, n)) as (batch, staged, retained):
            counts = RowCounts(eligible=info.staged, staged=staged, retained=retained,
                               salesforce=in_org - (info.candidates - info.staged))
            result = validate_retained(
                store.get_uri(), batch_table=batch, schema=CACHE_SCHEMA, table=child.retain.table,
                run_column="_retention_run", run_value=run.run_key, counts=counts, policy_id=policy.id,
                run_label=f"{run.run_key} ({child.object})", docs_dir=docs_dir,
            )
        _gate(result, counts)
        out[child.object] = ChildValidated(counts=result.details.get("counts"), salesforce_candidates=in_org)
    return out
