"""The sandbox org refuses and cascades as Salesforce documents: converted leads are read only, deleting an account
takes its contacts and opportunities with it and is refused while cases (or Closed Won opportunities) hold it, the
Privacy Center objects exist only with their licence and API version, lookups take only their documented types,
and the API user's permissions are what UserPermissionAccess reports. Through the real simple-salesforce client
(REST and Bulk API 2.0) over HTTPS; each test names the documentation page it holds the sandbox to."""

from __future__ import annotations

import contextlib
import csv
import io

import pytest
from simple_salesforce.exceptions import SalesforceMalformedRequest, SalesforceResourceNotFound

from tests.policy_support import org_rows, place_hold

LEAD_PAGE = "https://developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/sforce_api_objects_lead.htm"
STATUS_CODES = ("https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/"
                "sforce_api_calls_concepts_core_data_objects.htm")
DELETE_CALL = "https://developer.salesforce.com/docs/platform/api/guide/sforce-api-calls-delete.md"
DELETE_ACCOUNTS = "https://help.salesforce.com/HTViewHelpDoc?id=account_del.htm&language=en_US"
PRIVACY_HOLD = ("https://developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/"
                "sforce_api_objects_privacyhold.htm")


def _code(err) -> str:
    return err.value.content[0]["errorCode"]


def _bulk(sf, obj: str, operation: str, rows: list[dict]) -> list[dict]:
    """One Bulk API 2.0 ingest job through simple-salesforce; every row's result (successful and failed)."""
    client = getattr(sf.bulk2, obj)._client
    job = client.create_job(operation)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    client.upload_job_data(job["id"], buf.getvalue())
    client.close_job(job["id"])
    client.wait_for_job(job["id"], False, wait=0.2)
    failed = list(csv.DictReader(io.StringIO(client.get_ingest_results(job["id"], "failedResults"))))
    done = list(csv.DictReader(io.StringIO(client.get_ingest_results(job["id"], "successfulResults"))))
    return done + failed


def _live(sandbox, table: str, ids: list[str]) -> set[str]:
    rows = org_rows(sandbox, f'SELECT id FROM org."{table}" WHERE id = ANY(%s) AND NOT isdeleted', (ids,))
    return {r["id"] for r in rows}


@pytest.fixture
def family(sf):
    """An account with two contacts and an open opportunity, made through the REST API. Afterwards the family and
    the cases a test gave it are deleted (where the test left them deletable), so that the org other test modules
    share holds no account a case pins down."""
    account = sf.Account.create({"Name": "Cascade Ltd"})["id"]
    contacts = [sf.Contact.create({"LastName": f"Child {i}", "AccountId": account})["id"] for i in range(2)]
    opportunity = sf.Opportunity.create({"Name": "Renewal", "StageName": "Prospecting", "CloseDate": "2030-01-31",
                                         "AccountId": account})["id"]
    yield {"account": account, "contacts": contacts, "opportunity": opportunity}
    ids = ", ".join(f"'{i}'" for i in [account, *contacts])
    for case in sf.query_all(f"SELECT Id FROM Case WHERE AccountId = '{account}' OR ContactId IN ({ids})")["records"]:
        sf.Case.delete(case["Id"])
    with contextlib.suppress(SalesforceMalformedRequest, SalesforceResourceNotFound):
        sf.Account.delete(account)  # a test may have deleted it, or left it undeletable on purpose (won deal)


