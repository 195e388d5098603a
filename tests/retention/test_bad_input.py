"""Bad input (issue 10): each is refused with an error naming the file and the key, with nothing written or acted
on, or, where the input is valid, kept exactly.

- policy files: malformed YAML, unknown keys at any depth, NUL characters anywhere, ``where`` injection attempts
  (refused at load; a literal that only looks like SQL stays data in the SOQL sent and in the mirror's SQL, proven
  by running it); an unknown object or field, found by the run's describe check;
- records: a NUL in a Bulk query result (Postgres text cannot hold it: the run stops naming record and field);
  values at Salesforce's length limits, unicode, newlines, tabs, quotes and commas retained exactly and hashed
  consistently through both sources (one ``dag.test()`` each);
- dates: cutoffs and relative dates on daylight-saving days, consecutive runs neither selecting a record twice nor
  skipping one, and date/datetime fields next to the cutoff compared the same way in SOQL and on the mirror.

Field lengths are the sandbox's (``sandbox/objects.py``), as Salesforce's field reference gives them for Contact
(FirstName 40, LastName 80, Email 80, Description a 32,000-character Long Text Area):
https://developer.salesforce.com/docs/platform/field-reference/references/field-reference/salesforce-field-reference-contact.html
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from zoneinfo import ZoneInfo

import pytest
from psycopg import sql

from retention import soql_filter
from retention.policy import load_policy, parse_policy
from retention.steps.run import RetentionError, make_run, release
from tests.retention.test_policy import MASK, VALID, error_of

UTC = dt.UTC
BERLIN, NEW_YORK = ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")


def where(text: str) -> str:
    """VALID with its filter replaced (``text`` as written inside the YAML double quotes)."""
    return VALID.replace("\"LeadSource != 'Partner Referral'\"", f'"{text}"')


# ------------------------------------------------------------------------------------------- the file


@pytest.mark.parametrize(("text", "line"), [
    # Malformed YAML and the wrong shapes of a document.
    (VALID.replace("  older_than_days: 730", "  older_than_days: 730\n  older_than_days: 1"),
     "line 10, column 3: invalid YAML: duplicate key 'older_than_days' (first on line 9)"),
    (VALID + "id: again\n", "line 19, column 1: invalid YAML: duplicate key 'id' (first on line 1)"),
    (VALID.replace("retain:\n", "retain:\n\ttable: x\n"), "line 12, column 1: invalid YAML"),
    (VALID.replace("where: \"LeadSource != 'Partner Referral'\"", "where: \"LeadSource != 'x'"), "invalid YAML"),
    ("42\n", "bad.yaml: top level must be a mapping of policy keys, got int"),
    (VALID.replace("select:\n", "select: [date_field]\nx:\n"), "select: input should be a valid dictionary"),
    (VALID.replace("retain:\n", "retain: contact\nx:\n"), "retain: input should be a valid dictionary"),
    # Unknown keys, nested.
    (VALID.replace("retain:\n", "retain:\n  tabel: contact2\n"), "retain.tabel: unknown key (did you mean table?)"),
    (VALID + "guards:\n  max_record_per_run: 3\n",
     "guards.max_record_per_run: unknown key (did you mean max_records_per_run?)"),
    (VALID + "alerts:\n  emails: [a@b.example]\n", "alerts.emails: unknown key (did you mean email?)"),
    (VALID.replace("MailingCountry: keep", "MailingCountry: {transform: keep, lenght: 3}"),
     "retain.fields.MailingCountry: unknown key(s) lenght (expected transform, length)"),
    # A transform that does not fit the field is a describe check (test_policy); one that fits no field is here.
    (VALID.replace("Birthdate: year", "Birthdate: year:4"), "retain.fields.Birthdate: year takes no length"),
])
def test_malformed_files_name_the_file_and_the_key(tmp_path, text, line):
    err = error_of(tmp_path, text)
    assert err.path == tmp_path / "bad.yaml"
    assert all(msg.startswith(f"{tmp_path}/bad.yaml: ") for msg in str(err).splitlines()), str(err)
    assert line in str(err), str(err)


@pytest.mark.parametrize(("text", "key"), [
    (where("LeadSource != 'Part\\0ner'"), "select.where"),
    (MASK.replace("anonymize", '{strategy: static, value: "X\\0"}'), "mask.FirstName.value"),
    (VALID.replace("owner: privacy-team", 'owner: "privacy\\0team"'), "owner"),
    (VALID.replace("    LastName: keep", '    "Last\\0Name": keep'), "retain.fields"),
])
def test_a_nul_character_anywhere_in_a_policy_is_refused_not_stripped(tmp_path, text, key):
    """YAML's "\\0" is a NUL. Postgres text cannot hold one: a where literal or a mask value with it would fail in
    the middle of a run (or be cut short by a client). Refused at load, at its key."""
    err = error_of(tmp_path, text)
    assert err.problems[0][0] == key
    assert "contains a NUL character" in err.problems[0][1]
    assert str(err).startswith(f"{tmp_path}/bad.yaml: {key}: ")


def test_a_raw_nul_byte_in_the_file_is_refused(tmp_path):
    err = error_of(tmp_path, VALID.replace("privacy-team", "privacy\x00team"))
    assert str(err).startswith(f"{tmp_path}/bad.yaml: YAML error: unacceptable character #x0000")


@pytest.mark.parametrize("text", [
    "LeadSource = 'x'; DROP TABLE contact",
    "LeadSource = 'x",  # unbalanced quote
    "LeadSource = 'x'' OR LastName != ''",
    "LeadSource = 'x' -- comment",
    "LeadSource = 'x' /* comment */",
    "LeadSource = 'x' OR 1 = 1",
    "LeadSource IN (SELECT LeadSource FROM Lead; DELETE FROM Lead)",
    "LeadSource = 'x' UNION SELECT Id FROM User",
    "DROP TABLE contact",
    "LeadSource = (SELECT Name FROM Account)",
])
def test_where_injection_attempts_are_refused_at_load_naming_the_key(tmp_path, text):
    err = error_of(tmp_path, where(text))
    [(key, reason)] = err.problems
    assert key == "select.where" and reason.startswith("column "), str(err)


# A literal that only reads like SQL: legitimate data (a name can hold a semicolon), quoted with \' in SOQL.
SHADY = ["a;b", "x'; DROP TABLE victim; --", "'/* */ UNION SELECT 1 --", "x\\\\'); DELETE FROM victim; --"]


@pytest.mark.parametrize("value", SHADY)
def test_a_literal_that_looks_like_sql_stays_one_value_in_soql(tmp_path, value):
    """Loaded from a file, the literal is one value; rendered back to SOQL it is still one literal (re-parsing gives
    the same filter), which is what Salesforce is sent."""
    escaped = soql_filter.to_soql(soql_filter.Comparison("LastName", "=", soql_filter.Value("string", value)))
    path = tmp_path / "ok.yaml"
    path.write_text(where(escaped.replace("\\", "\\\\")))  # in YAML's double quotes a backslash is doubled
    policy = load_policy(path)
    expr = policy.select.filter
    assert (expr.field, expr.op, expr.value.kind, expr.value.value) == ("LastName", "=", "string", value)
    again = soql_filter.parse(soql_filter.to_soql(expr))
    assert (again.field, again.op, again.value.value) == ("LastName", "=", value)


def test_sql_in_a_literal_is_only_data_on_the_mirror(sandbox):
    """The mirror path runs the rendered filter on Postgres: a literal holding ``'; DROP TABLE victim; --`` selects
    the row whose name is that text and nothing else runs (the table it names is still there, with its row)."""
    with sandbox.store_conn() as conn:
        conn.execute("CREATE TEMP TABLE victim (name text)")
        conn.cursor().executemany("INSERT INTO victim VALUES (%s)", [(v,) for v in [*SHADY, "plain"]])
        for value in SHADY:
            text = soql_filter.to_soql(soql_filter.Comparison("Name", "=", soql_filter.Value("string", value)))
            clause, params = soql_filter.to_sql(soql_filter.parse(text), today=dt.date(2026, 3, 29))
            rows = conn.execute(sql.SQL("SELECT name FROM victim WHERE {}").format(clause), params).fetchall()
            assert rows == [(value,)], (text, rows)
        like, params = soql_filter.to_sql(soql_filter.parse("Name LIKE '%;%'"), today=dt.date(2026, 3, 29))
        assert {r[0] for r in conn.execute(sql.SQL("SELECT name FROM victim WHERE {}").format(like), params)} == {
            v for v in SHADY if ";" in v}
        assert conn.execute("SELECT count(*) FROM victim").fetchone()[0] == len(SHADY) + 1


def test_sql_in_a_literal_is_only_data_in_the_org(sf):
    """The same literals sent to the org as SOQL select the contact with that name, and only it."""
    ids = {value: sf.Contact.create({"LastName": value, "Email": "shady@bad-input.example"})["id"] for value in SHADY}
    for value, record_id in ids.items():
        text = soql_filter.to_soql(soql_filter.And((
            soql_filter.Comparison("LastName", "=", soql_filter.Value("string", value)),
            soql_filter.Comparison("Email", "=", soql_filter.Value("string", "shady@bad-input.example")))))
        found = sf.query_all(f"SELECT Id, LastName FROM Contact WHERE {text}")["records"]
        assert [(r["Id"], r["LastName"]) for r in found] == [(record_id, value)]
    assert sf.query("SELECT COUNT() FROM Contact WHERE Email = 'shady@bad-input.example'")["totalSize"] == len(SHADY)


# --------------------------------------------------------------------------- what the run's describe finds


EDGE = """\
id: {id}
description: bad input at run time
owner: privacy-team
object: {object}
schedule: null
start_date: 2025-01-01
select:
  date_field: LastModifiedDate
  older_than_days: 1
  where: "{where}"
