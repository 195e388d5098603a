"""The org emulator through the real clients: simple-salesforce and Airflow's SalesforceHook, configured
only from the Airflow connection that ``python -m sandbox env`` exports, over real HTTPS."""

from __future__ import annotations

import json

import pytest
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from sandbox import ids


def connection(sandbox) -> dict:
    return json.loads(sandbox.env["AIRFLOW_CONN_SALESFORCE_DEFAULT"])


@pytest.fixture(scope="module")
def hook(sandbox):
    from airflow.providers.salesforce.hooks.salesforce import SalesforceHook

    return SalesforceHook(salesforce_conn_id="salesforce_default")


@pytest.fixture(scope="module")
def sf(hook) -> Salesforce:
    return hook.get_conn()


def insert_contacts(sf: Salesforce, count: int, last_name: str, **values) -> list[str]:
    """Create records through sObject Collections, 200 at a time, as a client would."""
    created = []
    for start in range(0, count, 200):
        records = [
            {"attributes": {"type": "Contact"}, "LastName": last_name, "FirstName": f"N{i}", **values}
            for i in range(start, min(start + 200, count))
        ]
        out = sf.restful("composite/sobjects", method="POST", json={"allOrNone": True, "records": records})
        assert all(r["success"] for r in out), out[:3]
        created += [r["id"] for r in out]
    return created


def test_hook_logs_in_from_the_airflow_connection_alone(sandbox, hook, sf):
    conn = connection(sandbox)
    assert conn["conn_type"] == "salesforce" and "instance_url" not in conn["extra"]
    assert sf.sf_instance == sandbox.instance_url.removeprefix("https://")
    assert sf.session_id and sf.session_id.startswith("00D")
    assert hook.describe_object("Account")["name"] == "Account"  # what test_connection() calls


def test_query_pages_at_the_requested_batch_size_and_returns_every_record_once(hook, sf):
    created = insert_contacts(sf, 1000, "Paging")
    soql = "SELECT Id, LastName FROM Contact WHERE LastName = 'Paging'"
    headers = {"Sforce-Query-Options": "batchSize=200"}

    first = sf.query(soql, headers=headers)
    assert first["totalSize"] == 1000 and not first["done"]
    assert len(first["records"]) == 200
    assert first["nextRecordsUrl"].startswith(f"/services/data/v{sf.sf_version}/query/")
    pages, page = [first], first
    while not page["done"]:
        page = sf.query_more(page["nextRecordsUrl"], identifier_is_url=True, headers=headers)
        pages.append(page)
    assert [len(p["records"]) for p in pages] == [200] * 5

    result = hook.make_query(soql, query_params={"headers": headers})
    got = [r["Id"] for r in result["records"]]
    assert len(got) == 1000 and sorted(got) == sorted(created)
    assert all(ids.is_valid(i) and i.startswith("003") for i in got)


def test_default_page_is_2000_records(sf):
    insert_contacts(sf, 2100, "BigPage")
    page = sf.query("SELECT Id FROM Contact WHERE LastName = 'BigPage'")
    assert len(page["records"]) == 2000 and page["totalSize"] == 2100 and not page["done"]


def test_describe_reports_fields_with_salesforce_types(hook, sf):
    described = hook.describe_object("Contact")
    types = {f["name"]: f["type"] for f in described["fields"]}
    assert described["keyPrefix"] == "003"
    assert types["Id"] == "id" and types["Email"] == "email" and types["Birthdate"] == "date"
    assert types["LastModifiedDate"] == "datetime" and types["AccountId"] == "reference"
    assert types["HasOptedOutOfEmail"] == "boolean" and types["Description"] == "textarea"
    assert "LeadSource" in hook.get_available_fields("Contact")
    names = {o["name"] for o in sf.describe()["sobjects"]}
    assert {"Account", "Contact", "Lead", "Case", "PrivacyHold", "PrivacyHoldReason"} <= names


def test_create_read_update_delete_and_the_recycle_bin(sf):
    created = sf.Contact.create({"LastName": "Crud", "FirstName": "Ada", "Email": "ada@example.org",
                                 "Birthdate": "1990-05-17"})
    assert created["success"] and ids.is_valid(created["id"])
    rid = created["id"]
    got = sf.Contact.get(rid)
    assert got["Name"] == "Ada Crud" and got["Birthdate"] == "1990-05-17" and got["IsDeleted"] is False
    assert got["CreatedDate"].endswith("+0000") and got["attributes"]["type"] == "Contact"

    assert sf.Contact.update(rid, {"Email": "ada@lovelace.example", "Birthdate": None}) == 204
    got = sf.Contact.get(rid)
    assert got["Email"] == "ada@lovelace.example" and got["Birthdate"] is None
    assert got["SystemModstamp"] >= got["CreatedDate"]

    assert sf.Contact.delete(rid) == 204
    with pytest.raises(SalesforceResourceNotFound) as gone:
        sf.Contact.get(rid)
    assert gone.value.content[0]["errorCode"] == "ENTITY_IS_DELETED"
    assert sf.query(f"SELECT Id FROM Contact WHERE Id = '{rid}'")["totalSize"] == 0
    bin_ = sf.query_all(f"SELECT Id, IsDeleted FROM Contact WHERE Id = '{rid}'", include_deleted=True)
    assert bin_["records"][0]["IsDeleted"] is True


