"""The store's cache tables: their columns, how a run writes its retained rows, and which rows are settled.

A cache table (``cache.<retain.table>``) keeps each retained record's subset keyed by ``sfid`` beside the
bookkeeping of its action (``_action_status`` and friends). Extract, load, the act step, cascades and the
purge all read or write these tables; the rules they share live here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg import sql

from retention.hooks.store import CACHE_SCHEMA, LEDGER_SCHEMA
from retention.steps.run import RetentionError

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable

    from retention.hooks.salesforce_bulk import QueryPage
    from retention.policy import Policy
    from retention.steps.run import Run

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
# The comment that marks a cache column as holding ciphertext (retention.encryption), for readers of the store.
ENCRYPTED_COMMENT = "encrypted (retention.encryption); read back with: python -m retention decrypt"
# Action statuses of records a later run must not select again: their retained copy is final.
SETTLED = ("done", "refused")


def column(name: str) -> sql.Identifier:
    """A Salesforce field's column, named as Heroku Connect names it (lower case)."""
    return sql.Identifier(name.lower())


def table(name: str) -> sql.Identifier:
    return sql.Identifier(CACHE_SCHEMA, name)


def field_types(describe: dict) -> dict[str, str]:
    return {f["name"]: f["type"] for f in describe["fields"]}


def staged_fields(policy: Policy) -> list[str]:
    """Fields copied into staging: what is retained, what masking reads, and the retention clock."""
    names = {policy.select.date_field, *policy.retain.fields, *(policy.mask or {})}
    return sorted(names, key=str.lower)


def table_exists(conn, name: sql.Identifier) -> bool:
    return conn.execute("SELECT to_regclass(%s)", (name.as_string(conn),)).fetchone()[0] is not None


def analyze(conn, *names: sql.Identifier) -> None:
    """Fresh planner statistics for tables a step has just rewritten in bulk. Autovacuum takes them later, if at
    all; a query planned in the meantime on the old ones (an empty cache table, every row still ``pending``) can
    join a million rows by nested loops. A table the connecting role does not own is skipped (a warning)."""
    for name in names:
        if table_exists(conn, name):
            conn.execute(sql.SQL("ANALYZE {}").format(name))


def already_done(policy: Policy, alias: str) -> sql.Composable:
    """Records an earlier run already retained and acted on, or that Salesforce refused for good (in the cache,
    or since purged from it). They are not eligible again: a masked record must never overwrite its retained
    original, and a refused one would only be refused again."""
    settled = sql.SQL(", ").join(map(sql.Literal, SETTLED))
    return sql.SQL(
        "(EXISTS (SELECT 1 FROM {cache} c WHERE c.sfid = {a}.sfid AND c._action_status IN ({s})) OR EXISTS "
        "(SELECT 1 FROM {purged} p WHERE p.policy_id = {policy} AND p.sfid = {a}.sfid AND p.action_status IN ({s})))"
    ).format(cache=table(policy.retain.table), a=sql.Identifier(alias), s=settled,
             purged=sql.Identifier(LEDGER_SCHEMA, "purged_records"), policy=sql.Literal(policy.id))


def ensure_table(conn, name: str, fields: dict, types: dict[str, str], *, parent: bool = False,
                 encrypted: Collection[str] = ()) -> None:
    """Create one cache table (or add the columns a changed policy now retains); a cascade child's table also
    keeps its parent's sfid. ``encrypted`` columns hold ciphertext (text), marked so by a column comment."""
    from retention import transforms

    target = table(name)
    retained = [(field, "text" if field in encrypted else
                 transforms.result_type(t.kind, STAGING_TYPES.get(types[field], "text")))
                for field, t in fields.items()]
    cols = [sql.SQL("sfid varchar(18) PRIMARY KEY")]
    cols += [sql.SQL("_parent_sfid varchar(18) NOT NULL")] if parent else []
    cols += [sql.SQL("{} {}").format(column(n), sql.SQL(t)) for n, t in retained]
    cols += [sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in STATUS_COLUMNS]
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(target, sql.SQL(", ").join(cols)))
    for field, pg_type in retained:
        conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(target, column(field),
                                                                                   sql.SQL(pg_type)))
        _mark_encryption(conn, name, field, pg_type, encrypt=field in encrypted)
    if parent:
        conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (_parent_sfid)").format(
            sql.Identifier(f"{name[:50]}_parent"), target))


def _mark_encryption(conn, name: str, field: str, pg_type: str, *, encrypt: bool) -> None:
    """Keep a column all ciphertext or all plain text: switching a column that already holds values is refused
    (its older rows would stay as they are); an empty one is switched (type and comment)."""
    target, col = table(name), column(field)
    marked = conn.execute("SELECT col_description(%s::regclass, attnum) = %s FROM pg_attribute "
                          "WHERE attrelid = %s::regclass AND attname = %s",
                          (target.as_string(conn), ENCRYPTED_COMMENT, target.as_string(conn), field.lower()),
                          ).fetchone()[0] is True
    if marked == encrypt:
        return
    if conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {} IS NOT NULL)").format(target, col)).fetchone()[0]:
        now, wanted = ("in plain text", "encrypt") if encrypt else ("encrypted", "stop encrypting")
        raise RetentionError(f"cache.{name}.{field.lower()} already holds values {now} from earlier runs; a policy "
                             f"cannot {wanted} a column that has values (they would stay as they are): retain into "
                             "a new table (retain.table), or convert the column's values first")
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {} USING NULL").format(target, col, sql.SQL(pg_type)))
    conn.execute(sql.SQL("COMMENT ON COLUMN {}.{} IS {}").format(
        target, col, sql.Literal(ENCRYPTED_COMMENT if encrypt else None)))


