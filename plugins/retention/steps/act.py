"""act: delete, hard-delete or mask the originals in Salesforce through Bulk 2.0 ingest jobs, only for records
whose retained copy this run committed and validated, privacy holds and cascade children checked again just before.

Each record's outcome goes beside its retained row (``_action_status``): ``done``, ``refused`` (Salesforce will
never take it: kept retained, reported, not selected again), ``failed`` (retried), ``held``. A job's id is
committed beside its records before they are sent, so a retry after a crash at any point finds the job instead of
sending the records a second time.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

import structlog
from psycopg import sql

from retention.cache import column, table
from retention.masking import Masker, to_bulk_csv_value
from retention.steps.results import Acted, Chunk

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook
    from retention.hooks.store import RetentionStoreHook
    from retention.policy import Policy
    from retention.steps.results import Extracted
    from retention.steps.run import Run

# Airflow's own logging (structlog): lines land in the task's log, as an operator's self.log would.
log = structlog.get_logger(__name__)

ACTION_OPERATION = {"delete": "delete", "hard_delete": "hardDelete", "mask": "update"}
# Per-record errors meaning the record is already in the state we want (e.g. a retry after the job
# ran): the action is done, not failed.
ALREADY_DONE = {"delete": ("ENTITY_IS_DELETED",), "hard_delete": ("ENTITY_IS_DELETED",), "mask": ()}
# Per-record refusals no retry changes: Salesforce refuses the record the same way until a person changes the
# record or the org (a converted lead is read only; a record in use by another cannot be deleted; a validation
# rule or the user's access says no). They become `refused`: kept retained, reported with the code, never
# selected again, a warning rather than a failed run. Every other code (UNABLE_TO_LOCK_ROW,
# API_TEMPORARILY_UNAVAILABLE, one not known here) stays `failed`: the run fails and the record is retried.
PERMANENT_REFUSALS = frozenset({
    "CANNOT_UPDATE_CONVERTED_LEAD", "DELETE_FAILED", "DELETE_REQUIRED_ON_CASCADE", "INSUFFICIENT_ACCESS_OR_READONLY",
    "FIELD_CUSTOM_VALIDATION_EXCEPTION",
})


def act(store: RetentionStoreHook, sf: SalesforceBulk2Hook, policy: Policy, run: Run, extracted: Extracted,
        chunk: Chunk | None = None, *, mask_key: bytes | None = None) -> Acted:
    """The step, for the records of one ``chunk`` (None: all of the run's). ``mask_key``: the keyed-hash secret for
    masks (None: a one-off key, with a warning)."""
    from retention import cascade
    from retention.steps.run import active_holds

    chunk = chunk or Chunk(index=0)
    out = Acted()
    operations = _collect_earlier_jobs(store, sf, policy, run, chunk, out)
    # The chunk's pending records stay in the store (a query, never a list): a chunk of a quarter of a million
    # records costs the worker no more memory than one of a hundred.
    pending = pending_records(policy, run, chunk)
    waiting = pending_count(store, policy, run, chunk)
    if policy.select.exclude_privacy_holds and waiting:
        held = active_holds(sf)
        with store.connect() as conn:
            out.held_at_action = sorted(r[0] for r in conn.execute(
                sql.SQL("SELECT p.sfid FROM ({}) p WHERE p.sfid = ANY(%s)").format(pending.query),
                (*pending.params, sorted(held))))
            if policy.cascade:
                out.held_at_action = sorted({*out.held_at_action,
                                             *cascade.held_via_children(conn, policy, run, pending, held)})
    if out.held_at_action:
        log.warning("%d records came under a privacy hold since extract (themselves or a child); they are kept and "
                    "not touched", len(out.held_at_action))
        mark(store, policy, run, out.held_at_action, "held")
        waiting -= len(out.held_at_action)
    if waiting and (policy.cascade or extracted.cascade_relations):
        # Children can be added between extract and now; a delete would take them unretained.
        with store.connect() as conn:
            changed = cascade.children_changed(conn, sf, policy, run, extracted.cascade_relations,
                                               extracted.date_type, pending)
        for parent, reason in changed.items():
            mark(store, policy, run, [parent], "failed", error=reason)
        if changed:
            log.warning("%d records keep their children this time (e.g. %s); the next run retains the children "
                        "first", len(changed), next(iter(changed.values())))
        waiting -= len(changed)
    if waiting:
        operations += _submit(store, sf, policy, run, extracted, chunk, mask_key, out)
    if policy.cascade:
        with store.connect() as conn:
            cascade.follow_parents(conn, policy, run)
    log.info("%s chunk %d: %d done, %d refused, %d failed in Salesforce, %d newly held", run.run_key, chunk.index,
             out.done, out.refused, out.failed, len(out.held_at_action))
    used = sorted(set(operations))
    out.operation_used = ",".join(used) or None
    out.hard_delete_fallback = policy.action == "hard_delete" and "delete" in used
    return out


def _collect_earlier_jobs(store: RetentionStoreHook, sf: SalesforceBulk2Hook, policy: Policy, run: Run,
                          chunk: Chunk, out: Acted) -> list[str]:
    """Settle the jobs an earlier attempt left behind; returns the operations they performed.

    One still Open never got its records (the attempt died before closing it): abort it and let its records go out
    again. One that stopped part way (Failed, or Aborted after it started) keeps what it did ("Changes made by a
    job that fails or is aborted aren't rolled back"): record that, and let only the records it did not reach go
    out again. Any other was submitted: collect its outcome, never submit those records a second time.
    """
    operations: list[str] = []
    for job_id, status in unfinished_jobs(store, policy, run, chunk):
        state = sf.job_state(policy.object, job_id)
        if status == "submitting" and state == "Open":
            log.info("job %s of an earlier attempt was never closed; aborting it and resubmitting", job_id)
            sf.abort(policy.object, job_id)
            release_job(store, policy, run, job_id)
            continue
        if state in ("Failed", "Aborted"):
            reported = record_outcomes(store, policy, run, job_id, sf.outcomes(policy.object, job_id),
                                       processed_only=True)
            released = release_job(store, policy, run, job_id)
            log.warning("job %s of an earlier attempt ended %s part way: %d records it processed are recorded, %d it "
                        "did not reach go out again", job_id, state, sum(reported.values()), released)
            _add(out, reported)
            if sum(reported.values()):  # it acted on some: it is part of the run's evidence
                out.bulk_job_ids.append(job_id)
                operations.append(ACTION_OPERATION[policy.action])
            continue
        log.info("collecting the outcome of job %s submitted by an earlier attempt", job_id)
        info = sf.wait(policy.object, job_id)
        _add(out, record_outcomes(store, policy, run, job_id, sf.outcomes(policy.object, job_id)))
        out.bulk_job_ids.append(job_id)
        operations.append(info.get("operation") or ACTION_OPERATION[policy.action])
    return operations


def _submit(store: RetentionStoreHook, sf: SalesforceBulk2Hook, policy: Policy, run: Run, extracted: Extracted,
            chunk: Chunk, mask_key: bytes | None, out: Acted) -> list[str]:
    """Ingest jobs for the chunk's pending records, each within Salesforce's upload limit; returns the operations
    they performed."""
    from retention.hooks import salesforce_bulk

    operation = ACTION_OPERATION[policy.action]
    operations = []
    limit = sf.upload_max_bytes or salesforce_bulk.INGEST_UPLOAD_MAX_BYTES
    uploads = (_masked_uploads(store, policy, run, extracted, chunk, mask_key, limit) if policy.action == "mask"
               else _id_uploads(store, policy, run, chunk, limit))
    # Closed on the way out, error or not: the uploads hold a store connection open while they are read.
    with contextlib.closing(uploads):
        for upload in uploads:
            operations.append(_send(store, sf, policy, run, upload, operation, out))
            operation = operations[-1]
    return operations


def _send(store: RetentionStoreHook, sf: SalesforceBulk2Hook, policy: Policy, run: Run, upload: Upload,
          operation: str, out: Acted) -> str:
    """One ingest job for ``upload``, its outcome recorded; returns the operation it performed."""
    from retention.hooks.salesforce_bulk import HardDeleteNotPermitted

    try:
        job_id = sf.create_ingest(policy.object, operation)
    except HardDeleteNotPermitted:
        log.warning("hard delete not permitted for this user; falling back to delete (records go to the recycle "
                    "bin)")
        operation = "delete"
        job_id = sf.create_ingest(policy.object, operation)
    # The job id is committed beside the records before they are sent, so a retry after a crash at any point
    # below finds the job instead of sending the records again.
    mark_upload(store, sf, policy, run, upload, job_id)
    sf.upload_and_close(policy.object, job_id, upload.body)
    mark_submitted(store, policy, run, upload, job_id)
    log.info("%s: Bulk 2.0 %s job %s submitted for %d records (%d bytes)", run.run_key, operation, job_id,
             upload.records, upload.size)
    sf.wait(policy.object, job_id, records=upload.records)
    _add(out, record_outcomes(store, policy, run, job_id, sf.outcomes(policy.object, job_id)))
    out.bulk_job_ids.append(job_id)
    return operation


@dataclass
class Upload:
    """One ingest job's CSV, spooled to a temporary file: the pending records of the chunk from ``first`` to
    ``last`` (their sfids, in order), ``records`` of them, ``size`` bytes."""

    first: str
    last: str
    records: int
    size: int
    body: BinaryIO


def _id_uploads(store: RetentionStoreHook, policy: Policy, run: Run, chunk: Chunk, limit: int) -> Iterator[Upload]:
    """``Id`` CSV uploads of the chunk's pending records, each of at most ``limit`` bytes."""
    pending = pending_records(policy, run, chunk)
    with store.connect() as reader:
        rows = reader.cursor(name="retention_pending_ids")
        rows.itersize = 10_000
        rows.execute(sql.SQL("{} ORDER BY 1").format(pending.query), pending.params)
        yield from _uploads(b"Id\n", ((r[0], f"{r[0]}\n".encode()) for r in rows), limit)


def _uploads(header: bytes, lines: Iterable[tuple[str, bytes]], limit: int) -> Iterator[Upload]:
    """Uploads of at most ``limit`` bytes each, from (id, CSV line) pairs in Id order, each spooled to a temporary
    file that is closed once the next is asked for (a job's CSV is never held in memory)."""
    lines = iter(lines)
    ahead = next(lines, None)
    while ahead is not None:
        with tempfile.TemporaryFile() as body:
            body.write(header)
            first, size, records = ahead[0], len(header), 0
            while ahead is not None:
                record_id, line = ahead
                if records and size + len(line) > limit:
                    break
                body.write(line)
                size, records, last = size + len(line), records + 1, record_id
                ahead = next(lines, None)
            body.seek(0)
            yield Upload(first, last, records, size, body)


def _masked_uploads(store: RetentionStoreHook, policy: Policy, run: Run, extracted: Extracted, chunk: Chunk,
                    key: bytes | None, limit: int) -> Iterator[Upload]:
    """The masked values of the chunk's pending records as CSV uploads within the limit, streamed from the staged
    rows (a server-side cursor: never all in memory). What an upload sends is committed beside the run first (its
    ``sent`` table), so confirm can check the org holds exactly that."""
    if key is None:
        log.warning("no masking key configured (connection 'retention_hash_key'); using a one-off key, so "
                    "pseudonyms and hashes will differ between runs")
        key = os.urandom(32)
    fields = list(policy.mask)
    masker = Masker({f: (s.strategy, s.options) for f, s in policy.mask.items()}, extracted.field_types, key,
                    field_lengths=extracted.field_lengths)
    pending = pending_records(policy, run, chunk)
    cols = sql.SQL(", ").join([sql.SQL("s.sfid"), *(sql.SQL("s.{}").format(column(f)) for f in fields)])
    sent: list[tuple[str, str]] = []  # masked so far and not yet kept

    def lines(rows) -> Iterator[tuple[str, bytes]]:
        for row in rows:
            kept, line = masked_line(masker, fields, row)
            sent.append((row[0], kept))
            if len(sent) >= SENT_BATCH:  # into the writer's transaction, committed with the upload's last ones
                _copy_sent(writer, run, sent)
            yield row[0], line

    with store.connect() as reader, store.connect() as writer:
        # A run's chunks act at once, and two CREATE TABLE IF NOT EXISTS at once can both try to create the table
        # (a unique violation in Postgres's catalog): the first to take the lock creates it, the others find it.
        writer.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (run.sent.as_string(writer),))
        writer.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (sfid varchar(18) PRIMARY KEY, sent jsonb NOT NULL)")
                       .format(run.sent))
        # Records sent again (their earlier job never got them) replace what was kept for them.
        writer.execute(sql.SQL("DELETE FROM {} t USING ({}) p WHERE t.sfid = p.sfid").format(run.sent, pending.query),
                       pending.params)
        writer.commit()
        rows = reader.cursor(name="retention_masked_rows")
        rows.itersize = 10_000
        rows.execute(sql.SQL("SELECT {} FROM {} s JOIN ({}) p ON p.sfid = s.sfid ORDER BY s.sfid").format(
            cols, run.staging, pending.query), pending.params)
        for upload in _uploads(_csv_line(["Id", *fields]), lines(rows), limit):
            _copy_sent(writer, run, sent)  # the upload's records (and perhaps the next one's first: harmless)
            writer.commit()
            yield upload


