"""The org's daily allocations and Bulk API 2.0's size rules, through the product's hook (``SalesforceBulk2Hook``)
against the sandbox over HTTPS: what a run spends, as the org counts it, and where Salesforce says no."""

from __future__ import annotations

import time

import pytest
import requests
from psycopg import sql
from simple_salesforce.exceptions import SalesforceMalformedRequest, SalesforceRefusedRequest

from sandbox import ids, limits, org, soql
from sandbox.objects import CONTACT


@pytest.fixture(scope="module")
def hook(sandbox):
    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook

    return SalesforceBulk2Hook()


def api_usage(sandbox) -> int:
    """Every API call the sandbox has counted (its health endpoint, which is no API call)."""
    return requests.get(f"{sandbox.instance_url}/__sandbox/health", verify=sandbox.ca, timeout=10).json()["api_usage"]


def make_contacts(sandbox, count: int, last_name: str) -> list[str]:
    with sandbox.org_conn() as conn:
        out = [org.create(conn, CONTACT, {"LastName": last_name, "Email": f"c{i}@example.com"}) for i in range(count)]
    return [o.id for o in out]


def live(sandbox, record_ids: list[str]) -> set[str]:
    with sandbox.org_conn() as conn:
        rows = conn.execute("SELECT id FROM org.contact WHERE id = ANY(%s) AND NOT isdeleted", (record_ids,))
        return {r[0] for r in rows}


def delete_csv(record_ids: list[str]) -> str:
    return "Id\n" + "".join(f"{i}\n" for i in record_ids)


# --- polling with backoff


def test_poll_delays_grow_by_the_backoff_up_to_the_cap():
    from itertools import islice

    from retention.hooks.salesforce_bulk import poll_delays

    assert list(islice(poll_delays(0.5, 10.0, 2.0), 8)) == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert list(islice(poll_delays(20.0, 10.0), 2)) == [10.0, 10.0]  # never above the cap, even at first


def test_wait_polls_a_job_the_org_keeps_running_far_less_often_than_fixed_polling(sandbox, hook):
    """The org keeps the job InProgress for 4 s (fault ``slow_job``); every status check is an API call the org
    counts. Fixed 0.5 s polling would check about 9 times; with the shipped backoff (0.5 s, x2) the hook checks 4 or
    5 times."""
    from retention.config import OPTIONS
    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook

    hook = SalesforceBulk2Hook(poll_interval=float(OPTIONS["bulk_poll_interval"][2]))  # not the suite's shorter wait
    doomed = make_contacts(sandbox, 3, "PolledWithBackoff")
    job_id = hook.create_ingest("Contact", "delete")
    with sandbox.fault("slow_job", seconds=4, count=1):
        hook.upload_and_close("Contact", job_id, delete_csv(doomed))
        before, started = api_usage(sandbox), time.monotonic()
        info = hook.wait("Contact", job_id)
        polls, waited = api_usage(sandbox) - before, time.monotonic() - started
    assert info["state"] == "JobComplete" and info["numberRecordsProcessed"] == 3
    assert waited >= 4  # the fault held the job: the polls below really waited on a running job
    fixed = int(waited / 0.5) + 1  # an immediate check, then one every 0.5 s
    assert polls <= 5 and polls * 2 <= fixed, (polls, fixed)
    assert not live(sandbox, doomed)


def checks_until_done(checks, processed_at, ends: float) -> list[float]:
    """The times ``checks`` (a StatusChecks) checks a job that ends at ``ends`` seconds, having processed
    ``processed_at(t)`` records at ``t``: the last one finds it done."""
    times = []
    while True:
        times.append(checks.next_at)
        if times[-1] >= ends:
            return times
        checks.running(times[-1], processed_at(times[-1]))


