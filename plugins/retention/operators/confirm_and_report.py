"""confirm_and_report: check in Salesforce that the acted records are deleted or masked, wait until the
Connect mirror shows it, and write the run's evidence to the ledger."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from retention import pipeline
from retention.operators.base import PolicyOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

# What the action did, as the ledger's message and the errors say it.
DONE_VERB = {"delete": "deleted", "hard_delete": "hard-deleted", "mask": "masked"}


class ConfirmAndReportOperator(PolicyOperator):
    """Re-query the org, wait for the mirror, append the ledger row; fail the run if any record failed.

    :param mirror_timeout: seconds to wait for Heroku Connect to reflect the changes.
    :param mirror_poll_interval: seconds between mirror checks.
    """

    def __init__(self, *, mirror_timeout: float = 15 * 60, mirror_poll_interval: float = 2.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.mirror_timeout = mirror_timeout
        self.mirror_poll_interval = mirror_poll_interval

    def execute_run(self, context: Context, run: pipeline.Run) -> dict[str, Any]:
        store, sf, policy = self.store(), self.salesforce(), self.policy
        ti = context["ti"]
        extracted = self.extracted(context)
        validated = ti.xcom_pull(task_ids="validate_row_counts") or {}
        acted = ti.xcom_pull(task_ids="delete_or_mask") or {}
        if policy.cascade:
            from retention import cascade

            with store.connect() as conn:
                cascade.follow_parents(conn, policy, run)  # again: a crash may have come between
                children = cascade.summary(conn, policy, run)
        else:
            children = {}
        summary = pipeline.action_summary(store, policy, run)
        done, failed, refused = summary.get("done", []), summary.get("failed", []), summary.get("refused", [])
        sent = pipeline.sent_values(store, run) if policy.action == "mask" else {}

        not_applied = self._check_org(sf, policy.object, done, sent)
        for name, child in children.items():
            not_applied += self._check_org(sf, name, child["ids"].get("done", []), {})
        if not_applied:
            raise pipeline.RetentionError(
                f"{len(not_applied)} records reported done are not {DONE_VERB[policy.action]} in Salesforce, e.g. "
                f"{', '.join(not_applied[:5])}; their retained rows are kept")
        deadline = time.monotonic() + self.mirror_timeout
        while done and not (pipeline.mirror_reflects(store, policy, done, sent) and all(
                pipeline.mirror_shows_gone(store, name, child["ids"].get("done", []))
                for name, child in children.items())):
            if time.monotonic() > deadline:
                raise pipeline.RetentionError(
                    f"Heroku Connect's mirror did not reflect the {len(done)} {DONE_VERB[policy.action]} records "
                    f"within {self.mirror_timeout:.0f}s; Salesforce is already changed, re-run confirm_and_report "
                    "later")
            time.sleep(self.mirror_poll_interval)

        counts = {"eligible": extracted["eligible"], "held": extracted["held"] + len(acted.get("held_at_action", [])),
                  "staged": extracted["staged"], "retained": (validated.get("counts") or {}).get("retained"),
                  "acted": len(done), "failed": len(failed), "refused": len(refused),
                  "blocked": len(extracted.get("blocked", {})),
                  "salesforce": (validated.get("counts") or {}).get("salesforce")}
        status = "succeeded" if not failed else "partially_failed"
        message = (f"{policy.id}: {len(done)} {DONE_VERB[policy.action]}, {len(refused)} refused by Salesforce, "
                   f"{len(failed)} failed (both kept retained, see cache.{policy.retain.table}._action_error), "
                   f"{counts['held']} held")
        for name, child in children.items():
            message += f"; {child.get('done', 0)} {name} records went with their parents (cache.{child['table']})"
        if counts["blocked"]:
            message += (f"; {counts['blocked']} kept back: a delete would take children the policy does not retain "
                        "(see the ledger's blocked_records)")
        if acted.get("hard_delete_fallback"):
            message += ("; hard delete not permitted for this user: fell back to delete (records are in the "
                        "recycle bin)")
        ledger_id = pipeline.write_ledger(
            store, policy, run, counts=counts, bulk_job_ids=acted.get("bulk_job_ids", []),
            holds_applied=sorted(set(extracted.get("held_ids", [])) | set(acted.get("held_at_action", []))),
            validation=validated, status=status, message=message, timings={},
            blocked_records=extracted.get("blocked"),
            cascade={name: {k: v for k, v in child.items() if k != "ids"} for name, child in children.items()},
        )
        pipeline.drop_staging(store, run, policy)
        self.log.info("ledger row %d: %s", ledger_id, message)
        if refused:
            self.log.warning("%d records were refused by Salesforce for good (e.g. %s: %s); they stay retained and "
                             "are not selected again", len(refused), refused[0],
                             pipeline.action_error(store, policy, refused[0]))
        if failed:
            raise pipeline.RetentionError(message)
        return {"ledger_id": ledger_id, "status": status, **counts}

    def _check_org(self, sf, object_name: str, done: list[str], sent: dict[str, dict]) -> list[str]:
        """Ids the org does not show as acted on (still live for deletes; values differ for masks)."""
        policy = self.policy
        fields = sorted({k for v in sent.values() for k in v}) if policy.action == "mask" else []
        records = sf.live_records(object_name, done, fields)
        if policy.action != "mask":
            return [r["Id"] for r in records]
        return [r["Id"] for r in records
                if any(not pipeline.same_value(want, r.get(f)) for f, want in sent.get(r["Id"], {}).items())]