def test_a_converted_lead_is_read_only(sandbox, sf):
    """"After a lead has been converted, it's read only ... Only users with the View and Edit Converted Leads
    permission can update converted lead records" (Object Reference: Lead, LEAD_PAGE); the refusal is
    CANNOT_UPDATE_CONVERTED_LEAD (StatusCode, STATUS_CODES), over REST and in Bulk API 2.0 results alike."""
    converted = sf.Lead.create({"LastName": "Converted", "Company": "Acme", "IsConverted": True,
                                "ConvertedDate": "2024-05-01"})["id"]
    fresh = sf.Lead.create({"LastName": "Open", "Company": "Acme"})["id"]
    with pytest.raises(SalesforceMalformedRequest) as err:
        sf.Lead.update(converted, {"FirstName": "Masked"})
    assert _code(err) == "CANNOT_UPDATE_CONVERTED_LEAD"
    with pytest.raises(SalesforceMalformedRequest) as err:
        sf.Lead.update(fresh, {"IsConverted": True})  # conversion fields are set on create only
    assert _code(err) == "INVALID_FIELD_FOR_INSERT_UPDATE"
    results = {r["sf__Id"]: r for r in _bulk(sf, "Lead", "update", [{"Id": converted, "FirstName": "X"},
                                                                     {"Id": fresh, "FirstName": "Y"}])}
    assert results[converted]["sf__Error"] == "CANNOT_UPDATE_CONVERTED_LEAD:cannot reference converted lead:--"
    assert "sf__Error" not in results[fresh]
    assert org_rows(sandbox, "SELECT firstname FROM org.lead WHERE id = %s", (converted,)) == [{"firstname": None}]
    with sandbox.org_settings(permissions={"PermissionsAllowViewEditConvertedLeads": True}):
        sf.Lead.update(converted, {"FirstName": "Allowed"})
    assert org_rows(sandbox, "SELECT firstname FROM org.lead WHERE id = %s", (converted,)) == [
        {"firstname": "Allowed"}]


def test_deleting_an_account_takes_its_contacts_and_opportunities(sandbox, sf, family):
    """"If you delete a parent object, you delete its children automatically" (delete(), DELETE_CALL); deleted
    accounts go to the Recycle Bin "along with" their contacts and opportunities (Help, DELETE_ACCOUNTS)."""
    sf.Account.delete(family["account"])
    assert not _live(sandbox, "account", [family["account"]])
    assert not _live(sandbox, "contact", family["contacts"]) and not _live(sandbox, "opportunity",
                                                                            [family["opportunity"]])
    binned = sf.query_all(f"SELECT Id FROM Contact WHERE AccountId = '{family['account']}' AND IsDeleted = true",
                          include_deleted=True)
    assert {r["Id"] for r in binned["records"]} == set(family["contacts"])


def test_a_hard_deleted_account_takes_its_children_out_of_the_recycle_bin_too(sandbox, sf, family):
    results = _bulk(sf, "Account", "hardDelete", [{"Id": family["account"]}])
    assert results[0]["sf__Id"] == family["account"] and "sf__Error" not in results[0]
    gone = org_rows(sandbox, "SELECT count(*) AS n FROM org.contact WHERE id = ANY(%s)", (family["contacts"],))
    assert gone == [{"n": 0}]


def test_an_account_with_a_case_cannot_be_deleted(sandbox, sf, family):
    """"If any of the following conditions apply, you can't delete an account: A case is related to the account"
    (Help, DELETE_ACCOUNTS); DELETE_FAILED: "You can't delete a record because it is in use by another object"
    (StatusCode, STATUS_CODES). Nothing of the family goes."""
    case = sf.Case.create({"Subject": "Still open", "AccountId": family["account"]})["id"]
    with pytest.raises(SalesforceMalformedRequest) as err:
        sf.Account.delete(family["account"])
    assert _code(err) == "DELETE_FAILED" and case in err.value.content[0]["message"]
    (result,) = _bulk(sf, "Account", "delete", [{"Id": family["account"]}])
    assert result["sf__Error"].startswith("DELETE_FAILED:You can't delete a record because it is in use")
    assert _live(sandbox, "contact", family["contacts"]) == set(family["contacts"])


def test_a_contact_with_a_case_cannot_be_deleted_nor_the_account_that_would_take_it(sandbox, sf, family):
    """The documentation we have is silent on contacts with cases; the sandbox refuses (the stricter reading), and
    a cascade fails when a child "is not deletable or is being used" (delete(), DELETE_CALL)."""
    sf.Case.create({"Subject": "About a contact", "ContactId": family["contacts"][0]})
    with pytest.raises(SalesforceMalformedRequest) as err:
        sf.Contact.delete(family["contacts"][0])
    assert _code(err) == "DELETE_FAILED"
    with pytest.raises(SalesforceMalformedRequest) as err:
        sf.Account.delete(family["account"])
    assert _code(err) == "DELETE_FAILED" and family["contacts"][0] in err.value.content[0]["message"]
    sf.Contact.delete(family["contacts"][1])  # its sibling has no case