def test_status_checks_follow_the_backoff_and_a_jobs_progress_brings_a_check_to_its_end():
    """Jobs of 1 to 100 batches of 10,000 records, each batch taking 0.05 to 7 s and counted as it ends (as the
    org reports them), some after a wait in the queue. Without the records the checks are the backoff's. With
    them, a job never costs more than one check more, is never seen done later, and, once its progress is fine
    enough to read (ten batches or more), is seen done within a tenth of its length (the margin) and a batch of
    its end; over all the jobs of three batches or more, the time between a job's end and the check that sees
    it is under a third of the backoff's."""
    from retention.hooks.salesforce_bulk import MAX_POLL_INTERVAL, StatusChecks

    late = {"backoff": 0.0, "steered": 0.0}
    for batches in (1, 3, 10, 25, 100):
        for batch_seconds in (0.05, 0.4, 1.0, 2.5, 7.0):
            for queued in (0.0, batch_seconds):
                ends = queued + batches * batch_seconds

                def processed_at(t, batches=batches, batch_seconds=batch_seconds, queued=queued):
                    return 10_000 * min(batches, max(0, int((t - queued) / batch_seconds)))

                backoff = checks_until_done(StatusChecks(0.5, MAX_POLL_INTERVAL), processed_at, ends)
                assert backoff[:4] == pytest.approx([0.5, 1.5, 3.5, 7.5][: len(backoff)])
                steered = checks_until_done(StatusChecks(0.5, MAX_POLL_INTERVAL, batches * 10_000), processed_at,
                                            ends)
                case = (batches, batch_seconds, queued, steered, backoff)
                assert len(steered) <= len(backoff) + 1 and steered[-1] <= backoff[-1], case
                if batches >= 10 and not queued:
                    assert steered[-1] - ends <= 0.1 * ends + batch_seconds + 0.5, case
                if batches >= 3:
                    late["backoff"] += backoff[-1] - ends
                    late["steered"] += steered[-1] - ends
    assert late["steered"] < late["backoff"] / 3, late


def test_wait_checks_an_ingest_job_when_its_progress_says_it_ends(sandbox, hook):
    """50,000 records, five batches of 1.2 s each (``slow_job``): the job ends about 6 s after it is closed. With
    a first wait of 1.5 s the backoff checks at 1.5, 4.5 and 10.5 s. At 4.5 s the job reports 30,000 records
    processed: at that rate the 20,000 left take 3 s, and a check a tenth later than that, at 7.8 s, finds the job
    done, where the backoff alone would have waited until 10.5 s; three checks either way."""
    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook

    hook = SalesforceBulk2Hook(poll_interval=1.5)
    missing = [ids.make_id("003", 2 * 10**12 + i) for i in range(50_000)]  # the org processes them as failures
    job_id = hook.create_ingest("Contact", "delete")
    with sandbox.fault("slow_job", seconds=1.2, count=1):
        hook.upload_and_close("Contact", job_id, delete_csv(missing))
        before, started = api_usage(sandbox), time.monotonic()
        info = hook.wait("Contact", job_id, records=len(missing))
        polls, waited = api_usage(sandbox) - before, time.monotonic() - started
    assert info["state"] == "JobComplete" and info["numberRecordsProcessed"] == 50_000
    assert 6 <= waited < 10.5, waited  # the backoff's own check would come at 10.5 s
    assert polls == 3


# --- the Limits resource and what consumes each allocation


def test_limits_is_one_call_and_counts_against_daily_api_requests(hook):
    """Only the Versions resource is exempt: "calls to the Versions URI, /, ... do not count towards your org's
    limit" (Limit Info Header, REST API Developer Guide), so a call to Limits counts like any other."""
    first = hook.limits()
    second = hook.limits()
    assert set(first) >= {"DailyApiRequests", "DailyBulkApiBatches", "DailyBulkV2QueryJobs"}
    assert second["DailyApiRequests"]["Remaining"] == first["DailyApiRequests"]["Remaining"] - 1
    assert hook.conn.api_usage["api-usage"] == (
        second["DailyApiRequests"]["Max"] - second["DailyApiRequests"]["Remaining"], second["DailyApiRequests"]["Max"])


def test_ingest_jobs_consume_a_parent_batch_and_one_per_10000_records(sandbox, hook):
    """"Salesforce creates a separate batch for every 10,000 records in your job data" and "There is always an empty
    'parent' batch" (Understanding Bulk API 2.0 Ingest); batches count against DailyBulkApiBatches (Bulk API and
    Bulk API 2.0 Limits and Allocations). 10,001 records of ids that name no record: 3 batches, all rows failed."""
    assert [limits.ingest_batches(n) for n in (1, 10_000, 10_001, 1_000_000)] == [2, 2, 3, 101]
    missing = [ids.make_id("003", 10**12 + i) for i in range(10_001)]
    before = hook.limits()["DailyBulkApiBatches"]["Remaining"]
    job_id = hook.create_ingest("Contact", "delete")
    hook.upload_and_close("Contact", job_id, delete_csv(missing))
    info = hook.wait("Contact", job_id)
    assert info["numberRecordsProcessed"] == 10_001 and info["numberRecordsFailed"] == 10_001
    assert hook.limits()["DailyBulkApiBatches"]["Remaining"] == before - 3


