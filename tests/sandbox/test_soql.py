"""Tests for sandbox.soql: parser shapes, Salesforce-style errors, SQL compilation, and execution on Postgres."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import psycopg
import pytest
from psycopg import sql

from sandbox.objects import OBJECTS
from sandbox.soql import (
    And,
    Comparison,
    FieldRef,
    Not,
    Or,
    OrderItem,
    SoqlError,
    Value,
    compile_query,
    id15,
    parse,
    relative_range,
)

NOW = datetime(2024, 3, 10, 15, 0, tzinfo=UTC)  # a Sunday


def _id18(short: str) -> str:
    """Salesforce's 18-character ID: a suffix encoding which of the 15 characters are upper case."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
    suffix = ""
    for chunk in range(3):
        bits = sum(1 << j for j, ch in enumerate(short[chunk * 5 : chunk * 5 + 5]) if ch.isupper())
        suffix += alphabet[bits]
    return short + suffix


def _error(text: str, **kwargs) -> SoqlError:
    with pytest.raises(SoqlError) as info:
        compile_query(text, now=NOW, **kwargs)
    return info.value


def _sql(text: str, **kwargs) -> str:
    return compile_query(text, now=NOW, **kwargs).sql.as_string(None)


# ------------------------------------------------------------------------------------------------ parser


def test_parse_shape():
    text = "select Id, account.name FROM contact where LastName = 'x' order by Id desc nulls first limit 5 offset 10"
    q = parse(text)
    assert q.sobject == "contact" and q.text == text
    assert q.fields == (FieldRef(("Id",), 7), FieldRef(("account", "name"), 11))
    where = Comparison(FieldRef(("LastName",), text.index("LastName")), "=", Value("string", "x", text.index("'"), "x"))
    assert q.where == where
    assert q.order_by == (OrderItem(FieldRef(("Id",), text.index("Id desc")), descending=True, nulls_first=True),)
    assert (q.limit, q.offset, q.count_only) == (5, 10, False)


def test_parse_count_and_connectives():
    q = parse("SELECT COUNT() FROM Lead WHERE NOT (City = 'a' OR City = 'b') AND IsConverted = false")
    assert q.count_only and q.fields == ()
    assert isinstance(q.where, And)
    first, second = q.where.items
    assert isinstance(first, Not) and isinstance(first.item, Or) and len(first.item.items) == 2
    assert second.value == Value("boolean", False, second.value.pos)


def test_parse_values():
    q = parse(
        r"SELECT Id FROM Contact WHERE Name IN ('a\'b\\c\n\"', 'x%_\N\u00e9') AND N = -12.50 AND M = 7 "
        "AND D = 2024-01-31 "
        "AND T = 2024-01-31T12:34:56.123Z AND U = 2024-01-31T12:34:56-08:00 AND R = LAST_N_DAYS:7 AND S = TODAY "
        "AND X != null AND Y <> true"
    )
    values = [c.value for c in q.where.items]
    assert [v.value for v in values[0]] == ["a'b\\c\n\"", "x%_\né"]
    assert values[0][0].like == "a'b\\\\c\n\""  # an escaped backslash matches only itself in a pattern
    assert values[1].value == Decimal("-12.50") and values[2].value == 7
    assert values[3].value == date(2024, 1, 31)
    assert values[4].value == datetime(2024, 1, 31, 12, 34, 56, 123000, tzinfo=UTC)
    assert values[5].value == datetime(2024, 1, 31, 12, 34, 56, tzinfo=timezone(timedelta(hours=-8)))
    assert (values[6].kind, values[6].value) == ("relative", ("LAST_N_DAYS", 7))
    assert values[7].value == ("TODAY", None)
    assert [c.op for c in q.where.items[-2:]] == ["!=", "!="]


def test_syntax_error_message():
    err = _error("SELECT Id FROM Contact WHERE")
    assert err.error_code == "MALFORMED_QUERY"
    assert err.message == (
        "\nSELECT Id FROM Contact WHERE\n" + " " * 28 + "^\nERROR at Row:1:Column:29\nunexpected token: '<EOF>'"
    )


