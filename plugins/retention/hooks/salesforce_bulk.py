"""Salesforce for retention: every query the product sends (privacy holds, counts, high-water marks, deletions,
the user's permissions), Bulk API 2.0 query results streamed as they download, ingest jobs whose id is known
before they are waited on, and per-record outcomes.

Built on the provider's ``SalesforceHook`` (same Airflow connection, same login flows). Ingest uses
simple-salesforce's Bulk 2.0 client step by step rather than its one-call helpers: the job id must be
recorded before the job is waited on, so that a retry after a crash collects that job's outcome
instead of submitting the records a second time.
"""

from __future__ import annotations

import codecs
import csv
import io
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, BinaryIO

from airflow.providers.common.compat.sdk import AirflowFailException
from airflow.providers.salesforce.hooks.salesforce import SalesforceHook

if TYPE_CHECKING:
    from simple_salesforce import Salesforce

# The API version when the connection names none. simple-salesforce would use its own default, 59.0 (Winter '24):
# a version Salesforce will retire in turn; 66.0 (Spring '26) is current and past SOAP login()'s last version.
DEFAULT_API_VERSION = "66.0"
# "SOAP API login() is not available in API versions 65.0 and later" (Salesforce KB 005132110): a username,
# password and security token connection at such a version can only fail, so the hook says why before calling.
SOAP_LOGIN_UNAVAILABLE_FROM = 65.0

# Salesforce keeps a Bulk 2.0 query's pages for days. Each page is an API call: 100,000 rows a page (tens of MB of
# CSV) keeps a million-record extract to ten. A page streams into COPY as it downloads, so its size does not bound
# the worker's memory; larger pages risk the download timeout that the maxRecords parameter is documented to prevent
# (Get Results for a Query Job).
QUERY_PAGE_SIZE = 100_000
# Each page downloaded is an API call; an Id is 21 bytes of CSV, so 500,000 Ids make a ~10 MB page and a million
# Ids cost two calls. maxRecords has no documented maximum ("still subject to the size limits": Get Results for a
# Query Job).
ID_QUERY_PAGE_SIZE = 500_000
# How long an ingest job may take before the task gives up waiting (the job keeps running in
# Salesforce; a retry picks up its outcome by id).
INGEST_TIMEOUT_SECONDS = 60 * 60
# Every status check is an API call against the org's daily allowance: polls start at ``poll_interval`` and grow
# by this factor up to ``MAX_POLL_INTERVAL``, so a job that runs for minutes costs a few dozen calls, not hundreds.
POLL_BACKOFF = 2.0
MAX_POLL_INTERVAL = 30.0
# Bulk 2.0 takes one upload per job, of "CSV data that does not in total exceed 150 MB of base64 encoded content
# ... upload data that does not exceed 100 MB" (Upload Job Data). 100 MB read as 10^8 bytes, the stricter way.
INGEST_UPLOAD_MAX_BYTES = 100_000_000
FINAL_STATES = ("JobComplete", "Failed", "Aborted")
# A job's result CSVs are read this many bytes at a time (a quarter of a million results are tens of MB).
RESULTS_READ_BYTES = 1 << 20


class SoapLoginUnavailable(AirflowFailException):
    """The connection logs in with SOAP ``login()`` at an API version that no longer offers it. Retrying cannot
    help: the connection has to change."""


class QueryPage:
    """One page of a Bulk 2.0 query job's results as it downloads: its CSV's bytes, exactly as the org sent them,
    in chunks (iterate once). ``again()`` downloads the same page anew (another API call), for a reader that must
    look back at what it has already passed on: "You can use the locator to retrieve a set of results multiple
    times" (Get Results for a Query Job)."""

    def __init__(self, response, again: Callable[[], QueryPage]):
        self._response = response
        self.again = again
        locator = response.headers.get("Sforce-Locator") or ""
        self.next_locator = "" if locator == "null" else locator  # "null" on the last page (Get Results)

    def __iter__(self) -> Iterator[bytes]:
        return self._response.iter_content(RESULTS_READ_BYTES)

    def text(self) -> str:
        """The rest of the page, whole."""
        return b"".join(self).decode("utf-8")

    def __enter__(self) -> QueryPage:
        return self

    def __exit__(self, *exc) -> None:
        self._response.close()


# Privacy holds in force now: active, and not past their end date.
ACTIVE_HOLDS_SOQL = ("SELECT ReferenceRecordId FROM PrivacyHold WHERE IsActive = true AND "
                     "(EndDate = null OR EndDate >= TODAY)")


