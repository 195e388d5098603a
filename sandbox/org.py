"""The sandbox org's storage: one Postgres table per sObject in schema ``org`` of the sandbox database.

Record writes from every API (REST, collections, Bulk 1.0 and 2.0) go through ``create``, ``update``
and ``delete`` here, so the platform rules (IDs, audit fields, recycle bin, field validation) hold
the same whichever API a client uses. Values are validated and converted with ``coerce``.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from psycopg import sql

from sandbox import ids, rules
from sandbox.objects import COMPUTED, DERIVED, OBJECTS, REFERENCE_PREFIXES, SYSTEM_FIELDS, Field, SObject

SCHEMA = "org"
UTC = dt.UTC
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class RecordError(Exception):
    """A per-record failure, reported in Salesforce's ``{statusCode, message, fields}`` shape."""

    def __init__(self, code: str, message: str, fields: list[str] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = fields or []

    def as_dict(self) -> dict:
        return {"statusCode": self.code, "message": self.message, "fields": self.fields}


def _column_ddl(obj: SObject, f: Field) -> sql.Composable:
    if f.name == "Id":
        return sql.SQL("id char(18) PRIMARY KEY")
    derived = DERIVED.get(obj.table, {}).get(f.column)
    if derived:
        first, last = (sql.Identifier(c) for c in derived)
        return sql.SQL(
            "{} text GENERATED ALWAYS AS (CASE WHEN coalesce({}, '') = '' THEN {} ELSE {} || ' ' || {} END) STORED"
        ).format(sql.Identifier(f.column), first, last, first, last)
    computed = COMPUTED.get(obj.table, {}).get(f.column)
    if computed:
        return sql.SQL("{} {} GENERATED ALWAYS AS ({}) STORED").format(sql.Identifier(f.column), sql.SQL(f.pg_type),
                                                                     sql.SQL(computed))
    not_null = sql.SQL(" NOT NULL") if f.name in ("IsDeleted", "CreatedDate", "LastModifiedDate",
                                                   "SystemModstamp") else sql.SQL("")
    default = sql.SQL(" DEFAULT false") if f.type == "boolean" else sql.SQL("")
    return sql.SQL("{} {}{}{}").format(sql.Identifier(f.column), sql.SQL(f.pg_type), not_null, default)


def table(obj: SObject) -> sql.Identifier:
    return sql.Identifier(SCHEMA, obj.table)


def create_schema(conn) -> None:
    """Create the org tables if missing (idempotent)."""
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
    # Every deletion, soft or hard, so that Heroku Connect's delete poll and the REST
    # ``sobjects/X/deleted`` resource can see records that are no longer in their table.
    conn.execute(
        """CREATE TABLE IF NOT EXISTS org.deletions (
               seq bigserial PRIMARY KEY, object text NOT NULL, id char(18) NOT NULL,
               deleted_at timestamptz NOT NULL DEFAULT clock_timestamp(), hard boolean NOT NULL)"""
    )
    conn.execute("CREATE INDEX IF NOT EXISTS deletions_object_at ON org.deletions (object, deleted_at)")
    # Any change bumps SystemModstamp, however it was made, so a mirror polling on it never misses one.
    conn.execute(
        """CREATE OR REPLACE FUNCTION org.touch() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             NEW.systemmodstamp := greatest(clock_timestamp(), OLD.systemmodstamp + interval '1 millisecond');
             RETURN NEW;
           END $$"""
    )
    for obj in OBJECTS.values():
        cols = sql.SQL(", ").join(_column_ddl(obj, f) for f in obj.fields)
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(table(obj), cols))
        conn.execute(sql.SQL("CREATE SEQUENCE IF NOT EXISTS {}").format(sql.Identifier(SCHEMA, obj.table + "_serial")))
        conn.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (systemmodstamp)").format(
                sql.Identifier(obj.table + "_systemmodstamp"), table(obj)
            )
        )
        # "The platform maintains indexes on the following fields for most objects: ... Foreign key relationships
        # (lookups and master-detail)" (Large Data Volumes best practices, "Indexes":
        # https://developer.salesforce.com/docs/platform/salesforce-large-data-volumes-bp/guide/ldv-deployments-infrastructure-indexes.html).
        # The org's own work on a delete (the children a record has) reads them.
        for ref in (f for f in obj.fields if f.type == "reference"):
            conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
                sql.Identifier(f"{obj.table}_{ref.column}"), table(obj), sql.Identifier(ref.column)))
        conn.execute(
            sql.SQL("CREATE OR REPLACE TRIGGER touch BEFORE UPDATE ON {} FOR EACH ROW EXECUTE FUNCTION org.touch()")
            .format(table(obj))
        )
    # A case is closed by its Status, and the platform stamps ClosedDate (neither field is writable).
    conn.execute(
        """CREATE OR REPLACE FUNCTION org.case_closed() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             NEW.isclosed := coalesce(NEW.status = 'Closed', false);
             IF NOT NEW.isclosed THEN
               NEW.closeddate := NULL;
             ELSIF NEW.closeddate IS NULL THEN
               NEW.closeddate := clock_timestamp();
             END IF;
             RETURN NEW;
           END $$"""
    )
    conn.execute("CREATE OR REPLACE TRIGGER case_closed BEFORE INSERT OR UPDATE ON org.case FOR EACH ROW "
                 "EXECUTE FUNCTION org.case_closed()")
    conn.execute(
        "CREATE INDEX IF NOT EXISTS privacyhold_referencerecordid ON org.privacyhold (referencerecordid)"
    )


