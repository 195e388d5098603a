"""Airflow DAGs of variants of the example policies that meet the platform's rules head on (test_platform_policies):
each has its own id and cache tables, so it shares nothing with the examples."""

from __future__ import annotations

from pathlib import Path

from retention.factory import build_dag
from retention.policy import parse_policy
from tests.dags import as_deployed

EXAMPLES = Path(__file__).resolve().parents[2] / "include" / "policies"
_OPPORTUNITY = ("  - object: Opportunity\n    relationship: AccountId\n    retain:\n      table: account_opportunity\n"
                "      fields:\n        Name: keep\n        StageName: keep\n        Amount: keep\n"
                "        CloseDate: year\n")


def variant(example: str, *replacements: tuple[str, str]):
    """An example policy file with some lines changed."""
    text = (EXAMPLES / example).read_text()
    for old, new in replacements:
        if old not in text:
            raise ValueError(f"{example} has no {old!r}")
        text = text.replace(old, new)
    return parse_policy(text.encode())


POLICIES = {
    # Masks every lead, converted ones too: Salesforce refuses those.
    "every_lead_mask": variant("stale_leads_mask.yaml", ("id: stale_leads_mask", "id: every_lead_mask"),
                               ('  where: "IsConverted = false"\n', ""), ("table: lead", "table: every_lead")),
    "unlicensed_contacts": variant("inactive_contacts.yaml", ("id: inactive_contacts", "id: unlicensed_contacts"),
                                   ("table: contact", "table: unlicensed_contact")),
    "unheld_contacts": variant("inactive_contacts.yaml", ("id: inactive_contacts", "id: unheld_contacts"),
                               ("table: contact", "table: unheld_contact"),
                               ("exclude_privacy_holds: true", "exclude_privacy_holds: false")),
    # Retains the contacts an account's delete takes, not its opportunities.
    "contacts_only_accounts": variant(
        "accounts_bulk_api.yaml", ("id: accounts_bulk_api", "id: contacts_only_accounts"),
        ("table: account\n", "table: contacts_only_account\n"), ("table: account_contact", "table: co_contact"),
        (_OPPORTUNITY, "")),
    "growing_accounts": variant(
        "accounts_bulk_api.yaml", ("id: accounts_bulk_api", "id: growing_accounts"),
        ("table: account\n", "table: growing_account\n"), ("table: account_contact", "table: growing_contact"),
        ("table: account_opportunity", "table: growing_opportunity")),
    "moved_accounts": variant(
        "accounts_bulk_api.yaml", ("id: accounts_bulk_api", "id: moved_accounts"),
        ("table: account\n", "table: moved_account\n"), ("table: account_contact", "table: moved_contact"),
        ("table: account_opportunity", "table: moved_opportunity")),
}

globals().update({policy.dag_id: as_deployed(build_dag(policy)) for policy in POLICIES.values()})