class ObjectUnavailable(Exception):
    """The object does not exist for the API user: Salesforce answers INVALID_TYPE (e.g. PrivacyHold without the
    Privacy Center licence and the "Manage Privacy Hold" permission)."""

    def __init__(self, object_name: str):
        super().__init__(f"{object_name} is not available to the Salesforce API user")
        self.object_name = object_name


class BulkJobError(Exception):
    """A Bulk 2.0 job ended ``Failed`` or ``Aborted`` as a whole."""


class UploadTooLarge(ValueError):
    """An ingest upload over the hook's upload limit: nothing was sent, the caller must split the records over
    several jobs (a Bulk 2.0 job takes one upload)."""


class HardDeleteNotPermitted(Exception):
    """The org refused to create a ``hardDelete`` job: the API user lacks the "Bulk API Hard Delete"
    permission (Salesforce answers ``FEATURENOTENABLED``: "hardDelete operation requires special user
    profile permission, please contact your system administrator"). Nothing was submitted."""


# How Salesforce refuses a hardDelete job to a user without the permission.
_HARD_DELETE_REFUSED_CODE = "FEATURENOTENABLED"
_HARD_DELETE_REFUSED_TEXT = "hardDelete operation requires special user profile permission"


def _hard_delete_refused(err: Exception) -> bool:
    content = getattr(err, "content", None)
    items = content if isinstance(content, list) else [content]
    for item in items:
        if isinstance(item, dict):
            code, message = str(item.get("errorCode", "")), str(item.get("message", ""))
        else:
            code, message = "", str(item or "")
        if code.upper() == _HARD_DELETE_REFUSED_CODE or _HARD_DELETE_REFUSED_TEXT in message:
            return True
    return False


@dataclass(frozen=True)
class RecordOutcome:
    record_id: str
    success: bool
    error: str | None = None


