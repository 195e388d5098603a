"""confirm: check in Salesforce that the acted records are deleted or masked, append the run's evidence to the
ledger, wait until the Connect mirror shows it, and drop the run's working tables."""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING

import structlog
from psycopg import sql

from retention import cascade
from retention.cache import analyze, column, table, table_exists
from retention.hooks.store import MIRROR_SCHEMA
from retention.steps.results import Reported, Task
from retention.steps.run import RetentionError, release

if TYPE_CHECKING:
    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook
    from retention.hooks.store import RetentionStoreHook
    from retention.policy import Policy
    from retention.steps.results import Acted, Extracted, Validated, Verified
    from retention.steps.run import Run

# Airflow's own logging (structlog): lines land in the task's log, as an operator's self.log would.
log = structlog.get_logger(__name__)

class MirrorBehind(Exception):
    """Heroku Connect's mirror has not shown the changes yet: worth a retry later (Airflow's retries), unlike a
    RetentionError. Salesforce is already changed; the run's working tables stay until a retry reports it."""


# What the action did, as the ledger's message and the errors say it.
DONE_VERB = {"delete": "deleted", "hard_delete": "hard-deleted", "mask": "masked"}


def confirm(store: RetentionStoreHook, sf: SalesforceBulk2Hook, policy: Policy, run: Run, extracted: Extracted,
            validated: Validated | None, acted: Acted | None, verified: list[Verified], *, mirror_timeout: float,
            poll_interval: float) -> Reported:
    """The step, after every chunk was acted on and read back from the org (``verified``): a record reported done
    but not so in the org stops the run (its retained row is kept); any failed record fails it after the ledger row
    is written, as does a mirror that stays behind (retried)."""
    from retention.steps.results import Acted

    with store.connect() as conn:
        reported = _reported(conn, run)
        dropped = not table_exists(conn, run.staging)
    if reported is not None and dropped:  # an attempt got as far as dropping the working tables: nothing is left
        release(store, run)
        if reported.status != "succeeded":
            raise RetentionError(reported.message)
        return reported
    acted = acted or Acted()
    with store.connect() as conn:
        # The act moved every record from pending to done since load's statistics: planned on those, the checks
        # below (this execution's records, the mirror's values against those sent) ran by nested loops for minutes.
        analyze(conn, table(policy.retain.table), run.sent)
    # Jobs an earlier, unreported execution of the run settled (a chunk done before a crash, then the run cleared)
    # are this execution's evidence too, and stay so once its ledger row lists them (a retry waits for them).
    acted.bulk_job_ids = list(dict.fromkeys([*acted.bulk_job_ids, *unclaimed_jobs(store, policy, run)]))
    if policy.cascade:
        with store.connect() as conn:
            cascade.follow_parents(conn, policy, run)  # again: a crash may have come between
            children = cascade.summary(conn, policy, run)
    else:
        children = {}
    summary = action_counts(store, policy, run, acted.bulk_job_ids)
    done = summary.get("done", 0)
    if reported is None:
        reported = _report(store, sf, policy, run, extracted, validated, acted, summary, verified, children)
    else:  # a retry after the ledger row was written: that row is the run's evidence
        log.info("ledger row %d already holds DAG run %s: %s", reported.ledger_id, run.dag_run_id,
                 reported.message)
    # The ledger row holds what the org confirmed before the mirror is waited for: Salesforce is already changed,
    # so its evidence must not wait on Connect. A mirror that stays behind fails the attempt; the retry finds the
    # row and only waits again.
    deadline = time.monotonic() + mirror_timeout
    while done and not (mirror_reflects(store, policy, run, acted.bulk_job_ids) and all(
            mirror_shows_gone(store, child.object, cascade.done_query(policy, run, n))
            for n, child in enumerate(policy.cascade))):
        if time.monotonic() > deadline:
            raise MirrorBehind(
                f"Heroku Connect's mirror did not reflect the {done} {DONE_VERB[policy.action]} records within "
                f"{mirror_timeout:.0f}s; Salesforce is already changed and ledger row {reported.ledger_id} records "
                "it: the task retries, or clear confirm_and_report later")
        time.sleep(poll_interval)
    refused = first_refused(store, policy, run, acted.bulk_job_ids) if summary.get("refused") else None
    drop_staging(store, run, policy)
    release(store, run)  # the next run of the policy may start
    if refused:
        sfid, error = refused
        log.warning("%d records were refused by Salesforce for good (e.g. %s: %s); they stay retained and are not "
                    "selected again", summary["refused"], sfid, error)
    if reported.status != "succeeded":
        raise RetentionError(reported.message)
    return reported


