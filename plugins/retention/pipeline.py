"""The steps of one policy run, as plain functions over the hooks (the operators only call these).

A run is identified by its **run key** (policy id + logical date): every table and row it writes
carries it, so a retry or a re-run of the same date finds its own work instead of duplicating it.
The order of the steps carries the product's invariant: nothing is deleted or masked in Salesforce
unless its retained copy is committed in ``cache`` and this run's validation passed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg import ClientCursor, sql

from retention.hooks.store import CACHE_SCHEMA, LEDGER_SCHEMA, MIRROR_SCHEMA, STAGING_SCHEMA

if TYPE_CHECKING:
    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook
    from retention.hooks.store import RetentionStoreHook
    from retention.policy import Policy

log = logging.getLogger(__name__)
UTC = dt.UTC

# Salesforce type -> staging column type, matching Heroku Connect's mirror types so that both sources
# stage identical tables (datetimes as UTC timestamps without time zone, as Connect stores them).
STAGING_TYPES = {
    "id": "varchar(18)", "reference": "varchar(18)", "date": "date", "datetime": "timestamp",
    "boolean": "boolean", "double": "double precision", "currency": "double precision", "percent": "double precision",
    "int": "integer", "textarea": "text",
}
# Cache bookkeeping columns, beside the retained fields; Salesforce field names never start with '_'.
STATUS_COLUMNS = (
    ("_retention_policy", "text NOT NULL"),
    ("_retention_run", "text NOT NULL"),
    ("_retained_at", "timestamptz NOT NULL"),
    ("_action", "text NOT NULL"),
    ("_action_status", "text NOT NULL"),  # pending | submitting | submitted | done | failed | refused | held
    ("_action_error", "text"),
    ("_action_at", "timestamptz"),
    ("_bulk_job_id", "text"),
)
ACTION_OPERATION = {"delete": "delete", "hard_delete": "hardDelete", "mask": "update"}
# Per-record errors meaning the record is already in the state we want (e.g. a retry after the job
# ran): the action is done, not failed.
ALREADY_DONE = {"delete": ("ENTITY_IS_DELETED",), "hard_delete": ("ENTITY_IS_DELETED",), "mask": ()}
# Per-record refusals no retry changes: Salesforce refuses the record the same way until a person changes the
# record or the org (a converted lead is read only; a record in use by another cannot be deleted; a validation
# rule or the user's access says no). They become `refused`: kept retained, reported with the code, never
# selected again, a warning rather than a failed run. Every other code (UNABLE_TO_LOCK_ROW,
# API_TEMPORARILY_UNAVAILABLE, one not known here) stays `failed`: the run fails and the record is retried.
PERMANENT_REFUSALS = frozenset({
    "CANNOT_UPDATE_CONVERTED_LEAD", "DELETE_FAILED", "DELETE_REQUIRED_ON_CASCADE", "INSUFFICIENT_ACCESS_OR_READONLY",
    "FIELD_CUSTOM_VALIDATION_EXCEPTION",
})
# Action statuses of records a later run must not select again: their retained copy is final.
SETTLED = ("done", "refused")


class RetentionError(Exception):
    """A run must stop: the message says why, with the numbers; ``details`` carries them for alerts."""

    def __init__(self, message: str, *, details: dict | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


@dataclass(frozen=True)
class Run:
    """One policy run: what it decides and where its working tables are."""

    policy_id: str
    run_key: str
    cutoff: dt.datetime
    dag_run_id: str
    dry_run: bool
    started_at: dt.datetime

    @property
    def staging(self) -> sql.Identifier:
        return sql.Identifier(STAGING_SCHEMA, self.run_key)

    @property
    def sent(self) -> sql.Identifier:
        return sql.Identifier(STAGING_SCHEMA, self.run_key + "__sent")

    @property
    def subset(self) -> sql.Identifier:
        return sql.Identifier(STAGING_SCHEMA, self.run_key + "__subset")


def make_run(policy: Policy, *, logical_date: dt.datetime | None, run_after: dt.datetime, dag_run_id: str,
             params: dict[str, Any], started_at: dt.datetime | None = None) -> Run:
    """The run's cutoff comes from its logical date (or run_after for manual runs), or the ``cutoff`` param."""
    # A plain aware UTC datetime: pendulum drops the zone on subtraction, and a naive cutoff would be read
    # in the store session's time zone.
    anchor = dt.datetime.fromtimestamp((logical_date or run_after).timestamp(), UTC)
    override = params.get("cutoff")
    if override:
        cutoff = _parse_cutoff(str(override))
        anchor = cutoff + dt.timedelta(days=policy.select.older_than_days)
    else:
        cutoff = anchor - dt.timedelta(days=policy.select.older_than_days)
    run_key = f"{policy.id}__{anchor:%Y%m%dT%H%M%S}"
    return Run(policy.id, run_key, cutoff, dag_run_id, bool(params.get("dry_run")), started_at or dt.datetime.now(UTC))


