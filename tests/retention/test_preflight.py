"""``python -m retention preflight``: against the sandbox set up as a team would have it, every check passes; with
each problem made on purpose (no Privacy Center, a missing permission, an unmapped field, a child a delete would
take, a store role that may not create, no pool, an API version the org does not serve) the report names it and
the exit code says not ready. Preflight only reads: the org and the store are the same afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.policy_support import policy_world

EXAMPLES = REPO / "include" / "policies"


@pytest.fixture(scope="module")
def world(sandbox, airflow_db):
    with policy_world(sandbox, contacts=200, seed=41):
        yield sandbox


def preflight(capsys, *args: str) -> tuple[int, list[str]]:
    from retention.__main__ import main

    capsys.readouterr()
    code = main(["preflight", *args])
    return code, capsys.readouterr().out.splitlines()


def lines_about(lines: list[str], *words: str) -> list[str]:
    return [line for line in lines if all(w in line for w in words)]


def policies_with(tmp_path: Path, **files: str) -> Path:
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    return tmp_path


def test_the_sandbox_as_set_up_is_ready(world):
    """The command a team runs last before unpausing, as a process of its own."""
    env = {**world.env, **{k: v for k, v in os.environ.items() if k.startswith("AIRFLOW")},
           "PYTHONPATH": str(REPO / "plugins")}
    out = subprocess.run([sys.executable, "-m", "retention", "preflight"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "ready: every check passed" in text
    for expected in ("logged in to", "OAuth 2.0 JWT bearer", "API Enabled", "Modify All Data", "Bulk API Hard Delete",
                     "PrivacyHold is readable", "policy inactive_contacts", "cascade Contact.AccountId",
                     "mapping Contact", "schema cache", "pool salesforce_api"):
        assert expected in text, expected
    assert " FAIL " not in text


def test_without_privacy_center_the_policies_that_honour_holds_are_not_ready(world, capsys):
    with world.org_settings(privacy_center=False):
        code, lines = preflight(capsys)
    assert code == 1
    (line,) = lines_about(lines, "permissions", "Privacy Center", "FAIL")
    assert "inactive_contacts" in line and "Manage Privacy Hold" in line
    assert lines_about(lines, "policy inactive_contacts", "FAIL", "PrivacyHold is not available")
    assert lines[-1].startswith("not ready:")


@pytest.mark.parametrize(("permission", "words"), [
    ("PermissionsBulkApiHardDelete", ("Bulk API Hard Delete", "closed_cases_hard_delete", "soft delete")),
    ("PermissionsModifyAllData", ("Modify All Data", "missing")),
])
def test_a_missing_permission_is_named(world, capsys, permission, words):
    with world.org_settings(permissions={permission: False}):
        code, lines = preflight(capsys)
    assert code == 1
    assert lines_about(lines, "FAIL", *words), lines


def test_a_field_the_connect_mapping_does_not_sync_is_named(world, capsys, tmp_path):
    """Heroku Connect syncs only the fields a mapping selects: Contact.Title is not in the sandbox's mapping."""
    text = (EXAMPLES / "inactive_contacts.yaml").read_text().replace("MailingCountry: keep", "Title: keep")
    code, lines = preflight(capsys, "--policies", str(policies_with(tmp_path, titles=text)))
    assert code == 1
    (line,) = lines_about(lines, "mapping Contact", "FAIL")
    assert "does not sync Title" in line and "Mappings, Contact, Edit" in line


def test_children_a_delete_would_take_are_warned_of_and_a_wrong_cascade_fails(world, capsys, tmp_path):
    accounts = (EXAMPLES / "accounts_bulk_api.yaml").read_text()
    opportunity = accounts[accounts.index("  - object: Opportunity"):accounts.index("\nsource:")]
    contacts_only = accounts.replace(opportunity, "")
    cases = accounts.replace("object: Opportunity", "object: Case").replace("Name: keep\n        StageName",
                                                                            "Subject: keep\n        Status")
    cases = cases.replace("Amount: keep\n        CloseDate: year", "Priority: keep")
    # Its own cache tables: two policies may not retain into one.
    cases = cases.replace("table: account\n", "table: cc_account\n")
    cases = cases.replace("table: account_contact", "table: cc_contact")
    cases = cases.replace("table: account_opportunity", "table: cc_case")
    code, lines = preflight(capsys, "--policies", str(policies_with(tmp_path, contacts_only=contacts_only,
                                                                        cases=cases.replace("id: accounts_bulk_api",
                                                                                            "id: case_cascade"))))
    assert code == 1
    (warned,) = lines_about(lines, "policy accounts_bulk_api", "warn")
    assert "also deletes Opportunity records (Opportunities)" in warned and "kept back" in warned
    assert lines_about(lines, "policy case_cascade", "FAIL", "does not delete Case records through AccountId")


def test_a_store_role_that_may_not_create_is_not_ready(world, capsys, monkeypatch):
    analyst = json.dumps({"conn_type": "postgres", "host": "127.0.0.1", "port": int(world.env["SANDBOX_PG_PORT"]),
                          "login": "retention_analyst", "schema": "retention_store"})
    monkeypatch.setenv("AIRFLOW_CONN_ANALYST_STORE", analyst)
    code, lines = preflight(capsys, "--store-conn-id", "analyst_store")
    assert code == 1
    # Whether the schemas exist yet (a first run creates them) or not, the analyst's credential may not write.
    assert lines_about(lines, "schema retention_staging", "FAIL", "retention_analyst")


def test_a_missing_pool_and_an_unserved_api_version_are_named(world, capsys, monkeypatch):
    from airflow.models import Pool

    conn = json.loads(world.env["AIRFLOW_CONN_SALESFORCE_DEFAULT"])
    conn["extra"]["version"] = "99.0"
    monkeypatch.setenv("AIRFLOW_CONN_FUTURE_ORG", json.dumps(conn))
    Pool.delete_pool("salesforce_api")
    try:
        code, lines = preflight(capsys, "--salesforce-conn-id", "future_org")
    finally:
        Pool.create_or_update_pool("salesforce_api", slots=4, description="Salesforce API budget",
                                   include_deferred=False)
    assert code == 1
    assert lines_about(lines, "api version", "FAIL", "99.0 is not served by the org")
    assert lines_about(lines, "pool salesforce_api", "FAIL", "missing")


def test_preflight_changes_nothing(world, capsys):
    snapshot = ("SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE "
                "nspname IN ('cache', 'retention', 'retention_staging')), (SELECT count(*) FROM pg_namespace)")
    with world.store_conn() as conn:
        before = conn.execute(snapshot).fetchone()
    org_before = world.org_conn().execute("SELECT max(systemmodstamp) FROM org.contact").fetchone()
    code, _ = preflight(capsys)
    with world.store_conn() as conn:
        assert conn.execute(snapshot).fetchone() == before
    assert world.org_conn().execute("SELECT max(systemmodstamp) FROM org.contact").fetchone() == org_before
    assert code == 0
