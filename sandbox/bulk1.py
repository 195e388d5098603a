"""Bulk API 1.0 (``/services/async/XX.X/``), JSON content only: what simple-salesforce's ``sf.bulk`` and
Airflow's ``SalesforceBulkOperator`` use.

Batches are processed synchronously when they are added (by the same set-based engine as Bulk 2.0),
so the client's first status poll already sees ``Completed`` and never sleeps its 5 seconds. Jobs,
batches and per-row results are stored in schema ``bulk`` next to Bulk 2.0's. This API authenticates
with the ``X-SFDC-Session`` header and reports errors as ``{exceptionCode, exceptionMessage}``.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import time
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox import bulk2, faults, ids, ingest, org, results, soql
from sandbox.bulk2 import ensure_schema, load_job, set_state, stamp
from sandbox.objects import SObject, get_object
from sandbox.salesforce_api import ApiError, OrgService, api_version_status

OPERATIONS = (*ingest.OPERATIONS, "query", "queryAll")
MAX_BATCH_RECORDS = 10_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class AsyncError(Exception):
    """An error in Bulk 1.0's JSON shape."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def async_call(handler: Callable) -> Callable:
    """Check the API version, authenticate by X-SFDC-Session, apply faults and count the call, rendering errors
    as Bulk 1.0 does."""

    @functools.wraps(handler)
    def wrapped(request: Request) -> Response:
        svc: OrgService = request.app.state.svc
        try:
            if api_version_status(request.path_params["ver"]) != "supported":
                # "Bulk API returns 400: InvalidVersion" for a retired version (KB 005321531); the message is
                # not documented, and a version past the current release is refused alike (the stricter choice).
                raise AsyncError(400, "InvalidVersion", "Invalid Api version specified on URL")
            try:
                svc.check_session(request.headers.get("x-sfdc-session"))
            except ApiError:
                raise AsyncError(400, "InvalidSessionId", "Invalid session id") from None
            svc.count_call()
            try:
                svc.before_call()
            except ApiError as err:
                code = "ExceededQuota" if err.code == "REQUEST_LIMIT_EXCEEDED" else err.code
                raise AsyncError(err.status, code, err.message) from None
            ensure_schema(svc)
            response = handler(request, svc)
        except AsyncError as err:
            response = JSONResponse({"exceptionCode": err.code, "exceptionMessage": err.message},
                                    status_code=err.status)
        response.headers.update(svc.limit_header())
        return response

    return wrapped


def _body(request: Request):
    raw = request.scope.get("sandbox.body", b"")
    try:
        return json.loads(raw or b"null")
    except ValueError as exc:
        raise AsyncError(400, "InvalidBatch", f"Failed to parse JSON: {exc}") from None


def _job(conn, request: Request, *, lock: bool = False) -> dict:
    job = load_job(conn, request.path_params["job"], api="v1", lock=lock)
    if job is None:
        raise AsyncError(400, "InvalidJob", f"Invalid job id: {request.path_params['job']}")
    return job


def job_info(conn, job: dict) -> dict:
    counts = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE state = 'Completed'), count(*) FILTER (WHERE state = 'Failed'), "
        "coalesce(sum(processed), 0), coalesce(sum(failed), 0), coalesce(sum(processing_ms), 0) "
        "FROM bulk.batches WHERE job_id = %s", (job["id"],)).fetchone()
    total, completed, failed_batches, processed, failed, ms = (int(c) for c in counts)
    return {
        "apexProcessingTime": 0,
        "apiActiveProcessingTime": ms,
        "apiVersion": float(job["api_version"]),
        "assignmentRuleId": None,
        "concurrencyMode": job["concurrency"],
        "contentType": "JSON",
        "createdById": org.DEFAULT_OWNER,
        "createdDate": stamp(job["created_at"]),
        "externalIdFieldName": job["external_id"],
        "fastPathEnabled": False,
        "id": job["id"],
        "numberBatchesCompleted": completed,
        "numberBatchesFailed": failed_batches,
        "numberBatchesInProgress": 0,
        "numberBatchesQueued": 0,
        "numberBatchesTotal": total,
        "numberRecordsFailed": failed,
        "numberRecordsProcessed": processed,
        "numberRetries": 0,
        "object": job["object"],
        "operation": job["operation"],
        "state": job["state"],
        "systemModstamp": stamp(job["modstamp"]),
        "totalProcessingTime": ms,
    }


_BATCH_COLUMNS = ("id", "job_id", "state", "state_message", "created_at", "modstamp", "processed", "failed",
                  "processing_ms", "locator")


