"""Children that a parent's delete takes with it: retained, counted and validated like the parent.

Salesforce deletes a parent's children with it when their relationship cascades ("If you delete a parent
object, you delete its children automatically": SOAP API Developer Guide, delete(); an Account takes its
Contacts and Opportunities into the Recycle Bin). A policy that deletes parents therefore must either retain
those children (the ``cascade:`` key: each child object, its lookup to the parent, its retained fields) or
not delete the parents that have them. This module does both halves:

- children of the run's parents are staged, subset and loaded into their own cache tables with the parent's
  sfid beside each (``_parent_sfid``), and their statuses follow their parent's outcome;
- a parent with children in a cascading relationship the policy does not declare is *blocked*: kept out of
  the run with the reason, never deleted (re-checked just before the delete, as children can be added).

A held child (an active PrivacyHold on a Contact) holds its parent too: deleting the parent would take it.
Relationships to a record's own sharing, field history and feed (``*Share``, ``*History``, ``*Feed``) exist
only with the record and are not checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from psycopg import ClientCursor, sql

from retention.hooks.store import CACHE_SCHEMA, MIRROR_SCHEMA, STAGING_SCHEMA

if TYPE_CHECKING:
    from retention.encryption import Keyring
    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook
    from retention.policy import CascadeChild, Policy
    from retention.steps.act import Pending
    from retention.steps.run import Run

# Child objects that are a record's own bookkeeping: gone with it, nothing a team retains.
_OWN_BOOKKEEPING = ("Share", "History", "Feed")
BLOCKED_CODE = "CASCADE_NOT_RETAINED"
CHANGED_CODE = "CHILDREN_CHANGED"
# How many children a blocked parent's reason names.
_QUOTED = 3


@dataclass(frozen=True)
class Relationship:
    """A cascading child relationship of the parent (from its describe ``childRelationships``)."""

    child: str
    field: str
    name: str


def staging_name(run: Run, n: int) -> str:
    return f"{run.run_key}__c{n}"


def staging(run: Run, n: int) -> sql.Identifier:
    return sql.Identifier(STAGING_SCHEMA, staging_name(run, n))


def subset_table(run: Run, n: int) -> sql.Identifier:
    return sql.Identifier(STAGING_SCHEMA, f"{run.run_key}__c{n}_subset")


def tables(run: Run, policy: Policy) -> list[sql.Identifier]:
    """Every working table the children of this run use (dropped with the run's own)."""
    return [t for n in range(len(policy.cascade)) for t in (staging(run, n), subset_table(run, n))]


def cache_table(child: CascadeChild) -> sql.Identifier:
    return sql.Identifier(CACHE_SCHEMA, child.retain.table)


def undeclared(policy: Policy, describe: dict) -> list[Relationship]:
    """Cascading relationships of the parent the policy does not retain (and so may not let a delete take)."""
    if policy.action == "mask":
        return []
    declared = {(c.object.lower(), c.relationship.lower()) for c in policy.cascade}
    exempt = {name.lower() for name in policy.cascade_exempt}
    out = []
    for rel in describe.get("childRelationships", []):
        child, field = rel.get("childSObject") or "", rel.get("field") or ""
        if not rel.get("cascadeDelete") or rel.get("deprecatedAndHidden") or not field:
            continue
        if (child.lower(), field.lower()) in declared or child.endswith(_OWN_BOOKKEEPING):
            continue
        if (rel.get("relationshipName") or "").lower() in exempt:
            continue
        out.append(Relationship(child, field, rel.get("relationshipName") or child))
    return out


def _column(name: str) -> sql.Identifier:
    return sql.Identifier(name.lower())


def staged_fields(child: CascadeChild) -> list[str]:
    """The child's retained fields, without its lookup to the parent (staged as its own column)."""
    return sorted((f for f in child.retain.fields if f.lower() != child.relationship.lower()), key=str.lower)


def parent_soql(policy: Policy, run: Run, date_type: str) -> str:
    """The parents a child query looks under: every one past the cutoff (the filter is left out: SOQL allows no
    sub-select inside another). A superset of the run's parents, narrowed in Postgres; the candidates it
    yields are what validation compares with the org's own count."""
    return f"SELECT Id FROM {policy.object} WHERE {policy.select.date_field} < {run.soql_cutoff(date_type)}"


def _child_soql(child_object: str, field: str, fields: list[str], parents: str) -> str:
    return f"SELECT {', '.join(['Id', field, *fields])} FROM {child_object} WHERE {field} IN ({parents})"


# ---------------------------------------------------------------------------------------------- extract


def stage_from_mirror(conn, policy: Policy, run: Run, types: dict[str, dict[str, str]]) -> list[dict]:
    """Stage each child of the run's parents from the Connect mirror; count the candidates (children of every
    parent past the cutoff) for validation."""
    out = []
    parent_mirror = sql.Identifier(MIRROR_SCHEMA, policy.object.lower())
    date_type = types[policy.object][policy.select.date_field]
    for n, child in enumerate(policy.cascade):
        mirror = sql.Identifier(MIRROR_SCHEMA, child.object.lower())
        rel = _column(child.relationship)
        cols = sql.SQL(", ").join([sql.SQL("c.sfid"), sql.SQL("c.{}").format(rel),
                                   *(sql.SQL("c.{}").format(_column(f)) for f in staged_fields(child))])
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(staging(run, n)))
        conn.execute(sql.SQL(
            "CREATE TABLE {t} AS SELECT {cols} FROM {m} c WHERE NOT coalesce(c.isdeleted, false) "
            "AND c.{rel} IN (SELECT sfid FROM {parents})").format(
            t=staging(run, n), cols=cols, m=mirror, rel=rel, parents=run.staging))
        conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (sfid)").format(staging(run, n)))
        with ClientCursor(conn) as cur:
            cur.execute(sql.SQL(
                "SELECT count(*) FROM {m} c JOIN {p} p ON p.sfid = c.{rel} WHERE NOT coalesce(c.isdeleted, false) "
                "AND NOT coalesce(p.isdeleted, false) AND p.{d} < %s").format(
                m=mirror, p=parent_mirror, rel=rel, d=_column(policy.select.date_field)),
                (run.cutoff_value(date_type),))
            candidates = cur.fetchone()[0]
        out.append({"object": child.object, "table": child.retain.table, "candidates": candidates})
    return out


