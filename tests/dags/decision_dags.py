"""Airflow DAGs of variants of the examples for tests/retention/test_run_decisions.py: relative dates in ``where``,
the ``max_records_per_run`` guard and the API budget through both sources, and holds placed while a run is under
way. Each selects only its own records (contacts by LastName: the Connect mapping of Contact does not sync Title) and
has its own cache table, so it shares nothing with the other tests."""

from __future__ import annotations

from retention.factory import build_dag
from tests.dags import as_deployed
from tests.dags.platform_dags import variant


def _contacts(policy_id: str, title: str, source: str, *, where: str = "", guard: int = 50000, share: str = ""):
    return variant(
        "inactive_contacts.yaml", ("id: inactive_contacts", f"id: {policy_id}"),
        ("table: contact", f"table: {policy_id}"),
        ("older_than_days: 730", "older_than_days: 30"),
        ('where: "LeadSource != \'Partner Referral\' AND Id NOT IN (SELECT ContactId FROM Case)"',
         f'where: "LastName LIKE \'{title} %\'{where}"'),
        ("source: heroku_connect", f"source: {source}"),
        ("max_records_per_run: 50000",
         f"max_records_per_run: {guard}" + (f"\n  max_api_share: {share}" if share else "")),
    )


POLICIES = [
    _contacts("held_contacts", "Held contacts", "salesforce_api"),
    _contacts("changing_contacts", "Changing contacts", "salesforce_api"),
    _contacts("confirmed_contacts", "Confirmed contacts", "salesforce_api"),
    _contacts("faulty_contacts", "Faulty contacts", "salesforce_api"),
    _contacts("mirrored_contacts", "Mirrored contacts", "heroku_connect"),
    _contacts("lagging_contacts", "Lagging contacts", "heroku_connect"),
    # The mask example, on its own leads (Company, which it keeps, marks them: masking changes their names).
    variant("stale_leads_mask.yaml", ("id: stale_leads_mask", "id: held_leads_mask"),
            ("table: lead", "table: held_lead"),
            ('where: "IsConverted = false"', 'where: "IsConverted = false AND Company = \'Held mask Co\'"')),
    _contacts("relative_mirror", "Relative mirror", "heroku_connect", where=" AND CreatedDate = LAST_N_DAYS:100"),
    _contacts("relative_bulk", "Relative bulk", "salesforce_api", where=" AND CreatedDate = LAST_N_DAYS:100"),
    _contacts("guarded_mirror", "Guarded mirror", "heroku_connect", guard=2),
    _contacts("guarded_bulk", "Guarded bulk", "salesforce_api", guard=2),
    _contacts("budget_mirror", "Budget mirror", "heroku_connect"),
    _contacts("budget_bulk", "Budget bulk", "salesforce_api"),
    _contacts("budget_generous", "Budget generous", "salesforce_api", share="1.0"),
]

globals().update({policy.dag_id: as_deployed(build_dag(policy)) for policy in POLICIES})
# The mirror wait of confirm_and_report, short enough for a test that pauses Heroku Connect.
retention__mirrored_contacts.get_task("confirm_and_report").mirror_timeout = 4  # noqa: F821
retention__mirrored_contacts.get_task("confirm_and_report").mirror_poll_interval = 0.5  # noqa: F821
retention__lagging_contacts.get_task("confirm_and_report").mirror_timeout = 2  # noqa: F821
retention__lagging_contacts.get_task("confirm_and_report").mirror_poll_interval = 0.5  # noqa: F821
