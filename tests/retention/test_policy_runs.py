"""Each example policy, run as a real DAG (``dag.test()``) against the sandbox: the cache holds exactly the
eligible, non-held records with the retained fields transformed as the policy says (compared value by value
with what the org had), the org no longer has them (or has them masked), held records are untouched, and the
ledger row is right."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from retention import masking, transforms
from tests.policy_support import (
    ACTIVE_HOLDS,
    ELIGIBLE_ACCOUNTS,
    HASH_KEY,
    INACTIVE_CONTACTS,
    STALE_LEADS,
    UNREFUSED_ACCOUNTS,
    cache_rows,
    lose_staged_rows,
    org_rows,
    place_hold,
    policy_dags,
    policy_world,
    store_rows,
)

LOGICAL_DATE = dt.datetime.now(dt.UTC).replace(hour=3, minute=0, second=0, microsecond=0) - dt.timedelta(days=1)


@pytest.fixture(scope="module")
def world(sandbox, airflow_db):
    with policy_world(sandbox, contacts=400, seed=11):
        yield sandbox


def ledger(sandbox, policy_id: str, logical_date: dt.datetime | None = None) -> list[dict]:
    """The policy's ledger rows, or those of one logical date (other modules run the same policies on other
    dates; the ledger is append-only, so nobody removes their rows)."""
    if logical_date is None:
        return store_rows(sandbox, "SELECT * FROM retention.runs WHERE policy_id = %s ORDER BY id", (policy_id,))
    return store_rows(sandbox, "SELECT * FROM retention.runs WHERE run_key = %s ORDER BY id",
                      (f"{policy_id}__{logical_date:%Y%m%dT%H%M%S}",))


def hold(sf, record_id: str) -> None:
    place_hold(sf, record_id, f"Test hold {record_id}")


@pytest.fixture(scope="module")
def sf(world):
    from airflow.providers.salesforce.hooks.salesforce import SalesforceHook

    return SalesforceHook(salesforce_conn_id="salesforce_default").get_conn()


def _run(dag, logical_date=LOGICAL_DATE, **conf):
    # Every param explicitly: dag.test() keeps the last run's conf in the DAG object's params.
    run = dag.test(logical_date=logical_date, run_conf={"dry_run": False, "cutoff": None, **conf})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    return run, states


def test_inactive_contacts_are_retained_then_deleted(world, sf):
    sandbox = world
    cutoff = LOGICAL_DATE - dt.timedelta(days=730)
    matching = org_rows(sandbox, INACTIVE_CONTACTS, (cutoff,))
    assert len(matching) > 20
    held_by_test = matching[0]["id"]
    hold(sf, held_by_test)
    held = {r["referencerecordid"] for r in org_rows(sandbox, ACTIVE_HOLDS)}
    expected = {r["id"]: r for r in matching if r["id"] not in held}
    held_matching = {r["id"] for r in matching if r["id"] in held}
    assert held_by_test in held_matching

    run, states = _run(policy_dags().retention__inactive_contacts)
    assert run.state == "success", states
    assert set(states.values()) == {"success"}

    cache = {k: v for k, v in cache_rows(sandbox, "contact").items() if v["_retention_policy"] == "inactive_contacts"}
    assert set(cache) == set(expected)
    key = HASH_KEY.encode()
    for sfid, org in expected.items():
        row = cache[sfid]
        assert row["lastname"] == org["lastname"]
        assert row["email"] == transforms.apply("email_domain", None, org["email"], key=key)
        assert row["birthdate"] == (org["birthdate"].year if org["birthdate"] else None)
        assert row["mailingcountry"] == org["mailingcountry"]
        assert row["_action_status"] == "done" and row["_action"] == "delete"
    assert set(cache[next(iter(cache))]) == {"sfid", "lastname", "email", "birthdate", "mailingcountry",
                                             "_retention_policy", "_retention_run", "_retained_at", "_action",
                                             "_action_status", "_action_error", "_action_at", "_bulk_job_id"}

    after = {r["id"]: r for r in org_rows(sandbox, "SELECT id, isdeleted FROM org.contact WHERE id = ANY(%s)",
                                          (list(expected) + list(held_matching),))}
    assert all(after[i]["isdeleted"] for i in expected)  # in the recycle bin
    assert not any(after[i]["isdeleted"] for i in held_matching)  # held records untouched
    assert held_by_test not in cache

    (row,) = ledger(sandbox, "inactive_contacts", LOGICAL_DATE)
    assert row["status"] == "succeeded" and row["action"] == "delete" and row["object"] == "Contact"
    assert (row["eligible"], row["staged"], row["retained"], row["acted"], row["failed"]) == (
        len(expected), len(expected), len(expected), len(expected), 0)
    assert row["held"] == len(held_matching) and held_by_test in row["holds_applied"]
    assert row["cutoff"] == cutoff and len(row["bulk_job_ids"]) == 1
    assert row["policy_hash"] and row["salesforce_count"] == len(expected)

    # Re-running the same logical date changes nothing and duplicates nothing.
    before = cache_rows(sandbox, "contact")
    run, states = _run(policy_dags().retention__inactive_contacts)
    assert run.state == "success", states
    assert cache_rows(sandbox, "contact") == before
    rerun = ledger(sandbox, "inactive_contacts", LOGICAL_DATE)[-1]
    assert (rerun["eligible"], rerun["acted"], rerun["failed"]) == (0, 0, 0)


def test_stale_leads_are_retained_then_masked(world, sf):
    sandbox = world
    cutoff = LOGICAL_DATE - dt.timedelta(days=365)
    matching = org_rows(sandbox, STALE_LEADS, (cutoff,))
    held = {r["referencerecordid"] for r in org_rows(sandbox, ACTIVE_HOLDS)}
    expected = {r["id"]: r for r in matching if r["id"] not in held}
    assert len(expected) > 20

    run, states = _run(policy_dags().retention__stale_leads_mask)
    assert run.state == "success", states

    cache = {k: v for k, v in cache_rows(sandbox, "lead").items() if v["_retention_policy"] == "stale_leads_mask"}
    assert set(cache) == set(expected)
    key = HASH_KEY.encode()
    now = {r["id"]: r for r in org_rows(sandbox, "SELECT * FROM org.lead WHERE id = ANY(%s)", (list(expected),))}
    for sfid, before in expected.items():
        row, after = cache[sfid], now[sfid]
        # The retained copy holds the originals (transformed), never the masked values.
        assert row["company"] == before["company"] and row["country"] == before["country"]
        assert row["email"] == transforms.apply("email_domain", None, before["email"], key=key)
        assert row["_action_status"] == "done"
        # The org holds the masked values.
        assert after["isdeleted"] is False
        if before["firstname"]:
            assert len(after["firstname"]) == 5 and after["firstname"] != before["firstname"]
        assert after["lastname"] != before["lastname"] and after["lastname"] in masking.LAST_NAMES
        if before["email"]:
            assert after["email"] != before["email"] and masking.is_valid_email(after["email"])
        assert after["phone"] is None
        assert after["company"] == before["company"]  # not masked
    (row,) = ledger(sandbox, "stale_leads_mask", LOGICAL_DATE)
    assert row["status"] == "succeeded" and row["acted"] == len(expected)


def test_closed_cases_are_retained_then_hard_deleted_except_those_of_held_contacts(world, sf):
    """A PrivacyHold cannot name a Case (ReferenceRecordId "Refers To Account, Contact, Individual, Lead, User",
    Object Reference: PrivacyHold): the example keeps the cases of a held contact out with an anti-join."""
    sandbox = world
    # Seeded cases span three years: a logical date two years ahead makes the older half eligible.
    logical_date = LOGICAL_DATE + dt.timedelta(days=730)
    cutoff = logical_date - dt.timedelta(days=1095)
    matching = org_rows(sandbox, """SELECT * FROM org."case" WHERE NOT isdeleted AND isclosed AND closeddate < %s
                                    ORDER BY id""", (cutoff,))
    assert len(matching) > 5
    hold(sf, next(r["contactid"] for r in reversed(matching) if r["contactid"]))
    held = {r["referencerecordid"] for r in org_rows(
        sandbox, "SELECT referencerecordid FROM org.privacyhold WHERE NOT isdeleted AND isactive")}
    expected = {r["id"]: r for r in matching if r["contactid"] not in held}
    held_matching = {r["id"] for r in matching if r["contactid"] in held}
    assert held_matching

    run, states = _run(policy_dags().retention__closed_cases_hard_delete, logical_date)
    assert run.state == "success", states

    cache = cache_rows(sandbox, "closed_case")
    assert set(cache) == set(expected)
    for sfid, org in expected.items():
        row = cache[sfid]
        assert row["subject"] == (org["subject"][:40] if org["subject"] is not None else None)
        assert row["suppliedemail"] == transforms.apply("email_domain", None, org["suppliedemail"], key=b"k")
        assert row["status"] == org["status"]
        assert row["closeddate"] == org["closeddate"].astimezone(dt.UTC).date().replace(day=1)
    left = {r["id"] for r in org_rows(sandbox, 'SELECT id FROM org."case" WHERE id = ANY(%s)',
                                      (list(expected) + list(held_matching),))}
    assert left == held_matching  # hard-deleted records are gone, not in the recycle bin; held ones stay
    (row,) = ledger(sandbox, "closed_cases_hard_delete", logical_date)
    assert row["action"] == "hard_delete" and row["acted"] == len(expected) and row["held"] == 0


def test_accounts_are_read_through_the_bulk_api_then_deleted_with_their_children(world, sf):
    """Deleting an account takes its contacts and opportunities with it ("Guidelines for Deleting Accounts",
    Salesforce Help): the example retains them first, each in its own table, and holds an account whose contact
    is held. Accounts with cases or Closed Won opportunities, which Salesforce refuses to delete, are left out."""
    sandbox = world
    logical_date = LOGICAL_DATE + dt.timedelta(days=4 * 365)  # seeded accounts are mostly recent
    cutoff = logical_date - dt.timedelta(days=1825)
    candidates = org_rows(sandbox, UNREFUSED_ACCOUNTS + " ORDER BY id", {"cutoff": cutoff})
    with_contacts = [a["id"] for a in candidates if org_rows(
        sandbox, "SELECT 1 FROM org.contact WHERE accountid = %s AND NOT isdeleted", (a["id"],))]
    assert len(with_contacts) >= 2, "the seed should give some deletable accounts with contacts"
    held_child = org_rows(sandbox, "SELECT id FROM org.contact WHERE accountid = %s AND NOT isdeleted LIMIT 1",
                          (with_contacts[0],))[0]["id"]
    hold(sf, held_child)
    expected = {r["id"]: r for r in org_rows(sandbox, ELIGIBLE_ACCOUNTS, {"cutoff": cutoff})}
    assert with_contacts[0] not in expected and with_contacts[1] in expected
    contacts = {r["id"]: r for r in org_rows(sandbox, "SELECT * FROM org.contact WHERE accountid = ANY(%s) "
                                                      "AND NOT isdeleted", (list(expected),))}
    opportunities = {r["id"]: r for r in org_rows(sandbox, "SELECT * FROM org.opportunity WHERE accountid = ANY(%s) "
                                                           "AND NOT isdeleted", (list(expected),))}
    assert contacts and opportunities

    dag = policy_dags().retention__accounts_bulk_api
    assert "wait_for_connect_sync" not in dag.task_ids  # reads Salesforce, not the mirror
    run, states = _run(dag, logical_date)
    assert run.state == "success", states

    cache = cache_rows(sandbox, "account")
    assert set(cache) == set(expected)
    for sfid, org in expected.items():
        row = cache[sfid]
        assert (row["name"], row["billingcountry"], row["industry"]) == (org["name"], org["billingcountry"],
                                                                         org["industry"])
        assert row["annualrevenue"] == (float(org["annualrevenue"]) if org["annualrevenue"] is not None else None)
    gone = org_rows(sandbox, "SELECT count(*) AS live FROM org.account WHERE id = ANY(%s) AND NOT isdeleted",
                    (list(expected),))
    assert gone[0]["live"] == 0
    # The children were retained before their parents went, and went with them (into the recycle bin).
    retained_contacts = cache_rows(sandbox, "account_contact")
    assert set(retained_contacts) == set(contacts)
    for sfid, org in contacts.items():
        row = retained_contacts[sfid]
        assert row["_parent_sfid"] == org["accountid"] and row["lastname"] == org["lastname"]
        assert row["email"] == transforms.apply("email_domain", None, org["email"], key=b"k")
        assert row["_action_status"] == "done" and row["_retention_run"].startswith("accounts_bulk_api__")
    retained_opportunities = cache_rows(sandbox, "account_opportunity")
    assert set(retained_opportunities) == set(opportunities)
    assert all(retained_opportunities[i]["closedate"] == o["closedate"].year for i, o in opportunities.items())
    children = list(contacts) + list(opportunities)
    assert org_rows(sandbox, "SELECT count(*) AS live FROM org.contact WHERE id = ANY(%(c)s) AND NOT isdeleted "
                    "UNION ALL SELECT count(*) FROM org.opportunity WHERE id = ANY(%(c)s) AND NOT isdeleted",
                    {"c": children}) == [{"live": 0}, {"live": 0}]
    # The account whose contact is held stays, with all its contacts.
    assert org_rows(sandbox, "SELECT isdeleted FROM org.account WHERE id = %s", (with_contacts[0],)) == [
        {"isdeleted": False}]
    (row,) = ledger(sandbox, "accounts_bulk_api", logical_date)
    assert row["source"] == "salesforce_api" and row["eligible"] == len(expected) == row["acted"]
    assert with_contacts[0] in row["holds_applied"] and row["blocked"] == 0
    assert row["cascade"]["Contact"]["done"] == len(contacts)
    assert row["cascade"]["Opportunity"]["done"] == len(opportunities)


def test_dry_run_changes_nothing_and_prints_a_preview(world, capsys):
    sandbox = world
    dag = policy_dags().retention__inactive_contacts
    later = LOGICAL_DATE + dt.timedelta(days=400)  # a date with records still eligible
    before_cache = cache_rows(sandbox, "contact")
    before_org = org_rows(sandbox, "SELECT id, isdeleted, systemmodstamp FROM org.contact ORDER BY id")
    before_ledger = ledger(sandbox, "inactive_contacts")
    before_tables = _staging_tables(sandbox)  # runs of other tests that failed on purpose may have left theirs
    capsys.readouterr()

    run, states = _run(dag, later, dry_run=True)
    assert run.state == "success", states
    assert states["extract"] == "success"
    assert {states[t] for t in ("subset", "load_to_cache", "validate_row_counts", "delete_or_mask",
                                "confirm_and_report")} == {"skipped"}
    out = capsys.readouterr().out
    assert "DRY RUN preview (nothing was changed)" in out and "would be retained then delete" in out

    assert cache_rows(sandbox, "contact") == before_cache
    assert org_rows(sandbox, "SELECT id, isdeleted, systemmodstamp FROM org.contact ORDER BY id") == before_org
    assert ledger(sandbox, "inactive_contacts") == before_ledger
    assert _staging_tables(sandbox) == before_tables  # the dry run left no working table behind


def _staging_tables(sandbox) -> set[str]:
    with sandbox.store_conn() as conn:
        return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'retention_staging'")}


def test_a_validation_failure_stops_before_anything_is_deleted(world, monkeypatch, capfd):
    """Rows removed from staging after extract: the counts disagree, the run fails with them in its message,
    and the org is unchanged."""
    sandbox = world
    later = LOGICAL_DATE + dt.timedelta(days=800)
    cutoff = later - dt.timedelta(days=730)
    live_before = org_rows(sandbox, INACTIVE_CONTACTS, (cutoff,))
    assert len(live_before) > 5
    lose_staged_rows(monkeypatch)
    capfd.readouterr()
    run, states = _run(policy_dags().retention__inactive_contacts, later)
    assert run.state == "failed", states
    assert states["validate_row_counts"] == "failed"
    assert states["delete_or_mask"] == states["confirm_and_report"] == "upstream_failed"
    captured = capfd.readouterr()
    out = captured.out + captured.err
    eligible = len(live_before) - len({r["referencerecordid"] for r in org_rows(sandbox, ACTIVE_HOLDS)} &
                                      {r["id"] for r in live_before})
    assert f"eligible {eligible}, staged {eligible - 2} (expected {eligible})" in out
    assert "Nothing was deleted or masked." in out
    docs = out.split("Data Docs: ", 1)[1].split()[0].rstrip(".\"'")
    assert docs.endswith("index.html") and os.path.exists(docs)  # the validation report, linked from the log
    assert org_rows(sandbox, INACTIVE_CONTACTS, (cutoff,)) == live_before  # nothing deleted


def test_analysts_read_the_cache_and_nothing_else(world):
    """Through the analyst's own credential (a Heroku Postgres credential an admin made): the pipeline's DDL grants
    it the cache schema only."""
    import psycopg

    with psycopg.connect(world.env["RETENTION_ANALYST_URL"], autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM cache.contact").fetchone()[0] > 0
        for table in ("retention.runs", "salesforce.contact"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT 1 FROM {table} LIMIT 1")


def test_the_pipeline_never_writes_to_the_connect_schema(world, sf):
    """Invariant 4: a plain write into the mirror would be pushed to Salesforce by Heroku Connect; our runs
    leave nothing in its trigger log."""
    with world.store_conn() as conn:
        before = conn.execute("SELECT coalesce(max(id), 0) FROM salesforce._trigger_log").fetchone()[0]
    later = LOGICAL_DATE + dt.timedelta(days=200)
    run, states = _run(policy_dags().retention__stale_leads_mask, later)
    assert run.state == "success", states
    with world.store_conn() as conn:
        logged = conn.execute("SELECT table_name, action FROM salesforce._trigger_log WHERE id > %s",
                              (before,)).fetchall()
    assert logged == []


def test_secrets_stay_out_of_logs_xcom_and_the_ledger(world, capfd):
    """Invariant 5: the Salesforce credentials (the connected app's private key the connection signs its JWT
    with, and the user's password), the Heroku token and the hash key appear nowhere we write."""
    import psycopg

    private_key = Path(world.env["SALESFORCE_PRIVATE_KEY_FILE"]).read_text().splitlines()[1]  # key material
    secrets = [HASH_KEY, private_key, world.env["SALESFORCE_PASSWORD"], world.env["HEROKU_CONNECT_TOKEN"]]
    capfd.readouterr()
    later = LOGICAL_DATE + dt.timedelta(days=500)
    run, states = _run(policy_dags().retention__inactive_contacts, later)
    assert run.state == "success", states
    captured = capfd.readouterr()
    logs = captured.out + captured.err
    assert "retention__inactive_contacts" in logs  # the run's logs were captured
    with psycopg.connect(world.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].replace("+psycopg2", "")) as conn:
        xcom = " ".join(str(r[0]) for r in conn.execute(
            "SELECT value FROM xcom WHERE dag_id = 'retention__inactive_contacts'").fetchall())
    assert xcom
    with world.store_conn() as conn:
        ledger_text = " ".join(str(r) for r in conn.execute("SELECT * FROM retention.runs").fetchall())
    for secret in secrets:
        assert secret not in logs and secret not in xcom and secret not in ledger_text


def test_the_ledger_chain_holds_after_all_these_runs(world):
    from retention import evidence

    with world.store_conn() as conn:
        result = evidence.verify(conn)
    own = store_rows(world, "SELECT count(*) AS n FROM retention.runs WHERE policy_id IN ('inactive_contacts', "
                            "'stale_leads_mask', 'closed_cases_hard_delete', 'accounts_bulk_api')")[0]["n"]
    assert result.ok and result.rows >= own >= 7, result.describe()


def test_the_cutoff_is_an_aware_utc_time_whatever_the_logical_dates_zone():
    import pendulum

    from retention.policy import load_policy
    from retention.steps.run import make_run
    from tests.conftest import REPO

    policy = load_policy(REPO / "include" / "policies" / "inactive_contacts.yaml")
    run = make_run(policy, logical_date=pendulum.datetime(2026, 6, 1, 3, tz="Europe/Paris"),
                   run_after=pendulum.now("UTC"), dag_run_id="manual__x", params={})
    assert run.cutoff == dt.datetime(2024, 6, 1, 1, tzinfo=dt.UTC) and run.cutoff.utcoffset() == dt.timedelta(0)
    assert run.run_key == "inactive_contacts__20260601T010000"