def upsert_retained(conn, name: str, fields: list[str], subset: sql.Identifier, policy: Policy, run: Run, *,
                    parent: bool = False, reader=None) -> int:
    """Write a subset table into a cache table keyed by sfid, each row ``pending`` for this run's action; returns
    the rows written. A record already acted on (or refused for good) keeps its row untouched: its retained copy is
    the original.

    Rows already in the cache are updated in place; new rows are copied in with ``COPY``: streamed out of the
    subset by ``reader`` (a second connection) and into the cache by ``conn``, in ``conn``'s transaction.
    Postgres inserts ``COPY``'s rows in batches, where ``INSERT ... SELECT`` inserts them one by one (about 2x the
    time at a million rows, docs/benchmarks.md). Without ``reader``, ``INSERT ... SELECT``."""
    target = table(name)
    cols = [column(n) for n in fields] + ([sql.Identifier("_parent_sfid")] if parent else [])
    names = sql.SQL(", ").join([sql.Identifier("sfid"), *cols, *(sql.Identifier(n) for n, _ in STATUS_COLUMNS)])
    status = [sql.Literal(policy.id), sql.Literal(run.run_key), sql.SQL("now()"), sql.Literal(policy.action),
              sql.Literal("pending"), sql.NULL, sql.NULL, sql.NULL]
    sources = [sql.Identifier("s", "sfid"), *(sql.Identifier("s", n.lower()) for n in fields),
               *([sql.Identifier("s", "_parent_sfid")] if parent else [])]
    updates = sql.SQL(", ").join(sql.SQL("{} = {}").format(c, v) for c, v in zip(
        [*cols, *(sql.Identifier(n) for n, _ in STATUS_COLUMNS)], [*sources[1:], *status], strict=True))
    updated = conn.execute(sql.SQL(
        "UPDATE {t} SET {updates} FROM {subset} s WHERE {t}.sfid = s.sfid "
        "AND {t}._action_status NOT IN ('done', 'refused', 'submitting', 'submitted')").format(
        t=target, updates=updates, subset=subset)).rowcount
    new = sql.SQL("SELECT {} FROM {} s WHERE NOT EXISTS (SELECT 1 FROM {} c WHERE c.sfid = s.sfid)").format(
        sql.SQL(", ").join([*sources, *status]), subset, target)
    if reader is None:
        return updated + conn.execute(sql.SQL("INSERT INTO {} ({}) {}").format(target, names, new)).rowcount
    with conn.cursor() as into_cur, reader.cursor() as out_cur:
        with out_cur.copy(sql.SQL("COPY ({}) TO STDOUT").format(new)) as out, \
                into_cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(target, names)) as into:
            for block in out:
                into.write(block)
        return updated + into_cur.rowcount


def copy_pages(conn, copy: sql.Composable | str, pages: Iterable[QueryPage],
               nul: Callable[[str | None, list[str]], Exception]) -> None:
    """``copy`` each page of a Bulk query's results as it downloads, never holding a page whole. A Salesforce text
    value can hold a NUL, Postgres text cannot: on the first NUL the page is downloaded again, whole, and
    ``nul(record Id, fields)`` is raised for the first record holding one (``None, []`` if it is outside any
    value), rather than let COPY fail on an anonymous byte."""
    for page in pages:
        with conn.cursor().copy(copy) as cp:
            for chunk in page:
                if b"\x00" in chunk:
                    with page.again() as whole:
                        raise nul(*first_nul(whole.text()))
                cp.write(chunk)


def first_nul(text: str) -> tuple[str | None, list[str]]:
    """The first record of a query page's CSV with a NUL in its values (its Id), and those values' fields."""
    import csv
    import io

    for row in csv.DictReader(io.StringIO(text)):
        if bad := [name for name, value in row.items() if value and "\x00" in value]:
            return row.get("Id"), bad
    return None, []


def nul_refused(policy: Policy, object_name: str) -> Callable[[str | None, list[str]], RetentionError]:
    """The error for a staged record with a NUL in a value (see ``cache.copy_pages``): it cannot be retained as
    the org holds it, so the run stops, naming record and field, before anything is acted on."""

    def error(record: str | None, fields: list[str]) -> RetentionError:
        if record is None:
            return RetentionError(f"policy {policy.id}: the Bulk query result for {object_name} holds a NUL "
                                  "character outside any value; nothing is acted on")
        return RetentionError(
            f"policy {policy.id}: {object_name} record {record} has a NUL character in {', '.join(fields)}; Postgres "
            "text cannot hold one, so the record cannot be retained exactly and nothing is acted on. Remove the "
            "character in Salesforce, then run again")

    return error