def reserve_ids(conn, obj: SObject, count: int) -> list[str]:
    """Allocate ``count`` new record IDs in one round trip."""
    if count <= 0:
        return []
    seq = f"{SCHEMA}.{obj.table}_serial"
    last = conn.execute("SELECT setval(%s, nextval(%s) + %s - 1)", (seq, seq, count)).fetchone()[0]
    return [ids.make_id(obj.key_prefix, n) for n in range(last - count + 1, last + 1)]


def now() -> dt.datetime:
    return dt.datetime.now(UTC)


# ---------------------------------------------------------------------------------------------
# Values: JSON (REST, Bulk 1.0) and CSV text (Bulk 2.0) in, typed Python values out.

_DATETIME = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)(Z|[+-]\d{2}:?\d{2})?$")


def parse_datetime(text: str) -> dt.datetime:
    m = _DATETIME.match(text.strip())
    if not m:
        raise ValueError(text)
    zone = m.group(3) or "Z"
    if zone == "Z":
        zone = "+00:00"
    elif ":" not in zone:
        zone = zone[:3] + ":" + zone[3:]
    value = dt.datetime.fromisoformat(f"{m.group(1)}T{m.group(2)}{zone}")
    return value.astimezone(UTC)


def coerce(obj: SObject, f: Field, value):
    """Validate one field value as Salesforce would; None means null."""
    if value is None or value == "":
        if not f.nillable and f.type != "boolean":
            raise RecordError("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{f.name}]", [f.name])
        return False if f.type == "boolean" else None
    bad = RecordError(
        "INVALID_TYPE_ON_FIELD_IN_RECORD" if f.type not in ("date", "datetime") else "INVALID_FIELD",
        f"{f.name}: value not of required type: {value}",
        [f.name],
    )
    try:
        if f.type in ("id", "reference"):
            text = str(value)
            if not ids.is_valid(text):
                raise RecordError("MALFORMED_ID", f"{f.name}: id value of incorrect type: {text}", [f.name])
            # A lookup takes only the types describe lists in referenceTo (PrivacyHold.ReferenceRecordId takes no
            # Case); the StatusCode is FIELD_INTEGRITY_EXCEPTION, worded as real orgs word it.
            if f.reference_to and REFERENCE_PREFIXES.get(text[:3]) not in f.reference_to:
                raise RecordError("FIELD_INTEGRITY_EXCEPTION",
                                  f"field integrity exception: {f.name} (id value of incorrect type): {text}", [f.name])
            return text if len(text) == 18 else ids.to18(text)
        if f.type == "boolean":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1"):
                return True
            if str(value).lower() in ("false", "0"):
                return False
            raise bad
        if f.type == "date":
            if isinstance(value, str) and "T" in value:
                return parse_datetime(value).date()
            return dt.date.fromisoformat(str(value))
        if f.type == "datetime":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return dt.datetime.fromtimestamp(value / 1000, UTC)  # Bulk 1.0 JSON sends epoch ms
            return parse_datetime(str(value))
        if f.type == "int":
            return int(value)
        if f.type in ("double", "currency", "percent"):
            return float(value)
    except RecordError:
        raise
    except (ValueError, TypeError):
        raise bad from None
    text = str(value)
    limit = f.max_length
    if limit and len(text) > limit:
        raise RecordError("STRING_TOO_LONG", f"{f.name}: data value too large: {text[:40]} (max length={limit})",
                          [f.name])
    if f.type == "email" and not _EMAIL.match(text):
        raise RecordError("INVALID_EMAIL_ADDRESS", f"{f.name}: invalid email address: {text}", [f.name])
    if f.type == "picklist" and f.picklist and text not in f.picklist:
        # Unrestricted picklists accept any value, as in a default org.
        pass
    return text


