"""The Heroku Connect stand-in against a real embedded Postgres, and its APIs over real HTTPS.

These prove what the product relies on, each as Heroku documents it: a mapping syncs only the fields it
selects (plus Connect's required ones) and editing it alters the table; org changes (create, update,
soft and hard delete) reach the mirror on each mapping's own polling interval, and the API's state and
counts are those of the last poll; a plain client write into the Connect schema is trigger-logged while
the sync loop's own writes are not; and a Heroku user finds the connection through discovery only after
adding itself to the add-on's access list, as the product's hook does.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import threading
import time

import psycopg
import pytest
import requests
import uvicorn
from psycopg.rows import dict_row

from sandbox import connect, org, postgres
from sandbox.connect import ConnectSync, SyncError
from sandbox.connect_api import create_app, mapping_id, user_id
from sandbox.objects import ACCOUNT, CONTACT
from sandbox.tls import ensure_certificates
from tests.conftest import free_port, shared_tmp

TOKEN = "test-connect-token"
NEWCOMER_TOKEN = "token-of-a-user-not-on-the-access-list"
HOOK_TOKEN = "token-of-the-hook-tests-user"
APP = "retention-sandbox"
CONNECTION_ID = "5f1c6a2e-0b7d-4c1e-9a55-5a0d1e2c3b4a"
ORG_ID = "00DDn0000000001EAA"
UTC = dt.UTC
# This module's mappings: a selection, as a data team makes one (Description, MobilePhone, ... stay unmapped).
CONTACT_FIELDS = ("CreatedDate", "Name", "FirstName", "LastName", "Email", "Birthdate", "Title", "HasOptedOutOfEmail")
ACCOUNT_FIELDS = ("Name", "AnnualRevenue")
MAPPED_CONTACT_COLUMNS = {"id", "sfid", "_hc_lastop", "_hc_err", "systemmodstamp", "isdeleted",
                          *(f.lower() for f in CONTACT_FIELDS)}


@pytest.fixture(scope="module")
def pg():
    folder = shared_tmp("retention-connect-pg-")
    server = postgres.start(folder, free_port())
    try:
        postgres.ensure_databases(server, ("retention_store", "sandbox_org"))
        with psycopg.connect(server.url("sandbox_org")) as conn:
            org.create_schema(conn)
        yield server
    finally:
        postgres.stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def sync(pg):
    loop = ConnectSync(pg.url("sandbox_org"), pg.url("retention_store"),
                       mappings={"Contact": CONTACT_FIELDS, "Account": ACCOUNT_FIELDS}, interval=0.2, org_id=ORG_ID)
    loop.setup()
    loop.poll_once()
    yield loop
    loop.force_state(None)


@pytest.fixture(scope="module")
def server(sync, tmp_path_factory):
    """Connect's discovery service and API under uvicorn with TLS; yields (root URL, CA path)."""
    certs = ensure_certificates(tmp_path_factory.mktemp("tls"))
    port = free_port()
    users = {TOKEN: "data-team@example.com", NEWCOMER_TOKEN: "newcomer@example.com", HOOK_TOKEN: "airflow@example.com"}
    app = create_app(sync, tokens=users, connection_id=CONNECTION_ID, app_name=APP, org_id=ORG_ID)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           ssl_certfile=str(certs.cert), ssl_keyfile=str(certs.key)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "Connect API did not start"
        time.sleep(0.05)
    yield f"https://localhost:{port}", str(certs.ca)
    server.should_exit = True
    server.force_exit = True  # the clients' kept-alive connections would hold a graceful shutdown until join gives up
    thread.join(10)
    assert not thread.is_alive()


@pytest.fixture(scope="module")
def api(server):
    """The API root and a client of a user who added itself to the access list, as a data team does once."""
    root, ca = server
    client = Client(ca)
    assert client.post(f"{root}/auth/{APP}").status_code == 200
    yield f"{root}/api/v3", client
    client.close()


class Client(requests.Session):
    """Sends our bearer token and trusts only the sandbox CA (passed per request: a session's
    ``verify`` would lose to ``REQUESTS_CA_BUNDLE`` from the environment)."""

    def __init__(self, ca: str, token: str = TOKEN):
        super().__init__()
        self.ca = ca
        self.headers["Authorization"] = f"Bearer {token}"

    def request(self, method, url, **kwargs):
        kwargs.setdefault("verify", self.ca)
        return super().request(method, url, **kwargs)


def org_do(pg, action):
    """Run one org change in its own committed transaction, as an API request would."""
    with psycopg.connect(pg.url("sandbox_org")) as conn:
        return action(conn)


def store_query(pg, query, params=()):
    """A plain client session on the store (xmlbinary stays base64: a user, not Connect)."""
    with psycopg.connect(pg.url("retention_store")) as conn:
        return conn.execute(query, params).fetchall()