def _parse_cutoff(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise RetentionError(f"param cutoff {text!r} is not an ISO date or datetime") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def staged_fields(policy: Policy) -> list[str]:
    """Fields copied into staging: what is retained, what masking reads, and the retention clock."""
    names = {policy.select.date_field, *policy.retain.fields, *(policy.mask or {})}
    return sorted(names, key=str.lower)


def field_types(describe: dict) -> dict[str, str]:
    return {f["name"]: f["type"] for f in describe["fields"]}


def _column(name: str) -> sql.Identifier:
    return sql.Identifier(name.lower())


def _cutoff_value(field_type: str, cutoff: dt.datetime):
    return cutoff.date() if field_type == "date" else cutoff.replace(tzinfo=None)


# ---------------------------------------------------------------------------------------------
# extract


def _already_done(policy: Policy, alias: str) -> sql.Composable:
    """Records an earlier run already retained and acted on, or that Salesforce refused for good (in the cache,
    or since purged from it). They are not eligible again: a masked record must never overwrite its retained
    original, and a refused one would only be refused again."""
    settled = sql.SQL(", ").join(map(sql.Literal, SETTLED))
    return sql.SQL(
        "(EXISTS (SELECT 1 FROM {cache} c WHERE c.sfid = {a}.sfid AND c._action_status IN ({s})) OR EXISTS "
        "(SELECT 1 FROM {purged} p WHERE p.policy_id = {policy} AND p.sfid = {a}.sfid AND p.action_status IN ({s})))"
    ).format(cache=sql.Identifier(CACHE_SCHEMA, policy.retain.table), a=sql.Identifier(alias), s=settled,
             purged=sql.Identifier(LEDGER_SCHEMA, "purged_records"), policy=sql.Literal(policy.id))


def ensure_cache_table(conn, policy: Policy, types: dict[str, str]) -> None:
    """Create ``cache.<table>`` (or add columns a changed policy now retains)."""
    ensure_table(conn, policy.retain.table, policy.retain.fields, types)


def ensure_table(conn, name: str, fields: dict, types: dict[str, str], *, parent: bool = False) -> None:
    """Create one cache table (or add the columns a changed policy now retains); a cascade child's table also
    keeps its parent's sfid."""
    from retention import transforms

    table = sql.Identifier(CACHE_SCHEMA, name)
    retained = [(field, transforms.result_type(t.kind, STAGING_TYPES.get(types[field], "text")))
                for field, t in fields.items()]
    cols = [sql.SQL("sfid varchar(18) PRIMARY KEY")]
    cols += [sql.SQL("_parent_sfid varchar(18) NOT NULL")] if parent else []
    cols += [sql.SQL("{} {}").format(_column(n), sql.SQL(t)) for n, t in retained]
    cols += [sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in STATUS_COLUMNS]
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(table, sql.SQL(", ").join(cols)))
    for field, pg_type in retained:
        conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(table, _column(field),
                                                                                   sql.SQL(pg_type)))
    if parent:
        conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (_parent_sfid)").format(
            sql.Identifier(f"{name[:50]}_parent"), table))