def _batch(conn, job: dict, batch_id: str) -> dict:
    row = conn.execute(f"SELECT {', '.join(_BATCH_COLUMNS)} FROM bulk.batches WHERE id = %s AND job_id = %s",
                       (batch_id[:18], job["id"])).fetchone()
    if row is None:
        raise AsyncError(400, "InvalidBatch", f"Invalid batch id: {batch_id}")
    return dict(zip(_BATCH_COLUMNS, row, strict=True))


def batch_info(batch: dict, *, state: str | None = None) -> dict:
    return {
        "apexProcessingTime": 0,
        "apiActiveProcessingTime": batch["processing_ms"],
        "createdDate": stamp(batch["created_at"]),
        "id": batch["id"].strip(),
        "jobId": batch["job_id"].strip(),
        "numberRecordsFailed": batch["failed"],
        "numberRecordsProcessed": batch["processed"],
        "state": state or batch["state"],
        "stateMessage": batch["state_message"],
        "systemModstamp": stamp(batch["modstamp"]),
        "totalProcessingTime": batch["processing_ms"],
    }


# ---------------------------------------------------------------------------------------------
# Jobs.


@async_call
def create_job(request: Request, svc: OrgService) -> Response:
    body = _body(request)
    if not isinstance(body, dict):
        raise AsyncError(400, "InvalidJob", "The job request must be a JSON object")
    operation = body.get("operation")
    if operation not in OPERATIONS:
        raise AsyncError(400, "InvalidJob", f"Invalid operation: {operation}")
    obj = svc.sobject(body.get("object") or "", request.path_params["ver"])
    if obj is None:
        raise AsyncError(400, "InvalidJob", f"Unable to find object: {body.get('object')}")
    if operation == "hardDelete" and (not svc.org.has("PermissionsBulkApiHardDelete")
                                      or svc.faults.take("hard_delete_denied")):
        # The user lacks "Bulk API Hard Delete" (see faults.py for the sources and the assumed status).
        raise AsyncError(400, faults.HARD_DELETE_DENIED_CODE_V1, faults.HARD_DELETE_DENIED_MESSAGE)
    if (body.get("contentType") or "JSON") != "JSON":
        raise AsyncError(400, "InvalidJob", f"Unsupported content type: {body.get('contentType')} (the sandbox "
                         "speaks JSON only)")
    mode = body.get("concurrencyMode", "Parallel")
    concurrency = "Serial" if mode in (1, "1", "Serial") else "Parallel"
    external = body.get("externalIdFieldName")
    if operation == "upsert":
        if not external:
            raise AsyncError(400, "InvalidJob", f"External ID was blank for {obj.name}. An External ID must be "
                             "specified for upsert.")
        if external.lower() != "id":
            raise AsyncError(400, "InvalidJob", f"Field {external} is not an External ID field on {obj.name}")
        external = "Id"
    with svc.pool.connection() as conn:
        bulk2.expire_jobs(conn)
        job_id = bulk2.new_id(conn)
        conn.execute(
            "INSERT INTO bulk.jobs (id, api, kind, operation, object, state, api_version, content_type, "
            "concurrency, external_id) VALUES (%s, 'v1', %s, %s, %s, 'Open', %s, 'JSON', %s, %s)",
            (job_id, "query" if operation in ("query", "queryAll") else "ingest", operation, obj.name,
             request.path_params["ver"], concurrency, external if operation == "upsert" else None),
        )
        info = job_info(conn, load_job(conn, job_id, api="v1"))
    return JSONResponse(info, status_code=201)


@async_call
def job(request: Request, svc: OrgService) -> Response:
    with svc.pool.connection() as conn:
        current = _job(conn, request, lock=request.method == "POST")
        if request.method == "POST":
            body = _body(request) or {}
            state = body.get("state") if isinstance(body, dict) else None
            allowed = {"Closed": ("Open",), "Aborted": ("Open", "Closed")}
            if current["state"] in allowed.get(state, ()):
                set_state(conn, current["id"], state)
            elif state not in ("Closed", "Aborted"):
                raise AsyncError(400, "InvalidJob", f"Invalid state: {state}")
            elif current["state"] != state:
                raise AsyncError(400, "InvalidJobState", f"Job {current['id']} is {current['state']}; it can't be "
                                 f"{state.lower()}")
            current = load_job(conn, current["id"], api="v1")
        return JSONResponse(job_info(conn, current))


# ---------------------------------------------------------------------------------------------
# Batches.