retain:
  table: {id}
  fields:
    LastName: keep
    {field}: keep
action: mask
mask:
  {mask}
source: salesforce_api
"""


def edge_policy(tmp_path, **values):
    values = {"object": "Contact", "where": "Email LIKE '%@bad-input.example'", "field": "Email",
              "mask": "FirstName: nullify", **values}
    path = tmp_path / f"{values['id']}.yaml"
    path.write_text(EDGE.format(**values))
    return load_policy(path)


def extract_now(policy, sf=None):
    """The extract step with the deployment's hooks, for a run two days from now (today's records are eligible)."""
    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook
    from retention.hooks.store import RetentionStoreHook
    from retention.steps.extract import extract

    store = RetentionStoreHook()
    now = dt.datetime.now(UTC) + dt.timedelta(days=2)
    run = make_run(policy, logical_date=now, run_after=now, dag_run_id=f"manual__{policy.id}", params={})
    try:
        with pytest.raises(RetentionError) as err:
            extract(store, sf or SalesforceBulk2Hook(), policy, run, still_running=lambda _: False)
    finally:
        release(store, run)
    return err.value, run


def nothing_written(sandbox, policy, run) -> bool:
    with sandbox.store_conn() as conn:
        cache = conn.execute("SELECT to_regclass(%s)", (f"cache.{policy.retain.table}",)).fetchone()[0]
        staged = conn.execute("SELECT to_regclass(%s)", (f'retention_staging."{run.run_key}"',)).fetchone()[0]
        ledger = conn.execute("SELECT count(*) FROM retention.runs WHERE policy_id = %s", (policy.id,)).fetchone()[0]
    return cache is None and staged is None and ledger == 0


def test_an_unknown_object_stops_the_run_naming_file_and_key(sandbox, airflow_db, tmp_path):
    policy = edge_policy(tmp_path, id="bad_object", object="Contactt")
    err, run = extract_now(policy)
    assert str(err) == ("bad_object.yaml: object: Contactt is not an object the API user can read (describe answers "
                        "NOT_FOUND); nothing was touched")
    assert nothing_written(sandbox, policy, run)


def test_unknown_fields_in_retain_where_and_mask_stop_the_run_naming_file_and_keys(sandbox, airflow_db, tmp_path):
    """And a mask that does not fit its field's type (LastName is required: it cannot be emptied)."""
    policy = edge_policy(tmp_path, id="bad_fields", where="Emial LIKE '%@bad-input.example'", field="Birthdte",
                         mask="FirstNam: nullify\n  LastName: nullify")
    err, run = extract_now(policy)
    assert str(err) == (
        "policy bad_fields does not fit Contact in Salesforce: "
        "bad_fields.yaml: select.where: unknown field 'Emial' on Contact; "
        "bad_fields.yaml: retain.fields.Birthdte: unknown field 'Birthdte' on Contact; "
        "bad_fields.yaml: mask.FirstNam: unknown field 'FirstNam' on Contact; "
        "bad_fields.yaml: mask.LastName: nullify needs a nillable field; 'LastName' is required")
    assert nothing_written(sandbox, policy, run)


