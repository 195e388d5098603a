"""Bulk API 2.0 (``/services/data/vXX.X/jobs/query`` and ``/jobs/ingest``): CSV query and ingest jobs.

Job state, uploaded CSV and per-row results all live in schema ``bulk`` of the org database, not in
the server's memory, so 100,000-row jobs cost nothing to keep and survive any number of polls.
Query jobs run in a background thread once created (the result is materialised by ``results.materialize``),
and pages are streamed straight out of Postgres with ``COPY ... TO STDOUT``. Ingest jobs are processed in
a background thread by the set-based engine in ``ingest.py`` once the client closes the upload, in batches
of 10,000 records.

The job storage here is shared with Bulk API 1.0 (``bulk1.py``), as in a real org where both APIs'
jobs carry ``750`` IDs from one sequence.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import threading
import time

from psycopg import sql
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sandbox import faults, ids, ingest, limits, org, results, soql
from sandbox.objects import Field, get_object
from sandbox.salesforce_api import ApiError, OrgService, json_body, rest_call

log = logging.getLogger("sandbox.bulk")

DELIMITERS = {"COMMA": ",", "TAB": "\t", "PIPE": "|", "SEMICOLON": ";", "CARET": "^", "BACKQUOTE": "`"}
LINE_ENDINGS = {"LF": "\n", "CRLF": "\r\n"}
DEFAULT_PAGE = 50_000  # simple-salesforce's default maxRecords; Salesforce picks its own when absent
STREAM_CHUNK = 256 * 1024
TERMINAL = ("JobComplete", "Failed", "Aborted")
_STAMP = Field("stamp", "datetime")

# ---------------------------------------------------------------------------------------------
# Storage (shared with bulk1).

_schema_ready = False
_schema_lock = threading.Lock()


def create_schema(conn) -> None:
    """Create schema ``bulk`` (idempotent); safe to call from server.prepare_org or lazily."""
    conn.execute("SELECT pg_advisory_xact_lock(750750)")
    conn.execute("CREATE SCHEMA IF NOT EXISTS bulk")
    conn.execute("CREATE SEQUENCE IF NOT EXISTS bulk.job_serial")
    conn.execute("CREATE SEQUENCE IF NOT EXISTS bulk.batch_serial")
    conn.execute(
        """CREATE TABLE IF NOT EXISTS bulk.jobs (
               id char(18) PRIMARY KEY, api text NOT NULL, kind text NOT NULL, operation text NOT NULL,
               object text NOT NULL, state text NOT NULL, api_version text NOT NULL,
               created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
               modstamp timestamptz NOT NULL DEFAULT clock_timestamp(),
               column_delimiter text NOT NULL DEFAULT 'COMMA', line_ending text NOT NULL DEFAULT 'LF',
               content_type text NOT NULL DEFAULT 'CSV', concurrency text NOT NULL DEFAULT 'Parallel',
               external_id text, query text, locator text, columns jsonb,
               processed bigint NOT NULL DEFAULT 0, failed bigint NOT NULL DEFAULT 0,
               processing_ms bigint NOT NULL DEFAULT 0, error_message text)"""
    )
    conn.execute(
        """CREATE TABLE IF NOT EXISTS bulk.uploads (
               seq bigserial PRIMARY KEY, job_id char(18) NOT NULL, data bytea NOT NULL)"""
    )
    conn.execute("CREATE INDEX IF NOT EXISTS uploads_job ON bulk.uploads (job_id, seq)")
    conn.execute(
        """CREATE TABLE IF NOT EXISTS bulk.batches (
               id char(18) PRIMARY KEY, job_id char(18) NOT NULL, state text NOT NULL, state_message text,
               request bytea, locator text, created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
               modstamp timestamptz NOT NULL DEFAULT clock_timestamp(),
               processed bigint NOT NULL DEFAULT 0, failed bigint NOT NULL DEFAULT 0,
               processing_ms bigint NOT NULL DEFAULT 0)"""
    )
    conn.execute("CREATE INDEX IF NOT EXISTS batches_job ON bulk.batches (job_id)")
    conn.execute(
        """CREATE TABLE IF NOT EXISTS bulk.rows (
               job_id char(18) NOT NULL, batch_id text NOT NULL DEFAULT '', rn integer NOT NULL,
               record_id char(18), success boolean NOT NULL, created boolean NOT NULL,
               error text, err jsonb, vals text[], PRIMARY KEY (job_id, batch_id, rn))"""
    )


def ensure_schema(svc: OrgService) -> None:
    global _schema_ready
    if _schema_ready:
        return
    with _schema_lock:
        if not _schema_ready:
            with svc.pool.connection() as conn:
                create_schema(conn)
            _schema_ready = True


def expire_jobs(conn) -> None:
    """Drop jobs older than Salesforce's 7-day retention, with their uploads, batches, rows and results."""
    old = conn.execute("DELETE FROM bulk.jobs WHERE created_at < now() - interval '7 days' RETURNING id, locator"
                       ).fetchall()
    if not old:
        return
    job_ids = [r[0] for r in old]
    for table in ("uploads", "rows"):
        conn.execute(sql.SQL("DELETE FROM bulk.{} WHERE job_id = ANY(%s)").format(sql.Identifier(table)), (job_ids,))
    locators = [r[0] for r in conn.execute("DELETE FROM bulk.batches WHERE job_id = ANY(%s) RETURNING locator",
                                           (job_ids,)).fetchall()]
    for locator in [r[1] for r in old] + locators:
        if locator:
            results.drop(conn, locator)