class SalesforceBulk2Hook(SalesforceHook):
    """Bulk API 2.0 through the ``salesforce`` Airflow connection.

    :param salesforce_conn_id: Airflow connection of the org.
    :param poll_interval: seconds before the first job status check (None: ``[retention] bulk_poll_interval``).
    :param max_poll_interval: the longest wait between status checks (they grow by ``POLL_BACKOFF``).
    :param upload_max_bytes: the largest CSV one upload may carry (None: ``INGEST_UPLOAD_MAX_BYTES``).
    """

    def __init__(self, salesforce_conn_id: str = "salesforce_default", *, poll_interval: float | None = None,
                 max_poll_interval: float = MAX_POLL_INTERVAL, upload_max_bytes: int | None = None, **kwargs):
        super().__init__(salesforce_conn_id=salesforce_conn_id, **kwargs)
        self.poll_interval = configured_poll_interval() if poll_interval is None else poll_interval
        self.max_poll_interval = max_poll_interval
        self.upload_max_bytes = upload_max_bytes

    def _get_field(self, extras: dict, field_name: str):
        """The provider's extra lookup, with the API version defaulting to ``DEFAULT_API_VERSION``. The provider's
        ``conn`` reads every extra, the version included, through this method; the login tests check that the
        default reaches the client."""
        value = super()._get_field(extras, field_name)
        if field_name == "version" and value is None:
            return DEFAULT_API_VERSION
        return value

    @cached_property
    def conn(self) -> Salesforce:
        """The provider's client at the connection's API version (default ``DEFAULT_API_VERSION``), refused
        before any call to the org when it would log in with SOAP at a version without ``login()``."""
        connection = self.get_connection(self.conn_id)
        extras = connection.extra_dejson
        version = self._get_field(extras, "version")
        # simple-salesforce chooses SOAP login() for username + password with a security token or an org id.
        soap = connection.login and connection.password and (
            self._get_field(extras, "security_token") or self._get_field(extras, "organization_id"))
        if soap and _version_number(version) >= SOAP_LOGIN_UNAVAILABLE_FROM:
            raise SoapLoginUnavailable(
                f"Salesforce connection {self.conn_id!r} logs in with username, password and security token "
                f"(SOAP login()) at API version {version}, but SOAP login() is unavailable from API 65.0. "
                "Configure OAuth 2.0 instead: JWT bearer (login + consumer_key + private_key_file_path) or client "
                "credentials (consumer_key + consumer_secret with a My Domain as domain); see README 'Running "
                "against a real org'.")
        return super().conn

    def _client(self, object_name: str):
        return getattr(self.conn.bulk2, object_name)._client

    def describe_or_none(self, object_name: str) -> dict | None:
        """The object's describe, or None when the API user cannot see it (Salesforce answers 404 NOT_FOUND for
        an object that does not exist for this user, e.g. PrivacyHold without the Privacy Center licence)."""
        from simple_salesforce.exceptions import SalesforceResourceNotFound

        try:
            return self.describe_object(object_name)
        except SalesforceResourceNotFound:
            return None

    def _query_all(self, object_name: str, soql: str) -> list[dict]:
        """Every record of a REST query; INVALID_TYPE (no such object for this user) is ObjectUnavailable."""
        from simple_salesforce.exceptions import SalesforceMalformedRequest

        try:
            return self.conn.query_all(soql)["records"]
        except SalesforceMalformedRequest as err:
            if "INVALID_TYPE" in str(err.content):
                raise ObjectUnavailable(object_name) from err
            raise

    def active_hold_ids(self) -> set[str]:
        """Ids of the records under a privacy hold in force now.

        :raises ObjectUnavailable: no PrivacyHold for this user.
        """
        return {r["ReferenceRecordId"] for r in self._query_all("PrivacyHold", ACTIVE_HOLDS_SOQL)}

    def privacy_holds(self) -> list[dict]:
        """Every PrivacyHold of the org, active or not (Id, ReferenceRecordId, IsActive, RegisteredDate, EndDate).

        :raises ObjectUnavailable: no PrivacyHold for this user.
        """
        return self._query_all(
            "PrivacyHold", "SELECT Id, ReferenceRecordId, IsActive, RegisteredDate, EndDate FROM PrivacyHold")

    def newest_modstamp(self, object_name: str) -> str | None:
        """The object's newest SystemModstamp as the org reports it (a high-water mark), or None when empty.

        :raises ObjectUnavailable: no such object for this user.
        """
        records = self._query_all(object_name, f"SELECT SystemModstamp FROM {object_name} "
                                               "ORDER BY SystemModstamp DESC LIMIT 1")
        return records[0]["SystemModstamp"] if records else None

    def deleted_between(self, object_name: str, start, end) -> dict[str, str]:
        """{id: deletedDate} of the records the org deleted between ``start`` and ``end`` (REST getDeleted)."""
        found = getattr(self.conn, object_name).deleted(start, end).get("deletedRecords") or []
        return {r["id"]: r["deletedDate"] for r in found}

    def user_permissions(self, names: list[str]) -> dict[str, bool]:
        """The API user's own permissions (UserPermissionAccess ``Permissions<Name>``)."""
        records = self._query_all("UserPermissionAccess", f"SELECT {', '.join(names)} FROM UserPermissionAccess")
        return {name: bool((records[0] if records else {}).get(name)) for name in names}

    def api_versions(self) -> list[str]:
        """The API versions the org serves (the Versions resource, which counts against no limit)."""
        client = self.conn
        response = client.session.get(f"https://{client.sf_instance}/services/data/", timeout=30)
        response.raise_for_status()
        return [v["version"] for v in response.json()]

    def limits(self) -> dict:
        """The org's allocations as the Limits resource reports them (one API call; ``DailyApiRequests``,
        ``DailyBulkApiBatches``, ``DailyBulkV2QueryJobs``, ... each ``{"Max": n, "Remaining": n}``)."""
        return self.conn.limits()

    def count(self, soql: str) -> int:
        """``SELECT COUNT() ...`` through REST."""
        return self.conn.query(soql)["totalSize"]

    def query_pages(self, object_name: str, soql: str, *, include_deleted: bool = False,
                    page_size: int | None = None) -> Iterator[QueryPage]:
        """The pages of a Bulk 2.0 query job's results (CSV, each with its header line), one at a time, of at most
        ``page_size`` records (None: ``QUERY_PAGE_SIZE``, read at call time; each page is an API call, and
        ``ID_QUERY_PAGE_SIZE`` suits a query of Ids alone). A page downloads as it is read and is closed when the
        next is asked for."""
        from simple_salesforce.bulk2 import Operation

        client = self._client(object_name)
        job = client.create_job(Operation.query_all if include_deleted else Operation.query, soql)
        self.wait(object_name, job["id"], is_query=True)
        locator = ""
        while True:
            with self._query_page(client, job["id"], page_size or QUERY_PAGE_SIZE, locator) as page:
                yield page
            locator = page.next_locator
            if not locator:
                break

    def _query_page(self, client, job_id: str, size: int, locator: str) -> QueryPage:
        """One page, its body streamed. simple-salesforce's ``get_query_results`` holds the page whole, and strips
        any NUL from it (``filter_null_bytes``): a value would be retained other than the org holds it."""
        from simple_salesforce.util import call_salesforce

        response = call_salesforce(
            url=client._construct_request_url(job_id, True) + "/results", method="GET", session=client.session,
            headers=client._get_headers(client.JSON_CONTENT_TYPE, client.CSV_CONTENT_TYPE), stream=True,
            params={"maxRecords": size, **({"locator": locator} if locator else {})})
        return QueryPage(response, lambda: self._query_page(client, job_id, size, locator))

    def create_ingest(self, object_name: str, operation: str) -> str:
        """Create an (Open) ingest job and return its id, so the caller can record it before uploading.

        :raises HardDeleteNotPermitted: a ``hardDelete`` job was refused for lack of permission.
        """
        from simple_salesforce.exceptions import SalesforceError

        client = self._client(object_name)
        try:
            job = client.create_job(operation)
        except SalesforceError as err:
            if operation == "hardDelete" and _hard_delete_refused(err):
                raise HardDeleteNotPermitted(
                    f"Salesforce refused a hardDelete job on {object_name}: the user lacks the \"Bulk API Hard "
                    "Delete\" permission") from err
            raise
        return job["id"]

    def upload_and_close(self, object_name: str, job_id: str, csv_data: str | bytes | BinaryIO) -> None:
        """Upload the job's CSV (UTF-8 text, bytes, or a binary file read from its start, which is streamed) in the
        one upload a job takes, and close it (Salesforce starts processing); abort the job if that fails.

        :raises UploadTooLarge: the CSV is over the upload limit; the job was aborted, nothing was sent.
        """
        from simple_salesforce.util import call_salesforce

        body = csv_data.encode() if isinstance(csv_data, str) else csv_data
        if isinstance(body, bytes):
            size = len(body)
        else:
            size = body.seek(0, io.SEEK_END)
            body.seek(0)
        client = self._client(object_name)
        limit = self.upload_max_bytes or INGEST_UPLOAD_MAX_BYTES
        try:
            if size > limit:
                raise UploadTooLarge(f"Bulk job {job_id}: {size:,} bytes of CSV is over the {limit:,} bytes "
                                     "one upload may carry; split the records over several jobs")
            # simple-salesforce's upload_job_data takes text only and encodes a copy: send the bytes (or the file,
            # streamed with its length) as they are.
            call_salesforce(url=client._construct_request_url(job_id, False) + "/batches", method="PUT",
                            session=client.session, data=body,
                            headers=client._get_headers(client.CSV_CONTENT_TYPE, client.JSON_CONTENT_TYPE))
            client.close_job(job_id)
        except Exception:
            client.abort_job(job_id, False)
            raise

    def job_state(self, object_name: str, job_id: str) -> str:
        return self._client(object_name).get_job(job_id, False)["state"]

    def abort(self, object_name: str, job_id: str) -> None:
        self._client(object_name).abort_job(job_id, False)

    def wait(self, object_name: str, job_id: str, *, is_query: bool = False,
             timeout: float = INGEST_TIMEOUT_SECONDS, records: int | None = None) -> dict:
        """The job's info once it is JobComplete, checked after ``poll_interval`` and then at intervals growing by
        ``POLL_BACKOFF`` up to ``max_poll_interval`` (each check is an API call).

        Given the ``records`` an ingest job was sent, one more check may come in between, when the job's progress
        says it ends before the next is due (:class:`StatusChecks`).

        :raises BulkJobError: the job ended Failed or Aborted.
        :raises TimeoutError: still running after ``timeout`` seconds (the job goes on in Salesforce).
        """
        client = self._client(object_name)
        checks = StatusChecks(self.poll_interval, self.max_poll_interval, records)
        started = time.monotonic()
        deadline = started + timeout
        while True:
            time.sleep(max(0.0, min(started + checks.next_at, deadline) - time.monotonic()))
            job = client.get_job(job_id, is_query)
            if job["state"] in FINAL_STATES:
                if job["state"] != "JobComplete":
                    raise BulkJobError(f"Bulk job {job_id} ended {job['state']}: {job.get('errorMessage')}")
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"Bulk job {job_id} still {job['state']} after {timeout:.0f}s")
            checks.running(time.monotonic() - started, int(job.get("numberRecordsProcessed") or 0))

    def outcomes(self, object_name: str, job_id: str) -> Iterator[RecordOutcome]:
        """Every record's outcome in a finished ingest job (successes, failures, never-processed), one at a time as
        they are downloaded: the caller writes them on as they come, so a job's outcomes are never all held at
        once, not even as the results' text."""
        client = self._client(object_name)
        # Successes are most of a job and need only their Id: read them row by row, never as dicts.
        for record_id in _first_column(self._results(client, job_id, "successfulResults"), "sf__Id"):
            yield RecordOutcome(record_id, True)
        for row in csv.DictReader(self._results(client, job_id, "failedResults")):
            yield RecordOutcome(row["sf__Id"] or row.get("Id", ""), False, row["sf__Error"])
        for row in csv.DictReader(self._results(client, job_id, "unprocessedrecords")):
            yield RecordOutcome(row.get("Id", ""), False, "UNPROCESSED:record was not processed by the job")

    @staticmethod
    def _results(client, job_id: str, kind: str) -> Iterator[str]:
        """The lines of one of an ingest job's result CSVs, streamed (simple-salesforce's ``get_ingest_results``
        returns the whole text)."""
        from simple_salesforce.util import call_salesforce

        response = call_salesforce(url=f"{client._construct_request_url(job_id, False)}/{kind}", method="GET",
                                   session=client.session, stream=True,
                                   headers=client._get_headers(client.JSON_CONTENT_TYPE, client.CSV_CONTENT_TYPE))
        with response:
            yield from _lines(response.iter_content(RESULTS_READ_BYTES))