def test_error_caret_on_later_line():
    err = _error("SELECT Id\nFROM Contact\nWHERE LastName = 'a' Foo")
    caret = " " * 21 + "^"
    assert err.message == f"\nWHERE LastName = 'a' Foo\n{caret}\nERROR at Row:3:Column:22\nunexpected token: 'Foo'"


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("SELECT * FROM Contact", "*"),
        ("SELECT Id FROM Contact GROUP BY Id", "GROUP"),
        ("SELECT Id FROM Contact WHERE Id != null HAVING x", "HAVING"),
        ("SELECT Id, (SELECT Id FROM Contacts) FROM Account", "("),
        ("SELECT TYPEOF Owner WHEN User THEN Name END FROM Contact", "TYPEOF"),
        ("SELECT MAX(CreatedDate) FROM Contact", "MAX"),
        ("SELECT COUNT(Id) FROM Contact", "Id"),
        ("SELECT COUNT(), Id FROM Contact", ","),
        ("SELECT Id FROM Contact WHERE Id = :ids", ":"),
        ("SELECT Id FROM Contact c", "c"),
        ("SELECT Id FROM Contact WHERE A = 1 AND B = 2 OR C = 3", "OR"),
        ("SELECT Id FROM Contact WHERE A = 1 OR B = 2 AND C = 3", "AND"),
        ("SELECT Id FROM Contact LIMIT -1", "-1"),
        ("SELECT Id FROM Contact LIMIT 5 OFFSET 1 LIMIT 2", "LIMIT"),
        ("SELECT Id FROM Contact WHERE Name = Smith", "Smith"),
        ("SELECT Id FROM Contact WHERE Birthdate = 2024-02-30", "2024-02-30"),
        ("SELECT Id FROM Contact WHERE Name = 'open", "<EOF>"),
    ],
)
def test_malformed(text, token):
    err = _error(text)
    assert err.error_code == "MALFORMED_QUERY"
    assert f"unexpected token: '{token}'" in err.message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SELECT Id FROM Contact WHERE AccountId IN (SELECT Id FROM Account WHERE Id IN (SELECT AccountId FROM Case))",
         "Nesting of semi join sub-selects"),
        ("SELECT Id FROM Account WHERE Id IN (SELECT AccountId FROM Case) AND Id IN (SELECT AccountId FROM Contact) "
         "AND Id NOT IN (SELECT AccountId FROM Opportunity)", "maximum 2 semi join sub-selects"),
        ("SELECT Id FROM Contact WHERE AccountId IN (SELECT Id, Name FROM Account)", "only select one field"),
    ],
)
def test_semi_join_limits(text, message):
    """At most two semi-/anti-joins, none nested, one field each (the sandbox's strict reading of the SOQL and SOSL
    Reference, "Comparison Operators", whose excerpts we hold do not state the limits' wording)."""
    err = _error(text)
    assert err.error_code == "MALFORMED_QUERY" and message in err.message


@pytest.mark.parametrize("text", [r"Name = 'a\q'", r"Name = 'a\u00g1'", r"Name = '50\%'", r"Name IN ('a\_b')"])
def test_invalid_escape(text):
    """Quoted String Escape Sequences: \\% and \\_ are escapes of a LIKE pattern only, and "if you use a backslash
    character in any other context, an error occurs"."""
    err = _error(f"SELECT Id FROM Contact WHERE {text}")
    assert err.error_code == "MALFORMED_QUERY"
    assert err.message.endswith("in string literal.") and "Illegal character sequence '\\" in err.message


def test_like_escapes():
    q = parse(r"SELECT Id FROM Account WHERE Name LIKE 'a\%b\_c\\%_\T'")
    assert (q.where.value.value, q.where.value.like) == ("a%b_c\\%_\t", "a\\%b\\_c\\\\%_\t")


# ------------------------------------------------------------------------------------ semantic errors


def test_unknown_field_message():
    err = _error("SELECT Id, Foo FROM Contact")
    assert err.error_code == "INVALID_FIELD"
    assert err.message == (
        "\nSELECT Id, Foo FROM Contact\n           ^\nERROR at Row:1:Column:12\n"
        "No such column 'Foo' on entity 'Contact'. If you are attempting to use a custom field, be sure to append "
        "the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate "
        "names."
    )