def new_id(conn, key_prefix: str = "750") -> str:
    seq = "bulk.job_serial" if key_prefix == "750" else "bulk.batch_serial"
    return ids.make_id(key_prefix, conn.execute("SELECT nextval(%s)", (seq,)).fetchone()[0])


_JOB_COLUMNS = ("id", "api", "kind", "operation", "object", "state", "api_version", "created_at", "modstamp",
                "column_delimiter", "line_ending", "content_type", "concurrency", "external_id", "query", "locator",
                "columns", "processed", "failed", "processing_ms", "error_message")


def load_job(conn, job_id: str, *, api: str, kind: str | None = None, lock: bool = False) -> dict | None:
    row = conn.execute(
        sql.SQL("SELECT {} FROM bulk.jobs WHERE id = %s AND api = %s{}").format(
            sql.SQL(", ").join(map(sql.Identifier, _JOB_COLUMNS)), sql.SQL(" FOR UPDATE") if lock else sql.SQL("")),
        (job_id[:18], api),
    ).fetchone()
    if row is None:
        return None
    job = dict(zip(_JOB_COLUMNS, row, strict=True))
    job["id"] = job["id"].strip()
    if kind and job["kind"] != kind:
        return None
    return job


def set_state(conn, job_id: str, state: str, **extra) -> None:
    sets = [sql.SQL("state = %s"), sql.SQL("modstamp = clock_timestamp()")]
    params: list = [state]
    for column, value in extra.items():
        sets.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
        params.append(json.dumps(value) if column == "columns" else value)
    conn.execute(sql.SQL("UPDATE bulk.jobs SET {} WHERE id = %s").format(sql.SQL(", ").join(sets)),
                 [*params, job_id])


def stamp(value) -> str:
    return org.json_value(_STAMP, value)


def not_found() -> ApiError:
    return ApiError(404, "NOT_FOUND", "The requested resource does not exist")


def save_rows(conn, job_id: str, batch_id: str, outcome: list[ingest.RowResult], *, keep_values: bool,
              first: int = 0) -> None:
    """Store per-row results (COPY, so a 100,000-row job stays quick); ``first`` is the first row's number."""
    with conn.cursor() as cur, cur.copy(
        "COPY bulk.rows (job_id, batch_id, rn, record_id, success, created, error, err, vals) FROM STDIN"
    ) as copy:
        for rn, r in enumerate(outcome, first):
            err = json.dumps(r.error.as_dict()) if r.error else None
            vals = [None if v is None else str(v) for v in r.values] if keep_values else None
            copy.write_row((job_id, batch_id, rn, r.id, r.success, r.created, r.error_text() or None, err, vals))


# ---------------------------------------------------------------------------------------------
# CSV helpers.


def csv_header(columns: list[str], delimiter: str, line_ending: str) -> bytes:
    return (delimiter.join('"' + c.replace('"', '""') + '"' for c in columns) + line_ending).encode()


class _CrlfWriter:
    """Turn the LF record separators of COPY's CSV into CRLF, leaving newlines inside quoted values alone."""

    def __init__(self):
        self.quoted = False

    def __call__(self, chunk: bytes) -> bytes:
        parts = chunk.split(b'"')
        for i, part in enumerate(parts):
            if i:
                self.quoted = not self.quoted
            if not self.quoted and b"\n" in part:
                parts[i] = part.replace(b"\n", b"\r\n")
        return b'"'.join(parts)


