"""Both SOQL engines against one corpus of documented cases (tests/soql_corpus.yaml), each on its own.

The sandbox is the product's oracle, so neither engine is checked against the other: the sandbox's engine runs
each filter over the corpus records in its `org` schema; the product's policy filter renders it to SQL run over
the same records laid out as a Heroku Connect mirror, and to SOQL that the sandbox must accept and answer alike.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import sql

from retention import soql_filter
from sandbox import ids
from sandbox.connect import mirror_type, mirrored_fields
from sandbox.objects import get_object
from sandbox.soql import SoqlError, compile_query

CORPUS = yaml.safe_load((Path(__file__).parent / "soql_corpus.yaml").read_text(encoding="utf-8"))
CASES = [pytest.param(case, id=case["id"]) for case in CORPUS["cases"]]
NAME_FIELD = {"Contact": "LastName", "Account": "Name"}
PREFIX = {"Contact": "003", "Account": "001"}
T0 = datetime(2020, 1, 1, tzinfo=UTC)


def _value(field_type: str, text: str):
    """A corpus value (always a string) as the field's type holds it."""
    if field_type == "date":
        return date.fromisoformat(text)
    if field_type == "datetime":
        return datetime.fromisoformat(text)
    if field_type == "boolean":
        return {"true": True, "false": False}[text]
    if field_type in ("int",):
        return int(text)
    if field_type in ("double", "currency", "percent"):
        return Decimal(text)
    return text


def _rows(object_name: str) -> list[dict]:
    """The corpus records of an object as {column: value}, each with a fixed ID and the system fields."""
    sobject = get_object(object_name)
    rows = []
    for i, record in enumerate(CORPUS["records"][object_name]):
        row = {"id": ids.to18(f"{PREFIX[object_name]}{i:012d}"), "isdeleted": False, "createddate": T0,
               "lastmodifieddate": T0, "systemmodstamp": T0}
        if object_name == "Contact":
            row["hasoptedoutofemail"] = False
        for name, text in record.items():
            field = sobject.field(name)
            row[field.column] = _value(field.type, text)
        rows.append(row)
    return rows


def _insert(conn, table: sql.Composable, row: dict) -> None:
    conn.execute(sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        table, sql.SQL(", ").join(map(sql.Identifier, row)), sql.SQL(", ").join(sql.Placeholder() * len(row))),
        list(row.values()))


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    """One private Postgres with the records twice: as the sandbox org stores them (`org`), and as Heroku Connect
    mirrors them (`mirror`: Connect's column types, ``sfid``, datetimes as UTC `timestamp`)."""
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("soql_corpus"), cleanup_mode="stop")
    try:
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute("CREATE SCHEMA org; CREATE SCHEMA mirror")
            for name in CORPUS["records"]:
                sobject = get_object(name)
                org = sql.Identifier("org", sobject.table)
                mirror = sql.Identifier("mirror", sobject.table)
                conn.execute(sql.SQL("CREATE TABLE {} ({})").format(org, sql.SQL(", ").join(
                    sql.SQL("{} {}").format(sql.Identifier(f.column), sql.SQL(f.pg_type)) for f in sobject.fields)))
                columns = {f.column: mirror_type(f) for f in mirrored_fields(sobject.fields)}
                conn.execute(sql.SQL("CREATE TABLE {} (sfid varchar(18), {})").format(mirror, sql.SQL(", ").join(
                    sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in columns.items())))
                for row in _rows(name):
                    _insert(conn, org, row)
                    copy = {("sfid" if c == "id" else c): v for c, v in row.items()}
                    copy = {c: (v.astimezone(UTC).replace(tzinfo=None) if isinstance(v, datetime) else v)
                            for c, v in copy.items()}
                    _insert(conn, mirror, copy)
            yield conn
    finally:
        server.cleanup()


def _today(case) -> date:
    return case.get("today", CORPUS["today"])


def _sandbox_names(pg, case, where: str, *, days_later: int = 0) -> list[str]:
    obj = case.get("object", "Contact")
    now = datetime.combine(_today(case), datetime.min.time(), UTC).replace(hour=12) + timedelta(days=days_later)
    compiled = compile_query(f"SELECT {NAME_FIELD[obj]} FROM {obj} WHERE {where}", now=now)
    return sorted(r[0] for r in pg.execute(compiled.sql, compiled.params).fetchall())


@pytest.mark.parametrize("case", CASES)
def test_sandbox_engine(pg, case):
    """The sandbox answers each documented filter as Salesforce documents it, or refuses it as Salesforce does."""
    if case.get("error"):
        with pytest.raises(SoqlError):
            _sandbox_names(pg, case, case["where"])
    else:
        assert _sandbox_names(pg, case, case["where"]) == sorted(case["expect"])


@pytest.mark.parametrize("case", CASES)
def test_product_filter(pg, case):
    """The policy filter parses what Salesforce accepts, refuses what it refuses (at load time, through describe),
    and selects the documented records on the Connect mirror and, re-rendered as SOQL, in the sandbox."""
    obj = get_object(case.get("object", "Contact"))
    describe = obj.describe("66.0")
    if case.get("product") == "unsupported":
        with pytest.raises(soql_filter.FilterError):
            soql_filter.parse(case["where"])
        return
    if case.get("error"):
        try:
            expr = soql_filter.parse(case["where"])
        except soql_filter.FilterError:
            return
        assert soql_filter.check_types(expr, describe) != [], "the product accepts a filter Salesforce refuses"
        return
    expr = soql_filter.parse(case["where"])
    assert soql_filter.check_types(expr, describe) == []
    where, params = soql_filter.to_sql(
        expr, lambda n: sql.Identifier("m", soql_filter.mirror_column(n)), today=_today(case),
        types={f.name: f.type for f in obj.fields})
    query = sql.SQL("SELECT {} FROM {} AS m WHERE {}").format(
        sql.Identifier(NAME_FIELD[obj.name].lower()), sql.Identifier("mirror", obj.table), where)
    assert sorted(r[0] for r in pg.execute(query, params).fetchall()) == sorted(case["expect"]), "on the mirror"
    assert _sandbox_names(pg, case, soql_filter.to_soql(expr)) == sorted(case["expect"]), "as SOQL"
    # As a run sends it: relative dates fixed to the run's day, so the org's own clock (here 400 days on, as for
    # a backfill) changes nothing.
    pinned = soql_filter.to_soql(expr, today=_today(case), types={f.name: f.type for f in obj.fields},
                                 relation_types=lambda name: {f.name: f.type for f in get_object(name).fields})
    assert _sandbox_names(pg, case, pinned, days_later=400) == sorted(case["expect"]), f"as SOQL pinned: {pinned}"