def writable_values(obj: SObject, values: dict, *, creating: bool) -> dict[Field, object]:
    """Resolve field names and coerce values; reject unknown and read-only fields."""
    out: dict[Field, object] = {}
    for name, value in values.items():
        if name == "attributes" or (name == "Id" and not creating):
            continue
        f = obj.field(name)
        if f is None:
            raise RecordError("INVALID_FIELD", f"No such column '{name}' on sobject of type {obj.name}", [name])
        if (creating and not f.createable) or (not creating and not f.updateable):
            raise RecordError(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: {f.name}. Please check the security settings of this field "
                "and verify that it is read/write for your profile or permission set.",
                [f.name],
            )
        out[f] = coerce(obj, f, value)
    if creating:
        for f in obj.fields:
            if f not in out and not f.nillable and f.createable and f.type != "boolean" and f.name != "OwnerId":
                raise RecordError("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{f.name}]", [f.name])
    return out


# ---------------------------------------------------------------------------------------------
# Record operations. Each takes an open connection; the caller owns the transaction.

DEFAULT_OWNER = ids.make_id("005", 1)


@dataclass
class Outcome:
    """The result of one record operation, as the DML APIs report it."""

    id: str | None
    success: bool
    created: bool = False
    errors: list[RecordError] = field(default_factory=list)


def create(conn, obj: SObject, values: dict) -> Outcome:
    try:
        fields = writable_values(obj, values, creating=True)
    except RecordError as err:
        return Outcome(None, False, errors=[err])
    (record_id,) = reserve_ids(conn, obj, 1)
    stamp = now()
    row = {f.column: v for f, v in fields.items()}
    row.setdefault("ownerid", DEFAULT_OWNER)
    row.update(id=record_id, isdeleted=False, createddate=stamp, lastmodifieddate=stamp, systemmodstamp=stamp)
    if obj.table == "case":
        row["casenumber"] = f"{ids.serial_of(record_id):08d}"  # as the seed numbers cases
    cols = list(row)
    conn.execute(
        sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            table(obj), sql.SQL(", ").join(map(sql.Identifier, cols)), sql.SQL(", ").join(sql.Placeholder() * len(cols))
        ),
        [row[c] for c in cols],
    )
    return Outcome(record_id, True, created=True)


def _state(conn, obj: SObject, record_id: str) -> str | None:
    """'live', 'deleted' (in the recycle bin) or None (never existed or hard-deleted)."""
    row = conn.execute(sql.SQL("SELECT isdeleted FROM {} WHERE id = %s").format(table(obj)), (record_id,)).fetchone()
    if row is None:
        return None
    return "deleted" if row[0] else "live"


def normalise_id(obj: SObject, record_id: str) -> str | RecordError:
    if not record_id or not ids.is_valid(record_id):
        return RecordError("MALFORMED_ID", f"malformed id {record_id}", ["Id"])
    full = record_id if len(record_id) == 18 else ids.to18(record_id)
    if full[:3] != obj.key_prefix:
        return RecordError("INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id: {record_id}", ["Id"])
    return full