def configured_poll_interval() -> float:
    """``[retention] bulk_poll_interval`` in seconds; anything but a positive number stops the task, naming it."""
    from retention import config

    try:
        return config.number("bulk_poll_interval", above=0, at_most=MAX_POLL_INTERVAL, unit=" of seconds")
    except ValueError as err:
        raise AirflowFailException(str(err)) from None


def poll_delays(first: float, most: float, backoff: float = POLL_BACKOFF) -> Iterator[float]:
    """Seconds to wait before each status check: ``first``, then ``backoff`` times the last, never above ``most``."""
    delay = min(first, most)
    while True:
        yield delay
        delay = min(delay * backoff, most)


class StatusChecks:
    """When to check a Bulk job's status next, in seconds since it was closed: after ``first``, then at intervals
    growing by ``POLL_BACKOFF`` up to ``most`` (every check is an API call, so a job that runs for minutes costs a
    few dozen calls, not hundreds).

    Given the ``records`` an ingest job was sent, one check more comes when the records it reports processed say
    it ends before the next check is due, so a long job is not left waiting most of 30 s after it ends. The rate
    is the records processed over the time since the job was closed: the count moves a batch at a time, and only
    once each batch is done, so the rate is never above the job's own, and the check lands at its end or after it
    (later still by the time the job waited in the org's queue). Should that check still find the job running
    (the org slowed down), the checks keep to the backoff: at most one call more than the backoff alone, and no
    check comes later than it would have.
    """

    MARGIN = 1.1  # the early check aims a tenth past the estimated end

    def __init__(self, first: float, most: float, records: int | None = None):
        self._delays = poll_delays(first, most)
        self._floor = first
        self._records = records
        self._due = next(self._delays)
        self._early: float | None = None

    @property
    def next_at(self) -> float:
        return self._due if self._early is None else self._early

    def running(self, at: float, processed: int) -> None:
        """The check made ``at`` seconds found the job still running, ``processed`` records done."""
        if self._early is not None:  # the early check: back to the schedule, which it did not move
            self._early = self._records = None
            return
        self._due = at + next(self._delays)
        if self._records and processed > 0:
            remaining = max((self._records - processed) * at / processed * self.MARGIN, self._floor)
            if at + remaining < self._due:
                self._early = at + remaining