# Masked values kept per COPY into the run's sent table: bounds the worker's memory whatever the upload's size.
SENT_BATCH = 10_000


def masked_line(masker: Masker, fields: list[str], row: tuple) -> tuple[str, bytes]:
    """One staged row ``(sfid, *values of fields)`` masked: what is kept as sent (JSON) and its Bulk CSV line. The
    act's own work per record of a mask (bench/test_bench_masking.py measures it)."""
    masked = masker.mask_record({"Id": row[0], **dict(zip(fields, row[1:], strict=True))})
    return (json.dumps({f: masked.get(f) for f in fields}, default=str),
            _csv_line([row[0], *(to_bulk_csv_value(masked.get(f)) for f in fields)]))


def _copy_sent(conn, run: Run, sent: list[tuple[str, str]]) -> None:
    """Copy ``sent`` into the run's sent table in ``conn``'s transaction, and empty it."""
    with conn.cursor().copy(sql.SQL("COPY {} (sfid, sent) FROM STDIN").format(run.sent)) as copy:
        for item in sent:
            copy.write_row(item)
    sent.clear()


def _csv_line(values: list) -> bytes:
    """One Bulk 2.0 CSV line (RFC 4180 quoting, LF line ending)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue().encode()


def _add(out: Acted, more: dict[str, int]) -> None:
    out.done += more.get("done", 0)
    out.refused += more.get("refused", 0)
    out.failed += more.get("failed", 0)


# ------------------------------------------------------------------------------ the records' action statuses


def in_chunk(chunk: Chunk, name: sql.Composable = sql.Identifier("sfid")) -> tuple[sql.Composable, list[str]]:
    """SQL (and its parameters) true for the sfids of ``chunk``."""
    clauses, params = [sql.SQL("true")], []
    if chunk.after is not None:
        clauses.append(sql.SQL("{} > %s").format(name))
        params.append(chunk.after)
    if chunk.upto is not None:
        clauses.append(sql.SQL("{} <= %s").format(name))
        params.append(chunk.upto)
    return sql.SQL(" AND ").join(clauses), params


@dataclass
class Pending:
    """SQL selecting the sfids of a chunk's records still to act on (``pending``), and its parameters."""

    query: sql.Composable
    params: list