def mirror_row(pg, sfid):
    with psycopg.connect(pg.url("retention_store")) as conn:
        cur = conn.cursor(row_factory=dict_row)
        return cur.execute("SELECT * FROM salesforce.contact WHERE sfid = %s", (sfid,)).fetchone()


def contact_url(base):
    return f"{base}/mappings/{mapping_id(CONNECTION_ID, 'Contact')}"


def contact_mapping(base, http) -> dict:
    return http.get(contact_url(base)).json()


def test_mirror_has_connect_layout(pg, sync):
    """Connect's table layout: https://devcenter.heroku.com/articles/heroku-connect-database-tables (system
    columns, indexes, triggers) and https://help.heroku.com/WXAIVCSI/ (the system tables)."""
    cols = dict(store_query(pg, "SELECT column_name, data_type FROM information_schema.columns "
                                "WHERE table_schema = 'salesforce' AND table_name = 'contact'"))
    assert cols["id"] == "integer" and cols["sfid"] == "character varying"
    assert cols["systemmodstamp"] == "timestamp without time zone"
    assert cols["birthdate"] == "date" and cols["hasoptedoutofemail"] == "boolean" and cols["isdeleted"] == "boolean"
    assert {"_hc_lastop", "_hc_err"} <= set(cols)
    indexes = {r[0] for r in store_query(pg, "SELECT indexname FROM pg_indexes WHERE schemaname = 'salesforce'")}
    assert {"hcu_idx_contact_sfid", "hc_idx_contact_systemmodstamp", "_trigger_log_idx_state_id",
            "_trigger_log_archive_idx_state_table_name"} <= indexes
    triggers = {r[0] for r in store_query(pg, "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")}
    assert {"hc_contact_status_trigger", "hc_contact_logtrigger", "tlog_insert_trigger"} <= triggers
    assert store_query(pg, "SELECT hcver IS NOT NULL, org_id FROM salesforce._hcmeta") == [(True, ORG_ID)]
    sync.setup()  # idempotent


def test_the_mirror_has_only_the_mapped_fields_and_config_fields_says_which(pg, sync, api):
    """"Select the fields that you want to map. Some fields in the list are pre-selected and can't be removed
    from the mapping as they're required for Heroku Connect to perform synchronization"
    (https://devcenter.heroku.com/articles/managing-heroku-connect-mappings): the table has a column for each
    mapped field only, and the mapping's config.fields lists exactly those (with Id, SystemModstamp, IsDeleted)."""
    base, http = api
    cols = {r[0] for r in store_query(pg, "SELECT column_name FROM information_schema.columns "
                                          "WHERE table_schema = 'salesforce' AND table_name = 'contact'")}
    assert cols == MAPPED_CONTACT_COLUMNS
    assert not {"description", "mobilephone", "mailingcountry", "accountid"} & cols
    # CreatedDate and Name are "selected by default when creating a mapping but can be deselected":
    # this module's Account mapping leaves CreatedDate out.
    account_cols = {r[0] for r in store_query(pg, "SELECT column_name FROM information_schema.columns "
                                                  "WHERE table_schema = 'salesforce' AND table_name = 'account'")}
    assert "name" in account_cols and "createddate" not in account_cols
    fields = contact_mapping(base, http)["config"]["fields"]
    assert set(fields) == {*CONTACT_FIELDS, "Id", "SystemModstamp", "IsDeleted"}
    assert {f.lower() for f in fields} - {"id"} == cols - {"id", "sfid", "_hc_lastop", "_hc_err"}
    # A plain query of an unmapped field fails as it would against real Connect.
    with pytest.raises(psycopg.errors.UndefinedColumn):
        store_query(pg, "SELECT description FROM salesforce.contact")
    with pytest.raises(ValueError, match="no field Nope"):
        ConnectSync(pg.url("sandbox_org"), pg.url("retention_store"), mappings={"Contact": ["Nope"]}, org_id=ORG_ID)