def extract_from_mirror(store: RetentionStoreHook, policy: Policy, run: Run, describe: dict,
                        others: dict[str, dict | None] | None = None, sf: SalesforceBulk2Hook | None = None) -> dict:
    """Stage the eligible, non-held records from the Connect mirror with one INSERT ... SELECT.

    :param others: describes of the objects the policy reads besides its own (sub-selects, cascade children).
    :param sf: the org, asked which parents have children a delete would take (cascade checks).
    """
    from retention import holds, soql_filter

    others = {k.lower(): v for k, v in (others or {}).items()}

    def relation(name: str):
        return sql.Identifier(MIRROR_SCHEMA, name.lower()), field_types(others.get(name.lower()) or {"fields": []})

    types = field_types(describe)
    date_type = types[policy.select.date_field]
    base = [
        sql.SQL("NOT coalesce(m.isdeleted, false)"),
        sql.SQL("m.{} < %s").format(_column(policy.select.date_field)),
    ]
    params: list = [_cutoff_value(date_type, run.cutoff)]
    if policy.select.where:
        where_sql, where_params = soql_filter.to_sql(
            soql_filter.parse(policy.select.where), lambda n: sql.Identifier("m", soql_filter.mirror_column(n)),
            today=run.cutoff.date(), types=types, relation=relation,
        )
        base.append(sql.SQL("({})").format(where_sql))
        params += where_params
    matching = sql.SQL(" AND ").join(base)
    mirror = sql.Identifier(MIRROR_SCHEMA, policy.object.lower())
    hold = holds.in_mirror("m") if policy.select.exclude_privacy_holds else sql.SQL("false")
    done = _already_done(policy, "m")
    cols = sql.SQL(", ").join(sql.Identifier("m", f.lower()) for f in staged_fields(policy))
    with store.connect() as conn:
        ensure_cache_table(conn, policy, types)
        eligible, held, already = conn.execute(
            sql.SQL("SELECT count(*) FILTER (WHERE NOT {done} AND NOT {hold}), count(*) FILTER (WHERE NOT {done} "
                    "AND {hold}), count(*) FILTER (WHERE {done}) FROM {m} m WHERE {w}")
            .format(hold=hold, done=done, m=mirror, w=matching), params,
        ).fetchone()
        _guard(policy, eligible)
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(run.staging))
        # CREATE TABLE AS cannot take bind parameters: a client-side cursor binds them safely instead.
        with ClientCursor(conn) as cur:
            cur.execute(sql.SQL("CREATE TABLE {} AS SELECT m.sfid, {} FROM {} m WHERE {} AND NOT {} AND NOT {}").format(
                run.staging, cols, mirror, matching, done, hold), params)
            staged = cur.rowcount
        conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (sfid)").format(run.staging))
        held_query = sql.SQL("SELECT m.sfid FROM {} m WHERE {} AND NOT {} AND {} ORDER BY 1").format(
            mirror, matching, done, hold)
        held_ids = ([r[0] for r in conn.execute(held_query, params).fetchall()]
                    if policy.select.exclude_privacy_holds else [])
        out = {"eligible": eligible, "held": held, "done": already, "staged": staged, "held_ids": held_ids}
        out = _with_children(conn, sf, policy, run, describe, others, out, holds=None)
        if run.dry_run:
            out["preview"] = preview_rows(conn, policy, run)
            conn.rollback()
    return out


def _with_children(conn, sf: SalesforceBulk2Hook | None, policy: Policy, run: Run, describe: dict,
                   others: dict[str, dict | None], out: dict, *, holds: set[str] | None) -> dict:
    """Stage the cascade children of the staged parents, and take out the parents a delete must not touch: those
    with a held child (counted as held) and those with children the policy does not retain (blocked, with the
    reason). ``holds``: the org's held record ids (None: read holds from the Connect mirror)."""
    from retention import cascade

    relations = cascade.undeclared(policy, describe)
    if not policy.cascade and not relations:
        return out
    others = {k.lower(): v for k, v in (others or {}).items()}
    types = {policy.object: field_types(describe),
             **{c.object: field_types(others[c.object.lower()]) for c in policy.cascade}}
    date_type = types[policy.object][policy.select.date_field]
    cascade.ensure_cache_tables(conn, policy, types)
    if policy.source == "salesforce_api":
        children = cascade.stage_from_salesforce(conn, sf, policy, run, types)
    else:
        children = cascade.stage_from_mirror(conn, policy, run, types)
    held_via = cascade.held_parents(conn, policy, run, holds) if policy.select.exclude_privacy_holds else {}
    blocked = {p: r for p, r in cascade.blocked_parents(conn, sf, policy, run, describe, date_type).items()
               if p not in held_via}
    cascade.drop_parents(conn, policy, run, sorted(set(held_via) | set(blocked)))
    staged = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(run.staging)).fetchone()[0]
    for child, count in zip(children, cascade.staged_counts(conn, policy, run), strict=True):
        child["staged"] = count
    _guard(policy, staged + sum(c["staged"] for c in children))
    return {**out, "eligible": staged, "staged": staged, "held": out["held"] + len(held_via),
            "held_ids": sorted({*out["held_ids"], *held_via}), "held_via_children": held_via, "blocked": blocked,
            "children": children, "date_type": date_type,
            "cascade_relations": [vars(r) for r in relations]}


