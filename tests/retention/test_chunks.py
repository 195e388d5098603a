"""The chunked path (``guards.chunk_records``: delete_or_mask and verify_in_salesforce mapped over several chunks)
against the single-chunk path, run by real DAGs on the sandbox: the same cache contents, the same outcome in the
org and the same ledger counts, with one Bulk ingest job and one read-back per chunk."""

from __future__ import annotations

import datetime as dt
import math

import pytest
import requests

from tests.dags.chunk_dags import RECORDS, SMALL_CHUNK

UTC = dt.UTC
# What differs between two runs by design: ids, run keys, times and job ids.
RUN_SPECIFIC = {"id", "sfid", "email", "_retention_policy", "_retention_run", "_retained_at", "_action_at",
                "_bulk_job_id"}


def _api_usage(sandbox) -> int:
    """The org's count of API calls (the sandbox's health endpoint, which itself counts as none)."""
    return requests.get(f"{sandbox.instance_url}/__sandbox/health", verify=sandbox.ca, timeout=10).json()["api_usage"]


def _drop_working_tables(sandbox, policy_id: str) -> None:
    """A failed run keeps its working tables for inspection; the tests whose runs fail on purpose drop them, so
    that other modules find the staging schema as they left it."""
    with sandbox.store_conn() as conn:
        for (name,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'retention_staging' AND "
                                    "tablename LIKE %s", (f"{policy_id}\\_\\_%",)).fetchall():
            conn.execute(f'DROP TABLE retention_staging."{name}"')


def _run(sandbox, sf, policy_id: str):
    """Create the policy's own contacts (identical values in every set but the e-mail domain), back-date them and run
    the policy's DAG; returns (run, {index: cache row}, {index: org row}, ledger row, API calls spent)."""
    from tests.dags import chunk_dags
    from tests.policy_support import cache_rows, org_rows, store_rows

    logical = dt.datetime.now(UTC).replace(microsecond=0)
    ids = {}
    for n in range(RECORDS):
        ids[n] = sf.Contact.create({"FirstName": f"Chunk{n:02d}", "LastName": f"Same {n % 4}",
                                    "Email": f"c{n:02d}@{policy_id}.example", "Phone": f"+1 555 01{n:02d}"})["id"]
    with sandbox.org_conn() as conn:
        conn.execute("UPDATE org.contact SET lastmodifieddate = %s, systemmodstamp = now() WHERE id = ANY(%s)",
                     (logical - dt.timedelta(days=40), list(ids.values())))
    before = _api_usage(sandbox)
    run = getattr(chunk_dags, f"retention__{policy_id}").test(logical_date=logical,
                                                              run_conf={"dry_run": False, "cutoff": None})
    spent = _api_usage(sandbox) - before
    index = {record_id: n for n, record_id in ids.items()}
    cache = {index[k]: v for k, v in cache_rows(sandbox, policy_id).items()}
    org = {index[r["id"]]: r for r in org_rows(
        sandbox, "SELECT id, isdeleted, firstname, lastname, phone FROM org.contact WHERE id = ANY(%s)",
        (list(ids.values()),))}
    ledger = store_rows(sandbox, "SELECT * FROM retention.runs WHERE policy_id = %s", (policy_id,))
    assert len(ledger) <= 1, ledger
    return run, cache, org, next(iter(ledger), None), spent


