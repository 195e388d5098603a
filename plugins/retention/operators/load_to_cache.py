"""load_to_cache: upsert the subset into cache.<table>, in one transaction, keyed by sfid."""

from __future__ import annotations

from typing import TYPE_CHECKING

from retention.operators.base import PolicyOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from retention.steps.run import Run


class LoadToCacheOperator(PolicyOperator):
    """Commit the retained copy; re-running it rewrites the same rows, never duplicates them."""

    def execute_run(self, context: Context, run: Run) -> int:
        from retention.steps import load

        rows = load.load(self.store(), self.policy, run)
        self.log.info("%s: %d rows upserted into cache.%s", run.run_key, rows, self.policy.retain.table)
        return rows