def pending_records(policy: Policy, run: Run, chunk: Chunk, *, between: tuple[str, str] | None = None) -> Pending:
    """The chunk's records staged by this run and not yet acted on (``between``: only those from the first sfid to
    the second)."""
    within, params = in_chunk(chunk, sql.Identifier("c", "sfid"))
    if between:
        within = sql.SQL("{} AND c.sfid BETWEEN %s AND %s").format(within)
        params += list(between)
    return Pending(sql.SQL("SELECT c.sfid FROM {} c JOIN {} s USING (sfid) WHERE c._retention_run = %s "
                           "AND c._action_status = 'pending' AND {}").format(
                               table(policy.retain.table), run.staging, within), [run.run_key, *params])


def pending_count(store: RetentionStoreHook, policy: Policy, run: Run, chunk: Chunk) -> int:
    pending = pending_records(policy, run, chunk)
    with store.connect() as conn:
        return conn.execute(sql.SQL("SELECT count(*) FROM ({}) p").format(pending.query), pending.params).fetchone()[0]


def unfinished_jobs(store: RetentionStoreHook, policy: Policy, run: Run, chunk: Chunk) -> list[tuple[str, str]]:
    """(job id, status) of the chunk's Bulk jobs an earlier attempt created (``submitting``) or closed
    (``submitted``) without recording their outcome: a crash or a timeout between the steps."""
    within, params = in_chunk(chunk)
    with store.connect() as conn:
        rows = conn.execute(
            sql.SQL("SELECT DISTINCT _bulk_job_id, _action_status FROM {} WHERE _retention_run = %s "
                    "AND _action_status IN ('submitting', 'submitted') AND {}")
            .format(table(policy.retain.table), within), (run.run_key, *params)).fetchall()
    return [(r[0], r[1]) for r in rows]


