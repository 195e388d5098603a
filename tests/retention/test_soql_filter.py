"""The policy filter parser: it decides which records are deleted, so its grammar, escaping and rendering
are pinned here, including the injection attempts a reviewer would try first."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from retention.soql_filter import (
    And,
    Comparison,
    FilterError,
    Not,
    Or,
    SubSelect,
    Value,
    check_types,
    fields,
    mirror_column,
    other_objects,
    parse,
    relative_range,
    to_soql,
    to_sql,
)
from sandbox.objects import get_object

TODAY = date(2025, 3, 5)  # a Wednesday


def render(text: str, **kwargs) -> tuple[str, list]:
    query, params = to_sql(parse(text), today=kwargs.pop("today", TODAY), **kwargs)
    return query.as_string(None), params


# ------------------------------------------------------------------------------------------ parsing


def test_comparison_values():
    assert parse("LeadSource != 'Partner Referral'") == Comparison(
        "LeadSource", "!=", Value("string", "Partner Referral", "Partner Referral")
    )
    assert parse("A <> 1").op == "!="
    assert parse("A = -1.50").value == Value("number", Decimal("-1.50"))
    assert parse("A = TRUE").value == Value("boolean", True)
    assert parse("A = null").value == Value("null", None)
    assert parse("A = 2024-01-31").value == Value("date", date(2024, 1, 31))
    assert parse("A = 2024-01-31T02:00:00+02:00").value == Value("datetime", datetime(2024, 1, 31, tzinfo=UTC))
    assert parse("A = LAST_N_DAYS:30").value == Value("relative", ("LAST_N_DAYS", 30))
    assert parse("a = this_year").value == Value("relative", ("THIS_YEAR", None))
    assert parse("A in ('x', null)") == Comparison("A", "IN", (Value("string", "x", "x"), Value("null", None)))
    assert parse("A NOT IN (1, 2)").op == "NOT IN"


def test_precedence_and_grouping():
    a, b, c = (Comparison(n, "=", Value("number", 1)) for n in "abc")
    assert parse("a = 1 AND b = 1 AND c = 1") == And((a, b, c))
    assert parse("a = 1 AND (b = 1 OR c = 1)") == And((a, Or((b, c))))
    assert parse("(a = 1 AND b = 1) OR c = 1") == Or((And((a, b)), c))
    assert parse("NOT a = 1 AND b = 1") == And((Not(a), b))  # NOT binds to the next condition only
    assert parse("NOT (a = 1 AND b = 1)") == Not(And((a, b)))
    assert parse("((a = 1))") == a


@pytest.mark.parametrize(
    ("text", "column", "reason"),
    [
        ("a = 1 AND b = 2 OR c = 3", 17, "mixing AND and OR needs parentheses"),
        ("a = 1 OR b = 2 AND c = 3", 16, "mixing AND and OR needs parentheses"),
        ("Account.Name = 'x'", 8, "relationship paths are not supported"),
        ("CALENDAR_YEAR(CreatedDate) = 2020", 1, "functions are not supported"),
        ('Name = "x"', 8, "use single quotes"),
        ("Name = x", 8, "quote strings"),
        ("Name = 'x", 8, "unterminated string"),
        ("Name = 'a\\q'", 10, "invalid escape sequence"),
        ("Name = '50\\% off'", 8, "escapes of a LIKE pattern only"),
        ("A < null", 3, "null can only be compared with = or !="),
        ("A > true", 3, "true/false can only be compared"),
        ("A LIKE 3", 8, "LIKE needs a quoted string"),
        ("A = LAST_N_DAYS", 16, "expected ':'"),
        ("A = LAST_N_DAYS:-1", 17, "non-negative whole number"),
        ("A = 2024-02-30", 5, "invalid date"),
        ("A", 2, "expected an operator"),
        ("", 1, "empty filter"),
        ("(A = 1", 7, "expected ')'"),
        ("A = 1)", 6, "expected AND, OR or end of filter"),
        ("A IN ()", 7, "expected a value"),
        ("AND = 1", 1, "expected a field name"),
    ],
)
def test_syntax_errors_name_position_and_reason(text, column, reason):
    with pytest.raises(FilterError) as err:
        parse(text)
    assert err.value.pos == column - 1
    assert str(err.value).startswith(f"column {column}: ")
    assert reason in str(err.value)


@pytest.mark.parametrize(
    "text",
    [
        "Name = 'x' OR 1=1 --",
        "Name = 'x''; DROP TABLE y'",
        "Name = 'x'; DROP TABLE y",
        "Name = 'x' --",
        "Name = 'x' /* */",
        "Name = 'x' UNION SELECT Id FROM User",
        "Id IN (SELECT ContactId FROM Case WHERE AccountId IN (SELECT Id FROM Account))",
        "Id IN (SELECT ContactId FROM Case; DELETE FROM Case)",
        "Name = 'x') OR (1 = 1",
    ],
)
def test_injection_attempts_are_rejected(text):
    with pytest.raises(FilterError):
        parse(text)


def test_doubled_quote_explains_soql_escaping():
    with pytest.raises(FilterError, match=r"written \\', not ''"):
        parse("Name = 'x''; DROP TABLE y'")


def test_escaped_quote_stays_inside_the_value():
    expr = parse(r"Name = 'x\' OR 1=1 --'")
    assert expr == Comparison("Name", "=", Value("string", "x' OR 1=1 --", "x' OR 1=1 --"))
    sql, params = render(r"Name = 'x\' OR 1=1 --'")
    assert params == ["x' OR 1=1 --"]
    assert "OR" not in sql and "--" not in sql


def test_fields():
    assert fields(parse("A = 1 AND (b = 2 OR NOT C IN ('x')) AND A LIKE 'y%'")) == {"A", "b", "C"}


# ---------------------------------------------------------------------------------------------- SOQL


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("LeadSource != 'Partner Referral'", "LeadSource != 'Partner Referral'"),
        ("a <> 1 and b = true", "a != 1 AND b = true"),
        ("a = 1 or (b = 2 and c = 3)", "a = 1 OR (b = 2 AND c = 3)"),
        ("not a = null", "NOT (a = null)"),
        ("a in ('x',null) and b not in (1,2.5)", "a IN ('x', null) AND b NOT IN (1, 2.5)"),
        ("Name = 'O\\'Brien \\\\ \\n'", "Name = 'O\\'Brien \\\\ \\n'"),
        ("Name like 'a\\%b_%'", "Name LIKE 'a\\%b_%'"),
        ("Name like 'back\\\\slash%'", "Name LIKE 'back\\\\slash%'"),
        ("d = 2024-01-31 and t > 2024-01-31T01:30:00+01:00", "d = 2024-01-31 AND t > 2024-01-31T00:30:00Z"),
        ("t < 2024-01-31T00:00:00.250Z", "t < 2024-01-31T00:00:00.250Z"),
        ("d < last_n_days:30 and e = TODAY", "d < LAST_N_DAYS:30 AND e = TODAY"),
    ],
)
def test_to_soql_is_canonical_and_round_trips(text, canonical):
    expr = parse(text)
    assert to_soql(expr) == canonical
    assert parse(canonical) == expr


def test_to_soql_escapes_values_built_in_code():
    expr = Comparison("Name", "=", Value("string", "x' OR Name != '"))
    assert to_soql(expr) == "Name = 'x\\' OR Name != \\''"
    assert parse(to_soql(expr)) == expr


# ------------------------------------------------------------------------------------------ Postgres


def test_to_sql_text_is_case_insensitive_and_null_aware():
    sql, params = render("LeadSource != 'Partner Referral'")
    assert sql == 'lower("leadsource") IS DISTINCT FROM lower(%s::text)'  # != matches nulls, as in SOQL
    assert params == ["Partner Referral"]
    assert render("Name < 'm'") == ('lower("name") < lower(%s::text)', ["m"])


def test_to_sql_nulls_booleans_numbers():
    assert render("A = null") == ('"a" IS NULL', [])
    assert render("A != null") == ('"a" IS NOT NULL', [])
    assert render("IsClosed = true") == ('"isclosed" IS TRUE', [])
    assert render("IsClosed = false") == ('"isclosed" IS NOT TRUE', [])
    assert render("IsClosed != false") == ('"isclosed" IS TRUE', [])
    assert render("N >= 10") == ('"n" >= %s', [10])
    assert render("N != 1.5") == ('"n" IS DISTINCT FROM %s', [Decimal("1.5")])


def test_to_sql_datetimes_are_naive_utc():
    sql, params = render("T > 2024-01-31T01:30:00+01:00")
    assert sql == '"t" > %s'
    assert params == [datetime(2024, 1, 31, 0, 30)]


def test_to_sql_in_and_not_in():
    assert render("A IN ('x', null)") == ('(lower("a") = lower(%s::text) OR "a" IS NULL)', ["x"])
    assert render("N NOT IN (1, 2)") == ('("n" IS DISTINCT FROM %s AND "n" IS DISTINCT FROM %s)', [1, 2])


def test_to_sql_like_is_ilike_with_soql_escapes():
    assert render("Name LIKE 'a\\%b_%'") == ('"name" ILIKE %s', ["a\\%b_%"])
    assert render("Name LIKE 'back\\\\slash'") == ('"name" ILIKE %s', ["back\\\\slash"])


def test_to_sql_not_is_two_valued():
    sql, params = render("NOT (A = 'x' OR B = 1)")
    assert sql == '(((lower("a") = lower(%s::text) OR "b" = %s)) IS NOT TRUE)'
    assert params == ["x", 1]


def test_to_sql_relative_dates_are_ranges():
    # LAST_N_DAYS:30 on 2025-03-05 is [2025-02-03, 2025-03-06).
    lo, hi = date(2025, 2, 3), date(2025, 3, 6)
    assert render("D = LAST_N_DAYS:30") == ('("d" >= %s AND "d" < %s)', [lo, hi])
    assert render("D < LAST_N_DAYS:30") == ('"d" < %s', [lo])
    assert render("D <= LAST_N_DAYS:30") == ('"d" < %s', [hi])
    assert render("D > LAST_N_DAYS:30") == ('"d" >= %s', [hi])
    assert render("D >= LAST_N_DAYS:30") == ('"d" >= %s', [lo])
    assert render("D != LAST_N_DAYS:30") == ('("d" < %s OR "d" >= %s OR "d" IS NULL)', [lo, hi])
    sql, params = render("T = TODAY", types={"t": "datetime"})
    assert params == [datetime(2025, 3, 5), datetime(2025, 3, 6)]


@pytest.mark.parametrize(
    ("name", "n", "expected"),
    [
        ("TODAY", None, (date(2025, 3, 5), date(2025, 3, 6))),
        ("YESTERDAY", None, (date(2025, 3, 4), date(2025, 3, 5))),
        ("THIS_WEEK", None, (date(2025, 3, 2), date(2025, 3, 9))),  # weeks start on Sunday
        ("LAST_MONTH", None, (date(2025, 2, 1), date(2025, 3, 1))),
        ("THIS_YEAR", None, (date(2025, 1, 1), date(2026, 1, 1))),
        ("LAST_YEAR", None, (date(2024, 1, 1), date(2025, 1, 1))),
        ("N_DAYS_AGO", 3, (date(2025, 3, 2), date(2025, 3, 3))),
        ("NEXT_N_DAYS", 2, (date(2025, 3, 6), date(2025, 3, 8))),
    ],
)
def test_relative_ranges(name, n, expected):
    assert relative_range(name, n, TODAY) == expected


def test_to_sql_ids_compare_case_sensitively_on_15_characters():
    sql, params = render("AccountId = '001000000000001AAA'", types={"AccountId": "reference"})
    assert sql == 'left("accountid", 15) = left(%s, 15)'
    assert params == ["001000000000001AAA"]


def test_to_sql_custom_column_mapping():
    from psycopg import sql as pgsql

    query, _ = to_sql(parse("A = 1"), lambda name: pgsql.Identifier("m", name.lower()), today=TODAY)
    assert query.as_string(None) == '"m"."a" = %s'


@pytest.mark.parametrize(
    "value",
    ["x'); DROP TABLE contact; --", "%s", "%(x)s", "{}", "\\'", "a\"b", "x\nOR 1=1", "';SELECT pg_sleep(1)"],
)
def test_to_sql_emits_values_only_as_params(value):
    escaped = to_soql(Comparison("Name", "=", Value("string", value)))
    for text in (escaped, escaped.replace(" = ", " != "), f"Name IN ({escaped.split(' = ', 1)[1]}, 'b')"):
        query, params = render(text)
        assert value in params
        # The SQL text is only structure: column, operators and placeholders.
        structure = query.replace('"name"', "").replace("%s", "")
        assert set(structure) <= set("lower()::text ISDTNCFROMAND=_!"), query
        assert query.count("%s") == len(params)


# ------------------------------------------------------------------------------------------ describe


@pytest.fixture(scope="module")
def contact() -> dict:
    return get_object("Contact").describe("59.0")


def test_check_types_accepts_valid_filters(contact):
    text = (
        "LeadSource != 'Partner Referral' AND Birthdate < LAST_N_DAYS:10 AND Birthdate > 1950-01-01 "
        "AND CreatedDate < 2024-01-01T00:00:00Z AND HasOptedOutOfEmail = false AND Email LIKE '%@x.com' "
        "AND leadsource IN ('Web', null)"
    )
    assert check_types(parse(text), contact) == []


def test_check_types_reports_problems(contact):
    text = (
        "Nope = 1 AND CreatedDate < 2024-01-01 AND Birthdate = 2024-01-01T00:00:00Z AND LastName = 3 "
        "AND HasOptedOutOfEmail = 'yes' AND Birthdate LIKE '2024%' AND LastName IN ('a', 2)"
    )
    problems = check_types(parse(text), contact)
    assert problems == [
        "unknown field 'Nope' on Contact",
        "'CreatedDate' is a datetime: write 2024-01-01T00:00:00Z, not a date",
        "'Birthdate' is a date: write 2024-01-01, not a datetime",
        "'LastName' is string: its value must be a quoted string, got 3",
        "'HasOptedOutOfEmail' is boolean: expected boolean value, got string 'yes'",
        "LIKE needs a text field; 'Birthdate' is date",
        "'LastName' is string: its value must be a quoted string, got 2",
    ]


# ------------------------------------------------------------------------------- on a real Postgres


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    """A private embedded Postgres (pgserver), so the rendered SQL is proven by execution, not by its text."""
    import pgserver
    import psycopg

    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    try:
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute(
                "CREATE TEMP TABLE mirror"
                " (name text, leadsource text, isclosed boolean, n numeric, d date, ts timestamp)"
            )
            conn.execute(
                "INSERT INTO mirror VALUES "
                "('O''Brien', 'Web', true, 1, '2025-03-01', '2025-03-05 10:00'),"
                "('50% off', 'Partner Referral', false, 2, '2024-01-01', '2020-01-01'),"
                "('back\\slash', null, null, null, null, null),"
                "('x'' OR 1=1 --', 'web', true, 3, '2025-03-05', '2025-03-04 23:59')"
            )
            yield conn
    finally:
        server.cleanup()


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("LeadSource != 'partner referral'", ["O'Brien", "back\\slash", "x' OR 1=1 --"]),  # != matches null
        ("Name LIKE '50\\% %'", ["50% off"]),
        ("Name LIKE '%\\\\%'", ["back\\slash"]),
        ("Name LIKE '5_%'", ["50% off"]),
        ("Name LIKE 'o\\'%'", ["O'Brien"]),
        ("IsClosed = false", ["50% off", "back\\slash"]),
        ("NOT (LeadSource = 'Web')", ["50% off", "back\\slash"]),
        ("LeadSource IN ('WEB', null)", ["O'Brien", "back\\slash", "x' OR 1=1 --"]),
        ("N NOT IN (1, 2)", ["back\\slash", "x' OR 1=1 --"]),
        ("D = LAST_N_DAYS:7", ["O'Brien", "x' OR 1=1 --"]),
        ("D != LAST_N_DAYS:7", ["50% off", "back\\slash"]),
        ("D < LAST_N_DAYS:7", ["50% off"]),
        ("Ts = TODAY", ["O'Brien"]),
        ("Ts < 2021-01-01T01:00:00+01:00", ["50% off"]),
        ("Name = 'x\\' OR 1=1 --'", ["x' OR 1=1 --"]),
    ],
)
def test_to_sql_runs_with_soql_semantics(pg, text, names):
    from psycopg import sql

    where, params = to_sql(parse(text), today=TODAY, types={"Ts": "datetime"})
    rows = pg.execute(sql.SQL("SELECT name FROM mirror WHERE {} ORDER BY name").format(where), params).fetchall()
    assert [r[0] for r in rows] == names


# ------------------------------------------------------------------------------ semi- and anti-joins


def test_subselects_parse_render_and_name_their_objects():
    """Semi-joins and anti-joins as SOQL writes them ("Comparison Operators", SOQL and SOSL Reference):
    https://developer.salesforce.com/docs/platform/salesforce-soql-sosl/guide/sforce-api-calls-soql-select-comparisonoperators.html
    """
    expr = parse("Id not in (select ContactId from Case where IsClosed = false) AND AccountId IN "
                 "(SELECT Id FROM Account)")
    assert expr.items[0] == Comparison("Id", "NOT IN", SubSelect("ContactId", "Case", Comparison(
        "IsClosed", "=", Value("boolean", False))))
    assert to_soql(expr) == ("Id NOT IN (SELECT ContactId FROM Case WHERE IsClosed = false) AND AccountId IN "
                             "(SELECT Id FROM Account)")
    assert parse(to_soql(expr)) == expr
    assert fields(expr) == {"Id", "AccountId"}
    assert other_objects(expr) == {"Case": {"ContactId", "IsClosed"}, "Account": {"Id"}}
    assert mirror_column("Id") == "sfid" and mirror_column("AccountId") == "accountid"


@pytest.mark.parametrize(("text", "reason"), [
    ("Id IN (SELECT ContactId FROM Case) AND Id IN (SELECT ContactId FROM Case) AND Id IN "
     "(SELECT ContactId FROM Case)", "at most 2 sub-selects"),
    ("Id IN (SELECT ContactId FROM Case WHERE AccountId IN (SELECT Id FROM Account))", "cannot contain another"),
    ("Id IN (SELECT ContactId, AccountId FROM Case)", "selects one ID or reference field"),
    ("Id IN (SELECT ContactId Case)", "expected FROM"),
])
def test_subselect_limits(text, reason):
    with pytest.raises(FilterError) as err:
        parse(text)
    assert reason in err.value.reason


def test_check_types_of_subselects(contact):
    def describe_of(name):
        obj = get_object(name)
        return obj.describe("66.0") if obj else None

    ok = parse("Id NOT IN (SELECT ContactId FROM Case WHERE IsClosed = false)")
    assert check_types(ok, contact, describe_of) == []
    assert check_types(parse("LastName IN (SELECT ContactId FROM Case)"), contact, describe_of) == [
        "'LastName' is string: a sub-select (IN (SELECT ...)) needs an ID or reference field on its left"]
    assert check_types(parse("Id IN (SELECT Subject FROM Case)"), contact, describe_of) == [
        "sub-select: 'Subject' is string; a sub-select selects an ID or reference field"]
    assert check_types(parse("Id IN (SELECT ContactId FROM Nope)"), contact, describe_of) == [
        "sub-select: Nope is not an object the API user can read"]
    assert check_types(parse("Id IN (SELECT ContactId FROM Case WHERE Nope = 1)"), contact, describe_of) == [
        "sub-select: unknown field 'Nope' on Case"]


def test_subselects_run_on_the_mirror_as_exists(pg):
    """Rendered against Connect-shaped tables (sfid, isdeleted): an anti-join keeps a null reference, a deleted
    row of the other object counts for nothing, and the inner filter's values are parameters."""
    from psycopg import sql

    pg.execute("CREATE TEMP TABLE m_contact (sfid varchar(18), lastname text, accountid varchar(18), "
               "isdeleted boolean)")
    pg.execute("CREATE TEMP TABLE m_case (sfid varchar(18), contactid varchar(18), isclosed boolean, "
               "isdeleted boolean)")
    pg.execute("INSERT INTO m_contact VALUES ('003A', 'Open case', 'a', false), ('003B', 'Closed case', 'a', false),"
               " ('003C', 'No case', null, false), ('003D', 'Deleted case', 'b', false)")
    pg.execute("INSERT INTO m_case VALUES ('500A', '003A', false, false), ('500B', '003B', true, false), "
               "('500D', '003D', false, true), ('500N', null, false, false)")

    def names(text):
        where, params = to_sql(parse(text), lambda n: sql.Identifier("c", mirror_column(n)), today=TODAY,
                               relation=lambda name: (sql.Identifier(f"m_{name.lower()}"), {"IsClosed": "boolean"}))
        query = sql.SQL("SELECT lastname FROM m_contact c WHERE {} ORDER BY lastname").format(where)
        return [r[0] for r in pg.execute(query, params).fetchall()]

    assert names("Id NOT IN (SELECT ContactId FROM Case)") == ["Deleted case", "No case"]
    assert names("Id IN (SELECT ContactId FROM Case WHERE IsClosed = false)") == ["Open case"]
    assert names("Id NOT IN (SELECT ContactId FROM Case WHERE IsClosed = true) AND LastName != 'x'") == [
        "Deleted case", "No case", "Open case"]
    assert names("AccountId NOT IN (SELECT Id FROM Case)") == ["Closed case", "Deleted case", "No case", "Open case"]



