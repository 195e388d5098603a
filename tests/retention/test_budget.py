"""The API budget's pure logic (retention.budget): what a run is estimated to spend, and which allowances it would
take more than its share of. The check against a real org's /limits is in test_run_decisions.py."""

from __future__ import annotations

import pytest

from retention.budget import Spend, estimate, for_run, over_share, polls_per_job
from retention.config import OPTIONS
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


# The shipped [retention] bulk_poll_interval (the suite sets a shorter one).
SHIPPED_POLL_INTERVAL = float(OPTIONS["bulk_poll_interval"][2])


def default_polls() -> int:
    """Status checks per job at the shipped first wait."""
    from retention.hooks.salesforce_bulk import MAX_POLL_INTERVAL

    return polls_per_job(SHIPPED_POLL_INTERVAL, MAX_POLL_INTERVAL)


def spend(p, records):
    """The estimate a deployment's run makes, at the shipped first wait."""
    from retention.hooks.salesforce_bulk import MAX_POLL_INTERVAL

    return for_run(p, records, poll_interval=SHIPPED_POLL_INTERVAL, max_poll_interval=MAX_POLL_INTERVAL)


@pytest.mark.parametrize(("first", "checks"), [
    # Checks at 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 and 61.5 s, then at 91.5 s: past the 90 s of a job, the eighth.
    (0.5, 8),
    # 0.05, 0.15, 0.35, 0.75, 1.55, 3.15, 6.35, 12.75, 25.55, 51.15 and 81.15 s, then 111.15 s.
    (0.05, 12),
    # 2, 6, 14, 30, 60 s, then 90 s: a check at the job's 90th second is its last.
    (2.0, 6),
])
def test_the_polls_estimated_per_job_follow_the_hooks_backoff_from_its_first_wait(first, checks):
    from retention.budget import JOB_SECONDS
    from retention.hooks.salesforce_bulk import MAX_POLL_INTERVAL

    assert JOB_SECONDS == 90
    assert polls_per_job(first, MAX_POLL_INTERVAL) == checks


def test_the_hook_waits_as_configured_and_refuses_a_wait_that_is_not_a_number_of_seconds(monkeypatch):
    from airflow.providers.common.compat.sdk import AirflowFailException

    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook

    monkeypatch.setenv("AIRFLOW__RETENTION__BULK_POLL_INTERVAL", "1.5")
    assert SalesforceBulk2Hook().poll_interval == 1.5
    assert SalesforceBulk2Hook(poll_interval=0.2).poll_interval == 0.2  # a caller's own wait wins
    for bad in ("soon", "0", "-1", "45"):
        monkeypatch.setenv("AIRFLOW__RETENTION__BULK_POLL_INTERVAL", bad)
        with pytest.raises(AirflowFailException, match=rf"\[retention\] bulk_poll_interval is '{bad}': expected a "
                                                       r"number of seconds above 0 and at most 30"):
            SalesforceBulk2Hook()


def test_a_share_that_is_not_a_number_in_zero_to_one_is_refused_before_the_org_is_asked(monkeypatch):
    """``[retention] max_api_share`` is read as the budget is checked: a bad value stops the run naming the
    option, before ``/limits`` is read (the hook here has no connection to read it with)."""
    from retention.budget import check
    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook
    from retention.steps.run import RetentionError

    hook = SalesforceBulk2Hook("no_such_connection", poll_interval=SHIPPED_POLL_INTERVAL)
    for bad in ("most", "0", "1.5", "nan"):
        monkeypatch.setenv("AIRFLOW__RETENTION__MAX_API_SHARE", bad)
        with pytest.raises(RetentionError, match=rf"^\[retention\] max_api_share is '{bad}': expected a number "
                                                 r"above 0 and at most 1; nothing was touched$"):
            check(hook, policy(), 1_000)