def test_unknown_object_message():
    err = _error("SELECT Id FROM Foo")
    assert err.error_code == "INVALID_TYPE"
    assert err.message.endswith(
        "sObject type 'Foo' is not supported. If you are attempting to use a custom object, be sure to append the "
        "'__c' after the entity name. Please reference your WSDL or the describe call for the appropriate names."
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SELECT Id FROM Contact WHERE Foo = 'x'", "No such column 'Foo' on entity 'Contact'."),
        ("SELECT Id FROM Contact ORDER BY Foo", "No such column 'Foo' on entity 'Contact'."),
        ("SELECT Account.Foo FROM Contact", "No such column 'Foo' on entity 'Account'."),
        ("SELECT Boss.Name FROM Contact", "Didn't understand relationship 'Boss' in field path."),
        ("SELECT Owner.Name FROM Contact", "Field path 'Owner.Name' is not supported by the sandbox"),
        ("SELECT Account.Owner.Name FROM Contact", "Field path 'Account.Owner.Name' is not supported"),
        ("SELECT Record.Name FROM PrivacyHold", "Didn't understand relationship 'Record'"),
        (
            "SELECT Id FROM Contact WHERE CreatedDate > 2024-01-01",
            "value of filter criterion for field 'CreatedDate' must be of type dateTime and should not be enclosed "
            "in quotes",
        ),
        (
            "SELECT Id FROM Contact WHERE CreatedDate > '2024-01-01T00:00:00Z'",
            "field 'CreatedDate' must be of type dateTime and should not be enclosed in quotes",
        ),
        (
            "SELECT Id FROM Contact WHERE Birthdate IN (2024-01-01, 2024-01-01T00:00:00Z)",
            "field 'Birthdate' must be of type date and should not be enclosed in quotes",
        ),
        ("SELECT Id FROM Contact WHERE LastName = 5", "field 'LastName' must be of type string and should be enclosed"),
        ("SELECT Id FROM Contact WHERE LastName = TODAY", "field 'LastName' must be of type string"),
        ("SELECT Id FROM Contact WHERE AccountId = 5", "field 'AccountId' must be of type id and should be enclosed"),
        ("SELECT Id FROM Contact WHERE HasOptedOutOfEmail = 'true'", "must be of type boolean"),
        ("SELECT Id FROM Account WHERE NumberOfEmployees = '5'", "must be of type integer"),
        ("SELECT Id FROM Account WHERE AnnualRevenue = '5'", "must be of type double"),
        ("SELECT Id FROM Account WHERE AnnualRevenue LIKE '5%'", "invalid operator on double field"),
        ("SELECT Id FROM Contact ORDER BY Description", "field 'Description' can not be sorted"),
    ],
)
def test_invalid_field(text, message):
    err = _error(text)
    assert err.error_code == "INVALID_FIELD"
    assert message in err.message


def test_duplicate_field():
    err = _error("SELECT Id, LastName, lastname FROM Contact")
    assert (err.error_code, err.message.splitlines()[-1]) == ("MALFORMED_QUERY", "duplicate field selected: LastName")


def test_bad_output():
    with pytest.raises(ValueError):
        compile_query("SELECT Id FROM Contact", output="xml")


# ---------------------------------------------------------------------------------------------- compiler


def test_compiled_basics():
    c = compile_query("select id, LASTNAME, account.NAME from CONTACT", now=NOW)
    assert c.sobject is OBJECTS["contact"]
    assert c.columns == ["Id", "LastName", "Account.Name"]
    assert [f.name for f in c.fields] == ["Id", "LastName", "Name"]
    assert not c.count_only and c.params == [] and (c.limit, c.offset) == (None, None)
    text = c.sql.as_string(None)
    assert 'LEFT JOIN "org"."account" AS "r_account" ON "r_account"."id" = "t"."accountid"' in text
    assert "WHERE t.isdeleted = false" in text


def test_single_type_reference_join():
    c = compile_query("SELECT Name, PrivacyHoldReason.Name FROM PrivacyHold WHERE PrivacyHoldReason.Name = 'x'",
                      now=NOW)
    assert c.columns == ["Name", "PrivacyHoldReason.Name"]
    text = c.sql.as_string(None)
    assert ('LEFT JOIN "org"."privacyholdreason" AS "r_privacyholdreason" ON "r_privacyholdreason"."id" = '
            '"t"."privacyholdreasonid"') in text
    assert 'lower("r_privacyholdreason"."name") = lower(%s::text)' in text and c.params == ["x"]


def test_object_name_qualifier():
    c = compile_query("SELECT Contact.LastName FROM Contact WHERE Contact.LastName != null", now=NOW)
    assert c.columns == ["LastName"]


def test_include_deleted():
    assert "isdeleted" not in _sql("SELECT Id, Account.Name FROM Contact", include_deleted=True)


def test_values_are_parameters():
    c = compile_query("SELECT Id FROM Contact WHERE LastName = 'x\\'; DROP TABLE y; --' LIMIT 3 OFFSET 1", now=NOW)
    assert "DROP" not in c.sql.as_string(None)
    assert c.params == ["x'; DROP TABLE y; --", 3, 1]


def test_comparisons_compile():
    text = _sql(
        "SELECT Id FROM Contact WHERE LastName != 'a' AND Title NOT IN ('x', 'y') AND Title IN ('z', null) "
        "AND Email = null AND HasOptedOutOfEmail = null AND Birthdate > 2000-01-01"
    )
    assert 'lower("t"."lastname") IS DISTINCT FROM lower(%s::text)' in text
    assert '(lower("t"."title") IS DISTINCT FROM lower(%s::text) AND lower("t"."title") IS DISTINCT FROM' in text
    assert '(lower("t"."title") = lower(%s::text) OR "t"."title" IS NULL)' in text
    assert '"t"."email" IS NULL' in text
    assert '"t"."hasoptedoutofemail" IS NOT TRUE' in text
    assert '"t"."birthdate" > %s' in text