def test_a_nul_in_a_bulk_result_stops_the_run_naming_record_and_field(sandbox, airflow_db, sf, tmp_path):
    """The sandbox org lives in Postgres, so it cannot hold a NUL; Salesforce can, and sends it in a Bulk result (the
    ``nul_in_results`` fault sends one in place of a marker). The loader must refuse it through the real client
    path, not strip it (as simple-salesforce's own page reader does) nor let COPY fail on an anonymous byte; the
    staging and cache tables it began are rolled back."""
    record = sf.Contact.create({"LastName": "NUL-HERE", "Email": "nul@bad-input.example"})["id"]
    policy = edge_policy(tmp_path, id="nul_in_results")
    with sandbox.fault("nul_in_results", text="NUL-HERE"):
        err, run = extract_now(policy)
    assert str(err).startswith(f"policy nul_in_results: Contact record {record} has a NUL character in LastName; "
                               "Postgres text cannot hold one"), str(err)
    assert nothing_written(sandbox, policy, run)
    assert sf.Contact.get(record)["LastName"] == "NUL-HERE"  # nothing acted on in the org


# ------------------------------------------------------------------------------------ daylight saving


# Days a clock changes: Europe/Berlin springs forward at 01:00 UTC on 29 March 2026 and falls back at 01:00 UTC on
# 25 October; America/New_York at 07:00 UTC on 8 March and 06:00 UTC on 1 November.
DST_DAYS = [(BERLIN, dt.date(2026, 3, 29)), (BERLIN, dt.date(2026, 10, 25)),
            (NEW_YORK, dt.date(2026, 3, 8)), (NEW_YORK, dt.date(2026, 11, 1))]
