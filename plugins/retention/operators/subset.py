"""subset: project and transform the retained fields (inside Postgres, set-based)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from retention.operators.base import PolicyOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from retention.steps.run import Run


class SubsetOperator(PolicyOperator):
    """Write the run's retained subset table from its staging table."""

    def execute_run(self, context: Context, run: Run) -> int:
        from retention.steps import load

        key = self.hash_key() if load.needs_hash_key(self.policy) else None
        keyring = self.encryption_keyring() if load.needs_encryption_key(self.policy) else None
        rows = load.subset(self.store(), self.policy, run, key, keyring)
        self.log.info("%s: %d rows in the retained subset", run.run_key, rows)
        return rows
