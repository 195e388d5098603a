"""Airflow DAGs for tests/retention/test_bad_input.py: one mask policy per source over contacts whose values sit at
Salesforce's edges (full-length fields, unicode, newlines, quotes). Each selects only its own contacts (by e-mail
domain) and has its own cache table, so it shares nothing with the other tests."""

from __future__ import annotations

from retention.factory import build_dag
from retention.policy import parse_policy
from tests.dags import as_deployed

POLICY = """\
id: {id}
description: Values at Salesforce's edges, kept exactly and masked consistently
owner: privacy-team
object: Contact
schedule: null
start_date: 2025-01-01
select:
  date_field: LastModifiedDate
  older_than_days: 30
  where: "Email LIKE '%@{domain}'"
retain:
  table: {id}
  fields:
    FirstName: hash
    LastName: keep
    Email: keep
    MailingCountry: keep
    Birthdate: keep{extra}
action: mask
mask:
  FirstName: hash
  LastName: hash
source: {source}
"""

POLICIES = [
    parse_policy(POLICY.format(id="bad_input_mirror", domain="edge-mirror.example", source="heroku_connect",
                               extra="").encode()),
    # Description (a Long Text Area) is not in the sandbox's Connect mapping of Contact: the Bulk path only.
    parse_policy(POLICY.format(id="bad_input_bulk", domain="edge-bulk.example", source="salesforce_api",
                               extra="\n    Description: keep").encode()),
]

globals().update({policy.dag_id: as_deployed(build_dag(policy)) for policy in POLICIES})
