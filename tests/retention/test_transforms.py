"""Retain transforms: the SQL expressions evaluated in a real Postgres agree with their Python twin, and the
SQL HMAC agrees with Python's ``hmac`` (the embedded server has no pgcrypto to lean on)."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import random
from decimal import Decimal

import psycopg
import pytest
from psycopg import sql

from retention import transforms
from retention.transforms import apply, expression, pg_text, result_type

KEY = b"retention-test-key-0123456789abcdef"


# ------------------------------------------------------------------------------------------ pure Python


def test_result_types():
    assert result_type("year", "date") == "integer"
    assert result_type("month", "timestamp without time zone") == "date"
    assert result_type("hash", "text") == "char(64)"
    for kind in ("email_domain", "truncate", "last"):
        assert result_type(kind, "character varying(80)") == "text"
    assert result_type("keep", "numeric(18,2)") == "numeric(18,2)"
    assert result_type("null", "date") == "date"
    with pytest.raises(ValueError):
        result_type("nope", "text")


def test_apply_email_domain():
    assert apply("email_domain", None, "Ann.Lee@Example.COM", key=KEY) == "example.com"
    assert apply("email_domain", None, '"a@b"@Mail.Example.org', key=KEY) == "mail.example.org"
    assert apply("email_domain", None, "no-at-sign", key=KEY) is None
    assert apply("email_domain", None, "trailing@", key=KEY) == ""
    # Lower-casing is ASCII-only, as in SQL under the "C" collation: never locale-dependent.
    assert apply("email_domain", None, "x@ÉCOLE.FR", key=KEY) == "École.fr"


def test_apply_dates():
    assert apply("year", None, dt.date(1980, 5, 17), key=KEY) == 1980
    assert apply("year", None, dt.datetime(2023, 12, 31, 23, 59), key=KEY) == 2023
    assert apply("year", None, "1980-05-17", key=KEY) == 1980
    # Salesforce API datetimes are UTC with an offset: read in UTC.
    assert apply("year", None, "2023-12-31T23:30:00.000-0200", key=KEY) == 2024
    assert apply("month", None, dt.date(1980, 5, 17), key=KEY) == dt.date(1980, 5, 1)
    assert apply("month", None, dt.datetime(2024, 2, 29, 13, 1), key=KEY) == dt.date(2024, 2, 1)
    assert apply("month", None, "2024-02-29T13:01:00Z", key=KEY) == dt.date(2024, 2, 1)
    with pytest.raises(TypeError):
        apply("year", None, 1980, key=KEY)


def test_apply_text_and_hash():
    assert apply("truncate", 3, "Kelsey", key=KEY) == "Kel"
    assert apply("truncate", 10, "Kel", key=KEY) == "Kel"
    assert apply("last", 4, "+1 555 0100", key=KEY) == "0100"
    assert apply("last", 10, "abc", key=KEY) == "abc"
    assert apply("truncate", 4, dt.date(1980, 5, 17), key=KEY) == "1980"
    assert apply("hash", None, "Kelsey", key=KEY) == hmac.new(KEY, b"Kelsey", hashlib.sha256).hexdigest()
    assert apply("hash", None, "Kelsey", key=KEY) != apply("hash", None, "Kelsey", key=b"other")
    assert apply("keep", None, Decimal("1.50"), key=KEY) == Decimal("1.50")
    assert apply("null", None, "anything", key=KEY) is None
    for kind, n in (("keep", None), ("email_domain", None), ("year", None), ("truncate", 2), ("hash", None)):
        assert apply(kind, n, None, key=KEY) is None
    with pytest.raises(ValueError):
        apply("truncate", 0, "x", key=KEY)
    with pytest.raises(ValueError):
        apply("md5", None, "x", key=KEY)


def test_pg_text():
    assert pg_text(True) == "true"
    assert pg_text(dt.datetime(2024, 1, 5, 10, 0, 0, 500000)) == "2024-01-05 10:00:00.5"
    assert pg_text(dt.datetime(2024, 1, 5, 10, tzinfo=dt.UTC)) == "2024-01-05 10:00:00+00"
    assert pg_text(Decimal("1E+2")) == "100"
    assert pg_text(1.0) == "1"
    assert pg_text(1e15) == "1e+15"
    assert pg_text(b"\x01\xff") == "\\x01ff"


def test_expression_never_inlines_the_key():
    text = expression("hash", None, sql.Identifier("s", "email")).as_string(None)
    assert "%(hmac_key)s::bytea" in text
    assert '"retention".hmac_sha256' in text
    custom = expression("hash", None, sql.Identifier("e"), key_param=sql.Placeholder(), schema="store")
    assert "%s::bytea" in custom.as_string(None) and '"store".hmac_sha256' in custom.as_string(None)
    with pytest.raises(ValueError):
        expression("truncate", None, sql.Identifier("e"))


# -------------------------------------------------------------------------------------- real Postgres


@pytest.fixture(scope="module")
def conn(tmp_path_factory):
    pgserver = pytest.importorskip("pgserver")
    server = pgserver.get_server(str(tmp_path_factory.mktemp("transforms_pg")), cleanup_mode="stop")
    with psycopg.connect(server.get_uri(), autocommit=True) as connection:
        connection.execute("SET TimeZone = 'UTC'")
        connection.execute("CREATE SCHEMA IF NOT EXISTS retention")
        connection.execute(transforms.hmac_ddl("retention"))
        connection.execute(transforms.hmac_ddl("retention"))  # CREATE OR REPLACE: a re-run is harmless
        yield connection
    server.cleanup()


def _random_text(rng: random.Random) -> str:
    alphabet = "abcXYZ 019@.-_'éüßñÆ中文字😀🎉\t\n\\\"" + "".join(map(chr, range(0x400, 0x410)))
    return "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 0, 1, 5, 55, 56, 63, 64, 65, 200])))


def test_hmac_function_is_immutable_strict_parallel_safe(conn):
    row = conn.execute(
        "SELECT provolatile, proisstrict, proparallel FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'retention' AND p.proname = 'hmac_sha256'"
    ).fetchone()
    assert row == ("i", True, "s")
    assert conn.execute("SELECT retention.hmac_sha256(NULL, 'x'::bytea)").fetchone() == (None,)


def test_hmac_sql_matches_python(conn):
    rng = random.Random(20240105)
    keys, messages = [], []
    for i in range(200):
        # Key lengths around the 64-byte block, where RFC 2104 switches to hashing the key.
        key_len = [0, 1, 16, 32, 63, 64, 65, 100, 200][i % 9]
        keys.append(rng.randbytes(key_len) if i % 2 else _random_text(rng).encode()[:key_len].ljust(key_len, b"k"))
        messages.append(_random_text(rng).encode("utf-8") if i % 3 else rng.randbytes(rng.randrange(0, 300)))
    messages[:3] = [b"", b"", "😀".encode()]
    rows = conn.execute(
        "SELECT encode(retention.hmac_sha256(k, m), 'hex') FROM unnest(%s::bytea[], %s::bytea[])"
        " WITH ORDINALITY AS t(k, m, i) ORDER BY i",
        (keys, messages),
    ).fetchall()
    expected = [hmac.new(k, m, hashlib.sha256).hexdigest() for k, m in zip(keys, messages, strict=True)]
    assert [r[0] for r in rows] == expected


def test_hmac_rfc4231_vectors(conn):
    # RFC 4231 test cases 1, 2 and 6 (key longer than the block).
    cases = [
        (b"\x0b" * 20, b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
        (b"Jefe", b"what do ya want for nothing?", "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
        (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
         "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    ]
    for key, message, digest in cases:
        row = conn.execute("SELECT encode(retention.hmac_sha256(%s, %s), 'hex')", (key, message)).fetchone()
        assert row[0] == digest


def test_hash_expression_matches_python_on_unicode_text(conn):
    rng = random.Random(7)
    texts = [_random_text(rng) for _ in range(200)] + ["", "Ann O'Neil", "Zoë", "名前"]
    hashed = expression("hash", None, sql.Identifier("t"))
    query = sql.SQL("SELECT {} FROM unnest(%(texts)s::text[]) WITH ORDINALITY AS u(t, i) ORDER BY i").format(hashed)
    rows = conn.execute(query, {"texts": texts, "hmac_key": KEY}).fetchall()
    assert [r[0] for r in rows] == [apply("hash", None, t, key=KEY) for t in texts]


STAGING_COLUMNS = {
    "txt": "text",
    "email": "character varying(80)",
    "birthdate": "date",
    "modified": "timestamp without time zone",
    "amount": "numeric(18,2)",
    "score": "double precision",
    "flag": "boolean",
}
STAGING_ROWS = [
    ("Kelsey", "Kelsey.Smith@Example.COM", dt.date(1980, 5, 17), dt.datetime(2023, 12, 31, 23, 59, 59),
     Decimal("1234.50"), 0.1, True),
    ("Zoë Ōkubo 😀", "x@y@Sub.Domain.ORG", dt.date(2000, 2, 29), dt.datetime(2024, 2, 29, 0, 0, 0, 123000),
     Decimal("-5.00"), 1e15, False),
    ("", "no-at-sign", dt.date(1, 1, 1), dt.datetime(1999, 1, 1, 12, 30), Decimal("0.00"), -2.5e-07, None),
    ("ab", "trailing@", dt.date(9999, 12, 31), dt.datetime(2020, 6, 15, 8, 0, 0, 1), Decimal("7"), 123456.789, True),
    (None, None, None, None, None, None, None),
]
# Every registered transform on the columns it makes sense for (year and month need a date or timestamp).
CASES = [
    (kind.name, 3 if kind.sized else None, column)
    for kind in transforms.KINDS.values()
    for column in (("birthdate", "modified") if kind.field_types == {"date", "datetime"} else STAGING_COLUMNS)
]


@pytest.fixture(scope="module")
def staging(conn):
    conn.execute("CREATE TABLE staging (id serial PRIMARY KEY, {})".format(
        ", ".join(f"{name} {pg_type}" for name, pg_type in STAGING_COLUMNS.items())
    ))
    with conn.cursor() as cur:
        cur.executemany(
            sql.SQL("INSERT INTO staging ({}) VALUES ({})").format(
                sql.SQL(", ").join(map(sql.Identifier, STAGING_COLUMNS)),
                sql.SQL(", ").join(sql.Placeholder() * len(STAGING_COLUMNS)),
            ),
            STAGING_ROWS,
        )
    rows = conn.execute(sql.SQL("SELECT {} FROM staging ORDER BY id").format(
        sql.SQL(", ").join(map(sql.Identifier, STAGING_COLUMNS))
    )).fetchall()
    return [dict(zip(STAGING_COLUMNS, row, strict=True)) for row in rows]


def test_sql_expressions_equal_python_twin(conn, staging):
    """INSERT ... SELECT into columns typed by result_type, as load_to_cache does, then compare value by value."""
    names = [f"c{i}" for i in range(len(CASES))]
    conn.execute(sql.SQL("CREATE TABLE cache_subset (id integer PRIMARY KEY, {})").format(sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(result_type(kind, STAGING_COLUMNS[column])))
        for name, (kind, n, column) in zip(names, CASES, strict=True)
    )))
    conn.execute(
        sql.SQL("INSERT INTO cache_subset (id, {}) SELECT s.id, {} FROM staging AS s").format(
            sql.SQL(", ").join(map(sql.Identifier, names)),
            sql.SQL(", ").join(expression(kind, n, sql.Identifier("s", column)) for kind, n, column in CASES),
        ),
        {"hmac_key": KEY},
    )
    stored = conn.execute(sql.SQL("SELECT {} FROM cache_subset ORDER BY id").format(
        sql.SQL(", ").join(map(sql.Identifier, names))
    )).fetchall()
    assert len(stored) == len(staging)
    mismatches = [
        (kind, n, column, original[column], got, apply(kind, n, original[column], key=KEY))
        for original, row in zip(staging, stored, strict=True)
        for (kind, n, column), got in zip(CASES, row, strict=True)
        if got != apply(kind, n, original[column], key=KEY)
    ]
    assert mismatches == []
    # The cache column is char(64): a hash fills it exactly.
    assert all(len(row[CASES.index(("hash", None, "txt"))]) == 64 for row in stored[:-1])


def test_float_and_timestamp_text_match_postgres(conn):
    floats = [0.1, 1.0, -0.0, 1e15, 1e14, 123456789012345.6, 1e-4, 1e-5, 1.5e300, -2.5e-7, 2.0**60, 5e-324]
    rows = conn.execute("SELECT x::text FROM unnest(%s::float8[]) WITH ORDINALITY AS u(x, i) ORDER BY i", (floats,))
    assert [r[0] for r in rows] == [pg_text(f) for f in floats]
    stamps = [dt.datetime(2024, 1, 5, 10, 0, 0, us) for us in (0, 1, 500000, 123456)]
    rows = conn.execute("SELECT x::text FROM unnest(%s::timestamp[]) WITH ORDINALITY AS u(x, i) ORDER BY i", (stamps,))
    assert [r[0] for r in rows] == [pg_text(s) for s in stamps]