def test_an_account_with_a_closed_won_opportunity_is_refused(sandbox, sf, family):
    """The Help page is cut off at "To delete an account with closed–won o..." and the API's answer is not
    documented: the sandbox refuses (stricter). IsWon follows StageName and cannot be set (Object Reference:
    Opportunity)."""
    sf.Opportunity.update(family["opportunity"], {"StageName": "Closed Won"})
    assert org_rows(sandbox, "SELECT isclosed, iswon FROM org.opportunity WHERE id = %s",
                    (family["opportunity"],)) == [{"isclosed": True, "iswon": True}]
    with pytest.raises(SalesforceMalformedRequest) as err:
        sf.Opportunity.update(family["opportunity"], {"IsWon": False})
    assert _code(err) == "INVALID_FIELD_FOR_INSERT_UPDATE"
    with pytest.raises(SalesforceMalformedRequest) as err:
        sf.Account.delete(family["account"])
    assert _code(err) == "DELETE_FAILED" and "Closed Won" in err.value.content[0]["message"]


def test_opportunity_requires_name_stage_and_close_date(sf):
    """"Required" on Name, StageName and CloseDate (Object Reference: Opportunity)."""
    with pytest.raises(SalesforceMalformedRequest) as err:
        sf.Opportunity.create({"Name": "No stage", "CloseDate": "2030-01-01"})
    assert _code(err) == "REQUIRED_FIELD_MISSING" and err.value.content[0]["fields"] == ["StageName"]


def test_describe_says_which_children_cascade_and_which_restrict(sf):
    """childRelationships' cascadeDelete and restrictedDelete (SOAP API Developer Guide, DescribeSObjectResult)
    say what the Help page says of deleting accounts."""
    relations = {(r["childSObject"], r["field"]): r for r in sf.Account.describe()["childRelationships"]}
    assert relations[("Contact", "AccountId")]["cascadeDelete"] is True
    assert relations[("Contact", "AccountId")]["relationshipName"] == "Contacts"
    assert relations[("Opportunity", "AccountId")]["cascadeDelete"] is True
    assert relations[("Case", "AccountId")] | {} == {**relations[("Case", "AccountId")], "cascadeDelete": False,
                                                     "restrictedDelete": True}


def test_privacy_hold_fields_and_what_a_hold_may_name(sandbox, sf):
    """PrivacyHold's documented fields: ReferenceRecordId "Refers To Account, Contact, Individual, Lead, User",
    PrivacyHoldReasonId required, ReferenceRecordType set by the platform, IsActive "default value is false"
    (Object Reference: PrivacyHold, PRIVACY_HOLD)."""
    names = {f["name"]: f for f in sf.PrivacyHold.describe()["fields"]}
    assert {"ReferenceRecordId", "PrivacyHoldReasonId", "IsActive", "EndDate", "RegisteredDate", "Name",
            "OwnerId", "ReferenceRecordType"} <= set(names)
    assert not {"RecordId", "ReasonId", "StartDate"} & set(names)
    assert names["ReferenceRecordId"]["referenceTo"] == ["Account", "Contact", "Individual", "Lead", "User"]
    assert names["ReferenceRecordType"]["createable"] is False
    reasons = {f["name"] for f in sf.PrivacyHoldReason.describe()["fields"]}
    assert {"Name", "Detail", "OwnerId"} <= reasons and not {"Description", "IsActive"} & reasons
    contact = sf.Contact.create({"LastName": "Held"})["id"]
    hold = place_hold(sf, contact, IsActive=False)
    assert sf.PrivacyHold.get(hold)["ReferenceRecordType"] == "Contact"
    case = sf.Case.create({"Subject": "Cannot be held"})["id"]
    with pytest.raises(SalesforceMalformedRequest) as err:
        place_hold(sf, case)
    assert _code(err) == "FIELD_INTEGRITY_EXCEPTION"
    with pytest.raises(SalesforceMalformedRequest) as err:
        sf.PrivacyHold.create({"Name": "No reason", "ReferenceRecordId": contact})
    assert _code(err) == "REQUIRED_FIELD_MISSING"