def test_like_escaping():
    c = compile_query(r"SELECT Id FROM Account WHERE Name LIKE '50\%\_off\\%_'", now=NOW)
    assert '"t"."name" ILIKE %s' in c.sql.as_string(None)
    assert c.params == ["50\\%\\_off\\\\%_"]


def test_id_literals():
    long = _id18("003Ab00000XyZ01")
    c = compile_query(
        f"SELECT Id FROM Contact WHERE Id = '003Ab00000XyZ01' OR AccountId IN ('{long.lower()}', 'short')", now=NOW
    )
    # A well-formed ID, of either length and any case of its suffix, becomes the stored 18-character form
    # (compared as is, so the column's index serves); anything else compares on the first 15 characters.
    assert c.params == [long, long, "short"]
    assert '"t"."id" = %s::bpchar' in c.sql.as_string(None)
    assert 'left("t"."accountid", 15) = %s' in c.sql.as_string(None)


def test_id15():
    assert id15(_id18("001aBcDeFgHiJkL")) == "001aBcDeFgHiJkL"
    assert id15(_id18("001aBcDeFgHiJkL").upper()) == "001aBcDeFgHiJkL"
    assert id15("001aBcDeFgHiJkL") == "001aBcDeFgHiJkL"


@pytest.mark.parametrize(
    ("name", "n", "start", "end"),
    [
        ("TODAY", None, date(2024, 3, 10), date(2024, 3, 11)),
        ("YESTERDAY", None, date(2024, 3, 9), date(2024, 3, 10)),
        ("TOMORROW", None, date(2024, 3, 11), date(2024, 3, 12)),
        ("LAST_N_DAYS", 3, date(2024, 3, 7), date(2024, 3, 11)),
        ("NEXT_N_DAYS", 3, date(2024, 3, 11), date(2024, 3, 14)),
        ("N_DAYS_AGO", 3, date(2024, 3, 7), date(2024, 3, 8)),
        ("LAST_90_DAYS", None, date(2023, 12, 11), date(2024, 3, 11)),
        ("THIS_WEEK", None, date(2024, 3, 10), date(2024, 3, 17)),
        ("LAST_WEEK", None, date(2024, 3, 3), date(2024, 3, 10)),
        ("THIS_MONTH", None, date(2024, 3, 1), date(2024, 4, 1)),
        ("LAST_MONTH", None, date(2024, 2, 1), date(2024, 3, 1)),
        ("THIS_YEAR", None, date(2024, 1, 1), date(2025, 1, 1)),
        ("LAST_YEAR", None, date(2023, 1, 1), date(2024, 1, 1)),
        ("NEXT_90_DAYS", None, date(2024, 3, 11), date(2024, 6, 9)),
        ("THIS_QUARTER", None, date(2024, 1, 1), date(2024, 4, 1)),
        ("NEXT_QUARTER", None, date(2024, 4, 1), date(2024, 7, 1)),
        ("LAST_N_WEEKS", 2, date(2024, 2, 25), date(2024, 3, 10)),
        ("NEXT_N_WEEKS", 1, date(2024, 3, 17), date(2024, 3, 24)),
        ("N_WEEKS_AGO", 1, date(2024, 3, 3), date(2024, 3, 10)),
        ("LAST_N_MONTHS", 3, date(2023, 12, 1), date(2024, 3, 1)),
        ("N_MONTHS_AGO", 14, date(2023, 1, 1), date(2023, 2, 1)),
        ("LAST_N_QUARTERS", 2, date(2023, 7, 1), date(2024, 1, 1)),
        ("N_QUARTERS_AGO", 4, date(2023, 1, 1), date(2023, 4, 1)),
        ("NEXT_N_YEARS", 2, date(2025, 1, 1), date(2027, 1, 1)),
        ("N_YEARS_AGO", 10, date(2014, 1, 1), date(2015, 1, 1)),
    ],
)
def test_relative_range(name, n, start, end):
    assert relative_range(name, n, NOW.date()) == (start, end)


def test_last_month_in_january():
    assert relative_range("LAST_MONTH", None, date(2024, 1, 15)) == (date(2023, 12, 1), date(2024, 1, 1))
    assert relative_range("LAST_QUARTER", None, date(2024, 1, 15)) == (date(2023, 10, 1), date(2024, 1, 1))
    assert relative_range("THIS_WEEK", None, date(2024, 1, 1)) == (date(2023, 12, 31), date(2024, 1, 7))