def stage_from_salesforce(conn, sf: SalesforceBulk2Hook, policy: Policy, run: Run,
                          types: dict[str, dict[str, str]]) -> list[dict]:
    """Stage each child of the run's parents from a Bulk 2.0 query (the children of every parent past the cutoff,
    streamed into COPY), then keep those of the staged parents."""
    from retention.cache import STAGING_TYPES, copy_pages, nul_refused

    out = []
    parents = parent_soql(policy, run, types[policy.object][policy.select.date_field])
    for n, child in enumerate(policy.cascade):
        fields = staged_fields(child)
        child_types = types[child.object]
        columns = [sql.SQL("sfid varchar(18) PRIMARY KEY"), sql.SQL("{} varchar(18)").format(
            _column(child.relationship))]
        columns += [sql.SQL("{} {}").format(_column(f), sql.SQL(STAGING_TYPES.get(child_types[f], "text")))
                    for f in fields]
        names = sql.SQL(", ").join([sql.Identifier("sfid"), _column(child.relationship), *map(_column, fields)])
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(staging(run, n)))
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(staging(run, n), sql.SQL(", ").join(columns)))
        copy = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, HEADER true, FORCE_NULL ({}))").format(
            staging(run, n), names, sql.SQL(", ").join([_column(child.relationship), *map(_column, fields)]))
        copy_pages(conn, copy, sf.query_pages(child.object, _child_soql(child.object, child.relationship, fields,
                                                                        parents)), nul_refused(policy, child.object))
        candidates = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(staging(run, n))).fetchone()[0]
        conn.execute(sql.SQL("DELETE FROM {t} c WHERE c.{rel} IS NULL OR c.{rel} NOT IN (SELECT sfid FROM {p})")
                     .format(t=staging(run, n), rel=_column(child.relationship), p=run.staging))
        out.append({"object": child.object, "table": child.retain.table, "candidates": candidates})
    return out


def held_parents(conn, policy: Policy, run: Run, holds: set[str] | None) -> dict[str, str]:
    """Parents with a child under an active privacy hold: {parent: held child}. From the org's holds when
    given, else from the Connect mirror's PrivacyHold table."""
    from retention.holds import in_mirror

    out: dict[str, str] = {}
    for n, child in enumerate(policy.cascade):
        rel = _column(child.relationship)
        if holds is not None:
            rows = conn.execute(sql.SQL("SELECT c.{rel}, c.sfid FROM {t} c WHERE c.sfid = ANY(%s)").format(
                rel=rel, t=staging(run, n)), (sorted(holds),)).fetchall()
        else:
            rows = conn.execute(sql.SQL("SELECT c.{rel}, c.sfid FROM {t} c WHERE {held}").format(
                rel=rel, t=staging(run, n), held=in_mirror("c"))).fetchall()
        for parent, held_child in rows:
            out.setdefault(parent, held_child)
    return out