def test_org_changes_reach_mirror_and_state_is_as_of_the_last_poll(pg, sync, api):
    """"DATA_SYNCED: All rows have been synced since the last poll"
    (https://devcenter.heroku.com/articles/mapping-states-reference): between polls the mapping keeps
    reporting the last poll's state and counts (db_count_date, salesforce_count_date, times.sf_poll), whatever
    the org did since; the next poll brings the changes (https://devcenter.heroku.com/articles/reading-data-from-salesforce-with-heroku-connect)."""
    base, http = api
    sync.poll_once()
    synced = contact_mapping(base, http)
    kept = org_do(pg, lambda c: org.create(c, CONTACT, {
        "FirstName": "Ada", "LastName": "Lovelace", "Email": "ada@example.com", "Birthdate": "1815-12-10",
        "MailingCountry": "UK", "HasOptedOutOfEmail": True}).id)
    soft = org_do(pg, lambda c: org.create(c, CONTACT, {"LastName": "Soft"}).id)
    hard = org_do(pg, lambda c: org.create(c, CONTACT, {"LastName": "Hard"}).id)

    before = contact_mapping(base, http)
    assert before["state"] == "DATA_SYNCED" and before["counts"] == synced["counts"]
    assert before["times"]["sf_poll"] == synced["times"]["sf_poll"]
    assert before["db_count_date"] == synced["db_count_date"]
    assert mirror_row(pg, kept) is None
    assert sync.poll_once()["Contact"]["upserted"] >= 3
    after = contact_mapping(base, http)
    assert after["state"] == "DATA_SYNCED" and after["counts"]["sf"] == synced["counts"]["sf"] + 3
    assert after["counts"]["db"] == after["counts"]["sf"] and after["counts"]["pending"] == 0
    assert after["times"]["sf_poll"] > synced["times"]["sf_poll"] and after["db_count_date"] > synced["db_count_date"]

    source = org_do(pg, lambda c: org.fetch(c, CONTACT, kept))
    row = mirror_row(pg, kept)
    assert (row["firstname"], row["lastname"], row["name"], row["email"]) == ("Ada", "Lovelace", "Ada Lovelace",
                                                                              "ada@example.com")
    assert row["birthdate"] == dt.date(1815, 12, 10) and row["hasoptedoutofemail"] is True
    assert row["systemmodstamp"] == source["SystemModstamp"].astimezone(UTC).replace(tzinfo=None)
    assert row["isdeleted"] is False and row["_hc_lastop"] == "SYNCED"
    assert "mailingcountry" not in row  # not mapped

    org_do(pg, lambda c: org.update(c, CONTACT, kept, {"Email": "ada@analytical.org", "Title": "Countess"}))
    org_do(pg, lambda c: org.delete(c, CONTACT, soft))
    org_do(pg, lambda c: org.delete(c, CONTACT, hard, hard=True))
    state = contact_mapping(base, http)
    assert state["state"] == "DATA_SYNCED" and state["counts"] == after["counts"]  # as of the last poll

    result = sync.poll_once()["Contact"]
    assert result["deleted"] == 2 and not result["full"]
    row = mirror_row(pg, kept)
    assert (row["email"], row["title"]) == ("ada@analytical.org", "Countess")
    assert mirror_row(pg, soft) is None and mirror_row(pg, hard) is None
    final = contact_mapping(base, http)
    assert final["state"] == "DATA_SYNCED" and final["counts"]["pending"] == 0
    assert final["state_description"] == "OK"  # the state's label in the reference
    assert final["counts"]["sf"] == final["counts"]["db"] == after["counts"]["sf"] - 2
    assert final["config"]["access"] == "read_only" and "LastName" in final["config"]["fields"]
    assert final["actively_writing"] is False and final["is_polling"] is True

    # A restarted loop resumes from the stored watermarks instead of reloading.
    restarted = ConnectSync(sync.org_url, sync.store_url, mappings={"Contact": CONTACT_FIELDS}, interval=0.2,
                            org_id=ORG_ID)
    assert restarted.poll_once()["Contact"] == {"upserted": 0, "deleted": 0, "full": False}


def test_late_commit_is_not_missed(pg, sync, monkeypatch):
    """A record stamped before a newer one but committed after the poll still reaches the mirror on the next
    poll (Connect polls windows of SystemModstamp: https://devcenter.heroku.com/articles/reading-data-from-salesforce-with-heroku-connect)."""
    monkeypatch.setattr(connect, "OVERLAP", dt.timedelta(0))  # only the read horizon protects it now
    with psycopg.connect(pg.url("sandbox_org")) as slow:
        late = org.create(slow, CONTACT, {"LastName": "Late"}).id
        quick = org_do(pg, lambda c: org.create(c, CONTACT, {"LastName": "Quick"}).id)
        sync.poll_once()
        assert mirror_row(pg, quick) is not None and mirror_row(pg, late) is None
    stamps = org_do(pg, lambda c: c.execute("SELECT id, systemmodstamp FROM org.contact WHERE id IN (%s, %s)",
                                            (late, quick)).fetchall())
    assert dict(stamps)[late] < dict(stamps)[quick]  # the late record is older than the watermark
    # As of that poll every row it could see was synced: Connect reports DATA_SYNCED.
    assert sync.mapping_state("Contact")["state"] == "DATA_SYNCED"
    sync.poll_once()
    assert mirror_row(pg, late) is not None
    assert sync.mapping_state("Contact")["state"] == "DATA_SYNCED"


