"""confirm_and_report: check in Salesforce that the acted records are deleted or masked, wait until the
Connect mirror shows it, and write the run's evidence to the ledger."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from retention.operators.base import PolicyOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from retention.steps.run import Run


class ConfirmAndReportOperator(PolicyOperator):
    """Check every chunk was read back from the org, append the ledger row, wait for the mirror; fail the run if any
    record failed.

    :param mirror_timeout: seconds to wait for Heroku Connect to reflect the changes.
    :param mirror_poll_interval: seconds between mirror checks.
    """

    def __init__(self, *, mirror_timeout: float = 15 * 60, mirror_poll_interval: float = 2.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.mirror_timeout = mirror_timeout
        self.mirror_poll_interval = mirror_poll_interval

    def execute_run(self, context: Context, run: Run) -> dict[str, Any]:
        from retention.steps.confirm import confirm
        from retention.steps.results import Acted, Extracted, Validated, Verified

        ti = context["ti"]
        acted = Acted.pull_chunks(ti)
        return confirm(self.store(), self.salesforce(), self.policy, run, Extracted.pull(ti), Validated.pull(ti),
                       Acted.merged(acted) if acted else None, Verified.pull_chunks(ti),
                       mirror_timeout=self.mirror_timeout, poll_interval=self.mirror_poll_interval).to_xcom()
