"""Heroku Connect end to end in the running sandbox: changes made through the org's API reach the mirror
on each mapping's polling interval, the mirror holds only the mapped fields, editing a mapping adds its
column after a resync, the Connect API reports each mapping as of its last poll, and discovery finds the
connection for a user on the add-on's access list."""

from __future__ import annotations

import time

import requests

from tests.conftest import ConnectApi

UNMAPPED_CONTACT_FIELDS = ("Title", "Description", "MobilePhone")


def mirror_row(sandbox, sfid: str) -> tuple | None:
    with sandbox.store_conn() as conn:
        return conn.execute(
            "SELECT lastname, email, isdeleted, _hc_lastop FROM salesforce.contact WHERE sfid = %s", (sfid,)
        ).fetchone()


def mirror_columns(sandbox, table: str) -> set[str]:
    with sandbox.store_conn() as conn:
        return {r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns "
                                           "WHERE table_schema = 'salesforce' AND table_name = %s", (table,))}


def wait_for(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


def test_org_changes_reach_the_mirror_on_the_next_poll(sandbox, sf):
    """Connect reads changes by polling (https://devcenter.heroku.com/articles/reading-data-from-salesforce-with-heroku-connect);
    paused, "There's no polling for changes made in Salesforce", and on resume it "continues where it left off"
    (https://devcenter.heroku.com/articles/managing-heroku-connect-sync-and-connections)."""
    api = ConnectApi(sandbox)
    assert wait_for(lambda: api.mapping("Contact")["state"] == "DATA_SYNCED", 60)

    # Hold the sync loop still, so "not yet mirrored" can be observed without racing it.
    api.pause()
    try:
        before = api.mapping("Contact")
        rid = sf.Contact.create({"LastName": "Mirrored", "Email": "m@example.org"})["id"]
        time.sleep(1)
        behind = api.mapping("Contact")
        # As of its last poll the mapping is synced; Connect does not know about the new record yet.
        assert behind["state"] == "DATA_SYNCED" and behind["counts"] == before["counts"]
        assert behind["times"]["sf_poll"] == before["times"]["sf_poll"] and behind["is_polling"] is False
        assert mirror_row(sandbox, rid) is None
    finally:
        api.resume()
    interval = float(sandbox.env["SANDBOX_SYNC_INTERVAL"])
    mirrored = wait_for(lambda: mirror_row(sandbox, rid), 3 * interval + 2)
    assert mirrored == ("Mirrored", "m@example.org", False, "SYNCED")
    assert wait_for(lambda: api.mapping("Contact")["counts"]["sf"] == before["counts"]["sf"] + 1, 10)

    # A change while running reaches the mirror within a few sync intervals.
    changed_at = time.monotonic()
    sf.Contact.update(rid, {"Email": "changed@example.org"})
    assert wait_for(lambda: (mirror_row(sandbox, rid) or (None, None))[1] == "changed@example.org", 3 * interval + 2)
    assert time.monotonic() - changed_at < 3 * interval + 2

    # Deleted in the org (recycle bin): Heroku Connect removes the row from the mirror.
    sf.Contact.delete(rid)
    assert wait_for(lambda: mirror_row(sandbox, rid) is None, 3 * interval + 2)
    assert wait_for(lambda: api.mapping("Contact")["state"] == "DATA_SYNCED", 10)


def test_the_mirror_has_only_the_mapped_fields(sandbox):
    """"Select the fields that you want to map" (https://devcenter.heroku.com/articles/managing-heroku-connect-mappings):
    each table has the mapped fields' columns only, as config.fields lists them, with the required Id (sfid),
    SystemModstamp and IsDeleted; the example policies' fields are mapped, Title or Description are not."""
    api = ConnectApi(sandbox)
    for obj, table in (("Contact", "contact"), ("Lead", "lead"), ("Case", "case"), ("PrivacyHold", "privacyhold")):
        fields = set(api.mapping(obj)["config"]["fields"])
        assert {"Id", "SystemModstamp", "IsDeleted"} <= fields
        assert mirror_columns(sandbox, table) == {f.lower() for f in fields} - {"id"} | {
            "id", "sfid", "_hc_lastop", "_hc_err"}
    contact = set(api.mapping("Contact")["config"]["fields"])
    assert {"LastModifiedDate", "LeadSource", "LastName", "Email", "Birthdate", "MailingCountry"} <= contact
    assert not contact & set(UNMAPPED_CONTACT_FIELDS)
    assert {"IsConverted", "Phone", "Country"} <= set(api.mapping("Lead")["config"]["fields"])
    assert "Description" not in api.mapping("Lead")["config"]["fields"]


def test_adding_a_field_to_a_mapping_adds_its_column_after_a_resync(sandbox, sf):
    """"Editing an existing mapping modifies the existing database table using the ALTER TABLE SQL command"
    (https://devcenter.heroku.com/articles/managing-heroku-connect-mappings), then RESYNC "Loading new columns"
    (https://devcenter.heroku.com/articles/mapping-states-reference)."""
    api = ConnectApi(sandbox)
    rid = sf.Contact.create({"LastName": "Titled", "Title": "Archivist"})["id"]
    assert wait_for(lambda: mirror_row(sandbox, rid), 10)
    fields = list(api.mapping("Contact")["config"]["fields"])
    assert "title" not in mirror_columns(sandbox, "contact")
    try:
        edited = api.edit_mapping("Contact", fields=[*fields, "Title"])
        assert "Title" in edited["config"]["fields"] and edited["state"] in ("RESYNC", "DATA_SYNCED")
        assert "title" in mirror_columns(sandbox, "contact")
        assert wait_for(lambda: api.mapping("Contact")["state"] == "DATA_SYNCED", 30)
        with sandbox.store_conn() as conn:
            assert conn.execute("SELECT title FROM salesforce.contact WHERE sfid = %s", (rid,)).fetchone() == (
                "Archivist",)
    finally:
        api.edit_mapping("Contact", fields=fields)
    assert "title" not in mirror_columns(sandbox, "contact")


def test_state_stays_data_synced_after_an_org_change_until_the_next_poll(sandbox, sf):
    """"DATA_SYNCED: All rows have been synced since the last poll"
    (https://devcenter.heroku.com/articles/mapping-states-reference), and each mapping polls every
    sf_polling_seconds (https://devcenter.heroku.com/articles/mapping-configuration-options; 600 by default)."""
    api = ConnectApi(sandbox)
    rid = sf.Contact.create({"LastName": "Before", "Email": "before@example.org"})["id"]
    assert wait_for(lambda: mirror_row(sandbox, rid), 10)
    with api.polling_every("Contact", 3600):
        polled = api.mapping("Contact")
        sf.Contact.update(rid, {"Email": "after@example.org"})
        time.sleep(2)  # several of the sandbox's usual polls
        now = api.mapping("Contact")
        assert now["state"] == "DATA_SYNCED" and now["times"]["sf_poll"] == polled["times"]["sf_poll"]
        assert now["config"]["sf_polling_seconds"] == 3600
        assert mirror_row(sandbox, rid)[1] == "before@example.org"
    assert wait_for(lambda: mirror_row(sandbox, rid)[1] == "after@example.org", 10)


def test_a_plain_write_into_the_mirror_is_captured_by_connects_triggers(sandbox, sf):
    """The Connect schema is read-only to the product: a plain session's write is logged for write-back
    (https://devcenter.heroku.com/articles/heroku-connect-trigger-log)."""
    rid = sf.Contact.create({"LastName": "Trigger"})["id"]
    assert wait_for(lambda: mirror_row(sandbox, rid), 10)
    with sandbox.store_conn() as conn:
        conn.execute("UPDATE salesforce.contact SET lastname = 'Edited' WHERE sfid = %s", (rid,))
        logged = conn.execute(
            "SELECT action, state, \"values\" FROM salesforce._trigger_log WHERE sfid = %s", (rid,)
        ).fetchall()
    assert logged == [("UPDATE", "READONLY", '"lastname"=>"Edited"')]
    assert mirror_row(sandbox, rid)[3] == "PENDING"


def test_connect_api_requires_its_token_and_discovery_finds_the_connection(sandbox):
    """Bearer token and discovery (https://devcenter.heroku.com/articles/heroku-connect-api): the test session's
    user was added to the access list once (``python -m retention connect-register``, in conftest), so
    GET /connections?app= finds the connection, whose region_url + /api/v3 is the API root."""
    api = ConnectApi(sandbox)
    r = requests.get(f"{api.base}/connections/{api.cid}", verify=api.ca, timeout=10)
    assert r.status_code == 401
    listed = api.get("/connections")
    assert listed["count"] == 1 and listed["results"][0]["id"] == api.cid
    found = requests.get(f"{api.discovery}/connections", params={"app": sandbox.env["HEROKU_CONNECT_APP_NAME"]},
                         headers=api.headers, verify=api.ca, timeout=10).json()
    assert found["count"] == 1
    (conn,) = found["results"]
    assert conn["id"] == api.cid and conn["region_url"] + "/api/v3" == api.base
