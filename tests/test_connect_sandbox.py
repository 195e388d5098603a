"""Heroku Connect end to end in the running sandbox: changes made through the org's API reach the
mirror in the store, and the Connect API never calls a mapping synced before they have."""

from __future__ import annotations

import time

import requests

from tests.conftest import ConnectApi


def mirror_row(sandbox, sfid: str) -> tuple | None:
    with sandbox.store_conn() as conn:
        return conn.execute(
            "SELECT lastname, email, isdeleted, _hc_lastop FROM salesforce.contact WHERE sfid = %s", (sfid,)
        ).fetchone()


def wait_for(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


def test_org_changes_reach_the_mirror_and_the_mapping_is_not_synced_until_they_do(sandbox, sf):
    api = ConnectApi(sandbox)
    assert wait_for(lambda: api.mapping("Contact")["state"] == "DATA_SYNCED", 60)

    # Hold the sync loop still, so "not yet mirrored" can be observed without racing it.
    api.pause()
    try:
        rid = sf.Contact.create({"LastName": "Mirrored", "Email": "m@example.org"})["id"]
        behind = api.mapping("Contact")
        assert behind["state"] != "DATA_SYNCED" and behind["counts"]["pending"] >= 1
        assert mirror_row(sandbox, rid) is None
    finally:
        api.resume()
    interval = float(sandbox.env["SANDBOX_SYNC_INTERVAL"])
    mirrored = wait_for(lambda: mirror_row(sandbox, rid), 3 * interval + 2)
    assert mirrored == ("Mirrored", "m@example.org", False, "SYNCED")
    assert wait_for(lambda: api.mapping("Contact")["state"] == "DATA_SYNCED", 10)

    # A change while running reaches the mirror within a few sync intervals.
    changed_at = time.monotonic()
    sf.Contact.update(rid, {"Email": "changed@example.org"})
    assert wait_for(lambda: (mirror_row(sandbox, rid) or (None, None))[1] == "changed@example.org", 3 * interval + 2)
    assert time.monotonic() - changed_at < 3 * interval + 2

    # Deleted in the org (recycle bin): Heroku Connect removes the row from the mirror.
    sf.Contact.delete(rid)
    assert wait_for(lambda: mirror_row(sandbox, rid) is None, 3 * interval + 2)
    assert wait_for(lambda: api.mapping("Contact")["state"] == "DATA_SYNCED", 10)


def test_a_plain_write_into_the_mirror_is_captured_by_connects_triggers(sandbox, sf):
    """The Connect schema is read-only to the product: a plain session's write is logged for write-back."""
    rid = sf.Contact.create({"LastName": "Trigger"})["id"]
    assert wait_for(lambda: mirror_row(sandbox, rid), 10)
    with sandbox.store_conn() as conn:
        conn.execute("UPDATE salesforce.contact SET lastname = 'Edited' WHERE sfid = %s", (rid,))
        logged = conn.execute(
            "SELECT action, state, \"values\" FROM salesforce._trigger_log WHERE sfid = %s", (rid,)
        ).fetchall()
    assert logged == [("UPDATE", "READONLY", '"lastname"=>"Edited"')]
    assert mirror_row(sandbox, rid)[3] == "PENDING"


def test_connect_api_requires_its_token(sandbox):
    api = ConnectApi(sandbox)
    r = requests.get(f"{api.base}/connections/{api.cid}", verify=api.ca, timeout=10)
    assert r.status_code == 401
    listed = api.get("/connections")
    assert listed["count"] == 1 and listed["results"][0]["id"] == api.cid
