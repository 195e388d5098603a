"""verify_in_salesforce: read one chunk's records reported done back from the org (one Bulk 2.0 query job), before
the run's evidence is written. Mapped over the same chunks as delete_or_mask."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from retention.operators.base import ChunkOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from retention.steps.run import Run


class VerifyInSalesforceOperator(ChunkOperator):
    """How many of the chunk's records reported done the org does not show deleted or masked.
    """

    def execute_run(self, context: Context, run: Run) -> dict[str, Any]:
        from retention.steps.results import Acted
        from retention.steps.verify import verify

        chunk = self.this_chunk()
        ti = context["ti"]
        acted = Acted.pull_chunks(ti, ti.map_index if ti.map_index >= 0 else None)
        return verify(self.store(), self.salesforce(), self.policy, run, chunk, Acted.merged(acted)).to_xcom()
