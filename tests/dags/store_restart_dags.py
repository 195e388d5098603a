"""Airflow DAGs for tests/retention/test_store_restart.py: the contacts example on contacts of its own (by LastName),
read through the Bulk API so that the store it runs against holds only the cache, staging and the ledger (no Connect
mirror), with its own cache table and the retries a deployment configures."""

from __future__ import annotations

from retention.factory import build_dag
from tests.dags import as_deployed
from tests.dags.platform_dags import variant

LAST_NAME = "Restart contacts"

retention__restart_contacts = as_deployed(build_dag(variant(
    "inactive_contacts.yaml", ("id: inactive_contacts", "id: restart_contacts"),
    ("table: contact", "table: restart_contacts"),
    ("older_than_days: 730", "older_than_days: 30"),
    ('where: "LeadSource != \'Partner Referral\' AND Id NOT IN (SELECT ContactId FROM Case)"',
     f'where: "LastName LIKE \'{LAST_NAME} %\'"'),
    ("source: heroku_connect", "source: salesforce_api"))))
