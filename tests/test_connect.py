"""The Heroku Connect stand-in against a real embedded Postgres and its API over real HTTPS.

These prove what the product relies on: org changes (create, update, soft and hard delete) reach the
mirror, the API's mapping state is truthful before and after a poll, and a plain client write into the
Connect schema is trigger-logged while the sync loop's own writes are not.
"""

from __future__ import annotations

import datetime as dt
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
from sandbox.connect_api import create_app, mapping_id
from sandbox.objects import ACCOUNT, CONTACT
from sandbox.tls import ensure_certificates
from tests.conftest import free_port, shared_tmp

TOKEN = "test-connect-token"
CONNECTION_ID = "5f1c6a2e-0b7d-4c1e-9a55-5a0d1e2c3b4a"
ORG_ID = "00DDn0000000001EAA"
UTC = dt.UTC


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
    loop = ConnectSync(pg.url("sandbox_org"), pg.url("retention_store"), objects=("Contact", "Account"),
                       interval=0.2, org_id=ORG_ID)
    loop.setup()
    loop.poll_once()
    yield loop
    loop.force_state(None)


@pytest.fixture(scope="module")
def api(sync, tmp_path_factory):
    """The Connect API under uvicorn with TLS; yields (base URL, requests session trusting our CA)."""
    certs = ensure_certificates(tmp_path_factory.mktemp("tls"))
    port = free_port()
    app = create_app(sync, token=TOKEN, connection_id=CONNECTION_ID, org_id=ORG_ID)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           ssl_certfile=str(certs.cert), ssl_keyfile=str(certs.key)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "Connect API did not start"
        time.sleep(0.05)
    client = Client(str(certs.ca))
    yield f"https://localhost:{port}/api/v3", client
    client.close()
    server.should_exit = True
    thread.join(10)


class Client(requests.Session):
    """Sends our bearer token and trusts only the sandbox CA (passed per request: a session's
    ``verify`` would lose to ``REQUESTS_CA_BUNDLE`` from the environment)."""

    def __init__(self, ca: str):
        super().__init__()
        self.ca = ca
        self.headers["Authorization"] = f"Bearer {TOKEN}"

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


def test_mirror_has_connect_layout(pg, sync):
    cols = dict(store_query(pg, "SELECT column_name, data_type FROM information_schema.columns "
                                "WHERE table_schema = 'salesforce' AND table_name = 'contact'"))
    assert cols["id"] == "integer" and cols["sfid"] == "character varying"
    assert cols["systemmodstamp"] == "timestamp without time zone"
    assert cols["birthdate"] == "date" and cols["description"] == "text" and cols["isdeleted"] == "boolean"
    assert {"_hc_lastop", "_hc_err"} <= set(cols)
    indexes = {r[0] for r in store_query(pg, "SELECT indexname FROM pg_indexes WHERE schemaname = 'salesforce'")}
    assert {"hcu_idx_contact_sfid", "hc_idx_contact_systemmodstamp", "_trigger_log_idx_state_id",
            "_trigger_log_archive_idx_state_table_name"} <= indexes
    triggers = {r[0] for r in store_query(pg, "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")}
    assert {"hc_contact_status_trigger", "hc_contact_logtrigger", "tlog_insert_trigger"} <= triggers
    assert store_query(pg, "SELECT hcver IS NOT NULL, org_id FROM salesforce._hcmeta") == [(True, ORG_ID)]
    sync.setup()  # idempotent


