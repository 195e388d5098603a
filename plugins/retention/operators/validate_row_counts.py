"""validate_row_counts: the gate before anything destructive — eligible = staged = retained, sfid unique
and not null in the store, and Salesforce's own count agrees. Failure stops the run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from retention import pipeline
from retention.operators.base import PolicyOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


def data_docs_dir(policy_id: str) -> Path:
    """Where this policy's Great Expectations Data Docs go: ``[retention] data_docs_dir/<policy>`` (default
    ``$AIRFLOW_HOME/data_docs``); one folder per policy, since GX rewrites its project file on every run."""
    from airflow.configuration import AIRFLOW_HOME

    from retention import config

    return Path(config.get("data_docs_dir") or Path(AIRFLOW_HOME) / "data_docs") / policy_id


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
        sf = self.salesforce()  # one login for the parents' count and the children's
        in_org = sf.count(pipeline.soql_for(
            self.policy, run, [], extracted["field_types"][self.policy.select.date_field], count=True))
        org_eligible = in_org - extracted["held"] - extracted.get("done", 0) - len(extracted.get("blocked", {}))
        counts = RowCounts(eligible=extracted["eligible"], staged=staged, retained=retained, salesforce=org_eligible)
        result = validate_retained(
            store.get_uri(), query=pipeline.retained_query(self.policy, run), schema=CACHE_SCHEMA,
            table=self.policy.retain.table, run_column="_retention_run", run_value=run.run_key, counts=counts,
            policy_id=self.policy.id, run_label=run.run_key, docs_dir=data_docs_dir(self.policy.id),
        )
        self._gate(result, counts)
        children = self._children(store, sf, run, extracted)
        return {"message": result.message, "counts": result.details.get("counts"), "salesforce_total": in_org,
                "data_docs": result.details.get("data_docs"), "children": children}

    def _gate(self, result, counts) -> None:
        docs = result.details.get("data_docs")
        self.log.info("%s; Data Docs: %s", result.message, docs)
        if not result.success:
            from retention.validation import count_mismatches

            raise pipeline.RetentionError(f"{result.message}. Nothing was deleted or masked. Data Docs: {docs}",
                                          details={"counts": count_mismatches(counts), "data_docs": docs})

    def _children(self, store, sf, run: pipeline.Run, extracted: dict) -> dict[str, dict]:
        """The same gate for each cascade child: every child the parents' delete takes is retained. The org counts
        the candidates (children of every parent past the cutoff); those the run left with their parents
        (held, blocked, done, outside the filter) are subtracted as the source counted them."""
        from retention import cascade
        from retention.hooks.store import CACHE_SCHEMA
        from retention.validation import RowCounts, validate_retained

        out: dict[str, dict] = {}
        if not self.policy.cascade:
            return out
        with store.connect() as conn:
            stored = cascade.counts(conn, self.policy, run)
        for n, (child, info) in enumerate(zip(self.policy.cascade, extracted["children"], strict=True)):
            staged, retained = stored[n]
            in_org = sf.count(cascade.org_count_soql(self.policy, run, n, extracted["date_type"]))
            counts = RowCounts(eligible=info["staged"], staged=staged, retained=retained,
                               salesforce=in_org - (info["candidates"] - info["staged"]))
            result = validate_retained(
                store.get_uri(), query=cascade.retained_query(self.policy, run, n), schema=CACHE_SCHEMA,
                table=child.retain.table, run_column="_retention_run", run_value=run.run_key, counts=counts,
                policy_id=self.policy.id, run_label=f"{run.run_key} ({child.object})",
                docs_dir=data_docs_dir(self.policy.id),
            )
            self._gate(result, counts)
            out[child.object] = {"counts": result.details.get("counts"), "salesforce_candidates": in_org}
        return out
