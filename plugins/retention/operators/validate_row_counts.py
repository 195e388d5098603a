"""validate_row_counts: the gate before anything destructive — eligible = staged = retained, sfid unique
and not null in the store, and Salesforce's own count agrees. Failure stops the run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from retention import pipeline
from retention.operators.base import PolicyOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class ValidateRowCountsOperator(PolicyOperator):
    """Great Expectations over this run's retained rows, plus the org's count of eligible records."""

    def execute_run(self, context: Context, run: pipeline.Run) -> dict[str, Any]:
        from retention.hooks.store import CACHE_SCHEMA
        from retention.validation import RowCounts, validate_retained

        extracted = self.extracted(context)
        store = self.store()
        staged, retained = pipeline.store_counts(store, self.policy, run)
        # The org counts every record matching the policy, including held ones and ones an earlier run
        # already retained and masked; what remains must equal this run's eligible count.
        in_org = self.salesforce().count(pipeline.soql_for(
            self.policy, run, [], extracted["field_types"][self.policy.select.date_field], count=True))
        org_eligible = in_org - extracted["held"] - extracted.get("done", 0)
        counts = RowCounts(eligible=extracted["eligible"], staged=staged, retained=retained, salesforce=org_eligible)
        result = validate_retained(
            store.get_uri(), query=pipeline.retained_query(self.policy, run), schema=CACHE_SCHEMA,
            table=self.policy.retain.table, run_column="_retention_run", run_value=run.run_key, counts=counts,
            policy_id=self.policy.id, run_label=run.run_key,
        )
        self.log.info(result.message)
        if not result.success:
            raise pipeline.RetentionError(result.message + ". Nothing was deleted or masked.")
        return {"message": result.message, "counts": result.details.get("counts"), "salesforce_total": in_org}
