"""extract: check the policy against the object's describe, then stage the eligible, non-held records."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from retention.operators.base import PolicyOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from retention.steps.run import Run


class ExtractOperator(PolicyOperator):
    """Stage this run's eligible records in ``retention_staging`` (dry runs: preview and roll back)."""

    runs_in_dry_run = True

    def execute_run(self, context: Context, run: Run) -> dict[str, Any]:
        from retention.steps.extract import extract

        return extract(self.store(), self.salesforce(), self.policy, run).to_xcom()
