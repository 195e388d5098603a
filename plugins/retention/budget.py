"""A run's spend of the org's daily allowances, estimated before it starts, and the check that refuses a run that
would take more than its share: the org's API requests are shared with every other integration.

What counts is what Salesforce counts: every REST call (describes, queries, Bulk job creation, uploads, status
checks, result pages), Bulk batches (an ingest job uses one per 10,000 records it processes, from the 15,000 a day
that Bulk API and Bulk API 2.0 share) and Bulk query jobs. Logins do not count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from retention.policy import Policy

# "Bulk API 2.0 ... batches are created automatically ... each batch can hold up to 10,000 records" and count
# against the batches allocation (Bulk API and Bulk API 2.0 Limits and Allocations).
INGEST_BATCH_RECORDS = 10_000
# Status checks of one Bulk job: the hook polls with backoff (from [retention] bulk_poll_interval, doubling, at most
# 30 s apart); a job done within JOB_SECONDS is checked at most polls_per_job() times, and each half minute a job
# runs longer costs one more call than estimated.
JOB_SECONDS = 90
# Per ingest job besides its polls: create, upload, close, the three result downloads, and the one status check
# its progress may add that finds it still running (SalesforceBulk2Hook.wait adds at most one).
CALLS_PER_INGEST_JOB = 7
# Per verify query job besides its polls and pages: create.
CALLS_PER_QUERY_JOB = 1
# What any run spends whatever its size: the describes, the /limits read, the holds, the org's count at validation.
FIXED_CALLS = 6
# Bytes of one record in an ingest upload: the Id and, for a mask, each masked value (a generous estimate).
ID_BYTES = 20
MASKED_VALUE_BYTES = 64


@dataclass(frozen=True)
class Spend:
    """Of the org's daily allowances (``/limits``): API requests, Bulk batches, Bulk query jobs."""

    api_requests: int
    bulk_batches: int
    query_jobs: int

    def as_limits(self) -> dict[str, int]:
        return {"DailyApiRequests": self.api_requests, "DailyBulkApiBatches": self.bulk_batches,
                "DailyBulkV2QueryJobs": self.query_jobs}


def polls_per_job(first: float, most: float, seconds: float = JOB_SECONDS) -> int:
    """The status checks of a job done within ``seconds``: those the hook's backoff makes before then, and one more."""
    from retention.hooks.salesforce_bulk import poll_delays

    checks, waited = 1, 0.0
    for delay in poll_delays(first, most):
        waited += delay
        if waited >= seconds:
            return checks
        checks += 1
    raise AssertionError("poll_delays never ends")


def estimate(policy: Policy, records: int, *, query_page: int, verify_page: int, id_page: int, upload_bytes: int,
             polls: int, undeclared: int = 0) -> Spend:
    """At most what a run acting on ``records`` records spends, as the pipeline makes its calls: one ingest job per
    chunk (more when a chunk's upload would pass ``upload_bytes``), one verify query job per chunk, an extract
    query job for the ``salesforce_api`` source; each job checked ``polls`` times (:func:`polls_per_job`).

    Each cascade child adds query jobs, its children counted as many as the parents: one that stages them (for the
    ``salesforce_api`` source), one that asks the org for them again before each chunk's delete, and one that reads
    them back in confirm (pages of Ids). Each of the ``undeclared`` cascading relationships the policy does not
    retain (found in the org's describe as the run starts) adds a query job for its children at extract and one
    before each chunk's delete, its children too counted as many as the parents."""
    chunk = policy.guards.chunk_records
    chunks = max(1, math.ceil(records / chunk))
    row = ID_BYTES + MASKED_VALUE_BYTES * len(policy.mask or {})
    jobs_per_chunk = max(1, math.ceil(min(records, chunk) * row / upload_bytes))
    pages_per_chunk = max(1, math.ceil(min(records, chunk) / verify_page))
    calls = FIXED_CALLS + len(policy.related_fields())
    calls += chunks * (1  # the holds again, just before acting
                       + jobs_per_chunk * (CALLS_PER_INGEST_JOB + polls)
                       + CALLS_PER_QUERY_JOB + polls + pages_per_chunk)
    query_jobs = chunks
    # Query jobs besides verify's, each its pages: extract's and the cascade children's (see above).
    from_org = policy.source == "salesforce_api"
    extract_pages = max(1, math.ceil(records / query_page))
    pages_per_job = [extract_pages] * from_org
    for _ in policy.cascade:
        pages_per_job += [extract_pages] * (from_org + chunks) + [max(1, math.ceil(records / id_page))]
    pages_per_job += [extract_pages] * ((1 + chunks) * undeclared)
    calls += sum(CALLS_PER_QUERY_JOB + polls + pages for pages in pages_per_job)
    query_jobs += len(pages_per_job)
    batches = chunks * jobs_per_chunk + math.ceil(records / INGEST_BATCH_RECORDS)
    return Spend(api_requests=calls, bulk_batches=batches, query_jobs=query_jobs)


def for_run(policy: Policy, records: int, *, poll_interval: float, max_poll_interval: float,
            undeclared: int = 0) -> Spend:
    """:func:`estimate` with the page sizes and upload limit the pipeline uses, and the hook's polling."""
    from retention.hooks.salesforce_bulk import ID_QUERY_PAGE_SIZE, INGEST_UPLOAD_MAX_BYTES, QUERY_PAGE_SIZE
    from retention.steps import verify

    return estimate(policy, records, query_page=QUERY_PAGE_SIZE, verify_page=verify.page_size(policy),
                    id_page=ID_QUERY_PAGE_SIZE, upload_bytes=INGEST_UPLOAD_MAX_BYTES,
                    polls=polls_per_job(poll_interval, max_poll_interval), undeclared=undeclared)


def over_share(spend: Spend, limits: dict, share: float) -> list[str]:
    """The allowances ``spend`` would take more than ``share`` of what the org has left, each as a phrase."""
    out = []
    for name, need in spend.as_limits().items():
        remaining = (limits.get(name) or {}).get("Remaining")
        if remaining is None:
            if name == "DailyApiRequests":  # every org reports it: a /limits without it is not trusted
                out.append("the org's /limits reports no DailyApiRequests")
            continue  # a Bulk allowance the org does not report at this API version: nothing to compare with
        if need > share * remaining:
            out.append(f"about {need:,} of the {remaining:,} {name} left today")
    return out


def check(sf, policy: Policy, records: int, *, undeclared: int = 0) -> Spend:
    """Read the org's ``/limits`` and refuse (RetentionError, before anything is touched) a run over its share:
    ``guards.max_api_share``, else ``[retention] max_api_share``. ``undeclared``: see :func:`estimate`."""
    from retention import config
    from retention.steps.run import RetentionError

    spend = for_run(policy, records, poll_interval=sf.poll_interval, max_poll_interval=sf.max_poll_interval,
                    undeclared=undeclared)
    if policy.guards.max_api_share is not None:
        share, where = policy.guards.max_api_share, "guards.max_api_share"
    else:
        try:
            share, where = config.number("max_api_share", above=0, at_most=1), config.source("max_api_share")
        except ValueError as err:
            raise RetentionError(f"{err}; nothing was touched") from None
    over = over_share(spend, sf.limits(), share)
    if over:
        raise RetentionError(
            f"policy {policy.id}: acting on {records:,} records would spend {'; '.join(over)}: more than the "
            f"{share:g} share {where} allows; nothing was touched. Raise the share, or run when the org's "
            "24-hour allowance has recovered")
    return spend