def _records_to_rows(records: list) -> tuple[list[str], list[list]]:
    """JSON records as header + rows: a missing key is 'not given', JSON null nulls the field."""
    columns: dict[str, None] = {}
    for rec in records:
        if not isinstance(rec, dict):
            raise ingest.JobError("InvalidBatch : Records must be JSON objects")
        for key in rec:
            if key != "attributes":
                columns.setdefault(key)
    names = list(columns)
    rows = [[(ingest.NULL_MARK if rec[k] is None else rec[k]) if k in rec else None for k in names]
            for rec in records]
    return names, rows


@async_call
def add_batch(request: Request, svc: OrgService) -> Response:
    raw = request.scope.get("sandbox.body", b"")
    started = time.monotonic()
    with svc.pool.connection() as conn:
        current = _job(conn, request, lock=True)
        if current["state"] != "Open":
            raise AsyncError(400, "InvalidJobState", f"Job {current['id']} is not open")
        obj = get_object(current["object"])
        batch_id = bulk2.new_id(conn, "751")
        conn.execute("INSERT INTO bulk.batches (id, job_id, state, request) VALUES (%s, %s, 'Queued', %s)",
                     (batch_id, current["id"], raw))
        # The 15,000 daily batches are "shared between Bulk API and Bulk API 2.0" (see sandbox.limits).
        svc.limits.consume("DailyBulkApiBatches")
        conn.commit()
        if current["kind"] == "query":
            state, message, counts = _run_query(conn, current, obj, raw, svc.resolver(current["api_version"]))
        else:
            state, message, counts = _run_dml(conn, svc, current, obj, batch_id, raw)
        conn.execute(
            "UPDATE bulk.batches SET state = %s, state_message = %s, processed = %s, failed = %s, locator = %s, "
            "processing_ms = %s, modstamp = clock_timestamp() WHERE id = %s",
            (state, message, counts[0], counts[1], counts[2], int((time.monotonic() - started) * 1000), batch_id))
        conn.execute("UPDATE bulk.jobs SET modstamp = clock_timestamp() WHERE id = %s", (current["id"],))
        batch = _batch(conn, current, batch_id)
    # Salesforce answers before the batch runs; clients poll for the outcome.
    return JSONResponse(batch_info(batch, state="Queued"), status_code=201)


def _run_dml(conn, svc: OrgService, job: dict, obj: SObject, batch_id: str, raw: bytes):
    try:
        records = json.loads(raw or b"null")
    except ValueError as exc:
        return "Failed", f"InvalidBatch : Failed to parse JSON: {exc}", (0, 0, None)
    if not isinstance(records, list):
        return "Failed", "InvalidBatch : The batch must be a JSON array of records", (0, 0, None)
    if len(records) > MAX_BATCH_RECORDS:
        return "Failed", f"InvalidBatch : Records in a single batch can't exceed {MAX_BATCH_RECORDS}", (0, 0, None)
    try:
        with conn.transaction():
            columns, rows = _records_to_rows(records)
            outcome = ingest.process(conn, obj, job["operation"], columns, rows, faults=svc.faults,
                                     external_id=job["external_id"] or "Id", edit_converted=svc.may_edit_converted())
            bulk2.save_rows(conn, job["id"], batch_id, outcome, keep_values=False)
    except ingest.JobError as err:
        return "Failed", err.message, (0, 0, None)
    return "Completed", None, (len(outcome), sum(1 for r in outcome if not r.success), None)


def _run_query(conn, job: dict, obj: SObject, raw: bytes, resolve_object):
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        compiled = soql.compile_query(text, include_deleted=job["operation"] == "queryAll",
                                      resolve_object=resolve_object)
        if compiled.count_only or compiled.offset is not None:
            raise soql.SoqlError("FUNCTIONALITY_NOT_ENABLED",
                                 ("COUNT()" if compiled.count_only else "OFFSET") + " is not supported in Bulk Query")
        if compiled.sobject.name != obj.name:
            raise soql.SoqlError("INVALID_TYPE", f"The query's object {compiled.sobject.name} doesn't match the "
                                 f"job's object {obj.name}")
        with conn.transaction():
            locator, total = results.materialize(conn, compiled, kind="bulk")
    except soql.SoqlError as err:
        return "Failed", f"InvalidBatch : Failed to process query: {err.error_code}: {err.message}", (0, 0, None)
    return "Completed", None, (total, 0, locator)


@async_call
def list_batches(request: Request, svc: OrgService) -> Response:
    with svc.pool.connection() as conn:
        current = _job(conn, request)
        rows = conn.execute("SELECT id FROM bulk.batches WHERE job_id = %s ORDER BY created_at", (current["id"],))
        batches = [batch_info(_batch(conn, current, r[0])) for r in rows.fetchall()]
    return JSONResponse({"batchInfo": batches})


