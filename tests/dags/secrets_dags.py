"""Airflow DAGs for tests/retention/test_secrets.py: the mask example on leads of its own companies, retaining Email
as a keyed hash (so the hash key goes through the store's SQL too) and alerting by mail and Slack. One policy runs
through, the other is made to fail validation."""

from __future__ import annotations

from tests.dags.platform_dags import variant

ALERTS = ("alerts:\n  email: [privacy-team@example.com]\n  smtp_conn_id: smtp_alerts\n"
          "  slack_webhook_conn_id: slack_alerts\n")
COMPANIES = {"secret_leads_ok": "Secrets Ok Co", "secret_leads_failing": "Secrets Failing Co"}


def _leads(policy_id: str, company: str):
    from retention.factory import build_dag

    return build_dag(variant(
        "stale_leads_mask.yaml", ("id: stale_leads_mask", f"id: {policy_id}"), ("table: lead", f"table: {policy_id}"),
        ('where: "IsConverted = false"', f"where: \"IsConverted = false AND Company = '{company}'\""),
        ("Email: email_domain ", "Email: hash         "), ("\naction: mask", f"\n{ALERTS}action: mask")))


globals().update({f"retention__{policy_id}": _leads(policy_id, company) for policy_id, company in COMPANIES.items()})
