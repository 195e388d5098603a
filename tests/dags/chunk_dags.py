"""Airflow DAGs for tests/retention/test_chunks.py: the same delete and mask policies acted on in one chunk and in
several (``guards.chunk_records``). Each selects only its own contacts (by e-mail domain) and has its own cache
table, so the runs share nothing with each other or with the other tests."""

from __future__ import annotations

from retention.factory import build_dag
from retention.policy import parse_policy
from tests.dags import as_deployed

POLICY = """\
id: {id}
description: Chunked and single-chunk runs give the same outcome
owner: privacy-team
object: Contact
schedule: null
start_date: 2025-01-01
select:
  date_field: LastModifiedDate
  older_than_days: 30
  where: "Email LIKE '%@{id}.example'"
retain:
  table: {id}
  fields:
    FirstName: keep
    LastName: keep
    Email: keep
    Phone: keep
action: {action}{mask}
guards:
  chunk_records: {chunk}
source: salesforce_api
"""
MASK = """
mask:
  FirstName: hash
  LastName: hash
  Phone: nullify"""
# Records per test set, and the small chunk: 4 chunks of 7 and one of 2.
RECORDS = 30
SMALL_CHUNK = 7

POLICIES = [
    parse_policy(POLICY.format(id=f"chunks_{action}_{kind}", action=action, mask=MASK if action == "mask" else "",
                               chunk=1000 if kind == "one" else SMALL_CHUNK).encode())
    for action in ("delete", "mask") for kind in ("one", "many", "unapplied")
] + [parse_policy(POLICY.format(id=f"chunks_delete_{name}", action="delete", mask="", chunk=1000).encode())
     for name in ("uploads", "changed")]

globals().update({policy.dag_id: as_deployed(build_dag(policy)) for policy in POLICIES})