def _version_number(version: str) -> float:
    try:
        return float(version)
    except (TypeError, ValueError):
        return 0.0  # not a version number: Salesforce itself refuses it


def _lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """The lines (each with its ending) of UTF-8 text arriving in ``chunks`` of any size, one at a time: a
    character or a line may be split between chunks. Only LF ends a line, so csv reads a CR inside a quoted value
    as it is."""
    decode = codecs.getincrementaldecoder("utf-8")().decode
    rest = ""
    for chunk in chunks:
        text = rest + decode(chunk)
        start = 0
        while (end := text.find("\n", start)) >= 0:
            yield text[start:end + 1]
            start = end + 1
        rest = text[start:]
    rest += decode(b"", final=True)
    if rest:
        yield rest


def _first_column(lines: Iterable[str], name: str) -> Iterator[str]:
    """The values of the CSV's first column (which must be ``name``), row by row."""
    rows = csv.reader(lines)
    header = next(rows, None)
    if header is None:
        return
    if header[0] != name:
        raise ValueError(f"expected {name} first in the Bulk results, got {header[:3]}")
    for row in rows:
        yield row[0]


def to_csv(header: list[str], rows) -> str:
    """Bulk 2.0 ingest CSV; ``None`` becomes ``#N/A``, which is how Bulk CSV sets a field to null."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["#N/A" if v is None else v for v in row])
    return buf.getvalue()