DAILY = VALID.replace('"0 3 * * *"', '"30 1 * * *"')  # 01:30 UTC: inside Berlin's change


def daily_runs(policy, first: dt.datetime, count: int):
    """``count`` consecutive runs as the scheduler plans them from ``first`` with the policy's timetable."""
    from retention.timetables import timetable_for
    from tests.retention.test_timetables import run_dates

    return [make_run(policy, logical_date=when, run_after=when, dag_run_id=f"scheduled__{when.isoformat()}", params={})
            for when in run_dates(timetable_for(policy.schedule), n=count, start=first)]


@pytest.mark.parametrize(("zone", "day"), DST_DAYS, ids=[f"{z.key}-{d}" for z, d in DST_DAYS])
def test_consecutive_runs_across_a_clock_change_select_each_record_once(zone, day):
    """Schedules are in UTC, so daily runs stay 24 hours apart when a local clock changes, and each cutoff is the
    logical date minus exactly older_than_days x 24 h. Records stamped every 10 minutes of local time around the
    change (both readings of the repeated hour included) are each selected by exactly one run: the first whose
    cutoff passes them; date fields advance one day per run."""
    policy = parse_policy(DAILY.encode())
    n = policy.select.older_than_days
    first = dt.datetime.combine(day + dt.timedelta(days=n - 2), dt.time(), UTC)
    runs = daily_runs(policy, first, 5)
    logical = [r.cutoff + dt.timedelta(days=n) for r in runs]
    assert [b - a for a, b in zip(logical, logical[1:], strict=False)] == [dt.timedelta(hours=24)] * 4
    assert all(r.cutoff.utcoffset() == dt.timedelta(0) and r.cutoff.time() == dt.time(1, 30) for r in runs)
    assert [r.today for r in runs] == [r.cutoff.date() + dt.timedelta(days=n) for r in runs]
    assert day in [r.cutoff.date() for r in runs]

    start = dt.datetime.combine(day - dt.timedelta(days=1), dt.time(), zone)
    stamps = {(start + dt.timedelta(minutes=10 * i)).replace(fold=fold).astimezone(UTC)
              for i in range(6 * 24 * 3) for fold in (0, 1)}
    stamps = {s for s in stamps if runs[0].cutoff <= s < runs[-1].cutoff}
    selected: dict[dt.datetime, list[int]] = {}
    done: set[dt.datetime] = set()
    for i, run in enumerate(runs):
        picked = {s for s in stamps if s < run.cutoff} - done  # date_field < cutoff, minus already retained
        done |= picked
        for s in picked:
            selected.setdefault(s, []).append(i)
    assert set(selected) == stamps and all(len(v) == 1 for v in selected.values())
    dates = [run.cutoff_value("date") for run in runs]
    assert [b - a for a, b in zip(dates, dates[1:], strict=False)] == [dt.timedelta(days=1)] * 4