def test_relative_dates_are_sent_as_the_runs_own_days():
    """A run sends the days its relative dates stand for on the run's logical date, as the mirror path reads them
    (``to_sql(today=...)``), so the org's clock at query time (a backfill, a retry days later) changes nothing."""
    expr = parse("CreatedDate = LAST_N_DAYS:30 AND Birthdate < TODAY AND NOT (LastModifiedDate != THIS_MONTH)")
    types = {"CreatedDate": "datetime", "Birthdate": "date", "LastModifiedDate": "datetime"}
    assert to_soql(expr, today=date(2024, 6, 1), types=types) == (
        "(CreatedDate >= 2024-05-02T00:00:00Z AND CreatedDate < 2024-06-02T00:00:00Z) AND Birthdate < 2024-06-01 AND "
        "NOT ((LastModifiedDate < 2024-06-01T00:00:00Z OR LastModifiedDate >= 2024-07-01T00:00:00Z OR "
        "LastModifiedDate = null))")
    assert to_soql(expr) == ("CreatedDate = LAST_N_DAYS:30 AND Birthdate < TODAY AND NOT (LastModifiedDate != "
                             "THIS_MONTH)")  # canonical form: unchanged
    sub = parse("Id NOT IN (SELECT ContactId FROM Case WHERE CreatedDate > YESTERDAY)")
    assert to_soql(sub, today=date(2024, 6, 1), relation_types=lambda name: {"CreatedDate": "datetime"}) == (
        "Id NOT IN (SELECT ContactId FROM Case WHERE CreatedDate >= 2024-06-01T00:00:00Z)")
    with pytest.raises(ValueError, match="LastName: a relative date needs a date or datetime field"):
        to_soql(parse("LastName = TODAY"), today=date(2024, 6, 1), types={"LastName": "string"})