def test_plain_writes_are_logged_but_sync_writes_are_not(pg, sync):
    """The trigger log captures user writes only (https://devcenter.heroku.com/articles/heroku-connect-trigger-log)."""
    synced = org_do(pg, lambda c: org.create(c, CONTACT, {"LastName": "Synced", "Email": "s@example.com"}).id)
    sync.poll_once()
    log_count = "SELECT count(*) FROM salesforce._trigger_log"
    start = store_query(pg, log_count)[0][0]

    with psycopg.connect(pg.url("retention_store")) as conn:
        assert conn.execute("SHOW xmlbinary").fetchone()[0] == "base64"
        (local_id,) = conn.execute("INSERT INTO salesforce.contact (lastname, email) VALUES ('Plain', 'p\"q@x.io') "
                                   "RETURNING id").fetchone()
        conn.execute("UPDATE salesforce.contact SET email = 'changed@example.com' WHERE sfid = %s", (synced,))
        conn.execute("UPDATE salesforce.contact SET email = email WHERE sfid = %s", (synced,))
        conn.execute("DELETE FROM salesforce.contact WHERE id = %s", (local_id,))
    rows = store_query(pg, "SELECT action, state, table_name, sfid, old, \"values\" FROM salesforce._trigger_log "
                           "WHERE id > (SELECT max(id) FROM salesforce._trigger_log) - 4 ORDER BY id")
    (ins, upd, noop, dele) = rows
    assert ins[:4] == ("INSERT", "READONLY", "contact", None)
    assert '"lastname"=>"Plain"' in ins[5] and '"sfid"=>NULL' in ins[5] and r'"email"=>"p\"q@x.io"' in ins[5]
    assert "_hc_lastop" not in ins[5]
    assert upd[:4] == ("UPDATE", "READONLY", "contact", synced)
    assert upd[5] == '"email"=>"changed@example.com"' and '"email"=>"s@example.com"' in upd[4]
    assert noop[:2] == ("UPDATE", "IGNORE")
    assert dele[:2] == ("DELETE", "IGNORE")  # no sfid: nothing Connect could ever send
    assert mirror_row(pg, synced)["_hc_lastop"] == "PENDING"

    # The sync loop's own upserts and deletes are Connect ops: no new trigger-log rows.
    org_do(pg, lambda c: org.update(c, CONTACT, synced, {"Title": "Reviewed"}))
    gone = org_do(pg, lambda c: org.create(c, CONTACT, {"LastName": "Gone"}).id)
    sync.poll_once()
    org_do(pg, lambda c: org.delete(c, CONTACT, gone, hard=True))
    sync.poll_once()
    assert store_query(pg, log_count)[0][0] == start + 4
    row = mirror_row(pg, synced)
    assert (row["email"], row["title"], row["_hc_lastop"]) == ("s@example.com", "Reviewed", "SYNCED")
    assert mirror_row(pg, gone) is None


def test_pause_resume_and_reload(pg, sync, api):
    """Pause and resume (https://devcenter.heroku.com/articles/managing-heroku-connect-sync-and-connections) and
    reload (RELOAD_TABLE: https://devcenter.heroku.com/articles/mapping-states-reference)."""
    base, http = api
    conn_url = f"{base}/connections/{CONNECTION_ID}"
    assert http.post(f"{conn_url}/actions/pause").status_code == 202
    assert http.get(conn_url).json()["state"] == "PAUSED"
    assert http.get(contact_url(base)).json()["is_polling"] is False
    held = org_do(pg, lambda c: org.create(c, CONTACT, {"LastName": "WhilePaused"}).id)
    assert sync.poll_once() == {}
    assert mirror_row(pg, held) is None
    assert http.post(f"{conn_url}/actions/resume").status_code == 202
    assert http.get(conn_url).json()["state"] == "IDLE"
    sync.poll_once()
    assert mirror_row(pg, held) is not None

    # A stray user row (no sfid) disappears on reload; the org's rows come back.
    store_query(pg, "INSERT INTO salesforce.contact (lastname) VALUES ('Stray') RETURNING id")
    assert http.post(f"{contact_url(base)}/actions/reload").status_code == 202
    assert http.get(contact_url(base)).json()["state"] == "RELOAD_TABLE"
    assert sync.poll_once()["Contact"]["full"] is True
    state = http.get(contact_url(base)).json()
    assert state["state"] == "DATA_SYNCED"
    assert state["counts"]["db"] == state["counts"]["sf"] > 0
    assert store_query(pg, "SELECT count(*) FROM salesforce.contact WHERE sfid IS NULL") == [(0,)]


