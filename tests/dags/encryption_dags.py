"""An Airflow DAG for tests/retention/test_encryption.py: the contacts example with its LastName and Email (kept
whole) stored encrypted, selecting only its own contacts (by LastName) into its own cache table."""

from __future__ import annotations

from retention.factory import build_dag
from retention.policy import parse_policy
from tests.dags import as_deployed
from tests.dags.platform_dags import EXAMPLES

POLICY_ID = "encrypted_contacts"
TEXT = (EXAMPLES / "inactive_contacts.yaml").read_text()
for old, new in (("id: inactive_contacts", f"id: {POLICY_ID}"), ("table: contact", f"table: {POLICY_ID}"),
                 ("older_than_days: 730", "older_than_days: 30"),
                 ('where: "LeadSource != \'Partner Referral\' AND Id NOT IN (SELECT ContactId FROM Case)"',
                  'where: "LastName LIKE \'Encrypted contacts %\'"'),
                 ("Email: email_domain", "Email: keep"),
                 ("  keep_days: 2555", "  encrypt: [LastName, Email]\n  keep_days: 2555"),
                 ("source: heroku_connect", "source: salesforce_api")):
    if old not in TEXT:
        raise ValueError(f"inactive_contacts.yaml has no {old!r}")
    TEXT = TEXT.replace(old, new)

POLICY = parse_policy(TEXT.encode())
retention__encrypted_contacts = as_deployed(build_dag(POLICY))