def _guard(policy: Policy, eligible: int) -> None:
    limit = policy.guards.max_records_per_run
    if eligible > limit:
        raise RetentionError(
            f"{eligible} records are eligible, more than guards.max_records_per_run ({limit}); nothing was "
            "touched. Raise the guard in the policy if this is expected."
        )


def soql_cutoff(run: Run, date_type: str) -> str:
    """The run's cutoff as a SOQL literal for a date or datetime field."""
    return run.cutoff.strftime("%Y-%m-%d" if date_type == "date" else "%Y-%m-%dT%H:%M:%SZ")


def soql_for(policy: Policy, run: Run, fields: list[str], date_type: str, *, count: bool = False) -> str:
    """The policy's selection as SOQL (the where filter re-rendered from its parsed form, never pasted)."""
    from retention import soql_filter

    clauses = [f"{policy.select.date_field} < {soql_cutoff(run, date_type)}"]
    if policy.select.where:
        clauses.append(f"({soql_filter.to_soql(soql_filter.parse(policy.select.where))})")
    head = "COUNT()" if count else ", ".join(["Id", *fields])
    return f"SELECT {head} FROM {policy.object} WHERE {' AND '.join(clauses)}"


def active_holds(sf: SalesforceBulk2Hook) -> set[str]:
    """Record ids under a hold in force in the org now; acting without the holds could touch a held record, so
    an org without PrivacyHold for this user stops the run (RetentionError)."""
    from retention import holds

    try:
        return holds.in_org(sf)
    except holds.HoldsUnavailable as err:
        raise RetentionError(str(err)) from err


def extract_from_salesforce(store: RetentionStoreHook, sf: SalesforceBulk2Hook, policy: Policy, run: Run,
                            describe: dict, others: dict[str, dict | None] | None = None) -> dict:
    """Stage the eligible records from a Bulk 2.0 query, each page streamed into COPY as it arrives."""
    types = field_types(describe)
    fields = staged_fields(policy)
    soql = soql_for(policy, run, fields, types[policy.select.date_field])
    holds = active_holds(sf) if policy.select.exclude_privacy_holds else set()
    columns = sql.SQL(", ").join([sql.SQL("sfid varchar(18) PRIMARY KEY")] + [
        sql.SQL("{} {}").format(_column(f), sql.SQL(STAGING_TYPES.get(types[f], "text"))) for f in fields])
    names = sql.SQL(", ").join([sql.Identifier("sfid")] + [_column(f) for f in fields])
    with store.connect() as conn:
        ensure_cache_table(conn, policy, types)
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(run.staging))
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(run.staging, columns))
        copy = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, HEADER true, FORCE_NULL ({}))").format(
            run.staging, names, sql.SQL(", ").join(_column(f) for f in fields))
        for page in sf.query_pages(policy.object, soql):
            with conn.cursor().copy(copy) as cp:
                cp.write(page)
        already = conn.execute(sql.SQL("DELETE FROM {} s WHERE {}").format(
            run.staging, _already_done(policy, "s"))).rowcount
        held_rows = conn.execute(sql.SQL("DELETE FROM {} WHERE sfid = ANY(%s) RETURNING sfid").format(run.staging),
                                 (sorted(holds),)).fetchall()
        staged = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(run.staging)).fetchone()[0]
        _guard(policy, staged)
        held_ids = sorted(r[0] for r in held_rows)
        out = {"eligible": staged, "held": len(held_ids), "done": already, "staged": staged, "held_ids": held_ids}
        out = _with_children(conn, sf, policy, run, describe, others, out,
                             holds=holds if policy.select.exclude_privacy_holds else None)
        if run.dry_run:
            out["preview"] = preview_rows(conn, policy, run)
            conn.rollback()
    return out