def test_auth_and_unknown_ids(api):
    """"Authorization: Bearer <token>" with a Heroku token (https://devcenter.heroku.com/articles/heroku-connect-api);
    a user not on the access list cannot use the connection (docs silent on the answer: the sandbox says 403)."""
    base, http = api
    url = f"{base}/connections/{CONNECTION_ID}"
    anonymous = requests.get(url, verify=http.ca)
    assert anonymous.status_code == 401 and anonymous.json()["id"] == "unauthorized"
    wrong = requests.get(url, verify=http.ca, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert requests.post(f"{url}/actions/pause", verify=http.ca).status_code == 401
    assert requests.get(f"{base.removesuffix('/api/v3')}/connections", verify=http.ca).status_code == 401
    newcomer = {"Authorization": f"Bearer {NEWCOMER_TOKEN}"}
    refused = requests.get(url, verify=http.ca, headers=newcomer)
    assert refused.status_code == 403 and refused.json()["id"] == "forbidden"
    assert requests.get(contact_url(base), verify=http.ca, headers=newcomer).status_code == 403
    missing = http.get(f"{base}/connections/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and missing.json()["id"] == "not_found"
    assert http.get(f"{base}/mappings/not-a-mapping").json()["id"] == "not_found"
    assert http.post(f"{base}/mappings/not-a-mapping/actions/reload").status_code == 404


def test_connection_listing_and_detail(api):
    """The connection with its mappings (heroku-connect-plugin's ConnectionDetails; the API:
    https://devcenter.heroku.com/articles/heroku-connect-api)."""
    base, http = api
    listed = http.get(f"{base}/connections", params={"app": "retention-sandbox", "deep": "true"}).json()
    assert listed["count"] == 1
    conn = listed["results"][0]
    assert conn["id"] == CONNECTION_ID and conn["schema_name"] == "salesforce" and conn["db_key"] == "DATABASE_URL"
    assert conn["organization_id"] == ORG_ID and conn["detail_url"].endswith(f"/connections/{CONNECTION_ID}")
    assert {m["object_name"] for m in conn["mappings"]} == {"Contact", "Account"}
    assert "poll_db_no_merge" in conn["features"]
    assert http.get(f"{base}/connections", params={"app": "other-app"}).json() == {"count": 0, "results": []}
    shallow = http.get(f"{base}/connections").json()["results"][0]
    assert "mappings" not in shallow
    detail = http.get(conn["detail_url"]).json()
    account = next(m for m in detail["mappings"] if m["object_name"] == "Account")
    assert account["id"] == mapping_id(CONNECTION_ID, "Account")
    assert http.get(account["detail_url"]).json()["object_name"] == "Account"


def test_errors_list_failed_trigger_log_rows(pg, sync, api):
    """Write errors of the last 24 h (heroku-connect-plugin's connect:write-errors; the trigger log:
    https://devcenter.heroku.com/articles/heroku-connect-trigger-log); the mapping's counts.errors is the
    last poll's."""
    base, http = api
    with psycopg.connect(pg.url("retention_store")) as conn:
        conn.execute("""INSERT INTO salesforce._trigger_log (state, action, table_name, record_id, sf_message)
                        VALUES ('FAILED', 'UPDATE', 'contact', 1, 'Permission Denied'),
                               ('FAILED', 'INSERT', 'account', 2, 'duplicate value found'),
                               ('SUCCESS', 'UPDATE', 'contact', 3, NULL)""")
        conn.execute("""INSERT INTO salesforce._trigger_log_archive (id, state, action, table_name, record_id,
                                                                    sf_message, created_at)
                        VALUES (900001, 'FAILED', 'DELETE', 'contact', 4, 'entity is deleted', now()),
                               (900002, 'FAILED', 'DELETE', 'contact', 5, 'too old', now() - interval '2 days')""")
    everything = http.get(f"{base}/connections/{CONNECTION_ID}/errors").json()
    assert everything["count"] == 3
    assert {e["message"] for e in everything["results"]} == {"Permission Denied", "duplicate value found",
                                                             "entity is deleted"}
    assert set(everything["results"][0]) == {"id", "table_name", "record_id", "message", "created_at"}
    contact = http.get(f"{contact_url(base)}/errors").json()
    assert contact["count"] == 2 and {e["table_name"] for e in contact["results"]} == {"contact"}
    sync.poll_once()
    assert http.get(contact_url(base)).json()["counts"]["errors"] == 2


def test_forced_and_real_system_errors(pg, sync, api):
    """SYSTEM_ERROR: "Connect encountered an unexpected error that interrupted synchronization"
    (https://devcenter.heroku.com/articles/connection-states-reference)."""
    base, http = api
    url = f"{base}/connections/{CONNECTION_ID}"
    sync.force_state("SYSTEM_ERROR")
    assert http.get(url).json()["state"] == "SYSTEM_ERROR"
    sync.force_state(None)
    assert http.get(url).json()["state"] == "IDLE"
    sync.force_state("BAD_CONFIG", "Contact")
    assert http.get(contact_url(base)).json()["state"] == "BAD_CONFIG"
    sync.force_state(None, "Contact")

    # An unreachable org: the poll fails, the error is recorded, the loop keeps going.
    broken = ConnectSync(pg.url("no_such_org"), pg.url("retention_store"), mappings={"Account": ACCOUNT_FIELDS},
                         schema="broken_mirror", interval=0.05, org_id=ORG_ID)
    with pytest.raises(SyncError):
        broken.poll_once()
    assert broken.connection_state() == "SYSTEM_ERROR"
    assert store_query(pg, "SELECT last_error IS NOT NULL FROM broken_mirror._sandbox_mappings") == [(True,)]
    stop = threading.Event()
    thread = threading.Thread(target=broken.run, args=(stop,), daemon=True)
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive()
    stop.set()
    thread.join(5)
    assert not thread.is_alive()


DISCOVERED_KEYS = {"addon_type", "app_id", "app_name", "cell", "cell_label", "detail_url", "display_name", "id",
                   "region", "region_flag", "region_label", "region_url", "resource_name"}


def test_discovery_finds_the_connection_only_after_post_auth(server, sync):
    """"By default, no users are present on a Heroku Connect add-on. Add your Heroku user account to the access
    list: POST https://hc-central.heroku.com/auth/<app_name_or_app_uuid>" ... "This data includes a region_url.
    Adding /api/v3 to the end of this region_url gives you the root Heroku Connect API v3 URL"
    (https://devcenter.heroku.com/articles/heroku-connect-api). Shapes and GET /connections?app=&resource_name=:
    heroku-connect-plugin (SearchConnectionsResponse, RequestAppAccessResponse, Connection)."""
    root, ca = server
    newcomer = Client(ca, NEWCOMER_TOKEN)
    before = newcomer.get(f"{root}/connections", params={"app": APP}).json()
    assert before == {"count": 0, "results": [], "next": None, "previous": None, "regions": {}, "cells": {}}
    assert newcomer.get(f"{root}/api/v3/connections/{CONNECTION_ID}").status_code == 403
    assert newcomer.get(f"{root}/api/v3/connections").json()["count"] == 0
    assert newcomer.post(f"{root}/auth/no-such-app").status_code == 404

    granted = newcomer.post(f"{root}/auth/{APP}")
    assert granted.status_code == 200
    body = granted.json()
    assert body["user"] == {"id": user_id("newcomer@example.com"), "email": "newcomer@example.com"}
    (conn,) = body["connections"]
    assert set(conn) == DISCOVERED_KEYS
    assert (conn["id"], conn["app_name"], conn["region_url"]) == (CONNECTION_ID, APP, root)
    assert conn["detail_url"] == f"{root}/api/v3/connections/{CONNECTION_ID}"
    assert set(body["regions"]) == {conn["region"]} and body["cells"][conn["cell"]]["url"] == root

    after = newcomer.get(f"{root}/connections", params={"app": APP}).json()
    assert after["count"] == 1 and after["results"] == [conn] and after["next"] is None
    assert set(after["regions"]) == {conn["region"]}
    detail = newcomer.get(conn["region_url"] + f"/api/v3/connections/{conn['id']}", params={"deep": "true"}).json()
    assert detail["id"] == CONNECTION_ID and {m["object_name"] for m in detail["mappings"]} == {"Contact", "Account"}
    by_resource = {"app": APP, "resource_name": conn["resource_name"]}
    assert newcomer.get(f"{root}/connections", params=by_resource).json()["count"] == 1
    assert newcomer.get(f"{root}/connections", params={**by_resource, "resource_name": "other"}).json()["count"] == 0
    assert newcomer.get(f"{root}/connections", params={"app": "other-app"}).json()["count"] == 0
    assert newcomer.get(f"{root}/connections", params={"app": conn["app_id"]}).json()["count"] == 1
    assert newcomer.post(f"{root}/auth/{conn['app_id']}").status_code == 200  # by the app's UUID too
    newcomer.close()
    # The access list is kept with the add-on: a restarted Connect still has it.
    restarted = ConnectSync(sync.org_url, sync.store_url, mappings={"Contact": CONTACT_FIELDS}, interval=0.2,
                            org_id=ORG_ID)
    assert restarted.has_access(conn["app_id"], body["user"]["id"])
    assert not restarted.has_access(conn["app_id"], user_id("someone-else@example.com"))


@pytest.fixture
def airflow_connection(server, monkeypatch):
    """Make an Airflow connection of type heroku_connect (an AIRFLOW_CONN_ variable) trusting the test CA."""
    root, ca = server
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca)

    def make(conn_id: str, token: str, **fields) -> str:
        extra = {"app_name": APP, "discovery_url": root, **fields.pop("extra", {})}
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}",
                           json.dumps({"conn_type": "heroku_connect", "password": token, "extra": extra, **fields}))
        return conn_id

    return make


