"""Set-based DML for Bulk API jobs (1.0 and 2.0): validate rows in Python, apply them in one statement each.

``org.create/update/delete`` cost a round trip per record, which is fine for REST but far too slow for
a 100,000-row bulk job. Here each row is only *checked* in Python (with ``org.coerce``, so values are
validated exactly as everywhere else); the valid rows are COPYed into a temp table and each
operation is a single ``INSERT ... SELECT`` / ``UPDATE ... FROM`` / ``DELETE ... USING`` over it.
Rows the database refuses (unknown id, already in the recycle bin) are then classified with one
join. Results come back in input order, each carrying the original row, as both Bulk APIs report.

Value conventions (Bulk API 2.0 CSV; Bulk 1.0 JSON is mapped onto them by the caller):
``None`` or ``""`` = not given (left unchanged on update), ``"#N/A"`` = set the field to null.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import dataclass

from psycopg import sql

from sandbox import ids, org, rules
from sandbox.objects import SObject

NULL_MARK = "#N/A"
TEXT_TYPES = ("string", "email", "phone", "url", "picklist", "textarea")
OPERATIONS = ("insert", "update", "upsert", "delete", "hardDelete")
_TMP = "ingest_rows"


class JobError(Exception):
    """The whole job (or Bulk 1.0 batch) fails before any row is applied, e.g. a bad CSV header."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass
class RowResult:
    """One input row's outcome; ``values`` is the row as received (for the result CSVs)."""

    id: str | None
    success: bool
    created: bool
    error: org.RecordError | None
    values: list

    def error_text(self) -> str:
        """``CODE:message:fields --`` as Bulk API 2.0 writes ``sf__Error``."""
        if self.error is None:
            return ""
        fields = ",".join(self.error.fields)
        return f"{self.error.code}:{self.error.message}:{fields + ' ' if fields else ''}--"


def _fail(code: str, message: str, fields: list[str] | None = None) -> org.RecordError:
    return org.RecordError(code, message, fields or [])


def _invalid_cross_reference() -> org.RecordError:
    return _fail("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")


def _entity_deleted() -> org.RecordError:
    return _fail("ENTITY_IS_DELETED", "entity is deleted")


def check_header(obj: SObject, operation: str, columns: list[str], external_id: str = "Id"):
    """Resolve the header to fields; raise JobError as Salesforce fails a job for a bad header."""
    if operation not in OPERATIONS:
        raise JobError(f"InvalidJob : Invalid operation: {operation}")
    if not columns or all(not c for c in columns):
        raise JobError("InvalidBatch : Failed to parse CSV header")
    if external_id.lower() != "id":
        raise JobError(f"InvalidBatch : Field name not found : {external_id}")
    seen = set()
    resolved = []
    for name in columns:
        f = obj.field(name.strip())
        if f is None:
            raise JobError(f"InvalidBatch : Field name not found : {name}")
        if f.name in seen:
            raise JobError(f"InvalidBatch : Duplicate field name: {name}")
        seen.add(f.name)
        resolved.append(f)
    if operation in ("delete", "hardDelete") and [f.name for f in resolved] != ["Id"]:
        raise JobError(f"InvalidBatch : The '{operation}' batch must contain only 'Id', {list(columns)}")
    return resolved


def process(conn, obj: SObject, operation: str, columns: list[str], rows: Iterable[list], *, faults=None,
            external_id: str = "Id", edit_converted: bool = False) -> list[RowResult]:
    """Apply one job's rows in a single transaction; raises JobError for a job-level failure.

    :param edit_converted: the user has "View and Edit Converted Leads" (converted leads are read only otherwise).
    """
    fields = check_header(obj, operation, columns, external_id)
    with conn.transaction():
        if operation in ("delete", "hardDelete"):
            return _delete(conn, obj, rows, hard=operation == "hardDelete", faults=faults)
        return _write(conn, obj, operation, fields, rows, faults=faults, edit_converted=edit_converted)


def _row_fault(faults) -> org.RecordError | None:
    hit = faults.record_failure() if faults is not None else None
    return _fail(*hit) if hit else None