def test_without_privacy_center_the_hold_objects_do_not_exist(sandbox, sf):
    """"This object is available in API version 59.0 and later ... for users with the Privacy Center license and
    the Manage Privacy Hold user permission" (PRIVACY_HOLD): otherwise the API answers as for an unknown type."""
    with sandbox.org_settings(privacy_center=False):
        names = {o["name"] for o in sf.describe()["sobjects"]}
        assert "PrivacyHold" not in names and "Contact" in names
        with pytest.raises(SalesforceResourceNotFound):
            sf.PrivacyHold.describe()
        with pytest.raises(SalesforceMalformedRequest) as err:
            sf.query("SELECT Id FROM PrivacyHold")
        assert _code(err) == "INVALID_TYPE"
        with pytest.raises(SalesforceMalformedRequest) as err:
            sf.bulk2.PrivacyHold._client.create_job("query", "SELECT Id FROM PrivacyHold")
        assert _code(err) == "INVALID_TYPE"
    old = sf.session.get(f"{sandbox.instance_url}/services/data/v58.0/sobjects/PrivacyHold/describe",
                         headers=sf.headers)
    assert old.status_code == 404
    assert sf.PrivacyHold.describe()["name"] == "PrivacyHold"  # the licence is back


def test_user_permission_access_reports_the_api_users_permissions(sandbox, sf):
    """"Represents the permissions accessibility for a current user" (Object Reference: UserPermissionAccess,
    API 41.0+), one Permissions<Name> boolean per permission; without "Bulk API Hard Delete" a hardDelete job is
    refused."""
    query = "SELECT PermissionsModifyAllData, PermissionsBulkApiHardDelete FROM UserPermissionAccess"
    (row,) = sf.query(query)["records"]
    assert row["PermissionsModifyAllData"] is True and row["PermissionsBulkApiHardDelete"] is True
    with sandbox.org_settings(permissions={"PermissionsBulkApiHardDelete": False}):
        (row,) = sf.query(query)["records"]
        assert row["PermissionsBulkApiHardDelete"] is False
        with pytest.raises(SalesforceMalformedRequest) as err:
            sf.bulk2.Contact._client.create_job("hardDelete")
        assert "hardDelete operation requires special user profile permission" in str(err.value.content)
    with pytest.raises(SalesforceMalformedRequest) as err:
        sf.query("SELECT PermissionsNope FROM UserPermissionAccess")
    assert _code(err) == "INVALID_FIELD"


def test_semi_and_anti_joins_over_rest(sf, family):
    """Semi-joins and anti-joins on ID fields ("Comparison Operators", SOQL and SOSL Reference)."""
    account = family["account"]
    with_children = sf.query(f"SELECT Id FROM Account WHERE Id = '{account}' AND Id IN "
                             "(SELECT AccountId FROM Contact)")["totalSize"]
    no_cases = sf.query(f"SELECT Id FROM Account WHERE Id = '{account}' AND Id NOT IN "
                        "(SELECT AccountId FROM Case)")["totalSize"]
    assert (with_children, no_cases) == (1, 1)


def test_the_stores_default_credential_is_the_databases_owner_not_a_superuser(sandbox):
    """Heroku Postgres's default credential "corresponds to a permissive role that is one step below the superuser
    ... the owner of the database": it creates schemas and GRANTs, and roles are an admin's step
    (`heroku pg:credentials:create`). ("Heroku Postgres Credentials",
    https://devcenter.heroku.com/articles/heroku-postgresql-credentials; the page says nothing of CREATE ROLE, so
    the sandbox refuses it.) An additional credential reads nothing until granted."""
    import psycopg

    with sandbox.store_conn() as conn:
        user, superuser, owner = conn.execute(
            "SELECT current_user, rolsuper, (SELECT pg_get_userbyid(datdba) FROM pg_database "
            "WHERE datname = current_database()) FROM pg_roles WHERE rolname = current_user").fetchone()
        assert (superuser, owner) == (False, user)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE ROLE someone_else")
        conn.execute("CREATE SCHEMA IF NOT EXISTS credential_check")
        conn.execute("CREATE TABLE IF NOT EXISTS credential_check.t (x int)")
    try:
        with psycopg.connect(sandbox.env["RETENTION_ANALYST_URL"], autocommit=True) as analyst:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                analyst.execute("SELECT * FROM credential_check.t")
    finally:
        with sandbox.store_conn() as conn:
            conn.execute("DROP SCHEMA credential_check CASCADE")