def blocked_parents(conn, sf: SalesforceBulk2Hook, policy: Policy, run: Run, describe: dict,
                    date_type: str) -> dict[str, str]:
    """Staged parents with children in a cascading relationship the policy does not retain: {parent: reason}.
    Asked of the org itself (a Bulk query per relationship), which is what a delete would take."""
    relations = undeclared(policy, describe)
    if not relations:
        return {}
    parents = parent_soql(policy, run, date_type)
    out: dict[str, str] = {}
    for rel in relations:
        _copy_children(conn, sf, policy, rel, parents)
        rows = conn.execute(sql.SQL(
            "SELECT c.parent, count(*), (array_agg(c.sfid ORDER BY c.sfid))[1:{}] FROM _cascade_children c "
            "JOIN {p} s ON s.sfid = c.parent GROUP BY c.parent").format(sql.Literal(_QUOTED), p=run.staging)
        ).fetchall()
        for parent, count, sample in rows:
            out.setdefault(parent, f"{BLOCKED_CODE}: deleting it would also delete {count} {rel.child} record(s) "
                                   f"({rel.name}: {', '.join(sample)}) that the policy does not retain; declare "
                                   f"{rel.child} under cascade: to retain them")
    return out


def _copy_children(conn, sf: SalesforceBulk2Hook, policy: Policy, rel: Relationship, parents: str) -> None:
    """The org's children (sfid, parent) of one relationship under ``parents``, streamed into the temp table
    ``_cascade_children`` (replaced on each call, dropped at commit)."""
    from retention.cache import copy_pages, nul_refused

    conn.execute("DROP TABLE IF EXISTS pg_temp._cascade_children")
    conn.execute("CREATE TEMP TABLE _cascade_children (sfid varchar(18), parent varchar(18)) ON COMMIT DROP")
    copy_pages(conn, "COPY _cascade_children FROM STDIN WITH (FORMAT csv, HEADER true)",
               _children_pages(sf, policy, rel, parents), nul_refused(policy, rel.child))


def _children_pages(sf: SalesforceBulk2Hook, policy: Policy, rel: Relationship, parents: str):
    """The children (Id, lookup) of the parents past the cutoff, page by page. A relationship the org cannot
    answer through a Bulk query stops the run: its children would go unseen with their parents."""
    from simple_salesforce.exceptions import SalesforceError

    from retention.hooks.salesforce_bulk import BulkJobError
    from retention.steps.run import RetentionError

    try:
        yield from sf.query_pages(rel.child, _child_soql(rel.child, rel.field, [], parents))
    except (SalesforceError, BulkJobError) as err:
        raise RetentionError(
            f"deleting {policy.object} also deletes {rel.child} records ({rel.name}), and Salesforce would not list "
            f"them ({err}); retain them under cascade:, or, if they may go unretained (a read-only view such as "
            f"ActivityHistories), name {rel.name} under cascade_exempt:. Nothing was touched.") from err


def drop_parents(conn, policy: Policy, run: Run, parents: list[str]) -> None:
    """Take parents (and their staged children) out of this run."""
    if not parents:
        return
    conn.execute(sql.SQL("DELETE FROM {} WHERE sfid = ANY(%s)").format(run.staging), (parents,))
    for n, child in enumerate(policy.cascade):
        conn.execute(sql.SQL("DELETE FROM {} WHERE {} = ANY(%s)").format(staging(run, n),
                                                                        _column(child.relationship)), (parents,))


def staged_counts(conn, policy: Policy, run: Run) -> list[int]:
    """Staged children per cascade child, in the policy's order."""
    return [conn.execute(sql.SQL("SELECT count(*) FROM {}").format(staging(run, n))).fetchone()[0]
            for n in range(len(policy.cascade))]


# ------------------------------------------------------------------------------------- subset and load


def subset(conn, policy: Policy, run: Run, hash_key: bytes | None, keyring: Keyring | None = None) -> list[int]:
    """Each child's retained subset, computed inside Postgres, with the parent's sfid beside it."""
    from retention.steps.load import subset_table as build_subset

    return [build_subset(conn, child.retain.fields, staging(run, n), subset_table(run, n), hash_key,
                         parent_column=child.relationship, encrypt=child.retain.encrypt,
                         cache_table=child.retain.table, keyring=keyring)
            for n, child in enumerate(policy.cascade)]


def ensure_cache_tables(conn, policy: Policy, types: dict[str, dict[str, str]]) -> None:
    from retention import external_views
    from retention.cache import ensure_table

    for child in policy.cascade:
        ensure_table(conn, child.retain.table, child.retain.fields, types[child.object], parent=True,
                     encrypted=child.retain.encrypt)
        external_views.ensure(conn, policy, child.retain.table, external_views.visible(child.retain), child=True)


def load(conn, policy: Policy, run: Run, *, reader=None) -> list[int]:
    """Upsert each child's subset into its cache table, in the caller's transaction (with the parent's)."""
    from retention.cache import upsert_retained

    return [upsert_retained(conn, child.retain.table, list(child.retain.fields), subset_table(run, n), policy, run,
                            parent=True, reader=reader)
            for n, child in enumerate(policy.cascade)]