def stream_copy(svc: OrgService, statement: sql.Composable, head: bytes, line_ending: str, *, nul: bytes = b""):
    """Yield ``head`` then the output of a COPY TO STDOUT, chunk by chunk, never as Python rows; ``nul`` is sent as
    a NUL character wherever it occurs in a row (the ``nul_in_results`` fault)."""
    crlf = _CrlfWriter() if line_ending == "\r\n" else None
    yield head
    buffer: list[bytes] = []
    size = 0
    with svc.pool.connection() as conn, conn.cursor() as cur, cur.copy(statement) as copy:
        for chunk in copy:  # psycopg yields about a row per chunk: batch them into ~256 KB sends
            buffer.append(bytes(chunk).replace(nul, b"\x00") if nul else bytes(chunk))
            size += len(chunk)
            if size >= STREAM_CHUNK:
                data = b"".join(buffer)
                yield crlf(data) if crlf else data
                buffer, size = [], 0
    data = b"".join(buffer)
    if data:
        yield crlf(data) if crlf else data


class CopyStream(StreamingResponse):
    """A streamed CSV body. It skips StreamingResponse's wait-for-disconnect task: the app's body-buffering
    wrapper (salesforce_api._Normalise) answers ``http.disconnect`` as soon as the body was replayed,
    which would cancel the stream at once."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await self.stream_response(send)
        except OSError:
            pass  # the client went away mid-page


def copy_options(delimiter: str) -> sql.Composable:
    return sql.SQL("(FORMAT csv, FORCE_QUOTE *, DELIMITER {})").format(sql.Literal(delimiter))


def encode_locator(offset: int) -> str:
    """Salesforce's locators are base64 row offsets (``MTAwMDA`` is 10000); opaque to clients all the same."""
    return base64.b64encode(str(offset).encode()).decode().rstrip("=")


def decode_locator(locator: str) -> int | None:
    try:
        value = base64.b64decode(locator + "=" * (-len(locator) % 4), validate=True).decode()
        return int(value) if value.isdigit() else None
    except ValueError:
        return None


def _format(body: dict) -> tuple[str, str]:
    delimiter = body.get("columnDelimiter") or "COMMA"
    line_ending = body.get("lineEnding") or "LF"
    if delimiter not in DELIMITERS:
        raise ApiError(400, "INVALIDJOB", f"InvalidJob : Invalid column delimiter: {delimiter}")
    if line_ending not in LINE_ENDINGS:
        raise ApiError(400, "INVALIDJOB", f"InvalidJob : Invalid line ending: {line_ending}")
    return delimiter, line_ending


def _base_info(job: dict) -> dict:
    return {
        "id": job["id"],
        "operation": job["operation"],
        "object": job["object"],
        "createdById": org.DEFAULT_OWNER,
        "createdDate": stamp(job["created_at"]),
        "systemModstamp": stamp(job["modstamp"]),
        "state": job["state"],
    }


# ---------------------------------------------------------------------------------------------
# Query jobs.


def query_info(job: dict, *, full: bool = True) -> dict:
    info = {
        **_base_info(job),
        "concurrencyMode": "Parallel",
        "contentType": "CSV",
        "apiVersion": float(job["api_version"]),
        "lineEnding": job["line_ending"],
        "columnDelimiter": job["column_delimiter"],
    }
    if full:
        info.update(jobType="V2Query", numberRecordsProcessed=job["processed"], retries=0,
                    totalProcessingTime=job["processing_ms"], isPkChunkingSupported=False)
        if job["error_message"]:
            info["errorMessage"] = job["error_message"]
    return info


