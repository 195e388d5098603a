"""extract: check the policy against the org's describe, then stage this run's eligible, non-held records.

Two sources, one result: a Bulk 2.0 query streamed into ``COPY`` (``salesforce_api``), or one ``CREATE TABLE AS``
over Heroku Connect's mirror (``heroku_connect``). Both stage the same columns (see ``cache.STAGING_TYPES``) in
``retention_staging.<run key>``, leave out records under a privacy hold and records an earlier run settled, stage
the cascade children with their parents, and stop before anything is touched when the guard is exceeded.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import structlog
from psycopg import ClientCursor, sql

from retention.cache import STAGING_TYPES, already_done, column, copy_pages, field_types, nul_refused, staged_fields
from retention.hooks.store import MIRROR_SCHEMA
from retention.steps.results import ChildStaged, Extracted
from retention.steps.run import RetentionError, active_holds, claim, guard, release

if TYPE_CHECKING:
    from collections.abc import Callable

    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook
    from retention.hooks.store import RetentionStoreHook
    from retention.policy import Policy
    from retention.steps.run import Run

# Airflow's own logging (structlog): lines land in the task's log, as an operator's self.log would.
log = structlog.get_logger(__name__)


def extract(store: RetentionStoreHook, sf: SalesforceBulk2Hook, policy: Policy, run: Run, *,
            still_running: Callable[[str], bool]) -> Extracted:
    """The step: claim the policy (see ``run.claim``; ``still_running`` asks Airflow about another DAG run), describe,
    check, stage (dry runs: preview what would be retained, roll back and release the policy)."""
    from retention.policy import check_against_describe

    store.check_setup()  # the grants the pipeline relies on, before anything is claimed or staged
    claim(store, run, still_running=still_running)  # one run of the policy at work at a time
    file = policy.path.name if policy.path else "<policy>"
    describe = sf.describe_or_none(policy.object)
    if describe is None:
        raise RetentionError(f"{file}: object: {policy.object} is not an object the API user can read (describe "
                             "answers NOT_FOUND); nothing was touched")
    others = {name: sf.describe_or_none(name) for name in policy.related_fields()}
    problems = check_against_describe(policy, describe, others)
    if problems:
        raise RetentionError(f"policy {policy.id} does not fit {policy.object} in Salesforce: "
                             + "; ".join(f"{file}: {problem}" for problem in problems))
    if policy.source == "salesforce_api":
        out = from_salesforce(store, sf, policy, run, describe, others)
    else:
        out = from_mirror(store, policy, run, describe, others, sf)
    out.count_soql = soql_for(policy, run, [], field_types(describe), others, count=True)
    log.info("%s: cutoff %s, %d eligible, %d held by privacy holds, %d already retained and acted on, %d staged",
             run.run_key, out.cutoff, out.eligible, out.held, out.done, out.staged)
    for child in out.children:
        log.info("%s: %d %s records go with their parents and are staged for cache.%s", run.run_key, child.staged,
                 child.object, child.table)
    if out.blocked:
        first, reason = next(iter(out.blocked.items()))
        log.warning("%d records are kept back: a delete would take children the policy does not retain (e.g. %s: %s)",
                    len(out.blocked), first, reason)
    if run.dry_run:  # nothing follows a dry run's extract
        release(store, run)
        log.info("DRY RUN preview (nothing was changed): %d would be retained then %s; sample of the retained "
                 "rows:\n%s", out.eligible, policy.action, "\n".join(str(r) for r in out.preview or []))
    return out


def _result(policy: Policy, run: Run, describe: dict, **counts) -> Extracted:
    """The step's result; the masked fields' lengths travel with it, so the act need not describe the object again
    (a hash or pseudonym is cut to its field, or Salesforce refuses the record with STRING_TOO_LONG)."""
    types = field_types(describe)
    wanted = set(staged_fields(policy))
    masked = {f.lower() for f in policy.mask or {}}
    return Extracted(run_key=run.run_key, cutoff=run.cutoff.isoformat(),
                     field_types={n: t for n, t in types.items() if n in wanted},
                     date_type=types[policy.select.date_field],
                     field_lengths={f["name"]: f["length"] for f in describe.get("fields", [])
                                    if f["name"].lower() in masked and f.get("length")}, **counts)


def from_mirror(store: RetentionStoreHook, policy: Policy, run: Run, describe: dict,
                others: dict[str, dict | None] | None = None, sf: SalesforceBulk2Hook | None = None) -> Extracted:
    """Stage the eligible, non-held records from the Connect mirror with one CREATE TABLE AS.

    :param others: describes of the objects the policy reads besides its own (sub-selects, cascade children).
    :param sf: the org, asked which parents have children a delete would take (cascade checks).
    """
    from retention import soql_filter

    others = {k.lower(): v for k, v in (others or {}).items()}

    def relation(name: str):
        return sql.Identifier(MIRROR_SCHEMA, name.lower()), field_types(others.get(name.lower()) or {"fields": []})

    types = field_types(describe)
    base = [
        sql.SQL("NOT coalesce(m.isdeleted, false)"),
        sql.SQL("m.{} < %s").format(column(policy.select.date_field)),
    ]
    params: list = [run.cutoff_value(types[policy.select.date_field])]
    if policy.select.where:
        where_sql, where_params = soql_filter.to_sql(
            soql_filter.parse(policy.select.where), lambda n: sql.Identifier("m", soql_filter.mirror_column(n)),
            today=run.today, types=types, relation=relation,
        )
        base.append(sql.SQL("({})").format(where_sql))
        params += where_params
    matching = sql.SQL(" AND ").join(base)
    mirror = sql.Identifier(MIRROR_SCHEMA, policy.object.lower())
    cols = sql.SQL(", ").join(sql.Identifier("m", f.lower()) for f in staged_fields(policy))
    with store.connect() as conn:
        _ensure_cache_table(conn, policy, types)
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(run.staging))
        # One scan of the mirror, the policy's selection only. Settled and held records are then taken out of the
        # run's own table, keyed and analysed: over the mirror, the planner misjudges how many rows the filter
        # keeps (Connect's tables carry no statistics on expressions) and joined every row with every hold.
        # CREATE TABLE AS cannot take bind parameters: a client-side cursor binds them safely instead.
        with ClientCursor(conn) as cur:
            cur.execute(sql.SQL("CREATE TABLE {} AS SELECT m.sfid, {} FROM {} m WHERE {}").format(
                run.staging, cols, mirror, matching), params)
        conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (sfid)").format(run.staging))
        conn.execute(sql.SQL("ANALYZE {}").format(run.staging))
        already, held_ids = _take_out_settled_and_held(conn, policy, run)
        staged = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(run.staging)).fetchone()[0]
        guard(policy, staged)  # over the guard: the transaction rolls back, nothing stays staged
        _within_budget(sf, policy, run, staged, describe)
        out = _result(policy, run, describe, eligible=staged, held=len(held_ids), done=already, staged=staged,
                      held_ids=held_ids)
        _with_children(conn, sf, policy, run, describe, others, out, holds=None)
        _preview_and_roll_back(conn, policy, run, out)
    return out


def _take_out_settled_and_held(conn, policy: Policy, run: Run) -> tuple[int, list[str]]:
    """Delete from the staged selection the records an earlier run settled, then those under a hold in force in
    Connect's mirror of PrivacyHold; returns (settled, held ids in the store's order)."""
    from retention import holds

    already = conn.execute(sql.SQL("DELETE FROM {} s WHERE {}").format(
        run.staging, already_done(policy, "s"))).rowcount
    if not policy.select.exclude_privacy_holds:
        return already, []
    held = conn.execute(sql.SQL("WITH held AS (DELETE FROM {} s WHERE {} RETURNING sfid) SELECT sfid FROM held "
                                "ORDER BY 1").format(run.staging, holds.in_mirror("s"))).fetchall()
    return already, [r[0] for r in held]


def from_salesforce(store: RetentionStoreHook, sf: SalesforceBulk2Hook, policy: Policy, run: Run,
                    describe: dict, others: dict[str, dict | None] | None = None) -> Extracted:
    """Stage the eligible records from a Bulk 2.0 query, each page streamed into COPY as it arrives."""
    types = field_types(describe)
    fields = staged_fields(policy)
    soql = soql_for(policy, run, fields, types, others)
    # The org's count (held and settled records included) bounds what the run acts on: the budget is checked on it
    # before the extract query spends anything.
    if not run.dry_run:
        _within_budget(sf, policy, run, sf.count(soql_for(policy, run, [], types, others, count=True)), describe)
    holds = active_holds(sf) if policy.select.exclude_privacy_holds else set()
    columns = sql.SQL(", ").join([sql.SQL("sfid varchar(18) PRIMARY KEY")] + [
        sql.SQL("{} {}").format(column(f), sql.SQL(STAGING_TYPES.get(types[f], "text"))) for f in fields])
    names = sql.SQL(", ").join([sql.Identifier("sfid")] + [column(f) for f in fields])
    with store.connect() as conn:
        _ensure_cache_table(conn, policy, types)
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(run.staging))
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(run.staging, columns))
        copy = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, HEADER true, FORCE_NULL ({}))").format(
            run.staging, names, sql.SQL(", ").join(column(f) for f in fields))
        copy_pages(conn, copy, sf.query_pages(policy.object, soql), nul_refused(policy, policy.object))
        already = conn.execute(sql.SQL("DELETE FROM {} s WHERE {}").format(
            run.staging, already_done(policy, "s"))).rowcount
        held_rows = conn.execute(sql.SQL("DELETE FROM {} WHERE sfid = ANY(%s) RETURNING sfid").format(run.staging),
                                 (sorted(holds),)).fetchall()
        staged = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(run.staging)).fetchone()[0]
        guard(policy, staged)
        held_ids = sorted(r[0] for r in held_rows)
        out = _result(policy, run, describe, eligible=staged, held=len(held_ids), done=already, staged=staged,
                      held_ids=held_ids)
        _with_children(conn, sf, policy, run, describe, others, out,
                       holds=holds if policy.select.exclude_privacy_holds else None)
        _preview_and_roll_back(conn, policy, run, out)
    return out


def _within_budget(sf: SalesforceBulk2Hook | None, policy: Policy, run: Run, records: int, describe: dict) -> None:
    """Refuse a run that would spend more than its share of the org's daily allowances (see ``budget``); a dry
    run acts on nothing and is not checked."""
    from retention import budget, cascade

    if sf is None or run.dry_run:
        return
    spend = budget.check(sf, policy, records, undeclared=len(cascade.undeclared(policy, describe)))
    log.info("%s: acting on up to %d records spends about %d API requests, %d Bulk batches, %d Bulk query jobs: "
             "within the run's share of what the org has left today", run.run_key, records, spend.api_requests,
             spend.bulk_batches, spend.query_jobs)


def soql_for(policy: Policy, run: Run, fields: list[str], types: dict[str, str],
             others: dict[str, dict | None] | None = None, *, count: bool = False) -> str:
    """The policy's selection as SOQL (the where filter re-rendered from its parsed form, never pasted; relative
    dates as the absolute days of the run's ``today``, as the mirror path reads them).

    :param types: the object's field types; ``others``: describes of the objects its sub-selects read.
    """
    from retention import soql_filter

    by_name = {k.lower(): v for k, v in (others or {}).items()}
    clauses = [f"{policy.select.date_field} < {run.soql_cutoff(types[policy.select.date_field])}"]
    if policy.select.where:
        clauses.append("({})".format(soql_filter.to_soql(
            soql_filter.parse(policy.select.where), today=run.today, types=types,
            relation_types=lambda name: field_types(by_name.get(name.lower()) or {"fields": []}))))
    head = "COUNT()" if count else ", ".join(["Id", *fields])
    return f"SELECT {head} FROM {policy.object} WHERE {' AND '.join(clauses)}"


def _ensure_cache_table(conn, policy: Policy, types: dict[str, str]) -> None:
    """Create ``cache.<table>`` (or add columns a changed policy now retains): the settled-records check reads it."""
    from retention import external_views
    from retention.cache import ensure_table

    ensure_table(conn, policy.retain.table, policy.retain.fields, types, encrypted=policy.retain.encrypt)
    external_views.ensure(conn, policy, policy.retain.table, external_views.visible(policy.retain))


def _with_children(conn, sf: SalesforceBulk2Hook | None, policy: Policy, run: Run, describe: dict,
                   others: dict[str, dict | None], out: Extracted, *, holds: set[str] | None) -> None:
    """Stage the cascade children of the staged parents, and take out the parents a delete must not touch: those
    with a held child (counted as held) and those with children the policy does not retain (blocked, with the
    reason). ``holds``: the org's held record ids (None: read holds from the Connect mirror)."""
    from retention import cascade

    relations = cascade.undeclared(policy, describe)
    if not policy.cascade and not relations:
        return
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
    out.children = [ChildStaged(c["object"], c["table"], c["candidates"], count)
                    for c, count in zip(children, cascade.staged_counts(conn, policy, run), strict=True)]
    guard(policy, staged + sum(c.staged for c in out.children))
    out.eligible = out.staged = staged
    out.held += len(held_via)
    out.held_ids = sorted({*out.held_ids, *held_via})
    out.held_via_children, out.blocked = held_via, blocked
    out.cascade_relations = [vars(r) for r in relations]


def _preview_and_roll_back(conn, policy: Policy, run: Run, out: Extracted, limit: int = 5) -> None:
    """Dry runs: a few staged records as they would be retained (hashed fields with a throw-away key), then roll
    everything back."""
    if not run.dry_run:
        return
    from retention.steps.load import subset_table

    subset_table(conn, policy.retain.fields, run.staging, run.subset, b"dry-run-preview-key")
    cur = conn.execute(sql.SQL("SELECT * FROM {} ORDER BY sfid LIMIT %s").format(run.subset), (limit,))
    names = [d.name for d in cur.description]
    # An encrypted field stays unread here too: the preview lands in XCom and the task log.
    hidden = {n.lower() for n in policy.retain.encrypt}
    out.preview = [{k: "(encrypted)" if k in hidden and v is not None else _jsonable(v)
                    for k, v in zip(names, row, strict=True)} for row in cur.fetchall()]
    conn.rollback()


def _jsonable(value):
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return value