def test_fiscal_date_literals_are_refused():
    """FISCAL literals read the org's fiscal year settings, which the sandbox does not model."""
    err = _error("SELECT Id FROM Contact WHERE CreatedDate = THIS_FISCAL_YEAR")
    assert "fiscal date literals is not supported by the sandbox" in err.message


def test_relative_dates_compile():
    late = datetime(2024, 3, 10, 23, 30, tzinfo=timezone(timedelta(hours=-8)))  # already 2024-03-11 in UTC
    c = compile_query("SELECT Id FROM Contact WHERE CreatedDate = TODAY AND Birthdate >= YESTERDAY", now=late)
    assert c.params == [datetime(2024, 3, 11, tzinfo=UTC), datetime(2024, 3, 12, tzinfo=UTC), date(2024, 3, 10)]
    text = c.sql.as_string(None)
    assert '("t"."createddate" >= %s AND "t"."createddate" < %s)' in text
    assert '"t"."birthdate" >= %s' in text


@pytest.mark.parametrize(
    ("op", "template"),
    [("=", "(x >= lo AND x < hi)"), ("!=", "(x < lo OR x >= hi OR x IS NULL)"), ("<", "x < lo"),
     ("<=", "x < hi"), (">", "x >= hi"), (">=", "x >= lo")],
)
def test_relative_operators(op, template):
    text = _sql(f"SELECT Id FROM Contact WHERE Birthdate {op} THIS_MONTH")
    expected = template.replace("x", '"t"."birthdate"').replace("lo", "%s").replace("hi", "%s")
    assert expected in text


def test_order_by_defaults():
    text = _sql(
        "SELECT Id FROM Contact ORDER BY LastName, CreatedDate DESC, Birthdate DESC NULLS FIRST, Id ASC NULLS LAST"
    )
    assert text.endswith(
        'ORDER BY lower("t"."lastname") ASC NULLS FIRST, "t"."createddate" DESC NULLS LAST, '
        '"t"."birthdate" DESC NULLS FIRST, "t"."id" ASC NULLS LAST'
    )


def test_count_compile():
    c = compile_query("SELECT COUNT() FROM Contact WHERE Account.Name = 'a' ORDER BY LastName", now=NOW)
    assert c.count_only and c.columns == [] and c.fields == []
    assert c.sql.as_string(None).startswith('SELECT count(*) FROM "org"."contact" AS t LEFT JOIN')
    assert "ORDER BY" not in c.sql.as_string(None)


def test_csv_rendering():
    c = compile_query(
        "SELECT Id, CreatedDate, Birthdate, HasOptedOutOfEmail, LastName, Account.AnnualRevenue, "
        "Account.NumberOfEmployees FROM Contact",
        output="csv",
        now=NOW,
    )
    text = c.sql.as_string(None)
    assert '"t"."id"::text AS "Id"' in text
    iso = """to_char("t"."createddate" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""
    assert iso + ' AS "CreatedDate"' in text
    assert """to_char("t"."birthdate", 'YYYY-MM-DD') AS "Birthdate\"""" in text
    assert '"t"."hasoptedoutofemail"::text AS "HasOptedOutOfEmail"' in text
    assert '"t"."lastname" AS "LastName"' in text
    assert "trim_scale(\"r_account\".\"annualrevenue\"::numeric)::text END AS \"Account.AnnualRevenue\"" in text
    assert '"r_account"."numberofemployees"::text AS "Account.NumberOfEmployees"' in text


def test_bound_sql_inlines_literals():
    c = compile_query("SELECT Id FROM Contact WHERE LastName = 'O\\'Brien' AND Birthdate = 2000-01-02", output="csv")
    bound = c.as_string_bound(None)
    assert "%s" not in bound and "'O''Brien'" in bound and "'2000-01-02'::date" in bound
    assert c.copy_sql().as_string(None).startswith("COPY (SELECT ")


# ------------------------------------------------------------------------------------- on real Postgres

A1, A2, A3 = _id18("001000000000aC1"), _id18("001000000000aC2"), _id18("001000000000aC3")
C1, C2, C3, C4, C5 = (_id18(f"003000000000cT{i}") for i in range(1, 6))
T0 = datetime(2024, 1, 5, tzinfo=UTC)