def release_job(store: RetentionStoreHook, policy: Policy, run: Run, job_id: str) -> int:
    """The records of a job that never got them, or that stopped part way without reporting them (those it
    reported were recorded first), are pending again."""
    with store.connect() as conn:
        return conn.execute(sql.SQL("UPDATE {} SET _action_status = 'pending', _bulk_job_id = NULL WHERE "
                                    "_bulk_job_id = %s AND _retention_run = %s AND _action_status IN "
                                    "('submitting', 'submitted')").format(
            table(policy.retain.table)), (job_id, run.run_key)).rowcount


def mark(store: RetentionStoreHook, policy: Policy, run: Run, ids: list[str], status: str, *,
         job_id: str | None = None, error: str | None = None) -> None:
    if not ids:
        return
    with store.connect() as conn:
        conn.execute(
            sql.SQL("UPDATE {} SET _action_status = %s, _bulk_job_id = coalesce(%s, _bulk_job_id), "
                    "_action_error = %s, _action_at = now() WHERE sfid = ANY(%s) AND _retention_run = %s").format(
                table(policy.retain.table)), (status, job_id, error, ids, run.run_key))


def mark_upload(store: RetentionStoreHook, sf: SalesforceBulk2Hook, policy: Policy, run: Run, upload: Upload,
                job_id: str) -> None:
    """The upload's records are ``submitting`` in ``job_id``, committed before a byte is sent: the chunk's pending
    records from its first to its last sfid, which must be exactly the ones it holds. If they are not (something
    else changed the chunk's records meanwhile), nothing is marked, the empty job is aborted and the step fails."""
    pending = pending_records(policy, run, Chunk(index=0), between=(upload.first, upload.last))
    with store.connect() as conn:
        marked = conn.execute(
            sql.SQL("UPDATE {} SET _action_status = 'submitting', _bulk_job_id = %s, _action_error = NULL, "
                    "_action_at = now() WHERE _retention_run = %s AND sfid IN ({})").format(
                table(policy.retain.table), pending.query), (job_id, run.run_key, *pending.params)).rowcount
        if marked != upload.records:
            conn.rollback()
            sf.abort(policy.object, job_id)
            raise RuntimeError(f"{run.run_key}: {marked} pending records from {upload.first} to {upload.last}, but "
                               f"the upload for job {job_id} holds {upload.records}; the job was aborted and nothing "
                               "was sent (did another process change this run's records?)")