def test_a_million_records_cost_a_few_dozen_calls_and_grow_with_chunks_not_records():
    from retention.hooks.salesforce_bulk import QUERY_PAGE_SIZE

    mirror, bulk = spend(policy(), 1_000_000), spend(policy(source="salesforce_api"), 1_000_000)
    assert mirror.api_requests <= 125  # the 100 a million + about 25, with every job's polls at their most
    # The Bulk source adds its extract: one query job, its polls and a call a page.
    assert bulk.api_requests - mirror.api_requests == 1 + default_polls() + 1_000_000 // QUERY_PAGE_SIZE
    assert bulk.query_jobs == mirror.query_jobs + 1 == 5
    # Within one chunk the calls do not grow with the records; every 250,000 more add one chunk's worth.
    assert spend(policy(), 1_000).api_requests == spend(policy(), 250_000).api_requests
    assert spend(policy(), 250_001).api_requests > spend(policy(), 250_000).api_requests
    # Batches: one per 10,000 records processed, and one per job.
    assert mirror.bulk_batches == 100 + 4
    # A mask's read-back brings every record back with its masked values, in pages of the extract's size: three a
    # chunk of 250,000 rather than one, still within the target.
    masked = spend(policy("mask"), 1_000_000)
    assert masked.api_requests - mirror.api_requests == 4 * (3 - 1) and masked.api_requests <= 125


PAGES = {"query_page": 200_000, "verify_page": 500_000, "id_page": 500_000}


def test_masks_that_pass_the_upload_limit_need_more_jobs():
    masked = estimate(policy("mask"), 250_000, **PAGES, upload_bytes=1_000_000, polls=8)
    deleted = estimate(policy(), 250_000, **PAGES, upload_bytes=1_000_000, polls=8)
    assert masked.api_requests > deleted.api_requests and masked.bulk_batches > deleted.bulk_batches


def test_each_cascade_child_adds_its_checks_before_each_delete_its_read_back_and_its_staging_query():
    """A cascade child's records are asked of the org again before each chunk's delete, read back by one Bulk
    query job in confirm (pages of Ids), and staged by another when the source is the org; the estimate counts
    them as many as the parents."""
    def with_children(source: str):
        return parse_policy(POLICY.format(action="delete", mask="", source=source).replace(
            "object: Contact", "object: Account").encode() + b"""cascade:
  - object: Contact
    relationship: AccountId
    retain: {table: budget_contact, fields: {Email: keep}}
""")

    chunks, query_pages = 1_000_000 // 250_000, 1_000_000 // 200_000
    for source, jobs, pages in (("heroku_connect", chunks + 1, chunks * query_pages + 2),
                                ("salesforce_api", 1 + chunks + 1, (1 + chunks) * query_pages + 2)):
        alone = estimate(policy(source=source), 1_000_000, **PAGES, upload_bytes=10**8, polls=8)
        cascading = estimate(with_children(source), 1_000_000, **PAGES, upload_bytes=10**8, polls=8)
        assert cascading.query_jobs - alone.query_jobs == jobs
        # one more describe (Contact), then a create and eight status checks a job, and its pages
        assert cascading.api_requests - alone.api_requests == 1 + jobs * (1 + 8) + pages


def test_each_cascading_relationship_the_policy_does_not_retain_adds_its_checks_at_extract_and_before_each_delete():
    """Such a relationship's children are asked of the org at extract (they keep their parent back) and again
    before each chunk's delete: a query job each, with its polls and pages, the children counted as many as the
    parents."""
    chunks, query_pages = 1_000_000 // 250_000, 1_000_000 // 200_000
    alone = estimate(policy(), 1_000_000, **PAGES, upload_bytes=10**8, polls=8)
    two = estimate(policy(), 1_000_000, **PAGES, upload_bytes=10**8, polls=8, undeclared=2)
    assert two.query_jobs - alone.query_jobs == 2 * (1 + chunks)
    assert two.api_requests - alone.api_requests == 2 * (1 + chunks) * (1 + 8 + query_pages)


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