ACCOUNTS = [
    {"id": A1, "name": "Acme", "annualrevenue": Decimal("1000000"), "numberofemployees": 50,
     "createddate": datetime(2024, 3, 9, 10, tzinfo=UTC)},
    {"id": A2, "name": "Globex 100%_x", "annualrevenue": Decimal("1234.5"), "numberofemployees": None,
     "description": 'Says "hi", twice\nand more'},
    {"id": A3, "name": "Gone", "isdeleted": True},
]
CONTACTS = [
    {"id": C1, "lastname": "Smith", "firstname": "Ann", "accountid": A1, "birthdate": date(1990, 5, 1),
     "title": "CEO", "createddate": datetime(2024, 3, 10, 1, tzinfo=UTC)},
    {"id": C2, "lastname": "jones", "accountid": A2, "hasoptedoutofemail": True,
     "createddate": datetime(2024, 3, 6, 23, 59, 59, tzinfo=UTC)},
    {"id": C3, "lastname": "Brown", "accountid": A3, "birthdate": date(2024, 3, 9), "title": "CTO",
     "createddate": datetime(2024, 2, 15, 12, tzinfo=UTC)},
    {"id": C4, "lastname": "Deleted", "isdeleted": True, "createddate": datetime(2024, 3, 10, tzinfo=UTC)},
    {"id": C5, "lastname": "Orphan", "title": "CEO", "createddate": datetime(2024, 1, 1, 7, 30, tzinfo=UTC)},
]


def _insert(conn, table: str, row: dict) -> None:
    row = {"isdeleted": False, "createddate": T0, "lastmodifieddate": T0, "systemmodstamp": T0, **row}
    conn.execute(
        sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            sql.Identifier("org", table),
            sql.SQL(", ").join(map(sql.Identifier, row)),
            sql.SQL(", ").join(sql.Placeholder() * len(row)),
        ),
        list(row.values()),
    )


@pytest.fixture(scope="module")
def conn(tmp_path_factory):
    pgserver = pytest.importorskip("pgserver")
    server = pgserver.get_server(tmp_path_factory.mktemp("soql_pg"), cleanup_mode="stop")
    with psycopg.connect(server.get_uri(), autocommit=True) as connection:
        connection.execute("CREATE SCHEMA org")
        for sobject in OBJECTS.values():
            columns = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(f.column), sql.SQL(f.pg_type)) for f in sobject.fields
            )
            connection.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier("org", sobject.table), columns))
        for row in ACCOUNTS:
            _insert(connection, "account", row)
        for row in CONTACTS:
            _insert(connection, "contact", {"hasoptedoutofemail": False, **row})
        yield connection
    server.cleanup()


def run(conn, text: str, **kwargs) -> list[tuple]:
    c = compile_query(text, now=NOW, **kwargs)
    return conn.execute(c.sql, c.params).fetchall()


def names(conn, where: str, **kwargs) -> list[str]:
    return [r[0] for r in run(conn, f"SELECT LastName FROM Contact WHERE {where} ORDER BY LastName", **kwargs)]


def test_db_select_and_deleted(conn):
    assert run(conn, "SELECT Id, LastName FROM Contact ORDER BY LastName") == [
        (C3, "Brown"), (C2, "jones"), (C5, "Orphan"), (C1, "Smith"),
    ]
    all_rows = run(conn, "SELECT LastName FROM Contact ORDER BY LastName", include_deleted=True)
    assert [r[0] for r in all_rows] == ["Brown", "Deleted", "jones", "Orphan", "Smith"]


def test_db_relationship(conn):
    assert run(conn, "SELECT LastName, Account.Name FROM Contact ORDER BY LastName") == [
        ("Brown", None), ("jones", "Globex 100%_x"), ("Orphan", None), ("Smith", "Acme"),
    ]
    assert names(conn, "Account.Name = 'ACME'") == ["Smith"]
    assert names(conn, "Account.Name = null") == ["Brown", "Orphan"]
    assert names(conn, "Account.Name = 'Gone'", include_deleted=True) == ["Brown"]


def test_db_ids(conn):
    assert names(conn, f"Id = '{C1[:15]}'") == ["Smith"]
    assert names(conn, f"Id = '{C1}'") == ["Smith"]
    assert names(conn, f"Id = '{C1[:15].upper()}'") == []  # 15-character IDs are case-sensitive
    assert names(conn, f"Id = '{C1.upper()}'") == ["Smith"]  # the 18-character suffix restores the case
    assert names(conn, f"AccountId IN ('{A1[:15]}', '{A2}')") == ["jones", "Smith"]
    assert names(conn, f"AccountId != '{A1[:15]}'") == ["Brown", "jones", "Orphan"]


def test_db_like(conn):
    assert names(conn, "LastName LIKE 's%'") == ["Smith"]
    assert names(conn, "LastName LIKE '_ONES'") == ["jones"]
    assert names(conn, r"Account.Name LIKE 'globex 100\%\_%'") == ["jones"]
    assert names(conn, r"Account.Name LIKE 'globex 100\%\_y'") == []
    assert names(conn, r"Account.Name LIKE 'globex 1_0%'") == ["jones"]


