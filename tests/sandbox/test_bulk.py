"""Bulk API 2.0 and 1.0 through the real clients (simple-salesforce, Airflow's SalesforceBulkOperator) over
real HTTPS, configured only from what ``python -m sandbox env`` exports."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import time

import pytest
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceMalformedRequest, SalesforceOperationError

from sandbox import bulk2, ids, ingest, org
from sandbox.objects import CASE, CONTACT


@pytest.fixture(scope="module")
def sf(sandbox) -> Salesforce:
    conn = json.loads(sandbox.env["AIRFLOW_CONN_SALESFORCE_DEFAULT"])
    extra = conn["extra"] if isinstance(conn["extra"], dict) else json.loads(conn["extra"])
    return Salesforce(
        username=sandbox.env["SALESFORCE_USERNAME"],
        consumer_key=sandbox.env["SALESFORCE_CONSUMER_KEY"],
        privatekey_file=sandbox.env["SALESFORCE_PRIVATE_KEY_FILE"],
        domain=extra["domain"],
        version=sandbox.env["SALESFORCE_API_VERSION"],
    )


def make_contacts(sandbox, count: int, last_name: str, **values) -> list[str]:
    with sandbox.org_conn() as conn:
        out = [org.create(conn, CONTACT, {"LastName": last_name, "FirstName": f"F{i}", **values})
               for i in range(count)]
    assert all(o.success for o in out)
    return [o.id for o in out]


def copy_contacts(sandbox, count: int, last_name: str) -> list[str]:
    """``count`` live contacts written straight into the org's table (one COPY), for jobs of many batches."""
    with sandbox.org_conn() as conn:
        new_ids = org.reserve_ids(conn, CONTACT, count)
        stamp = org.now()
        with conn.cursor() as cur, cur.copy(
            "COPY org.contact (id, isdeleted, createddate, lastmodifieddate, systemmodstamp, ownerid, lastname, "
            "firstname) FROM STDIN"
        ) as copy:
            for i, rid in enumerate(new_ids):
                copy.write_row((rid, False, stamp, stamp, stamp, org.DEFAULT_OWNER, last_name, f"N{i}"))
    return new_ids


def state_of(sandbox, record_ids: list[str]) -> dict[str, bool | None]:
    """id -> isdeleted (None: no such row, i.e. hard-deleted)."""
    with sandbox.org_conn() as conn:
        rows = dict(conn.execute("SELECT id, isdeleted FROM org.contact WHERE id = ANY(%s)", (record_ids,)).fetchall())
    return {i: rows.get(i) for i in record_ids}


def parse(text: str, delimiter: str = ",") -> list[dict]:
    return list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter))


def bearer(sf: Salesforce) -> dict:
    return {"Authorization": f"Bearer {sf.session_id}"}


# ---------------------------------------------------------------------------------------------
# Pure helpers (no sandbox needed)


def test_fast_id_check_agrees_with_ids_module():
    samples = [ids.make_id("003", n) for n in (0, 1, 61, 62, 10**6, 62**9 - 1)]
    samples += [s[:17] + ("A" if s[17] != "A" else "B") for s in samples]  # bad checksums
    samples += [ids.make_id("001", 5), "003" + "x" * 15, "003Dn0000000001!!!"]
    for s in samples:
        fast = ingest._fast_id(s, "003")
        assert fast == (s if ids.is_valid(s) and s.startswith("003") else None), s


def test_crlf_translation_keeps_newlines_inside_quoted_values_across_chunks():
    body = b'"a","multi\nline"\n"b",""\n,"x"\n'
    for cut in range(len(body)):
        writer = bulk2._CrlfWriter()
        assert writer(body[:cut]) + writer(body[cut:]) == b'"a","multi\nline"\r\n"b",""\r\n,"x"\r\n'


# ---------------------------------------------------------------------------------------------
# Bulk API 2.0