@rest_call
def create_query_job(request: Request, svc: OrgService) -> Response:
    body = json_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of query job request")
    operation = body.get("operation")
    if operation not in ("query", "queryAll"):
        raise ApiError(400, "INVALIDJOB", f"InvalidJob : Invalid operation: {operation}")
    text = body.get("query")
    if not text:
        raise ApiError(400, "INVALIDJOB", "InvalidJob : A query is required for a query job")
    delimiter, line_ending = _format(body)
    try:
        compiled = soql.compile_query(text, include_deleted=operation == "queryAll", output="csv",
                                      resolve_object=svc.resolver(request.path_params["ver"]))
    except soql.SoqlError as err:
        raise ApiError(400, err.error_code, err.message) from None
    if compiled.count_only or compiled.offset is not None:
        feature = "COUNT()" if compiled.count_only else "OFFSET"
        raise ApiError(400, "API_ERROR", f"{feature} is not supported by Bulk API 2.0 query jobs")
    ensure_schema(svc)
    ver = request.path_params["ver"]
    with svc.pool.connection() as conn:
        expire_jobs(conn)
        job_id = new_id(conn)
        conn.execute(
            "INSERT INTO bulk.jobs (id, api, kind, operation, object, state, api_version, column_delimiter, "
            "line_ending, query) VALUES (%s, 'v2', 'query', %s, %s, 'UploadComplete', %s, %s, %s, %s)",
            (job_id, operation, compiled.sobject.name, ver, delimiter, line_ending, text),
        )
        job = load_job(conn, job_id, api="v2")
        # Each query job created counts against DailyBulkV2QueryJobs (see sandbox.limits). What Salesforce answers
        # once that allocation is spent the docs do not say, so the sandbox reports it and does not refuse.
        svc.limits.consume("DailyBulkV2QueryJobs")
    threading.Thread(target=run_query_job, args=(svc, job_id, compiled), name=f"bulk-{job_id}", daemon=True).start()
    return JSONResponse(query_info(job, full=False))


def _claim(conn, job_id: str) -> bool:
    """Take a queued job (``UploadComplete``) into ``InProgress``; False if it was aborted meanwhile."""
    claimed = conn.execute("UPDATE bulk.jobs SET state = 'InProgress', modstamp = clock_timestamp() "
                           "WHERE id = %s AND state = 'UploadComplete' RETURNING id", (job_id,)).fetchone()
    conn.commit()
    return claimed is not None


def _fail(conn, job_id: str, message: str) -> None:
    """End a job ``Failed`` with ``message`` (what its own transaction had not committed is undone)."""
    conn.rollback()
    conn.execute("UPDATE bulk.jobs SET state = 'Failed', error_message = %s, modstamp = clock_timestamp() "
                 "WHERE id = %s AND state = 'InProgress'", (message, job_id))


def run_query_job(svc: OrgService, job_id: str, compiled) -> None:
    """Run a query job after its creation has answered, as Salesforce does: ``UploadComplete`` ("Salesforce has
    put the query job in the queue"), ``InProgress`` while it runs, then ``JobComplete`` with its results, or
    ``Failed`` (How Requests Are Processed). The query is checked at creation; an abort meanwhile wins."""
    started = time.monotonic()
    with svc.pool.connection() as conn:
        if not _claim(conn, job_id):
            return
        queued = svc.faults.take("slow_job")
        if queued:
            time.sleep(queued.seconds)
        try:
            locator, total = results.materialize(conn, compiled, kind="bulk")
            done = conn.execute(
                "UPDATE bulk.jobs SET state = 'JobComplete', locator = %s, processed = %s, processing_ms = %s, "
                "modstamp = clock_timestamp() WHERE id = %s AND state = 'InProgress' RETURNING id",
                (locator, total, int((time.monotonic() - started) * 1000), job_id)).fetchone()
            if done:
                conn.commit()
            else:  # aborted while it ran: its results go with it
                conn.rollback()
        except Exception as exc:  # a sandbox bug must not leave the job InProgress forever
            log.exception("bulk query job %s failed", job_id)
            _fail(conn, job_id, f"InternalServerError : {exc}")


def _jobs_list(svc: OrgService, kind: str, render) -> Response:
    ensure_schema(svc)
    with svc.pool.connection() as conn:
        rows = conn.execute("SELECT id FROM bulk.jobs WHERE api = 'v2' AND kind = %s ORDER BY created_at", (kind,))
        jobs = [load_job(conn, r[0], api="v2") for r in rows.fetchall()]
    return JSONResponse({"done": True, "records": [render(j) for j in jobs], "nextRecordsUrl": None})


@rest_call
def list_query_jobs(request: Request, svc: OrgService) -> Response:
    return _jobs_list(svc, "query", query_info)


def _job_or_404(svc: OrgService, conn, request: Request, kind: str, *, lock: bool = False) -> dict:
    job = load_job(conn, request.path_params["job"], api="v2", kind=kind, lock=lock)
    if job is None:
        raise not_found()
    return job