def _report(store: RetentionStoreHook, sf: SalesforceBulk2Hook, policy: Policy, run: Run, extracted: Extracted,
            validated: Validated | None, acted: Acted, summary: dict[str, int], verified: list[Verified],
            children: dict) -> Reported:
    """Check the org showed every record reported done as acted on (each chunk's verify, and the children that
    went with their parents), then append the run's ledger row."""
    from retention.steps import verify

    done, failed, refused = summary.get("done", 0), summary.get("failed", 0), summary.get("refused", 0)
    checked = sum(v.checked for v in verified)
    if checked != done:
        raise RetentionError(f"{done} records are reported done but {checked} were read back from Salesforce by "
                             f"{Task.VERIFY}; their retained rows are kept: clear {Task.VERIFY} and this task")
    not_applied = sum(v.not_applied for v in verified)
    sample = [i for v in verified for i in v.sample]
    for n, child in enumerate(policy.cascade):  # each child object read back by one Bulk query, as verify does
        with store.connect() as conn:
            missed = verify.still_live(conn, sf, child.object, cascade.done_query(policy, run, n))
        not_applied += len(missed)
        sample += missed
    if not_applied:
        raise RetentionError(
            f"{not_applied} records reported done are not {DONE_VERB[policy.action]} in Salesforce, e.g. "
            f"{', '.join(sample[:5])}; their retained rows are kept")
    validated_counts = (validated.counts if validated else None) or {}
    counts = {"eligible": extracted.eligible, "held": extracted.held + len(acted.held_at_action),
              "staged": extracted.staged, "retained": validated_counts.get("retained"), "acted": done,
              "failed": failed, "refused": refused, "blocked": len(extracted.blocked),
              "salesforce": validated_counts.get("salesforce")}
    status = "succeeded" if not failed else "partially_failed"
    message = (f"{policy.id}: {done} {DONE_VERB[policy.action]}, {refused} refused by Salesforce, "
               f"{failed} failed (both kept retained, see cache.{policy.retain.table}._action_error), "
               f"{counts['held']} held")
    for name, child in children.items():
        message += f"; {child.get('done', 0)} {name} records went with their parents (cache.{child['table']})"
    if counts["blocked"]:
        message += (f"; {counts['blocked']} kept back: a delete would take children the policy does not retain "
                    "(see the ledger's blocked_records)")
    if acted.hard_delete_fallback:
        message += "; hard delete not permitted for this user: fell back to delete (records are in the recycle bin)"
    ledger_id = write_ledger(
        store, policy, run, counts=counts, bulk_job_ids=acted.bulk_job_ids,
        holds_applied=sorted(set(extracted.held_ids) | set(acted.held_at_action)),
        validation=validated.to_xcom() if validated else None, status=status, message=message, timings={},
        blocked_records=extracted.blocked,
        cascade=children,
    )
    log.info("ledger row %d: %s", ledger_id, message)
    return Reported(ledger_id=ledger_id, status=status, counts=counts, message=message)


def _reported(conn, run: Run) -> Reported | None:
    """This execution's ledger row, if an earlier attempt of the step wrote it (see ``write_ledger``)."""
    row = conn.execute(
        "SELECT id, status, message, eligible, held, staged, retained, acted, failed, refused, blocked, "
        "salesforce_count FROM retention.runs WHERE run_key = %s AND dag_run_id = %s AND started_at = %s "
        "ORDER BY id LIMIT 1", (run.run_key, run.dag_run_id, run.started_at)).fetchone()
    if row is None:
        return None
    names = ("eligible", "held", "staged", "retained", "acted", "failed", "refused", "blocked", "salesforce")
    return Reported(ledger_id=row[0], status=row[1], counts=dict(zip(names, row[3:], strict=True)), message=row[2])