def test_bulk2_query_pages_100k_records_through_locators(sandbox, sf):
    count = 100_000
    started = time.monotonic()
    new_ids = copy_contacts(sandbox, count, "Bulk100k")
    seeded = time.monotonic()

    pages = list(sf.bulk2.Contact.query("SELECT Id, FirstName FROM Contact WHERE LastName = 'Bulk100k'",
                                        max_records=30_000, wait=0))
    queried = time.monotonic()
    assert len(pages) == 4
    assert all(p.startswith('"Id","FirstName"\n') for p in pages)
    got = [r["Id"] for p in pages for r in parse(p)]
    assert len(got) == count and len(set(got)) == count and set(got) == set(new_ids)

    # ... and a 100,000-row ingest job (hardDelete) finishes in seconds too.
    out = sf.bulk2.Contact.hard_delete(records=[{"Id": i} for i in new_ids], wait=0)
    deleted = time.monotonic()
    assert out[0]["numberRecordsProcessed"] == count and out[0]["numberRecordsFailed"] == 0
    with sandbox.org_conn() as conn:
        assert conn.execute("SELECT count(*) FROM org.contact WHERE lastname = 'Bulk100k'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM org.deletions WHERE id = ANY(%s) AND hard",
                            (new_ids,)).fetchone()[0] == count
    print(f"seed {seeded - started:.1f}s, query {queried - seeded:.1f}s, hardDelete {deleted - queried:.1f}s")
    assert deleted - seeded < 60


def test_bulk2_delete_reports_each_record(sandbox, sf):
    live = make_contacts(sandbox, 3, "Bulk2Del")
    gone = make_contacts(sandbox, 1, "Bulk2Del")[0]
    with sandbox.org_conn() as conn:
        assert org.delete(conn, CONTACT, gone).success
    unknown = ids.make_id("003", 987_654_321)
    records = [{"Id": live[0]}, {"Id": "003notAnId"}, {"Id": gone}, {"Id": live[1]}, {"Id": unknown},
               {"Id": live[2][:15]}]

    (out,) = sf.bulk2.Contact.delete(records=records, wait=0)
    assert out["numberRecordsProcessed"] == 6 and out["numberRecordsFailed"] == 3

    ok = parse(sf.bulk2.Contact.get_successful_records(out["job_id"]))
    assert [(r["sf__Id"], r["sf__Created"]) for r in ok] == [(live[0], "false"), (live[1], "false"),
                                                              (live[2], "false")]
    assert [r["Id"] for r in ok] == [live[0], live[1], live[2][:15]]  # the original value, as sent
    failed = {r["Id"]: r["sf__Error"] for r in parse(sf.bulk2.Contact.get_failed_records(out["job_id"]))}
    assert failed[gone] == "ENTITY_IS_DELETED:entity is deleted:--"
    assert failed[unknown] == "INVALID_CROSS_REFERENCE_KEY:invalid cross reference id:--"
    assert failed["003notAnId"].startswith("MALFORMED_ID:")
    assert state_of(sandbox, live) == {i: True for i in live}
    with sandbox.org_conn() as conn:
        logged = conn.execute("SELECT count(*) FROM org.deletions WHERE id = ANY(%s) AND NOT hard", (live,))
        assert logged.fetchone()[0] == 3


def test_bulk2_record_failures_fault_fails_rows_and_leaves_them_untouched(sandbox, sf):
    targets = make_contacts(sandbox, 200, "Bulk2Lock")
    with sandbox.fault("record_failures", rate=0.3, seed=11):
        (out,) = sf.bulk2.Contact.delete(records=[{"Id": i} for i in targets], wait=0)
    failed = parse(sf.bulk2.Contact.get_failed_records(out["job_id"]))
    assert 30 <= len(failed) <= 90 and out["numberRecordsFailed"] == len(failed)
    assert {r["sf__Error"].split(":")[0] for r in failed} == {"UNABLE_TO_LOCK_ROW"}
    states = state_of(sandbox, targets)
    locked = {r["Id"] for r in failed}
    assert all(states[i] is False for i in locked)
    assert all(states[i] is True for i in targets if i not in locked)


def test_bulk2_update_with_na_nulls_a_field_and_empty_leaves_it(sandbox, sf):
    (rid,) = make_contacts(sandbox, 1, "Bulk2Upd", Email="keep@example.com", Title="Keep", Phone="123")
    (out,) = sf.bulk2.Contact.update(records=[{"Id": rid, "Email": "#N/A", "Title": "", "Phone": "555"}], wait=0)
    assert out["numberRecordsFailed"] == 0
    with sandbox.org_conn() as conn:
        got = org.fetch(conn, CONTACT, rid, ["Email", "Title", "Phone", "LastModifiedDate", "CreatedDate"])
    assert (got["Email"], got["Title"], got["Phone"]) == (None, "Keep", "555")
    assert got["LastModifiedDate"] > got["CreatedDate"]


