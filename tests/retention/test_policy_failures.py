"""Policy runs that meet the failures a real org produces (switched on through the sandbox's faults): per-record
failures and their re-run, a crash of delete_or_mask after its Bulk job was submitted (the retry collects that
job instead of resubmitting), a user without the "Bulk API Hard Delete" permission (fallback to delete), and an
API rate limit during a Bulk API extract (Airflow retries it).

Every run here uses its own logical date and the module removes its cache rows, ledger rows and staging tables
when it is done, so the other DAG-run modules sharing the session's sandbox see a store without them."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
import requests

from tests.policy_support import (
    ACTIVE_HOLDS,
    CLOSED_CASES,
    ELIGIBLE_ACCOUNTS,
    INACTIVE_CONTACTS,
    cache_rows,
    org_rows,
    policy_dags,
    policy_world,
    store_rows,
)

TODAY = dt.datetime.now(dt.UTC).replace(hour=3, minute=0, second=0, microsecond=0) - dt.timedelta(days=1)
# Logical dates distinct from the other modules' runs (each date is a separate retention decision).
CONTACTS_PARTIAL = TODAY - dt.timedelta(days=300)
CONTACTS_CRASH = TODAY - dt.timedelta(days=120)
CONTACTS_CRASH_BEFORE_UPLOAD = TODAY - dt.timedelta(days=30)
CASES_DENIED = TODAY + dt.timedelta(days=900)
ACCOUNTS_RATE_LIMITED = TODAY + dt.timedelta(days=3 * 365 + 100)
CONTACTS_JOB_FAILED = TODAY + dt.timedelta(days=200)
RUN_KEYS = [f"{policy}__{date:%Y%m%dT%H%M%S}" for policy, date in (
    ("inactive_contacts", CONTACTS_PARTIAL), ("inactive_contacts", CONTACTS_CRASH),
    ("closed_cases_hard_delete", CASES_DENIED), ("accounts_bulk_api", ACCOUNTS_RATE_LIMITED),
    ("inactive_contacts", CONTACTS_CRASH_BEFORE_UPLOAD), ("inactive_contacts", CONTACTS_JOB_FAILED))]

ELIGIBLE_CONTACTS = INACTIVE_CONTACTS


@pytest.fixture(scope="module")
def world(sandbox, airflow_db):
    """Seeded org data (added to whatever the session already holds), the API pool and the hash key; afterwards
    this module's cache rows and staging tables are removed (its ledger rows stay: the ledger is append-only)."""
    with policy_world(sandbox, contacts=400, seed=23):
        yield sandbox
    requests.delete(f"{sandbox.instance_url}/__sandbox/faults", verify=sandbox.ca, timeout=10)
    with sandbox.store_conn() as conn:
        for (table,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'cache'").fetchall():
            conn.execute(f'DELETE FROM cache."{table}" WHERE _retention_run = ANY(%s)', (RUN_KEYS,))
        for (table,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'retention_staging' "
                                     "AND split_part(tablename, '__', 1) || '__' || split_part(tablename, '__', 2) "
                                     "= ANY(%s)", (RUN_KEYS,)).fetchall():
            conn.execute(f'DROP TABLE retention_staging."{table}"')


def ledger(sandbox, run_key: str) -> list[dict]:
    return store_rows(sandbox, "SELECT * FROM retention.runs WHERE run_key = %s ORDER BY id", (run_key,))


def org_now(sandbox) -> dt.datetime:
    with sandbox.org_conn() as conn:
        return conn.execute("SELECT clock_timestamp()").fetchone()[0]


def ingest_jobs(sandbox, object_name: str, since: dt.datetime) -> list[dict]:
    """Bulk ingest jobs (schema ``bulk`` of the org database) created on the object since ``since``."""
    return org_rows(sandbox, """SELECT trim(id) AS id, api, operation, state, processed, failed FROM bulk.jobs
                                WHERE kind = 'ingest' AND object = %s AND created_at >= %s ORDER BY created_at""",
                    (object_name, since))


def job_record_ids(sandbox, job_id: str) -> list[str]:
    return [r["id"] for r in org_rows(sandbox, "SELECT trim(record_id) AS id FROM bulk.rows WHERE job_id = %s",
                                      (job_id,))]


def eligible(sandbox, query: str, cutoff: dt.datetime) -> list[str]:
    held = {r["referencerecordid"] for r in org_rows(sandbox, ACTIVE_HOLDS)}
    return [r["id"] for r in org_rows(sandbox, query, (cutoff,)) if r["id"] not in held]


def _run(dag, logical_date, **conf):
    # Every param explicitly: dag.test() keeps the last run's conf in the DAG object's params.
    run = dag.test(logical_date=logical_date, run_conf={"dry_run": False, "cutoff": None, **conf})
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    return run, {t: ti.state for t, ti in tis.items()}, tis


def test_record_failures_are_kept_and_reported_then_a_rerun_acts_on_exactly_them(world, capfd):
    sandbox = world
    run_key = RUN_KEYS[0]
    expected = eligible(sandbox, ELIGIBLE_CONTACTS, CONTACTS_PARTIAL - dt.timedelta(days=730))
    assert len(expected) > 20
    dag = policy_dags().retention__inactive_contacts

    capfd.readouterr()
    with sandbox.fault("record_failures", rate=0.3, seed=7):
        run, states, _ = _run(dag, CONTACTS_PARTIAL)
    out = "".join(capfd.readouterr())
    assert run.state == "failed", states
    assert states["confirm_and_report"] == "failed"
    assert {s for t, s in states.items() if t != "confirm_and_report"} == {"success"}

    rows = {k: v for k, v in cache_rows(sandbox, "contact").items() if v["_retention_run"] == run_key}
    assert set(rows) == set(expected)
    failed = sorted(k for k, v in rows.items() if v["_action_status"] == "failed")
    done = sorted(k for k, v in rows.items() if v["_action_status"] == "done")
    assert failed and done and len(failed) + len(done) == len(expected)
    assert 0.1 * len(expected) < len(failed) < 0.6 * len(expected)
    assert all(rows[k]["_action_error"].startswith("UNABLE_TO_LOCK_ROW:") for k in failed)
    assert all(rows[k]["_action_error"] is None for k in done)
    in_org = {r["id"]: r["isdeleted"] for r in org_rows(sandbox, "SELECT id, isdeleted FROM org.contact "
                                                                 "WHERE id = ANY(%s)", (expected,))}
    assert not any(in_org[k] for k in failed)  # still live in the org
    assert all(in_org[k] for k in done)  # in the recycle bin

    (first,) = ledger(sandbox, run_key)
    assert first["status"] == "partially_failed"
    assert (first["eligible"], first["retained"], first["acted"], first["failed"]) == (
        len(expected), len(expected), len(done), len(failed))
    assert f"{len(done)} deleted, 0 refused by Salesforce, {len(failed)} failed" in first["message"]
    assert f"{len(failed)} failed (both kept retained" in out  # the task's failure names the count

    # The same logical date again, the fault off: exactly the failed records are eligible and acted on.
    cache_before = cache_rows(sandbox, "contact")
    run, states, _ = _run(dag, CONTACTS_PARTIAL)
    assert run.state == "success", states
    after = cache_rows(sandbox, "contact")
    assert len(after) == len(cache_before)  # re-upserted, not duplicated
    assert all(after[k]["_action_status"] == "done" and after[k]["_action_error"] is None for k in expected)
    assert all(after[k] == cache_before[k] for k in done)  # rows already done are untouched
    runs = ledger(sandbox, run_key)
    assert len(runs) == 2
    second = runs[1]
    assert second["status"] == "succeeded"
    assert (second["eligible"], second["staged"], second["retained"], second["acted"], second["failed"]) == (
        len(failed), len(failed), len(failed), len(failed), 0)
    (job_id,) = second["bulk_job_ids"]
    assert sorted(job_record_ids(sandbox, job_id)) == failed
    assert all(after[k]["_bulk_job_id"] == job_id for k in failed)
    live = org_rows(sandbox, "SELECT count(*) AS n FROM org.contact WHERE id = ANY(%s) AND NOT isdeleted",
                    (expected,))
    assert live[0]["n"] == 0


class _FaultAfterSubmission(threading.Thread):
    """Switch a fault on as soon as an ingest job on ``object_name`` (created since ``since``) is closed, i.e.
    submitted. With the ``slow`` fault also on, every API call waits before the faults are read, so the first
    status poll that follows the close is reliably the first call the new fault hits."""

    def __init__(self, sandbox, object_name: str, since: dt.datetime, kind: str, *, when: str = "state <> 'Open'",
                 **options):
        super().__init__(daemon=True)
        self.when = when
        self.sandbox, self.object_name, self.since = sandbox, object_name, since
        self.kind, self.options = kind, options
        self.armed_for: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        with self.sandbox.org_conn() as conn:
            while not self.stop.is_set():
                row = conn.execute("SELECT trim(id) FROM bulk.jobs WHERE kind = 'ingest' AND object = %s AND "
                                   f"created_at >= %s AND {self.when} LIMIT 1",
                                   (self.object_name, self.since)).fetchone()
                if row:
                    r = requests.post(f"{self.sandbox.instance_url}/__sandbox/faults", verify=self.sandbox.ca,
                                      json={"kind": self.kind, **self.options}, timeout=10)
                    r.raise_for_status()
                    self.armed_for = row[0]
                    return
                time.sleep(0.005)


def test_a_crash_after_the_job_was_submitted_is_retried_by_collecting_that_job(world):
    sandbox = world
    run_key = RUN_KEYS[1]
    expected = eligible(sandbox, ELIGIBLE_CONTACTS, CONTACTS_CRASH - dt.timedelta(days=730))
    assert len(expected) > 3
    since = org_now(sandbox)
    watcher = _FaultAfterSubmission(sandbox, "Contact", since, "server_error", status=503, count=1)
    with sandbox.fault("slow", seconds=0.3):
        watcher.start()
        try:
            run, states, tis = _run(policy_dags().retention__inactive_contacts, CONTACTS_CRASH)
        finally:
            watcher.stop.set()
            watcher.join(10)
    assert run.state == "success", states
    assert watcher.armed_for is not None
    # The first attempt failed on its status poll (a 503) with the job submitted; the second one collected it.
    assert tis["delete_or_mask"].try_number == 2
    assert {t: ti.try_number for t, ti in tis.items() if t != "delete_or_mask"} == {
        t: 1 for t in tis if t != "delete_or_mask"}

    (job,) = ingest_jobs(sandbox, "Contact", since)  # one job: the records were never submitted twice
    assert job["id"] == watcher.armed_for and job["state"] == "JobComplete" and job["operation"] == "delete"
    assert sorted(job_record_ids(sandbox, job["id"])) == sorted(expected)
    rows = {k: v for k, v in cache_rows(sandbox, "contact").items() if v["_retention_run"] == run_key}
    assert set(rows) == set(expected)
    assert all(r["_action_status"] == "done" and r["_bulk_job_id"] == job["id"] for r in rows.values())
    live = org_rows(sandbox, "SELECT count(*) AS n FROM org.contact WHERE id = ANY(%s) AND NOT isdeleted",
                    (expected,))
    assert live[0]["n"] == 0
    (row,) = ledger(sandbox, run_key)
    assert row["status"] == "succeeded" and row["bulk_job_ids"] == [job["id"]]
    assert (row["eligible"], row["retained"], row["acted"], row["failed"]) == (len(expected),) * 3 + (0,)


def test_a_crash_between_creating_the_job_and_sending_its_records_resends_them_once(world):
    """The job id is recorded before the upload: a retry finds the job that never got its records (here its
    upload hit a 503 and it was aborted), releases the records and sends them in one new job."""
    sandbox = world
    run_key = RUN_KEYS[4]
    expected = eligible(sandbox, ELIGIBLE_CONTACTS, CONTACTS_CRASH_BEFORE_UPLOAD - dt.timedelta(days=730))
    assert len(expected) > 3
    since = org_now(sandbox)
    watcher = _FaultAfterSubmission(sandbox, "Contact", since, "server_error", when="state = 'Open'", status=503,
                                    count=1)
    with sandbox.fault("slow", seconds=0.3):
        watcher.start()
        try:
            run, states, tis = _run(policy_dags().retention__inactive_contacts, CONTACTS_CRASH_BEFORE_UPLOAD)
        finally:
            watcher.stop.set()
            watcher.join(10)
    assert run.state == "success", states
    assert watcher.armed_for is not None and tis["delete_or_mask"].try_number == 2
    first, second = ingest_jobs(sandbox, "Contact", since)
    assert first["id"] == watcher.armed_for and first["state"] == "Aborted"
    assert job_record_ids(sandbox, first["id"]) == []  # the aborted job never received a record
    assert second["state"] == "JobComplete" and sorted(job_record_ids(sandbox, second["id"])) == sorted(expected)
    rows = {k: v for k, v in cache_rows(sandbox, "contact").items() if v["_retention_run"] == run_key}
    assert set(rows) == set(expected)
    assert all(r["_action_status"] == "done" and r["_bulk_job_id"] == second["id"] for r in rows.values())
    (row,) = ledger(sandbox, run_key)
    assert row["status"] == "succeeded" and row["bulk_job_ids"] == [second["id"]]


def test_hard_delete_without_the_permission_falls_back_to_delete_with_a_warning(world, capfd):
    sandbox = world
    run_key = RUN_KEYS[2]
    cutoff = CASES_DENIED - dt.timedelta(days=1095)
    expected = eligible(sandbox, CLOSED_CASES, cutoff)
    assert len(expected) > 3
    since = org_now(sandbox)
    capfd.readouterr()
    with sandbox.fault("hard_delete_denied"):
        run, states, tis = _run(policy_dags().retention__closed_cases_hard_delete, CASES_DENIED)
    out = "".join(capfd.readouterr())
    assert run.state == "success", states
    assert "hard delete not permitted for this user; falling back to delete (records go to the recycle bin)" in out

    (job,) = ingest_jobs(sandbox, "Case", since)  # the refused hardDelete job was never created
    assert job["operation"] == "delete" and job["state"] == "JobComplete"
    after = {r["id"]: r["isdeleted"] for r in org_rows(sandbox, 'SELECT id, isdeleted FROM org."case" '
                                                                'WHERE id = ANY(%s)', (expected,))}
    assert set(after) == set(expected) and all(after.values())  # in the recycle bin, not purged
    rows = {k: v for k, v in cache_rows(sandbox, "closed_case").items() if v["_retention_run"] == run_key}
    assert set(rows) == set(expected) and {r["_action_status"] for r in rows.values()} == {"done"}

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        acted = XComModel.deserialize_value(session.scalars(XComModel.get_many(
            run_id=run.run_id, dag_ids=run.dag_id, task_ids="delete_or_mask", key="return_value")).one())
    assert acted["operation_used"] == "delete" and acted["hard_delete_fallback"] is True
    (row,) = ledger(sandbox, run_key)
    assert row["status"] == "succeeded" and row["action"] == "hard_delete" and row["acted"] == len(expected)
    assert "fell back to delete" in row["message"]


def test_a_rate_limit_during_a_bulk_api_extract_is_retried(world):
    sandbox = world
    run_key = RUN_KEYS[3]
    cutoff = ACCOUNTS_RATE_LIMITED - dt.timedelta(days=1825)
    expected = [r["id"] for r in org_rows(sandbox, ELIGIBLE_ACCOUNTS, {"cutoff": cutoff})]
    assert len(expected) >= 2
    since = org_now(sandbox)
    with sandbox.fault("rate_limit", count=1):
        run, states, tis = _run(policy_dags().retention__accounts_bulk_api, ACCOUNTS_RATE_LIMITED)
    assert run.state == "success", states
    assert tis["extract"].try_number == 2  # the 403 REQUEST_LIMIT_EXCEEDED failed the first attempt
    assert all(ti.try_number == 1 for t, ti in tis.items() if t != "extract")

    rows = {k: v for k, v in cache_rows(sandbox, "account").items() if v["_retention_run"] == run_key}
    assert set(rows) == set(expected) and {r["_action_status"] for r in rows.values()} == {"done"}
    (job,) = ingest_jobs(sandbox, "Account", since)
    assert sorted(job_record_ids(sandbox, job["id"])) == sorted(expected)
    live = org_rows(sandbox, "SELECT count(*) AS n FROM org.account WHERE id = ANY(%s) AND NOT isdeleted",
                    (expected,))
    assert live[0]["n"] == 0
    (row,) = ledger(sandbox, run_key)
    assert row["status"] == "succeeded" and (row["eligible"], row["staged"], row["acted"]) == (len(expected),) * 3


def test_the_hard_delete_denied_fault_refuses_hard_delete_jobs_as_salesforce_does(sandbox):
    """Bulk 2.0 answers 400 [{errorCode FEATURENOTENABLED}], Bulk 1.0 {exceptionCode FeatureNotEnabled}; other
    operations still work, and ``count`` limits how many hardDelete jobs are refused."""
    from airflow.providers.salesforce.hooks.salesforce import SalesforceHook

    from sandbox.config import API_VERSION

    sf = SalesforceHook(salesforce_conn_id="salesforce_default").get_conn()
    v2 = f"{sf.base_url}jobs/ingest"
    v1 = f"{sandbox.instance_url}/services/async/{API_VERSION}/job"
    rest = {"Authorization": f"Bearer {sf.session_id}", "Content-Type": "application/json"}
    async_headers = {"X-SFDC-Session": sf.session_id, "Content-Type": "application/json"}

    def create(operation: str, *, bulk1: bool = False) -> requests.Response:
        if bulk1:
            return requests.post(v1, headers=async_headers, verify=sandbox.ca, timeout=10,
                                 json={"operation": operation, "object": "Case", "contentType": "JSON"})
        return requests.post(v2, headers=rest, verify=sandbox.ca, timeout=10,
                             json={"operation": operation, "object": "Case", "contentType": "CSV"})

    with sandbox.fault("hard_delete_denied"):
        r = create("hardDelete")
        assert r.status_code == 400
        (error,) = r.json()
        assert error["errorCode"] == "FEATURENOTENABLED"
        assert "hardDelete operation requires special user profile permission" in error["message"]
        r = create("hardDelete", bulk1=True)
        assert r.status_code == 400 and r.json()["exceptionCode"] == "FeatureNotEnabled"
        assert create("delete").status_code == 200
        assert create("delete", bulk1=True).status_code == 201
    with sandbox.fault("hard_delete_denied", count=1):
        assert create("hardDelete").status_code == 400
        assert create("hardDelete").status_code == 200  # the one refusal is used up
    assert create("hardDelete", bulk1=True).status_code == 201


def test_a_job_that_fails_part_way_keeps_what_it_did_and_the_rest_goes_out_once(world):
    """"Changes made by a job that fails or is aborted aren't rolled back" (Bulk API 2.0 Developer Guide): the
    retry records what the failed job did from its results and sends only the records it did not reach, in one
    new job; no record is sent twice, none is lost."""
    sandbox = world
    run_key = RUN_KEYS[5]
    expected = eligible(sandbox, ELIGIBLE_CONTACTS, CONTACTS_JOB_FAILED - dt.timedelta(days=730))
    assert len(expected) > 10
    since = org_now(sandbox)
    with sandbox.fault("job_failure", count=1):
        run, states, tis = _run(policy_dags().retention__inactive_contacts, CONTACTS_JOB_FAILED)
    assert run.state == "success", states
    assert tis["delete_or_mask"].try_number == 2  # the failed job failed the first attempt
    failed, second = ingest_jobs(sandbox, "Contact", since)
    assert failed["state"] == "Failed" and second["state"] == "JobComplete"
    first_half, rest = job_record_ids(sandbox, failed["id"]), job_record_ids(sandbox, second["id"])
    assert first_half and rest and not set(first_half) & set(rest)
    assert sorted(first_half + rest) == sorted(expected)
    rows = {k: v for k, v in cache_rows(sandbox, "contact").items() if v["_retention_run"] == run_key}
    assert set(rows) == set(expected) and {r["_action_status"] for r in rows.values()} == {"done"}
    assert {rows[i]["_bulk_job_id"] for i in first_half} == {failed["id"]}
    assert {rows[i]["_bulk_job_id"] for i in rest} == {second["id"]}
    live = org_rows(sandbox, "SELECT count(*) AS n FROM org.contact WHERE id = ANY(%s) AND NOT isdeleted",
                    (expected,))
    assert live[0]["n"] == 0
    (row,) = ledger(sandbox, run_key)
    assert row["status"] == "succeeded" and row["bulk_job_ids"] == [failed["id"], second["id"]]
    assert row["acted"] == len(expected)