def test_hook_discovers_its_connection_after_registering_its_user(server, sync, airflow_connection):
    """The product's hook follows https://devcenter.heroku.com/articles/heroku-connect-api: discovery
    (GET /connections?app=) finds nothing until the token's user is on the access list (POST /auth/<app>,
    ``HerokuConnectHook.register``), then the API root is region_url + /api/v3; the error before says how."""
    from retention.hooks.heroku_connect import ConnectTarget, HerokuConnectError, HerokuConnectHook

    root, _ = server
    conn_id = airflow_connection("hc_discovery", HOOK_TOKEN)
    with pytest.raises(HerokuConnectError) as refused:
        _ = HerokuConnectHook(conn_id).target
    message = str(refused.value)
    assert f"no connection of app '{APP}'" in message and "access list" in message
    assert f"python -m retention connect-register --conn-id {conn_id}" in message and f"{root}/auth/{APP}" in message

    answer = HerokuConnectHook(conn_id).register()
    assert answer["user"]["email"] == "airflow@example.com" and answer["connections"][0]["id"] == CONNECTION_ID
    hook = HerokuConnectHook(conn_id)
    assert hook.target == ConnectTarget(f"{root}/api/v3", CONNECTION_ID)
    assert hook.target is hook.target  # discovered once per hook
    status = hook.sync_status("Contact")
    assert {"LastName", "Id", "SystemModstamp"} <= set(status.fields)
    assert status.missing_fields(["lastname", "Title", "Description", "MailingCountry"]) == [
        "Description", "MailingCountry"]
    assert status.last_poll  # times.sf_poll
    ok, said = hook.test_connection()
    assert ok and "is IDLE" in said

    # Narrowed by resource_name: a name the app does not have finds nothing, and says so.
    with pytest.raises(HerokuConnectError, match="named 'other-addon'"):
        _ = HerokuConnectHook(airflow_connection("hc_other", HOOK_TOKEN, extra={"resource_name": "other-addon"})).target
    # The older form (host = API root, extra connection_id) skips discovery altogether.
    direct = airflow_connection("hc_direct", HOOK_TOKEN, host=f"{root}/api/v3",
                                extra={"connection_id": CONNECTION_ID, "discovery_url": "https://127.0.0.1:9"})
    assert HerokuConnectHook(direct).connection_detail()["id"] == CONNECTION_ID
    # A token Heroku refuses.
    with pytest.raises(HerokuConnectError, match=r"refused the API token .* \(401\)"):
        HerokuConnectHook(airflow_connection("hc_bad", "not-a-token")).register()


