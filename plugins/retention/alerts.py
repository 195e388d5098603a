"""Alerts on failed runs, through Airflow's notifiers: e-mail (smtp provider) and a Slack webhook
(slack provider). A failed validation is called out as such, with the counts that disagreed.

Recipients come from the policy's ``alerts:`` key, else from ``RETENTION_ALERT_EMAILS`` (comma-separated)
and ``RETENTION_ALERT_SLACK_CONN_ID`` for every policy.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseNotifier

if TYPE_CHECKING:
    from retention.policy import Alerts, Policy

VALIDATION_TASK = "validate_row_counts"


def settings_for(policy: Policy) -> Alerts | None:

    if policy.alerts is not None:
        return policy.alerts
    return global_settings()


def global_settings() -> Alerts | None:
    """Alerts for every policy (and the store purge) from the environment, when a policy sets none."""
    from retention.policy import Alerts

    emails = [e.strip() for e in os.environ.get("RETENTION_ALERT_EMAILS", "").split(",") if e.strip()]
    slack = os.environ.get("RETENTION_ALERT_SLACK_CONN_ID") or None
    return Alerts(email=emails, slack_webhook_conn_id=slack) if emails or slack else None


def run_url(dag_id: str, run_id: str) -> str:
    from urllib.parse import quote

    from airflow.configuration import conf

    base = conf.get("api", "base_url", fallback="http://localhost:8080").rstrip("/")
    return f"{base}/dags/{dag_id}/runs/{quote(run_id, safe='')}"


def message(policy_id: str, dag_id: str, run_id: str, task_id: str, error: str) -> tuple[str, str]:
    """(subject, body) naming the policy, the run, the task, what went wrong and where to look."""
    kind = "validation failed" if task_id == VALIDATION_TASK else f"task {task_id} failed"
    subject = f"[retention] {policy_id}: {kind} (run {run_id})"
    body = "\n".join([
        f"Retention policy {policy_id}: {kind}.",
        f"Run: {run_id} of DAG {dag_id}",
        f"Task: {task_id}",
        f"What happened: {error}",
        "Nothing is deleted or masked in Salesforce once validation fails; records a failed delete or mask "
        "did not reach stay retained and are retried by the next run.",
        f"Run in Airflow: {run_url(dag_id, run_id)}",
    ])
    return subject, body


class RetentionAlertNotifier(BaseNotifier):
    """On a task failure, send the policy's alert by e-mail and/or to Slack through the providers' notifiers.

    :param policy_id: the policy the DAG runs.
    :param alerts: recipients and which failures to report.
    """

    template_fields = ()

    def __init__(self, *, policy_id: str, alerts: Alerts) -> None:
        super().__init__()
        self.policy_id = policy_id
        self.alerts = alerts

    def notify(self, context: dict[str, Any]) -> None:
        ti = context["ti"]
        kind = "validation_failed" if ti.task_id == VALIDATION_TASK else "task_failed"
        if kind not in self.alerts.when:
            return
        error = str(context.get("exception") or "see the task log")
        subject, body = message(self.policy_id, ti.dag_id, context["run_id"], ti.task_id, error)
        if self.alerts.email:
            from airflow.providers.smtp.notifications.smtp import SmtpNotifier

            html = "<pre>" + body.replace("&", "&amp;").replace("<", "&lt;") + "</pre>"
            SmtpNotifier(to=self.alerts.email, subject=subject, html_content=html,
                         smtp_conn_id=self.alerts.smtp_conn_id, from_email="retention@localhost").notify(context)
        if self.alerts.slack_webhook_conn_id:
            from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

            SlackWebhookNotifier(slack_webhook_conn_id=self.alerts.slack_webhook_conn_id,
                                 text=f"*{subject}*\n{body}").notify(context)
