"""delete_or_mask: act on the originals in Salesforce through one Bulk 2.0 ingest job, only for records
whose retained copy this run committed and validated, privacy holds checked again just before."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from retention import pipeline
from retention.operators.base import PolicyOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class DeleteOrMaskOperator(PolicyOperator):
    """Delete, hard-delete or mask this run's retained records; each record's outcome goes beside its row."""

    def execute_run(self, context: Context, run: pipeline.Run) -> dict[str, Any]:
        from retention import cascade
        from retention.hooks.salesforce_bulk import HardDeleteNotPermitted, to_csv
        from retention.masking import to_bulk_csv_value

        store, sf, policy = self.store(), self.salesforce(), self.policy
        jobs: list[str] = []
        operations: list[str] = []  # what each job really did (a hardDelete may have fallen back to delete)
        totals = {"done": 0, "refused": 0, "failed": 0}
        # Jobs an earlier attempt left behind. One still Open never got its records (the attempt died
        # before closing it): abort it and let its records go out again below. One that stopped part way
        # (Failed, or Aborted after it started) keeps what it did ("Changes made by a job that fails or is
        # aborted aren't rolled back"): record that, and let only the records it did not reach go out again.
        # Any other was submitted: collect its outcome, never submit those records a second time.
        for job_id, status in pipeline.unfinished_jobs(store, policy, run):
            state = sf.job_state(policy.object, job_id)
            if status == "submitting" and state == "Open":
                self.log.info("job %s of an earlier attempt was never closed; aborting it and resubmitting", job_id)
                sf.abort(policy.object, job_id)
                pipeline.release_job(store, policy, run, job_id)
                continue
            if state in ("Failed", "Aborted"):
                reported = pipeline.record_outcomes(store, policy, run, job_id, sf.outcomes(policy.object, job_id),
                                                    processed_only=True)
                released = pipeline.release_job(store, policy, run, job_id)
                self.log.warning("job %s of an earlier attempt ended %s part way: %d records it processed are "
                                 "recorded, %d it did not reach go out again", job_id, state, sum(reported.values()),
                                 released)
                self._add(totals, reported)
                if sum(reported.values()):  # it acted on some: it is part of the run's evidence
                    jobs.append(job_id)
                    operations.append(pipeline.ACTION_OPERATION[policy.action])
                continue
            self.log.info("collecting the outcome of job %s submitted by an earlier attempt", job_id)
            info = sf.wait(policy.object, job_id)
            self._add(totals, pipeline.record_outcomes(store, policy, run, job_id, sf.outcomes(policy.object, job_id)))
            jobs.append(job_id)
            operations.append(info.get("operation") or pipeline.ACTION_OPERATION[policy.action])

        ids = pipeline.pending_ids(store, policy, run)
        extracted = self.extracted(context)
        held_now: list[str] = []
        if policy.select.exclude_privacy_holds and ids:
            holds = pipeline.active_holds(sf)
            held_now = sorted(set(ids) & holds)
            if policy.cascade:
                with store.connect() as conn:
                    held_now = sorted({*held_now, *cascade.held_via_children(conn, policy, run, ids, holds)})
        if held_now:
            self.log.warning("%d records came under a privacy hold since extract (themselves or a child); they are "
                             "kept and not touched", len(held_now))
            pipeline.mark(store, policy, run, held_now, "held")
            held = set(held_now)
            ids = [i for i in ids if i not in held]
        if ids and (policy.cascade or extracted.get("cascade_relations")):
            # Children can be added between extract and now; a delete would take them unretained.
            with store.connect() as conn:
                changed = cascade.children_changed(conn, sf, policy, run, extracted.get("cascade_relations", []),
                                                   extracted["date_type"], ids)
            for parent, reason in changed.items():
                pipeline.mark(store, policy, run, [parent], "failed", error=reason)
            if changed:
                self.log.warning("%d records keep their children this time (e.g. %s); the next run retains the "
                                 "children first", len(changed), next(iter(changed.values())))
            ids = [i for i in ids if i not in changed]
        if ids:
            operation = pipeline.ACTION_OPERATION[policy.action]
            if policy.action == "mask":
                records = self._masked(store, run, ids, context)
                pipeline.save_sent(store, run, records)
                fields = list(policy.mask)
                csv_text = to_csv(["Id", *fields], ([r["Id"], *(to_bulk_csv_value(r.get(f)) for f in fields)]
                                                    for r in records))
            else:
                csv_text = to_csv(["Id"], ([i] for i in ids))
            try:
                job_id = sf.create_ingest(policy.object, operation)
            except HardDeleteNotPermitted:
                self.log.warning("hard delete not permitted for this user; falling back to delete (records go to "
                                 "the recycle bin)")
                operation = "delete"
                job_id = sf.create_ingest(policy.object, operation)
            # The job id is committed beside the records before they are sent, so a retry after a crash at
            # any point below finds the job instead of sending the records again.
            pipeline.mark(store, policy, run, ids, "submitting", job_id=job_id)
            sf.upload_and_close(policy.object, job_id, csv_text)
            pipeline.mark(store, policy, run, ids, "submitted", job_id=job_id)
            self.log.info("%s: Bulk 2.0 %s job %s submitted for %d records", run.run_key, operation, job_id, len(ids))
            sf.wait(policy.object, job_id)
            self._add(totals, pipeline.record_outcomes(store, policy, run, job_id, sf.outcomes(policy.object, job_id)))
            jobs.append(job_id)
            operations.append(operation)
        if policy.cascade:
            with store.connect() as conn:
                cascade.follow_parents(conn, policy, run)
        self.log.info("%s: %d done, %d refused, %d failed in Salesforce, %d newly held", run.run_key,
                      totals["done"], totals["refused"], totals["failed"], len(held_now))
        used = sorted(set(operations))
        return {"bulk_job_ids": jobs, **totals, "held_at_action": held_now,
                "operation_used": ",".join(used) or None,
                "hard_delete_fallback": policy.action == "hard_delete" and "delete" in used}

    @staticmethod
    def _add(totals: dict[str, int], more: dict[str, int]) -> None:
        for k, v in more.items():
            totals[k] = totals.get(k, 0) + v

    def _masked(self, store, run: pipeline.Run, ids: list[str], context: Context) -> list[dict]:
        from retention.masking import Masker
        from retention.operators.subset import hash_key

        policy = self.policy
        key = hash_key()
        if key is None:
            self.log.warning("no masking key configured (connection 'retention_hash_key'); using a one-off key, "
                             "so pseudonyms and hashes will differ between runs")
            key = os.urandom(32)
        types = self.extracted(context)["field_types"]
        masker = Masker({f: (s.strategy, s.options) for f, s in policy.mask.items()}, types, key)
        originals = pipeline.staged_records(store, run, ids, list(policy.mask))
        return [{"Id": r["Id"], **masker.mask_record(r)} for r in originals]
