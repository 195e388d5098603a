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
        from retention.steps.load import needs_encryption_key

        if needs_encryption_key(self.policy) and not run.dry_run:
            self.encryption_keyring()  # a run that could not encrypt its copy stops before it reads the org
        ti = context["ti"]

        def still_running(dag_run_id: str) -> bool:
            try:
                state = ti.get_dagrun_state(ti.dag_id, dag_run_id)
            except Exception as err:  # the execution API answers 404 for a DAG run that no longer exists
                if getattr(getattr(err, "response", None), "status_code", None) == 404:
                    return False
                raise
            return getattr(state, "value", state) in ("running", "queued")  # an enum of the execution API

        return extract(self.store(), self.salesforce(), self.policy, run, still_running=still_running).to_xcom()
