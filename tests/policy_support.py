"""Helpers shared by the policy-run test modules: reading the org and the store as dicts, the DAGs."""

from __future__ import annotations

import contextlib
import json
import os

HASH_KEY = "test-hash-key-0123456789abcdef"
# The example policies' selections, as SQL over the org: inactive_contacts leaves out Partner Referrals and
# contacts with cases (Salesforce refuses to delete those); stale_leads_mask leaves out converted leads.
INACTIVE_CONTACTS = """SELECT * FROM org.contact c WHERE NOT isdeleted AND lastmodifieddate < %s
                       AND leadsource IS DISTINCT FROM 'Partner Referral'
                       AND NOT EXISTS (SELECT 1 FROM org.case k WHERE k.contactid = c.id AND NOT k.isdeleted)
                       ORDER BY id"""
# closed_cases_hard_delete's selection: closed cases past the cutoff whose contact is under no active hold.
CLOSED_CASES = """SELECT id FROM org."case" WHERE NOT isdeleted AND isclosed AND closeddate < %s
                  AND (contactid IS NULL OR contactid NOT IN (SELECT referencerecordid FROM org.privacyhold
                                                              WHERE NOT isdeleted AND isactive))
                  ORDER BY id"""
STALE_LEADS = "SELECT * FROM org.lead WHERE NOT isdeleted AND createddate < %s AND NOT isconverted ORDER BY id"
ACTIVE_HOLDS = """SELECT referencerecordid FROM org.privacyhold WHERE NOT isdeleted AND isactive
                  AND (enddate IS NULL OR enddate >= (now() AT TIME ZONE 'UTC')::date)"""


def place_hold(sf, record_id: str, name: str = "Test hold", **fields) -> str:
    """Put ``record_id`` under a PrivacyHold (active unless ``IsActive`` says otherwise), as a privacy officer
    does: every hold names a PrivacyHoldReason (PrivacyHoldReasonId is required)."""
    found = sf.query("SELECT Id FROM PrivacyHoldReason ORDER BY Name LIMIT 1")["records"]
    reason = found[0]["Id"] if found else sf.PrivacyHoldReason.create(
        {"Name": "Litigation", "Detail": "Records under legal hold"})["id"]
    values = {"Name": name, "ReferenceRecordId": record_id, "PrivacyHoldReasonId": reason, "IsActive": True, **fields}
    return sf.PrivacyHold.create(values)["id"]


def _dicts(conn, query: str, params=()) -> list[dict]:
    cur = conn.execute(query, params)
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def org_rows(sandbox, query: str, params=()) -> list[dict]:
    with sandbox.org_conn() as conn:
        return _dicts(conn, query, params)


def store_rows(sandbox, query: str, params=()) -> list[dict]:
    with sandbox.store_conn() as conn:
        return _dicts(conn, query, params)


def cache_rows(sandbox, table: str) -> dict[str, dict]:
    return {r["sfid"]: r for r in store_rows(sandbox, f"SELECT * FROM cache.{table}")}


def policy_dags():
    """The product's policy DAGs as Airflow parses them from the test dags folder."""
    from tests.dags import policy_dags as module

    return module


@contextlib.contextmanager
def policy_world(sandbox, *, contacts: int | None = None, seed: int = 0):
    """What a policy run needs, as airflow_settings.yaml sets it up: the Salesforce API pool and the keyed-hash
    secret; and ``contacts`` more seeded contacts (with their accounts, leads, cases and holds) when given."""
    from airflow.models import Pool

    from sandbox import seed as seeding

    exported = os.environ.get("AIRFLOW_CONN_RETENTION_HASH_KEY")  # the sandbox's, from `python -m sandbox env`
    os.environ["AIRFLOW_CONN_RETENTION_HASH_KEY"] = json.dumps({"conn_type": "generic", "password": HASH_KEY})
    Pool.create_or_update_pool("salesforce_api", slots=4, description="Salesforce API budget", include_deferred=False)
    if contacts:
        with sandbox.org_conn() as conn:
            seeding.seed(conn, contacts=contacts, seed=seed)
    try:
        yield sandbox
    finally:
        if exported is None:
            os.environ.pop("AIRFLOW_CONN_RETENTION_HASH_KEY", None)
        else:
            os.environ["AIRFLOW_CONN_RETENTION_HASH_KEY"] = exported


def lose_staged_rows(monkeypatch, count: int = 2) -> None:
    """Make every run lose ``count`` staged rows between extract and subset, so its validation must fail
    (eligible != staged != retained): a forced validation failure through the real pipeline."""
    from retention.hooks.store import RetentionStoreHook
    from retention.steps import load

    real_subset = load.subset

    def subset_after_losing_rows(store, policy, run, *keys):
        with RetentionStoreHook().connect() as conn:
            conn.execute(f'DELETE FROM retention_staging."{run.run_key}" WHERE sfid IN '
                         f'(SELECT sfid FROM retention_staging."{run.run_key}" ORDER BY sfid LIMIT {int(count)})')
        return real_subset(store, policy, run, *keys)

    monkeypatch.setattr(load, "subset", subset_after_losing_rows)


# accounts_bulk_api's selection: accounts past the cutoff without cases or Closed Won opportunities (Salesforce
# refuses to delete those), and neither held themselves nor through a held contact (the delete would take it).
UNREFUSED_ACCOUNTS = """SELECT * FROM org.account a WHERE NOT isdeleted AND lastmodifieddate < %(cutoff)s
               AND NOT EXISTS (SELECT 1 FROM org.case k WHERE k.accountid = a.id AND NOT k.isdeleted)
               AND NOT EXISTS (SELECT 1 FROM org.opportunity o WHERE o.accountid = a.id AND o.iswon
                               AND NOT o.isdeleted)"""
ELIGIBLE_ACCOUNTS = UNREFUSED_ACCOUNTS + f""" AND a.id NOT IN ({ACTIVE_HOLDS})
               AND NOT EXISTS (SELECT 1 FROM org.contact c WHERE c.accountid = a.id AND NOT c.isdeleted
                               AND c.id IN ({ACTIVE_HOLDS})) ORDER BY id"""