# Fast paths for the common, valid case. A 100,000-row job calls these 100,000+ times, and the general
# functions (ids.is_valid, org.coerce, which rebuilds Field.describe() per value) cost several seconds
# there. Anything the fast path doesn't accept goes to the general function, which decides and words
# the error, so behaviour is unchanged.
_UPPER_FLAGS = str.maketrans({c: "1" for c in string.ascii_uppercase} | {c: "0" for c in ids.BASE62
                                                                         if c not in string.ascii_uppercase})
_SUFFIX = string.ascii_uppercase + "012345"
_BASE62 = frozenset(ids.BASE62)


def _fast_id(text: str, key_prefix: str) -> str | None:
    """The ID if it is a well-formed 18-character ID of this object, else None (ask org.normalise_id)."""
    if len(text) != 18 or not text.startswith(key_prefix) or not _BASE62.issuperset(text):
        return None
    flags = text[:15].translate(_UPPER_FLAGS)
    suffix = "".join(_SUFFIX[int(flags[i:i + 5][::-1], 2)] for i in (0, 5, 10))
    return text if suffix == text[15:] else None


class _Coercer:
    """org.coerce with the text-field limit computed once per field rather than once per value."""

    def __init__(self, obj: SObject):
        self.obj = obj
        self.limits = {f.name: f.describe()["length"] for f in obj.fields if f.type in TEXT_TYPES}

    def __call__(self, f, value):
        if isinstance(value, str) and value and f.name in self.limits:
            limit = self.limits[f.name]
            if (not limit or len(value) <= limit) and (f.type != "email" or org._EMAIL.match(value)):
                return value
        return org.coerce(self.obj, f, value)


def _normalise(obj: SObject, raw, call: str) -> str | org.RecordError:
    if isinstance(raw, str):
        fast = _fast_id(raw, obj.key_prefix)
        if fast is not None:
            return fast
    if raw is None or str(raw).strip() == "":
        return _fail("MISSING_ARGUMENT", f"Id not specified in an {call} call", ["Id"]) if call == "update" \
            else _fail("MISSING_ARGUMENT", f"Id not specified in a {call} call", ["Id"])
    full = org.normalise_id(obj, str(raw).strip())
    if isinstance(full, org.RecordError) and full.code == "INVALID_CROSS_REFERENCE_KEY":
        return _invalid_cross_reference()
    return full


# ---------------------------------------------------------------------------------------------
# delete / hardDelete


def _delete(conn, obj: SObject, rows, *, hard: bool, faults) -> list[RowResult]:
    results: list[RowResult] = []
    valid: list[tuple[int, str]] = []
    seen: set[str] = set()
    call = "delete"
    for rn, row in enumerate(rows):
        row = list(row)
        if len(row) != 1:
            raise JobError(f"InvalidBatch : Wrong number of columns in row {rn + 1}: expected 1, got {len(row)}")
        full = _normalise(obj, row[0], call)
        if isinstance(full, org.RecordError):
            results.append(RowResult(None, False, False, full, row))
            continue
        if full in seen:
            results.append(RowResult(full, False, False, _fail("DUPLICATE_VALUE", f"Duplicate id in list: {full}"),
                                     row))
            continue
        seen.add(full)
        fault = _row_fault(faults)
        results.append(RowResult(full, fault is None, False, fault, row))
        if fault is None:
            valid.append((rn, full))
    refused = rules.refuse_deletes(conn, obj, [rid for _, rid in valid])
    for rn, rid in valid:
        if rid in refused:
            results[rn].success, results[rn].error = False, refused[rid]
    valid = [(rn, rid) for rn, rid in valid if rid not in refused]
    if not valid:
        return results
    _load(conn, [sql.SQL("id char(18)")], [(rn, "d", rid) for rn, rid in valid])
    target = org.table(obj)
    if hard:  # hardDelete purges recycle-bin records too
        dml = sql.SQL("DELETE FROM {t} AS t USING {tmp} AS s WHERE t.id = s.id RETURNING s.rn, t.id")
    else:
        dml = sql.SQL("UPDATE {t} AS t SET isdeleted = true FROM {tmp} AS s WHERE t.id = s.id AND NOT t.isdeleted "
                      "RETURNING s.rn, t.id")
    stmt = sql.SQL("WITH d AS ({dml}), log AS (INSERT INTO org.deletions (object, id, hard) "
                   "SELECT {name}, id, {hard} FROM d) SELECT rn FROM d").format(
        dml=dml.format(t=target, tmp=sql.Identifier(_TMP)), name=sql.Literal(obj.name), hard=sql.Literal(hard))
    applied = {r[0] for r in conn.execute(stmt).fetchall()}
    _classify(conn, obj, results, valid, applied)
    rules.cascade(conn, obj, [rid for rn, rid in valid if rn in applied], hard=hard)
    return results