@pytest.mark.parametrize("action", ["delete", "mask"])
def test_a_chunked_run_gives_the_same_cache_org_and_ledger_as_one_chunk(sandbox, airflow_db, sf, action):
    from retention import budget
    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook
    from tests.dags import chunk_dags
    from tests.policy_support import policy_world

    with policy_world(sandbox):
        one = _run(sandbox, sf, f"chunks_{action}_one")
        many = _run(sandbox, sf, f"chunks_{action}_many")
    for run, *_ in (one, many):
        assert run.state == "success", {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances()}
    (_, cache_one, org_one, ledger_one, spent_one), (run, cache_many, org_many, ledger_many, spent_many) = one, many

    # The same records retained, with the same values and outcomes.
    assert set(cache_one) == set(cache_many) == set(range(RECORDS))
    strip = lambda rows: {n: {k: v for k, v in r.items() if k not in RUN_SPECIFIC} for n, r in rows.items()}  # noqa: E731
    assert strip(cache_one) == strip(cache_many)
    assert {r["_action_status"] for r in cache_many.values()} == {"done"}
    assert {r["email"].split("@")[0] for r in cache_many.values()} == {f"c{n:02d}" for n in range(RECORDS)}
    # The same outcome in the org: every record deleted, or masked to the same values.
    if action == "delete":
        assert all(r["isdeleted"] for r in (*org_one.values(), *org_many.values()))
    else:
        assert strip(org_one) == strip(org_many) and not any(r["isdeleted"] for r in org_many.values())
        assert all(r["firstname"] != f"Chunk{n:02d}" and r["phone"] is None for n, r in org_many.items())
    # The same ledger, bar one Bulk job per chunk instead of one in all.
    counts = ("eligible", "held", "staged", "retained", "acted", "failed", "refused", "blocked", "salesforce_count",
              "status", "action", "object")
    assert {k: ledger_one[k] for k in counts} == {k: ledger_many[k] for k in counts}
    assert ledger_many["acted"] == RECORDS and ledger_many["status"] == "succeeded"
    chunks = math.ceil(RECORDS / SMALL_CHUNK)
    assert len(ledger_one["bulk_job_ids"]) == 1 and len(set(ledger_many["bulk_job_ids"])) == chunks
    # One task instance per chunk for the act and its read-back, each of them successful.
    mapped = {}
    for ti in run.get_task_instances():
        if ti.map_index >= 0:
            mapped.setdefault(ti.task_id, {})[ti.map_index] = ti.state
    assert mapped == {task: dict.fromkeys(range(chunks), "success")
                      for task in ("delete_or_mask", "verify_in_salesforce")}
    # Each run spends no more API calls than the budget check estimated for it.
    for policy_id, spent in ((f"chunks_{action}_one", spent_one), (f"chunks_{action}_many", spent_many)):
        policy = next(p for p in chunk_dags.POLICIES if p.id == policy_id)
        hook = SalesforceBulk2Hook()  # the polling the runs' hook had ([retention] bulk_poll_interval)
        estimate = budget.for_run(policy, RECORDS, poll_interval=hook.poll_interval,
                                  max_poll_interval=hook.max_poll_interval)
        assert spent <= estimate.api_requests, (policy_id, spent, estimate)


def test_a_chunk_over_the_upload_limit_goes_out_in_several_jobs_each_within_it(sandbox, airflow_db, sf, monkeypatch):
    """Salesforce takes at most 100 MB a Bulk 2.0 upload, one upload a job. With the limit at 200 bytes (the org's and
    the hook's alike) one chunk of 30 Ids (19 bytes a line) goes out as three jobs, and every record is deleted."""
    from retention.hooks import salesforce_bulk
    from tests.policy_support import policy_world

    monkeypatch.setattr(salesforce_bulk, "INGEST_UPLOAD_MAX_BYTES", 200)
    with policy_world(sandbox), sandbox.org_settings(ingest_upload_max_bytes=200):
        run, cache, org, ledger, _ = _run(sandbox, sf, "chunks_delete_uploads")
    assert run.state == "success", {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances()}
    assert len(set(ledger["bulk_job_ids"])) == 3 and ledger["acted"] == RECORDS
    assert {r["_bulk_job_id"] for r in cache.values()} == set(ledger["bulk_job_ids"])
    assert all(r["isdeleted"] for r in org.values()) and len(org) == RECORDS
    with sandbox.org_conn() as conn:  # the org's own record of the uploads: each within the limit
        sizes = [r[0] for r in conn.execute("SELECT octet_length(data) FROM bulk.uploads WHERE rtrim(job_id) = "
                                            "ANY(%s)", (ledger["bulk_job_ids"],)).fetchall()]
    assert len(sizes) == 3 and all(size <= 200 for size in sizes), sizes