def test_hook_asks_for_resource_name_when_the_app_has_several_connections(airflow_connection, monkeypatch):
    """Discovery "returns all Connect add-ons ... that you have access to" (https://devcenter.heroku.com/articles/heroku-connect-api);
    an app may have several, and GET /connections?app=&resource_name= picks one (heroku-connect-plugin:
    "Multiple connections found. Please use '--resource' ...")."""
    from retention.hooks.heroku_connect import HerokuConnectError, HerokuConnectHook

    two = [{"id": "a", "resource_name": "herokuconnect-a", "region_url": "https://x"},
           {"id": "b", "resource_name": "herokuconnect-b", "region_url": "https://y"}]
    monkeypatch.setattr(HerokuConnectHook, "discover", lambda self: two)
    with pytest.raises(HerokuConnectError, match=r"2 Heroku Connect connections \(herokuconnect-a, herokuconnect-b\); "
                                                 "set extra resource_name"):
        _ = HerokuConnectHook(airflow_connection("hc_two", HOOK_TOKEN)).target


def test_editing_a_mapping_alters_the_table_and_resyncs(pg, sync, api):
    """"Editing an existing mapping modifies the existing database table using the ALTER TABLE SQL command"
    (https://devcenter.heroku.com/articles/managing-heroku-connect-mappings); RESYNC "also occurs after adding
    new fields to an existing mapping" (https://devcenter.heroku.com/articles/mapping-states-reference). The
    call is PUT /api/v3/mappings/{id} ("some cases use other methods, including PUT":
    https://devcenter.heroku.com/articles/heroku-connect-api); its answer is undocumented (200 with the mapping)."""
    base, http = api
    rid = org_do(pg, lambda c: org.create(c, CONTACT, {"LastName": "Mailing", "MailingCity": "Lyon"}).id)
    sync.poll_once()
    before = contact_mapping(base, http)
    assert "mailingcity" not in mirror_row(pg, rid)

    edited = http.put(contact_url(base), json={"config": {"fields": {**before["config"]["fields"], "MailingCity": {}}}})
    assert edited.status_code == 200, edited.text
    body = edited.json()
    assert body["state"] == "RESYNC" and "MailingCity" in body["config"]["fields"]
    assert body["config"]["revision"] == before["config"]["revision"] + 1
    assert mirror_row(pg, rid)["mailingcity"] is None  # the column is there, its values are not yet
    sync.poll_once()
    assert contact_mapping(base, http)["state"] == "DATA_SYNCED"
    assert mirror_row(pg, rid)["mailingcity"] == "Lyon"
    assert sync.poll_once()["Contact"] == {"upserted": 0, "deleted": 0, "full": False}  # back to changes only

    # Removing the field drops its column; Connect's required fields cannot be removed.
    restored = http.put(contact_url(base), json={"config": {"fields": {f: {} for f in CONTACT_FIELDS}}}).json()
    assert set(restored["config"]["fields"]) == set(before["config"]["fields"])
    assert "mailingcity" not in mirror_row(pg, rid) and restored["state"] == "DATA_SYNCED"

    for bad, reason in [({"config": {"fields": {"Nope": {}}}}, "Contact has no field Nope"),
                        ({"config": {"fields": ["LastName"]}}, "must be an object"),
                        ({"config": {"access": "read_write"}}, "access"),
                        ({"config": {"sf_polling_seconds": 0}}, "positive"),
                        ({"fields": {}}, "config")]:
        refused = http.put(contact_url(base), json=bad)
        assert refused.status_code == 400 and reason in refused.json()["message"], (bad, refused.text)