def mark_submitted(store: RetentionStoreHook, policy: Policy, run: Run, upload: Upload, job_id: str) -> None:
    with store.connect() as conn:
        conn.execute(sql.SQL("UPDATE {} SET _action_status = 'submitted', _action_at = now() WHERE _retention_run = %s "
                             "AND _bulk_job_id = %s AND _action_status = 'submitting' AND sfid BETWEEN %s AND %s")
                     .format(table(policy.retain.table)), (run.run_key, job_id, upload.first, upload.last))


def outcome_status(policy: Policy, outcome) -> str:
    """done, refused (Salesforce will never take it: see PERMANENT_REFUSALS) or failed (retried)."""
    code = (outcome.error or "").split(":", 1)[0]
    if outcome.success or code in ALREADY_DONE[policy.action]:
        return "done"
    return "refused" if code in PERMANENT_REFUSALS else "failed"


def record_outcomes(store: RetentionStoreHook, policy: Policy, run: Run, job_id: str, outcomes, *,
                    processed_only: bool = False) -> dict[str, int]:
    """Write each record's outcome beside its retained row; refused and failed records stay retained and are
    reported with Salesforce's code. ``processed_only``: leave out the rows the job never reached (a job that
    stopped part way), which go out again instead. The outcomes are copied into the store as they are read (a
    quarter of a million per job), then written in one statement, in one transaction."""
    counts = {"done": 0, "refused": 0, "failed": 0}
    landed = sql.Identifier("retention_outcomes")
    with store.connect() as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(landed))
        conn.execute(sql.SQL("CREATE TEMP TABLE {} (sfid varchar(18) NOT NULL, status text NOT NULL, error text) "
                             "ON COMMIT DROP").format(landed))
        with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(landed)) as copy:
            for o in outcomes:
                if processed_only and (o.error or "").startswith("UNPROCESSED:"):
                    continue
                status = outcome_status(policy, o)
                counts[status] += 1
                copy.write_row((o.record_id, status, None if status == "done" else o.error))
        conn.execute(sql.SQL("ANALYZE {}").format(landed))  # planned on its real size, not a guess
        conn.execute(sql.SQL("UPDATE {} c SET _action_status = o.status, _action_error = o.error, _action_at = now(), "
                             "_bulk_job_id = %s FROM {} o WHERE c.sfid = o.sfid").format(
            table(policy.retain.table), landed), (job_id,))
    return counts