# ---------------------------------------------------------------------------------------------
# subset and load_to_cache


def subset(store: RetentionStoreHook, policy: Policy, run: Run, hash_key: bytes | None) -> int:
    """Project and transform the retained fields into the run's subset table (and each cascade child's), inside
    Postgres."""
    from retention import cascade

    with store.connect() as conn:
        rows = _subset(conn, policy, run, hash_key)
        cascade.subset(conn, policy, run, hash_key)
        return rows


def _subset(conn, policy: Policy, run: Run, hash_key: bytes | None) -> int:
    return subset_table(conn, policy.retain.fields, run.staging, run.subset, hash_key)


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
    col_defs += [sql.SQL("{} {}").format(_column(n), sql.SQL(transforms.result_type(t.kind, types[n.lower()])))
                 for n, t in items]
    exprs += [transforms.expression(t.kind, t.n, sql.Identifier("s", n.lower()), schema=LEDGER_SCHEMA)
              for n, t in items]
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(subset))
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(subset, sql.SQL(", ").join(col_defs)))
    return conn.execute(
        sql.SQL("INSERT INTO {} SELECT {} FROM {} s").format(subset, sql.SQL(", ").join(exprs), staging),
        {transforms.KEY_PARAM: hash_key or b""},
    ).rowcount


def preview_rows(conn, policy: Policy, run: Run, limit: int = 5) -> list[dict]:
    """A few staged records as they would be retained (dry runs), hashed fields with a throw-away key."""
    _subset(conn, policy, run, b"dry-run-preview-key")
    cur = conn.execute(sql.SQL("SELECT * FROM {} ORDER BY sfid LIMIT %s").format(run.subset), (limit,))
    names = [d.name for d in cur.description]
    return [{k: _jsonable(v) for k, v in zip(names, row, strict=True)} for row in cur.fetchall()]


def _jsonable(value):
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return value


def load_to_cache(store: RetentionStoreHook, policy: Policy, run: Run) -> int:
    """Upsert the subset (and each cascade child's) into the cache keyed by sfid, in one transaction (idempotent);
    returns the parent rows written."""
    from retention import cascade

    with store.connect() as conn:
        rows = upsert_retained(conn, policy.retain.table, list(policy.retain.fields), run.subset, policy, run)
        cascade.load(conn, policy, run)
    return rows


def upsert_retained(conn, name: str, fields: list[str], subset: sql.Identifier, policy: Policy, run: Run, *,
                    parent: bool = False) -> int:
    table = sql.Identifier(CACHE_SCHEMA, name)
    cols = [_column(n) for n in fields] + ([sql.Identifier("_parent_sfid")] if parent else [])
    names = sql.SQL(", ").join([sql.Identifier("sfid"), *cols, *(sql.Identifier(n) for n, _ in STATUS_COLUMNS)])
    values = sql.SQL(", ").join([sql.Identifier("s", "sfid"),
                                 *(sql.Identifier("s", n.lower()) for n in fields),
                                 *([sql.Identifier("s", "_parent_sfid")] if parent else []),
                                 sql.SQL("%(policy)s, %(run)s, now(), %(action)s, 'pending', NULL, NULL, NULL")])
    # A record already acted on (or refused for good) keeps its row untouched: its retained copy is the original.
    updates = sql.SQL(", ").join(
        [sql.SQL("{c} = excluded.{c}").format(c=c) for c in cols]
        + [sql.SQL("{c} = excluded.{c}").format(c=sql.Identifier(n))
           for n in ("_retention_policy", "_retention_run", "_retained_at", "_action", "_action_status",
                     "_action_error", "_action_at", "_bulk_job_id")]
    )
    return conn.execute(
        sql.SQL("INSERT INTO {t} ({names}) SELECT {values} FROM {subset} s ON CONFLICT (sfid) DO UPDATE SET "
                "{updates} WHERE {t}._action_status NOT IN ('done', 'refused', 'submitting', 'submitted')").format(
            t=table, names=names, values=values, subset=subset, updates=updates),
        {"policy": policy.id, "run": run.run_key, "action": policy.action},
    ).rowcount