@rest_call
def query_job(request: Request, svc: OrgService) -> Response:
    ensure_schema(svc)
    with svc.pool.connection() as conn:
        job = _job_or_404(svc, conn, request, "query", lock=request.method != "GET")
        if request.method == "GET":
            return JSONResponse(query_info(job))
        if request.method == "DELETE":
            if job["locator"]:
                results.drop(conn, job["locator"])
            conn.execute("DELETE FROM bulk.jobs WHERE id = %s", (job["id"],))
            return Response(status_code=204)
        body = json_body(request) or {}
        if body.get("state") != "Aborted":
            raise ApiError(400, "INVALIDJOBSTATE", f"Invalid state for a query job: {body.get('state')}")
        if job["state"] in TERMINAL:
            raise ApiError(400, "INVALIDJOBSTATE", f"Job is already in state {job['state']} and can't be aborted")
        set_state(conn, job["id"], "Aborted")
        return JSONResponse(query_info(load_job(conn, job["id"], api="v2"), full=False))


@rest_call
def query_results(request: Request, svc: OrgService) -> Response:
    ensure_schema(svc)
    with svc.pool.connection() as conn:
        job = _job_or_404(svc, conn, request, "query")
        if job["state"] != "JobComplete":
            raise ApiError(400, "INVALIDJOBSTATE", f"Job is in state {job['state']}; results are available "
                           "once it is JobComplete")
        cur = results.cursor(conn, job["locator"]) if job["locator"] else None
        if cur is None:
            raise ApiError(400, "INVALIDJOBSTATE", "The results of this job have expired or been deleted")
    params = request.query_params
    offset = 0
    if params.get("locator"):
        offset = decode_locator(params["locator"])
        if offset is None or offset > cur["total"]:
            raise ApiError(400, "INVALID_LOCATOR", f"Invalid locator: {params['locator']}")
    try:
        page = int(params.get("maxRecords") or DEFAULT_PAGE)
    except ValueError:
        raise ApiError(400, "INVALIDPARAMETER", "maxRecords must be a positive integer") from None
    if page <= 0:
        raise ApiError(400, "INVALIDPARAMETER", "maxRecords must be a positive integer")
    count = max(0, min(page, cur["total"] - offset))
    end = offset + count
    delimiter = DELIMITERS[job["column_delimiter"]]
    line_ending = LINE_ENDINGS[job["line_ending"]]
    columns = sql.SQL(", ").join(sql.Identifier(f"c{i}") for i in range(len(cur["columns"])))
    statement = sql.SQL("COPY (SELECT {} FROM {} WHERE rn > {} ORDER BY rn LIMIT {}) TO STDOUT WITH {}").format(
        columns, sql.Identifier(results.SCHEMA, cur["table"]), sql.Literal(offset), sql.Literal(count),
        copy_options(delimiter))
    head = csv_header(cur["columns"], delimiter, line_ending)
    fault = svc.faults.take("nul_in_results")
    return CopyStream(
        stream_copy(svc, statement, head, line_ending, nul=fault.text.encode() if fault else b""),
        media_type="text/csv",
        headers={"Sforce-NumberOfRecords": str(count),
                 "Sforce-Locator": encode_locator(end) if end < cur["total"] else "null"},
    )


# ---------------------------------------------------------------------------------------------
# Ingest jobs.


def ingest_info(job: dict, *, full: bool = True) -> dict:
    info = _base_info(job)
    if job["external_id"]:
        info["externalIdFieldName"] = job["external_id"]
    info.update(
        concurrencyMode="Parallel",
        contentType="CSV",
        apiVersion=float(job["api_version"]),
        contentUrl=f"services/data/v{job['api_version']}/jobs/ingest/{job['id']}/batches",
        lineEnding=job["line_ending"],
        columnDelimiter=job["column_delimiter"],
    )
    if full:
        info.update(jobType="V2Ingest", numberRecordsProcessed=job["processed"],
                    numberRecordsFailed=job["failed"], retries=0, totalProcessingTime=job["processing_ms"],
                    apiActiveProcessingTime=job["processing_ms"], apexProcessingTime=0)
        if job["error_message"]:
            info["errorMessage"] = job["error_message"]
    return info