def test_bulk2_hard_delete_purges_and_soft_delete_stays_in_query_all(sandbox, sf):
    soft, hard = make_contacts(sandbox, 2, "Bulk2Purge")
    sf.bulk2.Contact.delete(records=[{"Id": soft}], wait=0)
    sf.bulk2.Contact.hard_delete(records=[{"Id": hard}], wait=0)
    soql = "SELECT Id, IsDeleted FROM Contact WHERE LastName = 'Bulk2Purge'"
    everything = [r for p in sf.bulk2.Contact.query_all(soql, wait=0) for r in parse(p)]
    assert everything == [{"Id": soft, "IsDeleted": "true"}]
    assert [r for p in sf.bulk2.Contact.query(soql, wait=0) for r in parse(p)] == []
    assert state_of(sandbox, [soft, hard]) == {soft: True, hard: None}


TRICKY = ['comma, "quoted" and\nnewline', "tab\there; pipe | caret ^ `tick`", "ünïcødé ✓ 日本語 🎉", "\r\nCRLF inside",
          "  spaced  "]


@pytest.mark.parametrize("delimiter,line_ending,sep", [("COMMA", "LF", ","), ("TAB", "CRLF", "\t"),
                                                       ("PIPE", "LF", "|"), ("CARET", "CRLF", "^")])
def test_bulk2_csv_round_trips_awkward_values(sandbox, sf, delimiter, line_ending, sep):
    name = f"Bulk2Csv{delimiter}"
    records = [{"LastName": name, "FirstName": f"R{i}", "Description": text} for i, text in enumerate(TRICKY)]
    (out,) = sf.bulk2.Contact.insert(records=records, column_delimiter=delimiter, line_ending=line_ending, wait=0)
    assert out["numberRecordsProcessed"] == len(TRICKY) and out["numberRecordsFailed"] == 0
    created = parse(sf.bulk2.Contact.get_successful_records(out["job_id"]).replace("\r\n", "\n"), sep)
    assert all(r["sf__Created"] == "true" and ids.is_valid(r["sf__Id"]) for r in created)

    pages = list(sf.bulk2.Contact.query(
        f"SELECT Id, FirstName, Description, Email FROM Contact WHERE LastName = '{name}' ORDER BY FirstName",
        column_delimiter=delimiter, line_ending=line_ending, wait=0))
    text = "".join(pages)
    assert text.startswith(sep.join(['"Id"', '"FirstName"', '"Description"', '"Email"']) + ("\r\n" if line_ending
                                                                                          == "CRLF" else "\n"))
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=sep))[1:]
    assert [r[2] for r in rows] == TRICKY
    assert [r[0] for r in rows] == [r["sf__Id"] for r in created]
    assert all(r[3] == "" for r in rows)  # null comes back empty
    if line_ending == "CRLF":
        assert text.count("\r\n") == len(TRICKY) + 1 + 1  # records + header, plus the one inside a value


def test_bulk2_upsert_on_id_inserts_and_updates(sandbox, sf):
    (existing,) = make_contacts(sandbox, 1, "Bulk2Ups", Title="Old")
    (out,) = sf.bulk2.Contact.upsert(
        records=[{"Id": existing, "LastName": "Bulk2Ups", "Title": "New"}, {"Id": "", "LastName": "Bulk2Ups",
                                                                           "Title": "Fresh"}],
        external_id_field="Id", wait=0)
    assert out["numberRecordsFailed"] == 0
    ok = parse(sf.bulk2.Contact.get_successful_records(out["job_id"]))
    assert [r["sf__Created"] for r in ok] == ["false", "true"] and ok[0]["sf__Id"] == existing
    with sandbox.org_conn() as conn:
        assert org.fetch(conn, CONTACT, existing, ["Title"])["Title"] == "New"
        assert org.fetch(conn, CONTACT, ok[1]["sf__Id"], ["Title", "Name"]) == {"Title": "Fresh", "Name": "Bulk2Ups"}