def test_each_mapping_polls_on_its_own_interval_and_reports_its_last_poll(pg, sync, api):
    """"Each mapping has its own polling method and frequency" (https://devcenter.heroku.com/articles/mapping-configuration-options):
    sf_polling_seconds, 600 by default (heroku-connect-plugin's mapping:create), at least 10 minutes on the demo plan
    (https://devcenter.heroku.com/articles/heroku-connect). Until its next poll a mapping stays DATA_SYNCED with the
    last poll's counts and times.sf_poll (https://devcenter.heroku.com/articles/mapping-states-reference)."""
    base, http = api
    account_url = f"{base}/mappings/{mapping_id(CONNECTION_ID, 'Account')}"
    slow = http.put(contact_url(base), json={"config": {"sf_polling_seconds": 3600}}).json()
    assert slow["config"]["sf_polling_seconds"] == slow["sf_polling_seconds"] == 3600
    stop = threading.Event()
    thread = threading.Thread(target=sync.run, args=(stop,), daemon=True)
    thread.start()
    try:
        contact_before, account_before = contact_mapping(base, http), http.get(account_url).json()
        rid = org_do(pg, lambda c: org.create(c, CONTACT, {"LastName": "Unpolled"}).id)
        account = org_do(pg, lambda c: org.create(c, ACCOUNT, {"Name": "Polled Ltd"}).id)
        deadline = time.monotonic() + 5
        while not store_query(pg, "SELECT 1 FROM salesforce.account WHERE sfid = %s", (account,)):
            assert time.monotonic() < deadline, "Account (every 0.2 s) was not polled"
            time.sleep(0.05)
        time.sleep(0.5)
        assert mirror_row(pg, rid) is None
        contact_now = contact_mapping(base, http)
        assert contact_now["state"] == "DATA_SYNCED"
        assert contact_now["times"]["sf_poll"] == contact_before["times"]["sf_poll"]
        assert contact_now["counts"] == contact_before["counts"]
        account_now = http.get(account_url).json()
        assert account_now["times"]["sf_poll"] > account_before["times"]["sf_poll"]
        assert account_now["counts"]["sf"] == account_before["counts"]["sf"] + 1
    finally:
        http.put(contact_url(base), json={"config": {"sf_polling_seconds": 0.2}})
    try:
        deadline = time.monotonic() + 5
        while mirror_row(pg, rid) is None:  # a shorter interval applies at once
            assert time.monotonic() < deadline, "Contact was not polled after its interval was shortened"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(10)


def test_background_loop_picks_up_changes(pg, sync):
    """The loop polls on the mapping's interval (https://devcenter.heroku.com/articles/mapping-configuration-options:
    "Each mapping has its own polling method and frequency")."""
    stop = threading.Event()
    thread = threading.Thread(target=sync.run, args=(stop,), daemon=True)
    thread.start()
    try:
        account = org_do(pg, lambda c: org.create(c, ACCOUNT, {"Name": "Loop Ltd", "AnnualRevenue": 12.5}).id)
        started = time.monotonic()
        deadline = started + 3
        row = []
        while not row and time.monotonic() < deadline:
            row = store_query(pg, "SELECT name, annualrevenue FROM salesforce.account WHERE sfid = %s", (account,))
            time.sleep(0.05)
        assert row == [("Loop Ltd", 12.5)]
        assert time.monotonic() - started < 1.5
        assert sync.mapping_state("Account")["state"] == "DATA_SYNCED"
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