@pytest.mark.parametrize(("zone", "day"), DST_DAYS, ids=[f"{z.key}-{d}" for z, d in DST_DAYS])
def test_relative_dates_on_a_clock_change_count_from_the_utc_day(zone, day):
    """A run triggered at local midnight-and-a-half of the change day (still the previous UTC day in Berlin, already
    that day in New York) counts TODAY from the UTC day of its logical date; YESTERDAY and N_DAYS_AGO of
    consecutive days tile the calendar with no day twice or missing."""
    policy = parse_policy(DAILY.encode())
    local = dt.datetime.combine(day, dt.time(0, 30), zone)
    run = make_run(policy, logical_date=local, run_after=local, dag_run_id="manual", params={})
    assert run.today == local.astimezone(UTC).date()
    assert run.cutoff == local.astimezone(UTC) - dt.timedelta(days=policy.select.older_than_days)
    days = [run.today + dt.timedelta(days=k) for k in range(4)]
    for name, n in (("YESTERDAY", None), ("N_DAYS_AGO", 3), ("TODAY", None)):
        ranges = [soql_filter.relative_range(name, n, d) for d in days]
        assert all(end - start == dt.timedelta(days=1) for start, end in ranges)
        assert [b[0] for b in ranges[1:]] == [a[1] for a in ranges[:-1]]
    soql = soql_filter.to_soql(soql_filter.parse("CreatedDate = YESTERDAY"), today=run.today,
                               types={"CreatedDate": "datetime"})
    yesterday = run.today - dt.timedelta(days=1)
    assert f"{yesterday:%Y-%m-%d}T00:00:00Z" in soql and f"{run.today:%Y-%m-%d}T00:00:00Z" in soql


def test_fields_next_to_a_cutoff_on_a_clock_change_compare_the_same_in_soql_and_on_the_mirror(sandbox, sf):
    """The cutoff falls 30 minutes after Berlin's spring-forward (01:30 UTC, 03:30 local). Contacts modified one second
    before it, at it, and one second after (written as Berlin wall-clock times), and born the day before and on the
    cutoff's day: the SOQL the Bulk path sends and the SQL the mirror path runs (in a session whose TimeZone is
    Berlin, where a zone-aware parameter would shift by the offset) select the same ones, those strictly before."""
    policy = parse_policy(DAILY.replace("older_than_days: 730", "older_than_days: 30").encode())
    logical = dt.datetime(2026, 4, 28, 1, 30, tzinfo=UTC)
    run = make_run(policy, logical_date=logical, run_after=logical, dag_run_id="manual", params={})
    assert run.cutoff.astimezone(BERLIN) == dt.datetime(2026, 3, 29, 3, 30, tzinfo=BERLIN)
    second = dt.timedelta(seconds=1)
    modified = {"before": run.cutoff - second, "at": run.cutoff, "after": run.cutoff + second}
    born = {"before": run.cutoff.date() - dt.timedelta(days=1), "at": run.cutoff.date(), "after": run.cutoff.date()}
    ids = {k: sf.Contact.create({"LastName": f"DST {k}", "Email": f"{k}@dst.example",
                                 "Birthdate": born[k].isoformat()})["id"] for k in modified}
    with sandbox.org_conn() as conn:
        for k, when in modified.items():
            conn.execute("UPDATE org.contact SET lastmodifieddate = %s WHERE id = %s",
                         (when.astimezone(BERLIN), ids[k]))
    by_id = {v: k for k, v in ids.items()}

    def soql(field: str, ftype: str) -> set[str]:
        found = sf.query_all(f"SELECT Id FROM Contact WHERE Email LIKE '%@dst.example' AND "
                             f"{field} < {run.soql_cutoff(ftype)}")["records"]
        return {by_id[r["Id"]] for r in found}

    with sandbox.store_conn() as conn:
        conn.execute("SET TimeZone = 'Europe/Berlin'")
        conn.execute("CREATE TEMP TABLE mirror (name text, lastmodifieddate timestamp, birthdate date)")
        conn.cursor().executemany("INSERT INTO mirror VALUES (%s, %s, %s)",  # Connect's columns: naive UTC
                                  [(k, modified[k].replace(tzinfo=None), born[k]) for k in modified])

        def mirror(column: str, ftype: str) -> set[str]:
            query = sql.SQL("SELECT name FROM mirror WHERE {} < %s").format(sql.Identifier(column))
            return {r[0] for r in conn.execute(query, (run.cutoff_value(ftype),))}

        assert mirror("lastmodifieddate", "datetime") == soql("LastModifiedDate", "datetime") == {"before"}
        assert mirror("birthdate", "date") == soql("Birthdate", "date") == {"before"}


# ------------------------------------------------------------------------------ values at the edges, kept