# ---------------------------------------------------------------------------------------------
# validate_row_counts


def retained_query(policy: Policy, run: Run) -> sql.Composed:
    """This run's retained rows: cache rows of the staged records, written by this run."""
    return sql.SQL("SELECT c.* FROM {} c JOIN {} s USING (sfid) WHERE c._retention_run = {}").format(
        sql.Identifier(CACHE_SCHEMA, policy.retain.table), run.staging, sql.Literal(run.run_key))


def store_counts(store: RetentionStoreHook, policy: Policy, run: Run) -> tuple[int, int]:
    """(staged, retained) as the store holds them now."""
    with store.connect() as conn:
        staged = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(run.staging)).fetchone()[0]
        retained = conn.execute(
            sql.SQL("SELECT count(*) FROM ({}) r").format(retained_query(policy, run))).fetchone()[0]
    return staged, retained


# ---------------------------------------------------------------------------------------------
# delete_or_mask


def pending_ids(store: RetentionStoreHook, policy: Policy, run: Run) -> list[str]:
    with store.connect() as conn:
        rows = conn.execute(
            sql.SQL("SELECT c.sfid FROM {} c JOIN {} s USING (sfid) WHERE c._retention_run = %s "
                    "AND c._action_status = 'pending' ORDER BY 1").format(
                sql.Identifier(CACHE_SCHEMA, policy.retain.table), run.staging), (run.run_key,)).fetchall()
    return [r[0] for r in rows]


def unfinished_jobs(store: RetentionStoreHook, policy: Policy, run: Run) -> list[tuple[str, str]]:
    """(job id, status) of Bulk jobs an earlier attempt created (``submitting``) or closed (``submitted``)
    without recording their outcome: a crash or a timeout between the steps."""
    with store.connect() as conn:
        rows = conn.execute(
            sql.SQL("SELECT DISTINCT _bulk_job_id, _action_status FROM {} WHERE _retention_run = %s "
                    "AND _action_status IN ('submitting', 'submitted')")
            .format(sql.Identifier(CACHE_SCHEMA, policy.retain.table)), (run.run_key,)).fetchall()
    return [(r[0], r[1]) for r in rows]


def release_job(store: RetentionStoreHook, policy: Policy, run: Run, job_id: str) -> int:
    """The records of a job that never got them, or that stopped part way without reporting them (those it
    reported were recorded first), are pending again."""
    with store.connect() as conn:
        return conn.execute(sql.SQL("UPDATE {} SET _action_status = 'pending', _bulk_job_id = NULL WHERE "
                                    "_bulk_job_id = %s AND _retention_run = %s AND _action_status IN "
                                    "('submitting', 'submitted')").format(
            sql.Identifier(CACHE_SCHEMA, policy.retain.table)), (job_id, run.run_key)).rowcount


def mark(store: RetentionStoreHook, policy: Policy, run: Run, ids: list[str], status: str, *,
         job_id: str | None = None, error: str | None = None) -> None:
    if not ids:
        return
    with store.connect() as conn:
        conn.execute(
            sql.SQL("UPDATE {} SET _action_status = %s, _bulk_job_id = coalesce(%s, _bulk_job_id), "
                    "_action_error = %s, _action_at = now() WHERE sfid = ANY(%s) AND _retention_run = %s").format(
                sql.Identifier(CACHE_SCHEMA, policy.retain.table)), (status, job_id, error, ids, run.run_key))


def outcome_status(policy: Policy, outcome) -> str:
    """done, refused (Salesforce will never take it: see PERMANENT_REFUSALS) or failed (retried)."""
    code = (outcome.error or "").split(":", 1)[0]
    if outcome.success or code in ALREADY_DONE[policy.action]:
        return "done"
    return "refused" if code in PERMANENT_REFUSALS else "failed"