def test_org_changes_reach_mirror_and_state_is_truthful(pg, sync, api):
    base, http = api
    kept = org_do(pg, lambda c: org.create(c, CONTACT, {
        "FirstName": "Ada", "LastName": "Lovelace", "Email": "ada@example.com", "Birthdate": "1815-12-10",
        "MailingCountry": "UK", "HasOptedOutOfEmail": True}).id)
    soft = org_do(pg, lambda c: org.create(c, CONTACT, {"LastName": "Soft"}).id)
    hard = org_do(pg, lambda c: org.create(c, CONTACT, {"LastName": "Hard"}).id)

    before = http.get(contact_url(base)).json()
    assert before["state"] != "DATA_SYNCED" and before["counts"]["pending"] >= 3
    assert sync.poll_once()["Contact"]["upserted"] >= 3
    after = http.get(contact_url(base)).json()
    assert after["state"] == "DATA_SYNCED" and after["counts"]["pending"] == 0

    source = org_do(pg, lambda c: org.fetch(c, CONTACT, kept))
    row = mirror_row(pg, kept)
    assert (row["firstname"], row["lastname"], row["name"], row["email"]) == ("Ada", "Lovelace", "Ada Lovelace",
                                                                              "ada@example.com")
    assert row["birthdate"] == dt.date(1815, 12, 10) and row["hasoptedoutofemail"] is True
    assert row["systemmodstamp"] == source["SystemModstamp"].astimezone(UTC).replace(tzinfo=None)
    assert row["isdeleted"] is False and row["_hc_lastop"] == "SYNCED"

    org_do(pg, lambda c: org.update(c, CONTACT, kept, {"Email": "ada@analytical.org", "Title": "Countess"}))
    org_do(pg, lambda c: org.delete(c, CONTACT, soft))
    org_do(pg, lambda c: org.delete(c, CONTACT, hard, hard=True))
    state = http.get(contact_url(base)).json()
    assert state["state"] == "POLLING_SF_CHANGES" and state["counts"]["pending"] >= 3

    result = sync.poll_once()["Contact"]
    assert result["deleted"] == 2 and not result["full"]
    row = mirror_row(pg, kept)
    assert (row["email"], row["title"]) == ("ada@analytical.org", "Countess")
    assert mirror_row(pg, soft) is None and mirror_row(pg, hard) is None
    final = http.get(contact_url(base)).json()
    assert final["state"] == "DATA_SYNCED" and final["counts"]["pending"] == 0
    assert final["config"]["access"] == "read_only" and "LastName" in final["config"]["fields"]
    assert final["actively_writing"] is False and final["is_polling"] is True

    # A restarted loop resumes from the stored watermarks instead of reloading.
    restarted = ConnectSync(sync.org_url, sync.store_url, objects=("Contact",), org_id=ORG_ID)
    assert restarted.poll_once()["Contact"] == {"upserted": 0, "deleted": 0, "full": False}


def test_late_commit_is_neither_missed_nor_reported_synced(pg, sync, monkeypatch):
    """A record stamped before a newer one but committed after the poll still reaches the mirror."""
    monkeypatch.setattr(connect, "OVERLAP", dt.timedelta(0))  # only the read horizon protects it now
    with psycopg.connect(pg.url("sandbox_org")) as slow:
        late = org.create(slow, CONTACT, {"LastName": "Late"}).id
        quick = org_do(pg, lambda c: org.create(c, CONTACT, {"LastName": "Quick"}).id)
        sync.poll_once()
        assert mirror_row(pg, quick) is not None and mirror_row(pg, late) is None
    stamps = org_do(pg, lambda c: c.execute("SELECT id, systemmodstamp FROM org.contact WHERE id IN (%s, %s)",
                                            (late, quick)).fetchall())
    assert dict(stamps)[late] < dict(stamps)[quick]  # the late record is older than the watermark
    state = sync.mapping_state("Contact")
    assert state["state"] == "POLLING_SF_CHANGES" and state["counts"]["pending"] == 1
    sync.poll_once()
    assert mirror_row(pg, late) is not None
    assert sync.mapping_state("Contact")["state"] == "DATA_SYNCED"


def test_plain_writes_are_logged_but_sync_writes_are_not(pg, sync):
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
    base, http = api
    url = f"{base}/connections/{CONNECTION_ID}"
    anonymous = requests.get(url, verify=http.ca)
    assert anonymous.status_code == 401 and anonymous.json()["id"] == "unauthorized"
    wrong = requests.get(url, verify=http.ca, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert requests.post(f"{url}/actions/pause", verify=http.ca).status_code == 401
    missing = http.get(f"{base}/connections/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and missing.json()["id"] == "not_found"
    assert http.get(f"{base}/mappings/not-a-mapping").json()["id"] == "not_found"
    assert http.post(f"{base}/mappings/not-a-mapping/actions/reload").status_code == 404


def test_connection_listing_and_detail(api):
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


def test_errors_list_failed_trigger_log_rows(pg, api):
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
    assert http.get(contact_url(base)).json()["counts"]["errors"] == 2


def test_forced_and_real_system_errors(pg, sync, api):
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
    broken = ConnectSync(pg.url("no_such_org"), pg.url("retention_store"), objects=("Account",),
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


def test_background_loop_picks_up_changes(pg, sync):
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