def test_db_null_semantics(conn):
    assert names(conn, "Title != 'ceo'") == ["Brown", "jones"]
    assert names(conn, "Title NOT IN ('CEO')") == ["Brown", "jones"]
    assert names(conn, "Title IN ('ceo', null)") == ["jones", "Orphan", "Smith"]
    assert names(conn, "Title = null") == ["jones"]
    assert names(conn, "Title != null") == ["Brown", "Orphan", "Smith"]
    assert names(conn, "HasOptedOutOfEmail = true") == ["jones"]
    assert names(conn, "HasOptedOutOfEmail = null") == ["Brown", "Orphan", "Smith"]


def test_db_logic(conn):
    assert names(conn, "NOT (LastName = 'smith' OR LastName = 'JONES')") == ["Brown", "Orphan"]
    assert names(conn, "(Title = 'CEO' OR Title = 'CTO') AND Account.Name != null") == ["Smith"]


def test_db_order_limit_offset(conn):
    ordered = run(conn, "SELECT LastName FROM Contact ORDER BY Title, LastName")
    assert [r[0] for r in ordered] == ["jones", "Orphan", "Smith", "Brown"]
    ordered = run(conn, "SELECT LastName FROM Contact ORDER BY Title DESC, LastName")
    assert [r[0] for r in ordered] == ["Brown", "Orphan", "Smith", "jones"]
    page = run(conn, "SELECT LastName FROM Contact ORDER BY LastName LIMIT 2 OFFSET 1")
    assert [r[0] for r in page] == ["jones", "Orphan"]


def test_db_count(conn):
    assert run(conn, "SELECT COUNT() FROM Contact") == [(4,)]
    assert run(conn, "SELECT COUNT() FROM Contact", include_deleted=True) == [(5,)]
    assert run(conn, "SELECT COUNT() FROM Contact WHERE Account.Name LIKE 'a%'") == [(1,)]
    assert run(conn, "SELECT COUNT() FROM Contact LIMIT 2") == [(2,)]
    assert run(conn, "SELECT COUNT() FROM Contact LIMIT 10 OFFSET 3") == [(1,)]


def test_db_relative_dates(conn):
    assert names(conn, "CreatedDate = TODAY") == ["Smith"]
    assert names(conn, "CreatedDate = LAST_N_DAYS:3") == ["Smith"]
    assert names(conn, "CreatedDate = LAST_N_DAYS:4") == ["jones", "Smith"]
    assert names(conn, "CreatedDate = N_DAYS_AGO:4") == ["jones"]
    assert names(conn, "CreatedDate = LAST_MONTH") == ["Brown"]
    assert names(conn, "CreatedDate < THIS_MONTH") == ["Brown", "Orphan"]
    assert names(conn, "CreatedDate = THIS_YEAR") == ["Brown", "jones", "Orphan", "Smith"]
    assert names(conn, "CreatedDate != THIS_MONTH") == ["Brown", "Orphan"]
    assert names(conn, "Birthdate = YESTERDAY") == ["Brown"]
    assert names(conn, "Birthdate < LAST_N_DAYS:1") == ["Smith"]
    assert names(conn, "Birthdate != YESTERDAY") == ["jones", "Orphan", "Smith"]


def test_db_date_literals(conn):
    assert names(conn, "CreatedDate = 2023-12-31T23:30:00-08:00") == ["Orphan"]
    assert names(conn, "CreatedDate >= 2024-03-10T00:00:00.000Z") == ["Smith"]
    assert names(conn, "Birthdate < 2000-01-01") == ["Smith"]


def test_db_numbers(conn):
    accounts = run(conn, "SELECT Name FROM Account WHERE AnnualRevenue > 1000.5 AND AnnualRevenue > -1 ORDER BY Name")
    assert accounts == [("Acme",), ("Globex 100%_x",)]
    assert run(conn, "SELECT Name FROM Account WHERE NumberOfEmployees >= 50") == [("Acme",)]
    assert run(conn, "SELECT AnnualRevenue FROM Account WHERE Name = 'acme'") == [(Decimal("1000000.00"),)]


def _copy(conn, text: str, **kwargs) -> str:
    c = compile_query(text, now=NOW, output="csv", **kwargs)
    out = bytearray()
    with conn.cursor().copy(c.copy_sql()) as copy:
        for chunk in copy:
            out += chunk
    return out.decode()