def this_execution(policy: Policy, run: Run, job_ids: list[str], alias: str) -> tuple[sql.Composable, list]:
    """SQL (and parameters) over the cache table as ``alias``: this execution's records. Those it staged, those of
    the jobs it settled, and those of any job of the run that no ledger row of the run lists: a run cleared and run
    again after a job finished stages nothing more (the org no longer offers the records the job took), whether
    its own attempt settled the job or an attempt that died before its ledger row (one chunk of several)."""
    c = sql.Identifier(alias)
    return (sql.SQL("{c}._retention_run = %s AND (EXISTS (SELECT 1 FROM {s} s WHERE s.sfid = {c}.sfid) OR "
                    "{c}._bulk_job_id = ANY(%s) OR ({c}._bulk_job_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "
                    "retention.runs r WHERE r.run_key = %s AND r.bulk_job_ids ? {c}._bulk_job_id)))")
            .format(c=c, s=run.staging), [run.run_key, list(job_ids), run.run_key])


def unclaimed_jobs(store: RetentionStoreHook, policy: Policy, run: Run) -> list[str]:
    """The run's Bulk jobs with settled records that no other execution's ledger row lists (see
    ``this_execution``): this execution's row lists them, and a retry after that row was written still counts them
    as its own."""
    with store.connect() as conn:
        rows = conn.execute(sql.SQL(
            "SELECT DISTINCT c._bulk_job_id FROM {} c WHERE c._retention_run = %s AND c._bulk_job_id IS NOT NULL "
            "AND c._action_status IN ('done', 'refused', 'failed') AND NOT EXISTS (SELECT 1 FROM retention.runs r "
            "WHERE r.run_key = %s AND r.bulk_job_ids ? c._bulk_job_id AND (r.dag_run_id, r.started_at) "
            "IS DISTINCT FROM (%s, %s)) ORDER BY 1").format(table(policy.retain.table)),
            (run.run_key, run.run_key, run.dag_run_id, run.started_at)).fetchall()
    return [r[0] for r in rows]


def action_counts(store: RetentionStoreHook, policy: Policy, run: Run, job_ids: list[str]) -> dict[str, int]:
    """This execution's records (see ``this_execution``) by action status."""
    mine, params = this_execution(policy, run, job_ids, "c")
    with store.connect() as conn:
        rows = conn.execute(sql.SQL("SELECT c._action_status, count(*) FROM {} c WHERE {} GROUP BY 1")
                            .format(table(policy.retain.table), mine), params).fetchall()
    return dict(rows)


def first_refused(store: RetentionStoreHook, policy: Policy, run: Run, job_ids: list[str]) -> tuple[str, str]:
    """One of this execution's refused records and Salesforce's reason, for the log."""
    mine, params = this_execution(policy, run, job_ids, "c")
    with store.connect() as conn:
        return conn.execute(sql.SQL("SELECT c.sfid, c._action_error FROM {} c WHERE {} AND c._action_status = "
                                    "'refused' ORDER BY 1 LIMIT 1").format(table(policy.retain.table), mine),
                            params).fetchone()


def mirror_reflects(store: RetentionStoreHook, policy: Policy, run: Run, job_ids: list[str]) -> bool:
    """True once Connect's mirror shows this execution's done records deleted (gone) or masked (the values sent),
    compared in the store, a server-side cursor at a time."""
    mirror = sql.Identifier(MIRROR_SCHEMA, policy.object.lower())
    mine, params = this_execution(policy, run, job_ids, "c")
    done = sql.SQL("{} AND c._action_status = 'done'").format(mine)
    target = table(policy.retain.table)
    with store.connect() as conn:
        if not table_exists(conn, mirror):
            return True
        if policy.action in ("delete", "hard_delete"):
            return not conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} c JOIN {} m ON m.sfid = c.sfid WHERE {})")
                                    .format(target, mirror, done), params).fetchone()[0]
        # Only the fields Connect's mapping mirrors can be seen there; the org itself was checked for every field.
        mirrored = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
            (MIRROR_SCHEMA, policy.object.lower())).fetchall()}
        fields = sorted((f for f in policy.mask if f.lower() in mirrored), key=str.lower)
        cols = sql.SQL("").join(sql.SQL(", m.{}").format(column(f)) for f in fields)
        rows = conn.cursor(name="retention_mirror_check")
        rows.itersize = 10_000
        rows.execute(sql.SQL("SELECT m.sfid, s.sent{} FROM {} c JOIN {} s ON s.sfid = c.sfid LEFT JOIN {} m ON "
                             "m.sfid = c.sfid WHERE {}").format(cols, target, run.sent, mirror, done), params)
        for sfid, want, *have in rows:
            if sfid is None:  # not mirrored (yet)
                return False
            if any(f in want and not same_value(want[f], value) for f, value in zip(fields, have, strict=True)):
                return False
    return True