def edge_records(domain: str, long_text: bool) -> dict[str, dict]:
    """Contacts whose values sit at Salesforce's edges: every text field full to its length (FirstName 40, LastName
    80, Email 80, MailingCountry 80, Description 32,000), unicode (astral emoji, a combining accent, right-to-left,
    CJK), newlines (\\n, \\r\\n) and tabs, leading and trailing spaces, quotes, commas and a backslash."""
    at = f"@{domain}"
    records = {
        "full": {"FirstName": "F" * 39 + "é", "LastName": ("Full ¼ " * 14)[:79] + "L",
                 "Email": "e" * (80 - len(at)) + at, "MailingCountry": "Ω" * 80, "Birthdate": "1970-01-01"},
        "unicode": {"FirstName": "Zoë 😀 𝌆", "LastName": "e\u0301 שלום עולם 漢字 🏳️\u200d🌈",
                    "Email": f"unicode{at}", "MailingCountry": "الإمارات العربية"},
        "whitespace": {"FirstName": "  two\tspaces ", "LastName": "line one\nline two\r\nline\tthree ",
                       "Email": f"whitespace{at}", "MailingCountry": " trailing  "},
        "quotes": {"FirstName": '"", ,\'', "LastName": 'O\'Brien, "Jr.", back\\slash', "Email": f"quotes{at}",
                   "MailingCountry": "a,b;c"},
    }
    if long_text:
        records["full"]["Description"] = ("line\r\n\tcafé, \"quoted\" 😀\n" * 1500)[:31999] + "."
        records["whitespace"]["Description"] = " \n\r\n\t "
    return records


@pytest.mark.parametrize(("policy_id", "domain", "long_text"), [
    ("bad_input_mirror", "edge-mirror.example", False), ("bad_input_bulk", "edge-bulk.example", True)])
def test_values_at_the_edges_are_retained_exactly_and_hashed_consistently(sandbox, airflow_db, sf, policy_id, domain,
                                                                          long_text):
    """One mask run per source (the Connect mirror, a Bulk 2.0 CSV): every kept field in the cache equals the org's
    value before the run, byte for byte; FirstName retained as a keyed hash and masked with the same key is that
    hash (cut to the field's 40 characters) in the org; LastName masked is the hash of its exact original text."""
    from tests.dags import bad_input_dags
    from tests.policy_support import HASH_KEY, cache_rows, org_rows, policy_world

    records = edge_records(domain, long_text)
    logical = dt.datetime.now(UTC).replace(microsecond=0)
    with policy_world(sandbox):
        ids = {name: sf.Contact.create(values)["id"] for name, values in records.items()}
        with sandbox.org_conn() as conn:
            conn.execute("UPDATE org.contact SET lastmodifieddate = %s, systemmodstamp = now() WHERE id = ANY(%s)",
                         (logical - dt.timedelta(days=40), list(ids.values())))
        fields = ["firstname", "lastname", "email", "mailingcountry", "birthdate", *(["description"] * long_text)]
        before = {r["id"]: r for r in org_rows(sandbox, f"SELECT id, {', '.join(fields)} FROM org.contact "
                                                         "WHERE id = ANY(%s)", (list(ids.values()),))}
        for name, values in records.items():  # the org holds the crafted values as written
            assert {k.lower(): str(v) for k, v in values.items()} == {
                k: str(before[ids[name]][k]) for k in map(str.lower, values)}
        run = getattr(bad_input_dags, f"retention__{policy_id}").test(
            logical_date=logical, run_conf={"dry_run": False, "cutoff": None})
        states = {ti.task_id: ti.state for ti in run.get_task_instances()}
        cache = cache_rows(sandbox, policy_id)
        assert run.state == "success", (states, {k: r.get("_action_error") for k, r in cache.items()})
        after = {r["id"]: r for r in org_rows(sandbox, "SELECT id, firstname, lastname FROM org.contact "
                                                       "WHERE id = ANY(%s)", (list(ids.values()),))}

    def keyed(text: str) -> str:
        return hmac.new(HASH_KEY.encode(), text.encode("utf-8"), hashlib.sha256).hexdigest()

    assert set(cache) == set(ids.values())
    for record_id, org in before.items():
        row = cache[record_id]
        for name in ("lastname", "email", "mailingcountry", "birthdate", *(["description"] * long_text)):
            assert row[name] == org[name], (name, row[name], org[name])
        assert row["firstname"] == keyed(org["firstname"])
        assert after[record_id]["firstname"] == keyed(org["firstname"])[:40]
        assert after[record_id]["lastname"] == keyed(org["lastname"])
