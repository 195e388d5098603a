"""The platform's refusals and cascades on writes, applied the same way by every API (REST, collections, Bulk).

Each rule is set-based (one query per relationship for any number of records), so a 100,000-row Bulk job pays
what a single REST call does. ``org.update``/``org.delete`` and the Bulk ingest path (``ingest``) call these
before and after their DML.

Sources:
- Converted leads: "After a lead has been converted, it's read only ... Only users with the View and Edit
  Converted Leads permission can update converted lead records" (Object Reference: Lead); the status code is
  CANNOT_UPDATE_CONVERTED_LEAD, "A converted lead couldn't be updated" (SOAP API Developer Guide, Core Data
  Types, StatusCode). Deleting one is not documented either way; "read only" is taken to cover deletes too.
- Cascades: "If you delete a parent object, you delete its children automatically, as long as each child
  object can be deleted ... if a CaseComment is not deletable or is being used, then the delete() call on the
  parent Case fails" (SOAP API Developer Guide: delete()); DELETE_FAILED: "You can't delete a record because
  it is in use by another object" (StatusCode).
- Accounts: deleting one takes its contacts and opportunities into the Recycle Bin, and "you can't delete an
  account" when "a case is related to the account" (Salesforce Help: Guidelines for Deleting Accounts). An
  account with Closed Won opportunities: the current page is cut off at this point and an older version
  describes a prompt in the UI; the API's behaviour is not documented, so the sandbox refuses (stricter).
"""

from __future__ import annotations

from psycopg import sql

from sandbox.objects import CHILD_RELATIONSHIPS, SObject, get_object

CONVERTED_LEAD_CODE = "CANNOT_UPDATE_CONVERTED_LEAD"
# The message Salesforce sends is not in the documentation; this is the one seen from real orgs.
CONVERTED_LEAD_MESSAGE = "cannot reference converted lead"
DELETE_FAILED = "DELETE_FAILED"
IN_USE = "You can't delete a record because it is in use by another object"
# How many child ids a refusal message quotes.
_QUOTED = 5


def _error(code: str, message: str):
    from sandbox.org import RecordError

    return RecordError(code, message, [])


def _table(obj: SObject) -> sql.Identifier:
    return sql.Identifier("org", obj.table)


def converted_leads(conn, obj: SObject, ids: list[str]) -> set[str]:
    if obj.name != "Lead" or not ids:
        return set()
    rows = conn.execute("SELECT id FROM org.lead WHERE id = ANY(%s) AND isconverted AND NOT isdeleted", (ids,))
    return {r[0] for r in rows.fetchall()}


def refuse_updates(conn, obj: SObject, ids: list[str], *, edit_converted: bool = False) -> dict[str, object]:
    """Records among ``ids`` the platform will not update, with the error each gets."""
    if edit_converted:
        return {}
    error = _error(CONVERTED_LEAD_CODE, CONVERTED_LEAD_MESSAGE)
    return {rid: error for rid in converted_leads(conn, obj, ids)}


def _children(conn, rel, ids: list[str], *, where: str = "") -> dict[str, list[str]]:
    """Live children of each parent id through one relationship: {parent id: [child ids]}."""
    child = get_object(rel.child)
    column = sql.Identifier(rel.field.lower())
    rows = conn.execute(
        sql.SQL("SELECT {c}, id FROM {t} WHERE {c} = ANY(%s) AND NOT isdeleted{w} ORDER BY id").format(
            c=column, t=_table(child), w=sql.SQL(where)),
        (ids,),
    ).fetchall()
    out: dict[str, list[str]] = {}
    for parent, child_id in rows:
        out.setdefault(parent, []).append(child_id)
    return out


def _in_use(name: str, found: list[str]) -> str:
    shown = ", ".join(found[:_QUOTED]) + (", ..." if len(found) > _QUOTED else "")
    return f"{IN_USE}: {len(found)} {name} ({shown})"


def refuse_deletes(conn, obj: SObject, ids: list[str]) -> dict[str, object]:
    """Records among ``ids`` the platform will not delete, with the error each gets (checked through cascades)."""
    if not ids:
        return {}
    refused: dict[str, object] = {}
    for rid in converted_leads(conn, obj, ids):
        refused[rid] = _error(CONVERTED_LEAD_CODE, CONVERTED_LEAD_MESSAGE)
    for rel in CHILD_RELATIONSHIPS:
        if rel.parent != obj.name or not rel.restricted_delete:
            continue
        for parent, found in _children(conn, rel, ids).items():
            refused.setdefault(parent, _error(DELETE_FAILED, _in_use(rel.name, found)))
    if obj.name == "Account":
        won = next(r for r in CHILD_RELATIONSHIPS if r.parent == "Account" and r.child == "Opportunity")
        for parent, found in _children(conn, won, ids, where=" AND iswon").items():
            refused.setdefault(parent, _error(DELETE_FAILED, _in_use("Closed Won Opportunities", found)))
    # A cascade fails when a child it would take cannot be deleted.
    for rel in CHILD_RELATIONSHIPS:
        if rel.parent != obj.name or not rel.cascade_delete:
            continue
        by_parent = _children(conn, rel, [i for i in ids if i not in refused])
        child_ids = [c for found in by_parent.values() for c in found]
        blocked = refuse_deletes(conn, get_object(rel.child), child_ids)
        for parent, found in by_parent.items():
            stuck = [c for c in found if c in blocked]
            if stuck:
                reason = blocked[stuck[0]].message
                refused.setdefault(parent, _error(DELETE_FAILED, f"{rel.name} {stuck[0]} cannot be deleted: {reason}"))
    return refused


def cascade(conn, obj: SObject, ids: list[str], *, hard: bool) -> int:
    """Delete the children that go with deleted parents (soft: to the Recycle Bin; hard: purged), recursively,
    each logged in ``org.deletions`` as the parent is. Returns how many records went with them."""
    total = 0
    for rel in CHILD_RELATIONSHIPS:
        if rel.parent != obj.name or not rel.cascade_delete or not ids:
            continue
        child = get_object(rel.child)
        column = sql.Identifier(rel.field.lower())
        if hard:
            dml = sql.SQL("DELETE FROM {t} WHERE {c} = ANY(%s) RETURNING id")
        else:
            dml = sql.SQL("UPDATE {t} SET isdeleted = true WHERE {c} = ANY(%s) AND NOT isdeleted RETURNING id")
        stmt = sql.SQL("WITH d AS ({dml}), log AS (INSERT INTO org.deletions (object, id, hard) "
                       "SELECT {name}, id, {hard} FROM d) SELECT id FROM d").format(
            dml=dml.format(t=_table(child), c=column), name=sql.Literal(child.name), hard=sql.Literal(hard))
        gone = [r[0] for r in conn.execute(stmt, (ids,)).fetchall()]
        total += len(gone) + cascade(conn, child, gone, hard=hard)
    return total
