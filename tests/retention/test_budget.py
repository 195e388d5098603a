"""The API budget's pure logic (retention.budget): what a run is estimated to spend, and which allowances it would
take more than its share of. The check against a real org's /limits is in test_run_decisions.py."""

from __future__ import annotations

from retention.budget import Spend, estimate, over_share
from retention.policy import parse_policy

POLICY = """\
id: budget
description: budget
owner: tests
object: Contact
schedule: null
start_date: 2025-01-01
select: {{date_field: CreatedDate, older_than_days: 30}}
retain: {{table: budget, fields: {{Email: keep}}}}
action: {action}
{mask}guards: {{chunk_records: 250000}}
source: {source}
"""


def policy(action="delete", source="heroku_connect"):
    mask = "mask: {FirstName: nullify, LastName: nullify}\n" if action == "mask" else ""
    return parse_policy(POLICY.format(action=action, mask=mask, source=source).encode())


def spend(p, records):
    """The estimate with the page sizes and upload limit the pipeline uses."""
    from retention.hooks.salesforce_bulk import ID_QUERY_PAGE_SIZE, INGEST_UPLOAD_MAX_BYTES, QUERY_PAGE_SIZE

    return estimate(p, records, query_page=QUERY_PAGE_SIZE, verify_page=ID_QUERY_PAGE_SIZE,
                    upload_bytes=INGEST_UPLOAD_MAX_BYTES)


def test_the_polls_estimated_per_job_are_the_hooks_backoff_over_a_job_of_the_stated_length():
    from itertools import accumulate, takewhile

    from retention.budget import JOB_SECONDS, POLLS_PER_JOB
    from retention.hooks.salesforce_bulk import MAX_POLL_INTERVAL, SalesforceBulk2Hook, poll_delays

    first = SalesforceBulk2Hook().poll_interval
    waited = accumulate(poll_delays(first, MAX_POLL_INTERVAL))
    assert len(list(takewhile(lambda seconds: seconds < JOB_SECONDS, waited))) + 1 == POLLS_PER_JOB


def test_a_million_records_cost_a_few_dozen_calls_and_grow_with_chunks_not_records():
    from retention.budget import POLLS_PER_JOB
    from retention.hooks.salesforce_bulk import QUERY_PAGE_SIZE

    mirror, bulk = spend(policy(), 1_000_000), spend(policy(source="salesforce_api"), 1_000_000)
    assert mirror.api_requests <= 125  # the 100 a million + about 25, with every job's polls at their most
    # The Bulk source adds its extract: one query job, its polls and a call a page.
    assert bulk.api_requests - mirror.api_requests == 1 + POLLS_PER_JOB + 1_000_000 // QUERY_PAGE_SIZE
    assert bulk.query_jobs == mirror.query_jobs + 1 == 5
    # Within one chunk the calls do not grow with the records; every 250,000 more add one chunk's worth.
    assert spend(policy(), 1_000).api_requests == spend(policy(), 250_000).api_requests
    assert spend(policy(), 250_001).api_requests > spend(policy(), 250_000).api_requests
    # Batches: one per 10,000 records processed, and one per job.
    assert mirror.bulk_batches == 100 + 4


def test_masks_that_pass_the_upload_limit_need_more_jobs():
    masked = estimate(policy("mask"), 250_000, query_page=200_000, verify_page=500_000, upload_bytes=1_000_000)
    deleted = estimate(policy(), 250_000, query_page=200_000, verify_page=500_000, upload_bytes=1_000_000)
    assert masked.api_requests > deleted.api_requests and masked.bulk_batches > deleted.bulk_batches


def test_a_spend_over_the_share_of_any_allowance_is_named():
    need = Spend(api_requests=50, bulk_batches=10, query_jobs=2)
    plenty = {"DailyApiRequests": {"Remaining": 1000}, "DailyBulkApiBatches": {"Remaining": 1000},
              "DailyBulkV2QueryJobs": {"Remaining": 1000}}
    assert over_share(need, plenty, 0.1) == []
    assert over_share(need, {**plenty, "DailyApiRequests": {"Remaining": 400}}, 0.1) == [
        "about 50 of the 400 DailyApiRequests left today"]
    assert over_share(need, {**plenty, "DailyBulkApiBatches": {"Remaining": 50}}, 0.1) == [
        "about 10 of the 50 DailyBulkApiBatches left today"]
    # An allowance the org does not report is not compared, except the API requests every org reports.
    assert over_share(need, {"DailyApiRequests": {"Remaining": 1000}}, 0.1) == []
    assert over_share(need, {}, 0.1) == ["the org's /limits reports no DailyApiRequests"]
