"""delete_or_mask: act on the originals in Salesforce through Bulk 2.0 ingest jobs, only for records whose
retained copy this run committed and validated, privacy holds checked again just before. Mapped over the run's
chunks: one task instance per chunk, each within the ``salesforce_api`` pool."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from retention.operators.base import ChunkOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from retention.steps.run import Run


class DeleteOrMaskOperator(ChunkOperator):
    """Delete, hard-delete or mask one chunk of this run's retained records; each record's outcome goes beside its
    row.
    """

    def execute_run(self, context: Context, run: Run) -> dict[str, Any]:
        from retention.steps.act import act
        from retention.steps.results import Extracted

        key = self.hash_key() if self.policy.action == "mask" else None
        return act(self.store(), self.salesforce(), self.policy, run, Extracted.pull(context["ti"]), self.this_chunk(),
                   mask_key=key).to_xcom()
