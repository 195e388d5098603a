"""validate_row_counts: the gate before anything destructive — eligible = staged = retained, sfid unique
and not null in the store, and Salesforce's own count agrees. Failure stops the run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from retention.operators.base import PolicyOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from retention.steps.run import Run


def data_docs_dir(policy_id: str) -> Path:
    """Where this policy's Great Expectations Data Docs go: ``[retention] data_docs_dir/<policy>`` (default
    ``$AIRFLOW_HOME/data_docs``); one folder per policy, since GX rewrites its project file on every run."""
    from airflow.configuration import AIRFLOW_HOME

    from retention import config

    return Path(config.get("data_docs_dir") or Path(AIRFLOW_HOME) / "data_docs") / policy_id


class ValidateRowCountsOperator(PolicyOperator):
    """Great Expectations over this run's retained rows, plus the org's count of eligible records."""

    def execute_run(self, context: Context, run: Run) -> list[dict[str, Any]]:
        from retention.steps.results import Extracted, Validated
        from retention.steps.validate import validate

        validated = validate(self.store(), self.salesforce(), self.policy, run, Extracted.pull(context["ti"]),
                             docs_dir=data_docs_dir(self.policy.id))
        context["ti"].xcom_push(Validated.key, validated.to_xcom())
        # The return value is what delete_or_mask and verify_in_salesforce are mapped over: one instance a chunk.
        return [c.to_xcom() for c in validated.chunks]