def test_an_upload_is_never_sent_if_its_records_changed_after_it_was_read(sandbox, airflow_db, sf, monkeypatch,
                                                                         request):
    """The act marks an upload's records ``submitting`` by their sfid range, committed before the upload is sent, and
    counts them: the range must hold exactly the upload's records. Here another process marks one of them ``held``
    between the read and the mark (through the store, as a second worker would): nothing is marked, the job is
    aborted with nothing uploaded, the step fails, and no record is deleted."""
    from retention.steps import act

    real_uploads, changed = act._uploads, []
    request.addfinalizer(lambda: _drop_working_tables(sandbox, "chunks_delete_changed"))

    def uploads_then_one_record_changes(header, lines, limit):
        for upload in real_uploads(header, lines, limit):
            with sandbox.store_conn() as conn:
                changed.append(conn.execute("UPDATE cache.chunks_delete_changed SET _action_status = 'held' "
                                            "WHERE sfid = %s RETURNING sfid", (upload.last,)).fetchone()[0])
            yield upload

    monkeypatch.setattr(act, "_uploads", uploads_then_one_record_changes)
    with sandbox.org_conn() as conn:
        (started,) = conn.execute("SELECT clock_timestamp()").fetchone()
    run, cache, org, ledger, _ = _run(sandbox, sf, "chunks_delete_changed")
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "failed" and states["delete_or_mask"] == "failed", states
    assert changed and not any(r["isdeleted"] for r in org.values()) and len(org) == RECORDS
    assert not any(r["_bulk_job_id"] for r in cache.values())
    assert {r["_action_status"] for r in cache.values()} == {"pending", "held"}
    with sandbox.org_conn() as conn:  # every job the act created was aborted, and none was given an upload
        jobs = conn.execute("SELECT j.state, count(u.job_id) FROM bulk.jobs j LEFT JOIN bulk.uploads u ON "
                            "u.job_id = j.id WHERE j.kind = 'ingest' AND j.created_at > %s GROUP BY j.id, j.state",
                            (started,)).fetchall()
    assert jobs and all(state == "Aborted" and uploads == 0 for state, uploads in jobs), jobs
    assert ledger is None  # no run is reported before its confirm


def test_a_mask_the_org_does_not_show_fails_the_run_whatever_the_field(sandbox, airflow_db, sf, monkeypatch, capfd,
                                                                      request):
    """The read-back compares what each chunk's records show in the org with what was sent. Two records reported
    done are changed back in the org as their job is recorded (one's FirstName to its original, one's nullified
    Phone given a number): confirm fails naming both, their copies kept; the 28 others read back as sent."""
    from retention.steps import act
    from tests.policy_support import store_rows

    real, policy_id, changed = act.record_outcomes, "chunks_mask_unapplied", {}
    request.addfinalizer(lambda: _drop_working_tables(sandbox, policy_id))

    def outcomes_then_changed_in_the_org(store, policy, run, job_id, outcomes, **kwargs):
        counts = real(store, policy, run, job_id, outcomes, **kwargs)
        rows = store_rows(sandbox, f"SELECT sfid, firstname FROM cache.{policy_id} WHERE _bulk_job_id = %s "
                                   "ORDER BY sfid", (job_id,))
        with sandbox.org_conn() as conn:
            for row in rows:
                if row["firstname"] == "Chunk03":
                    conn.execute("UPDATE org.contact SET firstname = 'Chunk03' WHERE id = %s", (row["sfid"],))
                    changed["first_name"] = row["sfid"]
                elif row["firstname"] == "Chunk17":
                    conn.execute("UPDATE org.contact SET phone = '+1 555 0117' WHERE id = %s", (row["sfid"],))
                    changed["phone"] = row["sfid"]
        return counts

    monkeypatch.setattr(act, "record_outcomes", outcomes_then_changed_in_the_org)
    run, cache, org, ledger, _ = _run(sandbox, sf, policy_id)
    states = {}
    for ti in run.get_task_instances():
        states.setdefault(ti.task_id, set()).add(ti.state)
    assert run.state == "failed" and states["confirm_and_report"] == {"failed"}, states
    assert states["verify_in_salesforce"] == {"success"} and ledger is None
    assert len(changed) == 2 and {r["_action_status"] for r in cache.values()} == {"done"}  # copies kept
    out = capfd.readouterr()
    messages = [line for line in (out.out + out.err).splitlines() if "records reported done are not masked" in line]
    message = messages[-1]  # each attempt of confirm_and_report says it
    assert "2 records reported done are not masked in Salesforce" in message
    assert changed["first_name"] in message and changed["phone"] in message
