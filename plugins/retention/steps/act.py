"""act: delete, hard-delete or mask the originals in Salesforce through Bulk 2.0 ingest jobs, only for records
whose retained copy this run committed and validated, privacy holds and cascade children checked again just before.

Each record's outcome goes beside its retained row (``_action_status``): ``done``, ``refused`` (Salesforce will
never take it: kept retained, reported, not selected again), ``failed`` (retried), ``held``. A job's id is
committed beside its records before they are sent, so a retry after a crash at any point finds the job instead of
sending the records a second time.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import structlog
from psycopg import sql

from retention.cache import column, table
from retention.steps.results import Acted

if TYPE_CHECKING:
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


def act(store: RetentionStoreHook, sf: SalesforceBulk2Hook, policy: Policy, run: Run, extracted: Extracted, *,
        mask_key: bytes | None = None) -> Acted:
    """The step. ``mask_key``: the keyed-hash secret for masks (None: a one-off key, with a warning)."""
    from retention import cascade
    from retention.steps.run import active_holds

    out = Acted()
    operations = _collect_earlier_jobs(store, sf, policy, run, out)
    ids = pending_ids(store, policy, run)
    if policy.select.exclude_privacy_holds and ids:
        held = active_holds(sf)
        out.held_at_action = sorted(set(ids) & held)
        if policy.cascade:
            with store.connect() as conn:
                out.held_at_action = sorted({*out.held_at_action,
                                             *cascade.held_via_children(conn, policy, run, ids, held)})
    if out.held_at_action:
        log.warning("%d records came under a privacy hold since extract (themselves or a child); they are kept and "
                    "not touched", len(out.held_at_action))
        mark(store, policy, run, out.held_at_action, "held")
        ids = [i for i in ids if i not in set(out.held_at_action)]
    if ids and (policy.cascade or extracted.cascade_relations):
        # Children can be added between extract and now; a delete would take them unretained.
        with store.connect() as conn:
            changed = cascade.children_changed(conn, sf, policy, run, extracted.cascade_relations,
                                               extracted.date_type, ids)
        for parent, reason in changed.items():
            mark(store, policy, run, [parent], "failed", error=reason)
        if changed:
            log.warning("%d records keep their children this time (e.g. %s); the next run retains the children "
                        "first", len(changed), next(iter(changed.values())))
        ids = [i for i in ids if i not in changed]
    if ids:
        operations.append(_submit(store, sf, policy, run, extracted, ids, mask_key, out))
    if policy.cascade:
        with store.connect() as conn:
            cascade.follow_parents(conn, policy, run)
    log.info("%s: %d done, %d refused, %d failed in Salesforce, %d newly held", run.run_key, out.done, out.refused,
             out.failed, len(out.held_at_action))
    used = sorted(set(operations))
    out.operation_used = ",".join(used) or None
    out.hard_delete_fallback = policy.action == "hard_delete" and "delete" in used
    return out


def _collect_earlier_jobs(store: RetentionStoreHook, sf: SalesforceBulk2Hook, policy: Policy, run: Run,
                          out: Acted) -> list[str]:
    """Settle the jobs an earlier attempt left behind; returns the operations they performed.

    One still Open never got its records (the attempt died before closing it): abort it and let its records go out
    again. One that stopped part way (Failed, or Aborted after it started) keeps what it did ("Changes made by a
    job that fails or is aborted aren't rolled back"): record that, and let only the records it did not reach go
    out again. Any other was submitted: collect its outcome, never submit those records a second time.
    """
    operations: list[str] = []
    for job_id, status in unfinished_jobs(store, policy, run):
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
            ids: list[str], mask_key: bytes | None, out: Acted) -> str:
    """One ingest job for ``ids``; returns the operation it performed."""
    from retention.hooks.salesforce_bulk import HardDeleteNotPermitted, to_csv
    from retention.masking import to_bulk_csv_value

    operation = ACTION_OPERATION[policy.action]
    if policy.action == "mask":
        records = _masked(store, policy, run, extracted, ids, mask_key, _lengths(sf, policy))
        save_sent(store, run, records)
        fields = list(policy.mask)
        csv_text = to_csv(["Id", *fields], ([r["Id"], *(to_bulk_csv_value(r.get(f)) for f in fields)]
                                            for r in records))
    else:
        csv_text = to_csv(["Id"], ([i] for i in ids))
    try:
        job_id = sf.create_ingest(policy.object, operation)
    except HardDeleteNotPermitted:
        log.warning("hard delete not permitted for this user; falling back to delete (records go to the recycle bin)")
        operation = "delete"
        job_id = sf.create_ingest(policy.object, operation)
    # The job id is committed beside the records before they are sent, so a retry after a crash at any point below
    # finds the job instead of sending the records again.
    mark(store, policy, run, ids, "submitting", job_id=job_id)
    sf.upload_and_close(policy.object, job_id, csv_text)
    mark(store, policy, run, ids, "submitted", job_id=job_id)
    log.info("%s: Bulk 2.0 %s job %s submitted for %d records", run.run_key, operation, job_id, len(ids))
    sf.wait(policy.object, job_id)
    _add(out, record_outcomes(store, policy, run, job_id, sf.outcomes(policy.object, job_id)))
    out.bulk_job_ids.append(job_id)
    return operation


def _add(out: Acted, more: dict[str, int]) -> None:
    out.done += more.get("done", 0)
    out.refused += more.get("refused", 0)
    out.failed += more.get("failed", 0)


def _lengths(sf: SalesforceBulk2Hook, policy: Policy) -> dict[str, int]:
    """The masked fields' lengths from describe: a hash or pseudonym must be cut to the field, or Salesforce refuses
    the whole record (STRING_TOO_LONG), as the describe check at extract promised it would be."""
    fields = {f.lower() for f in policy.mask or {}}
    return {f["name"]: f["length"] for f in sf.describe_object(policy.object).get("fields", [])
            if f["name"].lower() in fields and f.get("length")}


def _masked(store: RetentionStoreHook, policy: Policy, run: Run, extracted: Extracted, ids: list[str],
            key: bytes | None, lengths: dict[str, int]) -> list[dict]:
    from retention.masking import Masker

    if key is None:
        log.warning("no masking key configured (connection 'retention_hash_key'); using a one-off key, so "
                    "pseudonyms and hashes will differ between runs")
        key = os.urandom(32)
    masker = Masker({f: (s.strategy, s.options) for f, s in policy.mask.items()}, extracted.field_types, key,
                    field_lengths=lengths)
    originals = staged_records(store, run, ids, list(policy.mask))
    return [{"Id": r["Id"], **masker.mask_record(r)} for r in originals]


# ------------------------------------------------------------------------------ the records' action statuses


def pending_ids(store: RetentionStoreHook, policy: Policy, run: Run) -> list[str]:
    with store.connect() as conn:
        rows = conn.execute(
            sql.SQL("SELECT c.sfid FROM {} c JOIN {} s USING (sfid) WHERE c._retention_run = %s "
                    "AND c._action_status = 'pending' ORDER BY 1").format(
                table(policy.retain.table), run.staging), (run.run_key,)).fetchall()
    return [r[0] for r in rows]


def unfinished_jobs(store: RetentionStoreHook, policy: Policy, run: Run) -> list[tuple[str, str]]:
    """(job id, status) of Bulk jobs an earlier attempt created (``submitting``) or closed (``submitted``)
    without recording their outcome: a crash or a timeout between the steps."""
    with store.connect() as conn:
        rows = conn.execute(
            sql.SQL("SELECT DISTINCT _bulk_job_id, _action_status FROM {} WHERE _retention_run = %s "
                    "AND _action_status IN ('submitting', 'submitted')")
            .format(table(policy.retain.table)), (run.run_key,)).fetchall()
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
    stopped part way), which go out again instead."""
    done: list[str] = []
    others: list[tuple[str, str, str]] = []
    for o in outcomes:
        if processed_only and (o.error or "").startswith("UNPROCESSED:"):
            continue
        status = outcome_status(policy, o)
        if status == "done":
            done.append(o.record_id)
        else:
            others.append((status, o.error, o.record_id))
    target = table(policy.retain.table)
    with store.connect() as conn:
        conn.execute(sql.SQL("UPDATE {} SET _action_status = 'done', _action_error = NULL, _action_at = now(), "
                             "_bulk_job_id = %s WHERE sfid = ANY(%s)").format(target), (job_id, done))
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL("UPDATE {} SET _action_status = %s, _action_error = %s, _action_at = now(), "
                        "_bulk_job_id = %s WHERE sfid = %s").format(target),
                [(status, error, job_id, record_id) for status, error, record_id in others])
    return {"done": len(done), "refused": sum(1 for s, _, _ in others if s == "refused"),
            "failed": sum(1 for s, _, _ in others if s == "failed")}


def staged_records(store: RetentionStoreHook, run: Run, ids: list[str], fields: list[str]) -> list[dict]:
    cols = sql.SQL(", ").join([sql.Identifier("sfid"), *(column(f) for f in fields)])
    with store.connect() as conn:
        rows = conn.execute(sql.SQL("SELECT {} FROM {} WHERE sfid = ANY(%s) ORDER BY sfid").format(cols, run.staging),
                            (ids,)).fetchall()
    return [{"Id": r[0], **dict(zip(fields, r[1:], strict=True))} for r in rows]


def save_sent(store: RetentionStoreHook, run: Run, records: list[dict]) -> None:
    """Keep what was sent to Salesforce, so the confirm step can check the org holds exactly that."""
    with store.connect() as conn:
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (sfid varchar(18) PRIMARY KEY, sent jsonb NOT NULL)")
                     .format(run.sent))
        with conn.cursor() as cur:
            cur.executemany(sql.SQL("INSERT INTO {} VALUES (%s, %s) ON CONFLICT (sfid) DO UPDATE SET sent = "
                                    "excluded.sent").format(run.sent),
                            [(r["Id"], json.dumps({k: v for k, v in r.items() if k != "Id"}, default=str))
                             for r in records])