def record_outcomes(store: RetentionStoreHook, policy: Policy, run: Run, job_id: str, outcomes, *,
                    processed_only: bool = False) -> dict[str, int]:
    """Write each record's outcome beside its retained row; refused and failed records stay retained and are
    reported with Salesforce's code. ``processed_only``: leave out the rows the job never reached (a job that
    stopped part way), which go out again instead."""
    done: list[str] = []
    others: list[tuple[str, str, str]] = []
    for o in outcomes:
        if processed_only and (o.error or "").startswith("UNPROCESSED:"):
            continue
        status = outcome_status(policy, o)
        if status == "done":
            done.append(o.record_id)
        else:
            others.append((status, o.error, o.record_id))
    table = sql.Identifier(CACHE_SCHEMA, policy.retain.table)
    with store.connect() as conn:
        conn.execute(sql.SQL("UPDATE {} SET _action_status = 'done', _action_error = NULL, _action_at = now(), "
                             "_bulk_job_id = %s WHERE sfid = ANY(%s)").format(table), (job_id, done))
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL("UPDATE {} SET _action_status = %s, _action_error = %s, _action_at = now(), "
                        "_bulk_job_id = %s WHERE sfid = %s").format(table),
                [(status, error, job_id, record_id) for status, error, record_id in others])
    return {"done": len(done), "refused": sum(1 for s, _, _ in others if s == "refused"),
            "failed": sum(1 for s, _, _ in others if s == "failed")}


def staged_records(store: RetentionStoreHook, run: Run, ids: list[str], fields: list[str]) -> list[dict]:
    cols = sql.SQL(", ").join([sql.Identifier("sfid"), *(_column(f) for f in fields)])
    with store.connect() as conn:
        rows = conn.execute(sql.SQL("SELECT {} FROM {} WHERE sfid = ANY(%s) ORDER BY sfid").format(cols, run.staging),
                            (ids,)).fetchall()
    return [{"Id": r[0], **dict(zip(fields, r[1:], strict=True))} for r in rows]


def save_sent(store: RetentionStoreHook, run: Run, records: list[dict]) -> None:
    """Keep what was sent to Salesforce, so confirm_and_report can check the org holds exactly that."""
    with store.connect() as conn:
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (sfid varchar(18) PRIMARY KEY, sent jsonb NOT NULL)")
                     .format(run.sent))
        with conn.cursor() as cur:
            cur.executemany(sql.SQL("INSERT INTO {} VALUES (%s, %s) ON CONFLICT (sfid) DO UPDATE SET sent = "
                                    "excluded.sent").format(run.sent),
                            [(r["Id"], json.dumps({k: v for k, v in r.items() if k != "Id"}, default=str))
                             for r in records])


def table_exists(conn, table: sql.Identifier) -> bool:
    return conn.execute("SELECT to_regclass(%s)", (table.as_string(conn),)).fetchone()[0] is not None


def sent_values(store: RetentionStoreHook, run: Run) -> dict[str, dict]:
    with store.connect() as conn:
        if not table_exists(conn, run.sent):
            return {}
        return dict(conn.execute(sql.SQL("SELECT sfid, sent FROM {}").format(run.sent)).fetchall())


# ---------------------------------------------------------------------------------------------
# confirm_and_report


def action_summary(store: RetentionStoreHook, policy: Policy, run: Run) -> dict[str, list[str]]:
    with store.connect() as conn:
        rows = conn.execute(
            sql.SQL("SELECT c._action_status, c.sfid FROM {} c JOIN {} s USING (sfid) WHERE c._retention_run = %s")
            .format(sql.Identifier(CACHE_SCHEMA, policy.retain.table), run.staging), (run.run_key,)).fetchall()
    out: dict[str, list[str]] = {}
    for status, sfid in rows:
        out.setdefault(status, []).append(sfid)
    return out