def _classify(conn, obj: SObject, results: list[RowResult], valid: list[tuple[int, str]], applied: set[int]) -> None:
    """Mark rows the DML did not touch: unknown id, or already in the recycle bin."""
    if len(applied) == len(valid):
        return
    missed = [rn for rn, _ in valid if rn not in applied]
    state = dict(conn.execute(
        sql.SQL("SELECT s.rn, t.isdeleted FROM {tmp} AS s LEFT JOIN {t} AS t ON t.id = s.id "
                "WHERE s.rn = ANY(%s)").format(tmp=sql.Identifier(_TMP), t=org.table(obj)),
        (missed,),
    ).fetchall())
    for rn in missed:
        res = results[rn]
        res.success = False
        res.error = _invalid_cross_reference() if state.get(rn) is None else _entity_deleted()


def _load(conn, columns: list[sql.Composable], rows: list[tuple]) -> None:
    """COPY rows into a fresh temp table (rn, kind, <columns>) that disappears at commit."""
    tmp = sql.Identifier(_TMP)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(tmp))
    conn.execute(sql.SQL("CREATE TEMP TABLE {} (rn integer, kind char(1), {}) ON COMMIT DROP").format(
        tmp, sql.SQL(", ").join(columns)))
    with conn.cursor() as cur, cur.copy(sql.SQL("COPY {} FROM STDIN").format(tmp)) as copy:
        for row in rows:
            copy.write_row(row)
    conn.execute(sql.SQL("ANALYZE {}").format(tmp))


# ---------------------------------------------------------------------------------------------
# insert / update / upsert