def test_query_jobs_consume_daily_bulk_v2_query_jobs_and_no_batches(sandbox, hook):
    """"In Bulk API 2.0, only ingest jobs consume batches. Query jobs don't" (Bulk API and Bulk API 2.0 Limits and
    Allocations); each query job counts in DailyBulkV2QueryJobs (Bulk API 2.0 Limits and Allocations)."""
    before = hook.limits()
    pages = [page.text() for page in hook.query_pages("Contact", "SELECT Id FROM Contact LIMIT 1")]
    after = hook.limits()
    assert len(pages) == 1
    assert after["DailyBulkV2QueryJobs"]["Remaining"] == before["DailyBulkV2QueryJobs"]["Remaining"] - 1
    assert after["DailyBulkApiBatches"] == before["DailyBulkApiBatches"]


def test_an_org_set_nearly_out_of_api_requests_refuses_the_call_past_its_max(sandbox, hook):
    """A test sets the org's allocation through ``/__sandbox/org`` (``limits``, in the Limits resource's shape).
    Past the limit Salesforce answers 403 REQUEST_LIMIT_EXCEEDED (no 429 for API limits: see sandbox.faults)."""
    with sandbox.org_settings(limits={"DailyApiRequests": {"Max": 15_000, "Remaining": 2}}):
        assert hook.limits()["DailyApiRequests"] == {"Max": 15_000, "Remaining": 1}
        assert hook.limits()["DailyApiRequests"] == {"Max": 15_000, "Remaining": 0}  # the call reaching Max succeeds
        assert hook.conn.api_usage["api-usage"] == (15_000, 15_000)
        with pytest.raises(SalesforceRefusedRequest) as refused:
            hook.limits()
        assert refused.value.status == 403 and refused.value.content[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    restored = hook.limits()["DailyApiRequests"]
    assert restored["Max"] == limits.DEFAULTS["DailyApiRequests"] and restored["Remaining"] > 15_000


def test_org_limit_settings_name_what_is_wrong(sandbox):
    url = f"{sandbox.instance_url}/__sandbox/org"
    for bad, words in (({"DailyApiCalls": {"Max": 1}}, "unknown limit 'DailyApiCalls'"),
                       ({"DailyApiRequests": {"Remaining": -1}}, "whole numbers >= 0")):
        r = requests.post(url, json={"limits": bad}, verify=sandbox.ca, timeout=10)
        assert r.status_code == 400 and words in r.json()["error"], r.text


# --- uploads: one per job, within the size limit


def test_upload_and_close_takes_bytes_as_well_as_text(sandbox, hook):
    doomed = make_contacts(sandbox, 2, "UploadedAsBytes")
    job_id = hook.create_ingest("Contact", "delete")
    hook.upload_and_close("Contact", job_id, delete_csv(doomed).encode())
    assert hook.wait("Contact", job_id)["numberRecordsProcessed"] == 2
    assert not live(sandbox, doomed)


def test_an_upload_over_the_orgs_limit_is_refused_and_the_job_aborted(sandbox, hook):
    """Upload Job Data: "upload data that does not exceed 100 MB" (the sandbox's default, 10^8 bytes); the test
    lowers the sandbox's limit (org setting ``ingest_upload_max_bytes``) rather than send 100 MB. The hook, whose
    own limit is the documented one, sends; the org refuses; the hook aborts the job and nothing is deleted."""
    kept = make_contacts(sandbox, 20, "UploadTooLarge")
    body = delete_csv(kept)
    assert len(body) > 200
    job_id = hook.create_ingest("Contact", "delete")
    with sandbox.org_settings(ingest_upload_max_bytes=200):
        with pytest.raises(SalesforceMalformedRequest) as refused:
            hook.upload_and_close("Contact", job_id, body)
    assert refused.value.content[0]["message"].endswith("Exceeded max size limit of 200")
    assert hook.job_state("Contact", job_id) == "Aborted"
    assert live(sandbox, kept) == set(kept)


def test_the_hook_refuses_an_upload_over_its_limit_before_sending_it(sandbox, hook):
    """``upload_max_bytes`` (default ``INGEST_UPLOAD_MAX_BYTES``) is checked before any byte leaves: the only call
    is the abort of the job, and the org never saw the records."""
    from retention.hooks.salesforce_bulk import INGEST_UPLOAD_MAX_BYTES, SalesforceBulk2Hook, UploadTooLarge

    assert INGEST_UPLOAD_MAX_BYTES == 100_000_000
    small = SalesforceBulk2Hook(upload_max_bytes=100)
    kept = make_contacts(sandbox, 10, "RefusedByTheHook")
    job_id = small.create_ingest("Contact", "delete")
    before = api_usage(sandbox)
    with pytest.raises(UploadTooLarge, match="over the 100 bytes one upload may carry"):
        small.upload_and_close("Contact", job_id, delete_csv(kept))
    assert api_usage(sandbox) - before == 1  # the abort
    assert small.job_state("Contact", job_id) == "Aborted"
    assert live(sandbox, kept) == set(kept)


def test_a_job_takes_one_upload(sandbox, hook):
    """A second PUT on the same job is refused ("Found multiple contents for job", as real orgs answer clients
    that try; see sandbox.bulk2.MULTIPLE_UPLOADS); the job keeps its first upload and still runs."""
    first, second = make_contacts(sandbox, 1, "FirstUpload"), make_contacts(sandbox, 1, "SecondUpload")
    client = hook._client("Contact")
    job_id = hook.create_ingest("Contact", "delete")
    client.upload_job_data(job_id, delete_csv(first))
    with pytest.raises(SalesforceMalformedRequest) as refused:
        client.upload_job_data(job_id, delete_csv(second))
    assert refused.value.content[0]["message"].startswith(f"Found multiple contents for job: {job_id}")
    client.close_job(job_id)
    assert hook.wait("Contact", job_id)["numberRecordsProcessed"] == 1
    assert live(sandbox, first + second) == set(second)


# --- query pages and Id ranges


def test_query_pages_honours_page_size_and_big_pages_cost_one_download_each(sandbox, hook):
    """maxRecords: "The maximum number of records to retrieve per set" (Get Results for a Query Job), no documented
    maximum; every download is an API call, so reading Ids wants big pages."""
    from retention.hooks.salesforce_bulk import ID_QUERY_PAGE_SIZE

    made = make_contacts(sandbox, 5, "PagedIds")
    soql_text = "SELECT Id FROM Contact WHERE LastName = 'PagedIds'"
    small = [page.text() for page in hook.query_pages("Contact", soql_text, page_size=2)]
    assert [page.count("\n") - 1 for page in small] == [2, 2, 1]
    before = api_usage(sandbox)
    (big,) = [page.text() for page in hook.query_pages("Contact", soql_text, page_size=ID_QUERY_PAGE_SIZE)]
    assert api_usage(sandbox) - before == 3  # create, one status check, one download
    assert sorted(big.split("\n")[1:-1]) == sorted(f'"{i}"' for i in made)


def test_query_pages_are_the_bytes_the_org_sent_nul_included_and_can_be_read_again(sandbox, hook, sf):
    """A text value can hold a NUL, which Salesforce sends as it is (the ``nul_in_results`` fault, see
    sandbox.faults). simple-salesforce's own page reader strips it (``filter_null_bytes``), so a copy would differ
    from the org's value unseen; the hook's pages keep it, and a page downloaded again is the same page."""
    made = make_contacts(sandbox, 3, "NulValue")
    soql_text = "SELECT Id, LastName FROM Contact WHERE LastName = 'NulValue'"
    with sandbox.fault("nul_in_results", text="Value"):
        pages = []
        for page in hook.query_pages("Contact", soql_text, page_size=2):
            with page.again() as again:
                pages.append((page.text(), again.text()))
        stripped = "".join(sf.bulk2.Contact.query(soql_text, wait=0))
    assert [first == second for first, second in pages] == [True, True]
    rows = [line for first, _ in pages for line in first.split("\n")[1:-1]]
    assert sorted(rows) == sorted(f'"{i}","Nul\x00"' for i in made)
    assert "\x00" not in stripped and stripped.count('"Nul"') == 3


def test_bulk_query_selects_an_id_range_through_the_primary_key(sandbox, hook):
    """Comparison operators on Id are how Salesforce itself splits a Bulk query ("WHERE Id >= 001300000000000 AND
    Id < 00130000000132G": PK Chunking Header, Bulk API Developer Guide). IDs order as their base-62 serials do
    (the org database collates bytewise, C.UTF-8), 15- and 18-character literals alike; the compiled range is a
    condition on the primary key's index."""
    made = make_contacts(sandbox, 6, "IdRange")
    low, high = made[1], made[4]
    for lo, hi in ((low, high), (low[:15], high[:15])):
        text = (f"SELECT Id, Email FROM Contact WHERE Id >= '{lo}' AND Id <= '{hi}' "
                "AND LastName = 'IdRange'")
        (rows,) = [page.text() for page in hook.query_pages("Contact", text)]
        assert sorted(line.split(",")[0].strip('"') for line in rows.split("\n")[1:-1]) == made[1:5]
    compiled = soql.compile_query(f"SELECT Id, Email FROM Contact WHERE Id >= '{low}' AND Id <= '{high}'")
    with sandbox.org_conn() as conn:
        conn.execute("SET enable_seqscan = off")  # a small table would be scanned anyway: ask whether it can use it
        plan = "\n".join(r[0] for r in conn.execute(sql.SQL("EXPLAIN {}").format(compiled.sql), compiled.params))
    assert "Index" in plan and "contact_pkey" in plan, plan
