"""Alerts on failed runs, through Airflow's notifiers: e-mail (smtp provider) and a Slack webhook
(slack provider). A failed validation is called out as such, with the counts that disagreed.

Recipients come from the policy's ``alerts:`` key, else from Airflow's ``[retention] alert_emails``
(comma-separated) and ``[retention] alert_slack_conn_id`` for every policy. Mail goes out from the SMTP
connection's own sender (its ``from_email`` extra), as every other Airflow e-mail of the deployment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseNotifier

from retention.steps.results import Task

if TYPE_CHECKING:
    from retention.policy import Alerts, Policy

VALIDATION_TASK = Task.VALIDATE


class AlertSettingsError(ValueError):
    """The global alert settings are not valid; the message names the option."""


def settings_for(policy: Policy | None) -> Alerts | None:
    """The policy's own ``alerts:``, else the global ones (``policy`` None: the global ones, for the store purge).
    None while the global ones are broken: build_dags reports that as an import error rather than failing every
    policy's DAG."""
    if policy is not None and policy.alerts is not None:
        return policy.alerts
    try:
        return global_settings()
    except AlertSettingsError:
        return None


def global_settings() -> Alerts | None:
    """Alerts for every policy (and the store purge) from Airflow's ``[retention]`` section, when a policy
    sets none."""
    from pydantic import ValidationError

    from retention import config
    from retention.policy import Alerts

    emails = [e.strip() for e in config.get("alert_emails").split(",") if e.strip()]
    slack = config.get("alert_slack_conn_id") or None
    try:
        return Alerts(email=emails, slack_webhook_conn_id=slack) if emails or slack else None
    except ValidationError as err:
        reasons = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
        raise AlertSettingsError(f"{config.source('alert_emails')}: {reasons}") from None


def run_url(dag_id: str, run_id: str) -> str:
    from urllib.parse import quote

    from airflow.configuration import conf

    base = conf.get("api", "base_url", fallback="http://localhost:8080").rstrip("/")
    return f"{base}/dags/{dag_id}/runs/{quote(run_id, safe='')}"


def _kind(task_id: str) -> str:
    return "validation failed" if task_id == VALIDATION_TASK else f"task {task_id} failed"


def message(policy_id: str, dag_id: str, run_id: str, task_id: str, error: str,
            details: dict | None = None) -> tuple[str, str]:
    """(subject, body) naming the policy, the run, the task, what went wrong, the counts that disagreed
    and where to look."""
    details = details or {}
    kind = _kind(task_id)
    subject = f"[retention] {policy_id}: {kind} (run {run_id})"
    body = "\n".join([
        f"Retention policy {policy_id}: {kind}.",
        f"Run: {run_id} of DAG {dag_id}",
        f"Task: {task_id}",
        *([f"Counts that disagreed: {'; '.join(details['counts'])}"] if details.get("counts") else []),
        f"What happened: {error}",
        *([f"Validation report (Data Docs): {details['data_docs']}"] if details.get("data_docs") else []),
        "Nothing is deleted or masked in Salesforce once validation fails; records a failed delete or mask "
        "did not reach stay retained and are retried by the next run.",
        f"Run in Airflow: {run_url(dag_id, run_id)}",
    ])
    return subject, body


def slack_blocks(policy_id: str, dag_id: str, run_id: str, task_id: str, error: str,
                 details: dict | None = None) -> list[dict]:
    """The same alert as Slack Block Kit: a header, the facts as fields, and a button to the run."""
    details = details or {}
    kind = _kind(task_id)

    def text(value: str, limit: int = 2900) -> str:  # Slack refuses a section text over 3000 characters
        return value if len(value) <= limit else value[: limit - 1] + "…"

    fields = [f"*Policy*\n{policy_id}", f"*Task*\n{task_id}", f"*Run*\n{run_id}", f"*DAG*\n{dag_id}"]
    if details.get("counts"):
        fields.append("*Counts that disagreed*\n" + "\n".join(details["counts"]))
    blocks: list[dict] = [
        {"type": "header", "text": {"type": "plain_text", "text": text(f"{policy_id}: {kind}", 150)}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": text(f, 1900)} for f in fields]},
        {"type": "section", "text": {"type": "mrkdwn", "text": text(f"*What happened*\n{error}")}},
    ]
    if details.get("data_docs"):
        blocks.append({"type": "context", "elements": [
            {"type": "mrkdwn", "text": text(f"Validation report (Data Docs): `{details['data_docs']}`")}]})
    blocks.append({"type": "actions", "elements": [
        {"type": "button", "text": {"type": "plain_text", "text": "Open the run in Airflow"},
         "url": run_url(dag_id, run_id)}]})
    return blocks


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
        exception = context.get("exception")
        error = str(exception or "see the task log")
        facts = (self.policy_id, ti.dag_id, context["run_id"], ti.task_id, error, _details(exception))
        subject, body = message(*facts)
        if self.alerts.email:
            from airflow.providers.smtp.notifications.smtp import SmtpNotifier

            html = "<pre>" + body.replace("&", "&amp;").replace("<", "&lt;") + "</pre>"
            SmtpNotifier(to=self.alerts.email, subject=subject, html_content=html,
                         smtp_conn_id=self.alerts.smtp_conn_id,
                         from_email=sender(self.alerts.smtp_conn_id)).notify(context)
        if self.alerts.slack_webhook_conn_id:
            from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

            # text: what notifications and clients without blocks show; blocks: the message in the channel.
            SlackWebhookNotifier(slack_webhook_conn_id=self.alerts.slack_webhook_conn_id,
                                 text=f"*{subject}*\n{body}", blocks=slack_blocks(*facts)).notify(context)


def sender(smtp_conn_id: str) -> str | None:
    """The SMTP connection's own sender (its ``from_email`` extra), else Airflow's ``[email] from_email``: the
    address the mail server and its SPF/DKIM records accept, never one we invent."""
    from airflow.configuration import conf
    from airflow.sdk import BaseHook

    own = BaseHook.get_connection(smtp_conn_id).extra_dejson.get("from_email")
    return own or conf.get("email", "from_email", fallback=None)


def _details(exception: BaseException | None) -> dict:
    """The numbers a RetentionError carries, also when the operator re-raised it (``raise ... from``)."""
    while exception is not None:
        if isinstance(getattr(exception, "details", None), dict):
            return exception.details
        exception = exception.__cause__
    return {}