def _write(conn, obj: SObject, operation: str, fields: list, rows, *, faults, edit_converted: bool = False
           ) -> list[RowResult]:
    id_pos = next((i for i, f in enumerate(fields) if f.name == "Id"), None)
    data = [(i, f) for i, f in enumerate(fields) if f.name != "Id"]
    owner_pos = next((j for j, (_, f) in enumerate(data) if f.name == "OwnerId"), None)
    positions = {f.name: j for j, (_, f) in enumerate(data)}
    required = [(f, positions.get(f.name)) for f in obj.fields
                if not f.nillable and f.createable and f.type != "boolean" and f.name != "OwnerId"]
    coerce = _Coercer(obj)
    results: list[RowResult] = []
    staged: list[list] = []  # rn, kind, id, casenumber, (value, given) per data column
    seen: set[str] = set()
    width = len(fields)
    for rn, row in enumerate(rows):
        row = list(row)
        if len(row) != width:
            raise JobError(f"InvalidBatch : Wrong number of columns in row {rn + 1}: expected {width}, "
                           f"got {len(row)}")
        raw_id = row[id_pos] if id_pos is not None else None
        has_id = raw_id is not None and str(raw_id).strip() != ""
        if operation == "insert":
            kind = "i"
        elif operation == "update":
            kind = "u"
        else:
            kind = "u" if has_id else "i"
        try:
            record_id = None
            if kind == "i" and has_id:
                raise _fail("INVALID_FIELD_FOR_INSERT_UPDATE", "cannot specify Id in an insert call", ["Id"])
            if kind == "u":
                full = _normalise(obj, raw_id, "update")
                if isinstance(full, org.RecordError):
                    raise full
                if full in seen:
                    raise _fail("DUPLICATE_VALUE", f"Duplicate id in list: {full}")
                seen.add(full)
                record_id = full
            cells = []
            for i, f in data:
                value = row[i]
                if value is None or value == "":
                    if kind == "i":
                        cells += [False if f.type == "boolean" else None, True]
                    else:
                        cells += [None, False]
                    continue
                if (kind == "i" and not f.createable) or (kind == "u" and not f.updateable):
                    raise _fail(
                        "INVALID_FIELD_FOR_INSERT_UPDATE",
                        f"Unable to create/update fields: {f.name}. Please check the security settings of this "
                        "field and verify that it is read/write for your profile or permission set.", [f.name])
                cells += [coerce(f, None if value == NULL_MARK else value), True]
            if kind == "i":
                for f, pos in required:
                    if pos is None or cells[2 * pos] is None:
                        raise _fail("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{f.name}]", [f.name])
                if owner_pos is not None and cells[2 * owner_pos] is None:
                    cells[2 * owner_pos] = org.DEFAULT_OWNER
        except org.RecordError as err:
            results.append(RowResult(record_id if kind == "u" else None, False, False, err, row))
            continue
        fault = _row_fault(faults)
        results.append(RowResult(record_id, fault is None, kind == "i" and fault is None, fault, row))
        if fault is None:
            staged.append([rn, kind, record_id, None, *cells])

    refused = rules.refuse_updates(conn, obj, [s[2] for s in staged if s[1] == "u"], edit_converted=edit_converted)
    if refused:
        for s in staged:
            if s[1] == "u" and s[2] in refused:
                results[s[0]].success, results[s[0]].error = False, refused[s[2]]
        staged = [s for s in staged if not (s[1] == "u" and s[2] in refused)]
    inserts = [s for s in staged if s[1] == "i"]
    for s, new_id in zip(inserts, org.reserve_ids(conn, obj, len(inserts)), strict=True):
        s[2] = new_id
        results[s[0]].id = new_id
        if obj.table == "case":
            s[3] = f"{ids.serial_of(new_id):08d}"  # as org.create and the seed number cases
    if not staged:
        return results

    cols = [sql.SQL("id char(18)"), sql.SQL("casenumber text")]
    for j, (_, f) in enumerate(data):
        cols += [sql.SQL("{} {}").format(sql.Identifier(f"v{j}"), sql.SQL(f.pg_type)),
                 sql.SQL("{} boolean").format(sql.Identifier(f"s{j}"))]
    _load(conn, cols, staged)
    tmp, target = sql.Identifier(_TMP), org.table(obj)

    if inserts:
        names = [sql.Identifier(c) for c in ("id", "isdeleted", "createddate", "lastmodifieddate", "systemmodstamp")]
        exprs = [sql.SQL("s.id"), sql.SQL("false"), sql.SQL("now()"), sql.SQL("now()"), sql.SQL("now()")]
        if owner_pos is None:
            names.append(sql.Identifier("ownerid"))
            exprs.append(sql.Literal(org.DEFAULT_OWNER))
        if obj.table == "case":
            names.append(sql.Identifier("casenumber"))
            exprs.append(sql.SQL("s.casenumber"))
        for j, (_, f) in enumerate(data):
            names.append(sql.Identifier(f.column))
            exprs.append(sql.SQL("s.{}").format(sql.Identifier(f"v{j}")))
        conn.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} AS s WHERE s.kind = 'i' ORDER BY s.rn").format(
            target, sql.SQL(", ").join(names), sql.SQL(", ").join(exprs), tmp))

    updates = [(s[0], s[2]) for s in staged if s[1] == "u"]
    if updates:
        sets = [sql.SQL("lastmodifieddate = now()")]
        for j, (_, f) in enumerate(data):
            sets.append(sql.SQL("{c} = CASE WHEN s.{s} THEN s.{v} ELSE t.{c} END").format(
                c=sql.Identifier(f.column), s=sql.Identifier(f"s{j}"), v=sql.Identifier(f"v{j}")))
        applied = {r[0] for r in conn.execute(sql.SQL(
            "UPDATE {} AS t SET {} FROM {} AS s WHERE s.kind = 'u' AND t.id = s.id AND NOT t.isdeleted "
            "RETURNING s.rn").format(target, sql.SQL(", ").join(sets), tmp)).fetchall()}
        _classify(conn, obj, results, updates, applied)
    return results


__all__ = ["JobError", "NULL_MARK", "OPERATIONS", "RowResult", "check_header", "process"]