@rest_call
def create_ingest_job(request: Request, svc: OrgService) -> Response:
    body = json_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of ingest job request")
    operation = body.get("operation")
    if operation not in ingest.OPERATIONS:
        raise ApiError(400, "INVALIDJOB", f"InvalidJob : Invalid operation: {operation}")
    obj = svc.sobject(body.get("object") or "", request.path_params["ver"])
    if obj is None:
        raise ApiError(400, "INVALIDJOB", f"InvalidJob : Unable to find object: {body.get('object')}")
    if operation == "hardDelete" and (not svc.org.has("PermissionsBulkApiHardDelete")
                                      or svc.faults.take("hard_delete_denied")):
        # The user lacks "Bulk API Hard Delete" (see faults.py for the sources and the assumed status).
        raise ApiError(400, faults.HARD_DELETE_DENIED_CODE_V2,
                       f"{faults.HARD_DELETE_DENIED_CODE_V1} : {faults.HARD_DELETE_DENIED_MESSAGE}")
    if (body.get("contentType") or "CSV") != "CSV":
        raise ApiError(400, "INVALIDJOB", f"InvalidJob : Invalid content type: {body.get('contentType')}")
    delimiter, line_ending = _format(body)
    external = body.get("externalIdFieldName")
    if operation == "upsert":
        if not external:
            raise ApiError(400, "INVALIDJOB", "InvalidJob : External ID was blank for "
                           f"{obj.name}. An External ID must be specified for upsert.")
        if external.lower() != "id":  # the sandbox's objects have no external ID fields
            raise ApiError(400, "INVALIDJOB", f"InvalidJob : Field {external} is not an External ID field "
                           f"on {obj.name}")
        external = "Id"
    ensure_schema(svc)
    with svc.pool.connection() as conn:
        expire_jobs(conn)
        job_id = new_id(conn)
        conn.execute(
            "INSERT INTO bulk.jobs (id, api, kind, operation, object, state, api_version, column_delimiter, "
            "line_ending, external_id) VALUES (%s, 'v2', 'ingest', %s, %s, 'Open', %s, %s, %s, %s)",
            (job_id, operation, obj.name, request.path_params["ver"], delimiter, line_ending,
             external if operation == "upsert" else None),
        )
        job = load_job(conn, job_id, api="v2")
    return JSONResponse(ingest_info(job, full=False))


@rest_call
def list_ingest_jobs(request: Request, svc: OrgService) -> Response:
    return _jobs_list(svc, "ingest", ingest_info)


# A job takes its data in one upload: a second PUT on the same job is refused with "Found multiple contents for
# job" (what clients that tried it against real orgs report; the Upload Job Data page speaks of "a request" and
# Salesforce's own Data Loader and CLI split large files into several jobs, never several uploads). The words
# after the job id, the status and the error code are our assumption, 400 like Bulk 2.0's other refusals.
MULTIPLE_UPLOADS = ("Found multiple contents for job: {job}, please 'Close' / 'Abort' / 'Delete' the current Job "
                    "then create a new Job and make sure you only do 'PUT' once on a given Job.")
# An upload over the limit (OrgConfig.ingest_upload_max_bytes): the docs give the limit, not the refusal. The
# wording is Bulk API 1.0's for its own size limit as clients report it ("ClientInputError: Failed to read
# request. Exceeded max size limit of 10000000"); status and code are our assumption, as above.
UPLOAD_TOO_LARGE = "ClientInputError : Failed to read request. Exceeded max size limit of {limit}"


@rest_call
def upload_batch(request: Request, svc: OrgService) -> Response:
    ensure_schema(svc)
    data = request.scope.get("sandbox.body", b"")
    with svc.pool.connection() as conn:
        job = _job_or_404(svc, conn, request, "ingest", lock=True)
        if job["state"] != "Open":
            raise ApiError(409, "INVALIDJOBSTATE", f"Found job in state {job['state']}; data can only be uploaded "
                           "while the job is Open")
        if conn.execute("SELECT 1 FROM bulk.uploads WHERE job_id = %s LIMIT 1", (job["id"],)).fetchone():
            raise ApiError(400, "BULK_API_ERROR", MULTIPLE_UPLOADS.format(job=job["id"]))
        limit = svc.org.config.ingest_upload_max_bytes
        if len(data) > limit:
            raise ApiError(400, "BULK_API_ERROR", UPLOAD_TOO_LARGE.format(limit=limit))
        conn.execute("INSERT INTO bulk.uploads (job_id, data) VALUES (%s, %s)", (job["id"], data))
    return Response(status_code=201)