def update(conn, obj: SObject, record_id: str, values: dict, *, edit_converted: bool = False) -> Outcome:
    full = normalise_id(obj, record_id)
    if isinstance(full, RecordError):
        return Outcome(record_id, False, errors=[full])
    try:
        fields = writable_values(obj, values, creating=False)
    except RecordError as err:
        return Outcome(full, False, errors=[err])
    state = _state(conn, obj, full)
    if state != "live":
        code, msg = ("ENTITY_IS_DELETED", "entity is deleted") if state else (
            "INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id: {record_id}")
        return Outcome(full, False, errors=[RecordError(code, msg, [])])
    refused = rules.refuse_updates(conn, obj, [full], edit_converted=edit_converted)
    if refused:
        return Outcome(full, False, errors=[refused[full]])
    row = {f.column: v for f, v in fields.items()}
    row["lastmodifieddate"] = now()
    assignments = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in row)
    conn.execute(sql.SQL("UPDATE {} SET {} WHERE id = %s").format(table(obj), assignments), [*row.values(), full])
    return Outcome(full, True)


def delete(conn, obj: SObject, record_id: str, *, hard: bool = False) -> Outcome:
    """Soft delete moves the record to the recycle bin; hard delete purges it (hardDelete jobs)."""
    full = normalise_id(obj, record_id)
    if isinstance(full, RecordError):
        return Outcome(record_id, False, errors=[full])
    state = _state(conn, obj, full)
    if state is None:
        return Outcome(full, False, errors=[RecordError("INVALID_CROSS_REFERENCE_KEY",
                                                        f"invalid cross reference id: {record_id}")])
    if state == "deleted" and not hard:
        return Outcome(full, False, errors=[RecordError("ENTITY_IS_DELETED", "entity is deleted")])
    refused = rules.refuse_deletes(conn, obj, [full])
    if refused:
        return Outcome(full, False, errors=[refused[full]])
    if hard:
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(table(obj)), (full,))
    else:
        conn.execute(sql.SQL("UPDATE {} SET isdeleted = true WHERE id = %s").format(table(obj)), (full,))
    conn.execute("INSERT INTO org.deletions (object, id, hard) VALUES (%s, %s, %s)", (obj.name, full, hard))
    rules.cascade(conn, obj, [full], hard=hard)
    return Outcome(full, True)


def fetch(conn, obj: SObject, record_id: str, field_names: list[str] | None = None) -> dict | RecordError:
    """One live record as a dict of API field name -> Python value."""
    full = normalise_id(obj, record_id)
    if isinstance(full, RecordError):
        return full
    fields = [obj.field(n) for n in field_names] if field_names else list(obj.fields)
    missing = [n for n, f in zip(field_names or [], fields, strict=False) if f is None]
    if missing:
        return RecordError("INVALID_FIELD", f"No such column '{missing[0]}' on sobject of type {obj.name}")
    cols = sql.SQL(", ").join(sql.Identifier(f.column) for f in fields)
    row = conn.execute(
        sql.SQL("SELECT isdeleted, {} FROM {} WHERE id = %s").format(cols, table(obj)), (full,)
    ).fetchone()
    if row is None:
        return RecordError("NOT_FOUND", "The requested resource does not exist")
    if row[0]:
        return RecordError("ENTITY_IS_DELETED", "entity is deleted")
    return {f.name: v for f, v in zip(fields, row[1:], strict=True)}


def json_value(f: Field, value):
    """A Python value as Salesforce's REST JSON renders it."""
    if value is None:
        return None
    if f.type == "datetime":
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"
    if f.type == "date":
        return value.isoformat()
    if f.type in ("currency", "percent"):
        return float(value)
    if isinstance(value, str) and f.type in ("id", "reference"):
        return value.strip()
    return value


def record_json(obj: SObject, api_version: str, values: dict[str, object]) -> dict:
    url = f"/services/data/v{api_version}/sobjects/{obj.name}/{values.get('Id')}"
    out = {"attributes": {"type": obj.name, "url": url}}
    for name, value in values.items():
        f = obj.field(name)
        out[name] = json_value(f, value) if f else value
    return out


__all__ = [
    "SYSTEM_FIELDS",
    "RecordError",
    "Outcome",
    "create",
    "update",
    "delete",
    "fetch",
    "coerce",
    "create_schema",
    "reserve_ids",
    "record_json",
    "json_value",
]