def test_cases_are_closed_by_their_status_and_long_text_cannot_be_filtered(sandbox, sf):
    """Case.IsClosed ("Defaulted on create, Filter, Group, Sort") and ClosedDate ("Filter, Nillable, Sort") are the
    platform's, set from Status (Object Reference: Case); CaseNumber is an auto number. A WHERE field "can be any
    field except a long text area field" (SOQL and SOSL Reference, Condition Expression Syntax)."""
    fields = {f["name"]: f for f in sf.Case.describe()["fields"]}
    assert not fields["IsClosed"]["createable"] and not fields["ClosedDate"]["updateable"]
    assert fields["CaseNumber"]["autoNumber"] and not fields["CaseNumber"]["nillable"]
    assert fields["Description"]["filterable"] is False and fields["Subject"]["filterable"] is True
    case = sf.Case.create({"Subject": "To close", "Status": "New"})["id"]
    assert org_rows(sandbox, 'SELECT isclosed, closeddate FROM org."case" WHERE id = %s', (case,)) == [
        {"isclosed": False, "closeddate": None}]
    sf.Case.update(case, {"Status": "Closed"})
    (row,) = org_rows(sandbox, 'SELECT isclosed, closeddate FROM org."case" WHERE id = %s', (case,))
    assert row["isclosed"] is True and row["closeddate"] is not None
    with pytest.raises(SalesforceMalformedRequest) as err:
        sf.Case.update(case, {"ClosedDate": "2020-01-01T00:00:00Z"})
    assert _code(err) == "INVALID_FIELD_FOR_INSERT_UPDATE"
    with pytest.raises(SalesforceMalformedRequest) as err:
        sf.query("SELECT Id FROM Case WHERE Description = 'x'")
    assert _code(err) == "INVALID_FIELD" and "can not be filtered" in err.value.content[0]["message"]


def test_get_deleted_needs_more_than_a_minute(sf):
    """"The start date must chronologically precede the end date by more than one minute" (REST API Developer
    Guide, Get Deleted Records): INVALID_REPLICATION_DATE."""
    import datetime as dt

    end = dt.datetime.now(dt.UTC)
    with pytest.raises(SalesforceMalformedRequest) as err:
        sf.Contact.deleted(end - dt.timedelta(seconds=30), end)
    assert _code(err) == "INVALID_REPLICATION_DATE"
    assert "deletedRecords" in sf.Contact.deleted(end - dt.timedelta(hours=1), end)


def test_lookup_and_master_detail_fields_are_indexed(sandbox):
    """"The platform maintains indexes on the following fields for most objects: ... Foreign key relationships
    (lookups and master-detail)" (Large Data Volumes best practices, "Indexes":
    https://developer.salesforce.com/docs/platform/salesforce-large-data-volumes-bp/guide/ldv-deployments-infrastructure-indexes.html).
    The org's own work on a delete reads them (a record's children), as Salesforce's does."""
    from sandbox.objects import OBJECTS

    references = {(obj.table, f.column) for obj in OBJECTS.values() for f in obj.fields if f.type == "reference"}
    indexed = {(r["table"], r["col"]) for r in org_rows(sandbox, """
        SELECT t.relname AS table, a.attname AS col FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = t.relnamespace JOIN pg_attribute a ON a.attrelid = t.oid
        AND a.attnum = i.indkey[0] WHERE n.nspname = 'org'""")}
    assert ("case", "contactid") in references and references <= indexed, references - indexed