@rest_call
def ingest_job(request: Request, svc: OrgService) -> Response:
    ensure_schema(svc)
    with svc.pool.connection() as conn:
        job = _job_or_404(svc, conn, request, "ingest", lock=request.method != "GET")
        if request.method == "GET":
            return JSONResponse(ingest_info(job))
        if request.method == "DELETE":
            if job["state"] in ("UploadComplete", "InProgress"):
                raise ApiError(400, "INVALIDJOBSTATE", f"Job in state {job['state']} can't be deleted")
            for table in ("rows", "uploads"):
                conn.execute(sql.SQL("DELETE FROM bulk.{} WHERE job_id = %s").format(sql.Identifier(table)),
                             (job["id"],))
            conn.execute("DELETE FROM bulk.jobs WHERE id = %s", (job["id"],))
            return Response(status_code=204)
        body = json_body(request) or {}
        state = body.get("state")
        if state == "UploadComplete" and job["state"] == "Open":
            set_state(conn, job["id"], "UploadComplete")
            start = True
        elif state == "Aborted" and job["state"] not in TERMINAL:
            set_state(conn, job["id"], "Aborted")
            start = False
        else:
            raise ApiError(400, "INVALIDJOBSTATE", f"Can't change the state of a job in state {job['state']} "
                           f"to {state}")
        info = ingest_info(load_job(conn, job["id"], api="v2"), full=False)
    if start:
        threading.Thread(target=run_ingest_job, args=(svc, info["id"]), name=f"bulk-{info['id']}",
                         daemon=True).start()
    return JSONResponse(info)


def read_uploads(conn, job: dict):
    """(header, rows) of all CSV uploaded to a job; each upload carries its own header, as Salesforce expects."""
    delimiter, line_ending = DELIMITERS[job["column_delimiter"]], LINE_ENDINGS[job["line_ending"]]
    header: list[str] | None = None
    rows: list[list[str]] = []
    for (data,) in conn.execute("SELECT data FROM bulk.uploads WHERE job_id = %s ORDER BY seq", (job["id"],)):
        text = bytes(data).decode("utf-8-sig", errors="replace")
        first = text.find("\n")
        if first != -1 and (text[first - 1 : first] == "\r") != (line_ending == "\r\n"):
            raise ingest.JobError("ClientInputError : LineEnding is invalid on user data. Current LineEnding "
                                  f"setting is {job['line_ending']}")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        this_header = next(reader, None)
        if this_header is None:
            continue
        if header is not None and this_header != header:
            raise ingest.JobError("InvalidBatch : All uploads of a job must have the same header")
        header = this_header
        rows.extend(r for r in reader if r)
    if header is None:
        raise ingest.JobError("InvalidBatch : No data was uploaded for this job")
    return header, rows