def test_bulk1_insert_numbers_cases_and_reports_missing_fields(sandbox, sf):
    out = sf.bulk.Case.insert([{"Subject": "Bulk case", "Status": "New"}, {"Subject": "x", "IsClosed": "true"}])
    assert out[0]["success"] and out[0]["created"]
    # IsClosed follows Status and cannot be written ("Defaulted on create, Filter, Group, Sort": Object Reference).
    assert out[1]["errors"][0]["statusCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    with sandbox.org_conn() as conn:
        number = org.fetch(conn, CASE, out[0]["id"], ["CaseNumber"])["CaseNumber"]
    assert number == f"{ids.serial_of(out[0]['id']):08d}"
    missing = sf.bulk.Contact.insert([{"FirstName": "NoLast"}, {"LastName": "Bulk1Ins", "Name": "x"}])
    assert [r["errors"][0]["statusCode"] for r in missing] == ["REQUIRED_FIELD_MISSING",
                                                                "INVALID_FIELD_FOR_INSERT_UPDATE"]


def test_bulk2_bad_header_fails_the_job(sf):
    with pytest.raises(SalesforceOperationError, match="Field name not found : Bogus"):
        sf.bulk2.Contact.insert(records=[{"LastName": "x", "Bogus": "y"}], wait=0)


def test_bulk2_query_errors_are_rest_errors(sf):
    with pytest.raises(SalesforceMalformedRequest) as bad_field:
        next(sf.bulk2.Contact.query("SELECT Id, Nope FROM Contact", wait=0))
    assert bad_field.value.content[0]["errorCode"] == "INVALID_FIELD"
    with pytest.raises(SalesforceMalformedRequest) as bad_type:
        next(sf.bulk2.Nope.query("SELECT Id FROM Nope", wait=0))
    assert bad_type.value.content[0]["errorCode"] == "INVALID_TYPE"
    for soql in ("SELECT COUNT() FROM Contact", "SELECT Id FROM Contact LIMIT 5 OFFSET 2"):
        with pytest.raises(SalesforceMalformedRequest) as unsupported:
            next(sf.bulk2.Contact.query(soql, wait=0))
        assert unsupported.value.content[0]["errorCode"] == "API_ERROR"


def test_bulk2_aborted_job_keeps_its_rows_unprocessed(sandbox, sf):
    base = f"{sandbox.instance_url}/services/data/v{sf.sf_version}/jobs/ingest"
    verify = sandbox.ca
    job = requests.post(base, json={"object": "Contact", "operation": "insert", "contentType": "CSV",
                                    "lineEnding": "LF", "columnDelimiter": "COMMA"},
                        headers=bearer(sf), verify=verify).json()
    assert job["state"] == "Open"
    assert job["contentUrl"] == f"services/data/v{sf.sf_version}/jobs/ingest/{job['id']}/batches"
    assert job["id"].startswith("750") and ids.is_valid(job["id"])
    csv_headers = {**bearer(sf), "Content-Type": "text/csv"}
    r = requests.put(f"{base}/{job['id']}/batches", data="LastName,FirstName\nAbort,One\nAbort,Two\n",
                     headers=csv_headers, verify=verify)
    assert r.status_code == 201 and r.content == b""
    aborted = requests.patch(f"{base}/{job['id']}", json={"state": "Aborted"}, headers=bearer(sf), verify=verify)
    assert aborted.json()["state"] == "Aborted"
    late = requests.put(f"{base}/{job['id']}/batches", data="LastName\nx\n", headers=csv_headers, verify=verify)
    assert late.status_code == 409
    unprocessed = requests.get(f"{base}/{job['id']}/unprocessedRecords", headers=bearer(sf), verify=verify)
    assert parse(unprocessed.text) == [{"LastName": "Abort", "FirstName": "One"},
                                      {"LastName": "Abort", "FirstName": "Two"}]
    info = requests.get(f"{base}/{job['id']}", headers=bearer(sf), verify=verify).json()
    assert info["jobType"] == "V2Ingest" and info["numberRecordsProcessed"] == 0
    assert requests.delete(f"{base}/{job['id']}", headers=bearer(sf), verify=verify).status_code == 204
    assert requests.get(f"{base}/{job['id']}", headers=bearer(sf), verify=verify).status_code == 404


def test_bulk2_query_job_resource(sandbox, sf):
    """A query job is queued when created ("(Query) Salesforce has put the query job in the queue"), InProgress
    while it runs, and its results are there once it is JobComplete (How Requests Are Processed); the fault
    ``slow_job`` holds it a second so each state is seen."""
    make_contacts(sandbox, 3, "Bulk2Job")
    base = f"{sandbox.instance_url}/services/data/v{sf.sf_version}/jobs/query"
    with sandbox.fault("slow_job", seconds=1, count=1):
        job = requests.post(base, json={"operation": "query", "query": "SELECT Id FROM Contact WHERE LastName = "
                                        "'Bulk2Job'"}, headers=bearer(sf), verify=sandbox.ca).json()
        early = requests.get(f"{base}/{job['id']}/results", headers=bearer(sf), verify=sandbox.ca)
        states = [job["state"]]
        while states[-1] not in bulk2.TERMINAL:
            time.sleep(0.05)
            info = requests.get(f"{base}/{job['id']}", headers=bearer(sf), verify=sandbox.ca).json()
            states.append(info["state"])
    assert job["object"] == "Contact" and job["contentType"] == "CSV"
    assert early.status_code == 400 and early.json()[0]["errorCode"] == "INVALIDJOBSTATE"
    order = ["UploadComplete", "InProgress", "JobComplete"]
    assert states[0] == "UploadComplete" and "InProgress" in states and states[-1] == "JobComplete"
    assert states == sorted(states, key=order.index)  # never back, never anything else
    assert (info["state"], info["jobType"], info["numberRecordsProcessed"]) == ("JobComplete", "V2Query", 3)
    page = requests.get(f"{base}/{job['id']}/results", params={"maxRecords": 2}, headers=bearer(sf),
                        verify=sandbox.ca)
    assert page.headers["Sforce-NumberOfRecords"] == "2" and page.headers["Sforce-Locator"] != "null"
    last = requests.get(f"{base}/{job['id']}/results", params={"maxRecords": 2, "locator": page.headers[
        "Sforce-Locator"]}, headers=bearer(sf), verify=sandbox.ca)
    assert last.headers["Sforce-NumberOfRecords"] == "1" and last.headers["Sforce-Locator"] == "null"
    listed = requests.get(base, headers=bearer(sf), verify=sandbox.ca).json()
    assert job["id"] in {j["id"] for j in listed["records"]}
    assert requests.delete(f"{base}/{job['id']}", headers=bearer(sf), verify=sandbox.ca).status_code == 204
    assert requests.get(f"{base}/{job['id']}", headers=bearer(sf), verify=sandbox.ca).status_code == 404


def test_bulk2_ingest_goes_in_batches_of_10000_and_an_abort_keeps_the_batches_done(sandbox, sf):
    """"Salesforce creates a separate batch for every 10,000 records in your job data" (Understanding Bulk API 2.0
    Ingest), and "Changes made by a job that fails or is aborted aren't rolled back" (Bulk API 2.0 Developer
    Guide). The job reports its records processed while InProgress, batch by batch (fault ``slow_job`` makes each
    batch take a second); an abort lets the batch under way finish and stops the job there, with every record of
    the batches done deleted and reported, and the rest in ``unprocessedrecords``, untouched."""
    doomed = copy_contacts(sandbox, 25_000, "Batched")
    base = f"{sandbox.instance_url}/services/data/v{sf.sf_version}/jobs/ingest"
    job = requests.post(base, json={"object": "Contact", "operation": "delete", "lineEnding": "LF"},
                        headers=bearer(sf), verify=sandbox.ca).json()
    requests.put(f"{base}/{job['id']}/batches", data="Id\n" + "".join(f"{i}\n" for i in doomed),
                 headers={**bearer(sf), "Content-Type": "text/csv"}, verify=sandbox.ca).raise_for_status()
    with sandbox.fault("slow_job", seconds=1, count=1):
        requests.patch(f"{base}/{job['id']}", json={"state": "UploadComplete"}, headers=bearer(sf),
                       verify=sandbox.ca).raise_for_status()
        seen = []
        while not seen or seen[-1]["numberRecordsProcessed"] == 0:
            time.sleep(0.05)
            seen.append(requests.get(f"{base}/{job['id']}", headers=bearer(sf), verify=sandbox.ca).json())
        aborted = requests.patch(f"{base}/{job['id']}", json={"state": "Aborted"}, headers=bearer(sf),
                                 verify=sandbox.ca)
    assert (seen[-1]["state"], seen[-1]["numberRecordsProcessed"]) == ("InProgress", 10_000)
    assert aborted.json()["state"] == "Aborted"
    time.sleep(1.5)  # time for a third batch, which never runs
    info = requests.get(f"{base}/{job['id']}", headers=bearer(sf), verify=sandbox.ca).json()
    done = info["numberRecordsProcessed"]
    assert info["state"] == "Aborted" and done in (10_000, 20_000) and info["numberRecordsFailed"] == 0
    succeeded = parse(requests.get(f"{base}/{job['id']}/successfulResults", headers=bearer(sf),
                                   verify=sandbox.ca).text)
    rest = parse(requests.get(f"{base}/{job['id']}/unprocessedrecords", headers=bearer(sf), verify=sandbox.ca).text)
    assert [r["sf__Id"] for r in succeeded] == doomed[:done]  # whole batches, in the upload's order
    assert [r["Id"] for r in rest] == doomed[done:]
    states = state_of(sandbox, doomed)
    assert all(states[i] for i in doomed[:done]) and not any(states[i] for i in doomed[done:])


# ---------------------------------------------------------------------------------------------
# Bulk API 1.0


def test_bulk1_update_and_delete_return_per_record_results_in_order(sandbox, sf):
    a, b, c, gone = make_contacts(sandbox, 4, "Bulk1")
    with sandbox.org_conn() as conn:
        assert org.delete(conn, CONTACT, gone).success

    updated = sf.bulk.Contact.update([{"Id": a, "Title": "Boss"}, {"Id": gone, "Title": "x"},
                                      {"Id": b, "Email": None}, {"Id": c[:15], "Email": "not-an-email"}],
                                     batch_size=2)
    assert [r["success"] for r in updated] == [True, False, True, False]
    assert updated[0] == {"success": True, "created": False, "id": a, "errors": []}
    assert updated[1]["errors"][0]["statusCode"] == "ENTITY_IS_DELETED"
    assert updated[3]["errors"][0]["statusCode"] == "INVALID_EMAIL_ADDRESS"

    deleted = sf.bulk.Contact.delete([{"Id": a}, {"Id": "003bogus"}, {"Id": gone}])
    assert [r["success"] for r in deleted] == [True, False, False]
    assert [r["errors"][0]["statusCode"] for r in deleted[1:]] == ["MALFORMED_ID", "ENTITY_IS_DELETED"]
    assert state_of(sandbox, [a, b]) == {a: True, b: False}

    rows = sf.bulk.Contact.query(f"SELECT Id, Title, CreatedDate FROM Contact WHERE Id = '{b}'")
    assert rows[0]["Id"] == b and isinstance(rows[0]["CreatedDate"], int)
    assert abs(rows[0]["CreatedDate"] / 1000 - dt.datetime.now(dt.UTC).timestamp()) < 600


def test_bulk1_rejects_unknown_sessions_in_its_own_error_shape(sandbox, sf):
    r = requests.post(f"{sandbox.instance_url}/services/async/{sf.sf_version}/job",
                      json={"operation": "delete", "object": "Contact", "contentType": "JSON"},
                      headers={"X-SFDC-Session": "00Dnope"}, verify=sandbox.ca)
    assert r.status_code == 400
    assert r.json() == {"exceptionCode": "InvalidSessionId", "exceptionMessage": "Invalid session id"}


def test_airflow_bulk_operator_deletes_records(sandbox):
    from airflow.providers.salesforce.operators.bulk import SalesforceBulkOperator

    soft, hard = make_contacts(sandbox, 2, "Bulk1Airflow")
    result = SalesforceBulkOperator(task_id="delete", operation="delete", object_name="Contact",
                                    payload=[{"Id": soft}], salesforce_conn_id="salesforce_default").execute(context={})
    assert [r["success"] for r in result] == [True]
    result = SalesforceBulkOperator(task_id="purge", operation="hard_delete", object_name="Contact",
                                    payload=[{"Id": hard}], salesforce_conn_id="salesforce_default").execute(context={})
    assert [r["success"] for r in result] == [True]
    assert state_of(sandbox, [soft, hard]) == {soft: True, hard: None}
