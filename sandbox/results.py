"""Query results held server-side, as Salesforce does, so clients can page through them.

A query runs once: its rows are materialised, numbered, into an unlogged table in schema
``results`` of the org database. REST ``nextRecordsUrl`` locators and Bulk 2.0 ``Sforce-Locator``
pages are then cheap range reads of that table, the result is a stable snapshot, and nothing
piles up in the server's memory however many records match.
"""

from __future__ import annotations

import json
import re
import secrets

from psycopg import ClientCursor, sql

from sandbox import ids, org, soql
from sandbox.objects import get_object

SCHEMA = "results"
REST_MAX_BATCH = 2000
REST_MIN_BATCH = 200
# Salesforce keeps query cursors for 15 minutes of inactivity (2 days for Bulk results).
EXPIRY_MINUTES = {"rest": 15, "bulk": 2 * 24 * 60}

QueryError = soql.SoqlError


def create_schema(conn) -> None:
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
    conn.execute(
        """CREATE TABLE IF NOT EXISTS results.cursors (
               locator text PRIMARY KEY, kind text NOT NULL, table_name text NOT NULL, sobject text NOT NULL,
               columns jsonb NOT NULL, total bigint NOT NULL, batch integer NOT NULL DEFAULT 2000,
               used_at timestamptz NOT NULL DEFAULT now())"""
    )


def batch_size(header: str | None) -> int:
    """Page size from ``Sforce-Query-Options: batchSize=N`` (200..2000; Salesforce's default is 2000)."""
    m = re.search(r"batchSize\s*=\s*(\d+)", header or "")
    if not m:
        return REST_MAX_BATCH
    return max(REST_MIN_BATCH, min(REST_MAX_BATCH, int(m.group(1))))


def new_locator(prefix: str = "01g") -> str:
    return prefix + ids.INSTANCE + "0" + "".join(secrets.choice(ids.BASE62) for _ in range(12))


def _expire(conn) -> None:
    rows = conn.execute(
        "DELETE FROM results.cursors WHERE used_at < now() - make_interval(mins => CASE kind WHEN 'rest' THEN %s "
        "ELSE %s END) RETURNING table_name",
        (EXPIRY_MINUTES["rest"], EXPIRY_MINUTES["bulk"]),
    ).fetchall()
    for (name,) in rows:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(SCHEMA, name)))


def materialize(conn, compiled, *, kind: str, locator: str | None = None, batch: int = REST_MAX_BATCH
                ) -> tuple[str, int]:
    """Run a compiled query into a numbered result table; returns (locator, row count)."""
    _expire(conn)
    locator = locator or new_locator()
    name = "r_" + locator.lower() + "_" + secrets.token_hex(4)
    aliases = sql.SQL(", ").join(sql.Identifier(f"c{i}") for i in range(len(compiled.columns)))
    stmt = sql.SQL("CREATE UNLOGGED TABLE {} AS SELECT row_number() OVER () AS rn, q.* FROM ({}) AS q({})").format(
        sql.Identifier(SCHEMA, name), compiled.sql, aliases
    )
    with ClientCursor(conn) as cur:
        cur.execute(stmt, compiled.params)
        total = cur.rowcount
    conn.execute(sql.SQL("CREATE UNIQUE INDEX ON {} (rn)").format(sql.Identifier(SCHEMA, name)))
    conn.execute(
        "INSERT INTO results.cursors (locator, kind, table_name, sobject, columns, total, batch)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (locator, kind, name, compiled.sobject.name, json.dumps(compiled.columns), total, batch),
    )
    return locator, total


def cursor(conn, locator: str) -> dict | None:
    row = conn.execute(
        "UPDATE results.cursors SET used_at = now() WHERE locator = %s"
        " RETURNING table_name, sobject, columns, total, kind, batch",
        (locator,),
    ).fetchone()
    if row is None:
        return None
    return {"table": row[0], "sobject": row[1], "columns": row[2], "total": row[3], "kind": row[4], "batch": row[5]}


def drop(conn, locator: str) -> None:
    row = conn.execute("DELETE FROM results.cursors WHERE locator = %s RETURNING table_name", (locator,)).fetchone()
    if row:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(SCHEMA, row[0])))


def read_rows(conn, cur: dict, offset: int, limit: int) -> list[tuple]:
    """Rows offset+1 .. offset+limit of a result, without the row number."""
    rows = conn.execute(
        sql.SQL("SELECT * FROM {} WHERE rn > %s ORDER BY rn LIMIT %s").format(sql.Identifier(SCHEMA, cur["table"])),
        (offset, limit),
    ).fetchall()
    return [r[1:] for r in rows]


# ---------------------------------------------------------------------------------------------
# REST query pages.

def _records(obj, columns: list[str], rows: list[tuple], api_version: str) -> list[dict]:
    """Rows as REST JSON records, relationship columns (``Account.Name``) nested as Salesforce does."""
    out = []
    for row in rows:
        values = dict(zip(columns, row, strict=True))
        rid = values.get("Id")
        rec = {"attributes": {"type": obj.name, "url": f"/services/data/v{api_version}/sobjects/{obj.name}/"
                              + (rid.strip() if rid else "")}}
        for col, value in values.items():
            if "." in col:
                rel, fname = col.split(".", 1)
                ref = next(f for f in obj.fields if f.relationship_name == rel)
                parent = get_object(ref.reference_to[0])
                nested = rec.get(rel)
                if rel not in rec:
                    nested = {"attributes": {"type": parent.name, "url": ""}}
                    rec[rel] = nested
                if nested is not None:
                    nested[fname] = org.json_value(parent.field(fname), value)
            else:
                rec[col] = org.json_value(obj.field(col), value)
        for col in list(rec):
            nested = rec[col]
            if isinstance(nested, dict) and col != "attributes" and all(
                v is None for k, v in nested.items() if k != "attributes"
            ):
                rec[col] = None
        out.append(rec)
    return out


def _page(conn, locator: str, cur: dict, offset: int, batch: int, api_version: str) -> dict:
    rows = read_rows(conn, cur, offset, batch)
    obj = get_object(cur["sobject"])
    end = offset + len(rows)
    page = {"totalSize": cur["total"], "done": end >= cur["total"],
            "records": _records(obj, cur["columns"], rows, api_version)}
    if page["done"]:
        drop(conn, locator)
    else:
        page["nextRecordsUrl"] = f"/services/data/v{api_version}/query/{locator}-{end}"
    return page


def start_rest_query(conn, text: str, *, include_deleted: bool, batch_size: int, api_version: str,
                     resolve_object=get_object) -> dict:
    compiled = soql.compile_query(text, include_deleted=include_deleted, resolve_object=resolve_object)
    if compiled.count_only:
        with ClientCursor(conn) as cur:
            cur.execute(compiled.sql, compiled.params)
            total = cur.fetchone()[0]
        return {"totalSize": total, "done": True, "records": []}
    locator, _total = materialize(conn, compiled, kind="rest", batch=batch_size)
    return _page(conn, locator, cursor(conn, locator), 0, batch_size, api_version)


def next_rest_page(conn, locator_with_offset: str, *, api_version: str) -> dict | None:
    locator, _, offset = locator_with_offset.rpartition("-")
    if not locator or not offset.isdigit():
        return None
    cur = cursor(conn, locator)
    if cur is None:
        return None
    return _page(conn, locator, cur, int(offset), cur["batch"], api_version)