def test_field_errors_come_back_in_salesforce_shape(sf):
    with pytest.raises(SalesforceMalformedRequest) as missing:
        sf.Contact.create({"FirstName": "NoLastName"})
    assert missing.value.content[0]["errorCode"] == "REQUIRED_FIELD_MISSING"
    with pytest.raises(SalesforceMalformedRequest) as unknown:
        sf.Contact.create({"LastName": "X", "Shoe_Size__c": 44})
    assert unknown.value.content[0]["errorCode"] == "INVALID_FIELD"
    with pytest.raises(SalesforceMalformedRequest) as email:
        sf.Contact.create({"LastName": "X", "Email": "not-an-address"})
    assert email.value.content[0]["errorCode"] == "INVALID_EMAIL_ADDRESS"
    with pytest.raises(SalesforceResourceNotFound):
        sf.Contact.get(ids.make_id("003", 10**8))


@pytest.mark.parametrize(
    ("soql", "code"),
    [
        ("SELECT Id FROM Contact WHERE", "MALFORMED_QUERY"),
        ("SELEC Id FROM Contact", "MALFORMED_QUERY"),
        ("SELECT Id, Shoe_Size__c FROM Contact", "INVALID_FIELD"),
        ("SELECT Id FROM Spaceship", "INVALID_TYPE"),
        ("SELECT Id FROM Contact WHERE CreatedDate < 2020-01-01", "INVALID_FIELD"),
    ],
)
def test_bad_soql_comes_back_with_the_salesforce_error_code(sf, soql, code):
    with pytest.raises(SalesforceMalformedRequest) as err:
        sf.query(soql)
    assert err.value.status == 400
    assert err.value.content[0]["errorCode"] == code
    assert err.value.content[0]["message"]


def test_soql_filters_dates_and_counts(sf):
    insert_contacts(sf, 3, "Filters", Birthdate="1980-01-01", LeadSource="Web")
    insert_contacts(sf, 2, "Filters", Birthdate="2001-06-30", LeadSource="Partner Referral")
    base = "SELECT COUNT() FROM Contact WHERE LastName = 'Filters'"
    assert sf.query(base)["totalSize"] == 5
    assert sf.query(base + " AND Birthdate < 1990-01-01")["totalSize"] == 3
    assert sf.query(base + " AND LeadSource IN ('Partner Referral')")["totalSize"] == 2
    assert sf.query(base + " AND (NOT LeadSource LIKE 'part%')")["totalSize"] == 3
    assert sf.query(base + " AND CreatedDate = LAST_N_DAYS:1")["totalSize"] == 5
    assert sf.query(base + " AND CreatedDate < LAST_N_DAYS:30")["totalSize"] == 0
    ordered = sf.query("SELECT Birthdate FROM Contact WHERE LastName = 'Filters' ORDER BY Birthdate DESC LIMIT 2")
    assert [r["Birthdate"] for r in ordered["records"]] == ["2001-06-30", "2001-06-30"]