@async_call
def batch(request: Request, svc: OrgService) -> Response:
    with svc.pool.connection() as conn:
        current = _job(conn, request)
        return JSONResponse(batch_info(_batch(conn, current, request.path_params["batch"])))


@async_call
def batch_request(request: Request, svc: OrgService) -> Response:
    with svc.pool.connection() as conn:
        current = _job(conn, request)
        _batch(conn, current, request.path_params["batch"])
        (raw,) = conn.execute("SELECT request FROM bulk.batches WHERE id = %s",
                              (request.path_params["batch"][:18],)).fetchone()
    media = "text/plain" if current["kind"] == "query" else "application/json"
    return Response(bytes(raw or b""), media_type=media)


def _result_id(batch_id: str) -> str:
    return ids.make_id("752", ids.serial_of(batch_id))


@async_call
def batch_result(request: Request, svc: OrgService) -> Response:
    with svc.pool.connection() as conn:
        current = _job(conn, request)
        info = _batch(conn, current, request.path_params["batch"])
        if info["state"] == "Failed":
            raise AsyncError(400, "InvalidBatch", f"Batch failed: {info['state_message']}")
        if current["kind"] == "query":
            return JSONResponse([_result_id(info["id"])] if info["locator"] else [])
        rows = conn.execute(
            "SELECT rtrim(record_id), success, created, err FROM bulk.rows WHERE job_id = %s AND batch_id = %s "
            "ORDER BY rn", (current["id"], info["id"])).fetchall()
    return JSONResponse([
        {"success": ok, "created": created, "id": rid if ok else None, "errors": [err] if err else []}
        for rid, ok, created, err in rows
    ])


def _epoch_ms(value) -> int:
    if isinstance(value, dt.datetime):
        return int((value - _EPOCH).total_seconds() * 1000)
    return int((dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC) - _EPOCH)
               .total_seconds() * 1000)


def _json_value(f, value):
    """Bulk 1.0 JSON renders dates and datetimes as epoch milliseconds."""
    if value is None:
        return None
    if f.type in ("datetime", "date"):
        return _epoch_ms(value)
    return org.json_value(f, value)


@async_call
def query_result(request: Request, svc: OrgService) -> Response:
    with svc.pool.connection() as conn:
        current = _job(conn, request)
        info = _batch(conn, current, request.path_params["batch"])
        if not info["locator"] or request.path_params["result"][:18] != _result_id(info["id"]):
            raise AsyncError(400, "InvalidBatch", f"Invalid result id: {request.path_params['result']}")
        cur = results.cursor(conn, info["locator"])
        if cur is None:
            raise AsyncError(400, "InvalidBatch", "The batch's results have expired")
        rows = results.read_rows(conn, cur, 0, cur["total"])
    obj = get_object(cur["sobject"])
    ver = current["api_version"]
    records = []
    for row in rows:
        rec: dict = {"attributes": {"type": obj.name, "url": ""}}
        for col, value in zip(cur["columns"], row, strict=True):
            if "." in col:
                rel, name = col.split(".", 1)
                ref = next(f for f in obj.fields if f.relationship_name == rel)
                parent = get_object(ref.reference_to[0])
                nested = rec.setdefault(rel, {"attributes": {"type": parent.name, "url": ""}})
                nested[name] = _json_value(parent.field(name), value)
            else:
                rec[col] = _json_value(obj.field(col), value)
                if col == "Id" and value:
                    rec["attributes"]["url"] = f"/services/data/v{ver}/sobjects/{obj.name}/{value.strip()}"
        for key, nested in list(rec.items()):
            if key != "attributes" and isinstance(nested, dict) and all(
                    v is None for k, v in nested.items() if k != "attributes"):
                rec[key] = None
        records.append(rec)
    return JSONResponse(records)


def routes() -> list[Route]:
    base = "/services/async/{ver}/job"
    return [
        Route(base, create_job, methods=["POST"]),
        Route(f"{base}/{{job}}", job, methods=["GET", "POST"]),
        Route(f"{base}/{{job}}/batch", add_batch, methods=["POST"]),
        Route(f"{base}/{{job}}/batch", list_batches, methods=["GET"]),
        Route(f"{base}/{{job}}/batch/{{batch}}", batch, methods=["GET"]),
        Route(f"{base}/{{job}}/batch/{{batch}}/request", batch_request, methods=["GET"]),
        Route(f"{base}/{{job}}/batch/{{batch}}/result", batch_result, methods=["GET"]),
        Route(f"{base}/{{job}}/batch/{{batch}}/result/{{result}}", query_result, methods=["GET"]),
    ]