def action_error(store: RetentionStoreHook, policy: Policy, sfid: str) -> str | None:
    with store.connect() as conn:
        row = conn.execute(sql.SQL("SELECT _action_error FROM {} WHERE sfid = %s").format(
            sql.Identifier(CACHE_SCHEMA, policy.retain.table)), (sfid,)).fetchone()
    return row[0] if row else None


def mirror_reflects(store: RetentionStoreHook, policy: Policy, ids: list[str], sent: dict[str, dict]) -> bool:
    """True once Connect's mirror shows the acted records deleted (gone) or masked (sent values)."""
    if policy.action in ("delete", "hard_delete"):
        return mirror_shows_gone(store, policy.object, ids)
    mirror = sql.Identifier(MIRROR_SCHEMA, policy.object.lower())
    with store.connect() as conn:
        if not table_exists(conn, mirror):
            return True
        fields = sorted({k for v in sent.values() for k in v}, key=str.lower)
        cols = sql.SQL(", ").join(_column(f) for f in fields)
        rows = conn.execute(sql.SQL("SELECT sfid, {} FROM {} WHERE sfid = ANY(%s)").format(cols, mirror),
                            (ids,)).fetchall()
    for row in rows:
        want = sent.get(row[0], {})
        for f, have in zip(fields, row[1:], strict=True):
            if f in want and not same_value(want[f], have):
                return False
    return len(rows) == len(ids)


def mirror_shows_gone(store: RetentionStoreHook, object_name: str, ids: list[str]) -> bool:
    """True once none of ``ids`` is left in Connect's mirror of the object (or the object is not mapped)."""
    mirror = sql.Identifier(MIRROR_SCHEMA, object_name.lower())
    with store.connect() as conn:
        if not ids or not table_exists(conn, mirror):
            return True
        return conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE sfid = ANY(%s)").format(mirror),
                            (ids,)).fetchone()[0] == 0


def same_value(sent, have) -> bool:
    if sent is None or have is None:
        return sent is None and have is None
    if isinstance(have, dt.datetime):
        return have.strftime("%Y-%m-%dT%H:%M:%S") == str(sent)[:19]
    if isinstance(have, (dt.date, float, int, bool)):
        return str(have).lower() == str(sent).lower() or str(have) == str(sent)[:10]
    return str(have) == str(sent)


def write_ledger(store: RetentionStoreHook, policy: Policy, run: Run, *, counts: dict, bulk_job_ids: list[str],
                 holds_applied: list[str], validation: dict | None, status: str, message: str,
                 timings: dict, blocked_records: dict[str, str] | None = None, cascade: dict | None = None) -> int:
    """Append the run's evidence to the ledger and chain it to the row before (tamper evidence)."""
    from retention import evidence

    with store.connect() as conn:
        evidence.lock(conn)
        row_id = conn.execute(
            sql.SQL(
                "INSERT INTO {} (policy_id, run_key, dag_run_id, policy_hash, object, action, source, cutoff, dry_run, "
                "eligible, held, staged, retained, acted, failed, salesforce_count, bulk_job_ids, holds_applied, "
                "validation, status, message, started_at, timings, refused, blocked, blocked_records, cascade) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                "%s, %s, %s, %s) RETURNING id"
            ).format(sql.Identifier(LEDGER_SCHEMA, "runs")),
            (policy.id, run.run_key, run.dag_run_id, policy.source_hash, policy.object, policy.action, policy.source,
             run.cutoff, run.dry_run, counts.get("eligible"), counts.get("held"), counts.get("staged"),
             counts.get("retained"), counts.get("acted"), counts.get("failed"), counts.get("salesforce"),
             json.dumps(bulk_job_ids), json.dumps(holds_applied), json.dumps(validation, default=str), status,
             message, run.started_at, json.dumps(timings), counts.get("refused", 0), counts.get("blocked", 0),
             json.dumps(blocked_records or {}), json.dumps(cascade or {})),
        ).fetchone()[0]
        evidence.seal_last_row(conn, row_id)
        return row_id


def drop_staging(store: RetentionStoreHook, run: Run, policy: Policy | None = None) -> None:
    from retention import cascade

    children = cascade.tables(run, policy) if policy is not None else []
    with store.connect() as conn:
        for table in (run.staging, run.subset, run.sent, *children):
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