def retained_query(policy: Policy, run: Run, n: int, columns: str = "c.*") -> sql.Composed:
    child = policy.cascade[n]
    return sql.SQL("SELECT {} FROM {} c JOIN {} s USING (sfid) WHERE c._retention_run = {}").format(
        sql.SQL(columns), cache_table(child), staging(run, n), sql.Literal(run.run_key))


def org_count_soql(policy: Policy, run: Run, n: int, date_type: str) -> str:
    """The org's own count of the candidates (children of every parent past the cutoff), for validation."""
    child = policy.cascade[n]
    return (f"SELECT COUNT() FROM {child.object} WHERE {child.relationship} IN "
            f"({parent_soql(policy, run, date_type)})")


# --------------------------------------------------------------------------------------------------- act


def held_via_children(conn, policy: Policy, run: Run, parents: Pending, holds: set[str]) -> list[str]:
    """Parents among ``parents`` one of whose retained children is under a privacy hold now."""
    out: set[str] = set()
    for child in policy.cascade:
        rows = conn.execute(sql.SQL("SELECT _parent_sfid FROM {} WHERE _retention_run = %s AND sfid = ANY(%s) "
                                    "AND _parent_sfid IN ({})").format(cache_table(child), parents.query),
                            (run.run_key, sorted(holds), *parents.params)).fetchall()
        out |= {r[0] for r in rows}
    return sorted(out)


def children_changed(conn, sf: SalesforceBulk2Hook, policy: Policy, run: Run, undeclared_relations: list[dict],
                     date_type: str, parents: Pending) -> dict[str, str]:
    """Parents about to be deleted whose children in the org are not exactly the ones this run retained (a
    child added since extract, or one in a relationship the policy does not retain): {parent: reason}. Asked
    of the org just before the delete; those parents wait for the next run."""
    if policy.action == "mask":
        return {}
    source = parent_soql(policy, run, date_type)
    relations = [(n, Relationship(c.object, c.relationship, c.object)) for n, c in enumerate(policy.cascade)]
    relations += [(None, Relationship(**rel)) for rel in undeclared_relations]
    out: dict[str, str] = {}
    for n, rel in relations:
        _copy_children(conn, sf, policy, rel, source)
        if n is None:
            unretained = sql.SQL("true")
        else:
            unretained = sql.SQL("NOT EXISTS (SELECT 1 FROM {c} r WHERE r.sfid = k.sfid AND r._retention_run = {run}"
                                 " AND r._parent_sfid = k.parent)").format(
                c=cache_table(policy.cascade[n]), run=sql.Literal(run.run_key))
        rows = conn.execute(sql.SQL("SELECT k.parent, min(k.sfid) FROM _cascade_children k WHERE k.parent IN ({}) "
                                    "AND {} GROUP BY k.parent").format(parents.query, unretained),
                            parents.params).fetchall()
        for parent, child_id in rows:
            out.setdefault(parent, f"{CHANGED_CODE}: {rel.child} {child_id} would be deleted with it but was not "
                                   "retained by this run; the next run retains it first")
    return out


def follow_parents(conn, policy: Policy, run: Run) -> None:
    """Children take their parent's outcome: deleted with it (done), or kept with it (failed, refused, held)."""
    parent = sql.Identifier(CACHE_SCHEMA, policy.retain.table)
    for child in policy.cascade:
        conn.execute(sql.SQL(
            "UPDATE {c} c SET _action_status = p._action_status, _action_at = p._action_at, "
            "_bulk_job_id = p._bulk_job_id, _action_error = CASE WHEN p._action_status = 'done' THEN NULL "
            "ELSE 'parent ' || p.sfid || ': ' || coalesce(p._action_error, p._action_status) END "
            "FROM {p} p WHERE c._parent_sfid = p.sfid AND c._retention_run = {run} AND p._retention_run = {run} "
            "AND p._action_status IN ('done', 'failed', 'refused', 'held') "
            "AND c._action_status IS DISTINCT FROM p._action_status").format(
            c=cache_table(child), p=parent, run=sql.Literal(run.run_key)))


def summary(conn, policy: Policy, run: Run) -> dict[str, dict]:
    """Per child object: its cache table and how many of this run's children ended in each status."""
    out = {}
    for n, child in enumerate(policy.cascade):
        rows = conn.execute(sql.SQL("SELECT r._action_status, count(*) FROM ({}) r GROUP BY 1").format(
            retained_query(policy, run, n))).fetchall()
        out[child.object] = {"table": child.retain.table, "relationship": child.relationship, **dict(rows)}
    return out


def done_query(policy: Policy, run: Run, n: int) -> sql.Composed:
    """This run's children of ``policy.cascade[n]`` that went with their parents (their ``sfid``)."""
    return sql.SQL("{} AND c._action_status = 'done'").format(retained_query(policy, run, n, "c.sfid"))