def mirror_shows_gone(store: RetentionStoreHook, object_name: str, done: sql.Composable) -> bool:
    """True once none of the records ``done`` selects (an ``sfid`` column) is left in Connect's mirror of the object
    (or the object is not mapped)."""
    mirror = sql.Identifier(MIRROR_SCHEMA, object_name.lower())
    with store.connect() as conn:
        if not table_exists(conn, mirror):
            return True
        return not conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM ({}) d JOIN {} m ON m.sfid = d.sfid)")
                                .format(done, mirror)).fetchone()[0]


def same_value(sent, have) -> bool:
    """Whether a value read back (from the org or the mirror) is the one sent."""
    if sent is None or have is None:
        return sent is None and have is None
    if isinstance(have, dt.datetime):
        return have.strftime("%Y-%m-%dT%H:%M:%S") == str(sent)[:19]
    if isinstance(have, (dt.date, float, int, bool)):
        return str(have).lower() == str(sent).lower() or str(have) == str(sent)[:10]
    return str(have) == str(sent)


def write_ledger(store: RetentionStoreHook, policy: Policy, run: Run, *, counts: dict, bulk_job_ids: list[str],
                 holds_applied: list[str], validation: dict | None, status: str, message: str,
                 timings: dict, blocked_records: dict[str, str] | None = None, cascade: dict | None = None) -> int:
    """The run's ledger row (appended and sealed by ``evidence.append``): one per execution of a DAG run (its id and
    start), so a retry of this step after its row was written (a crash before the working tables were dropped)
    finds that row instead of adding a second. A new DAG run of the same date, or the run cleared and run again
    (a backfill's reprocessing), appends its own."""
    from retention import evidence

    with store.connect() as conn:
        evidence.lock(conn)
        written = _reported(conn, run)
        if written:
            log.info("the ledger already holds row %d for DAG run %s: not writing another", written.ledger_id,
                     run.dag_run_id)
            return written.ledger_id
        return evidence.append(conn, {
            "policy_id": policy.id, "run_key": run.run_key, "dag_run_id": run.dag_run_id,
            "policy_hash": policy.source_hash, "object": policy.object, "action": policy.action,
            "source": policy.source, "cutoff": run.cutoff, "dry_run": run.dry_run,
            "eligible": counts.get("eligible"), "held": counts.get("held"), "staged": counts.get("staged"),
            "retained": counts.get("retained"), "acted": counts.get("acted"), "failed": counts.get("failed"),
            "salesforce_count": counts.get("salesforce"), "bulk_job_ids": bulk_job_ids,
            "holds_applied": holds_applied, "validation": validation, "status": status, "message": message,
            "started_at": run.started_at, "timings": timings, "refused": counts.get("refused", 0),
            "blocked": counts.get("blocked", 0), "blocked_records": blocked_records or {}, "cascade": cascade or {},
        })


def drop_staging(store: RetentionStoreHook, run: Run, policy: Policy | None = None) -> None:
    from retention import cascade
    from retention.hooks.store import STAGING_SCHEMA
    from retention.steps.validate import gate_name

    children = cascade.tables(run, policy) if policy is not None else []
    # Validate drops its gate tables itself; one is left only if its process died in between.
    gates = [sql.Identifier(STAGING_SCHEMA, gate_name(name)) for name in (
        run.run_key, *(cascade.staging_name(run, n) for n in range(len(policy.cascade) if policy else 0)))]
    with store.connect() as conn:
        for name in (run.staging, run.subset, run.sent, *children, *gates):
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))
