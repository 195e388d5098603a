"""The seed generator against a real (embedded) Postgres: the retention jobs trust this data to be
realistic, referentially sound and exactly reproducible, so those are the properties checked here."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys

import psycopg
import pytest

from sandbox import ids, org, postgres
from sandbox import seed as seeding
from sandbox.objects import BY_PREFIX, LEAD_SOURCES, OBJECTS
from tests.conftest import REPO, free_port, shared_tmp

NOW = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
CONTACTS = 2000
SEED = 7


@pytest.fixture(scope="module")
def conn():
    folder = shared_tmp("retention-seed-pg-")
    server = postgres.start(folder, free_port())
    try:
        postgres.ensure_databases(server)
        with psycopg.connect(server.url("sandbox_org"), autocommit=True) as c:
            org.create_schema(c)
            yield c
    finally:
        postgres.stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


def _snapshot(conn) -> dict[str, list[tuple]]:
    """Every row but SystemModstamp, which is the real time of the load (as the platform sets it)."""
    snap = {}
    for name in OBJECTS:
        cur = conn.execute(f"SELECT * FROM org.{name} ORDER BY id")
        keep = [i for i, d in enumerate(cur.description) if d.name != "systemmodstamp"]
        snap[name] = [tuple(row[i] for i in keep) for row in cur.fetchall()]
    return snap


def _reseed(conn, seed: int = SEED, **counts) -> dict[str, int]:
    seeding.clear(conn)
    return seeding.seed(conn, contacts=counts.pop("contacts", CONTACTS), seed=seed, now=NOW, **counts)


@pytest.fixture(scope="module")
def seeded(conn):
    """The org after the reference seed; tests that reseed put it back."""
    counts = _reseed(conn)
    return counts, _snapshot(conn)


def _one(conn, query: str, params=None):
    return conn.execute(query, params).fetchone()[0]


def test_counts_returned_match_tables_and_defaults(conn, seeded):
    counts, _ = seeded
    assert counts == {"Account": 200, "Contact": 2000, "Lead": 1000, "Opportunity": 400, "Case": 500,
                      "PrivacyHoldReason": 4, "PrivacyHold": 15}
    for name, n in counts.items():
        assert _one(conn, f"SELECT count(*) FROM org.{name.lower()}") == n, name
    assert seeding.default_counts(0) == {"accounts": 1, "leads": 0, "cases": 0, "opportunities": 0, "holds": 0}
    assert seeding.default_counts(10)["holds"] == 3


def test_same_seed_reproduces_rows_and_ids_other_seed_differs(conn, seeded):
    _, reference = seeded
    try:
        assert _reseed(conn) == seeded[0]
        assert _snapshot(conn) == reference
        _reseed(conn, seed=SEED + 1)
        other = _snapshot(conn)
        assert [r[0] for r in other["contact"]] == [r[0] for r in reference["contact"]]  # IDs follow the serials
        assert other["contact"] != reference["contact"]
        assert other["privacyhold"] != reference["privacyhold"]
    finally:
        _reseed(conn)
    assert _snapshot(conn) == reference


def test_explicit_counts_and_empty_org(conn, seeded):
    try:
        counts = _reseed(conn, contacts=0)
        assert counts == {"Account": 1, "Contact": 0, "Lead": 0, "Opportunity": 0, "Case": 0, "PrivacyHoldReason": 4,
                          "PrivacyHold": 0}
        counts = _reseed(conn, contacts=50, accounts=3, leads=0, cases=7, holds=4, opportunities=5)
        assert counts == {"Account": 3, "Contact": 50, "Lead": 0, "Opportunity": 5, "Case": 7,
                          "PrivacyHoldReason": 4, "PrivacyHold": 4}
        prefixes = {r[0] for r in conn.execute("SELECT DISTINCT left(referencerecordid, 3) FROM org.privacyhold")}
        assert prefixes == {"003", "001"}  # contacts and accounts: there are no leads, and a Case cannot be held
    finally:
        _reseed(conn)


@pytest.mark.parametrize("table", ["account", "contact", "lead", "case", "privacyhold"])
def test_dates_spread_over_years_and_before_now(conn, seeded, table):
    first, last, years, bad_order, bad_stamp, latest = conn.execute(
        f"""SELECT min(createddate), max(createddate), count(DISTINCT extract(year FROM createddate)),
                   count(*) FILTER (WHERE lastmodifieddate < createddate),
                   count(*) FILTER (WHERE systemmodstamp < now() - interval '10 minutes'), max(lastmodifieddate)
            FROM org.{table}"""
    ).fetchone()
    assert latest < NOW and last < NOW
    assert bad_order == 0 and bad_stamp == 0
    if table == "privacyhold":
        assert first > NOW - dt.timedelta(days=2 * 366)
    else:
        assert years >= 3 and first < NOW - dt.timedelta(days=2 * 365)
    if table in ("account", "contact", "lead"):
        assert years >= 6 and first < NOW - dt.timedelta(days=5 * 365) and first > NOW - dt.timedelta(days=6 * 366)


def test_contacts_have_nulls_unicode_and_messy_text(conn, seeded):
    total = CONTACTS
    for column in ("email", "phone", "title", "birthdate", "mailingcity", "leadsource", "firstname", "accountid"):
        nulls = _one(conn, f"SELECT count(*) FROM org.contact WHERE {column} IS NULL")
        assert 0 < nulls < total * 0.5, column
    for column in ("email", "phone", "title", "mailingcity", "mailingstreet"):
        share = _one(conn, f"SELECT count(*) FROM org.contact WHERE {column} IS NULL") / total
        assert 0.04 <= share <= 0.2, (column, share)
    assert _one(conn, r"SELECT count(*) FROM org.contact WHERE lastname ~ '[^\x01-\x7e]'") > 50
    assert _one(conn, r"SELECT count(*) FROM org.contact WHERE lastname ~ '[\u3040-\u9fff]'") > 10  # Japanese
    assert _one(conn, r"SELECT count(*) FROM org.contact WHERE firstname ~ '[ąćęłńóśźżéèàüöäß]'") > 10
    assert _one(conn, "SELECT count(*) FROM org.contact WHERE name IS DISTINCT FROM "
                      "CASE WHEN coalesce(firstname, '') = '' THEN lastname ELSE firstname || ' ' || lastname END") == 0
    multiline = _one(conn, "SELECT count(*) FROM org.contact WHERE description LIKE E'%\\n%' "
                           "AND description LIKE E'%\\t%'")
    assert 20 < multiline < total * 0.3
    assert _one(conn, "SELECT count(*) FROM org.contact WHERE description LIKE '%\"%,%'") > 0
    assert _one(conn, "SELECT count(*) FROM org.contact WHERE description LIKE E'%\\r\\n%'") > 0
    assert _one(conn, "SELECT max(length(description)) FROM org.contact") > 2000
    longest = _one(conn, "SELECT max(length(description)) FROM org.account")
    assert longest is None or longest <= 32000


def test_values_fit_fields_and_picklists(conn, seeded):
    """Every value must be one the org itself would accept, or Bulk reloads of it would fail."""
    for name, obj in OBJECTS.items():
        for f in obj.fields:
            col = f'"{f.column}"'
            if f.type == "boolean":
                assert _one(conn, f"SELECT count(*) FROM org.{name} WHERE {col} IS NULL") == 0, (name, f.name)
            limit = f.describe()["length"]
            if f.type in ("string", "email", "phone", "url", "textarea") and limit and f.name != "Name":
                longest = _one(conn, f"SELECT max(length({col})) FROM org.{name}")
                assert longest is None or longest <= limit, (name, f.name, longest)
            if f.type == "email":
                for (value,) in conn.execute(f"SELECT {col} FROM org.{name} WHERE {col} IS NOT NULL"):
                    assert org._EMAIL.match(value) and value.isascii(), value
            if f.type == "picklist" and f.picklist:
                values = {r[0] for r in conn.execute(f"SELECT DISTINCT {col} FROM org.{name} WHERE {col} IS NOT NULL")}
                assert values <= set(f.picklist), (name, f.name, values - set(f.picklist))
        assert _one(conn, f"SELECT count(*) FROM org.{name} WHERE isdeleted OR ownerid <> %s",
                    (org.DEFAULT_OWNER,)) == 0
    sources = {r[0] for r in conn.execute("SELECT DISTINCT leadsource FROM org.lead")}
    assert "Partner Referral" in sources and len(sources - {None}) == len(LEAD_SOURCES)
    assert _one(conn, "SELECT count(DISTINCT casenumber) FROM org.case") == 500
    assert _one(conn, "SELECT count(*) FROM org.case WHERE isclosed <> (status = 'Closed') "
                      "OR (closeddate IS NULL) = isclosed OR closeddate < createddate") == 0


def test_references_resolve(conn, seeded):
    for child, column, parent in [("contact", "accountid", "account"), ("case", "accountid", "account"),
                                  ("case", "contactid", "contact"),
                                  ("privacyhold", "privacyholdreasonid", "privacyholdreason")]:
        dangling = _one(conn, f"""SELECT count(*) FROM org.{child} c LEFT JOIN org.{parent} p ON p.id = c.{column}
                                  WHERE c.{column} IS NOT NULL AND p.id IS NULL""")
        assert dangling == 0, (child, column)
    assert _one(conn, "SELECT count(*) FROM org.case c JOIN org.contact k ON k.id = c.contactid "
                      "WHERE c.accountid IS DISTINCT FROM k.accountid") == 0
    holds = conn.execute("SELECT referencerecordid, referencerecordtype FROM org.privacyhold").fetchall()
    prefixes = set()
    for record_id, record_type in holds:
        obj = BY_PREFIX[record_id[:3]]
        prefixes.add(obj.name)
        assert record_type == obj.name  # ReferenceRecordType is derived by the org
        assert _one(conn, f"SELECT count(*) FROM org.{obj.table} WHERE id = %s", (record_id,)) == 1
    # PrivacyHold.ReferenceRecordId "Refers To Account, Contact, Individual, Lead, User" (Object Reference).
    assert prefixes == {"Contact", "Lead", "Account"}
    assert len({r[0] for r in holds}) == len(holds)


def test_active_holds_are_a_proper_subset(conn, seeded):
    total, active, inactive, expired, ongoing = conn.execute(
        """SELECT count(*),
                  count(*) FILTER (WHERE isactive AND (enddate IS NULL OR enddate > %(today)s)),
                  count(*) FILTER (WHERE NOT isactive),
                  count(*) FILTER (WHERE isactive AND enddate <= %(today)s),
                  count(*) FILTER (WHERE enddate IS NULL)
           FROM org.privacyhold""",
        {"today": NOW.date()},
    ).fetchone()
    assert 0 < active < total and inactive > 0 and expired > 0 and ongoing > 0
    reasons = {r[0] for r in conn.execute("SELECT name FROM org.privacyholdreason")}
    assert {"Litigation", "Regulatory inquiry", "Customer request"} <= reasons and 3 <= len(reasons) <= 4


def test_every_id_is_valid(conn, seeded):
    for name, obj in OBJECTS.items():
        refs = [f.column for f in obj.fields if f.type == "reference"]
        for row in conn.execute(f"SELECT id, {', '.join(refs)} FROM org.{name}"):
            assert row[0][:3] == obj.key_prefix and ids.is_valid(row[0]), row[0]
            assert all(v is None or ids.is_valid(v) for v in row[1:]), row
    assert _one(conn, "SELECT min(id) FROM org.contact") == ids.make_id("003", 1)


def test_fast_ids_equal_make_id():
    for prefix in ("001", "003", "00Q", "500", "0Hp", "0Hr"):
        make = seeding._id_maker(prefix)
        for serial in [*range(0, 250_000, 97), 62**5 - 1, 62**5, 62**6 + 12345, 62**9 - 1]:
            assert make(serial) == ids.make_id(prefix, serial)


_ROWS_DIGEST = """
import datetime as dt, hashlib
from array import array
from sandbox import seed as s
g = s._Gen(7, dt.datetime(2025, 6, 1, tzinfo=dt.UTC))
g.loaded_at = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)  # the real load time is the one value meant to vary
domains = []
rows = list(s._accounts(g, 1, 20, domains)) + list(s._contacts(g, 1, 300, 1, domains, array("i")))
print(hashlib.sha256(repr(rows).encode()).hexdigest())
"""


def test_rows_do_not_depend_on_the_process():
    """The CLI seeds in a fresh process each time: string hashing (PYTHONHASHSEED) must not leak into the data."""
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", _ROWS_DIGEST], env=env, capture_output=True, text=True,
                             check=True, cwd=REPO)
        digests.add(out.stdout.strip())
    assert len(digests) == 1