def test_collections_honour_all_or_none(sf):
    good = {"attributes": {"type": "Contact"}, "LastName": "Coll"}
    bad = {"attributes": {"type": "Contact"}, "FirstName": "NoLast"}
    out = sf.restful("composite/sobjects", method="POST", json={"allOrNone": True, "records": [good, bad]})
    assert [r["success"] for r in out] == [False, False]
    assert out[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert sf.query("SELECT COUNT() FROM Contact WHERE LastName = 'Coll'")["totalSize"] == 0
    out = sf.restful("composite/sobjects", method="POST", json={"allOrNone": False, "records": [good, bad]})
    assert [r["success"] for r in out] == [True, False]
    deleted = sf.restful("composite/sobjects", method="DELETE",
                         params={"ids": f"{out[0]['id']},{ids.make_id('003', 10**8)}", "allOrNone": "false"})
    assert [r["success"] for r in deleted] == [True, False]
    too_many = [good] * 201
    with pytest.raises(SalesforceMalformedRequest):
        sf.restful("composite/sobjects", method="POST", json={"allOrNone": False, "records": too_many})


def test_oauth_username_password_grant(sandbox):
    """The username-password flow is deprecated but not blocked by default (OauthOidcSettings.blockOAuthUnPwFlow,
    "The default value is false"), and answers without a scope ("doesn't support scopes"):
    https://help.salesforce.com/apex/HTViewHelpDoc?id=remoteaccess_oauth_username_password_flow.htm
    (JWT bearer, client credentials and SOAP login() are in test_login.py)."""
    env = sandbox.env
    password = Salesforce(username=env["SALESFORCE_USERNAME"], password=env["SALESFORCE_PASSWORD"],
                          consumer_key=env["SALESFORCE_CONSUMER_KEY"],
                          consumer_secret=env["SALESFORCE_CONSUMER_SECRET"],
                          domain=f"localhost:{env['SANDBOX_SF_PORT']}/services/oauth2/token#")
    assert password.limits()["DailyApiRequests"]["Max"] > 0
    token_url = f"{sandbox.instance_url}/services/oauth2/token"
    form = {"grant_type": "password", "client_id": env["SALESFORCE_CONSUMER_KEY"],
            "client_secret": env["SALESFORCE_CONSUMER_SECRET"], "username": env["SALESFORCE_USERNAME"],
            "password": env["SALESFORCE_PASSWORD"]}
    ok = requests.post(token_url, data=form, verify=sandbox.ca, timeout=10)
    assert ok.status_code == 200 and "scope" not in ok.json() and "refresh_token" not in ok.json()
    for change, error in (({"password": "wrong"}, "invalid_grant"), ({"client_id": "wrong"}, "invalid_client_id"),
                          ({"client_secret": "wrong"}, "invalid_client")):
        r = requests.post(token_url, data={**form, **change}, verify=sandbox.ca, timeout=10)
        assert r.status_code == 400 and r.json()["error"] == error, r.text


def test_every_rest_response_reports_api_usage(sf):
    sf.query("SELECT COUNT() FROM Lead")
    used, limit = sf.api_usage["api-usage"]
    assert 0 < used < limit


# --- faults: each kind switched on through the admin endpoint, seen by the client as Salesforce sends it


def test_rate_limit_fault_is_a_403_request_limit_exceeded(sandbox, sf):
    with sandbox.fault("rate_limit", count=1):
        with pytest.raises(SalesforceRefusedRequest) as err:
            sf.query("SELECT COUNT() FROM Contact")
    assert err.value.status == 403 and err.value.content[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    assert sf.query("SELECT COUNT() FROM Contact")["done"]  # count=1: only the next request failed


@pytest.mark.parametrize(("status", "code"), [(503, "SERVER_UNAVAILABLE"), (500, "UNKNOWN_EXCEPTION")])
def test_server_error_fault(sandbox, sf, status, code):
    with sandbox.fault("server_error", status=status):
        with pytest.raises(SalesforceGeneralError) as err:
            sf.query("SELECT COUNT() FROM Contact")
    assert err.value.status == status and err.value.content[0]["errorCode"] == code


def test_slow_fault_delays_responses_past_a_client_timeout(sandbox, sf):
    url = f"{sandbox.instance_url}/services/data/v59.0/limits"
    headers = {"Authorization": f"Bearer {sf.session_id}"}
    with sandbox.fault("slow", seconds=1.5):
        with pytest.raises(requests.Timeout):
            requests.get(url, headers=headers, verify=sandbox.ca, timeout=0.5)
    assert requests.get(url, headers=headers, verify=sandbox.ca, timeout=5).status_code == 200


def test_record_failures_fault_fails_rows_with_unable_to_lock_row(sandbox, sf):
    records = [{"attributes": {"type": "Contact"}, "LastName": "Locked"} for _ in range(4)]
    with sandbox.fault("record_failures", rate=1.0, count=2):
        out = sf.restful("composite/sobjects", method="POST", json={"allOrNone": False, "records": records})
    assert [r["success"] for r in out] == [False, False, True, True]
    assert out[0]["errors"][0]["statusCode"] == "UNABLE_TO_LOCK_ROW"
    assert sf.query("SELECT COUNT() FROM Contact WHERE LastName = 'Locked'")["totalSize"] == 2


def test_session_expiry_fault_invalidates_sessions_and_login_flows_recover(sandbox, sf):
    old = sf.session_id
    with sandbox.fault("session_expiry"):
        pass
    r = requests.get(f"{sandbox.instance_url}/services/data/v59.0/limits",
                     headers={"Authorization": f"Bearer {old}"}, verify=sandbox.ca, timeout=10)
    assert r.status_code == 401 and r.json()[0]["errorCode"] == "INVALID_SESSION_ID"
    direct = Salesforce(session_id=old, instance_url=sandbox.instance_url)
    with pytest.raises(SalesforceExpiredSession):
        direct.query("SELECT COUNT() FROM Contact")
    # A client with a login flow (the Airflow hook's) logs in again, as against a real org.
    assert sf.query("SELECT COUNT() FROM Contact")["done"]
    assert sf.session_id != old


def test_unknown_fault_kind_is_refused_by_the_cli(sandbox):
    out = sandbox.cli("faults", "set", "earthquake")
    assert out.returncode == 2 and "unknown fault kind" in out.stderr
    out = sandbox.cli("faults", "set", "rate_limit", "--count", "3")
    assert out.returncode == 0 and '"rate_limit"' in out.stdout
    assert sandbox.cli("faults", "clear").stdout.strip() == "no faults active"