def run_ingest_job(svc: OrgService, job_id: str) -> None:
    """Process a closed ingest job in batches of 10,000 records, each committed as it is done: "Salesforce creates
    a separate batch for every 10,000 records in your job data" (Understanding Bulk API 2.0 Ingest). While the
    job is ``InProgress`` its info reports the records processed so far (``numberRecordsProcessed``; Get
    Information About an Ingest Job does not say whether the count moves before the job ends, and the product
    never relies on it moving). An abort lets the batch under way finish and stops the job before the next; the
    batches done stay done: "Changes made by a job that fails or is aborted aren't rolled back" (Bulk API 2.0
    Developer Guide).
    Salesforce may process a job's batches in parallel; the guide does not say in what order, so here they go
    one after another in the upload's order."""
    started = time.monotonic()
    with svc.pool.connection() as conn:
        if not _claim(conn, job_id):
            return
        job = load_job(conn, job_id, api="v2")
        conn.commit()
        queued = svc.faults.take("slow_job")
        broken = svc.faults.take("job_failure")
        svc.limits.consume("DailyBulkApiBatches", limits.ingest_batches(0))  # the parent batch, always there
        try:
            header, rows = read_uploads(conn, job)
            ingest.check_header(get_object(job["object"]), job["operation"], header, job["external_id"] or "Id")
            conn.execute("UPDATE bulk.jobs SET columns = %s WHERE id = %s", (json.dumps(header), job_id))
            conn.commit()
            if broken:  # the first half goes through and stays, then the job fails
                rows = rows[: len(rows) // 2]
            for first in range(0, len(rows), limits.RECORDS_PER_BATCH):
                if not _run_batch(svc, conn, job, header, rows[first : first + limits.RECORDS_PER_BATCH], first,
                                  started, hold=queued.seconds if queued else 0.0):
                    return  # aborted
            with conn.transaction():
                if load_job(conn, job_id, api="v2", lock=True)["state"] == "Aborted":
                    return
                set_state(conn, job_id, "Failed" if broken else "JobComplete",
                          processing_ms=int((time.monotonic() - started) * 1000),
                          **({"error_message": "InternalServerError : the job failed part way (injected)"}
                             if broken else {}))
        except ingest.JobError as err:
            _fail(conn, job_id, err.message)
        except Exception as exc:  # a sandbox bug must not leave the job InProgress forever
            log.exception("bulk ingest job %s failed", job_id)
            _fail(conn, job_id, f"InternalServerError : {exc}")


def _run_batch(svc: OrgService, conn, job: dict, header: list[str], rows: list[list[str]], first: int,
               started: float, *, hold: float = 0.0) -> bool:
    """Apply one batch and count it in the job's progress, in one transaction that lasts at least ``hold``
    seconds (fault ``slow_job``); False if the job was aborted first (the row lock makes an abort wait for a
    batch under way, then take effect before the next)."""
    begun = time.monotonic()
    with conn.transaction():
        if load_job(conn, job["id"], api="v2", lock=True)["state"] == "Aborted":
            return False
        outcome = ingest.process(conn, get_object(job["object"]), job["operation"], header, rows,
                                 faults=svc.faults, external_id=job["external_id"] or "Id",
                                 edit_converted=svc.may_edit_converted())
        save_rows(conn, job["id"], "", outcome, keep_values=True, first=first)
        conn.execute("UPDATE bulk.jobs SET processed = processed + %s, failed = failed + %s, processing_ms = %s, "
                     "modstamp = clock_timestamp() WHERE id = %s",
                     (len(outcome), sum(1 for r in outcome if not r.success),
                      int((time.monotonic() - started) * 1000), job["id"]))
        time.sleep(max(0.0, hold - (time.monotonic() - begun)))
    svc.limits.consume("DailyBulkApiBatches", 1)
    return True


@rest_call
def ingest_results(request: Request, svc: OrgService) -> Response:
    which = request.path_params["which"].lower()
    if which not in ("successfulresults", "failedresults", "unprocessedrecords"):
        raise not_found()
    ensure_schema(svc)
    with svc.pool.connection() as conn:
        job = _job_or_404(svc, conn, request, "ingest")
        delimiter, line_ending = DELIMITERS[job["column_delimiter"]], LINE_ENDINGS[job["line_ending"]]
        if which == "unprocessedrecords":
            return _unprocessed(conn, job, delimiter, line_ending)
        columns = job["columns"] or []
    first = ("sf__Id", "sf__Created") if which == "successfulresults" else ("sf__Id", "sf__Error")
    head = csv_header([*first, *columns], delimiter, line_ending)
    second = sql.SQL("created::text" if which == "successfulresults" else "error")
    values = sql.SQL("").join(sql.SQL(", vals[{}]").format(sql.Literal(i + 1)) for i in range(len(columns)))
    statement = sql.SQL(
        "COPY (SELECT rtrim(record_id), {}{} FROM bulk.rows WHERE job_id = {} AND batch_id = '' AND success = {} "
        "ORDER BY rn) TO STDOUT WITH {}").format(
        second, values, sql.Literal(job["id"]), sql.Literal(which == "successfulresults"), copy_options(delimiter))
    return CopyStream(stream_copy(svc, statement, head, line_ending), media_type="text/csv")


def _unprocessed(conn, job: dict, delimiter: str, line_ending: str) -> Response:
    """Rows never processed (the job was aborted or failed before processing): the original columns."""
    try:
        header, rows = read_uploads(conn, job)
    except ingest.JobError:
        header, rows = job["columns"] or [], []
    if job["state"] == "JobComplete":
        rows = []
    else:  # a job that stopped part way: the rows it did not reach
        done = {rn for (rn,) in conn.execute("SELECT rn FROM bulk.rows WHERE job_id = %s AND batch_id = ''",
                                             (job["id"],))}
        rows = [row for rn, row in enumerate(rows) if rn not in done]
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator=line_ending, quoting=csv.QUOTE_ALL)
    writer.writerow(header)
    writer.writerows(rows)
    return Response(out.getvalue(), media_type="text/csv")


def routes() -> list[Route]:
    base = "/services/data/v{ver}/jobs"
    return [
        Route(f"{base}/query", create_query_job, methods=["POST"]),
        Route(f"{base}/query", list_query_jobs, methods=["GET"]),
        Route(f"{base}/query/{{job}}", query_job, methods=["GET", "PATCH", "DELETE"]),
        Route(f"{base}/query/{{job}}/results", query_results, methods=["GET"]),
        Route(f"{base}/ingest", create_ingest_job, methods=["POST"]),
        Route(f"{base}/ingest", list_ingest_jobs, methods=["GET"]),
        Route(f"{base}/ingest/{{job}}", ingest_job, methods=["GET", "PATCH", "DELETE"]),
        Route(f"{base}/ingest/{{job}}/batches", upload_batch, methods=["PUT"]),
        Route(f"{base}/ingest/{{job}}/{{which}}", ingest_results, methods=["GET"]),
    ]