def test_db_csv(conn):
    assert _copy(conn, "SELECT Id, Name, AnnualRevenue, NumberOfEmployees, CreatedDate, Description FROM Account "
                       "ORDER BY Name") == (
        f'"{A1}","Acme","1000000.0","50","2024-03-09T10:00:00.000Z",\n'
        f'"{A2}","Globex 100%_x","1234.5",,"2024-01-05T00:00:00.000Z","Says ""hi"", twice\nand more"\n'
    )
    assert _copy(conn, "SELECT LastName, Birthdate, HasOptedOutOfEmail, Account.Name FROM Contact "
                       "WHERE LastName IN ('smith', 'jones', 'o\\'neil') ORDER BY LastName DESC") == (
        '"Smith","1990-05-01","false","Acme"\n"jones",,"true","Globex 100%_x"\n'
    )
    assert _copy(conn, "SELECT COUNT() FROM Contact WHERE CreatedDate = LAST_N_DAYS:4") == '"2"\n'


def test_db_csv_params_mode_runs_too(conn):
    c = compile_query("SELECT Id, CreatedDate FROM Contact WHERE LastName = 'smith'", output="csv", now=NOW)
    assert conn.execute(c.sql, c.params).fetchall() == [(C1, "2024-03-10T01:00:00.000Z")]
    assert conn.execute(c.as_string_bound(conn)).fetchall() == [(C1, "2024-03-10T01:00:00.000Z")]


def test_db_semi_and_anti_joins(conn):
    """Semi-joins (IN) and anti-joins (NOT IN) with a sub-select of an ID or reference field, as "Comparison
    Operators" in the SOQL and SOSL Reference describes them:
    https://developer.salesforce.com/docs/platform/salesforce-soql-sosl/guide/sforce-api-calls-soql-select-comparisonoperators.html
    """
    case = _id18("500000000000cS1")
    _insert(conn, "case", {"id": case, "contactid": C1, "accountid": A1, "isclosed": False})
    try:
        assert names(conn, "AccountId IN (SELECT Id FROM Account WHERE Name LIKE 'acme%')") == ["Smith"]
        # Deleted accounts are not in the sub-select; a null AccountId is in no set.
        assert names(conn, "AccountId NOT IN (SELECT Id FROM Account WHERE Name LIKE 'acme%')") == [
            "Brown", "jones", "Orphan"]
        assert names(conn, "Id IN (SELECT ContactId FROM Case)") == ["Smith"]
        assert names(conn, "Id NOT IN (SELECT ContactId FROM Case) AND Title = 'CEO'") == ["Orphan"]
        accounts = run(conn, "SELECT Name FROM Account WHERE Id IN (SELECT AccountId FROM Contact WHERE Title = 'CEO')")
        assert accounts == [("Acme",)]
        assert run(conn, "SELECT COUNT() FROM Account WHERE Id NOT IN (SELECT AccountId FROM Case)") == [(1,)]
    finally:
        conn.execute("DELETE FROM org.case WHERE id = %s", (case,))


@pytest.mark.parametrize(("text", "message"), [
    ("SELECT Id FROM Contact WHERE LastName IN (SELECT Name FROM Account)", "only supported on Id or reference"),
    ("SELECT Id FROM Contact WHERE AccountId IN (SELECT Name FROM Account)", "can only query id fields"),
])
def test_semi_join_fields_must_be_ids(text, message):
    """The left operand and the sub-select's field are ID or reference fields (SOQL and SOSL Reference,
    "Comparison Operators"; the sandbox's wording where the reference gives none)."""
    err = _error(text)
    assert err.error_code == "INVALID_FIELD" and message in err.message


def test_objects_a_user_cannot_see_are_invalid_types():
    """PrivacyHold is "available in API version 59.0 and later" to "users with the Privacy Center license and the
    Manage Privacy Hold user permission" (Object Reference: PrivacyHold); otherwise a query names an unknown type.
    https://developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/sforce_api_objects_privacyhold.htm
    """
    from sandbox.objects import visible_object

    assert visible_object("PrivacyHold", api_version="66.0", privacy_center=True) is not None
    assert visible_object("PrivacyHold", api_version="58.0", privacy_center=True) is None
    assert visible_object("PrivacyHoldReason", api_version="66.0", privacy_center=False) is None
    assert visible_object("Contact", api_version="31.0", privacy_center=False) is not None

    def unlicensed(name):
        return visible_object(name, api_version="66.0", privacy_center=False)

    err = _error("SELECT Id FROM PrivacyHold", resolve_object=unlicensed)
    assert err.error_code == "INVALID_TYPE" and "sObject type 'PrivacyHold' is not supported" in err.message
    err = _error("SELECT Id FROM Contact WHERE Id NOT IN (SELECT ReferenceRecordId FROM PrivacyHold)",
                 resolve_object=unlicensed)
    assert err.error_code == "INVALID_TYPE"

